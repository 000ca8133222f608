"""Why a torchrun node failed, in one line, from torchrun's failure report.

When one rank dies, its siblings fail too: their collectives lose the peer ("Connection closed by
peer"), and torchrun stops the rest with SIGTERM. torchrun names a "Root Cause (first observed
failure)", but it picks the earliest timestamp in whole seconds, and a sibling that recorded its
lost-peer exception before torchrun noticed the dead rank wins that race. This module reads the
whole report and names the failure that is the cause: a rank with an error of its own, or killed
by a signal torchrun did not send, before one that lost a peer, before one torchrun stopped.

Used by the pod entrypoint (its last log line, which the launch step quotes) and by the local
backend (the error that ends a local run).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BAD_INPUT_STATUS = 2  # the trainer's exit status for bad input (trainer.main)
DISK_FULL = "No space left on device"  # strerror(ENOSPC), also in kftune's DiskFullError

# What a rank says when another rank or node went away, not a failure of its own.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "DistNetworkError",
             "DistBackendError", "Broken pipe", "ProcessGroupGloo", "NCCL error",
             "Socket Timeout", "timed out")

# torchrun's report (torch.distributed.elastic.multiprocessing.errors), one block per failure:
#   [1]:
#     rank      : 3 (local_rank: 1)
#     exitcode  : -9 (pid: 1234) (SIGKILL)
#     traceback : Traceback (most recent call last): ... (continued, indented by two spaces)
_BLOCK = re.compile(r"^\[(\d+)\]:\s*$")
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+) \(pid: (\d+)\)")
_TRACEBACK = re.compile(r"^\s*traceback\s*:\s?(.*)$")
_RULE = re.compile(r"^[=-]{3,}\s*$")
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): ")
# Signals that say the process was stopped because of another failure, not why the job failed.
_STOPPED = frozenset({signal.SIGTERM})


@dataclass
class Failure:
    """One failed worker in torchrun's report."""

    rank: int | None = None
    exitcode: int | None = None
    pid: int | None = None
    traceback: list[str] = field(default_factory=list)
    root: bool = False  # torchrun's "first observed failure"

    @property
    def exception(self) -> str:
        """The worker's final exception line (`Type: message`), or ""."""
        header = ""
        after_frame = False
        for line in self.traceback:
            if line[:1].isspace():
                after_frame = True
            elif after_frame or not header:
                header, after_frame = line, False
        return header if _EXCEPTION.match(header) else ""


class Report:
    """torchrun's failure report, read line by line as a node's output streams by."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.failures: list[Failure] = []
        self._root_section = False
        self._state = "outside"  # or "fields" (of the last failure), "traceback", "done"

    @classmethod
    def of(cls, lines: Iterable[str]) -> Report:
        """The report in these lines."""
        report = cls()
        for line in lines:
            report.feed(line)
        return report

    def feed(self, line: str) -> None:
        """Reads one line of the node's output (any line: the report is found among them)."""
        if line.strip() == "Failures:":  # a new report
            self._reset()
        elif line.startswith("Root Cause"):
            self._root_section, self._state = True, "outside"
        elif _BLOCK.match(line) and self._state != "done":
            self.failures.append(Failure(root=self._root_section))
            self._state = "fields"
        elif _RULE.match(line):
            # The report ends with a rule after its root cause.
            self._state = "done" if self._root_section and self.failures else "outside"
        elif self._state == "traceback":
            self.failures[-1].traceback.append(line[2:] if line.startswith("  ") else line)
        elif self._state == "fields":
            self._field(self.failures[-1], line)

    def _field(self, failure: Failure, line: str) -> None:
        if match := _RANK.match(line):
            failure.rank = int(match.group(1))
        elif match := _EXIT.match(line):
            failure.exitcode, failure.pid = int(match.group(1)), int(match.group(2))
        elif match := _TRACEBACK.match(line):
            self._state = "traceback"
            failure.traceback.append(match.group(1))

    def cause(self) -> Failure | None:
        """The failure that brought the node down (see the module docstring), or None."""
        if not self.failures:
            return None

        def weight(order_failure: tuple[int, Failure]) -> tuple[int, bool, int]:
            order, failure = order_failure
            return _secondary(failure), not failure.root, order

        return min(enumerate(self.failures), key=weight)[1]


def _secondary(failure: Failure) -> int:
    """0: a failure of its own, 1: it lost a peer, 2: torchrun stopped it."""
    if failure.exception:
        return 1 if lost_peer(failure.exception) else 0
    code = failure.exitcode
    return 2 if code is not None and code < 0 and -code in _STOPPED else 0


def read_error_file(path: Path) -> str:
    """The exception (`Type: message`) recorded in a torchelastic error file, or ""."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    message = data.get("message", "") if isinstance(data, dict) else ""
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message).strip()


def lost_peer(cause: str) -> bool:
    """Whether a failure reads like the loss of another rank or node, not one of its own."""
    return any(marker in cause for marker in PEER_LOST)


def node_failure(code: int, recorded: str, tail: Sequence[str],
                 report: Report | None = None) -> tuple[str, bool, bool]:
    """What a failed node's exit means: (one-line cause, permanent, killed by a signal).

    Permanent: bad input or a full disk, which no restart fixes (a restarted trainer would fill
    the disk again at its next checkpoint).

    Args:
        code: the node's (torchrun's) exit status; negative for a signal.
        recorded: the exception torchrun copied from its root-cause worker into
            `TORCHELASTIC_ERROR_FILE`, or "".
        tail: the node's last log lines.
        report: torchrun's failure report read from the node's whole output (default: read from
            `tail`).
    """
    failure = (report or Report.of(tail)).cause()
    who = f"trainer rank {failure.rank}" if failure and failure.rank is not None else "the trainer"
    own = failure.exception if failure else ""
    if recorded and (failure is None or failure.root):
        own = recorded.splitlines()[0]
    exitcode = failure.exitcode if failure else None
    if own:
        cause = f"{who}: {own}"
        return _with_disk_hint(cause, tail), (own.startswith("InputError")
                                              or _disk_full(cause, tail)), False
    if exitcode is not None and exitcode < 0:
        name = signal_name(-exitcode)
        cause = f"{who} (pid {failure.pid}) was killed by {name}"
        if -exitcode == signal.SIGKILL:
            cause += " (out of memory, or killed from outside)"
        return cause, False, True
    if exitcode is not None:
        cause = f"{who} exited with code {exitcode}{_last_words(tail)}"
        return _with_disk_hint(cause, tail), (exitcode == BAD_INPUT_STATUS
                                              or _disk_full(cause, tail)), False
    if code < 0:
        return f"its torchrun was killed by {signal_name(-code)}", False, True
    cause = f"torchrun exited with code {code}{_last_words(tail)}"
    return _with_disk_hint(cause, tail), code == BAD_INPUT_STATUS or _disk_full(cause, tail), False


def _disk_full(cause: str, tail: Sequence[str]) -> bool:
    return any(DISK_FULL in line for line in [cause, *tail])


def _with_disk_hint(cause: str, tail: Sequence[str]) -> str:
    if _disk_full(cause, tail) and "DiskFullError" not in cause:
        return (f"{cause} -- the disk is full: free space on it, or point the run's output "
                "elsewhere")
    return cause


def _last_words(tail: Sequence[str]) -> str:
    """`: <the last exception line>` of a worker's own output before torchrun's report."""
    for line in reversed(tail):
        stripped = line.strip()
        if "ChildFailedError" in stripped or stripped.startswith("raise "):
            continue
        if _EXCEPTION.match(stripped) or stripped.startswith("kftune trainer: "):
            return f": {stripped}"
    return ""


def signal_name(number: int) -> str:
    """`SIGKILL` for 9; `signal 99` for a number that is not a signal."""
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return f"signal {number}"


# -- the failure record ----------------------------------------------------------------------------

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
"""Where a container writes its termination message (Kubernetes' default `terminationMessagePath`,
which the PyTorchJob sets explicitly and the Trainer's runtimes keep)."""
TERMINATION_MESSAGE_ENV = "KFTUNE_TERMINATION_MESSAGE_PATH"
"""Overrides `TERMINATION_MESSAGE_PATH` (the local backend and tests point it at a file)."""
# Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_MESSAGE_BYTES = 4096


@dataclass(frozen=True)
class FailureRecord:
    """Why a node failed, as the pod writes it to its termination message (one JSON line)."""

    cause: str
    """One line: the rank and its exception line, or the signal that killed it."""
    node_rank: int | None = None
    bad_input: bool = False
    killed: bool = False

    def to_message(self) -> str:
        """The record as a termination message: one JSON object, within Kubernetes' limit."""
        fields = {"kftune": "failure", "node_rank": self.node_rank, "cause": self.cause,
                  "bad_input": self.bad_input, "killed": self.killed}
        text = json.dumps(fields)
        while len(text.encode()) > _MAX_MESSAGE_BYTES:
            fields["cause"] = fields["cause"][: len(fields["cause"]) * 3 // 4] + "..."
            text = json.dumps(fields)
        return text

    @classmethod
    def from_message(cls, message: str | None) -> FailureRecord | None:
        """The record in a termination message; None for anything else (e.g. a log fallback)."""
        try:
            fields = json.loads(message or "")
        except ValueError:
            return None
        if not isinstance(fields, dict) or fields.get("kftune") != "failure":
            return None
        return cls(str(fields.get("cause") or ""), fields.get("node_rank"),
                   bool(fields.get("bad_input")), bool(fields.get("killed")))


def termination_message_path() -> Path:
    """This container's termination message file (`TERMINATION_MESSAGE_ENV` overrides it)."""
    return Path(os.environ.get(TERMINATION_MESSAGE_ENV) or TERMINATION_MESSAGE_PATH)


def write_failure_record(record: FailureRecord, path: Path | None = None) -> bool:
    """Writes `record` as this container's termination message; False where it cannot be written.

    Outside a container `/dev/termination-log` does not exist (and is not created): nothing is
    written and the log line remains the only report.
    """
    target = path or termination_message_path()
    if target == Path(TERMINATION_MESSAGE_PATH) and not target.exists():
        return False
    try:
        target.write_text(record.to_message())
    except OSError:
        return False
    return True


def read_failure_record(path: Path) -> FailureRecord | None:
    """The record a node wrote to `path`, or None."""
    try:
        return FailureRecord.from_message(path.read_text())
    except OSError:
        return None
