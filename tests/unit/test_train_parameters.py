"""The train step's parameters are defined once (`TrainParameters`); the places KFP needs them
spelled out (the component's signature, the pipeline's) are held equal to that definition."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from kftune.components.train_lora.component import train_lora
from kftune.components.train_lora.step import cli
from kftune.components.train_lora.step.spec import TrainParameters, pipeline_name
from kftune.pipelines import lora_finetune
from kftune.pipelines.parameters import pipeline_parameters

COMPILED = Path(__file__).parents[2] / "compiled"
FIELDS = dataclasses.fields(TrainParameters)
KFP_TYPES = {"str": "String", "int": "Integer", "dict": "Dict"}
ARTIFACTS = ("model", "train_data", "adapter", "metrics", "report")
# The pipeline runs the demo when nothing is set: these defaults are the demo's, not the step's.
DEMO_DEFAULTS = {
    "task": lora_finetune.DEMO_TASK,
    "training_parameters": lora_finetune.DEMO_TRAINING_PARAMETERS,
    "lora_config": lora_finetune.DEMO_LORA_CONFIG,
}


def spec_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def test_the_component_signature_is_the_spec() -> None:
    signature = inspect.signature(train_lora.python_func).parameters
    component = [(name, parameter.annotation.__name__, parameter.default)
                 for name, parameter in signature.items() if name not in ARTIFACTS]
    # KFP takes no mutable default: a dict parameter defaults to None there, {} in the spec.
    expected = [(field.name, field.type, None if field.type == "dict" else spec_default(field))
                for field in FIELDS]

    assert component == expected


def test_the_pipeline_parameters_are_the_spec() -> None:
    pipeline = pipeline_parameters()

    for field in FIELDS:
        kind, default = pipeline[pipeline_name(field)]
        assert kind == KFP_TYPES[field.type], field.name
        assert default == DEMO_DEFAULTS.get(field.name, spec_default(field)), field.name


@pytest.mark.parametrize("name", ["num_workers", "timeout_minutes"])
def test_integer_parameters_stay_integers_in_the_compiled_yaml(name: str) -> None:
    for path in (COMPILED / "components" / "train_lora.yaml", COMPILED / "lora_finetune.yaml"):
        compiled = next(yaml.safe_load_all(path.read_text()))
        default = compiled["root"]["inputDefinitions"]["parameters"][name]["defaultValue"]
        assert isinstance(default, int) and not isinstance(default, bool), path


def test_every_parameter_but_the_options_is_a_launch_flag_with_the_spec_default() -> None:
    actions = {action.dest: action for action in cli._parser()._actions}

    for field in FIELDS:
        if field.name in cli.OWN_FLAGS:
            assert field.name not in actions
            continue
        action = actions[field.name]
        assert action.option_strings == ["--" + field.name.replace("_", "-")]
        if field.type == "int":
            assert action.type is int and action.default == spec_default(field)


def test_the_component_body_passes_every_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[TrainParameters] = []
    monkeypatch.setattr("kftune.components.train_lora.step.launch.run_training",
                        lambda parameters, files, **_: seen.append(parameters))

    class Artifact:
        path = "/tmp/x"
        uri = "s3://b/x"

    values = {field.name: f"value of {field.name}" for field in FIELDS}
    train_lora.python_func(model=Artifact(), train_data=Artifact(), adapter=Artifact(),
                           metrics=Artifact(), report=Artifact(), **values)

    assert seen == [TrainParameters(**values)]
