"""The training pods' contract, and the Training Operator v1 PyTorchJob built on it.

Both Kubernetes kinds (this PyTorchJob, and the Trainer v2 TrainJob of `trainjob.py`) run the same
pod: the pod entrypoint (`pod_command`, `pod_args`) in the trainer image, with the plain and Secret
environment of `pod_env`, a node-local work directory and a memory-backed /dev/shm
(`pod_volumes`), and optionally an existing claim. `build_pytorchjob` turns a `TrainingSpec` and
`KubernetesOptions` into a PyTorchJob built from the kubeflow-training SDK's and the kubernetes
client's typed models; `to_dict` and `to_yaml` serialize either kind for the API server or for
`kubectl apply`.

The PyTorchJob follows the operator's contract: `num_workers` pods (Master 1 + Worker n-1; Worker n
for an elastic job, whose rendezvous the operator points at `<job>-worker-0`), each running
`num_procs_per_worker` processes (`nprocPerNode`), in a container named `pytorch` that exposes the
port `pytorchjob-port` (23456). Secrets reach the pods only as `secretKeyRef` environment
variables, never as arguments or plain values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..failures import TERMINATION_MESSAGE_PATH
from .options import KubernetesOptions
from .spec import TrainingSpec
from .tracking import tracking_env

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
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_HASH_ANNOTATION = "kftune.dev/spec-hash"
OUTPUT_URI_ANNOTATION = "kftune.dev/output-uri"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TASK_LABEL = "kftune.dev/task"
# The label the operator puts on the pods of a job, and the one naming their replica type.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
POD_COMMAND = ("python", "-m", "kftune.components.train_lora.pod.entrypoint")
# KFP's default artifact store: MinIO in the kubeflow namespace, its keys in this Secret (KFP copies
# it into every profile namespace).
KFP_MINIO_ENDPOINT = "http://minio-service.kubeflow:9000"
KFP_MINIO_SECRET = "mlpipeline-minio-artifact"


@dataclasses.dataclass(frozen=True)
class PodIO:
    """Where the pods read their inputs and write the adapter (URIs in the artifact store)."""

    model_uri: str
    """The base model artifact (or, with `model_source`, the model's source)."""
    data_uri: str
    """The training data artifact (or, with `data_source`, the data's source)."""
    output_uri: str
    """The adapter artifact; node rank 0 uploads `output_dir/final` there."""
    model_source: Mapping[str, Any] | None = None
    """`ModelSource` settings besides the URI: each pod fetches the model from `model_uri` as
    download_model does, instead of copying an artifact."""
    data_source: Mapping[str, Any] | None = None
    """`DatasetSource` settings besides the URI (split, subset, revision, column_mapping): each
    pod fetches and normalizes the rows as download_dataset does."""


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """One Kubernetes job to build: what it trains, how, where its data is, what it is called."""

    spec: TrainingSpec
    """The backend-neutral training settings."""
    options: KubernetesOptions
    """The Kubernetes-only settings."""
    io: PodIO
    """The artifact URIs the pods read and write."""
    name: str
    """The job's name (see `derive_job_name`)."""
    namespace: str
    """Where the job goes."""


def request(
    spec: TrainingSpec, options: KubernetesOptions, io: PodIO, *, namespace: str = ""
) -> JobRequest:
    """The `JobRequest` for a run: named by `options.job_name` or after its output URI."""
    return JobRequest(
        spec=spec,
        options=options,
        io=io,
        name=options.job_name or derive_job_name(io.output_uri, spec.task),
        namespace=namespace or options.namespace or "default",
    )


def derive_job_name(output_uri: str, task: str) -> str:
    """A job name that is the same for every attempt of one pipeline step.

    KFP gives each task of each run its own output artifact URI
    (`<pipeline root>/<pipeline>/<run id>/<task>/...`) and keeps it across retries of the step, so a
    hash of it names the job: a retried step finds (and re-attaches to) the job its first attempt
    created, and two runs never share one.
    """
    digest = hashlib.sha256(output_uri.encode()).hexdigest()[:12]
    prefix = "kftune-" + {"causal-lm": "clm", "preference": "dpo"}.get(task, "cls")
    return f"{prefix}-{digest}"


def spec_hash(job: JobRequest) -> str:
    """A digest of what the job does, to tell a re-attach from a name collision."""
    payload = json.dumps(
        {
            "spec": dataclasses.asdict(job.spec),
            "options": {**dataclasses.asdict(job.options), "given": sorted(job.options.given)},
            # Unset fields left out: jobs without sources keep the digest they had before them.
            "io": {key: value for key, value in dataclasses.asdict(job.io).items()
                   if value is not None},
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pod_args(job: JobRequest) -> list[str]:
    """Arguments of `python -m kftune.components.train_lora.pod.entrypoint` (never secrets)."""
    spec, io = job.spec, job.io
    args = [
        "--task", spec.task,
        "--model-uri", io.model_uri,
        "--data-uri", io.data_uri,
        "--output-uri", io.output_uri,
        "--work-dir", WORK_DIR,
        "--training-parameters", json.dumps(dict(spec.training_parameters), sort_keys=True),
        "--lora-config", json.dumps(dict(spec.lora_config), sort_keys=True),
    ]
    if job.options.pvc is not None:
        args += ["--shared-dir", job.options.pvc.path]
    if spec.merge:
        args.append("--merge")
    for flag, settings in (("--model-source", io.model_source), ("--data-source", io.data_source)):
        if settings is not None:
            args += [flag, json.dumps(dict(settings), sort_keys=True)]
    return args


def metadata(job: JobRequest, client: Any) -> Any:
    """The job's `V1ObjectMeta`: name, labels (Kueue queue), spec hash and output annotations."""
    labels = {MANAGED_BY_LABEL: "kftune", TASK_LABEL: job.spec.task}
    if job.options.placement.queue_name:
        labels[KUEUE_QUEUE_LABEL] = job.options.placement.queue_name
    return client.V1ObjectMeta(
        name=job.name,
        namespace=job.namespace,
        labels=labels,
        annotations={
            SPEC_HASH_ANNOTATION: spec_hash(job),
            OUTPUT_URI_ANNOTATION: job.io.output_uri,
        },
    )


def _artifact_store_env(job: JobRequest) -> tuple[dict[str, str], dict[str, str]]:
    """Defaults that let the pods reach KFP's MinIO for `minio://` URIs, unless the user set them.

    Returns:
        (plain environment, environment from `secret:key` references).
    """
    io = job.io
    if not any(uri.startswith("minio://") for uri in (io.model_uri, io.data_uri, io.output_uri)):
        return {}, {}
    given = set(job.spec.env) | set(job.options.secret_env)
    keys = {"AWS_ACCESS_KEY_ID": "accesskey", "AWS_SECRET_ACCESS_KEY": "secretkey"}
    secrets = {
        name: f"{KFP_MINIO_SECRET}:{key}" for name, key in keys.items() if name not in given
    }
    plain = {} if "AWS_ENDPOINT_URL" in given else {"AWS_ENDPOINT_URL": KFP_MINIO_ENDPOINT}
    return plain, secrets


def pod_env(job: JobRequest, client: Any) -> list[Any]:
    """The container's `V1EnvVar`s: plain values, then Secret keys as `secretKeyRef`."""
    store_plain, store_secrets = _artifact_store_env(job)
    plain = {**job.spec.env, **store_plain, **tracking_env(job.spec.env, job.io.output_uri)}
    env = [client.V1EnvVar(name=name, value=value) for name, value in sorted(plain.items())]
    for name, reference in sorted({**store_secrets, **job.options.secret_env}.items()):
        secret, key = reference.split(":")
        selector = client.V1SecretKeySelector(name=secret, key=key)
        env.append(
            client.V1EnvVar(name=name, value_from=client.V1EnvVarSource(secret_key_ref=selector))
        )
    return env


def pod_volumes(job: JobRequest, client: Any) -> tuple[list[Any], list[Any]]:
    """(volumes, volume mounts of the training container)."""
    mounts = [
        client.V1VolumeMount(name="work", mount_path=WORK_DIR),
        client.V1VolumeMount(name="dshm", mount_path=SHM_DIR),
    ]
    volumes = [
        client.V1Volume(name="work", empty_dir=client.V1EmptyDirVolumeSource()),
        # NCCL and the DataLoader workers exchange tensors through /dev/shm, which is 64 MiB by
        # default in a container.
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory")),
    ]
    pvc = job.options.pvc
    if pvc is not None:
        mounts.append(
            client.V1VolumeMount(name="shared", mount_path=pvc.path, sub_path=pvc.sub_path or None)
        )
        claim = client.V1PersistentVolumeClaimVolumeSource(claim_name=pvc.claim_name)
        volumes.append(client.V1Volume(name="shared", persistent_volume_claim=claim))
    return volumes, mounts


def pod_tolerations(job: JobRequest, client: Any) -> list[Any] | None:
    """The pods' `V1Toleration`s, or None."""
    return [
        client.V1Toleration(
            key=toleration.key or None,
            operator=toleration.operator,
            value=toleration.value or None,
            effect=toleration.effect or None,
            toleration_seconds=toleration.toleration_seconds,
        )
        for toleration in job.options.placement.tolerations
    ] or None


def resource_requirements(job: JobRequest, client: Any) -> Any:
    """Requests = limits of every pod, from `resources_per_worker`."""
    quantities = job.spec.resources.as_kubernetes()
    return client.V1ResourceRequirements(
        requests=dict(quantities) or None, limits=dict(quantities) or None
    )


# -- PyTorchJob ------------------------------------------------------------------------------------


def _pytorch_template(job: JobRequest, client: Any) -> Any:
    volumes, mounts = pod_volumes(job, client)
    placement = job.options.placement
    container = client.V1Container(
        name=CONTAINER_NAME,
        image=job.spec.image,
        command=list(POD_COMMAND),
        args=pod_args(job),
        ports=[client.V1ContainerPort(name=PORT_NAME, container_port=DEFAULT_PORT)],
        env=pod_env(job, client) or None,
        resources=resource_requirements(job, client),
        volume_mounts=mounts,
        # The pod writes why it failed there (pod/entrypoint.py); without that record Kubernetes
        # puts the log's end in the message instead.
        termination_message_path=TERMINATION_MESSAGE_PATH,
        termination_message_policy="FallbackToLogsOnError",
    )
    pod_spec = client.V1PodSpec(
        containers=[container],
        volumes=volumes,
        service_account_name=placement.service_account or None,
        node_selector=dict(placement.node_selector) or None,
        priority_class_name=placement.priority_class or None,
        tolerations=pod_tolerations(job, client),
    )
    return client.V1PodTemplateSpec(
        # Istio's sidecar would intercept the rendezvous traffic between the pods.
        metadata=client.V1ObjectMeta(annotations={"sidecar.istio.io/inject": "false"}),
        spec=pod_spec,
    )


def _replica_specs(job: JobRequest, template: Any, models: Any) -> dict[str, Any]:
    def replicas(count: int) -> Any:
        return models.KubeflowOrgV1ReplicaSpec(
            replicas=count, restart_policy="OnFailure", template=template
        )

    workers = job.spec.num_workers
    if job.options.elastic_policy is not None:
        # Elastic jobs are Worker-only: the operator points the c10d rendezvous at
        # `<job>-worker-0` and ranks are assigned when the nodes meet.
        return {"Worker": replicas(workers)}
    specs = {"Master": replicas(1)}
    if workers > 1:
        specs["Worker"] = replicas(workers - 1)
    return specs


def build_pytorchjob(job: JobRequest) -> Any:
    """The PyTorchJob (kubeflow-training SDK model) that runs `job`.

    Returns:
        A `KubeflowOrgV1PyTorchJob`; `to_dict` or `to_yaml` serialize it.
    """
    from kubeflow.training import models
    from kubernetes import client

    elastic = job.options.elastic_policy
    run_policy = job.options.run_policy
    return models.KubeflowOrgV1PyTorchJob(
        api_version=f"{API_GROUP}/{API_VERSION}",
        kind=KIND,
        metadata=metadata(job, client),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(job.spec.procs_per_node()),
            elastic_policy=None if elastic is None else models.KubeflowOrgV1ElasticPolicy(
                min_replicas=elastic.min_nodes,
                max_replicas=elastic.max_nodes,
                max_restarts=elastic.max_restarts,
                rdzv_backend="c10d",
            ),
            pytorch_replica_specs=_replica_specs(job, _pytorch_template(job, client), models),
            run_policy=models.KubeflowOrgV1RunPolicy(
                # The operator enforces the timeout too, even if this step is gone.
                active_deadline_seconds=job.spec.timeout_seconds,
                backoff_limit=run_policy.backoff_limit,
                clean_pod_policy=run_policy.clean_pod_policy,
                ttl_seconds_after_finished=run_policy.ttl_seconds_after_finished,
            ),
        ),
    )


def to_dict(job: Any) -> dict[str, Any]:
    """The job as the JSON-ready dict the API server takes (None fields dropped)."""
    if hasattr(job, "to_dict") and hasattr(job, "model_dump"):  # a pydantic (Trainer API) model
        # The generated `to_dict` serializes its oneOf types (quantities) and drops None fields.
        return json.loads(json.dumps(job.to_dict(), default=str))
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(job)


def to_yaml(job: Any) -> str:
    """The job as YAML for `kubectl apply -f -`."""
    import yaml

    return yaml.safe_dump(to_dict(job), sort_keys=False, default_flow_style=False)
