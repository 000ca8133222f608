"""The interface the training backends share, and the cancel/timeout handling around it."""

from __future__ import annotations

import abc
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

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
