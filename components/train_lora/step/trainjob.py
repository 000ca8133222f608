"""The Kubeflow Trainer v2 TrainJob (`trainer.kubeflow.org/v1alpha1`) that runs the training pods.

A TrainJob names a ClusterTrainingRuntime (`runtimeRef`; kftune's default is the stock
`torch-distributed`) and sets `trainer.numNodes` (`num_workers`), `numProcPerNode`
(`num_procs_per_worker`, resolved to a number: the torch plugin's own `auto` would start one
process per CPU on a node without GPUs), `resourcesPerNode`, the trainer `image`, the pod
entrypoint's `command` and `args`, and `env` (plain values, and Secret keys as `secretKeyRef`).
The deadline is `activeDeadlineSeconds`; the Kueue queue is the `kueue.x-k8s.io/queue-name` label.

Pod-level settings (service account, node selector, tolerations, the work, /dev/shm and claim
volumes and their mounts) go through `spec.runtimePatches` onto the runtime's `node` replicated
job. That field exists from Trainer 2.2 on; 2.0 called its override `podSpecOverrides` and 2.1
`podTemplateOverrides`. kftune writes only `runtimePatches`: an older server's structural schema
would prune it silently, so the backend checks the created object and fails clearly (deleting the
job) when the field was dropped, instead of training without its volumes and placement.

The torch plugin gives every node's container `node` exactly `PET_NNODES`, `PET_NPROC_PER_NODE`,
`PET_NODE_RANK` (the Job completion index), `PET_MASTER_ADDR` (`<job>-node-0-0.<job>`) and
`PET_MASTER_PORT` (29500) — no `MASTER_ADDR`, `RANK` or `WORLD_SIZE` as the v1 operator sets
(see `trainjob_env`, the same environment for local tests). torchrun reads them all.
"""

from __future__ import annotations

from typing import Any

from . import job as job_lib

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_PLURAL = "clustertrainingruntimes"
# The runtime's trainer container and replicated job (torch-distributed and its relatives).
CONTAINER_NAME = "node"
REPLICATED_JOB = "node"
MASTER_PORT = 29500
PATCH_MANAGER = "kftune.dev/launcher"
# JobSet labels every pod with its JobSet (= TrainJob) name and replicated job; the Job its index.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
NODE_ZERO_LABELS = {
    "jobset.sigs.k8s.io/replicatedjob-name": REPLICATED_JOB,
    "batch.kubernetes.io/job-completion-index": "0",
}


def trainjob_env(
    *, job_name: str, num_nodes: int, num_procs: int, node_rank: int, master_addr: str = "",
    master_port: int = MASTER_PORT,
) -> dict[str, str]:
    """The environment the Trainer's torch plugin gives the node of `node_rank`.

    From `pkg/runtime/framework/plugins/torch/torch.go` (Trainer v2.3): `PET_NNODES`,
    `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`, nothing else.
    """
    return {
        "PET_NNODES": str(num_nodes),
        "PET_NPROC_PER_NODE": str(num_procs),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master_addr or f"{job_name}-{REPLICATED_JOB}-0-0.{job_name}",
        "PET_MASTER_PORT": str(master_port),
    }


def _typed(model: Any, value: Any) -> Any:
    """A kubernetes-client object as the Trainer API's pydantic model of the same type."""
    from kubernetes.client import ApiClient

    return model.from_dict(ApiClient().sanitize_for_serialization(value))


def _runtime_patch(job: job_lib.JobRequest) -> Any:
    from kubeflow_trainer_api import models
    from kubernetes import client

    volumes, mounts = job_lib.pod_volumes(job, client)
    placement = job.options.placement
    pod_spec = models.TrainerV1alpha1PodSpecPatch(
        service_account_name=placement.service_account or None,
        node_selector=dict(placement.node_selector) or None,
        tolerations=[
            _typed(models.IoK8sApiCoreV1Toleration, toleration)
            for toleration in job_lib.pod_tolerations(job, client) or []
        ] or None,
        volumes=[_typed(models.IoK8sApiCoreV1Volume, volume) for volume in volumes],
        containers=[
            models.TrainerV1alpha1ContainerPatch(
                name=CONTAINER_NAME,
                volume_mounts=[_typed(models.IoK8sApiCoreV1VolumeMount, m) for m in mounts],
            )
        ],
    )
    pod_template = models.TrainerV1alpha1PodTemplatePatch(
        # Istio's sidecar would intercept the rendezvous traffic between the pods.
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            annotations={"sidecar.istio.io/inject": "false"}
        ),
        spec=pod_spec,
    )
    replicated_job = models.TrainerV1alpha1ReplicatedJobPatch(
        name=REPLICATED_JOB,
        template=models.TrainerV1alpha1JobTemplatePatch(
            spec=models.TrainerV1alpha1JobSpecPatch(template=pod_template)
        ),
    )
    return models.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=models.TrainerV1alpha1JobSetTemplatePatch(
                spec=models.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[replicated_job])
            )
        ),
    )


def _trainer(job: job_lib.JobRequest) -> Any:
    from kubeflow_trainer_api import models
    from kubernetes import client

    return models.TrainerV1alpha1Trainer(
        image=job.spec.image,
        command=list(job_lib.POD_COMMAND),
        args=job_lib.pod_args(job),
        env=[_typed(models.IoK8sApiCoreV1EnvVar, env) for env in job_lib.pod_env(job, client)]
        or None,
        num_nodes=job.spec.num_workers,
        num_proc_per_node=job.spec.procs_per_node(),
        resources_per_node=_typed(
            models.IoK8sApiCoreV1ResourceRequirements, job_lib.resource_requirements(job, client)
        ),
    )


def build_trainjob(job: job_lib.JobRequest) -> Any:
    """The TrainJob (kubeflow-trainer-api model) that runs `job` on `job.options.runtime`.

    Returns:
        A `TrainerV1alpha1TrainJob`; `job.to_dict` or `job.to_yaml` serialize it.
    """
    from kubeflow_trainer_api import models
    from kubernetes import client

    return models.TrainerV1alpha1TrainJob(
        api_version=f"{API_GROUP}/{API_VERSION}",
        kind=KIND,
        metadata=_typed(
            models.IoK8sApimachineryPkgApisMetaV1ObjectMeta, job_lib.metadata(job, client)
        ),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtime_ref=models.TrainerV1alpha1RuntimeRef(
                name=job.options.runtime, api_group=API_GROUP, kind=RUNTIME_KIND
            ),
            trainer=_trainer(job),
            runtime_patches=[_runtime_patch(job)],
            # The Trainer enforces the timeout too, even if this step is gone.
            active_deadline_seconds=job.spec.timeout_seconds,
        ),
    )
