"""Where the training runs: torchrun "nodes" on this host, a PyTorchJob, or a TrainJob.

`choice.target_of` reads the user's `backend` into a `Target` (no cluster asked); `resolve` turns a
target into its one `TrainingBackend` object (`LocalTraining` or `ClusterTraining`), which runs the
train step, submits, follows, reads logs and status, and deletes. Nothing else reads backend names.
`Backend` is one job in flight (`local.LocalBackend`, `kubernetes.KubernetesJobBackend`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Backend, NodeSelection, StepFiles, TrainingBackend, deleting_on_exit
from .choice import CHOICES, Target, choice_problems, target_of

__all__ = ["CHOICES", "Backend", "NodeSelection", "StepFiles", "Target", "TrainingBackend",
           "choice_problems", "deleting_on_exit", "resolve", "target_of"]


def resolve(
    target: Target, *, api_client: Any = None, work_root: Path | None = None,
    log_line: Callable[[str], None] | None = None,
) -> TrainingBackend:
    """The backend object of `target`.

    Args:
        target: where the training runs.
        api_client: the cluster's `kubernetes.client.ApiClient`; None: this pod's cluster or the
            kubeconfig's, found when first needed.
        work_root: where local jobs submitted by TrainingClient stage their inputs.
        log_line: where the local nodes' `[node-<rank>] ...` lines go (default: the log).
    """
    if target.is_local:
        from .local_training import LocalTraining

        return LocalTraining(work_root=work_root, log_line=log_line)
    from .cluster_training import ClusterTraining

    return ClusterTraining(target, api_client)
