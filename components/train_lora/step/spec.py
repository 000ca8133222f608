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

from ...common.errors import InputError, Problems
from ...common.images import TRAINER_IMAGE
from ...common.tasks import check_task
from ..config import TrainConfig, validate_lora_config, validate_training_parameters
from ..parallelism import merge_problems

RESOURCE_KEYS = ("gpu", "cpu", "memory", "ephemeral-storage", "gpu_memory")
# Read by the fit estimate (fit.py), not requested from Kubernetes: one GPU's memory.
NOT_REQUESTED = ("gpu_memory",)
GPU_RESOURCE = "nvidia.com/gpu"

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


TRAIN_STEP = "train_lora"


def _parameter(default: Any, doc: str, *, secret: bool = False,
               steps: tuple[str, ...] = (TRAIN_STEP,), pipeline_name: str = "") -> Any:
    """One parameter of the train step: its default, one-line doc and where else it goes."""
    factory = {"default_factory": lambda: type(default)(default)} if isinstance(
        default, (dict, list)) else {"default": default}
    return dataclasses.field(**factory, metadata={  # type: ignore[call-overload]
        "doc": doc, "secret": secret, "steps": steps, "pipeline_name": pipeline_name})


@dataclasses.dataclass(frozen=True)
class TrainParameters:
    """The train step's parameters as a user gives them: the one definition of each.

    Each field is one parameter of the train_lora component (in its order, with its type and
    default), of the pipeline (`pipeline_name` where it differs) and of `kftune launch` (a flag
    each); its metadata holds the one-line doc, whether it may hold a secret (none may: credentials
    go in Secrets) and which steps take it. The component's literal signature (KFP embeds its
    source) and the pipeline's are held equal to it by tests/unit/test_train_parameters.py.
    The values are checked by `launch.plan`, which turns them into a `TrainingSpec`.
    """

    task: str = _parameter("causal-lm",
                           "`causal-lm`, `sequence-classification` or `preference` (DPO).",
                           steps=(TRAIN_STEP, "download_model", "evaluate"))
    training_parameters: dict = _parameter(
        {}, "`transformers.TrainingArguments` fields and kftune extras.")
    lora_config: dict = _parameter({}, "`peft.LoraConfig` fields.")
    num_workers: int = _parameter(1, "Pods (PyTorchJob Master 1 + Worker n-1, or TrainJob "
                                  "nodes), or local \"nodes\".")
    num_procs_per_worker: str = _parameter(
        "1", "Processes per pod (torchrun `--nproc-per-node`): a number or `auto`.")
    resources_per_worker: dict = _parameter(
        {}, 'Requests = limits per pod, e.g. `{"gpu": 2, "cpu": 5, "memory": "10G"}`.')
    backend: str = _parameter("auto", "`kubernetes` (PyTorchJob), `trainjob` (TrainJob), "
                              "`local` (torchrun on this host) or `auto`.")
    image: str = _parameter("", "Trainer image of the pods; empty for kftune's.",
                            pipeline_name="trainer_image")
    timeout_minutes: int = _parameter(
        1440, "Fail the step (and delete the job) when training takes longer.")
    kubernetes_options: dict = _parameter(
        {}, "Everything else about the training job (namespace, service_account, env, ...).")

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> TrainParameters:
        """The parameters among `values` (a component's `locals()`); a None dict is empty."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        return cls(**{name: ({} if value is None and fields[name].type == "dict" else value)
                      for name, value in values.items() if name in fields})

    @classmethod
    def from_pipeline(cls, arguments: Mapping[str, Any]) -> TrainParameters:
        """The train step's parameters among the pipeline's `arguments`."""
        return cls(**{field.name: arguments[pipeline_name(field)]
                      for field in dataclasses.fields(cls)})

    def as_pipeline_call(self) -> dict[str, Any]:
        """Keyword arguments of the component (by their names), as a pipeline passes them."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> TrainParameters:
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)


def pipeline_name(field: dataclasses.Field) -> str:
    """The pipeline parameter that feeds the train step's parameter `field`."""
    return field.metadata["pipeline_name"] or field.name


def train_arguments(pipeline_arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The train step's keyword arguments from the pipeline's (KFP channels while it is built)."""
    return {field.name: pipeline_arguments[pipeline_name(field)]
            for field in dataclasses.fields(TrainParameters)}


DEFAULT_TIMEOUT_MINUTES: int = TrainParameters.timeout_minutes


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
    """`causal-lm`, `sequence-classification` or `preference`."""
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
    parameters: TrainParameters, *, env: Any = None, merge: bool = False
) -> tuple[TrainingSpec | None, list[str]]:
    """The `TrainingSpec` of the step's parameters, or None and every problem found.

    `env` is `kubernetes_options.env` (plain environment of every node); `merge` also writes
    merged full weights (`kftune launch --merge`).
    """
    resources_per_worker = parameters.resources_per_worker
    resources, problems = parse_resources(
        {} if resources_per_worker is None else resources_per_worker
    )
    try:
        spec = TrainingSpec(
            task=parameters.task,
            training_parameters=_or_empty(parameters.training_parameters),
            lora_config=_or_empty(parameters.lora_config),
            num_workers=parameters.num_workers,
            num_procs_per_worker=parse_num_procs(parameters.num_procs_per_worker),
            resources=resources,
            image=parameters.image or TRAINER_IMAGE,
            timeout_minutes=parameters.timeout_minutes,
            merge=merge,
            env=dict(env) if isinstance(env, Mapping) else ({} if env is None else env),
        )
    except InputError as error:
        return None, problems + list(error.problems)
    except ValueError as error:
        return None, problems + [str(error)]
    return (spec if not problems else None), problems


def _or_empty(value: Any) -> Any:
    return value if value is not None else {}
