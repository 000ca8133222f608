"""`kubernetes_options`, typed: one frozen dataclass per concern, checked once.

`parse_kubernetes_options` turns the component's `kubernetes_options` dict into
`KubernetesOptions` and reports every bad key or value at once; `check_kubernetes_options` returns
just the problems (what `kftune run --check` shows). Which backend takes which option is decided
here too (`refused_by`): the local backend takes only `env` and `backoff_limit` (how often it
starts a failed job again), a TrainJob has no run policy and no
elastic policy, a PyTorchJob no runtime.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

from ...common import retry
from .backends.choice import Target
from .spec import check_env_name

CLEAN_POD_POLICIES = ("None", "Running", "All")
DEFAULT_RUNTIME = "torch-distributed"
DEFAULT_TTL_SECONDS = 3600
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
    "runtime",
)
# What each backend cannot honour; giving one of these is an error rather than silently ignored.
# `env` reaches the local nodes too, and `backoff_limit` bounds the local backend's restarts. A
# TrainJob's pods are patched through `runtimePatches`, whose pod spec has no priorityClassName,
# and the job itself has no run or elastic policy.
REFUSED = {
    Target.LOCAL: frozenset(KUBERNETES_OPTION_KEYS) - {"env", "backoff_limit"},
    Target.PYTORCHJOB: frozenset({"runtime"}),
    Target.TRAINJOB: frozenset(
        {"elastic_policy", "clean_pod_policy", "backoff_limit", "ttl_seconds_after_finished",
         "priority_class"}
    ),
}

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# `<job>-worker-<index>` names a pod and a Service: a DNS-1035 label of at most 63 characters.
MAX_JOB_NAME_LENGTH = 63 - len("-worker-") - 3


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
class Placement:
    """Where the pods run and who they run as."""

    service_account: str = ""
    """Service account of the pods; empty for the namespace default."""
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Node labels the pods must land on."""
    tolerations: tuple[Toleration, ...] = ()
    """Taints the pods tolerate (e.g. GPU nodes)."""
    priority_class: str = ""
    """PriorityClass of the pods (PyTorchJob only)."""
    queue_name: str = ""
    """Kueue LocalQueue (label `kueue.x-k8s.io/queue-name`); empty without Kueue."""


@dataclasses.dataclass(frozen=True)
class RunPolicy:
    """What the Training Operator does around the PyTorchJob's pods (its `runPolicy`)."""

    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Which pods the operator deletes when the job ends (failed pods stay for their logs)."""
    backoff_limit: int | None = None
    """Pod restarts before the job is marked failed; None for the operator's default."""
    ttl_seconds_after_finished: int | None = DEFAULT_TTL_SECONDS
    """The operator deletes the finished job (and its pods) after this long; None keeps it."""


@dataclasses.dataclass(frozen=True)
class ElasticPolicy:
    """torchrun elastic training: the job keeps going while between `min_nodes` and `max_nodes`."""

    min_nodes: int
    """Fewest pods the job runs with."""
    max_nodes: int
    """Most pods the job runs with."""
    max_restarts: int = retry.DEFAULTS.elastic_restarts
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
class KubernetesOptions:
    """Everything about the job that only a Kubernetes backend has."""

    namespace: str = ""
    """Namespace of the job; empty for the step's own namespace."""
    job_name: str = ""
    """Job name; empty to derive it from the step's output artifact URI."""
    placement: Placement = dataclasses.field(default_factory=Placement)
    """Service account, node selector, tolerations, priority class, Kueue queue."""
    secret_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Environment from Secrets: `{"HF_TOKEN": "secret-name:key"}`, set as `secretKeyRef`."""
    run_policy: RunPolicy = dataclasses.field(default_factory=RunPolicy)
    """PyTorchJob clean-up and restarts."""
    elastic_policy: ElasticPolicy | None = None
    """torchrun elastic training (PyTorchJob); None for a fixed number of pods."""
    pvc: PvcMount | None = None
    """Mount an existing claim instead of staging the inputs to each pod's local disk."""
    runtime: str = DEFAULT_RUNTIME
    """The ClusterTrainingRuntime a TrainJob references."""
    given: frozenset[str] = frozenset()
    """The keys the user set (to refuse those a backend cannot honour)."""

    def refused_by(self, target: Target) -> list[str]:
        """The problems of giving these options to `target` (none yet for `CLUSTER`)."""
        refused = sorted(self.given & REFUSED.get(target, frozenset()))
        if not refused:
            return []
        what = {
            Target.LOCAL: "the local backend runs torchrun on this host (only `env` and "
            "`backoff_limit` apply there); remove them or use a Kubernetes backend",
            Target.PYTORCHJOB: "they apply to backend 'trainjob' only",
            Target.TRAINJOB: "a TrainJob has no such setting (elastic and run policies, priority "
            "class: use backend 'kubernetes', a PyTorchJob, or set them in the runtime)",
        }[target]
        return [
            f"`kubernetes_options` {', '.join(refused)} cannot be used with backend "
            f"{target.value!r}: {what}"
        ]


def check_kubernetes_options(options: Any) -> list[str]:
    """Returns the problems with `kubernetes_options` (empty when it is valid)."""
    return parse_kubernetes_options(options)[1]


def parse_kubernetes_options(options: Any) -> tuple[KubernetesOptions, list[str]]:
    """`kubernetes_options` as `KubernetesOptions`, with every problem found (empty when valid)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        return KubernetesOptions(), [f"`kubernetes_options` must be a dict, got {options!r}"]
    problems: list[str] = []
    for key in options:
        if key not in KUBERNETES_OPTION_KEYS:
            problems.append(
                f"`kubernetes_options` has an unknown key {key!r}; use "
                f"{', '.join(KUBERNETES_OPTION_KEYS)}"
            )
    given = frozenset(key for key in options if key in KUBERNETES_OPTION_KEYS)
    parsed = KubernetesOptions(
        namespace=_text(options, "namespace", problems),
        job_name=_text(options, "job_name", problems),
        placement=_placement(options, problems),
        secret_env=_secret_env(options, problems),
        run_policy=_run_policy(options, problems),
        elastic_policy=_sub_config(options.get("elastic_policy"), ElasticPolicy,
                                   "elastic_policy", problems),
        pvc=_pvc(options.get("pvc"), problems),
        runtime=_text(options, "runtime", problems) or DEFAULT_RUNTIME,
        given=given,
    )
    problems += _check_names(parsed)
    if parsed.elastic_policy is not None:
        problems += _check_elastic(parsed.elastic_policy)
    return parsed, problems


def check_elastic_range(options: KubernetesOptions, num_workers: Any) -> list[str]:
    """`num_workers` must lie within the elastic policy's bounds."""
    policy = options.elastic_policy
    if policy is None or not isinstance(num_workers, int) or _check_elastic(policy):
        return []
    if policy.min_nodes <= num_workers <= policy.max_nodes:
        return []
    return [
        f"`num_workers` must lie between elastic_policy min_nodes={policy.min_nodes} and "
        f"max_nodes={policy.max_nodes}, got {num_workers}"
    ]


# -- one concern each ------------------------------------------------------------------------------


def _text(options: Mapping[str, Any], key: str, problems: list[str]) -> str:
    value = options.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"`kubernetes_options.{key}` must be a string, got {value!r}")
        return ""
    return value


def _mapping(options: Mapping[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    value = options.get(key) or {}
    if not isinstance(value, Mapping):
        problems.append(f"`kubernetes_options.{key}` must be a dict, got {value!r}")
        return {}
    return dict(value)


def _placement(options: Mapping[str, Any], problems: list[str]) -> Placement:
    node_selector = _mapping(options, "node_selector", problems)
    for key, value in node_selector.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(
                "`kubernetes_options.node_selector` must map label names to string values, "
                f"got {key!r}: {value!r}"
            )
    return Placement(
        service_account=_text(options, "service_account", problems),
        node_selector=node_selector,
        tolerations=_tolerations(options.get("tolerations"), problems),
        priority_class=_text(options, "priority_class", problems),
        queue_name=_text(options, "queue_name", problems),
    )


def _tolerations(raw: Any, problems: list[str]) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"`kubernetes_options.tolerations` must be a list of dicts, got {raw!r}")
        return ()
    tolerations = []
    for item in raw:
        toleration = _sub_config(item, Toleration, "tolerations[]", problems)
        if toleration is None:
            continue
        tolerations.append(toleration)
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
        seconds = toleration.toleration_seconds
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            problems.append(
                "`kubernetes_options.tolerations[].toleration_seconds` must be a whole number "
                f"of seconds, got {seconds!r}"
            )
    return tuple(tolerations)


def _secret_env(options: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    secret_env = _mapping(options, "secret_env", problems)
    plain = options.get("env") if isinstance(options.get("env"), Mapping) else {}
    for name, reference in secret_env.items():
        problems += check_env_name(name, "kubernetes_options.secret_env")
        if name in plain:
            problems.append(
                f"`kubernetes_options.secret_env.{name}` is also set in `env`; set it in one"
            )
        if not is_secret_reference(reference):
            # The value may be a secret pasted by mistake: never echo it.
            problems.append(
                f"`kubernetes_options.secret_env.{name}` must be 'secret-name:key' naming a "
                "Kubernetes Secret and one of its keys (the value itself is not shown)"
            )
    return secret_env


def is_secret_reference(reference: Any) -> bool:
    """Whether `reference` is `secret-name:key`."""
    if not isinstance(reference, str) or reference.count(":") != 1:
        return False
    secret, key = reference.split(":")
    return bool(_DNS1123_SUBDOMAIN.match(secret)) and bool(_SECRET_KEY.match(key))


def _run_policy(options: Mapping[str, Any], problems: list[str]) -> RunPolicy:
    policy = RunPolicy(
        clean_pod_policy=options.get("clean_pod_policy") or "Running",
        backoff_limit=options.get("backoff_limit"),
        ttl_seconds_after_finished=options.get("ttl_seconds_after_finished", DEFAULT_TTL_SECONDS),
    )
    if policy.clean_pod_policy not in CLEAN_POD_POLICIES:
        problems.append(
            f"`kubernetes_options.clean_pod_policy` must be one of "
            f"{', '.join(CLEAN_POD_POLICIES)}, got {policy.clean_pod_policy!r}"
        )
    for field in ("backoff_limit", "ttl_seconds_after_finished"):
        value = getattr(policy, field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            problems.append(
                f"`kubernetes_options.{field}` must be a whole number >= 0, got {value!r}"
            )
    return policy


def _pvc(value: Any, problems: list[str]) -> PvcMount | None:
    if isinstance(value, str):
        value = {"claim_name": value} if value else None
    pvc = _sub_config(value, PvcMount, "pvc", problems)
    if pvc is None:
        return None
    if not isinstance(pvc.claim_name, str) or not _DNS1123_SUBDOMAIN.match(pvc.claim_name):
        problems.append(
            "`kubernetes_options.pvc.claim_name` must name a PersistentVolumeClaim "
            f"(DNS-1123), got {pvc.claim_name!r}"
        )
    if pvc.mount_path and not str(pvc.mount_path).startswith("/"):
        problems.append(
            f"`kubernetes_options.pvc.mount_path` must be an absolute path, got {pvc.mount_path!r}"
        )
    return pvc


def _check_names(options: KubernetesOptions) -> list[str]:
    problems = []
    if options.namespace and (
        len(options.namespace) > 63 or not _DNS1123_LABEL.match(options.namespace)
    ):
        problems.append(
            "`kubernetes_options.namespace` must be a DNS-1123 label (lower case letters, "
            f"digits, '-'; at most 63 characters), got {options.namespace!r}"
        )
    subdomains = {
        "service_account": options.placement.service_account,
        "priority_class": options.placement.priority_class,
        "queue_name": options.placement.queue_name,
        "runtime": options.runtime,
    }
    for field, value in subdomains.items():
        if value and (len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value)):
            problems.append(
                f"`kubernetes_options.{field}` must be a DNS-1123 subdomain (lower case letters, "
                f"digits, '-', '.'), got {value!r}"
            )
    if options.job_name and (
        not _DNS1035_LABEL.match(options.job_name) or len(options.job_name) > MAX_JOB_NAME_LENGTH
    ):
        problems.append(
            "`kubernetes_options.job_name` must start with a letter, hold only lower case "
            f"letters, digits and '-', and be at most {MAX_JOB_NAME_LENGTH} characters, "
            f"got {options.job_name!r}"
        )
    return problems


def _check_elastic(policy: ElasticPolicy) -> list[str]:
    for field in ("min_nodes", "max_nodes", "max_restarts"):
        value = getattr(policy, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return [
                f"`kubernetes_options.elastic_policy.{field}` must be a whole number >= 0, "
                f"got {value!r}"
            ]
    if policy.min_nodes < 1 or policy.min_nodes > policy.max_nodes:
        return [
            "`kubernetes_options.elastic_policy` needs 1 <= min_nodes <= max_nodes, got "
            f"min_nodes={policy.min_nodes}, max_nodes={policy.max_nodes}"
        ]
    return []


def _sub_config(value: Any, cls: type, field: str, problems: list[str]) -> Any:
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"`kubernetes_options.{field}` must be a dict, got {value!r}")
        return None
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in value if key not in known]
    if unknown:
        problems.append(
            f"`kubernetes_options.{field}` has unknown keys {unknown}; use {', '.join(known)}"
        )
        return None
    try:
        return cls(**value)
    except TypeError as error:
        problems.append(f"`kubernetes_options.{field}`: {error}")
        return None
