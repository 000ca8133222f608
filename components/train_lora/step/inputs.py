"""What the input artifacts and this host allow, checked before any job or process starts.

Validation of the parameters alone lets through runs that the trainer would crash on or that
would prove nothing: a `max_seq_length` beyond the model's positions (a tensor-size error on the
first long row, mid-run), a classification dataset with one class (accuracy 1.0 before and after),
or 10,000 local processes. The train_lora step holds the Model and Dataset artifacts, so it
checks them here, next to the parameters, and reports every problem at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import TrainingSettings

logger = logging.getLogger(__name__)

PROCESSES_PER_CPU = 2
# Where Hugging Face configs give the longest sequence the position embeddings cover.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
# A tokenizer's model_max_length above this is transformers' "no limit" placeholder.
_NO_TOKENIZER_LIMIT = 1_000_000


def model_positions(model_dir: str | os.PathLike) -> tuple[int, str] | None:
    """The longest sequence the model can take and where that number comes from.

    The smaller of its config's position count and its tokenizer's `model_max_length` (RoBERTa-
    style models reserve 2 of their 514 positions; the tokenizer says 512). None when neither
    file says (relative-position models such as T5).
    """
    found: list[tuple[int, str]] = []
    for name, keys in (("config.json", _POSITION_KEYS), ("tokenizer_config.json",
                                                         ("model_max_length",))):
        try:
            document = json.loads((Path(model_dir) / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(document, Mapping):
            continue
        for key in keys:
            value = document.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < (
                _NO_TOKENIZER_LIMIT
            ):
                found.append((value, f"{key} in its {name}"))
                break
    return min(found) if found else None


def fit_max_seq_length(
    training_parameters: Mapping[str, Any], model_dir: str | os.PathLike
) -> tuple[dict[str, Any], list[str]]:
    """`training_parameters` with `max_seq_length` fitted to the model: (parameters, problems).

    The default (1024) is lowered to the model's positions with a log line: the demo's default
    on a 512-position BERT just works. A value the user set above them is refused, naming both
    numbers: silently training on shorter sequences than asked would hide it.
    """
    parameters = dict(training_parameters)
    limit = model_positions(model_dir)
    if limit is None:
        return parameters, []
    positions, source = limit
    asked = parameters.get("max_seq_length")
    if asked is None:
        if TrainingSettings.max_seq_length > positions:
            logger.info(
                "max_seq_length: the default %d is more than the model's %d positions (%s); "
                "training with max_seq_length=%d",
                TrainingSettings.max_seq_length,
                positions,
                source,
                positions,
            )
            parameters["max_seq_length"] = positions
        return parameters, []
    if isinstance(asked, int) and not isinstance(asked, bool) and asked > positions:
        return parameters, [
            f"`training_parameters.max_seq_length` must be <= {positions}, the model's positions "
            f"({source}), got {asked}; set it to {positions} or less"
        ]
    return parameters, []


def class_problems(data_dir: str | os.PathLike) -> list[str]:
    """A sequence-classification Dataset must hold at least two classes in its rows."""
    import pyarrow.parquet as pq

    from ...common.artifacts import read_manifest

    path = Path(data_dir) / "data.parquet"
    try:
        if "label" not in pq.read_schema(path).names:
            return [
                f"`train_data` has no label column ({data_dir}); map one with "
                f"`column_mapping` {{'label': '<column>'}} for task sequence-classification"
            ]
        labels = pq.read_table(path, columns=["label"]).column("label")
    except (OSError, ValueError) as error:
        return [f"`train_data` could not be read ({path}: {error})"]
    classes = labels.unique().drop_null().to_pylist()
    if len(classes) >= 2:
        return []
    try:
        names = read_manifest(data_dir, parameter="train_data").get("label_names") or []
    except ValueError:
        names = []
    shown = ", ".join(
        repr(names[value]) if isinstance(value, int) and 0 <= value < len(names) else repr(value)
        for value in classes
    ) or "none"
    return [
        f"`train_data` holds {len(classes)} class(es) ({shown}) in its {len(labels)} rows; a "
        f"classifier needs at least 2 to learn anything (its accuracy would be 1.0 before and "
        f"after): select rows with several labels (`split`, `eval_fraction`) or check "
        f"`column_mapping`['label']"
    ]


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, as a container limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_process_problems(num_workers: Any, num_procs_per_worker: Any) -> list[str]:
    """The local backend runs num_workers x num_procs trainers on this host: bounded by its CPUs.

    Every process is a whole trainer (a model copy and a gloo/NCCL peer); more than two per core
    only time-share the cores while the memory use grows with each.
    """
    from .backends.local import resolve_num_procs
    from .spec import parse_num_procs

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        return []  # the parameter check reports it
    procs = parse_num_procs(str(num_procs_per_worker))
    if procs != "auto" and not isinstance(procs, int):
        return []  # the parameter check reports it
    num_procs = resolve_num_procs(procs)
    total = num_workers * max(1, num_procs)
    cpus = usable_cpus()
    limit = PROCESSES_PER_CPU * cpus
    if total <= limit:
        return []
    return [
        f"`num_workers` ({num_workers}) x `num_procs_per_worker` ({num_procs}) = {total} "
        f"training processes, more than this host can run with the local backend (at most "
        f"{limit}: {PROCESSES_PER_CPU} per CPU core, {cpus} core(s)); lower `num_workers`, or "
        f"run on a cluster with backend='kubernetes'"
    ]
