"""The launch configuration and the PyTorchJob it becomes.

`LaunchConfig` holds everything the train_lora step needs to start training, checked as a whole in
`__post_init__` so that every bad input is reported at once, before anything is created on a
cluster. `build_pytorchjob` turns it into a Training Operator v1 (`kubeflow.org/v1`) PyTorchJob
built from the kubeflow-training SDK's and the kubernetes client's typed models; `to_dict` and
`to_yaml` serialize it for the API server or for `kubectl apply`.

The job follows the operator's contract: `num_workers` pods (Master 1 + Worker n-1; Worker n for
an elastic job, whose rendezvous the operator points at `<job>-worker-0`), each running
`num_procs_per_worker` processes (`nprocPerNode`), in a container named `pytorch` that exposes the
port `pytorchjob-port` (23456). Secrets reach the pods only as `secretKeyRef` environment
variables, never as arguments or plain values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ...common.errors import Problems
from ...common.images import TRAINER_IMAGE
from ...common.tasks import check_task

API_GROUP = "kubeflow.org"
API_VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
# The operator finds the training container by this name and injects its environment into it.
CONTAINER_NAME = "pytorch"
PORT_NAME = "pytorchjob-port"
DEFAULT_PORT = 23456
# Node-local scratch space in every pod: staged inputs, checkpoints and the output before upload.
WORK_DIR = "/kftune"
SHM_DIR = "/dev/shm"
GPU_RESOURCE = "nvidia.com/gpu"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_HASH_ANNOTATION = "kftune.dev/spec-hash"
OUTPUT_URI_ANNOTATION = "kftune.dev/output-uri"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TASK_LABEL = "kftune.dev/task"
# The label the operator puts on the pods of a job, and the one naming their replica type.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"

RESOURCE_KEYS = ("gpu", "cpu", "memory", "ephemeral-storage")
CLEAN_POD_POLICIES = ("None", "Running", "All")
KUBERNETES_OPTION_KEYS = (
    "namespace",
    "service_account",
    "node_selector",
    "tolerations",
    "priority_class",
    "queue_name",
    "env",
    "secret_env",
    "elastic_policy",
    "clean_pod_policy",
    "backoff_limit",
    "ttl_seconds_after_finished",
    "pvc",
    "job_name",
)
ELASTIC_POLICY_KEYS = ("min_nodes", "max_nodes", "max_restarts")
PVC_KEYS = ("claim_name", "mount_path", "sub_path")
TOLERATION_KEYS = ("key", "operator", "value", "effect", "toleration_seconds")
# Environment the operator (or torchrun) sets in every pod; a user value would be overwritten or,
# worse, break the rendezvous.
RESERVED_ENV = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "PYTHONUNBUFFERED",
    }
)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# The grammar of github.com/distribution/reference: [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
# `<job>-worker-<index>` names a pod and a Service: a DNS-1035 label of at most 63 characters.
MAX_JOB_NAME_LENGTH = 63 - len("-worker-") - 3


@dataclasses.dataclass(frozen=True)
class ElasticPolicy:
    """torchrun elastic training: the job keeps going while between `min_nodes` and `max_nodes`."""

    min_nodes: int
    """Fewest pods the job runs with."""
    max_nodes: int
    """Most pods the job runs with."""
    max_restarts: int = 3
    """How often torchrun restarts the workers after a failure before the job fails."""


@dataclasses.dataclass(frozen=True)
class PvcMount:
    """An existing PersistentVolumeClaim mounted into every pod instead of node-local staging.

    The inputs are staged onto it once per job (by node rank 0; the other pods wait for it), and
    checkpoints written there survive pod restarts. Multi-node jobs need a ReadWriteMany claim.
    """

    claim_name: str
    """Name of the claim in the job's namespace."""
    mount_path: str = ""
    """Where the claim is mounted in the pods; empty for `/mnt/pvc/<claim_name>`, where
    `pvc://<claim_name>/path` URIs resolve."""
    sub_path: str = ""
    """Directory inside the claim to mount; empty for its root."""

    @property
    def path(self) -> str:
        """The mount path in the pods."""
        return self.mount_path or f"/mnt/pvc/{self.claim_name}"


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A pod toleration (the fields of `V1Toleration`)."""

    key: str = ""
    """Taint key; empty with operator `Exists` tolerates everything."""
    operator: Literal["Equal", "Exists"] = "Equal"
    """`Equal` (key and value match) or `Exists` (key matches)."""
    value: str = ""
    """Taint value for `Equal`."""
    effect: str = ""
    """`NoSchedule`, `PreferNoSchedule`, `NoExecute`, or empty for all."""
    toleration_seconds: int | None = None
    """For `NoExecute`: how long the pod stays bound after the taint appears."""


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """What the train_lora step runs, where and with which resources.

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
    """Pods (Master 1 + Worker n-1) or local "nodes"."""
    num_procs_per_worker: int | Literal["auto"] = 1
    """Processes per pod (torchrun `--nproc-per-node`); `auto`: one per GPU (1 on CPU)."""
    resources_per_worker: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Requests = limits per pod: `gpu` (whole number), `cpu`, `memory`, `ephemeral-storage`."""
    image: str = TRAINER_IMAGE
    """Trainer image of the pods."""
    timeout_minutes: int = 1440
    """Longest the training may take; the job is deleted and the step fails after it."""
    merge: bool = False
    """Also write merged full weights into the adapter's `merged/`."""
    namespace: str = ""
    """Namespace of the PyTorchJob; empty for the step's own namespace."""
    service_account: str = ""
    """Service account of the pods; empty for the namespace default."""
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Node labels the pods must land on."""
    tolerations: tuple[Toleration, ...] = ()
    """Taints the pods tolerate (e.g. GPU nodes)."""
    priority_class: str = ""
    """PriorityClass of the pods."""
    queue_name: str = ""
    """Kueue LocalQueue (label `kueue.x-k8s.io/queue-name`); empty without Kueue."""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra plain environment variables of the pods (never secrets)."""
    secret_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Environment from Secrets: `{"HF_TOKEN": "secret-name:key"}`, set as `secretKeyRef`."""
    elastic_policy: ElasticPolicy | None = None
    """torchrun elastic training; None for a fixed number of pods."""
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Which pods the operator deletes when the job ends (failed pods stay for their logs)."""
    backoff_limit: int | None = None
    """Pod restarts before the job is marked failed; None for the operator's default."""
    ttl_seconds_after_finished: int | None = 3600
    """The operator deletes the finished job (and its pods) after this long; None keeps it."""
    pvc: PvcMount | None = None
    """Mount an existing claim instead of staging the inputs to each pod's local disk."""
    job_name: str = ""
    """PyTorchJob name; empty to derive it from the step's output artifact URI."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.extend(check_task(self.task))
        problems.extend(_check_trainer_input(self.training_parameters, self.lora_config,
                                             self.task))
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
            problems.add(
                f"`num_workers` must be a whole number >= 1, got {self.num_workers!r}"
            )
        elif self.num_workers < 1:
            problems.add(f"`num_workers` must be >= 1, got {self.num_workers}")
        nproc = self.num_procs_per_worker
        if nproc != "auto" and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
            problems.add(
                "`num_procs_per_worker` must be a positive whole number or 'auto', "
                f"got {nproc!r}"
            )
        problems.extend(check_resources(self.resources_per_worker))
        if not isinstance(self.image, str) or not _IMAGE_REFERENCE.match(self.image):
            problems.add(
                f"`image` must be a container image reference like "
                f"'registry.example.com/team/trainer:1.0', got {self.image!r}"
            )
        if isinstance(self.timeout_minutes, bool) or not isinstance(self.timeout_minutes, int):
            problems.add(
                f"`timeout_minutes` must be a whole number > 0, got {self.timeout_minutes!r}"
            )
        elif self.timeout_minutes <= 0:
            problems.add(f"`timeout_minutes` must be > 0, got {self.timeout_minutes}")
        problems.extend(self._check_kubernetes_fields())
        problems.raise_if_any()

    def _check_kubernetes_fields(self) -> list[str]:
        problems: list[str] = []
        if self.namespace and not _DNS1123_LABEL.match(self.namespace):
            problems.append(
                "`kubernetes_options.namespace` must be a DNS-1123 label (lower case letters, "
                f"digits, '-'), got {self.namespace!r}"
            )
        if self.service_account and not _DNS1123_SUBDOMAIN.match(self.service_account):
            problems.append(
                "`kubernetes_options.service_account` must be a DNS-1123 subdomain, "
                f"got {self.service_account!r}"
            )
        if self.priority_class and not _DNS1123_SUBDOMAIN.match(self.priority_class):
            problems.append(
                "`kubernetes_options.priority_class` must be a DNS-1123 subdomain, "
                f"got {self.priority_class!r}"
            )
        if self.queue_name and not _DNS1123_SUBDOMAIN.match(self.queue_name):
            problems.append(
                "`kubernetes_options.queue_name` must be a Kueue LocalQueue name (DNS-1123), "
                f"got {self.queue_name!r}"
            )
        if self.job_name and (
            not _DNS1035_LABEL.match(self.job_name) or len(self.job_name) > MAX_JOB_NAME_LENGTH
        ):
            problems.append(
                "`kubernetes_options.job_name` must start with a letter, hold only lower case "
                f"letters, digits and '-', and be at most {MAX_JOB_NAME_LENGTH} characters, "
                f"got {self.job_name!r}"
            )
        for key, value in self.node_selector.items():
            if not isinstance(key, str) or not isinstance(value, str):
                problems.append(
                    "`kubernetes_options.node_selector` must map label names to string values, "
                    f"got {key!r}: {value!r}"
                )
        for name, value in self.env.items():
            problems.extend(_check_env_name(name, "env"))
            if not isinstance(value, str):
                problems.append(
                    f"`kubernetes_options.env.{name}` must be a string, got {value!r}; "
                    "quote numbers"
                )
        for name, reference in self.secret_env.items():
            problems.extend(_check_env_name(name, "secret_env"))
            if name in self.env:
                problems.append(
                    f"`kubernetes_options.secret_env.{name}` is also set in `env`; set it in one"
                )
            if not _is_secret_reference(reference):
                # The value may be a secret pasted by mistake: never echo it.
                problems.append(
                    f"`kubernetes_options.secret_env.{name}` must be 'secret-name:key' naming a "
                    "Kubernetes Secret and one of its keys (the value itself is not shown)"
                )
        for toleration in self.tolerations:
            if toleration.operator not in ("Equal", "Exists"):
                problems.append(
                    "`kubernetes_options.tolerations[].operator` must be Equal or Exists, "
                    f"got {toleration.operator!r}"
                )
            if toleration.effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
                problems.append(
                    "`kubernetes_options.tolerations[].effect` must be NoSchedule, "
                    f"PreferNoSchedule, NoExecute or empty, got {toleration.effect!r}"
                )
        if self.clean_pod_policy not in CLEAN_POD_POLICIES:
            problems.append(
                f"`kubernetes_options.clean_pod_policy` must be one of "
                f"{', '.join(CLEAN_POD_POLICIES)}, got {self.clean_pod_policy!r}"
            )
        for field in ("backoff_limit", "ttl_seconds_after_finished"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                problems.append(
                    f"`kubernetes_options.{field}` must be a whole number >= 0, got {value!r}"
                )
        if self.elastic_policy is not None:
            problems.extend(self._check_elastic_policy(self.elastic_policy))
        if self.pvc is not None:
            if not _DNS1123_SUBDOMAIN.match(self.pvc.claim_name or ""):
                problems.append(
                    "`kubernetes_options.pvc.claim_name` must name a PersistentVolumeClaim "
                    f"(DNS-1123), got {self.pvc.claim_name!r}"
                )
            if self.pvc.mount_path and not self.pvc.mount_path.startswith("/"):
                problems.append(
                    "`kubernetes_options.pvc.mount_path` must be an absolute path, "
                    f"got {self.pvc.mount_path!r}"
                )
        return problems

    def _check_elastic_policy(self, policy: ElasticPolicy) -> list[str]:
        problems = []
        for field in ELASTIC_POLICY_KEYS:
            value = getattr(policy, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(
                    f"`kubernetes_options.elastic_policy.{field}` must be a whole number >= 0, "
                    f"got {value!r}"
                )
                return problems
        if policy.min_nodes < 1 or policy.min_nodes > policy.max_nodes:
            problems.append(
                "`kubernetes_options.elastic_policy` needs 1 <= min_nodes <= max_nodes, got "
                f"min_nodes={policy.min_nodes}, max_nodes={policy.max_nodes}"
            )
        elif isinstance(self.num_workers, int) and not (
            policy.min_nodes <= self.num_workers <= policy.max_nodes
        ):
            problems.append(
                f"`num_workers` must lie between elastic_policy min_nodes={policy.min_nodes} and "
                f"max_nodes={policy.max_nodes}, got {self.num_workers}"
            )
        return problems

    @property
    def timeout_seconds(self) -> int:
        """`timeout_minutes` in seconds."""
        return self.timeout_minutes * 60

    def trainer_config(self, *, model_dir: str, data_dir: str, output_dir: str) -> dict[str, Any]:
        """The trainer's `--config` JSON for the given directories."""
        return {
            "task": self.task,
            "model_dir": model_dir,
            "data_dir": data_dir,
            "output_dir": output_dir,
            "training_parameters": dict(self.training_parameters),
            "lora_config": dict(self.lora_config),
            "merge": self.merge,
        }


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
    # Pure checks (no torch import), owned by the trainer: the same rules the pods apply.
    from ..config import (
        validate_lora_config,
        validate_training_parameters,
    )

    return [*validate_training_parameters(dict(training_parameters), task),
            *validate_lora_config(dict(lora_config))]


def check_resources(resources: Any) -> list[str]:
    """Returns the problems with `resources_per_worker` (empty when it is valid)."""
    if not isinstance(resources, Mapping):
        return [
            "`resources_per_worker` must be a dict like "
            f'{{"gpu": 2, "cpu": 5, "memory": "10G"}}, got {resources!r}'
        ]
    from kubernetes.utils import parse_quantity

    problems = []
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            problems.append(
                f"`resources_per_worker` has an unknown key {key!r}; use {', '.join(RESOURCE_KEYS)}"
            )
        elif key == "gpu":
            if _gpu_count(value) is None:
                problems.append(
                    f"`resources_per_worker.gpu` must be a whole number of GPUs >= 0, got {value!r}"
                )
        else:
            try:
                if isinstance(value, bool) or value is None:
                    raise ValueError(value)
                quantity = parse_quantity(value)
            except (ValueError, TypeError, ArithmeticError):
                example = '5 or "500m"' if key == "cpu" else '"10G" or "16Gi"'
                problems.append(
                    f"`resources_per_worker.{key}` must be a Kubernetes quantity like {example}, "
                    f"got {value!r}"
                )
                continue
            if quantity <= 0:
                problems.append(f"`resources_per_worker.{key}` must be > 0, got {value!r}")
    return problems


def _gpu_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _check_env_name(name: Any, field: str) -> list[str]:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        return [
            f"`kubernetes_options.{field}` name must be a valid environment variable name, "
            f"got {name!r}"
        ]
    if name in RESERVED_ENV or name.startswith("PET_"):
        return [
            f"`kubernetes_options.{field}.{name}` is set by the Training Operator / torchrun; "
            "remove it"
        ]
    return []


def _is_secret_reference(reference: Any) -> bool:
    if not isinstance(reference, str) or reference.count(":") != 1:
        return False
    secret, key = reference.split(":")
    return bool(_DNS1123_SUBDOMAIN.match(secret)) and bool(_SECRET_KEY.match(key))


def parse_num_procs(value: Any) -> Any:
    """Turns the component's `num_procs_per_worker` string ("2", "auto") into an int or "auto".

    Anything else is returned unchanged, for `LaunchConfig` to report.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.lstrip("+").isdigit():
            return int(text)
    return value


def from_component(
    *,
    task: str,
    training_parameters: Mapping[str, Any],
    lora_config: Mapping[str, Any],
    num_workers: int,
    num_procs_per_worker: Any,
    resources_per_worker: Mapping[str, Any],
    image: str,
    timeout_minutes: int,
    kubernetes_options: Mapping[str, Any],
    extra_problems: Sequence[str] = (),
) -> LaunchConfig:
    """Builds a `LaunchConfig` from the train_lora component's parameters.

    Every problem — in `kubernetes_options`' shape, in `extra_problems` (found by the caller) and in
    the config's own checks — is reported in one `InputError`.

    Raises:
        InputError: listing every bad input.
    """
    problems = Problems()
    problems.extend(extra_problems)
    options = dict(kubernetes_options or {})
    for key in options:
        if key not in KUBERNETES_OPTION_KEYS:
            problems.add(
                f"`kubernetes_options` has an unknown key {key!r}; use "
                f"{', '.join(KUBERNETES_OPTION_KEYS)}"
            )
    elastic = _sub_config(options.get("elastic_policy"), ElasticPolicy, "elastic_policy", problems)
    pvc_option = options.get("pvc")
    if isinstance(pvc_option, str):
        pvc_option = {"claim_name": pvc_option}
    pvc = _sub_config(pvc_option, PvcMount, "pvc", problems)
    tolerations = []
    raw_tolerations = options.get("tolerations") or []
    if not isinstance(raw_tolerations, list):
        problems.add(
            f"`kubernetes_options.tolerations` must be a list of dicts, got {raw_tolerations!r}"
        )
        raw_tolerations = []
    for raw in raw_tolerations:
        toleration = _sub_config(raw, Toleration, "tolerations[]", problems)
        if toleration is not None:
            tolerations.append(toleration)
    mappings = {}
    for key in ("node_selector", "env", "secret_env"):
        value = options.get(key) or {}
        if not isinstance(value, Mapping):
            problems.add(f"`kubernetes_options.{key}` must be a dict, got {value!r}")
            value = {}
        mappings[key] = dict(value)
    try:
        config = LaunchConfig(
            task=task,
            training_parameters=dict(training_parameters or {}),
            lora_config=dict(lora_config or {}),
            num_workers=num_workers,
            num_procs_per_worker=parse_num_procs(num_procs_per_worker),
            resources_per_worker=dict(resources_per_worker or {}),
            image=image or TRAINER_IMAGE,
            timeout_minutes=timeout_minutes,
            namespace=options.get("namespace") or "",
            service_account=options.get("service_account") or "",
            priority_class=options.get("priority_class") or "",
            queue_name=options.get("queue_name") or "",
            tolerations=tuple(tolerations),
            elastic_policy=elastic,
            clean_pod_policy=options.get("clean_pod_policy") or "Running",
            backoff_limit=options.get("backoff_limit"),
            ttl_seconds_after_finished=options.get("ttl_seconds_after_finished", 3600),
            pvc=pvc,
            job_name=options.get("job_name") or "",
            **mappings,
        )
    except ValueError as error:
        problems.extend(getattr(error, "problems", [str(error)]))
        problems.raise_if_any()
        raise
    problems.raise_if_any()
    return config


def _sub_config(value: Any, cls: type, field: str, problems: Problems) -> Any:
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        problems.add(f"`kubernetes_options.{field}` must be a dict, got {value!r}")
        return None
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in known]
    if unknown:
        problems.add(
            f"`kubernetes_options.{field}` has unknown keys {unknown}; use {', '.join(known)}"
        )
        return None
    try:
        return cls(**value)
    except TypeError as error:
        problems.add(f"`kubernetes_options.{field}`: {error}")
        return None


def derive_job_name(output_uri: str, task: str) -> str:
    """A PyTorchJob name that is the same for every attempt of one pipeline step.

    KFP gives each task of each run its own output artifact URI
    (`<pipeline root>/<pipeline>/<run id>/<task>/...`) and keeps it across retries of the step, so a
    hash of it names the job: a retried step finds (and re-attaches to) the job its first attempt
    created, and two runs never share one.
    """
    digest = hashlib.sha256(output_uri.encode()).hexdigest()[:12]
    prefix = "kftune-" + ("clm" if task == "causal-lm" else "cls")
    return f"{prefix}-{digest}"


@dataclasses.dataclass(frozen=True)
class PodIO:
    """Where the pods read their inputs and write the adapter (URIs in the artifact store)."""

    model_uri: str
    """The base model artifact."""
    data_uri: str
    """The training data artifact."""
    output_uri: str
    """The adapter artifact; node rank 0 uploads `output_dir/final` there."""


def spec_hash(config: LaunchConfig, io: PodIO) -> str:
    """A digest of what the job does, to tell a re-attach from a name collision."""
    payload = json.dumps(
        {"config": dataclasses.asdict(config), "io": dataclasses.asdict(io)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pod_args(config: LaunchConfig, io: PodIO) -> list[str]:
    """Arguments of `python -m kftune.components.train_lora.pod.entrypoint` (never secrets)."""
    args = [
        "--task", config.task,
        "--model-uri", io.model_uri,
        "--data-uri", io.data_uri,
        "--output-uri", io.output_uri,
        "--work-dir", WORK_DIR,
        "--training-parameters", json.dumps(dict(config.training_parameters), sort_keys=True),
        "--lora-config", json.dumps(dict(config.lora_config), sort_keys=True),
    ]
    if config.pvc is not None:
        args += ["--shared-dir", config.pvc.path]
    if config.merge:
        args.append("--merge")
    return args


# KFP's default artifact store: MinIO in the kubeflow namespace, its keys in this Secret (KFP copies
# it into every profile namespace).
KFP_MINIO_ENDPOINT = "http://minio-service.kubeflow:9000"
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"


def _artifact_store_env(config: LaunchConfig, io: PodIO) -> tuple[dict[str, str], dict[str, str]]:
    """Defaults that let the pods reach KFP's MinIO for `minio://` URIs, unless the user set them.

    Returns:
        (plain environment, environment from `secret:key` references).
    """
    uris = (io.model_uri, io.data_uri, io.output_uri)
    if not any(uri.startswith("minio://") for uri in uris):
        return {}, {}
    given = set(config.env) | set(config.secret_env)
    keys = {"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"}
    secrets = {
        name: f"{KFP_MINIO_SECRET}:{key}" for name, key in keys.items() if name not in given
    }
    plain = {} if "AWS_ENDPOINT_URL" in given else {"AWS_ENDPOINT_URL": KFP_MINIO_ENDPOINT}
    return plain, secrets


def build_pytorchjob(config: LaunchConfig, io: PodIO, *, job_name: str, namespace: str) -> Any:
    """The PyTorchJob (kubeflow-training SDK model) that runs `config` in `namespace`.

    Args:
        config: the validated launch configuration.
        io: the artifact URIs the pods read and write.
        job_name: the job's name (see `derive_job_name`).
        namespace: where the job goes.

    Returns:
        A `KubeflowOrgV1PyTorchJob`; `to_dict` or `to_yaml` serialize it.
    """
    from kubeflow.training import models
    from kubernetes import client

    gpus = _gpu_count(config.resources_per_worker.get("gpu", 0)) or 0
    quantities: dict[str, str] = {}
    for key, value in config.resources_per_worker.items():
        if key == "gpu":
            if gpus:
                quantities[GPU_RESOURCE] = str(gpus)
        else:
            quantities[key] = str(value)
    resources = client.V1ResourceRequirements(
        requests=dict(quantities) or None, limits=dict(quantities) or None
    )

    env = [client.V1EnvVar(name=name, value=value) for name, value in sorted(config.env.items())]
    store_plain, store_secrets = _artifact_store_env(config, io)
    env += [client.V1EnvVar(name=name, value=value) for name, value in sorted(store_plain.items())]
    for name, reference in sorted({**store_secrets, **config.secret_env}.items()):
        secret, key = reference.split(":")
        env.append(
            client.V1EnvVar(
                name=name,
                value_from=client.V1EnvVarSource(
                    secret_key_ref=client.V1SecretKeySelector(name=secret, key=key)
                ),
            )
        )

    volume_mounts = [
        client.V1VolumeMount(name="work", mount_path=WORK_DIR),
        client.V1VolumeMount(name="dshm", mount_path=SHM_DIR),
    ]
    volumes = [
        client.V1Volume(name="work", empty_dir=client.V1EmptyDirVolumeSource()),
        # NCCL and the DataLoader workers exchange tensors through /dev/shm, which is 64 MiB by
        # default in a container.
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory")),
    ]
    if config.pvc is not None:
        volume_mounts.append(
            client.V1VolumeMount(
                name="shared",
                mount_path=config.pvc.path,
                sub_path=config.pvc.sub_path or None,
            )
        )
        volumes.append(
            client.V1Volume(
                name="shared",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=config.pvc.claim_name
                ),
            )
        )

    container = client.V1Container(
        name=CONTAINER_NAME,
        image=config.image,
        command=["python", "-m", "kftune.components.train_lora.pod.entrypoint"],
        args=pod_args(config, io),
        ports=[client.V1ContainerPort(name=PORT_NAME, container_port=DEFAULT_PORT)],
        env=env or None,
        resources=resources,
        volume_mounts=volume_mounts,
    )
    pod_spec = client.V1PodSpec(
        containers=[container],
        volumes=volumes,
        service_account_name=config.service_account or None,
        node_selector=dict(config.node_selector) or None,
        priority_class_name=config.priority_class or None,
        tolerations=[
            client.V1Toleration(
                key=toleration.key or None,
                operator=toleration.operator,
                value=toleration.value or None,
                effect=toleration.effect or None,
                toleration_seconds=toleration.toleration_seconds,
            )
            for toleration in config.tolerations
        ]
        or None,
    )
    template = client.V1PodTemplateSpec(
        # Istio's sidecar would intercept the rendezvous traffic between the pods.
        metadata=client.V1ObjectMeta(annotations={"sidecar.istio.io/inject": "false"}),
        spec=pod_spec,
    )
    if config.elastic_policy is None:
        replica_specs = {
            "Master": models.KubeflowOrgV1ReplicaSpec(
                replicas=1, restart_policy="OnFailure", template=template
            )
        }
        if config.num_workers > 1:
            replica_specs["Worker"] = models.KubeflowOrgV1ReplicaSpec(
                replicas=config.num_workers - 1, restart_policy="OnFailure", template=template
            )
    else:
        # Elastic jobs are Worker-only: the operator points the c10d rendezvous at
        # `<job>-worker-0` and ranks are assigned when the nodes meet.
        replica_specs = {
            "Worker": models.KubeflowOrgV1ReplicaSpec(
                replicas=config.num_workers, restart_policy="OnFailure", template=template
            )
        }
    elastic = None
    if config.elastic_policy is not None:
        elastic = models.KubeflowOrgV1ElasticPolicy(
            min_replicas=config.elastic_policy.min_nodes,
            max_replicas=config.elastic_policy.max_nodes,
            max_restarts=config.elastic_policy.max_restarts,
            rdzv_backend="c10d",
        )
    labels = {MANAGED_BY_LABEL: "kftune", TASK_LABEL: config.task}
    if config.queue_name:
        labels[KUEUE_QUEUE_LABEL] = config.queue_name
    return models.KubeflowOrgV1PyTorchJob(
        api_version=f"{API_GROUP}/{API_VERSION}",
        kind=KIND,
        metadata=client.V1ObjectMeta(
            name=job_name,
            namespace=namespace,
            labels=labels,
            annotations={
                SPEC_HASH_ANNOTATION: spec_hash(config, io),
                OUTPUT_URI_ANNOTATION: io.output_uri,
            },
        ),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(pod_num_procs(config)),
            elastic_policy=elastic,
            pytorch_replica_specs=replica_specs,
            run_policy=models.KubeflowOrgV1RunPolicy(
                # The operator enforces the timeout too, even if this step is gone.
                active_deadline_seconds=config.timeout_seconds,
                backoff_limit=config.backoff_limit,
                clean_pod_policy=config.clean_pod_policy,
                ttl_seconds_after_finished=config.ttl_seconds_after_finished,
            ),
        ),
    )


def pod_num_procs(config: LaunchConfig) -> int:
    """Processes per pod; `auto` becomes the pod's GPU count (1 without GPUs).

    Resolving it here rather than passing `auto` to torchrun keeps a CPU pod from starting one
    process per core, and lets the operator compute `WORLD_SIZE`.
    """
    if config.num_procs_per_worker != "auto":
        return int(config.num_procs_per_worker)
    return _gpu_count(config.resources_per_worker.get("gpu", 0)) or 1


def to_dict(job: Any) -> dict[str, Any]:
    """The job as the JSON-ready dict the API server takes (None fields dropped)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(job)


def to_yaml(job: Any) -> str:
    """The job as YAML for `kubectl apply -f -`."""
    import yaml

    return yaml.safe_dump(to_dict(job), sort_keys=False, default_flow_style=False)
