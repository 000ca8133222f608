"""The compiled pipeline's optional steps after evaluation: each behind its own switch, off."""

from typing import Any

import pytest
import yaml
from kftune.pipelines import compile as compiling


@pytest.fixture(scope="module")
def pipeline_spec() -> dict[str, Any]:
    pipeline = compiling.compile_all(only=(compiling.PIPELINE_FILE,))[compiling.PIPELINE_FILE]
    return next(yaml.safe_load_all(pipeline))


def _dags(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["root"]["dag"]] + [component["dag"] for component in spec["components"].values()
                                    if "dag" in component]


def _group(spec: dict[str, Any], display_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `dsl.If`/`dsl.Else` group task shown as `display_name` and the tasks inside it."""
    (group,) = [task for dag in _dags(spec) for task in dag["tasks"].values()
                if task["taskInfo"]["name"] == display_name]
    return group, spec["components"][group["componentRef"]["name"]]["dag"]["tasks"]


def _wired(task: dict[str, Any]) -> dict[str, str]:
    return {name: value["componentInputArtifact"]
            for name, value in task["inputs"]["artifacts"].items()}


SWITCHES = [("merge", "BOOLEAN", False), ("register", "BOOLEAN", False),
            ("registry_address", "STRING",
             "http://model-registry-service.kubeflow.svc.cluster.local:8080"),
            ("registered_model_name", "STRING", "kftune-lora"), ("model_version", "STRING", ""),
            ("deploy", "BOOLEAN", False), ("serving_name", "STRING", "kftune-lora"),
            ("serving_kind", "STRING", "auto"), ("serving_service_account", "STRING", ""),
            ("serving_resources", "STRUCT", {}), ("benchmark_tasks", "STRING", ""),
            ("benchmark_num_fewshot", "NUMBER_INTEGER", 0),
            ("benchmark_limit", "NUMBER_INTEGER", 100),
            ("benchmark_batch_size", "NUMBER_INTEGER", 8),
            ("benchmark_task_source", "STRING", "")]


@pytest.mark.parametrize(("name", "kind", "default"), SWITCHES, ids=[s[0] for s in SWITCHES])
def test_switches_default_off(pipeline_spec: dict[str, Any], name: str, kind: str,
                              default: Any) -> None:
    parameter = pipeline_spec["root"]["inputDefinitions"]["parameters"][name]
    assert (parameter["parameterType"], parameter["defaultValue"]) == (kind, default)


def test_merge_runs_export_model_on_the_evaluated_adapter(pipeline_spec: dict[str, Any]) -> None:
    group, tasks = _group(pipeline_spec, "merge")
    assert group["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--merge'] == true")
    export = tasks["export-model"]
    assert export["taskInfo"]["name"] == "Merge adapter into the base model"
    assert _wired(export) == {"adapter": "pipelinechannel--train-lora-adapter",
                              "base_model": "pipelinechannel--download-model-model",
                              "eval_metrics": "pipelinechannel--evaluate-metrics"}
    assert export["inputs"]["parameters"]["task"] == {"componentInputParameter":
                                                      "pipelinechannel--task"}


@pytest.mark.parametrize(("group_name", "merged"), [("register", True),
                                                    ("register adapter", False)])
def test_register_records_what_exists(pipeline_spec: dict[str, Any], group_name: str,
                                      merged: bool) -> None:
    group, tasks = _group(pipeline_spec, group_name)
    assert group["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--register'] == true")
    (register,) = tasks.values()
    wired = _wired(register)
    assert wired["adapter"] == "pipelinechannel--train-lora-adapter"
    assert wired["eval_metrics"] == "pipelinechannel--evaluate-metrics"
    assert ("merged_model" in wired) is merged
    parameters = register["inputs"]["parameters"]
    assert parameters["pipeline_run_name"]["runtimeValue"]["constant"] == (
        "{{$.pipeline_job_name}}")
    assert parameters["model_name"] == {"componentInputParameter":
                                        "pipelinechannel--registered_model_name"}


def test_adapter_only_branch_is_the_merge_else(pipeline_spec: dict[str, Any]) -> None:
    group, _ = _group(pipeline_spec, "adapter only")
    assert group["triggerPolicy"]["condition"] == (
        "!(inputs.parameter_values['pipelinechannel--merge'] == true)")


@pytest.mark.parametrize(("group_name", "merged"), [("deploy", True), ("deploy adapter", False)])
def test_deploy_serves_the_merged_model_or_base_and_adapter(pipeline_spec: dict[str, Any],
                                                           group_name: str, merged: bool) -> None:
    group, tasks = _group(pipeline_spec, group_name)
    assert group["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--deploy'] == true")
    (deploy,) = tasks.values()
    assert deploy["taskInfo"]["name"] == "Serve with KServe"
    wired = _wired(deploy)
    assert wired["adapter"] == "pipelinechannel--train-lora-adapter"
    assert wired["base_model"] == "pipelinechannel--download-model-model"
    assert ("merged_model" in wired) is merged
    parameters = deploy["inputs"]["parameters"]
    assert {name: value["componentInputParameter"] for name, value in parameters.items()} == {
        "serving_name": "pipelinechannel--serving_name", "kind": "pipelinechannel--serving_kind",
        "service_account": "pipelinechannel--serving_service_account",
        "resources": "pipelinechannel--serving_resources"}


@pytest.mark.parametrize(("group_name", "tuned"), [
    ("benchmark", "pipelinechannel--export-model-merged_model"),
    ("benchmark adapter", "pipelinechannel--train-lora-adapter")])
def test_benchmark_runs_on_the_merged_model_or_the_adapter(pipeline_spec: dict[str, Any],
                                                          group_name: str, tuned: str) -> None:
    group, tasks = _group(pipeline_spec, group_name)
    assert group["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--benchmark_tasks'] != ''")
    (benchmark,) = tasks.values()
    assert _wired(benchmark) == {"base_model": "pipelinechannel--download-model-model",
                                 "tuned_model": tuned}
    parameters = benchmark["inputs"]["parameters"]
    assert {name: value["componentInputParameter"] for name, value in parameters.items()} == {
        name: f"pipelinechannel--benchmark_{name}"
        for name in ("tasks", "num_fewshot", "limit", "batch_size", "task_source")}
