"""The train step called with one flat set of keyword arguments, as its tests write them."""

from __future__ import annotations

import dataclasses
from typing import Any

from kftune.components.train_lora.step.backends import StepFiles
from kftune.components.train_lora.step.launch import plan, run_training
from kftune.components.train_lora.step.spec import TrainParameters

PARAMETERS = {field.name for field in dataclasses.fields(TrainParameters)}
FILES = {field.name for field in dataclasses.fields(StepFiles)}


def run_step(**arguments: Any) -> dict[str, Any]:
    """`run_training` with the parameters, the files and its keyword options in one dict."""
    parameters = TrainParameters(**{k: v for k, v in arguments.items() if k in PARAMETERS})
    files = StepFiles(**{k: v for k, v in arguments.items() if k in FILES})
    rest = {k: v for k, v in arguments.items() if k not in PARAMETERS | FILES}
    return run_training(parameters, files, **rest)


def plan_of(*, merge: bool = False, uris: Any = None, cluster: Any = None,
            **parameters: Any) -> Any:
    """`launch.plan` of flat parameters."""
    return plan(TrainParameters(**parameters), merge=merge, uris=uris, cluster=cluster)
