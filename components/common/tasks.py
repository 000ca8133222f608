"""The fine-tuning tasks kftune knows, shared by every component."""

from typing import Literal, get_args

Task = Literal["causal-lm", "sequence-classification", "preference"]
TASKS: tuple[str, ...] = get_args(Task)
# The label of a position that carries no loss (what torch's cross_entropy skips by default).
IGNORE_INDEX = -100
# What each task trains, exports and serves: a preference adapter is a causal-LM adapter.
_MODEL_TASKS = {"causal-lm": "causal-lm", "sequence-classification": "sequence-classification",
                "preference": "causal-lm"}


def check_task(task: str, *, parameter: str = "task") -> list[str]:
    """Returns the problems with `task` (empty when it is one of `TASKS`)."""
    if task in TASKS:
        return []
    return [f"`{parameter}` must be one of {', '.join(TASKS)}; got {task!r}"]


def model_task(task: str) -> str:
    """The model kind `task` trains: causal-lm (also for preference) or sequence-classification."""
    return _MODEL_TASKS.get(task, task)
