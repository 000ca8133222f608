"""Where global rank 0 reports its logged steps besides the log: the TrainJob's status.

Each reporter takes the trainer's per-step record (`trainer.Progress`) on logging steps only, so
it adds no work to the other steps, and never fails the training: a reporter that cannot reach
its endpoint warns once and carries on.

- `TrainerStatusReporter`: Kubeflow Trainer v2.2+ (KEP-2779, the `TrainJobStatus` feature gate).
  The Trainer injects `KUBEFLOW_TRAINER_STATUS_URL` (its controller's status endpoint for this
  TrainJob), `KUBEFLOW_TRAINER_STATUS_TOKEN` (a projected service account token file) and
  `KUBEFLOW_TRAINER_STATUS_CA_CERT` (its CA) into the pods; the pod POSTs
  `{"trainerStatus": {progressPercentage, estimatedRemainingSeconds, metrics, lastUpdatedTime}}`
  with the token as bearer, and the controller writes it to the TrainJob's `status.trainerStatus`
  (`kubectl get trainjob` shows the progress). Without the URL (PyTorchJob, local, an older
  Trainer, the gate off) there is no reporter. Posts go from a background thread, at most one
  every `min_interval` seconds (the latest status wins), and the final one always.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

LOG = logging.getLogger("kftune.trainer")

STATUS_URL_ENV = "KUBEFLOW_TRAINER_STATUS_URL"
STATUS_TOKEN_ENV = "KUBEFLOW_TRAINER_STATUS_TOKEN"
STATUS_CA_ENV = "KUBEFLOW_TRAINER_STATUS_CA_CERT"
# The metrics of a record that go into trainerStatus.metrics, in this order.
STATUS_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch")


@dataclasses.dataclass(frozen=True)
class Position:
    """How far the run is when a step is logged."""

    step: int
    total_steps: int
    eta_seconds: float | None


class Reporter(Protocol):
    """Receives the logged steps on global rank 0."""

    def step(self, record: Mapping[str, Any], position: Position) -> None:
        """One logged step's record (`trainer.Progress`)."""

    def close(self, metrics: Mapping[str, Any] | None) -> None:
        """The run ended: with its final metrics, or None when it failed."""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)[:64]


def trainer_status(record: Mapping[str, Any], position: Position) -> dict[str, Any]:
    """The `trainerStatus` of a logged step, in the TrainJob CRD's shape."""
    status: dict[str, Any] = {
        "progressPercentage": max(0, min(100, int(100 * position.step / position.total_steps))),
        "metrics": [{"name": name, "value": _value(record[name])} for name in STATUS_METRICS
                    if record.get(name) is not None]
                   + [{"name": "step", "value": str(position.step)},
                      {"name": "total_steps", "value": str(position.total_steps)}],
        "lastUpdatedTime": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
    }
    if position.eta_seconds is not None:
        status["estimatedRemainingSeconds"] = max(0, min(2**31 - 1, int(position.eta_seconds)))
    return status


class TrainerStatusReporter:
    """Posts the progress to the Trainer's status endpoint from a background thread."""

    def __init__(self, url: str, token_file: str = "", ca_file: str = "",
                 min_interval: float = 5.0) -> None:
        self.url = url
        self.token_file = token_file
        self.ca_file = ca_file
        self.min_interval = min_interval
        self._pending: dict[str, Any] | None = None
        self._closing = False
        self._warned = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="trainer-status", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerStatusReporter | None:
        """The reporter the Trainer's environment asks for, or None (no status endpoint)."""
        environ = os.environ if environ is None else environ
        url = environ.get(STATUS_URL_ENV)
        if not url:
            return None
        LOG.info("reporting progress to the TrainJob's status (%s)", STATUS_URL_ENV)
        return cls(url, environ.get(STATUS_TOKEN_ENV, ""), environ.get(STATUS_CA_ENV, ""))

    def step(self, record: Mapping[str, Any], position: Position) -> None:
        """Queues the status of this logged step (replacing one not yet sent)."""
        with self._cond:
            self._pending = trainer_status(record, position)
            self._cond.notify_all()

    def close(self, metrics: Mapping[str, Any] | None, timeout: float = 10.0) -> None:
        """Sends what is pending (a finished run reports 100 %) and stops the thread."""
        with self._cond:
            if metrics is not None and self._pending is not None:
                self._pending["progressPercentage"] = 100
                self._pending["estimatedRemainingSeconds"] = 0
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        last_sent = -float("inf")
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
                wait = last_sent + self.min_interval - time.monotonic()
                if wait > 0 and not self._closing:
                    self._cond.wait(wait)
                    continue
                status, self._pending = self._pending, None
            self._post(status)
            last_sent = time.monotonic()

    def _post(self, status: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json"}
        try:
            if self.token_file:
                headers["Authorization"] = f"Bearer {Path(self.token_file).read_text().strip()}"
            context = (ssl.create_default_context(cafile=self.ca_file or None)
                       if self.url.startswith("https://") else None)
            request = urllib.request.Request(
                self.url, data=json.dumps({"trainerStatus": status}).encode(), headers=headers,
                method="POST")
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                response.read()
        except Exception as error:  # progress is best effort: training goes on
            log = LOG.debug if self._warned else LOG.warning
            self._warned = True
            log("could not report progress to the TrainJob's status: %s; training goes on", error)


def reporters_from_env(is_main: bool) -> list[Reporter]:
    """The reporters this process's environment asks for (global rank 0 only reports)."""
    if not is_main:
        return []
    found: list[Reporter | None] = [TrainerStatusReporter.from_env()]
    return [reporter for reporter in found if reporter is not None]
