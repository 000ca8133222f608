"""The interfaces the training backends share, and the cancel/timeout handling around them.

`TrainingBackend` is the one object per place training runs (this host, a PyTorchJob, a
TrainJob), resolved once by `backends.resolve`: it runs the train step, submits jobs, follows
them, reads their logs and status, and deletes them. `Backend` is one job in flight, as the
training backends drive it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....common.artifacts import atomic_directory
from .choice import Target

if TYPE_CHECKING:
    from ..job import JobRequest
    from ..launch import Plan

logger = logging.getLogger(__name__)


class Backend(abc.ABC):
    """One training job: submitted once, waited on, its logs read, deleted when abandoned."""

    @abc.abstractmethod
    def submit(self) -> str:
        """Starts the job (or attaches to the one already running) and returns its name."""

    @abc.abstractmethod
    def wait(self, timeout_seconds: float) -> None:
        """Blocks until the job succeeds, streaming its log into this process's log.

        Raises:
            RuntimeError: when the job fails (with the reason and the failing worker's last lines).
            TimeoutError: when it runs longer than `timeout_seconds` (the job is deleted first).
        """

    @abc.abstractmethod
    def logs(self, tail_lines: int = 50) -> str:
        """The last `tail_lines` lines of the job's main (rank 0) log."""

    @abc.abstractmethod
    def delete(self) -> None:
        """Stops the job and removes what it created; a no-op when it is already gone."""


@dataclasses.dataclass(frozen=True)
class StepFiles:
    """The train step's artifacts: local directories and their URIs in the artifact store."""

    model_dir: str
    """The base Model artifact's directory."""
    model_uri: str
    """Its URI (what the pods download)."""
    data_dir: str
    """The Dataset artifact's directory."""
    data_uri: str
    """Its URI."""
    adapter_dir: str
    """The output Model artifact's directory (the adapter)."""
    adapter_uri: str
    """Its URI (node rank 0 uploads there; it names the job)."""


@dataclasses.dataclass(frozen=True)
class NodeSelection:
    """Which nodes' logs to read: node 0 (the Master), or by replica type and index."""

    is_master: bool = True
    """Node 0 only."""
    replica_type: str | None = None
    """`Master` or `Worker`."""
    replica_index: int | None = None
    """The replica's index among its type."""


class TrainingBackend(abc.ABC):
    """Where training runs: one object per backend, resolved once (`backends.resolve`)."""

    target: Target
    """The place, as the `backend` parameter names it."""

    @abc.abstractmethod
    def run_step(self, plan: Plan, files: StepFiles) -> dict[str, Any]:
        """Trains the train step's adapter into `files.adapter_dir`; returns its metrics.

        Raises:
            InputError: what this backend finds wrong before anything starts.
            RuntimeError: when training fails.
            TimeoutError: when it runs past the plan's timeout.
        """

    @abc.abstractmethod
    def submit(self, job: JobRequest, plan: Plan) -> str:
        """Starts `job` (a local job runs to its end) and returns its name.

        Raises:
            InputError: what this backend finds wrong before anything starts.
            RuntimeError: when the job cannot be created, or a local job fails.
        """

    @abc.abstractmethod
    def status(self, name: str, namespace: str) -> dict[str, Any]:
        """The job as a dict with `status.conditions`.

        Raises:
            RuntimeError: when there is no such job.
        """

    @abc.abstractmethod
    def logs(self, name: str, namespace: str, nodes: NodeSelection,
             follow: Callable[[str], None] | None = None) -> dict[str, str]:
        """`{pod or node: its log}` of the selected nodes.

        With `follow`, the logs' text is also given to it as it comes, until the job ends.

        Raises:
            RuntimeError: when there is no such job.
        """

    @abc.abstractmethod
    def delete(self, name: str, namespace: str, delete_options: Any = None) -> None:
        """Deletes the job.

        Raises:
            RuntimeError: when the cluster refuses.
        """

    @abc.abstractmethod
    def adapter_uri(self, name: str, namespace: str) -> str:
        """Where the job's adapter is (or goes)."""


class Cancelled(BaseException):
    """SIGTERM arrived (KFP cancels a run this way) while a job was running."""


@contextlib.contextmanager
def deleting_on_exit(backend: Backend) -> Iterator[None]:
    """Deletes the job when the block is left by SIGTERM, Ctrl-C or an unexpected error.

    SIGTERM becomes a `Cancelled` exception in the main thread, so the block unwinds, the job is
    deleted, and the process exits with the conventional status 143 (130 after Ctrl-C). A
    `RuntimeError` from `wait` (the job failed) leaves the job alone: its pods are the evidence.
    """
    previous = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigterm(signum: int, frame: object) -> None:
        raise Cancelled()

    previous_sigint = signal.getsignal(signal.SIGINT)
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except (Cancelled, KeyboardInterrupt) as interruption:
        if in_main_thread:
            # Ctrl-C reaches the whole process group and `kftune run` forwards SIGTERM too: a
            # second signal must not interrupt the delete.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        logger.warning("cancelled: deleting the training job before exiting")
        _delete_quietly(backend)
        # The shell's convention: 128 + the signal number (SIGTERM 15, SIGINT 2).
        raise SystemExit(143 if isinstance(interruption, Cancelled) else 130) from None
    except RuntimeError:
        raise
    except BaseException:
        _delete_quietly(backend)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            signal.signal(signal.SIGINT, previous_sigint)


def _delete_quietly(backend: Backend) -> None:
    try:
        backend.delete()
    except Exception:  # the original error matters more than a failed cleanup
        logger.exception("could not delete the training job")


def run_to_the_end(job: Backend, timeout_seconds: float) -> None:
    """Submits `job` and waits for its end; SIGTERM, Ctrl-C or an unexpected error delete it."""
    with deleting_on_exit(job):
        job.submit()
        job.wait(timeout_seconds=timeout_seconds)


def publish_adapter(final_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    """Copies the trainer's `final/` into `adapter_dir` atomically; returns its metrics.

    Raises:
        RuntimeError: when training reported success but left no adapter.
    """
    if not (final_dir / "adapter_config.json").is_file():
        raise RuntimeError(
            f"training finished but {final_dir} holds no adapter (adapter_config.json missing)"
        )
    with atomic_directory(adapter_dir) as staging:
        shutil.copytree(final_dir, staging, dirs_exist_ok=True)
    metrics = adapter_dir / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else {}
