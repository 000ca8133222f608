"""deploy_model's logic, without a cluster: the settings, what is served, and the manifests.

Two KServe kinds serve a fine-tuned model (both checked against KServe v0.20's CRD schemas in
the tests):

- `llm-inference-service`: a `serving.kserve.io/v1alpha1` LLMInferenceService (KServe's LLM
  serving, vLLM): `spec.model.uri` the base model, `spec.model.lora.adapters` the adapter, or,
  with `merge`, the merged model alone; a managed HTTPRoute on the default Gateway
  (`spec.router`) gives it its URL.
- `inference-service`: a `serving.kserve.io/v1beta1` InferenceService with the Hugging Face
  runtime (`modelFormat: huggingface`, vLLM for generative models): base model and adapter as two
  `storageUris` under `/mnt/models`, served with `--enable-lora --lora-modules NAME=PATH`; or
  the merged model as `storageUri`. A sequence classifier is served only merged, by the
  runtime's Hugging Face backend (vLLM serves LoRA adapters of generative models only).
- `auto`: the LLMInferenceService where the cluster serves it, else the InferenceService
  (`kserve.py` asks API discovery).

Clients name what they call in the OpenAI request's `model`: the adapter is served as the
service's name, the base model beside it as `<name>-base`; a merged model as the service's name.

The model URIs are what KServe's storage initializer fetches (`s3://`, `gs://`, `hf://`,
`pvc://`, `https://`): a KFP artifact URI `minio://bucket/key` (a default Kubeflow install) is
written as `s3://bucket/key`, a kftune `hf://org/name@revision` as KServe's
`hf://org/name:revision`. URIs with embedded credentials are refused; credentials reach the
predictor only through its ServiceAccount's Secrets, never through the manifest.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from ..common import secrets, uris
from ..common.artifacts import read_adapter_config, read_manifest
from ..common.errors import Problems
from ..common.tasks import model_task

KINDS = ("auto", "llm-inference-service", "inference-service")
GROUP = "serving.kserve.io"
# kind -> (version, plural, Kind)
RESOURCES = {
    "llm-inference-service": ("v1alpha1", "llminferenceservices", "LLMInferenceService"),
    "inference-service": ("v1beta1", "inferenceservices", "InferenceService"),
}
MANAGED_BY = {"app.kubernetes.io/managed-by": "kftune"}
BASE_SUFFIX = "-base"
# The controllers derive longer names (`<name>-predictor-...`, `<name>-kserve-workload-...`)
# that must fit in 63 characters.
MAX_NAME_LENGTH = 45
# What KServe's storage initializer fetches; `minio` is written as `s3`.
SERVED_SCHEMES = ("s3", "gs", "hf", "pvc", "https", "http")
MOUNT_ROOT = "/mnt/models"
# vLLM's default `--max-lora-rank`; a larger adapter rank needs the flag (rounded up to a power
# of two, which vLLM's rank choices include).
VLLM_DEFAULT_MAX_LORA_RANK = 16
RESOURCE_KEYS = ("gpu", "cpu", "memory")
GPU_RESOURCE = "nvidia.com/gpu"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    """Where and how the model is served."""

    name: str
    """The service's name (a DNS-1035 label of at most 45 characters); also the `model` name
    clients call the fine-tuned model by."""
    namespace: str = ""
    """Namespace of the service; empty for the step's own namespace."""
    kind: str = "auto"
    """`llm-inference-service`, `inference-service`, or `auto` (what the cluster serves)."""
    base_model_uri: str = ""
    """The base model the adapter is served on; empty for the base model artifact's URI (the
    bytes it was trained on). E.g. `hf://org/name` to let the predictor pull it from the Hub."""
    service_account: str = ""
    """The predictor's ServiceAccount (its Secrets give the storage initializer S3 credentials);
    empty for the namespace's `default`."""
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Requests = limits of the model server: `{"gpu": 1, "cpu": 4, "memory": "24Gi"}`; empty
    for the runtime's defaults."""
    image: str = ""
    """Model server image instead of the runtime's (e.g. a vLLM CPU image); empty: the runtime's."""
    args: tuple[str, ...] = ()
    """Extra model server (vLLM) arguments, e.g. `("--max-model-len=4096",)`."""
    timeout_seconds: float = 1800.0
    """How long to wait for the service to be Ready."""
    poll_seconds: float = 5.0
    """First delay between status reads (doubled up to 30 s while nothing changes)."""
    delete_on_failure: bool = False
    """Delete the service when it fails or times out; by default it is left for `kubectl
    describe` to show why, and the next run replaces it."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.extend(name_problems(self.name, "serving_name"))
        if self.namespace and (len(self.namespace) > 63
                               or not _DNS1123_LABEL.match(self.namespace)):
            problems.add(f"`namespace` must be empty (the step's namespace) or a DNS-1123 label, "
                         f"got {self.namespace!r}")
        if self.kind not in KINDS:
            problems.add(f"`serving_kind` must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.base_model_uri:
            problems.extend(storage_uri(self.base_model_uri, "base_model_uri")[1])
        if self.service_account and not _DNS1123_SUBDOMAIN.match(self.service_account):
            problems.add(f"`serving_service_account` must be empty or a ServiceAccount name (a "
                         f"DNS-1123 subdomain), got {self.service_account!r}")
        problems.extend(resource_problems(self.resources))
        if not isinstance(self.image, str) or any(c.isspace() for c in self.image):
            problems.add(f"`runtime_image` must be an image reference, got {self.image!r}")
        if not isinstance(self.args, (list, tuple)) or not all(
                isinstance(arg, str) for arg in self.args):
            problems.add(f"`runtime_args` must be a list of strings, got {self.args!r}")
        problems.extend(secrets.field_problems(self, {
            "name": "serving_name", "args": "runtime_args", "image": "runtime_image",
            "service_account": "serving_service_account"}, skip=("base_model_uri",)))
        if not _within(self.timeout_seconds, 1e-3, 86400.0):
            shown = self.timeout_seconds
            problems.add("`timeout_minutes` must be 1 to 1440, got "
                         f"{shown / 60 if isinstance(shown, (int, float)) else shown!r}")
        if not _within(self.poll_seconds, 1e-3, 300.0):
            problems.add(f"`poll_seconds` must be 0.001 to 300.0 s, got {self.poll_seconds!r}")
        problems.raise_if_any()


def _within(value: Any, low: float, high: float) -> bool:
    """Whether `value` is a number (not a bool) from `low` to `high`."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and low <= value <= high)


def name_problems(name: Any, parameter: str) -> list[str]:
    """Problems with a service name (the InferenceService rule: a DNS-1035 label)."""
    if not isinstance(name, str) or not _DNS1035.match(name) or len(name) > MAX_NAME_LENGTH:
        return [f"`{parameter}` must be a lowercase DNS-1035 label of at most {MAX_NAME_LENGTH} "
                "characters (a-z, 0-9, '-', starting with a letter, not ending with '-'), got "
                f"{name!r}; e.g. sentiment-lora"]
    return []


def resource_problems(resources: Any) -> list[str]:
    """Problems with the model server's `resources` (`gpu`, `cpu`, `memory`)."""
    if not isinstance(resources, Mapping):
        return [f'`serving_resources` must be a dict like {{"gpu": 1, "memory": "24Gi"}}, got '
                f"{resources!r}"]
    from kubernetes.utils import parse_quantity

    problems = []
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            problems.append(f"`serving_resources` has an unknown key {key!r}; use "
                            f"{', '.join(RESOURCE_KEYS)}")
        elif key == "gpu":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"`serving_resources.gpu` must be a whole number >= 0, got "
                                f"{value!r}")
        else:
            try:
                if isinstance(value, bool) or parse_quantity(value) <= 0:
                    raise ValueError(value)
            except (ValueError, TypeError, ArithmeticError):
                example = '4 or "500m"' if key == "cpu" else '"24Gi"'
                problems.append(f"`serving_resources.{key}` must be a Kubernetes quantity > 0 "
                                f"like {example}, got {value!r}")
    return problems


def requests(resources: Mapping[str, Any]) -> dict[str, str]:
    """The container's requests (= limits) for `resources`."""
    quantities = {key: str(value) for key, value in resources.items() if key != "gpu"}
    if resources.get("gpu"):
        quantities[GPU_RESOURCE] = str(resources["gpu"])
    return quantities


# Where the model server's storage initializer gets credentials (not from kftune's own Secrets).
_SERVING_CREDENTIALS = (
    "give the predictor a ServiceAccount (`serving_service_account`) whose Secret holds the "
    "storage credentials, as KServe's storage initializer expects (S3 keys, a GCS key, or "
    "an HF_TOKEN)")


def storage_uri(uri: str, parameter: str) -> tuple[str, list[str]]:
    """`uri` as KServe's storage initializer reads it, and the problems with it."""
    problems = uris.credential_problems(uri, parameter=parameter, how=_SERVING_CREDENTIALS)
    if problems:
        return uri, problems
    scheme, separator, rest = uri.partition("://")
    if separator and scheme == "minio":
        return f"s3://{rest}", []
    if separator and scheme == "hf":
        name, at, revision = rest.partition("@")
        return (f"hf://{name}:{revision}" if at else uri), []
    if separator and scheme in SERVED_SCHEMES and rest.strip("/"):
        return uri, []
    return uri, [
        f"`{parameter}` is {uris.display_uri(uri)!r}, which KServe's storage initializer cannot "
        f"fetch (it reads {', '.join(s + '://' for s in SERVED_SCHEMES)}); on a cluster KFP's "
        "artifacts are minio://, s3:// or gs:// URIs, or give `base_model_uri`"
    ]


@dataclasses.dataclass(frozen=True)
class ServingPlan:
    """What is served: the model, its adapters, and the names clients call them by."""

    task: str
    """`causal-lm`, `sequence-classification` or `preference`, as trained."""
    model_uri: str
    """The base model (LoRA) or the merged model, as the storage initializer fetches it."""
    model_name: str
    """The `model` name of `model_uri`: `<name>-base`, or the service's name when merged."""
    adapters: tuple[tuple[str, str], ...]
    """(served name, URI) of each LoRA adapter; empty when the merged model is served."""
    max_lora_rank: int | None
    """vLLM's `--max-lora-rank` when the adapter's rank exceeds vLLM's default."""
    kinds: tuple[str, ...]
    """The kinds that can serve it."""

    def summary(self, name: str) -> dict[str, Any]:
        """For logs and `kftune run`: model URI, the names to call, the adapters."""
        return {"model_uri": self.model_uri, "model_name": self.model_name,
                "adapters": [{"name": n, "uri": u} for n, u in self.adapters],
                "call_with_model": self.adapters[0][0] if self.adapters else name}


def serving_kinds(task: str) -> tuple[str, ...]:
    """The kinds that serve a model trained for `task`, preferred first."""
    task = model_task(task)
    return tuple(RESOURCES) if task == "causal-lm" else ("inference-service",)


def task_problems(task: str, kind: str, *, merged: bool) -> list[str]:
    """Why `kind` cannot serve a `task` model (merged or as base + adapter), if it cannot."""
    problems = []
    task = model_task(task)
    if task != "causal-lm" and not merged:
        problems.append(f"a {task} adapter is served only merged (vLLM serves LoRA adapters of "
                        "generative models only): run with `merge` true")
    if kind not in ("auto", *serving_kinds(task)):
        problems.append(f"`serving_kind` {kind!r} serves causal LMs only (vLLM); a {task} model "
                        "is served by `inference-service` (the Hugging Face runtime)")
    return problems


def _adapter_rank(adapter_dir: str, manifest: dict[str, Any]) -> int:
    config = read_adapter_config(adapter_dir, parameter="adapter")
    ranks = [config.get("r") or (manifest.get("lora") or {}).get("r") or 0,
             *(config.get("rank_pattern") or {}).values()]
    return max(int(rank) for rank in ranks)


def serving_plan(adapter_dir: str, adapter_uri: str, config: DeployConfig, *,
                 base_uri: str = "", merged_dir: str | None = None,
                 merged_uri: str | None = None, check_uris: bool = True) -> ServingPlan:
    """What `config` serves of these artifacts (`check_uris=False`: local paths shown as is).

    Raises:
        InputError: an artifact that is not what its parameter expects, a URI the storage
            initializer cannot fetch, or a model the chosen kind cannot serve.
    """
    problems = Problems()
    manifest = read_manifest(adapter_dir, parameter="adapter")
    if manifest.get("kind") != "adapter":
        problems.add(f"`adapter` must be an adapter artifact, got kind {manifest.get('kind')!r}; "
                     "pass train_lora's adapter output")
    if merged_dir is not None and not read_manifest(merged_dir, parameter="merged_model").get(
            "merged_from"):
        problems.add("`merged_model` must be export_model's output (its manifest has no "
                     "merged_from)")
    task = model_task(manifest.get("task") or "causal-lm")
    kinds = serving_kinds(task)
    problems.extend(task_problems(task, config.kind, merged=merged_dir is not None))

    def served(uri: str, parameter: str) -> str:
        translated, found = storage_uri(uri, parameter)
        if check_uris:
            problems.extend(found)
        return translated

    if merged_dir is not None:
        model_uri = served(merged_uri or merged_dir, "merged_model")
        adapters: tuple[tuple[str, str], ...] = ()
        model_name, rank = config.name, None
    else:
        model_uri = served(config.base_model_uri or base_uri, "base_model")
        adapters = ((config.name, served(adapter_uri, "adapter")),)
        model_name = config.name + BASE_SUFFIX
        rank = _adapter_rank(adapter_dir, manifest) if manifest.get("kind") == "adapter" else 0
        rank = 2 ** math.ceil(math.log2(rank)) if rank > VLLM_DEFAULT_MAX_LORA_RANK else None
    problems.raise_if_any()
    return ServingPlan(task=task, model_uri=model_uri, model_name=model_name, adapters=adapters,
                       max_lora_rank=rank, kinds=kinds)


def _metadata(config: DeployConfig, namespace: str) -> dict[str, Any]:
    namespaced = {"namespace": namespace} if namespace else {}  # a preview names none
    return {"name": config.name, **namespaced, "labels": dict(MANAGED_BY)}


def llm_inference_service(plan: ServingPlan, config: DeployConfig,
                          namespace: str) -> dict[str, Any]:
    """The LLMInferenceService (`serving.kserve.io/v1alpha1`) serving `plan`."""
    model: dict[str, Any] = {"uri": plan.model_uri, "name": plan.model_name}
    if plan.adapters:
        model["lora"] = {"adapters": [{"name": name, "uri": uri} for name, uri in plan.adapters]}
        if plan.max_lora_rank:
            model["lora"]["maxRank"] = plan.max_lora_rank
    container: dict[str, Any] = {"name": "main"}
    if config.image:
        container["image"] = config.image
    if config.args:
        # The template's command runs `vllm serve ... ${VLLM_ADDITIONAL_ARGS}`.
        container["env"] = [{"name": "VLLM_ADDITIONAL_ARGS", "value": " ".join(config.args)}]
    if config.resources:
        quantities = requests(config.resources)
        container["resources"] = {"requests": quantities, "limits": dict(quantities)}
    template: dict[str, Any] = {"containers": [container]}
    if config.service_account:
        template["serviceAccountName"] = config.service_account
    version, _, kind = RESOURCES["llm-inference-service"]
    return {"apiVersion": f"{GROUP}/{version}", "kind": kind,
            "metadata": _metadata(config, namespace),
            "spec": {"model": model, "replicas": 1, "router": {"route": {}, "gateway": {}},
                     "template": template}}


def _runtime_args(plan: ServingPlan, config: DeployConfig) -> tuple[list[str], dict[str, Any]]:
    """The Hugging Face runtime's arguments and where the model comes from."""
    args = [f"--model_name={plan.model_name}"]
    if not plan.adapters:
        if plan.task == "sequence-classification":
            args += ["--backend=huggingface", "--task=sequence_classification"]
        return args + list(config.args), {"storageUri": plan.model_uri}
    base_dir = f"{MOUNT_ROOT}/base"
    storage = [{"uri": plan.model_uri, "mountPath": base_dir}]
    args += [f"--model_dir={base_dir}", "--enable-lora"]
    for name, uri in plan.adapters:
        storage.append({"uri": uri, "mountPath": f"{MOUNT_ROOT}/lora/{name}"})
        args += ["--lora-modules", f"{name}={MOUNT_ROOT}/lora/{name}"]
    if plan.max_lora_rank:
        args.append(f"--max-lora-rank={plan.max_lora_rank}")
    return args + list(config.args), {"storageUris": storage}


def inference_service(plan: ServingPlan, config: DeployConfig, namespace: str) -> dict[str, Any]:
    """The InferenceService (`serving.kserve.io/v1beta1`, Hugging Face runtime) serving `plan`."""
    args, storage = _runtime_args(plan, config)
    model: dict[str, Any] = {"modelFormat": {"name": "huggingface"}, "args": args}
    predictor: dict[str, Any] = {"model": model}
    if "storageUri" in storage:
        model["storageUri"] = storage["storageUri"]
    else:
        predictor["storageUris"] = storage["storageUris"]
    if config.image:
        model["image"] = config.image
    if config.resources:
        quantities = requests(config.resources)
        model["resources"] = {"requests": quantities, "limits": dict(quantities)}
    if config.service_account:
        predictor["serviceAccountName"] = config.service_account
    version, _, kind = RESOURCES["inference-service"]
    return {"apiVersion": f"{GROUP}/{version}", "kind": kind,
            "metadata": _metadata(config, namespace), "spec": {"predictor": predictor}}


def manifest(kind: str, plan: ServingPlan, config: DeployConfig, namespace: str) -> dict[str, Any]:
    """The manifest of `kind` (`llm-inference-service` or `inference-service`) for `plan`."""
    build = llm_inference_service if kind == "llm-inference-service" else inference_service
    return build(plan, config, namespace)


def endpoints(kind: str, url: str, plan: ServingPlan) -> dict[str, str]:
    """Where clients send requests: the OpenAI-compatible completions route, or predict."""
    if plan.task != "causal-lm":
        return {"predict_url": f"{url}/v1/models/{plan.model_name}:predict"}
    # The Hugging Face runtime serves the OpenAI API under /openai; vLLM itself at the root.
    prefix = "/openai" if kind == "inference-service" else ""
    return {"completions_url": f"{url}{prefix}/v1/completions",
            "chat_completions_url": f"{url}{prefix}/v1/chat/completions"}
