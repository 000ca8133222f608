"""Stopping everything `kftune run` started: the step processes and whatever they started.

kfp.local runs each step as `sh -c "... python -m kfp.dsl.executor_main ..."`, and the local
training backend starts its torchrun "nodes" in their own sessions (so that stopping a node stops
its workers). A signal to `kftune run` alone reaches none of them. `StopOnSignal` turns SIGTERM
and SIGINT into a `RunStopped` exception and, before raising it, asks every descendant to stop;
`stop_descendants` then waits for them (the step's executor stops its nodes itself) and kills
what is left after a grace period.

This process registers as a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): a process whose
parent exits (the executor, once its `sh` is gone) is re-parented to us instead of init, so it is
still found among our descendants.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

import psutil

logger = logging.getLogger("kftune")

PR_SET_CHILD_SUBREAPER = 36


class RunStopped(BaseException):  # like KeyboardInterrupt, not an error
    """`kftune run` got SIGTERM or SIGINT; a BaseException so no `except Exception` keeps it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (SIGINT 130, SIGTERM 143)."""
        return 128 + self.signum


def set_subreaper(on: bool) -> bool:
    """Makes orphaned descendants this process's children, or stops it (Linux only).

    Returns whether it worked.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants() -> list[psutil.Process]:
    """Every living process below this one."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def stop_descendants(grace_seconds: float = 30.0) -> list[int]:
    """Stops every descendant: SIGTERM, then SIGKILL to those alive after `grace_seconds`.

    The step's executor needs part of the grace to stop its training nodes (their own grace is
    10 s), so the default leaves it room. Returns the pids that had to be killed.
    """
    deadline = time.monotonic() + grace_seconds
    signalled: set[int] = set()
    while True:
        alive = descendants()
        new = [process for process in alive if process.pid not in signalled]
        _signal_all(new, signal.SIGTERM)
        signalled.update(process.pid for process in new)
        # Reap the children that already exited, so they do not count as alive.
        _, alive = psutil.wait_procs(alive, timeout=0.2)
        if not alive:
            return []
        if time.monotonic() > deadline:
            break
    killed = descendants()
    _signal_all(killed, signal.SIGKILL)
    psutil.wait_procs(killed, timeout=5)
    return [process.pid for process in killed]


@contextlib.contextmanager
def stop_on_signal(grace_seconds: float = 30.0) -> Iterator[None]:
    """SIGTERM/SIGINT inside the block stop every descendant, then raise `RunStopped`.

    The descendants are told (SIGTERM) in the handler already, because kfp.local's subprocess
    wrapper waits for its child while the exception unwinds through it; then
    `stop_descendants` waits for all of them, with further signals ignored so that a second
    Ctrl-C cannot cut the cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread can take signals (a Python API caller's worker thread, say).
        yield
        return
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in watched}
    set_subreaper(True)

    def on_signal(signum: int, frame: object) -> None:
        for number in watched:
            signal.signal(number, signal.SIG_IGN)
        _signal_all(descendants(), signal.SIGTERM)
        raise RunStopped(signum)

    for signum in watched:
        signal.signal(signum, on_signal)
    try:
        yield
    except RunStopped:
        for number in watched:
            signal.signal(number, signal.SIG_IGN)
        killed = stop_descendants(grace_seconds)
        if killed:
            logger.warning("killed %d process(es) that did not stop in %g s: %s", len(killed),
                           grace_seconds, ", ".join(map(str, killed)))
        raise
    finally:
        set_subreaper(False)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
