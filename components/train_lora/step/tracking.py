"""What the train step tells the trainer for experiment tracking (MLflow, optional).

When `MLFLOW_TRACKING_URI` is set, for the step (locally) or in `kubernetes_options.env` (the
pods), the trainer logs its run to MLflow (pod/progress.py). The step adds what only it knows:
the run's name, the KFP run's (`KFP_RUN_NAME`, which the pipeline sets from the step pod's
`pipelines.kubeflow.org/run_name` annotation), and the adapter's URI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
KFP_RUN_NAME_ENV = "KFP_RUN_NAME"


def run_name(adapter_uri: str) -> str:
    """The KFP run's name; outside KFP, the directory of the run that holds the adapter.

    kfp.local writes `<pipeline root>/<pipeline>-<time>/<task>/<output>`.
    """
    name = os.environ.get(KFP_RUN_NAME_ENV, "")
    if name:
        return name
    parts = PurePosixPath(adapter_uri.split("://", 1)[-1]).parts
    return parts[-3] if len(parts) >= 3 else "kftune"


def tracking_env(env: Mapping[str, str], adapter_uri: str) -> dict[str, str]:
    """`KFTUNE_RUN_NAME` and `KFTUNE_ADAPTER_URI` for the trainer, when tracking is configured."""
    if not (env.get(TRACKING_URI_ENV) or os.environ.get(TRACKING_URI_ENV)):
        return {}
    return {"KFTUNE_RUN_NAME": run_name(adapter_uri), "KFTUNE_ADAPTER_URI": adapter_uri}
