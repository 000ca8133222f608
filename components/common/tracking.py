"""Adding a later step's results to the training's MLflow run (optional, best effort).

The trainer names its MLflow run in the adapter's `tracking.json` (`mlflow_run_id`); a step
that reads the adapter (evaluate) logs its figures to that run when `MLFLOW_TRACKING_URI` is set
for it too. mlflow is imported only then; a missing package or an unreachable tracker is a
warning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
"""In the adapter directory: the MLflow run the trainer logged to."""


def training_run_id(adapter_dir: str | Path) -> str:
    """The MLflow run of the adapter's training, or ""."""
    try:
        record = json.loads((Path(adapter_dir) / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return str(record.get("mlflow_run_id") or "") if isinstance(record, dict) else ""


def fail_fast_requests() -> None:
    """MLflow's HTTP client: one retry and a 10 s timeout, unless the user set them.

    MLflow retries a failed request 7 times with backoff (minutes): a tracker that does not
    answer should cost seconds, since tracking is best effort.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def log_to_training_run(adapter_dir: str | Path, figures: Mapping[str, float]) -> bool:
    """Logs `figures` to the adapter's training run; whether they were logged."""
    run_id = training_run_id(adapter_dir)
    if not run_id or not os.environ.get("MLFLOW_TRACKING_URI"):
        return False
    fail_fast_requests()
    try:
        from mlflow.entities import Metric  # pyright: ignore[reportMissingImports]
        from mlflow.tracking import MlflowClient  # pyright: ignore[reportMissingImports]
    except ImportError:
        logger.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install "
                       "'kftune[tracking]'): the results are not added to MLflow run %s", run_id)
        return False
    stamp = int(time.time() * 1000)
    try:
        MlflowClient().log_batch(run_id, metrics=[
            Metric(name, float(value), stamp, 0) for name, value in figures.items()])
    except Exception as error:  # tracking is best effort
        logger.warning("could not add the results to MLflow run %s: %s: %s", run_id,
                       type(error).__name__, (str(error).splitlines() or [""])[0][:300])
        return False
    logger.info("added %d results to MLflow run %s", len(figures), run_id)
    return True
