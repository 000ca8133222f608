"""The local backend with stand-in node commands (no torch): env, failure, timeout, cancel."""

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import pytest
from kftune.components.train_lora.step.backends import deleting_on_exit
from kftune.components.train_lora.step.backends.local import (
    LocalBackend,
    node_failure,
    resolve_num_procs,
)

OPERATOR_ENV = ["PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                "PET_MASTER_PORT", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                "PYTHONUNBUFFERED"]


def python(code):
    return [sys.executable, "-c", code]


def test_each_node_gets_the_operator_environment():
    lines = []
    code = (f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {OPERATOR_ENV}}}));"
            "print(os.environ['EXTRA'])")
    backend = LocalBackend(python(code), num_workers=3, num_procs_per_worker=2,
                           env={"EXTRA": "yes"}, log_line=lines.append)
    backend.submit()
    backend.wait(timeout_seconds=30)

    by_node = {}
    for line in lines:
        prefix, _, payload = line.partition(" ")
        if payload.startswith("{"):
            by_node[prefix] = json.loads(payload)
    assert sorted(by_node) == ["[node-0]", "[node-1]", "[node-2]"]
    ports = {env["PET_MASTER_PORT"] for env in by_node.values()}
    assert len(ports) == 1
    for rank in range(3):
        env = by_node[f"[node-{rank}]"]
        assert env == {
            "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": env["PET_MASTER_PORT"],
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": env["PET_MASTER_PORT"],
            "RANK": str(rank), "WORLD_SIZE": "6", "PYTHONUNBUFFERED": "1",
        }
    assert "[node-2] yes" in lines


@pytest.mark.parametrize("visible, expected", [("", 1), ("0", 1), ("0,1,2,3", 4)],
                         ids=["no gpus", "one gpu", "four gpus"])
def test_auto_means_one_process_per_visible_gpu(visible, expected, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert resolve_num_procs("auto") == expected
    assert resolve_num_procs(3) == 3


def test_auto_is_one_process_on_a_host_without_gpus(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert LocalBackend(python("pass"), num_workers=1, num_procs_per_worker="auto").num_procs == 1


def test_a_failing_node_stops_the_others_and_is_quoted():
    code = ("import os, sys, time\n"
            "if os.environ['PET_NODE_RANK'] == '1':\n"
            "    print('loading shard'); print('ValueError: boom'); sys.exit(3)\n"
            "time.sleep(60)\n")
    backend = LocalBackend(python(code), num_workers=2, stop_grace_seconds=2,
                           log_line=lambda line: None)
    backend.submit()
    started = time.monotonic()

    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=30)

    message = str(caught.value)
    assert message.splitlines()[0] == ("training failed on node 1 of 2: torchrun exited with "
                                       "code 3: ValueError: boom")
    assert time.monotonic() - started < 10
    assert all(process.poll() is not None for process in backend._processes)


def test_timeout_stops_every_node():
    backend = LocalBackend(python("import time; time.sleep(60)"), num_workers=2,
                           stop_grace_seconds=2, log_line=lambda line: None)
    backend.submit()

    with pytest.raises(TimeoutError, match="did not finish within"):
        backend.wait(timeout_seconds=0.5)
    assert all(process.poll() is not None for process in backend._processes)


def test_sigterm_stops_every_node():
    backend = LocalBackend(python("import time; time.sleep(60)"), num_workers=2,
                           stop_grace_seconds=2, log_line=lambda line: None)
    backend.submit()
    threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()

    with pytest.raises(SystemExit) as caught, deleting_on_exit(backend):
        backend.wait(timeout_seconds=30)

    assert caught.value.code == 143
    assert all(process.poll() is not None for process in backend._processes)


def attempts_command(tmp_path, body):
    """A node that appends its attempt to a file, then runs `body` (which may exit)."""
    log = tmp_path / "attempts.txt"
    return log, python(
        "import json, os, sys\n"
        f"open({str(log)!r}, 'a').write(os.environ['PET_NODE_RANK'] + ' '"
        " + os.environ['KFTUNE_LOCAL_RESTART_COUNT'] + '\\n')\n" + body)


def test_a_failed_job_is_started_again_and_can_succeed(tmp_path):
    log, command = attempts_command(
        tmp_path, "if os.environ['KFTUNE_LOCAL_RESTART_COUNT'] == '0' and "
                  "os.environ['PET_NODE_RANK'] == '1': sys.exit(1)\n")
    backend = LocalBackend(command, num_workers=2, stop_grace_seconds=2, max_restarts=1,
                           log_line=lambda line: None)
    backend.submit()
    backend.wait(timeout_seconds=60)

    assert backend.restarts == 1
    assert sorted(log.read_text().split("\n")[:-1]) == ["0 0", "0 1", "1 0", "1 1"]


@dataclass
class RestartCase:
    name: str
    exit_code: int
    max_restarts: int
    attempts: int
    first_line: str
    output: str = ""


DISK_FULL = ("DiskFullError: [Errno 28] No space left on device while writing checkpoint step 4 "
             "to /out/checkpoints/.step-4.partial-x (0 MiB free of 1.0 GiB); free space there")
RESTART_CASES = [
    RestartCase("bounded", 1, 2, 3,
                "training failed on node 0 of 1 after 2 restart(s): torchrun exited with code 1"),
    RestartCase("bad input is never retried", 2, 3, 1,
                "training failed on node 0 of 1: torchrun exited with code 2"),
    # A restarted trainer would fill the disk again at its next checkpoint.
    RestartCase("a full disk is never retried", 1, 3, 1,
                f"training failed on node 0 of 1: torchrun exited with code 1: {DISK_FULL}",
                output=DISK_FULL),
]


@pytest.mark.parametrize("case", RESTART_CASES, ids=lambda case: case.name)
def test_restarts_are_bounded_and_skip_bad_input(tmp_path, case):
    log, command = attempts_command(
        tmp_path, f"print({case.output!r}, flush=True)\nsys.exit({case.exit_code})\n")
    backend = LocalBackend(command, num_workers=1, max_restarts=case.max_restarts,
                           log_line=lambda line: None)
    backend.submit()
    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=60)

    assert str(caught.value).splitlines()[0] == case.first_line
    assert len(log.read_text().splitlines()) == case.attempts


def test_the_error_torchrun_recorded_is_the_first_line():
    # What torchrun does with its failed worker's @record-ed exception: copy it to its own
    # TORCHELASTIC_ERROR_FILE.
    code = ("import json, os, sys\n"
            "json.dump({'message': {'message': 'ValueError: the real reason', 'extraInfo': {}}},"
            " open(os.environ['TORCHELASTIC_ERROR_FILE'], 'w'))\n"
            "print('torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ')\n"
            "sys.exit(1)\n")
    backend = LocalBackend(python(code), num_workers=1, log_line=lambda line: None)
    backend.submit()
    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=60)
    assert str(caught.value).splitlines()[0] == (
        "training failed on node 0 of 1: the trainer: ValueError: the real reason")


def test_a_nodes_failure_record_is_the_cause():
    """A node run by pod/node.py writes its record as a pod writes its termination message."""
    code = ("import os, sys\n"
            "from kftune.components.train_lora.failures import FailureRecord, "
            "write_failure_record\n"
            "write_failure_record(FailureRecord('trainer rank 1 (pid 7) was killed by SIGKILL',"
            " 0, killed=True))\n"
            "print('ValueError: a misleading line in the log')\n"
            "sys.exit(1)\n")
    backend = LocalBackend(python(code), num_workers=1, log_line=lambda line: None)
    backend.submit()
    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=60)
    assert str(caught.value).splitlines()[0] == (
        "training failed on node 0 of 1: trainer rank 1 (pid 7) was killed by SIGKILL")


@dataclass
class FailureCase:
    name: str
    code: int
    recorded: str
    tail: list
    expected: tuple


REPORT = ["Root Cause (first observed failure):", "[0]:", "  rank      : 3 (local_rank: 1)"]
FAILURE_CASES = [
    FailureCase("recorded bad input", 1, "InputError: `lora_config.r` must be >= 1",
                [*REPORT, "  exitcode  : 2 (pid: 41)"],
                ("trainer rank 3: InputError: `lora_config.r` must be >= 1", True, False)),
    FailureCase("a worker killed by SIGKILL", 1, "", [*REPORT, "  exitcode  : -9 (pid: 41)"],
                ("trainer rank 3 (pid 41) was killed by SIGKILL (out of memory, or killed from "
                 "outside)", False, True)),
    FailureCase("a full disk", 1, "OSError: [Errno 28] No space left on device: '/out/x'",
                [*REPORT, "  exitcode  : 1 (pid: 41)"],
                ("trainer rank 3: OSError: [Errno 28] No space left on device: '/out/x' -- the "
                 "disk is full: free space on it, or point the run's output elsewhere", True,
                 False)),
    FailureCase("a full disk named by kftune", 1, DISK_FULL,
                [*REPORT, "  exitcode  : 1 (pid: 41)"], (f"trainer rank 3: {DISK_FULL}", True,
                                                         False)),
    FailureCase("an unrecorded exit quotes the last exception line", 1, "",
                ["ValueError: boom", *REPORT, "  exitcode  : 1 (pid: 41)",
                 "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "],
                ("trainer rank 3 exited with code 1: ValueError: boom", False, False)),
    FailureCase("a sibling stopped in the same second is not the root cause", 1, "",
                ["Failures:", "[1]:", "  rank      : 2 (local_rank: 0)",
                 "  exitcode  : -9 (pid: 40)", *REPORT[:2], "  rank      : 3 (local_rank: 1)",
                 "  exitcode  : -15 (pid: 41)"],
                ("trainer rank 2 (pid 40) was killed by SIGKILL (out of memory, or killed from "
                 "outside)", False, True)),
    FailureCase("torchrun itself killed", -9, "", ["starting"],
                ("its torchrun was killed by SIGKILL", False, True)),
]


@pytest.mark.parametrize("case", FAILURE_CASES, ids=lambda case: case.name)
def test_a_failed_node_is_described_in_one_line(case):
    assert node_failure(case.code, case.recorded, case.tail) == case.expected
