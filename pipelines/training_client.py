"""The reference's one-call fine-tuning API on kftune: `TrainingClient().train(...)`.

The Kubeflow Training Operator SDK (kubeflow-training 1.9) fine-tunes with::

    from kubeflow.training import TrainingClient
    from kubeflow.storage_initializer.hugging_face import (
        HuggingFaceModelParams, HuggingFaceTrainerParams, HuggingFaceDatasetParams)

    TrainingClient().train(name=..., model_provider_parameters=HuggingFaceModelParams(...), ...)

The same call runs on kftune with one changed import, `from kftune import TrainingClient,
HuggingFaceModelParams, ...`: the parameter classes here have the reference's names and fields
(plus a few optional kftune ones at the end), and `train` its parameters (plus keyword-only kftune
ones). What happens differs where the reference has known defects (DESIGN.md):

- No PersistentVolumeClaim (`storage_config`): every pod fetches the model and the data itself, once
  per node, onto its node-local disk, with the download components' code (split slicing, column
  mapping, label encoding, manifests). Nothing needs ReadOnlyMany/ReadWriteMany storage and nothing
  is left behind when the job is deleted.
- The adapter is saved: node rank 0 uploads it to `output_uri` (default: KFP's MinIO on a cluster,
  `runs/<name>/adapter` locally; logged, and `get_adapter_uri(name)` tells it).
- Only what the user set is honoured: each `TrainingArguments` / `LoraConfig` is compared with a
  default one; unchanged fields are not passed (kftune's defaults apply: config.py), and a changed
  field kftune cannot honour is an error that names it, before anything is created.
- No token in any argument: `access_token` is refused (use a Secret, as `env_vars` with a
  `secretKeyRef`), and so are S3 keys.
- Without a cluster (no kubeconfig, not in a pod), or with `backend="local"`, the job runs on this
  machine: the same pods' code as local torchrun "nodes", and `train` returns when it is done.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..components.common import cluster
from ..components.common.cluster import KUBECONFIG_FIX
from ..components.common.errors import InputError, reading
from ..components.train_lora import parallelism

logger = logging.getLogger("kftune")

# transformer_type -> kftune task.
TASKS = {
    "AutoModelForSequenceClassification": "sequence-classification",
    "AutoModelForCausalLM": "causal-lm",
}
JOB_CONDITIONS = frozenset({"Created", "Running", "Restarting", "Succeeded", "Failed"})
# The reference's `storage_config` default (kubeflow.training.constants PVC_DEFAULT_*).
REFERENCE_STORAGE_CONFIG = {
    "size": "10Gi",
    "storage_class": None,
    "access_modes": ["ReadWriteOnce", "ReadOnlyMany"],
}
# KFP's artifact store, present in every Kubeflow installation; the job reads its keys from the
# `mlpipeline-minio-artifact` Secret KFP puts in each profile namespace.
DEFAULT_CLUSTER_OUTPUT = "minio://mlpipeline/kftune/{namespace}/{name}/adapter"
DEFAULT_LOCAL_OUTPUT = "runs/{name}/adapter"
# LoRA fields passed even when they equal PEFT's defaults: they define the adapter, and the job's
# arguments then say what it trains.
CORE_LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "bias")
# A job name: a DNS-1035 label (its pods and Services are named after it).
_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _default_training_arguments() -> Any:
    import transformers

    return transformers.TrainingArguments()


def _default_lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig()


@dataclasses.dataclass
class HuggingFaceModelParams:
    """The model (kubeflow.storage_initializer.hugging_face.HuggingFaceModelParams)."""

    model_uri: str
    """`hf://org/name[@revision]`; kftune also takes s3://, gs://, pvc://claim/path (and locally
    a path or pkg://module/path)."""
    transformer_type: Any
    """`transformers.AutoModelForSequenceClassification` or `transformers.AutoModelForCausalLM`
    (the class or its name): the task."""
    access_token: str | None = None
    """Refused: a token in the job is visible to anyone who can read it. Put it in a Secret."""
    num_labels: int | None = None
    """The number of classes the rows must have (sequence classification); None: counted."""
    revision: str = ""
    """kftune: a Hub revision (or write `hf://org/name@revision`)."""
    trust_remote_code: bool = False
    """kftune: allow the repository's own Python code (the reference always does)."""

    def __post_init__(self) -> None:
        if self.model_uri == "" or self.model_uri is None:
            raise ValueError("model_uri cannot be empty.")


@dataclasses.dataclass
class HuggingFaceDatasetParams:
    """The data (kubeflow.storage_initializer.hugging_face.HuggingFaceDatasetParams)."""

    repo_id: str
    """A Hub dataset (`yelp_review_full`, `org/name`); kftune also takes a URI here (s3://, gs://,
    https://, pvc://, and locally a path or pkg://)."""
    access_token: str | None = None
    """Refused: a token in the job is visible to anyone who can read it. Put it in a Secret."""
    split: str | None = None
    """Rows, in `datasets` slicing syntax (`train[:3000]`); None: `train`."""
    subset: str = ""
    """kftune: the dataset configuration (subset) name."""
    revision: str = ""
    """kftune: a Hub revision."""
    column_mapping: Mapping[str, str] | None = None
    """kftune: role -> source column (roles: text, label, prompt, completion, messages)."""

    def __post_init__(self) -> None:
        if self.repo_id == "" or self.repo_id is None:
            raise ValueError("repo_id is None")


@dataclasses.dataclass
class S3DatasetParams:
    """Data in an S3-compatible store (kubeflow.storage_initializer.s3.S3DatasetParams)."""

    endpoint_url: str
    """The store's endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or a MinIO URL."""
    bucket_name: str
    """The bucket."""
    file_key: str
    """The object key, or a prefix of several files."""
    region_name: str | None = None
    """The region, if the store needs one."""
    access_key: str | None = None
    """Refused: keys in the job are visible to anyone who can read it. Put them in a Secret."""
    secret_key: str | None = None
    """Refused, likewise."""
    split: str = "train"
    """kftune: rows, in `datasets` slicing syntax."""
    column_mapping: Mapping[str, str] | None = None
    """kftune: role -> source column."""

    def __post_init__(self) -> None:
        if self.bucket_name is None or self.endpoint_url is None or self.file_key is None:
            raise ValueError("bucket_name or endpoint_url or file_key is None")


@dataclasses.dataclass
class HuggingFaceTrainerParams:
    """The trainer's settings (as kubeflow.storage_initializer's HuggingFaceTrainerParams)."""

    training_parameters: Any = dataclasses.field(default_factory=_default_training_arguments)
    """A `transformers.TrainingArguments`: the fields changed from their defaults are passed."""
    lora_config: Any = dataclasses.field(default_factory=_default_lora_config)
    """A `peft.LoraConfig`."""


# -- translation ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Translated:
    """The reference's parameters in kftune's terms."""

    task: str
    model_uri: str
    model_source: dict[str, Any]
    data_uri: str
    data_source: dict[str, Any]
    training_parameters: dict[str, Any]
    lora_config: dict[str, Any]
    env: dict[str, str]
    settings_refused: bool = False
    """Whether `training_parameters` or `lora_config` had problems (already reported)."""


TRAINING_ARGUMENTS = "trainer_parameters.training_parameters"
LORA_CONFIG = "trainer_parameters.lora_config"


def _reference_names(problem: str) -> str:
    """A train step problem under the reference's parameter names (`trainer_parameters....`)."""
    for own, reference in (("training_parameters", TRAINING_ARGUMENTS),
                           ("lora_config", LORA_CONFIG)):
        if problem.startswith(f"`{own}.") or problem.startswith(f"`{own}`"):
            return f"`{reference}" + problem[len(own) + 1:]
    return problem


def task_for(transformer_type: Any) -> tuple[str, list[str]]:
    """The kftune task of `transformer_type` (a transformers Auto class or its name)."""
    name = getattr(transformer_type, "__name__", transformer_type)
    if isinstance(name, str) and name in TASKS:
        return TASKS[name], []
    return "", [
        f"`model_provider_parameters.transformer_type` must be one of "
        f"{', '.join(f'transformers.{key}' for key in TASKS)}, got {name!r}; kftune fine-tunes "
        "LoRA adapters for these two tasks"
    ]


def _plain(value: Any) -> Any:
    """A JSON-ready copy: sets as sorted lists, enums as their values."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return value


def _untouched_like(arguments: Any) -> Any:
    """A default `TrainingArguments` of the same class and `output_dir`, as a notebook makes it.

    `disable_tqdm` is derived from transformers' log level when the object is built, so the default
    is built at transformers' own default level (warning): otherwise a log level changed since the
    user built theirs (kfp.local's quiet steps set "error") would make an explicit value look
    untouched.
    """
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()
    try:
        return type(arguments)(output_dir=arguments.output_dir)
    finally:
        transformers_logging.set_verbosity(previous)


def training_parameters_from(arguments: Any, task: str | None) -> tuple[dict[str, Any], list[str]]:
    """The fields of a `transformers.TrainingArguments` changed from their defaults.

    The default is built with the same `output_dir`, so that fields derived from it compare equal.
    Only those fields are passed; kftune's own defaults apply to the others. Their values are
    checked once, by the train step's own check (`launch.plan`); `task` is that check's.
    """
    import transformers

    del task  # the train step's check reads it with the values
    if not isinstance(arguments, transformers.TrainingArguments):
        return {}, [
            f"`{TRAINING_ARGUMENTS}` must be a transformers.TrainingArguments, got "
            f"{type(arguments).__name__}"
        ]
    default = _untouched_like(arguments)
    given, untouched = arguments.to_dict(), default.to_dict()
    changed = _users_fsdp({key: _plain(value) for key, value in given.items()
                           if key not in untouched or untouched[key] != value})
    return changed, []


# What transformers fills into `fsdp_config` when `fsdp` is set (4.x and 5.x): not the user's words.
_FSDP_CONFIG_DEFAULTS = {"min_num_params": 0, "xla": False, "xla_fsdp_v2": False,
                         "xla_fsdp_grad_ckpt": False, "version": 2}


def _users_fsdp(changed: dict[str, Any]) -> dict[str, Any]:
    """`fsdp` and `fsdp_config` read back into what the user wrote.

    transformers normalizes `TrainingArguments(fsdp="full_shard")`: 4.x into a list of options
    and an `fsdp_config` of its defaults, 5.x into `fsdp=True` with the sharding word moved into
    `fsdp_config` (`reshard_after_forward` true for full_shard, false for shard_grad_op; `offload`
    as `cpu_offload`). The words come back from there; the defaults transformers added go.
    """
    if not changed.get("fsdp"):
        return changed
    config = {key: value for key, value in dict(changed.get("fsdp_config") or {}).items()
              if _FSDP_CONFIG_DEFAULTS.get(key, object()) != value}
    value = changed["fsdp"]
    words = [] if value is True else (value.split() if isinstance(value, str) else
                                      [str(word) for word in value])
    if value is True or not any(word in parallelism.SHARDING_WORDS for word in words):
        reshard = config.pop("reshard_after_forward", True)
        words.insert(0, reshard if isinstance(reshard, str) else
                     "full_shard" if reshard else "shard_grad_op")
    if config.pop("cpu_offload", False) and "offload" not in words:
        words.append("offload")
    result = {**changed, "fsdp": " ".join(word.lower() for word in words)}
    if config:
        result["fsdp_config"] = config
    else:
        result.pop("fsdp_config", None)
    return result


def lora_config_from(config: Any) -> tuple[dict[str, Any], list[str]]:
    """The fields of a `peft.LoraConfig` changed from their defaults (plus `CORE_LORA_FIELDS`).

    Checked once, with the other settings, by the train step's own check (`launch.plan`).
    """
    from peft import LoraConfig

    if not isinstance(config, LoraConfig):
        return {}, [f"`{LORA_CONFIG}` must be a peft.LoraConfig, got {type(config).__name__}"]
    default = LoraConfig()
    fields = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in CORE_LORA_FIELDS or value != getattr(default, field.name):
            fields[field.name] = _plain(value)
    return fields, []


def _env_from(value: Any, parameter: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """`env_vars` (dict, or list of V1EnvVar) as (plain env, secret env `secret:key`, problems)."""
    if value is None:
        return {}, {}, []
    if isinstance(value, Mapping):
        return {str(key): str(item) for key, item in value.items()}, {}, []
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    problems: list[str] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        name = getattr(item, "name", None)
        source = getattr(item, "value_from", None)
        reference = getattr(source, "secret_key_ref", None) if source is not None else None
        if name and reference is not None:
            secret[name] = f"{reference.name}:{reference.key}"
        elif name and source is None:
            plain[name] = "" if item.value is None else str(item.value)
        else:
            problems.append(
                f"`{parameter}` entries must be V1EnvVar with a value or a secretKeyRef, got "
                f"{type(item).__name__} {name or ''}".rstrip()
            )
    return plain, secret, problems


def _credential_problems(model: Any, dataset: Any) -> list[str]:
    """Tokens and keys given in the call: refused (the reference puts them in the pods' args)."""
    problems = []
    for owner, holder, fields in (
        ("model_provider_parameters", model, ("access_token",)),
        ("dataset_provider_parameters", dataset, ("access_token", "access_key", "secret_key")),
    ):
        for field in fields:
            if getattr(holder, field, None):
                problems.append(
                    f"`{owner}.{field}` is a credential, which would be stored in the job for "
                    "anyone who can read it (the value is not shown); put it in a Kubernetes "
                    "Secret and pass it as env_vars=[V1EnvVar(name='HF_TOKEN' (or "
                    "'AWS_ACCESS_KEY_ID', ...), value_from=V1EnvVarSource(secret_key_ref="
                    "V1SecretKeySelector(name=SECRET, key=KEY)))]"
                )
    return problems


def _model_source(model: HuggingFaceModelParams, task: str) -> tuple[dict[str, Any], list[str]]:
    from ..components.train_lora.step import sources

    settings, problems = sources.model_source(
        model.model_uri, revision=model.revision, task=task or "causal-lm",
        trust_remote_code=model.trust_remote_code,
    )
    return settings, sources.renamed(problems, {
        "uri": "model_provider_parameters.model_uri",
        "revision": "model_provider_parameters.revision",
        "trust_remote_code": "model_provider_parameters.trust_remote_code",
    } if task else {})


def _data_source(
    dataset: HuggingFaceDatasetParams | S3DatasetParams, num_labels: int | None
) -> tuple[str, dict[str, Any], dict[str, str], list[str]]:
    """(URI, pod settings, plain environment, problems) of the reference's dataset parameters."""
    from ..components.train_lora.step import sources

    env: dict[str, str] = {}
    if isinstance(dataset, HuggingFaceDatasetParams):
        repo = dataset.repo_id
        # A Hub id (`org/name`), a URI, or locally a path (`/data/x.csv`, `./x.csv`).
        is_path = isinstance(repo, str) and repo.startswith(("/", "./", "../", "~"))
        data_uri = repo if "://" in repo or is_path else f"hf://{repo}"
        split, subset, revision = dataset.split or "train", dataset.subset, dataset.revision
        names = {"uri": "dataset_provider_parameters.repo_id"}
    else:
        data_uri = f"s3://{dataset.bucket_name}/{dataset.file_key.lstrip('/')}"
        split, subset, revision = dataset.split, "", ""
        env["AWS_ENDPOINT_URL"] = dataset.endpoint_url
        if dataset.region_name:
            env["AWS_DEFAULT_REGION"] = dataset.region_name
        names = {"uri": "dataset_provider_parameters.file_key"}
    settings, problems = sources.data_source(
        data_uri, split=split, subset=subset, revision=revision,
        column_mapping=dataset.column_mapping, num_labels=num_labels,
    )
    names.update({key: f"dataset_provider_parameters.{key}"
                  for key in ("split", "subset", "revision", "column_mapping")})
    names["num_labels"] = "model_provider_parameters.num_labels"
    return data_uri, settings, env, sources.renamed(problems, names)


# The reference's parameter classes (kubeflow-training), taken as they are: same names, fields.
REFERENCE_MODULES = ("kubeflow.storage_initializer.hugging_face", "kubeflow.storage_initializer.s3")


def adopted(value: Any) -> Any:
    """`value`, or for an instance of the reference's own class of that name, kftune's one.

    A notebook written for the reference imports its parameter classes from
    `kubeflow.storage_initializer`; only its `TrainingClient` import changes. Their fields are
    a subset of kftune's classes' (kftune adds optional ones), so the values carry over as given.
    """
    cls = type(value)
    ours = {kind.__name__: kind for kind in (HuggingFaceModelParams, HuggingFaceDatasetParams,
                                              S3DatasetParams, HuggingFaceTrainerParams)}
    if cls.__module__ not in REFERENCE_MODULES or cls.__name__ not in ours:
        return value
    if not dataclasses.is_dataclass(value):
        return value
    target = ours[cls.__name__]
    names = {field.name for field in dataclasses.fields(target)}
    return target(**{field.name: getattr(value, field.name)
                     for field in dataclasses.fields(value) if field.name in names})


def _wrong_classes(model: Any, dataset: Any, trainer: Any) -> list[str]:
    expected = (
        ("model_provider_parameters", model, (HuggingFaceModelParams,)),
        ("dataset_provider_parameters", dataset, (HuggingFaceDatasetParams, S3DatasetParams)),
        ("trainer_parameters", trainer, (HuggingFaceTrainerParams,)),
    )
    return [
        f"`{name}` must be a {' or '.join(f'kftune.{cls.__name__}' for cls in classes)} (or "
        f"kubeflow.storage_initializer's class of that name), got {type(value).__module__}."
        f"{type(value).__name__}"
        for name, value, classes in expected if not isinstance(value, classes)
    ]


def translate(model: Any, dataset: Any, trainer: Any) -> tuple[Translated | None, list[str]]:
    """The reference's three parameter objects in kftune's terms, with every problem found.

    The translation comes back with its problems (to check the rest of the call too); it is None
    only when an object is not of the expected class.
    """
    model, dataset, trainer = adopted(model), adopted(dataset), adopted(trainer)
    wrong = _wrong_classes(model, dataset, trainer)
    if wrong:
        return None, wrong
    task, problems = task_for(model.transformer_type)
    problems += _credential_problems(model, dataset)
    model_settings, model_problems = _model_source(model, task)
    num_labels = model.num_labels if task == "sequence-classification" else None
    if task == "causal-lm" and model.num_labels is not None:
        problems.append(
            f"`model_provider_parameters.num_labels` is for sequence classification "
            f"(AutoModelForSequenceClassification); got {model.num_labels!r} with a causal LM: "
            "leave it out, or use AutoModelForSequenceClassification")
    data_uri, data_settings, env, data_problems = _data_source(dataset, num_labels)
    training_parameters, training_problems = training_parameters_from(
        trainer.training_parameters, task or None
    )
    lora_config, lora_problems = lora_config_from(trainer.lora_config)
    problems += model_problems + data_problems + training_problems + lora_problems
    return Translated(
        task=task, model_uri=model.model_uri, model_source=model_settings, data_uri=data_uri,
        data_source=data_settings, training_parameters=training_parameters,
        lora_config=lora_config, env=env,
        settings_refused=bool(training_problems or lora_problems),
    ), problems


# -- the client -----------------------------------------------------------------------------------


def _cluster_configuration(config_file: str | None, context: str | None) -> Any:
    """The Kubernetes client configuration of this pod or of the kubeconfig; None without one."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if config_file is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
        except config.ConfigException:
            pass
    path = config_file or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if config_file is None and not Path(path.split(os.pathsep)[0]).is_file():
        return None
    with reading(path, parameter="config_file" if config_file else "KUBECONFIG",
                 fix=KUBECONFIG_FIX):
        config.load_kube_config(config_file=path, context=context,
                                client_configuration=configuration)
    return configuration


class TrainingClient:
    """kftune's `TrainingClient`: the reference's `train` and the calls that go with it.

    Args:
        config_file: A kubeconfig; default `$KUBECONFIG` or `~/.kube/config`.
        context: The kubeconfig context; default its current one.
        client_configuration: A `kubernetes.client.Configuration` (then no kubeconfig is read).
        namespace: Where jobs go; default this pod's namespace, else `default`.
        job_kind: `PyTorchJob` (Training Operator v1, the reference's), `TrainJob` (Kubeflow
            Trainer v2), or `auto` (whichever the cluster serves, TrainJob first).
        backend: `auto` (the cluster when one is configured, else this machine), `kubernetes`,
            or `local`.
        output_root: Where local jobs write (default `runs/`).

    Raises:
        ValueError: for an unknown `job_kind` or `backend`, or `backend="kubernetes"` without a
            cluster configuration.
    """

    def __init__(
        self,
        config_file: str | None = None,
        context: str | None = None,
        client_configuration: Any = None,
        namespace: str | None = None,
        job_kind: str = "PyTorchJob",
        *,
        backend: str = "auto",
        output_root: str | os.PathLike | None = None,
    ) -> None:
        from ..components.train_lora.step.backends import resolve
        from ..components.train_lora.step.backends.choice import (
            CLIENT_CHOICES,
            JOB_KINDS,
            Target,
            client_wants_cluster,
        )

        problems = []
        if job_kind not in JOB_KINDS:
            problems.append(f"`job_kind` must be one of {', '.join(JOB_KINDS)}, got {job_kind!r}")
        if backend not in CLIENT_CHOICES:
            problems.append(f"`backend` must be auto, kubernetes or local, got {backend!r}")
        if problems:
            raise InputError(problems)
        self.namespace = cluster.own_namespace(namespace)
        self.job_kind = job_kind
        self.output_root = Path(output_root or "runs")
        self.api_client = None
        wants_cluster = client_wants_cluster(backend)
        if wants_cluster is not False:
            configuration = client_configuration or _cluster_configuration(config_file, context)
            if configuration is None and wants_cluster:
                raise InputError(
                    ["`backend` is 'kubernetes' but no cluster is configured (no kubeconfig, "
                     "not in a pod); pass config_file or client_configuration, or use "
                     "backend='local'"]
                )
            if configuration is not None:
                from kubernetes import client

                self.api_client = client.ApiClient(configuration)
        target = JOB_KINDS[job_kind] if self.api_client is not None else Target.LOCAL
        self.backend = resolve(target, api_client=self.api_client, work_root=self.output_root)
        """Where the jobs run: this machine, or the cluster's jobs of `job_kind`."""
        if wants_cluster is None and target.is_local:
            print("kftune: no Kubernetes cluster configured (no kubeconfig, not in a pod): jobs "
                  "run on this machine")

    # -- train -------------------------------------------------------------------------------

    def train(
        self,
        name: str,
        namespace: str | None = None,
        num_workers: int = 1,
        num_procs_per_worker: int = 1,
        resources_per_worker: Any = None,
        model_provider_parameters: Any = None,
        dataset_provider_parameters: Any = None,
        trainer_parameters: Any = None,
        init_env_vars: Any = None,
        env_vars: Any = None,
        storage_config: Mapping[str, Any] | None = None,
        *,
        output_uri: str | None = None,
        image: str = "",
        timeout_minutes: int = 1440,
        kubernetes_options: Mapping[str, Any] | None = None,
    ) -> str:
        """Fine-tunes a LoRA adapter: creates the job (cluster) or runs it (local).

        Args:
            name: The job's name.
            namespace: Its namespace; default the client's.
            num_workers: Pods (Master 1 + Worker n-1), or local "nodes".
            num_procs_per_worker: Processes per pod (torchrun `--nproc-per-node`).
            resources_per_worker: Requests = limits per pod (a dict or V1ResourceRequirements).
            model_provider_parameters: A `HuggingFaceModelParams`.
            dataset_provider_parameters: A `HuggingFaceDatasetParams` or `S3DatasetParams`.
            trainer_parameters: A `HuggingFaceTrainerParams`.
            init_env_vars: Joins `env_vars` (the pods fetch in the training container).
            env_vars: A dict, or V1EnvVar (a `secretKeyRef` stays one).
            storage_config: Not used: kftune creates no PVC (see the module docstring).
            output_uri: Where the adapter goes; default KFP's MinIO
                (`minio://mlpipeline/kftune/<namespace>/<name>/adapter`), beside the data with
                S3DatasetParams, `runs/<name>/adapter` locally.
            image: The trainer image; default `$KFTUNE_TRAINER_IMAGE` (`kftune images push`).
            timeout_minutes: Longest the training may take.
            kubernetes_options: Other job settings (service_account, node_selector, pvc, ...).

        Returns:
            The job's name.

        Raises:
            InputError: every bad input at once, before anything is created.
            RuntimeError: when the cluster refuses the job, or local training fails.
        """
        from ..components.train_lora.step import job as job_lib

        namespace = namespace or self.namespace
        _note_storage_config(storage_config)
        translated, plan, _, _, output_uri = self.check(
            name, namespace, model_provider_parameters, dataset_provider_parameters,
            trainer_parameters, num_workers=num_workers,
            num_procs_per_worker=num_procs_per_worker, resources_per_worker=resources_per_worker,
            env=(init_env_vars, env_vars), output_uri=output_uri, image=image,
            timeout_minutes=timeout_minutes, kubernetes_options=kubernetes_options)
        # Printed, as kftune.submit prints its run: a notebook shows no INFO log by default.
        print(f"kftune: the adapter of {name} goes to {output_uri}")
        io = job_lib.PodIO(
            model_uri=translated.model_uri, data_uri=translated.data_uri, output_uri=output_uri,
            model_source=translated.model_source, data_source=translated.data_source,
        )
        self.backend.submit(job_lib.JobRequest(plan.spec, plan.options, io, name=name,
                                               namespace=namespace), plan)
        if self.backend.target.is_local:
            print(f"kftune: {name} succeeded; the adapter is in {output_uri}")
        return name

    def check(
        self, name: str, namespace: str, model: Any, dataset: Any, trainer: Any, *,
        num_workers: Any, num_procs_per_worker: Any, resources_per_worker: Any,
        env: tuple[Any, Any], output_uri: str | None, image: str, timeout_minutes: Any,
        kubernetes_options: Mapping[str, Any] | None,
    ) -> tuple[Translated, Any, dict[str, Any], dict[str, Any], str]:
        """`train`'s one check of the whole call, before anything is fetched or created.

        The download steps' and the train step's own checks of their slices, a secret scan over
        every string of the call, the job's name, and for the local backend what this machine
        must have (local sources that exist, GPUs for 4-bit).

        Returns:
            (the translation, the train step's plan, its options, resources, output URI).

        Raises:
            InputError: every problem at once, never quoting a credential.
        """
        from ..components.common import secrets
        from ..components.train_lora.step.spec import TrainParameters

        model, dataset, trainer = adopted(model), adopted(dataset), adopted(trainer)
        translated, problems = _translate_call(name, model, dataset, trainer)
        options, env_problems = _job_options(kubernetes_options, translated.env, *env)
        resources, resource_problems = _resources(resources_per_worker)
        output_uri = output_uri or self._default_output(name, namespace, dataset)
        scanned, found = secrets.scan_all({
            "name": name, "namespace": namespace,
            "model_provider_parameters": _without_credential_fields(model),
            "dataset_provider_parameters": _without_credential_fields(dataset),
            "output_uri": output_uri,
            "image": image, "kubernetes_options": options, "init_env_vars": _plain(env[0]),
            "env_vars": _plain(env[1])})
        if self.backend.target.on_cluster:
            options.update(namespace=namespace, job_name=name)
        image, cluster_problems = self._cluster_problems(translated, options, output_uri, image)
        problems = [*scanned, *problems, *_name_problems(name), *env_problems,
                    *resource_problems, *cluster_problems]
        if self.backend.target.is_local:
            problems += self._host_problems(translated, num_workers, num_procs_per_worker)
        try:
            plan = self._plan(translated, TrainParameters(
                num_workers=num_workers, num_procs_per_worker=num_procs_per_worker,
                resources_per_worker=resources, image=image, timeout_minutes=timeout_minutes,
                kubernetes_options=options), problems)
        except InputError as error:
            raise InputError(secrets.scrub(error.problems, found)) from None
        return translated, plan, options, resources, output_uri

    def _host_problems(self, translated: Translated, num_workers: Any,
                       num_procs_per_worker: Any) -> list[str]:
        """What this machine must have for a local job: its local sources, processes and GPUs."""
        from ..components.common import uris
        from ..components.train_lora.step.inputs import host_problems

        problems = []
        for parameter, uri in (("model_provider_parameters.model_uri", translated.model_uri),
                               ("dataset_provider_parameters.repo_id", translated.data_uri)):
            location, _ = uris.parse_problems(uri, parameter=parameter)
            problems += uris.missing_problems(location, parameter=parameter)
        return problems + host_problems(num_workers, num_procs_per_worker,
                                        translated.training_parameters)

    def _cluster_problems(
        self, translated: Translated, options: dict[str, Any], output_uri: str, image: str
    ) -> tuple[str, list[str]]:
        """What the pods could not reach or pull, and the trainer image (cluster only)."""
        if self.backend.target.is_local:
            return image, []
        from ..components.common.images import (
            TRAINER_IMAGE,
            TRAINER_IMAGE_ENV,
            unset_image_problems,
        )
        from ..components.train_lora.step import sources

        pvc = options.get("pvc")
        claim = pvc.get("claim_name", "") if isinstance(pvc, Mapping) else (pvc or "")
        problems = sources.pod_reach_problems(
            {"model_provider_parameters.model_uri": translated.model_uri,
             "dataset_provider_parameters": translated.data_uri},
            {"output_uri": output_uri},
            claim,
        )
        # Read now, not at import: a notebook may set it after importing kftune.
        image = image or os.environ.get(TRAINER_IMAGE_ENV, "")
        return image, problems + unset_image_problems(image or TRAINER_IMAGE, "image")

    def _plan(self, translated: Translated, parameters: Any, problems: list[str]) -> Any:
        """The launch step's own checks of every setting, reported with `problems` at once."""
        from ..components.train_lora.step import launch

        try:
            return launch.plan(parameters.replace(
                task=translated.task or "causal-lm",  # an unknown transformer_type is in problems
                # Not of the expected class: reported already, under their reference names.
                training_parameters={} if translated.settings_refused
                else translated.training_parameters,
                lora_config={} if translated.settings_refused else translated.lora_config,
            ), target=self.backend.target, extra_problems=tuple(problems))
        except InputError as error:
            raise InputError([_reference_names(problem) for problem in error.problems]) from None

    def _default_output(self, name: str, namespace: str, dataset: Any) -> str:
        if not self.backend.target.on_cluster:
            return str((self.output_root / name / "adapter").resolve())
        if isinstance(dataset, S3DatasetParams):
            return f"s3://{dataset.bucket_name}/kftune/{name}/adapter"
        return DEFAULT_CLUSTER_OUTPUT.format(namespace=namespace, name=name)

    # -- following a job ---------------------------------------------------------------------

    def get_job(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The job as a dict (for a local job: its conditions).

        Raises:
            RuntimeError: when there is no such job.
        """
        return self.backend.status(name, namespace or self.namespace)

    def wait_for_job_conditions(
        self,
        name: str,
        namespace: str | None = None,
        job_kind: str | None = None,
        expected_conditions: set[str] | frozenset[str] = frozenset({"Succeeded"}),
        wait_timeout: int = 600,
        polling_interval: float = 15,
        callback: Callable[[dict[str, Any]], None] | None = None,
        timeout: int = 120,
    ) -> dict[str, Any]:
        """Waits until the job has one of `expected_conditions`; returns the job.

        `Succeeded` is a TrainJob's `Complete`.

        Raises:
            InputError: for conditions that do not exist.
            RuntimeError: when the job fails and `Failed` is not expected.
            TimeoutError: when it has none of them after `wait_timeout` seconds.
        """
        namespace = namespace or self.namespace
        unknown = set(expected_conditions) - JOB_CONDITIONS
        if unknown:
            raise InputError([f"`expected_conditions` must be a subset of "
                              f"{sorted(JOB_CONDITIONS)}, got {sorted(unknown)}"])
        deadline = time.monotonic() + wait_timeout
        while True:
            job = self.get_job(name, namespace)
            if callback:
                callback(job)
            present = {condition.get("type") for condition in
                       (job.get("status") or {}).get("conditions") or []
                       if condition.get("status") == "True"}
            if "Complete" in present:
                present.add("Succeeded")
            if present & set(expected_conditions):
                return job
            if "Failed" in present:
                raise RuntimeError(f"job {namespace}/{name} failed")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {namespace}/{name} did not reach {sorted(expected_conditions)} within "
                    f"{wait_timeout} s"
                )
            time.sleep(min(polling_interval, max(0.0, deadline - time.monotonic())))

    def get_job_logs(
        self,
        name: str,
        namespace: str | None = None,
        job_kind: str | None = None,
        is_master: bool = True,
        replica_type: str | None = None,
        replica_index: int | None = None,
        follow: bool = False,
        timeout: int = 120,
        verbose: bool = False,
    ) -> tuple[dict[str, str], dict[str, list[str]]]:
        """The logs of the job's pods: `({pod name: log}, {})`; node 0's by default.

        A local job's "pods" are its nodes, `node-<rank>` (node 0 the Master, node i+1 Worker i).
        With `follow` the lines are printed as they come, until the job ends.

        Raises:
            RuntimeError: when there is no such job.
        """
        from ..components.train_lora.step.backends import NodeSelection

        logs = self.backend.logs(
            name, namespace or self.namespace,
            NodeSelection(is_master=is_master, replica_type=replica_type,
                          replica_index=replica_index),
            follow=(lambda text: print(text, end="")) if follow else None,
        )
        return logs, {}

    def delete_job(
        self,
        name: str,
        namespace: str | None = None,
        job_kind: str | None = None,
        delete_options: Any = None,
    ) -> None:
        """Deletes the job (its pods go with it; kftune made no PVC to leave behind).

        Raises:
            RuntimeError: when the cluster refuses.
        """
        self.backend.delete(name, namespace or self.namespace, delete_options)

    def get_adapter_uri(self, name: str, namespace: str | None = None) -> str:
        """Where the job's LoRA adapter is (or goes): `PeftModel.from_pretrained(base, it)`."""
        return self.backend.adapter_uri(name, namespace or self.namespace)


def _translate_call(
    name: str, model: Any, dataset: Any, trainer: Any
) -> tuple[Translated, list[str]]:
    """`translate`, after the reference's own check that nothing required is missing."""
    if not name or not model or not dataset or not trainer:
        raise InputError(["`name`, `model_provider_parameters`, `dataset_provider_parameters` "
                          "and `trainer_parameters` are required"])
    translated, problems = translate(model, dataset, trainer)
    if translated is None:
        raise InputError(problems)
    return translated, problems


def _job_options(
    kubernetes_options: Mapping[str, Any] | None, source_env: Mapping[str, str],
    init_env_vars: Any, env_vars: Any,
) -> tuple[dict[str, Any], list[str]]:
    """`kubernetes_options` with the environment of the sources and of the reference's env vars."""
    options = dict(kubernetes_options or {})
    plain_env = {**source_env, **dict(options.pop("env", {}) or {})}
    secret_env = dict(options.pop("secret_env", {}) or {})
    problems: list[str] = []
    for parameter, value in (("init_env_vars", init_env_vars), ("env_vars", env_vars)):
        plain, secret, found = _env_from(value, parameter)
        plain_env.update(plain)
        secret_env.update(secret)
        problems += found
    if plain_env:
        options["env"] = plain_env
    if secret_env:
        options["secret_env"] = secret_env
    return options, problems


def _without_credential_fields(params: Any) -> Any:
    """The fields of a parameter object but its credential fields (`_credential_problems`)."""
    plain = _plain(params)
    if not isinstance(plain, dict):
        return plain
    return {key: value for key, value in plain.items()
            if key not in ("access_token", "access_key", "secret_key")}


def _name_problems(name: Any) -> list[str]:
    """The job's name: a Kubernetes name, which locally is also a directory under `output_root`."""
    from ..components.train_lora.step.options import MAX_JOB_NAME_LENGTH

    if isinstance(name, str) and _JOB_NAME.match(name) and len(name) <= MAX_JOB_NAME_LENGTH:
        return []
    return [f"`name` must start with a letter, hold only lower case letters, digits and '-', and "
            f"be at most {MAX_JOB_NAME_LENGTH} characters (it names the job's pods, and locally "
            f"its directory under `output_root`), got {name!r}; e.g. fine-tune-bert"]


def _note_storage_config(storage_config: Mapping[str, Any] | None) -> None:
    if storage_config is not None and dict(storage_config) != REFERENCE_STORAGE_CONFIG:
        logger.warning(
            "storage_config is not used: kftune creates no PVC; each pod fetches the model and "
            "the data onto its node-local disk (kubernetes_options={'pvc': CLAIM} stages on an "
            "existing claim instead)"
        )


def _resources(value: Any) -> tuple[dict[str, Any], list[str]]:
    """`resources_per_worker` as kftune's dict (a V1ResourceRequirements is read too)."""
    if value is None:
        return {}, []
    if isinstance(value, Mapping):
        return dict(value), []
    limits = getattr(value, "limits", None) or getattr(value, "requests", None)
    if isinstance(limits, Mapping):
        names = {"nvidia.com/gpu": "gpu"}
        return {names.get(key, key): item for key, item in limits.items()}, []
    return {}, [f"`resources_per_worker` must be a dict or a V1ResourceRequirements, got "
                f"{type(value).__name__}"]


__all__: Sequence[str] = (
    "HuggingFaceDatasetParams",
    "HuggingFaceModelParams",
    "HuggingFaceTrainerParams",
    "S3DatasetParams",
    "TrainingClient",
)
