"""Fixtures shared by the local tier's files."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kftune_demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[
        subprocess.CompletedProcess, Path]:
    """`kftune run` with the demo defaults, merging and previewing the deployment, once per
    pytest run, for the tests that only read what it printed and wrote.

    Under pytest-xdist the workers share it: the first to need it runs it while holding a lock
    in the run's common temporary directory, the others wait and read its record.

    Returns:
        (the finished process, its --output-dir).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base directories are siblings
    output_dir = root / "kftune-demo-run"
    record = root / "kftune-demo-run.json"
    command = [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir",
               str(output_dir), "--merge", "true", "--deploy", "true", "--serving-name",
               "sentiment"]
    with open(root / "kftune-demo-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=1200,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
            record.write_text(json.dumps({"returncode": completed.returncode,
                                          "stdout": completed.stdout,
                                          "stderr": completed.stderr}))
    finished = json.loads(record.read_text())
    return subprocess.CompletedProcess(command, finished["returncode"], finished["stdout"],
                                       finished["stderr"]), output_dir
