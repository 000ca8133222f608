"""Stopping `kftune run` stops everything it started and leaves nothing half-written behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kftune.components.common.demo import tiny_causal_lm

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = tiny_causal_lm(root / "tiny")
    data = root / "qa.jsonl"
    with data.open("w") as handle:
        for number in range(200):
            handle.write(json.dumps({"question": f"What is {number} plus one?",
                                     "answer": f" {number + 1}."}) + "\n")
    return model, data


def run_command(model: Path, data: Path, output_dir: Path, max_steps: int) -> list[str]:
    return [
        sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(output_dir),
        "--task", "causal-lm", "--model-uri", str(model), "--dataset-uri", str(data),
        "--column-mapping", '{"prompt": "question", "completion": "answer"}',
        "--eval-fraction", "0.1", "--eval-max-examples", "10", "--num-workers", "2",
        "--lora-config", '{"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}',
        "--training-parameters", json.dumps({
            "max_steps": max_steps, "per_device_train_batch_size": 4, "logging_steps": 1,
            "save_strategy": "no"}),
    ]


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        assert process.poll() is None, path.read_text()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen in {timeout} s:\n{path.read_text()[-3000:]}")


def alive(processes: list[psutil.Process]) -> list[str]:
    """The processes still running (a zombie nobody reaped has stopped: it is not counted)."""
    found = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.Error:
            continue
    return found


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in directory.rglob("*") if path.exists()}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process_and_marks_the_output_incomplete(
        tiny_inputs, tmp_path, signum, code):
    model, data = tiny_inputs
    output_dir = tmp_path / "run"
    log = tmp_path / "log.txt"
    tree: list[psutil.Process] = []
    with log.open("w") as handle:
        process = subprocess.Popen(run_command(model, data, output_dir, max_steps=100_000),
                                   stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # Both nodes' trainers are running once rank 0 logs its first step.
        wait_for(log, "step 1/100000", process, timeout=600)
        tree = psutil.Process(process.pid).children(recursive=True)
        trainers = [child for child in tree
                    if "kftune.components.train_lora.pod.trainer" in " ".join(child.cmdline())]
        assert len(trainers) >= 4, [" ".join(child.cmdline()) for child in tree]  # agents + ranks

        process.send_signal(signum)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        survivors = alive(tree)
        for child in tree:  # never leave a failed test's processes running
            try:
                child.kill()
            except psutil.Error:
                pass

    output = log.read_text()
    assert returncode == code, output[-3000:]
    last = output.strip().splitlines()
    assert f"stopped by {signal.Signals(signum).name}" in last[-2], last[-2:]
    assert survivors == []
    # Nothing is written into the output directory after the run has exited...
    before = listing(output_dir)
    time.sleep(5)
    assert listing(output_dir) == before
    # ...and what is there says the run is incomplete: no summary, no adapter.
    assert "stopped by" in (output_dir / "INCOMPLETE").read_text()
    assert not (output_dir / "summary.json").exists()
    assert not any(path.name == "adapter" for path in output_dir.rglob("*"))
