"""Training checkpoints: atomic to write, verified to read, resumable by any world size.

Layout: `<output_dir>/checkpoints/step-<N>/` holding
- `state.pt`: the trainable (LoRA and modules_to_save) weights by name, optimizer and scheduler
  state, the data position and every rank's RNG state.
- `meta.json`: step, data position, the identity of the base model and of the LoRA shape.
- `COMPLETE`: written last.

Only global rank 0 writes and reads checkpoint files (the other ranks hand it their RNG state and
receive the restored state over the process group), so the checkpoint location need not be shared
between nodes. A checkpoint is built in a hidden `.step-<N>.partial-*` directory, `COMPLETE` is
written, and the directory is renamed to `step-<N>`: a crash mid-write leaves only a partial
directory, which resume ignores. At resume the newest checkpoint that loads is used; one that does
not (truncated, unreadable) is skipped with a warning. One from another base model or LoRA shape is
an error: the run would silently train something else.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ...common.artifacts import atomic_directory
from ...common.errors import Problems, writing

LOG = logging.getLogger("kftune.trainer")
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
STATE = "state.pt"
META = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
DISK_FULL_FIX = ("free space there or give the output more room (a larger emptyDir or claim), "
                 "keep fewer checkpoints (`training_parameters.save_total_limit`) or save less "
                 "often (`save_steps`)")


def checkpoint_root(output_dir: str | Path) -> Path:
    """`<output_dir>/checkpoints`."""
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """The committed checkpoint directories as (step, path), newest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int | None,
) -> Path:
    """Writes checkpoint `step` atomically and removes all but the newest `keep` ones.

    Raises:
        DiskFullError: when the disk fills while it is written (the partial checkpoint is removed;
            restarting would only fill it again).
    """
    final = checkpoint_root(output_dir) / f"step-{step}"
    if final.parent.is_dir():
        # Only global rank 0 writes checkpoints, one at a time: any partial one is from a crash.
        for stale in final.parent.glob(".step-*.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(final) as staging, writing(
            staging, what=f"checkpoint step {step}", fix=DISK_FULL_FIX):
        torch.save(state, staging / STATE)
        (staging / META).write_text(json.dumps({"step": step, **meta}, indent=2, sort_keys=True))
        (staging / COMPLETE).write_text(f"{step}\n")
    if keep:
        for _, old in list_checkpoints(output_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _identity_problems(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    problems = []
    for key, what in (("base_model", "base model"), ("lora", "LoRA shape")):
        if saved.get(key) != expected.get(key):
            problems.append(
                f"`output_dir` holds checkpoint {path} from a different {what} "
                f"({saved.get(key)!r}) than this run ({expected.get(key)!r}); use a new output "
                "location, or the same base model and lora_config to resume"
            )
    return problems


def load_latest(output_dir: str | Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The state of the newest loadable checkpoint, or None when there is none.

    Raises:
        InputError: when the newest loadable checkpoint is from another base model or LoRA shape.
    """
    for step, path in list_checkpoints(output_dir):
        try:
            if not (path / COMPLETE).is_file():
                raise ValueError(f"no {COMPLETE} marker")
            meta = json.loads((path / META).read_text())
            state = torch.load(path / STATE, map_location="cpu", weights_only=True)
            if state.get("step") != step or meta.get("step") != step:
                raise ValueError(f"step mismatch (directory {step}, state {state.get('step')})")
        except Exception as error:  # any unreadable checkpoint is skipped
            LOG.warning("skipping checkpoint %s: it cannot be loaded (%s)", path, error)
            continue
        problems = Problems()
        problems.extend(_identity_problems(path, meta, identity))
        problems.raise_if_any()
        return state
    return None
