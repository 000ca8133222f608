"""Naming the cause of a failed torchrun node from its failure report.

The reports are written by torch's own formatter (ChildFailedError over ProcessFailure, which
reads the workers' error files as torchrun does), so the parser reads exactly what torchrun prints.
"""

import json
import signal
import time
from dataclasses import dataclass

import pytest
from kftune.components.train_lora.failures import (
    TERMINATION_MESSAGE_ENV,
    FailureRecord,
    Report,
    node_failure,
    read_failure_record,
    write_failure_record,
)
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

FRAMES = [f'  File "/app/trainer.py", line {n}, in step\n    loss = model(batch)'
          for n in range(40)]
LOST_PEER = ("RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
             "[127.0.0.1]:40065. This is typically caused by a remote worker crashing.")


@dataclass
class Worker:
    """One failed worker: how it ended and, if it recorded one, its exception."""

    rank: int
    exitcode: int
    exception: str = ""  # the final `Type: message` (may span lines)
    seconds_early: int = 0  # how much earlier than now its error file is stamped
    chained: str = ""  # an exception raised while handling which this one followed


def report_lines(tmp_path, workers):
    failures = {}
    for worker in workers:
        error_file = tmp_path / f"error-{worker.rank}.json"
        if worker.exception:
            callstack = "Traceback (most recent call last):\n" + "\n".join(FRAMES) + "\n"
            if worker.chained:
                callstack = (f"{callstack}{worker.chained}\n\nThe above exception was the direct "
                             "cause of the following exception:\n\n" + callstack)
            error_file.write_text(json.dumps({"message": {
                "message": worker.exception,
                "extraInfo": {"py_callstack": callstack + worker.exception,
                              "timestamp": str(int(time.time()) - worker.seconds_early)}}}))
        failures[worker.rank] = ProcessFailure(
            local_rank=worker.rank % 2, pid=4000 + worker.rank, exitcode=worker.exitcode,
            error_file=str(error_file))
    text = ("[rank0]: some training output\n"
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "
            + ChildFailedError("kftune.components.train_lora.pod.trainer", failures).format_msg()
            + "\n2026-12-02 11:54:03,862 kftune.pod uploaded checkpoint step 3: rank : 7")
    return text.splitlines(), failures


@dataclass
class Case:
    name: str
    workers: list
    expected: tuple


KILLED = ("trainer rank 1 (pid 4001) was killed by SIGKILL (out of memory, or killed from "
          "outside)", False, True)
CASES = [
    Case("a killed rank, not the sibling that lost it and was stopped first",
         [Worker(1, -signal.SIGKILL), Worker(0, -signal.SIGTERM, LOST_PEER, seconds_early=1)],
         KILLED),
    Case("a killed rank, not the sibling that lost it and exited",
         [Worker(0, 1, LOST_PEER, seconds_early=2), Worker(1, -signal.SIGKILL)], KILLED),
    Case("a rank's own error, not the sibling that lost it",
         [Worker(3, 1, LOST_PEER, seconds_early=1), Worker(2, 1, "ValueError: bad shape")],
         ("trainer rank 2: ValueError: bad shape", False, False)),
    Case("a lost peer, not a sibling torchrun stopped",
         [Worker(1, -signal.SIGTERM), Worker(0, 1, LOST_PEER)],
         (f"trainer rank 0: {LOST_PEER}", False, False)),
    Case("bad input on the root cause",
         [Worker(0, 2, "InputError: `lora_config.r` must be >= 1\n  (got 0)")],
         ("trainer rank 0: InputError: `lora_config.r` must be >= 1", True, False)),
    Case("the last of chained exceptions",
         [Worker(1, -signal.SIGTERM),
          Worker(0, 1, "OSError: [Errno 5] I/O error", chained="KeyError: 'x'")],
         ("trainer rank 0: OSError: [Errno 5] I/O error", False, False)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_cause_is_named_from_the_whole_report(tmp_path, case):
    lines, failures = report_lines(tmp_path, case.workers)
    root = ChildFailedError("trainer", failures).get_first_failure()[0]
    recorded = next((w.exception for w in case.workers if w.rank == root and w.exception), "")

    # The node's last 50 lines may not reach back to the report's first failures.
    cause = node_failure(1, recorded, lines[-50:], Report.of(lines))

    assert cause == case.expected


def test_the_report_is_read_as_it_streams_and_a_new_one_replaces_it(tmp_path):
    first, _ = report_lines(tmp_path, [Worker(1, -signal.SIGKILL)])
    second, _ = report_lines(tmp_path, [Worker(3, 1, "ValueError: again")])
    report = Report()
    for line in [*first, "restarting", *second]:
        report.feed(line)

    assert [(failure.rank, failure.exitcode) for failure in report.failures] == [(3, 1)]
    assert report.cause().exception == "ValueError: again"


def test_lines_after_the_report_do_not_change_it(tmp_path):
    lines, _ = report_lines(tmp_path, [Worker(1, -signal.SIGKILL)])
    report = Report.of([*lines, "  rank      : 9 (local_rank: 0)", "[5]:"])

    assert [(failure.rank, failure.pid) for failure in report.failures] == [(1, 4001)]


def test_output_without_a_report_has_no_cause():
    assert Report.of(["loss 0.5", "ValueError: boom"]).cause() is None


@pytest.mark.parametrize("record", [
    FailureRecord("trainer rank 3 (pid 9) was killed by SIGKILL", 1, killed=True),
    FailureRecord("trainer rank 0: InputError: `lora_config.r` must be >= 1", 0, bad_input=True),
    FailureRecord("the pod entrypoint: OSError: [Errno 28] No space left on device"),
    FailureRecord("x" * 10_000, 2),
], ids=["signal", "bad input", "no rank", "long"])
def test_a_failure_record_round_trips_through_a_termination_message(record, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv(TERMINATION_MESSAGE_ENV, str(tmp_path / "termination-log"))
    assert write_failure_record(record)
    message = (tmp_path / "termination-log").read_text()
    assert len(message.encode()) <= 4096 and "\n" not in message  # Kubernetes' limit

    read = read_failure_record(tmp_path / "termination-log")
    assert (read.node_rank, read.bad_input, read.killed) == (
        record.node_rank, record.bad_input, record.killed)
    assert read.cause == record.cause or (len(record.cause) > 4000
                                          and read.cause.endswith("..."))


@pytest.mark.parametrize("message", [
    None, "", "Traceback (most recent call last):\n  File ...",  # FallbackToLogsOnError's log end
    '{"some": "json"}', "[1, 2]",
])
def test_a_termination_message_that_is_not_a_record_is_none(message):
    assert FailureRecord.from_message(message) is None
