"""The compiled lora_finetune pipeline: wiring, parameters, Kubernetes settings, caching."""

import dataclasses
from typing import Any

import pytest
import yaml
from kftune.pipelines import compile as compiling
from kftune.pipelines import lora_finetune


@pytest.fixture(scope="module")
def compiled() -> tuple[dict[str, Any], dict[str, Any]]:
    compiled_yaml = compiling.compile_all(only=(compiling.PIPELINE_FILE,))[compiling.PIPELINE_FILE]
    pipeline_spec, platform_spec = yaml.safe_load_all(compiled_yaml)
    return pipeline_spec, platform_spec


@dataclasses.dataclass
class Case:
    name: str
    input: Any
    expected: Any = None


def _tasks(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["root"]["dag"]["tasks"]


def test_steps_run_in_order_with_readable_names(compiled: tuple[dict, dict]) -> None:
    tasks = _tasks(compiled[0])
    # The optional steps after evaluation sit in `dsl.If` groups (test_pipeline_after_training).
    assert {name: task["taskInfo"]["name"] for name, task in tasks.items()
            if not name.startswith("condition-")} == {
        "download-dataset": "Download dataset",
        "download-model": "Download model",
        "train-lora": "Fine-tune with LoRA",
        "evaluate": "Evaluate base vs fine-tuned",
    }
    assert "dependentTasks" not in tasks["download-dataset"]  # the downloads run in parallel
    assert "dependentTasks" not in tasks["download-model"]
    assert sorted(tasks["train-lora"]["dependentTasks"]) == ["download-dataset", "download-model"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == [
        "download-dataset", "download-model", "train-lora"]


CACHE_AND_RETRY_CASES = [
    Case("download-dataset", True, 3),
    Case("download-model", True, 3),
    Case("train-lora", False, None),
    Case("evaluate", False, None),
]


@pytest.mark.parametrize("case", CACHE_AND_RETRY_CASES, ids=[c.name for c in CACHE_AND_RETRY_CASES])
def test_caching_and_retries(compiled: tuple[dict, dict], case: Case) -> None:
    task = _tasks(compiled[0])[case.name]
    assert task["cachingOptions"].get("enableCache", False) is case.input
    retry = task.get("retryPolicy")
    if case.expected is None:
        assert retry is None
    else:
        assert retry["maxRetryCount"] == case.expected
        assert retry["backoffDuration"] == "30s" and retry["backoffFactor"] == 2.0


def test_every_ui_parameter_has_a_default(compiled: tuple[dict, dict]) -> None:
    parameters = compiled[0]["root"]["inputDefinitions"]["parameters"]
    assert all(spec.get("isOptional") for spec in parameters.values())
    assert parameters["model_uri"]["defaultValue"] == lora_finetune.DEMO_MODEL_URI
    assert parameters["training_parameters"]["parameterType"] == "STRUCT"
    assert parameters["tolerations"]["parameterType"] == "LIST"


def test_secrets_reach_the_downloads_as_env_only(compiled: tuple[dict, dict]) -> None:
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-download-dataset", "exec-download-model"):
        secrets = executors[name]["secretAsEnv"]
        by_parameter = {s["secretNameParameter"]["componentInputParameter"]: s for s in secrets}
        hf = by_parameter["hf_token_secret"]
        assert hf["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "token"}]
        assert hf["optional"] is True
        assert "s3_secret" in by_parameter
    for name in ("exec-train-lora", "exec-evaluate"):
        assert "secretAsEnv" not in executors[name]
    for executor in executors.values():
        # A step inside a `dsl.If` group reads the parameter through the group's channel.
        assert executor["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] in (
            "node_selector", "pipelinechannel--node_selector")
        assert executor["tolerations"][0]["tolerationJson"]["componentInputParameter"] in (
            "tolerations", "pipelinechannel--tolerations")


def test_pipeline_outputs_metrics_adapter_and_report(compiled: tuple[dict, dict]) -> None:
    outputs = compiled[0]["root"]["outputDefinitions"]["artifacts"]
    assert sorted(outputs) == ["adapter", "evaluation_report", "metrics", "report",
                               "training_report"]
    assert outputs["training_report"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_every_dataset_setting_reaches_the_download_step(compiled: tuple[dict, dict]) -> None:
    parameters = _tasks(compiled[0])["download-dataset"]["inputs"]["parameters"]
    wired = {name: value["componentInputParameter"] for name, value in parameters.items()
             if "componentInputParameter" in value}
    assert wired == {
        "uri": "dataset_uri", "revision": "dataset_revision", "subset": "dataset_subset",
        "encoding": "dataset_encoding", "split": "split", "column_mapping": "column_mapping",
        "eval_fraction": "eval_fraction", "eval_split": "eval_split", "seed": "seed",
    }
