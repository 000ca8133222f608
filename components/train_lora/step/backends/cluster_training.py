"""The cluster training backend: PyTorchJobs or TrainJobs on the cluster an API client reaches.

One object serves a target (`PYTORCHJOB`, `TRAINJOB`, or `CLUSTER`: whichever kind the cluster
serves, asked once per runtime through API discovery). It builds a job's manifest, creates it and
follows it to its end (`kubernetes.KubernetesJobBackend`), and reads, lists and deletes the jobs
it made, remembering each one's kind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....common import cluster
from ....common.errors import InputError
from ....common.images import unset_image_problems
from .. import job as job_lib
from .base import NodeSelection, StepFiles, TrainingBackend, publish_adapter, run_to_the_end
from .choice import Target

if TYPE_CHECKING:
    from ..launch import Plan
    from ..options import KubernetesOptions
    from .kubernetes import JobKind

logger = logging.getLogger(__name__)


NO_CLUSTER_FIX = "use backend 'local'"


def default_api_client(fix: str = NO_CLUSTER_FIX) -> Any:
    """A client for this pod's cluster (its service account), else for `$KUBECONFIG`.

    Args:
        fix: The way out besides KUBECONFIG, in the error (the caller's name for local training).

    Raises:
        InputError: when there is neither (no cluster to talk to).
    """
    return cluster.api_client(doing="talk to", fix=fix)


def job_kind(target: Target) -> JobKind:
    """The `JobKind` a cluster target with a known kind creates."""
    from .kubernetes import PYTORCHJOB, TRAINJOB

    return {Target.PYTORCHJOB: PYTORCHJOB, Target.TRAINJOB: TRAINJOB}[target]


def manifest_of(job: job_lib.JobRequest, target: Target) -> dict[str, Any]:
    """The manifest of `job` as the kind `target` names (PyTorchJob or TrainJob), a dict."""
    if target is Target.TRAINJOB:
        from ..trainjob import build_trainjob

        return job_lib.to_dict(build_trainjob(job))
    return job_lib.to_dict(job_lib.build_pytorchjob(job))


class ClusterTraining(TrainingBackend):
    """Training jobs on a Kubernetes cluster.

    Args:
        target: `PYTORCHJOB`, `TRAINJOB` or `CLUSTER` (discovery picks the kind).
        api_client: a `kubernetes.client.ApiClient`; None: this pod's cluster or the kubeconfig's,
            found when first needed.
        no_cluster_fix: the way out the error names when there is no cluster.
    """

    def __init__(self, target: Target, api_client: Any = None, *,
                 no_cluster_fix: str = NO_CLUSTER_FIX) -> None:
        self.target = target
        self._api_client = api_client
        self._no_cluster_fix = no_cluster_fix
        self._picked: dict[tuple[str, bool], Target] = {}
        self._kinds: dict[tuple[str, str], Target] = {}

    @property
    def api_client(self) -> Any:
        """The client of the cluster (made on first use)."""
        if self._api_client is None:
            self._api_client = default_api_client(self._no_cluster_fix)
        return self._api_client

    def kind_for(self, options: KubernetesOptions, *, check_runtime: bool = True) -> Target:
        """`PYTORCHJOB` or `TRAINJOB`: the target's, or for `CLUSTER` what the cluster serves.

        Args:
            options: the job's options (its runtime decides between the kinds).
            check_runtime: for `TRAINJOB`, fail early when its runtime does not exist.

        Raises:
            InputError: when the cluster serves neither kind, the runtime does not exist, or the
                options do not suit the kind discovery picked.
        """
        from . import discovery

        if self.target is Target.TRAINJOB and check_runtime:
            discovery.check_runtime(self.api_client, options.runtime)
        if self.target.kind_known:
            return self.target
        given = "runtime" in options.given
        if (options.runtime, given) not in self._picked:
            self._picked[(options.runtime, given)] = discovery.pick_backend(
                self.api_client, runtime=options.runtime, runtime_given=given)
        kind = self._picked[(options.runtime, given)]
        refused = options.refused_by(kind)
        if refused:
            raise InputError(refused)
        return kind

    def manifest(self, job: job_lib.JobRequest, *, check_runtime: bool = True) -> dict[str, Any]:
        """The job's manifest, of the kind this backend creates for it."""
        kind = self.kind_for(job.options, check_runtime=check_runtime)
        self._kinds[(job.namespace, job.name)] = kind
        return manifest_of(job, kind)

    def _job(self, job: job_lib.JobRequest, manifest: dict[str, Any] | None = None) -> Any:
        from .kubernetes import KubernetesJobBackend

        manifest = manifest or self.manifest(job)
        kind = job_kind(self._kinds[(job.namespace, job.name)])
        return KubernetesJobBackend(self.api_client, manifest, kind)

    def submit(self, job: job_lib.JobRequest, plan: Plan | None = None) -> str:
        """Creates the job (or re-attaches to the same one) without waiting for it."""
        return self._job(job).submit()

    def run(self, job: job_lib.JobRequest, manifest: dict[str, Any] | None = None) -> None:
        """Creates (or re-attaches to) the job and follows it to its end; SIGTERM deletes it.

        Args:
            job: the job.
            manifest: its manifest, when `manifest` made it already.

        Raises:
            RuntimeError: when the job fails (reason and log tail) or the server refuses it.
            TimeoutError: when it runs past its timeout (it is deleted).
        """
        run_to_the_end(self._job(job, manifest), job.spec.timeout_seconds)

    def run_step(self, plan: Plan, files: StepFiles) -> dict[str, Any]:
        """Runs the step's job, whose node rank 0 uploads the adapter, and downloads it."""
        # Before the job exists: pods that cannot pull their image would only wait for it.
        unset = unset_image_problems(plan.spec.image, "image")
        if unset:
            raise InputError(unset)
        io = job_lib.PodIO(model_uri=files.model_uri, data_uri=files.data_uri,
                           output_uri=files.adapter_uri)
        self.run(job_lib.request(plan.spec, plan.options, io,
                                 namespace=cluster.own_namespace(plan.options.namespace)))
        return _collect_adapter(io.output_uri, Path(files.adapter_dir))

    # -- the jobs it made ------------------------------------------------------------------------

    def _kind_of(self, name: str, namespace: str) -> JobKind:
        from . import discovery

        kind = self._kinds.get((namespace, name)) or self.target
        if not kind.kind_known:
            kind = discovery.pick_backend(self.api_client)
        return job_kind(kind)

    def status(self, name: str, namespace: str) -> dict[str, Any]:
        """The job object."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        kind = self._kind_of(name, namespace)
        try:
            return client.CustomObjectsApi(self.api_client).get_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name
            )
        except ApiException as error:
            raise RuntimeError(
                f"failed to get {kind.kind} {namespace}/{name}: HTTP {error.status} {error.reason}"
            ) from error

    def logs(self, name: str, namespace: str, nodes: NodeSelection,
             follow: Callable[[str], None] | None = None) -> dict[str, str]:
        """`{pod name: its log}` of the selected pods (node 0's: the Master's)."""
        from kubernetes import client

        kind = self._kind_of(name, namespace)
        labels = {kind.job_label: name}
        if nodes.is_master:
            labels.update(kind.main_pod_labels(self.status(name, namespace)))
        else:
            if nodes.replica_type:
                labels[job_lib.REPLICA_TYPE_LABEL] = nodes.replica_type.lower()
            if nodes.replica_index is not None:
                labels[job_lib.REPLICA_INDEX_LABEL] = str(nodes.replica_index)
        core = client.CoreV1Api(self.api_client)
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        logs = {}
        for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
            text = core.read_namespaced_pod_log(pod.metadata.name, namespace,
                                                container=kind.container)
            logs[pod.metadata.name] = text
            if follow is not None:
                follow(text)
        return logs

    def delete(self, name: str, namespace: str, delete_options: Any = None) -> None:
        """Deletes the job; its pods go with it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        kind = self._kind_of(name, namespace)
        try:
            client.CustomObjectsApi(self.api_client).delete_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name,
                body=delete_options or client.V1DeleteOptions(propagation_policy="Background"),
            )
        except ApiException as error:
            raise RuntimeError(
                f"failed to delete {kind.kind} {namespace}/{name}: HTTP {error.status} "
                f"{error.reason}"
            ) from error

    def adapter_uri(self, name: str, namespace: str) -> str:
        """The output URI the job's annotation records."""
        job = self.status(name, namespace)
        return job["metadata"]["annotations"][job_lib.OUTPUT_URI_ANNOTATION]


@contextlib.contextmanager
def _kfp_minio_endpoint(uri: str) -> Iterator[None]:
    """For `minio://` with no endpoint configured: KFP's own MinIO, as the pods reach it.

    Set only while the adapter is collected, and restored after: the step's environment is not
    changed for anything else.
    """
    endpoint_vars = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
    if not uri.startswith("minio://") or any(map(os.environ.get, endpoint_vars)):
        yield
        return
    os.environ["AWS_ENDPOINT_URL"] = job_lib.KFP_MINIO_ENDPOINT
    try:
        yield
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)


def _collect_adapter(adapter_uri: str, adapter_path: Path) -> dict[str, Any]:
    from ....common.transfer import download_directory

    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".kftune-collect-", dir=adapter_path.parent))
    try:
        try:
            with _kfp_minio_endpoint(adapter_uri):
                final = download_directory(adapter_uri, work / "final", parameter="adapter")
        except InputError as error:  # not the user's input: the job did not deliver
            raise RuntimeError(
                f"the training job succeeded but its adapter could not be collected: {error}"
            ) from error
        return publish_adapter(final, adapter_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
