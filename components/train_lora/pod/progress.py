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
- `MlflowReporter`: when `MLFLOW_TRACKING_URI` is set (MLflow's convention; credentials as
  `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` or `MLFLOW_TRACKING_TOKEN` from a
  Secret), one MLflow run named `KFTUNE_RUN_NAME` (the KFP run, set by the train step) in the
  experiment `MLFLOW_EXPERIMENT_NAME` (default `kftune`): the settings as params, every logged
  step's figures as metrics, the final figures, and the adapter's URI (`KFTUNE_ADAPTER_URI`) as
  tag and param. mlflow is imported only then (the `tracking` extra): without it, a warning.
  Calls go from a background thread; MLflow's HTTP retries are cut short, so an unreachable
  tracker costs a warning, not the training's time.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import queue
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ...common import tracking

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


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_NAME_ENV = "KFTUNE_RUN_NAME"
ADAPTER_URI_ENV = "KFTUNE_ADAPTER_URI"
# The per-step figures logged to MLflow (the record's other keys are the step and the time).
TRACKED_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second",
                   "epoch", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                   "rewards/margins")  # the last four: task preference (TRL's names)
# The final figures logged to MLflow as `final_<name>`.
FINAL_METRICS = ("final_loss", "tokens_per_second", "tokens_per_second_per_process",
                 "runtime_seconds", "steps", "epochs", "peak_memory_gib")


class MlflowReporter:
    """Logs the run to an MLflow tracking server, from a background thread (see module doc)."""

    def __init__(self, mlflow: Any, run_name: str, params: Mapping[str, Any],
                 adapter_uri: str = "") -> None:
        self._mlflow = mlflow
        self.run_name = run_name
        self.adapter_uri = adapter_uri
        self.run_id = ""
        self._calls: queue.Queue[Any] = queue.Queue()
        self._failed = False
        self._calls.put(lambda client: self._start(client, params))
        self._thread = threading.Thread(target=self._run, name="mlflow", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, params: Mapping[str, Any], default_run_name: str,
                 environ: Mapping[str, str] | None = None) -> MlflowReporter | None:
        """The reporter `MLFLOW_TRACKING_URI` asks for; None without it, or without mlflow."""
        environ = os.environ if environ is None else environ
        uri = environ.get(TRACKING_URI_ENV)
        if not uri:
            return None
        tracking.fail_fast_requests()
        try:
            # The `tracking` extra: not every trainer image has it.
            import mlflow  # pyright: ignore[reportMissingImports]
        except ImportError:
            LOG.warning("%s is set but mlflow is not installed in this image (pip install "
                        "'kftune[tracking]'); training goes on without tracking", TRACKING_URI_ENV)
            return None
        run_name = environ.get(RUN_NAME_ENV) or default_run_name
        LOG.info("logging to MLflow at %s, run %r", _shown(uri), run_name)
        return cls(mlflow, run_name, params, environ.get(ADAPTER_URI_ENV, ""))

    def step(self, record: Mapping[str, Any], position: Position) -> None:
        """Queues the figures of one logged step."""
        figures = {name: float(record[name]) for name in TRACKED_METRICS
                   if isinstance(record.get(name), (int, float))}
        stamp = int(time.time() * 1000)
        self._calls.put(lambda client: self._log(client, figures, position.step, stamp))

    def close(self, metrics: Mapping[str, Any] | None, timeout: float = 30.0) -> None:
        """Logs the final figures and ends the run (FAILED when `metrics` is None)."""
        self._calls.put(lambda client: self._end(client, metrics))
        self._calls.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        client: Any = None
        while (call := self._calls.get()) is not None:
            if self._failed:
                continue
            try:
                client = client or self._mlflow.tracking.MlflowClient()
                call(client)
            except Exception as error:  # tracking is best effort: training goes on
                self._failed = True
                LOG.warning("MLflow tracking stopped: %s: %s; training goes on",
                            type(error).__name__, (str(error).splitlines() or [""])[0][:300])

    def _start(self, client: Any, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # pyright: ignore[reportMissingImports]

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kftune"
        experiment = client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(name))
        tags = {"kftune.adapter_uri": self.adapter_uri} if self.adapter_uri else {}
        self.run_id = client.create_run(experiment_id, run_name=self.run_name,
                                        tags=tags).info.run_id
        values = {**params, **({"adapter_uri": self.adapter_uri} if self.adapter_uri else {})}
        client.log_batch(self.run_id, params=[
            Param(key, json.dumps(value) if not isinstance(value, str) else value)
            for key, value in sorted(values.items()) if value is not None])

    def _log(self, client: Any, figures: Mapping[str, float], step: int, stamp: int) -> None:
        from mlflow.entities import Metric  # pyright: ignore[reportMissingImports]

        client.log_batch(self.run_id, metrics=[Metric(name, value, stamp, step)
                                               for name, value in figures.items()])

    def _end(self, client: Any, metrics: Mapping[str, Any] | None) -> None:
        from mlflow.entities import Metric  # pyright: ignore[reportMissingImports]

        if metrics is not None:
            stamp, step = int(time.time() * 1000), int(metrics.get("steps") or 0)
            client.log_batch(self.run_id, metrics=[
                Metric(f"final_{name.removeprefix('final_')}", float(metrics[name]), stamp, step)
                for name in FINAL_METRICS if isinstance(metrics.get(name), (int, float))])
        client.set_terminated(self.run_id, "FINISHED" if metrics is not None else "FAILED")


def tracking_record(reporters: list[Reporter]) -> dict[str, str]:
    """What a later step needs to add to the run: the MLflow run's id (after `close`), or {}."""
    for reporter in reporters:
        if isinstance(reporter, MlflowReporter) and reporter.run_id:
            return {"mlflow_run_id": reporter.run_id, "mlflow_run_name": reporter.run_name}
    return {}


def _shown(uri: str) -> str:
    """The tracking URI without user-info (a credential in it is never logged)."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else uri


def reporters_from_env(is_main: bool, params: Mapping[str, Any] | None = None,
                       default_run_name: str = "kftune") -> list[Reporter]:
    """The reporters this process's environment asks for (global rank 0 only reports).

    `params`: the run's settings, logged to MLflow.
    """
    if not is_main:
        return []
    found: list[Reporter | None] = [
        TrainerStatusReporter.from_env(),
        MlflowReporter.from_env(params or {}, default_run_name),
    ]
    return [reporter for reporter in found if reporter is not None]
