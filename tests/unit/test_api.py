"""kftune's Python API: `kftune.run` and `kftune.submit`, their checks, and Kubeflow authentication
against a local double of the KFP API that refuses unauthenticated requests."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kftune
import pytest
from kftune.components.common.errors import InputError
from kftune.pipelines import cli, lora_finetune
from kftune.pipelines.errors import CliError
from support.kfp_server import KfpApiDouble, serving

TOKEN = "eyJhbGciOiJSUzI1NiJ9.kftune-test-token"
COOKIE = "authservice_session=MTcwMDAwMDAwMHxkZWFkYmVlZg"


def test_import_kftune_stays_light() -> None:
    code = ("import sys, kftune; kftune.__version__; "
            "print(sorted(m for m in ('kfp', 'torch', 'transformers', 'kubernetes') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
    assert {"run", "submit", "RunSummary", "SubmittedRun"} <= set(dir(kftune))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        kftune.trian  # noqa: B018


class FakeArtifact:
    def __init__(self, path: Path, metadata: dict[str, Any] | None = None):
        self.path = str(path)
        self.metadata = metadata or {}


@pytest.fixture
def fake_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline replaced by one that returns fixed outputs; records its arguments."""
    received: dict[str, Any] = {}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "metrics.json").write_text(json.dumps({"runtime_seconds": 3.5}))

    def make_pipeline(*, download_retries: int) -> Callable[..., Any]:
        def pipeline(**kwargs: Any) -> Any:
            received.update(kwargs)
            outputs = {
                "metrics": FakeArtifact(tmp_path / "m", {"base_perplexity": 50.0,
                                                         "tuned_perplexity": 20.0}),
                "adapter": FakeArtifact(adapter),
                "report": FakeArtifact(tmp_path / "report.md"),
            }
            return type("Task", (), {"outputs": outputs})()

        return pipeline

    monkeypatch.setattr(lora_finetune, "make_pipeline", make_pipeline)
    return received


def test_run_returns_a_typed_summary(tmp_path: Path, fake_pipeline: dict[str, Any]) -> None:
    summary = kftune.run(output_dir=tmp_path / "run", task="causal-lm",
                         training_parameters={"max_steps": 3}, num_workers=2,
                         lora_config={"r": 4, "target_modules": ["q_proj"]})
    assert isinstance(summary, kftune.RunSummary)
    assert fake_pipeline["training_parameters"] == {"max_steps": 3}
    assert fake_pipeline["num_workers"] == 2
    assert "split" not in fake_pipeline  # untouched parameters stay the pipeline's defaults
    assert summary.primary_metric == "perplexity" and summary.improved is True
    assert summary.adapter_dir == tmp_path / "adapter"
    assert summary.train_seconds == 3.5
    assert summary.arguments["num_workers"] == 2 and summary.arguments["split"] == "train"
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert kftune.RunSummary.from_dict(written) == summary
    assert "perplexity" in summary.table()


RUN_ERROR_CASES = [
    ("unknown_name", {"num_worker": 2}, "unknown pipeline parameter `num_worker`; did you mean "
                                        "`num_workers`?"),
    ("wrong_type", {"num_workers": "two"}, "`num_workers` must be an integer, got 'two'"),
    ("rule", {"num_workers": 0}, "`num_workers` must be >= 1, got 0"),
    ("training_parameter", {"training_parameters": {"learning_rate": -1}}, "learning_rate"),
]


@pytest.mark.parametrize("name, parameters, expected", RUN_ERROR_CASES,
                         ids=[case[0] for case in RUN_ERROR_CASES])
def test_run_refuses_bad_parameters_before_anything_runs(
    name: str, parameters: dict[str, Any], expected: str, tmp_path: Path,
    fake_pipeline: dict[str, Any],
) -> None:
    with pytest.raises(InputError) as raised:
        kftune.run(output_dir=tmp_path / "run", **parameters)
    assert expected in str(raised.value)
    assert not (tmp_path / "run").exists() and fake_pipeline == {}


def test_run_reports_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        kftune.run(output_dir=tmp_path / "run", num_workers=0, backend="slurm")
    assert len(raised.value.problems) == 2


# --------------------------------------------------------------------------- submit

# kftune publishes no images: every submit names the registry its images were pushed to.
REGISTRY = "registry.example.com/ml"


def test_submit_returns_the_run(kfp_api: KfpApiDouble, capsys: pytest.CaptureFixture[str]) -> None:
    submitted = kftune.submit(host=kfp_api.host, image_registry=REGISTRY, run_name="nightly",
                              num_workers=4,
                              training_parameters={"max_steps": 9})
    assert isinstance(submitted, kftune.SubmittedRun)
    assert (submitted.run_id, submitted.pipeline_id, submitted.pipeline_version_id,
            submitted.experiment_id, submitted.name) == ("r-1", "p-1", "v-1", "e-1", "nightly")
    assert submitted.url == f"{kfp_api.host}/#/runs/details/r-1"
    (created,) = kfp_api.find("POST", "/apis/v2beta1/runs")
    parameters = json.loads(created["body"])["runtime_config"]["parameters"]
    assert parameters == {"num_workers": 4, "training_parameters": {"max_steps": 9}}
    assert submitted.url in capsys.readouterr().out


def test_submit_schedule_returns_the_recurring_run(kfp_api: KfpApiDouble) -> None:
    submitted = kftune.submit(host=kfp_api.host, image_registry=REGISTRY, schedule="0 3 * * *")
    assert (submitted.run_id, submitted.recurring_run_id, submitted.cron) == (
        None, "rr-1", "0 0 3 * * *")
    with pytest.raises(ValueError, match="recurring run does not finish"):
        submitted.wait()


def test_submit_refuses_bad_input_before_contacting_the_server(
    kfp_api: KfpApiDouble, tmp_path: Path
) -> None:
    with pytest.raises(InputError) as raised:
        kftune.submit(host=kfp_api.host, schedule="nightly", num_workers=0,
                      package=tmp_path / "missing.yaml", existing_token=TOKEN,
                      credentials=object())
    text = str(raised.value)
    assert len(raised.value.problems) == 4
    for expected in ("`num_workers` must be >= 1", "`--schedule` must be a cron expression",
                     "`package` must be a compiled pipeline YAML",
                     "`existing_token` and `credentials`"):
        assert expected in text
    assert TOKEN not in text
    assert kfp_api.requests == []


@pytest.fixture
def kfp_api_with_token() -> Iterator[KfpApiDouble]:
    yield from serving(KfpApiDouble(bearer=TOKEN))


@pytest.fixture
def kfp_api_with_cookie() -> Iterator[KfpApiDouble]:
    yield from serving(KfpApiDouble(cookie=COOKIE))


@dataclasses.dataclass
class AuthCase:
    name: str
    server: str  # the fixture: which credential the server checks
    api: Callable[[Path], dict[str, Any]]  # kftune.submit's authentication arguments
    cli: Callable[[Path], list[str]]  # the same through `kftune submit`


def _service_account_token(directory: Path) -> str:
    path = directory / "token"
    path.write_text(TOKEN + "\n")  # the kubelet's projected token file
    return str(path)


def _file(directory: Path, name: str, content: str) -> str:
    path = directory / name
    path.write_text(content + "\n")
    return str(path)


def _volume_credentials(directory: Path) -> dict[str, Any]:
    from kfp.client import ServiceAccountTokenVolumeCredentials

    return {"credentials": ServiceAccountTokenVolumeCredentials(_service_account_token(directory))}


AUTH_CASES = [
    AuthCase("bearer_token", "kfp_api_with_token",
             api=lambda d: {"existing_token": TOKEN},
             cli=lambda d: ["--token-file", _file(d, "tok", TOKEN)]),
    AuthCase("service_account_token", "kfp_api_with_token",
             api=_volume_credentials,
             cli=lambda d: ["--service-account-token", _service_account_token(d)]),
    AuthCase("session_cookie", "kfp_api_with_cookie",
             api=lambda d: {"cookies": COOKIE},
             cli=lambda d: ["--cookie-file", _file(d, "cookie", COOKIE)]),
]


@pytest.mark.parametrize("case", AUTH_CASES, ids=[case.name for case in AUTH_CASES])
@pytest.mark.parametrize("via", ["api", "cli"])
def test_submit_authenticates_every_request_and_never_prints_the_secret(
    case: AuthCase, via: str, request: pytest.FixtureRequest, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    server: KfpApiDouble = request.getfixturevalue(case.server)
    if via == "api":
        submitted = kftune.submit(host=server.host, image_registry=REGISTRY, **case.api(tmp_path))
        assert TOKEN not in repr(submitted) and COOKIE not in repr(submitted)
        assert submitted.run_id == "r-1"
    else:
        assert cli.main(["submit", "--host", server.host, "--image-registry", REGISTRY,
                         *case.cli(tmp_path)]) == 0
    assert server.find("POST", "/apis/v2beta1/runs")  # the run was created
    assert all(server.authorized(sent) for sent in server.requests)
    captured = capsys.readouterr()
    shown = captured.out + captured.err + caplog.text
    assert TOKEN not in shown and COOKIE.split("=")[1] not in shown


@pytest.mark.parametrize("via", ["api", "cli"])
def test_submit_without_credentials_is_told_to_authenticate(
    via: str, kfp_api_with_token: KfpApiDouble, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = "not-the-token"
    if via == "api":
        with pytest.raises(CliError) as raised:
            kftune.submit(host=kfp_api_with_token.host, image_registry=REGISTRY,
                          existing_token=wrong)
        message, hint = str(raised.value), raised.value.hint
        assert isinstance(raised.value, RuntimeError)
    else:
        code = cli.main(["submit", "--host", kfp_api_with_token.host, "--image-registry", REGISTRY,
                         "--token-file", _file(tmp_path, "tok", wrong)])
        assert code == 1
        message = hint = capsys.readouterr().err
        assert "Traceback" not in message
    assert "HTTP 401" in message
    assert "Kubeflow authentication" in hint
    assert wrong not in message and wrong not in hint
    assert kfp_api_with_token.find("POST", "/apis/v2beta1/runs") == []


def test_submit_token_file_missing_names_the_flag(
    kfp_api: KfpApiDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["submit", "--host", kfp_api.host,
                     "--token-file", str(tmp_path / "nowhere")])
    assert code == 2
    assert "`--token-file` must be a readable file" in capsys.readouterr().err
    assert kfp_api.requests == []
