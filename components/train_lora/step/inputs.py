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
# RoPE types whose `factor` multiplies a named pre-training length (transformers'
# `standardize_rope_params` gives them `original_max_position_embeddings`).
_ORIGINAL_LENGTH_ROPE = ("yarn", "llama3", "longrope")


def _document(path: Path) -> Mapping[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, Mapping) else {}


def _count(value: Any) -> int | None:
    """`value` when it is a real position count (not a bool, not a "no limit" placeholder)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_TOKENIZER_LIMIT:
        return value
    return None


def _rope_extension(config: Mapping[str, Any], positions: int) -> tuple[int, str] | None:
    """The context a RoPE-scaled config covers beyond `positions`, as transformers reads it.

    For yarn, llama3 and longrope a `factor` of x covers x times the pre-training length,
    `original_max_position_embeddings` (in the RoPE parameters, else at the config's top level as
    Phi-3 has it, else `max_position_embeddings`: transformers' `standardize_rope_params`). Linear
    and dynamic scaling name no pre-training length, and checkpoints disagree on whether their
    `max_position_embeddings` is the extended context or the original one: not extended here.
    """
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if not isinstance(rope, Mapping):
        return None
    kind = rope.get("rope_type") or rope.get("type")
    factor = rope.get("factor")
    if kind not in _ORIGINAL_LENGTH_ROPE or isinstance(factor, bool) or not isinstance(
        factor, (int, float)
    ):
        return None
    original = (_count(rope.get("original_max_position_embeddings"))
                or _count(config.get("original_max_position_embeddings")) or positions)
    extended = int(factor * original)
    if extended <= positions:
        return None
    return extended, (f"rope_scaling {kind}: factor {float(factor)} x "
                      f"original_max_position_embeddings {original} in its config.json")


def model_positions(model_dir: str | os.PathLike) -> tuple[int, str] | None:
    """The longest sequence the model can take and where that number comes from.

    The config's position count, extended by its RoPE scaling (`_rope_extension`: Qwen2.5 with
    YaRN x4 takes 4 x 32768), unless the tokenizer's `model_max_length` is below the unscaled
    count (RoBERTa-style models reserve 2 of their 514 positions; the tokenizer says 512). None
    when neither file says (relative-position models such as T5).
    """
    config = _document(Path(model_dir) / "config.json")
    tokenizer_limit = _count(
        _document(Path(model_dir) / "tokenizer_config.json").get("model_max_length"))
    found = next(((value, f"{key} in its config.json") for key in _POSITION_KEYS
                  if (value := _count(config.get(key))) is not None), None)
    tokenizer = (tokenizer_limit, "model_max_length in its tokenizer_config.json")
    if found is None:
        return tokenizer if tokenizer_limit is not None else None
    if tokenizer_limit is not None and tokenizer_limit < found[0]:
        return tokenizer
    return _rope_extension(config, found[0]) or found


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


def pair_problems(data_dir: str | os.PathLike) -> list[str]:
    """A preference Dataset needs prompt/chosen/rejected columns and pairs that teach something."""
    import pyarrow.parquet as pq

    from ...common import tokenization

    path = Path(data_dir) / "data.parquet"
    try:
        names = pq.read_schema(path).names
        problems = tokenization.check_columns("preference", names, None)
        if problems:
            return problems
        rows = pq.read_table(path, columns=list(tokenization.PREFERENCE_COLUMNS)).to_pylist()
    except (OSError, ValueError) as error:
        return [f"`train_data` could not be read ({path}: {error})"]
    return tokenization.preference_row_problems(rows)


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


def host_gpu_count() -> int:
    """The GPUs the local backend's nodes would see, counted without importing torch.

    The entries of `CUDA_VISIBLE_DEVICES` when it is set, else the GPUs `nvidia-smi -L` lists.
    """
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() not in ("", "-1")])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def host_problems(num_workers: Any, num_procs_per_worker: Any,
                  training_parameters: Any) -> list[str]:
    """What this host cannot run with the local backend: too many processes, 4-bit without CUDA."""
    problems = local_process_problems(num_workers, num_procs_per_worker)
    quantized = isinstance(training_parameters, Mapping) and training_parameters.get(
        "quantization")
    if quantized and not training_parameters.get("use_cpu") and host_gpu_count() == 0:
        problems.append(
            "`training_parameters.quantization` (4-bit QLoRA) needs a CUDA GPU, and this host has "
            "none for the local backend (none in CUDA_VISIBLE_DEVICES or `nvidia-smi -L`); remove "
            "quantization, or train on a cluster's GPUs (backend 'kubernetes' or 'trainjob')")
    return problems
