"""`kftune launch` without a usable kubeconfig: one line naming the problem, no traceback."""

from dataclasses import dataclass

import pytest
from kftune.pipelines.cli import main


@dataclass
class Case:
    name: str
    content: str | None  # None: the file does not exist
    detail: str


CASES = [
    Case("missing", None, "Invalid kube-config file"),
    Case("empty", "", "is empty"),
    Case("malformed YAML", "clusters: [", "while parsing a flow node"),
    Case("no current context", "apiVersion: v1\nkind: Config\nclusters: []\n", ""),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_launch_without_a_usable_kubeconfig_is_one_line(case, tmp_path, monkeypatch, capsys):
    path = tmp_path / "kubeconfig"
    if case.content is not None:
        path.write_text(case.content)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    code = main(["launch", "--model-uri", "s3://b/model", "--dataset-uri", "s3://b/data",
                 "--output-uri", "s3://b/out", "--image", "registry.example/kftune-trainer:0.1.0"])

    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kftune launch: error: no Kubernetes cluster to talk to: not "
                               "inside a cluster and no usable kubeconfig (")
    assert case.detail in lines[0]
    # kftune launch's --backend choices all need a cluster: the way out is kftune run's backend.
    assert lines[0].endswith(
        "; set KUBECONFIG, or train on this machine with `kftune run` (its `local` training "
        "backend)")
