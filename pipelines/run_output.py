"""What `kftune run` adds to kfp.local's output: a step counter.

kfp.local says `Executing task 'train-lora'` for each step; `StepCounter` makes that
`[3/4] Executing task 'train-lora'`. The total is the number of component tasks the run will
execute: those of the compiled pipeline whose `dsl.If` conditions hold for the run's arguments
(the switches `merge`, `register`, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_EXECUTING = re.compile(r"Executing task ")
# The conditions kftune's pipelines use (KFP's CEL for `dsl.If`): a parameter compared with a
# literal (true, false, a number, a quoted string), or the negation of such a comparison.
_SWITCH = re.compile(r"^inputs\.parameter_values\['pipelinechannel--(\w+)'\] (==|!=) "
                     r"(true|false|-?\d+(?:\.\d+)?|'[^']*')$")


def _holds(condition: str, values: Mapping[str, Any]) -> bool | None:
    """Whether a task's trigger condition holds; None for a condition this does not read."""
    negated = condition.startswith("!(") and condition.endswith(")")
    match = _SWITCH.match(condition[2:-1] if negated else condition)
    if match is None or match.group(1) not in values:
        return None
    name, operator, literal = match.groups()
    expected = literal[1:-1] if literal.startswith("'") else json.loads(literal)
    holds = (values[name] == expected) == (operator == "==")
    return not holds if negated else holds


def _count(dag: Mapping[str, Any], components: Mapping[str, Any],
           values: Mapping[str, Any]) -> int | None:
    total = 0
    for task in dag.get("tasks", {}).values():
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition:
            holds = _holds(condition, values)
            if holds is None:
                return None
            if not holds:
                continue
        component = components[task["componentRef"]["name"]]
        if "dag" in component:
            inner = _count(component["dag"], components, values)
            if inner is None:
                return None
            total += inner
        else:
            total += 1
    return total


def planned_steps(pipeline_spec: Mapping[str, Any], arguments: Mapping[str, Any]) -> int | None:
    """How many component tasks a run of `pipeline_spec` (as a dict) executes, or None."""
    defaults = {name: definition.get("defaultValue") for name, definition in
                pipeline_spec.get("root", {}).get("inputDefinitions", {})
                .get("parameters", {}).items()}
    return _count(pipeline_spec.get("root", {}).get("dag", {}),
                  pipeline_spec.get("components", {}), {**defaults, **arguments})


class StepCounter:
    """Numbers kfp.local's `Executing task` lines: `[n/total]` (`[n]` without a total)."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.started = 0

    def label(self, line: str) -> str:
        """`line`, numbered when it starts a step."""
        if not _EXECUTING.search(line):
            return line
        self.started += 1
        count = f"{self.started}/{self.total}" if self.total else str(self.started)
        return _EXECUTING.sub(f"[{count}] Executing task ", line, count=1)


def step_counter(pipeline: Any, arguments: Mapping[str, Any]) -> StepCounter:
    """The counter for a run of `pipeline` (a compiled `@dsl.pipeline`) with `arguments`."""
    spec = getattr(pipeline, "pipeline_spec", None)
    if spec is None:
        return StepCounter(None)
    from google.protobuf import json_format

    return StepCounter(planned_steps(json_format.MessageToDict(spec), arguments))
