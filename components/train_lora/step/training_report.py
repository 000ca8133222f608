"""The train step's HTML report: the trainer's per-step history as curves, and the run's settings.

Read from the published adapter directory (its `history.jsonl`, `manifest.json` and the final
metrics), so it draws the same on every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...common.artifacts import read_manifest
from ...common.report import read_history, training_report

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("steps", "final_loss", "epochs", "examples_seen", "tokens_per_second",
                "tokens_per_second_per_process", "runtime_seconds", "world_size",
                "trainable_parameters", "resumed_from_step", "peak_memory_gib")
"""The final figures the report lists, in this order (when the trainer reported them)."""


def report_settings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an adapter was trained with, flat: its training settings, LoRA and sources."""
    settings: dict[str, Any] = dict(manifest.get("training") or {})
    for key, value in (manifest.get("lora") or {}).items():
        settings[f"lora.{key}"] = value
    settings["task"] = manifest.get("task")
    settings["base_model"] = ((manifest.get("base_model") or {}).get("source") or {}).get("uri")
    settings["train_data"] = ((manifest.get("train_data") or {}).get("source") or {}).get("uri")
    return {key: value for key, value in settings.items() if value is not None}


def write_training_report(adapter_dir: str | Path, report_path: str | Path,
                          metrics: Mapping[str, Any]) -> Path:
    """Writes the HTML report of the adapter in `adapter_dir` to `report_path`."""
    history = read_history(adapter_dir)
    try:
        manifest = read_manifest(adapter_dir, parameter="adapter")
    except ValueError:
        manifest = {}
    summary = {key: metrics[key] for key in SUMMARY_KEYS if metrics.get(key) is not None}
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(training_report(history, report_settings(manifest), summary))
    logger.info("training report: %d logged steps drawn in %s", len(history), path)
    return path
