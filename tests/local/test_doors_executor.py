"""The components' door through KFP's own executor (kfp.local): the same problems as the others.

tests/unit/test_doors.py calls each component's Python function with what its executor would
pass; here two of its cases go through the executor itself, in a subprocess as on a cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kfp import local

pytestmark = pytest.mark.local

S3_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"


def test_download_dataset_refuses_through_its_executor_naming_every_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kftune.components.download_dataset.component import download_dataset
    from kftune.pipelines.run import _OutputTail

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    tail = _OutputTail(sys.stdout)
    monkeypatch.setattr(sys, "stdout", tail)
    with pytest.raises(RuntimeError, match="FAILURE"):
        download_dataset(uri=f"s3://AKIAIOSFODNN7EXAMPLE:{S3_SECRET}@bucket/data.jsonl",
                         split="train[:30")
    monkeypatch.setattr(sys, "stdout", tail.stream)
    error = tail.last_error()
    # The step's last line, as kftune run shows it: every problem, no credential.
    assert error.startswith("InputError: 2 problems: ")
    assert "'s3://bucket/data.jsonl' carries credentials in the URI" in error
    assert "`split` 'train[:30' is not a valid split expression" in error
    # (KFP's executor itself echoes its input, the URI included: kftune's doors refuse the run
    # before any step gets it; a pipeline of your own that passes it on is what this step refuses.)
    assert S3_SECRET not in error
    shown = [line for line in tail.lines
             if "Got executor_input" not in line and '"uri"' not in line]
    assert S3_SECRET not in "\n".join(shown)
    assert not list((tmp_path / "root").rglob("*.arrow"))  # nothing fetched or written
