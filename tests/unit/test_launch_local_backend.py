"""The local backend with stand-in node commands (no torch): env, failure, timeout, cancel."""

import json
import os
import signal
import sys
import threading
import time

import pytest
from kftune.components.train_lora.step.backends import deleting_on_exit
from kftune.components.train_lora.step.backends.local import LocalBackend, resolve_num_procs

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
    assert "local training failed: node 1 of 2 exited with code 3" in message
    assert "ValueError: boom" in message
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
