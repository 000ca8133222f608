"""Which backend a `backend` value names: the one place that reads backend names.

The user's `backend` (`auto`, `kubernetes`, `trainjob`, `local`) becomes a `Target` without asking
anything but the environment, so every check can run before a cluster is contacted. `auto` is
local outside a cluster (`KUBERNETES_SERVICE_HOST` unset), so a step never trains inside its own
small pod by accident; inside one it is `CLUSTER`, whose kind (PyTorchJob or TrainJob) API
discovery picks when the backend object is resolved (`backends.resolve`).
"""

from __future__ import annotations

import enum
import os

CHOICES = ("auto", "kubernetes", "trainjob", "local")
"""The values of the `backend` parameter."""


class Target(enum.Enum):
    """Where a training job runs; the value is the `backend` that names it."""

    LOCAL = "local"
    """torchrun "nodes" on this host."""
    PYTORCHJOB = "kubernetes"
    """A Training Operator v1 PyTorchJob (`backend` 'kubernetes')."""
    TRAINJOB = "trainjob"
    """A Kubeflow Trainer v2 TrainJob."""
    CLUSTER = "cluster"
    """A job on the cluster of whichever kind it serves (TrainJob first): `auto` in a cluster."""

    @property
    def is_local(self) -> bool:
        """Whether the job runs on this host."""
        return self is Target.LOCAL

    @property
    def on_cluster(self) -> bool:
        """Whether the job runs on a Kubernetes cluster (its pods read URIs, not local paths)."""
        return self is not Target.LOCAL

    @property
    def kind_known(self) -> bool:
        """Whether the job's kind is known without asking the cluster."""
        return self is not Target.CLUSTER


# TrainingClient's `job_kind` -> the cluster target that creates it.
JOB_KINDS = {"PyTorchJob": Target.PYTORCHJOB, "TrainJob": Target.TRAINJOB, "auto": Target.CLUSTER}


def in_a_cluster() -> bool:
    """Whether this process runs in a Kubernetes pod."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def choice_problems(backend: object) -> list[str]:
    """The problem with a `backend` value (empty when it is one of `CHOICES`)."""
    if backend in CHOICES:
        return []
    return [f"`backend` must be one of {', '.join(CHOICES)}, got {backend!r}"]


def target_of(backend: str, *, cluster: bool | None = None) -> Target:
    """The `Target` a valid `backend` value names.

    Args:
        backend: one of `CHOICES`.
        cluster: for `auto`, whether the job goes to a cluster; None: whether this process runs
            in one (the step's rule). `kftune submit` and `kftune launch` pass True.
    """
    if backend == "auto":
        return Target.CLUSTER if (in_a_cluster() if cluster is None else cluster) else Target.LOCAL
    return Target(backend)


CLIENT_CHOICES = ("auto", "kubernetes", "local")
"""TrainingClient's `backend`: `kubernetes` is any job kind on the configured cluster."""


def client_wants_cluster(backend: str) -> bool | None:
    """Whether TrainingClient's `backend` needs a cluster, refuses one, or may have one (None)."""
    return {"kubernetes": True, "local": False}.get(backend)
