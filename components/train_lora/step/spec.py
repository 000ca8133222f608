"""What one training run does, whatever runs it: the backend-neutral `TrainingSpec`.

`TrainingSpec` holds the settings every backend honours (task, trainer settings, nodes x
processes, resources per node, image, timeout, plain environment); `from_parameters` builds it from
the component's parameters and reports every bad value at once. `resources_per_worker` is parsed
here and only here (`Resources`): the Kubernetes jobs take their requests from it, and `auto`
processes per node come from its GPU count (`TrainingSpec.procs_per_node`).

The Kubernetes-only settings live in `options.KubernetesOptions`; the job builders (`job.py` for a
PyTorchJob, `trainjob.py` for a TrainJob) take a spec and those options.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

from ...common.errors import Problems
from ...common.images import TRAINER_IMAGE
from ...common.tasks import check_task
from ..config import TrainConfig, validate_lora_config, validate_training_parameters
from ..parallelism import merge_problems

RESOURCE_KEYS = ("gpu", "cpu", "memory", "ephemeral-storage", "gpu_memory")
# Read by the fit estimate (fit.py), not requested from Kubernetes: one GPU's memory.
NOT_REQUESTED = ("gpu_memory",)
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TIMEOUT_MINUTES = 1440

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# Name parts that mark a credential: such a value belongs in a Secret (`secret_env`), not in the
# job's plain environment, where `kubectl get -o yaml` shows it to anyone who can read the job.
_SECRET_NAME_PARTS = frozenset(
    {"KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PWD", "CREDENTIAL", "CREDENTIALS",
     "APIKEY", "AUTH", "PASS", "PRIVATE"}
)
# Environment the operators (or torchrun) set in every pod; a user value would be overwritten or,
# worse, break the rendezvous.
RESERVED_ENV = frozenset(
    {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
     "PYTHONUNBUFFERED"}
)
# The grammar of github.com/distribution/reference: [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


@dataclasses.dataclass(frozen=True)
class Resources:
    """`resources_per_worker`, parsed: requests = limits of every node."""

    gpus: int = 0
    """Whole GPUs per node (`nvidia.com/gpu`); 0 for none."""
    quantities: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """`cpu`, `memory`, `ephemeral-storage` as Kubernetes quantities (strings)."""

    def as_kubernetes(self) -> dict[str, str]:
        """The requests (= limits) of a pod: `{"nvidia.com/gpu": "2", "cpu": "5", ...}`."""
        requests = {GPU_RESOURCE: str(self.gpus)} if self.gpus else {}
        return {**requests, **self.quantities}


def parse_resources(value: Any) -> tuple[Resources, list[str]]:
    """`resources_per_worker` as `Resources`, with the problems found (empty when valid)."""
    if not isinstance(value, Mapping):
        return Resources(), [
            "`resources_per_worker` must be a dict like "
            f'{{"gpu": 2, "cpu": 5, "memory": "10G"}}, got {value!r}'
        ]
    from kubernetes.utils import parse_quantity

    problems: list[str] = []
    gpus = 0
    quantities: dict[str, str] = {}
    for key, item in value.items():
        if key not in RESOURCE_KEYS:
            problems.append(
                f"`resources_per_worker` has an unknown key {key!r}; use {', '.join(RESOURCE_KEYS)}"
            )
        elif key == "gpu":
            count = _whole_number(item)
            if count is None:
                problems.append(
                    f"`resources_per_worker.gpu` must be a whole number of GPUs >= 0, got {item!r}"
                )
            gpus = count or 0
        else:
            try:
                if isinstance(item, bool) or item is None:
                    raise ValueError(item)
                quantity = parse_quantity(item)
            except (ValueError, TypeError, ArithmeticError):
                example = '5 or "500m"' if key == "cpu" else '"10G" or "16Gi"'
                problems.append(
                    f"`resources_per_worker.{key}` must be a Kubernetes quantity like {example}, "
                    f"got {item!r}"
                )
                continue
            if quantity <= 0:
                problems.append(f"`resources_per_worker.{key}` must be > 0, got {item!r}")
            if key not in NOT_REQUESTED:
                quantities[key] = str(item)
    return Resources(gpus=gpus, quantities=quantities), problems


def check_resources(value: Any) -> list[str]:
    """Returns the problems with `resources_per_worker` (empty when it is valid)."""
    return parse_resources(value)[1]


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def looks_like_a_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential (`AWS_SECRET_KEY`)."""
    parts = re.split(r"[-._]", name.upper())
    return any(part in _SECRET_NAME_PARTS for part in parts)


def check_env_name(name: Any, parameter: str) -> list[str]:
    """Problems with one environment variable name of `parameter` (`kubernetes_options.env`)."""
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        return [f"`{parameter}` name must be a valid environment variable name, got {name!r}"]
    if name in RESERVED_ENV or name.startswith("PET_"):
        return [f"`{parameter}.{name}` is set by the training operator / torchrun; remove it"]
    return []


def check_plain_env(env: Any, parameter: str = "kubernetes_options.env") -> list[str]:
    """Problems with plain environment variables (which are never secrets)."""
    if not isinstance(env, Mapping):
        return [f"`{parameter}` must be a dict of NAME: value, got {env!r}"]
    problems = []
    for name, value in env.items():
        problems += check_env_name(name, parameter)
        if isinstance(name, str) and looks_like_a_secret(name):
            # The value may be the secret itself: never echo it.
            problems.append(
                f"`{parameter}.{name}` looks like a credential and would be stored in the job "
                "as plain text (the value is not shown); put it in a Kubernetes Secret and pass "
                f"it as `secret_env` ({name}: 'secret-name:key'; `kftune launch --secret-env "
                f"{name}=SECRET:KEY`)"
            )
        elif not isinstance(value, str):
            problems.append(f"`{parameter}.{name}` must be a string, got {value!r}; quote numbers")
    return problems


def parse_num_procs(value: Any) -> Any:
    """Turns the component's `num_procs_per_worker` string ("2", "auto") into an int or "auto".

    Anything else is returned unchanged, for `TrainingSpec` to report.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.lstrip("+").isdigit():
            return int(text)
    return value


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """One training run, as every backend runs it.

    Raises:
        InputError: from `__post_init__`, listing every bad field at once.
    """

    task: str
    """`causal-lm` or `sequence-classification`."""
    training_parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """`transformers.TrainingArguments` fields (plus kftune's documented extras)."""
    lora_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """`peft.LoraConfig` fields."""
    num_workers: int = 1
    """Nodes: pods of the job, or local torchrun "nodes"."""
    num_procs_per_worker: int | Literal["auto"] = 1
    """Processes per node (torchrun `--nproc-per-node`); `auto`: one per GPU (1 on CPU)."""
    resources: Resources = dataclasses.field(default_factory=Resources)
    """Requests = limits per node (`resources_per_worker`)."""
    image: str = TRAINER_IMAGE
    """Trainer image of the pods."""
    timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES
    """Longest the training may take; the job is deleted and the step fails after it."""
    merge: bool = False
    """Also write merged full weights into the adapter's `merged/`."""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra plain environment of every node (never credentials: see `secret_env`)."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.extend(check_task(self.task))
        problems.extend(_check_trainer_input(self.training_parameters, self.lora_config,
                                             self.task))
        if isinstance(self.training_parameters, Mapping):
            problems.extend(merge_problems(self.training_parameters, self.merge))
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
            problems.add(f"`num_workers` must be a whole number >= 1, got {self.num_workers!r}")
        elif self.num_workers < 1:
            problems.add(f"`num_workers` must be >= 1, got {self.num_workers}")
        nproc = self.num_procs_per_worker
        if nproc != "auto" and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
            problems.add(
                f"`num_procs_per_worker` must be a positive whole number or 'auto', got {nproc!r}"
            )
        if not isinstance(self.image, str) or not _IMAGE_REFERENCE.match(self.image):
            problems.add(
                "`image` must be a container image reference like "
                f"'registry.example.com/team/trainer:1.0', got {self.image!r}"
            )
        if isinstance(self.timeout_minutes, bool) or not isinstance(self.timeout_minutes, int):
            problems.add(
                f"`timeout_minutes` must be a whole number > 0, got {self.timeout_minutes!r}"
            )
        elif self.timeout_minutes <= 0:
            problems.add(f"`timeout_minutes` must be > 0, got {self.timeout_minutes}")
        problems.extend(check_plain_env(self.env))
        problems.raise_if_any()

    @property
    def timeout_seconds(self) -> int:
        """`timeout_minutes` in seconds."""
        return self.timeout_minutes * 60

    def procs_per_node(self, host_gpus: int = 0) -> int:
        """Processes per node; `auto` is the node's GPU count, 1 without GPUs.

        A node's GPUs are those `resources_per_worker.gpu` requests; without that request, those
        of the host (`host_gpus`: what the local backend sees; a pod without a GPU request has
        none). Resolving it here rather than passing `auto` to torchrun keeps a CPU node from
        starting one process per core, and gives the operators a number for `WORLD_SIZE`.
        """
        if self.num_procs_per_worker != "auto":
            return int(self.num_procs_per_worker)
        return max(1, self.resources.gpus or host_gpus)

    def trainer_config(self, *, model_dir: str, data_dir: str, output_dir: str) -> TrainConfig:
        """The trainer's config (`TrainConfig.to_file` writes its `--config` file)."""
        return TrainConfig(
            task=self.task,  # type: ignore[arg-type]  # a Task: checked in __post_init__
            model_dir=model_dir,
            data_dir=data_dir,
            output_dir=output_dir,
            training_parameters=dict(self.training_parameters),
            lora_config=dict(self.lora_config),
            merge=self.merge,
        )


def _check_trainer_input(training_parameters: Any, lora_config: Any, task: Any) -> list[str]:
    problems = []
    if not isinstance(training_parameters, Mapping):
        problems.append(
            f"`training_parameters` must be a dict of TrainingArguments fields, "
            f"got {training_parameters!r}"
        )
    if not isinstance(lora_config, Mapping):
        problems.append(f"`lora_config` must be a dict of LoraConfig fields, got {lora_config!r}")
    if problems:
        return problems
    return [*validate_training_parameters(dict(training_parameters), task),
            *validate_lora_config(dict(lora_config), task)]


def from_parameters(
    *,
    task: str,
    training_parameters: Mapping[str, Any],
    lora_config: Mapping[str, Any],
    num_workers: int,
    num_procs_per_worker: Any,
    resources_per_worker: Any,
    image: str = "",
    timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES,
    env: Any = None,
    merge: bool = False,
) -> tuple[TrainingSpec | None, list[str]]:
    """The `TrainingSpec` of the component's parameters, or None and every problem found."""
    resources, problems = parse_resources(
        {} if resources_per_worker is None else resources_per_worker
    )
    try:
        spec = TrainingSpec(
            task=task,
            training_parameters=training_parameters if training_parameters is not None else {},
            lora_config=lora_config if lora_config is not None else {},
            num_workers=num_workers,
            num_procs_per_worker=parse_num_procs(num_procs_per_worker),
            resources=resources,
            image=image or TRAINER_IMAGE,
            timeout_minutes=timeout_minutes,
            merge=merge,
            env=dict(env) if isinstance(env, Mapping) else ({} if env is None else env),
        )
    except ValueError as error:
        return None, problems + list(getattr(error, "problems", [str(error)]))
    return (spec if not problems else None), problems
