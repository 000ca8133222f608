"""The compiled pipeline's optional steps after evaluation: each behind its own switch, off."""

from typing import Any

import pytest
import yaml
from kftune.pipelines import compile as compiling


@pytest.fixture(scope="module")
def pipeline_spec() -> dict[str, Any]:
    return next(yaml.safe_load_all(compiling.compile_all()[compiling.PIPELINE_FILE]))


def _group(spec: dict[str, Any], switch: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `dsl.If` group task named after `switch` and the tasks inside it."""
    (name, group), = [(name, task) for name, task in spec["root"]["dag"]["tasks"].items()
                      if task["taskInfo"]["name"] == switch]
    return group, spec["components"][group["componentRef"]["name"]]["dag"]["tasks"]


def test_switches_default_off(pipeline_spec: dict[str, Any]) -> None:
    parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["merge"]["defaultValue"] is False
    assert parameters["merge"]["parameterType"] == "BOOLEAN"


def test_merge_runs_export_model_on_the_evaluated_adapter(pipeline_spec: dict[str, Any]) -> None:
    group, tasks = _group(pipeline_spec, "merge")
    assert group["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--merge'] == true")
    assert sorted(group["dependentTasks"]) == ["download-model", "evaluate", "train-lora"]
    export = tasks["export-model"]
    assert export["taskInfo"]["name"] == "Merge adapter into the base model"
    wired = {name: value["componentInputArtifact"]
             for name, value in export["inputs"]["artifacts"].items()}
    assert wired == {"adapter": "pipelinechannel--train-lora-adapter",
                     "base_model": "pipelinechannel--download-model-model",
                     "eval_metrics": "pipelinechannel--evaluate-metrics"}
    assert export["inputs"]["parameters"]["task"] == {"componentInputParameter":
                                                      "pipelinechannel--task"}
