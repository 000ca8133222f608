"""Which training job kinds a cluster serves, and which ClusterTrainingRuntimes it has.

`backend: auto` inside a cluster asks the API server's discovery endpoints
(`/apis/kubeflow.org/v1` for `pytorchjobs`, `/apis/trainer.kubeflow.org/v1alpha1` for
`trainjobs`) and lists the ClusterTrainingRuntimes. It prefers the TrainJob (Kubeflow Trainer v2,
the maintained one) when both kinds are served, says in the log which it picked and why, and fails
with one message naming both when neither is. A runtime that does not exist is an error before
anything is created.
"""

from __future__ import annotations

import logging
from typing import Any

from ....common import cluster
from ....common.errors import InputError
from .. import job as job_lib
from .. import trainjob
from ..options import DEFAULT_RUNTIME
from .choice import Target

logger = logging.getLogger(__name__)


def cluster_runtimes(api_client: Any) -> list[str] | None:
    """The ClusterTrainingRuntimes' names, or None when the step may not list them (403)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        listing = client.CustomObjectsApi(api_client).list_cluster_custom_object(
            trainjob.API_GROUP, trainjob.API_VERSION, trainjob.RUNTIME_PLURAL
        )
    except ApiException as error:
        if error.status in (401, 403):
            logger.warning(
                "may not list %s.%s (HTTP %s): the runtime is not checked before the TrainJob "
                "is created", trainjob.RUNTIME_PLURAL, trainjob.API_GROUP, error.status,
            )
            return None
        raise RuntimeError(
            f"could not list the ClusterTrainingRuntimes: HTTP {error.status} {error.reason}"
        ) from error
    return sorted(item["metadata"]["name"] for item in listing.get("items", []))


def _unknown_runtime(runtime: str, names: list[str]) -> InputError:
    return InputError([
        f"`kubernetes_options.runtime` {runtime!r} is no ClusterTrainingRuntime of this cluster; "
        f"it has {', '.join(names) if names else 'none'}; name one of them"
    ])


def check_runtime(api_client: Any, runtime: str) -> None:
    """Fails when the cluster has ClusterTrainingRuntimes but none named `runtime`.

    Raises:
        InputError: for an unknown runtime.
    """
    names = cluster_runtimes(api_client)
    if names is not None and runtime not in names:
        raise _unknown_runtime(runtime, names)


def pick_backend(api_client: Any, *, runtime: str = DEFAULT_RUNTIME,
                 runtime_given: bool = False) -> Target:
    """`TRAINJOB` or `PYTORCHJOB`, from what the cluster serves.

    Raises:
        RuntimeError: when the cluster serves neither kind.
        InputError: when `runtime` was named but does not exist.
    """
    v1 = cluster.serves(api_client, job_lib.API_GROUP, job_lib.API_VERSION, job_lib.PLURAL)
    v2 = cluster.serves(api_client, trainjob.API_GROUP, trainjob.API_VERSION, trainjob.PLURAL)
    if not v1 and not v2:
        raise RuntimeError(
            "this cluster serves neither TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer "
            "v2) nor PyTorchJob (kubeflow.org/v1, Training Operator v1): install one of them, or "
            "run with backend 'local'"
        )
    if v2:
        names = cluster_runtimes(api_client)
        if names is None or runtime in names:
            logger.info(
                "backend auto: TrainJob (the cluster serves trainer.kubeflow.org/v1alpha1%s%s)",
                " and kubeflow.org/v1 PyTorchJob; TrainJob is preferred" if v1 else "",
                f", with ClusterTrainingRuntime {runtime}" if names is not None else "",
            )
            return Target.TRAINJOB
        if runtime_given or not v1:
            raise _unknown_runtime(runtime, names)
        logger.info(
            "backend auto: PyTorchJob (the cluster serves TrainJob too, but has no "
            "ClusterTrainingRuntime %r; it has %s)", runtime, ", ".join(names) or "none",
        )
        return Target.PYTORCHJOB
    if runtime_given:
        raise InputError([
            f"`kubernetes_options.runtime` {runtime!r} needs a TrainJob, which this cluster does "
            "not serve (only kubeflow.org/v1 PyTorchJob); remove it"
        ])
    logger.info("backend auto: PyTorchJob (the cluster serves kubeflow.org/v1 PyTorchJob, "
                "not trainer.kubeflow.org/v1alpha1 TrainJob)")
    return Target.PYTORCHJOB
