"""The training settings: one definition per key, the checks, and the trainer's config file.

Every key of `training_parameters` is defined once in this file, with its default, its check and
its documentation:

- `TrainingSettings`: the keys kftune honours, each a `setting(default, check, doc)` field. The
  `transformers.TrainingArguments` names keep their meaning there; `kftune=True` marks kftune's
  own keys (not in `TrainingArguments`). Rules between keys are in `_cross_field_problems`.
- `ACCEPTED_WITHOUT_EFFECT`: names the reference recipe sets that change nothing here, or switches
  kftune supports only switched off; each with its check and the reason.
- `ALL_TRAINING_ARGUMENTS`: every other `TrainingArguments` name, "not supported" rather than
  "unknown".

LoRA settings are checked by building PEFT's own `LoraConfig` (its cross-field rules apply), after
the quick per-field checks of `HONOURED_LORA_FIELDS`.

`validate_training_parameters` and `validate_lora_config` are the checks every boundary runs (the
CLI, the Python API, the train_lora component) before anything starts; after that the values are
trusted. `CONFIG.json`, the file `trainer.py --config` reads, is written by `TrainConfig.to_file`
and read by `TrainConfig.from_file` only::

    {"task": "causal-lm" | "sequence-classification" | "preference",
     "model_dir": <Model artifact dir>, "data_dir": <Dataset artifact dir>, "output_dir": <dir>,
     "training_parameters": {<TrainingSettings keys>}, "lora_config": {<peft.LoraConfig fields>},
     "merge": false}

The documentation derived from the definitions: `training_parameters_help()` (the component's
docstring and `kftune run --help`) and `readme_table()` (README.md; `python -m
kftune.components.train_lora.config` prints it).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..common.errors import Problems
from ..common.tasks import TASKS, Task, check_task
from . import parallelism

Check = Callable[[str, Any], "str | None"]

# What is checked and reported is bounded: a dict parameter larger than this (as JSON) is refused
# with one line, and a value shown in a message is cut to SHOWN_CHARACTERS.
MAX_PARAMETER_BYTES = 64 * 1024
SHOWN_CHARACTERS = 80
# At most this many problems are listed per dict parameter.
MAX_PROBLEMS = 20


def shown(value: Any) -> str:
    """`repr(value)`, cut to `SHOWN_CHARACTERS` so that a huge value gives a short message."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}... ({len(text)} characters)"


def size_problems(value: Any, parameter: str) -> list[str]:
    """One problem when `value` is larger than `MAX_PARAMETER_BYTES` as JSON, else none."""
    try:
        size = len(json.dumps(value, default=str))
    except (TypeError, ValueError, RecursionError):
        return []
    if size <= MAX_PARAMETER_BYTES:
        return []
    return [
        f"`{parameter}` is {size} bytes as JSON, more than the {MAX_PARAMETER_BYTES} bytes "
        "kftune accepts; it holds settings, not data: pass only the keys you change"
    ]


# -- value checks: each returns None when the value is fine, else the problem ----------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): JSON's Infinity and NaN are no settings."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _int_at_least(minimum: int) -> Check:
    def check(name: str, value: Any) -> str | None:
        if _is_int(value) and value >= minimum:
            return None
        return f"`{name}` must be an integer >= {minimum}, got {shown(value)}"

    return check


def _number_in(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Check:
    def check(name: str, value: Any) -> str | None:
        if _is_number(value):
            above = value > low if low_open else value >= low
            below = value < high if high_open else value <= high
            if above and below:
                return None
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return f"`{name}` must be a number in {interval}, got {shown(value)}"

    return check


def _positive_number(name: str, value: Any) -> str | None:
    if _is_number(value) and value > 0:
        return None
    return f"`{name}` must be a finite number > 0, got {shown(value)}"


def _non_negative_number(name: str, value: Any) -> str | None:
    if _is_number(value) and value >= 0:
        return None
    return f"`{name}` must be a finite number >= 0, got {shown(value)}"


def _boolean(name: str, value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return f"`{name}` must be true or false, got {shown(value)}"


def _one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return None
        listed = ", ".join(repr(choice) for choice in choices)
        return f"`{name}` must be one of {listed}; got {shown(value)}"

    return check


def _count_or_fraction(name: str, value: Any) -> str | None:
    """A step count (int >= 0, or a whole float such as 10.0) or a fraction (0 <= float < 1)."""
    if _is_int(value) and value >= 0:
        return None
    if _is_number(value) and isinstance(value, float) and (
        value >= 1 and value.is_integer() or 0 <= value < 1
    ):
        return None
    return (
        f"`{name}` must be a step count (integer >= 0) or a fraction of the total steps "
        f"(0 <= x < 1), got {shown(value)}"
    )


def _positive_count_or_fraction(name: str, value: Any) -> str | None:
    whole = _is_int(value) or _is_number(value) and float(value).is_integer()
    if whole and value >= 1:
        return None
    if _is_number(value) and isinstance(value, float) and 0 < value < 1:
        return None
    return (
        f"`{name}` must be a step count (integer >= 1) or a fraction of the total steps "
        f"(0 < x < 1), got {shown(value)}"
    )


def _optional(check: Check) -> Check:
    def optional_check(name: str, value: Any) -> str | None:
        return None if value is None else check(name, value)

    return optional_check


def _any(name: str, value: Any) -> str | None:
    return None


def _string(name: str, value: Any) -> str | None:
    if isinstance(value, str):
        return None
    return f"`{name}` must be a string, got {shown(value)}"


def _mapping(name: str, value: Any) -> str | None:
    if isinstance(value, Mapping):
        return None
    return f"`{name}` must be an object (dict), got {shown(value)}"


def _report_to(name: str, value: Any) -> str | None:
    if value in (None, "none", "") or value == [] or value == ["none"]:
        return None
    return (
        f"`{name}` = {shown(value)} is not supported: kftune reports metrics to the pod log and "
        "the KFP Metrics artifact; remove it or set it to \"none\""
    )


def _off(*off_values: Any, why: str = "") -> Check:
    """Accepts the value that switches a feature off; any other value is "not supported"."""

    def check(name: str, value: Any) -> str | None:
        if any(value == off and type(value) is type(off) for off in off_values):
            return None
        hint = f" ({why})" if why else ""
        return (
            f"`{name}` = {shown(value)} is not supported by kftune{hint}; remove it or set it to "
            f"{off_values[0]!r}"
        )

    return check


SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd")
PREFERENCE_LOSSES = ("sigmoid", "robust", "ipo")
# Settings of the preference task only.
PREFERENCE_KEYS = ("beta", "loss_type", "label_smoothing")


# -- the settings kftune honours -----------------------------------------------------------------


def setting(default: Any, check: Check, doc: str, *, kftune: bool = False) -> Any:
    """One training setting: its default, its check (for a value given) and its documentation.

    Args:
        default: the value when the key is not given.
        check: `check(name, value)` returns the problem with a given value, or None.
        doc: one or two sentences for the generated help and README table.
        kftune: a kftune key (not a `transformers.TrainingArguments` field).

    Returns:
        A `dataclasses.field` carrying the check and the documentation as metadata.
    """
    return dataclasses.field(
        default=default, metadata={"check": check, "doc": doc, "kftune": kftune}
    )


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The training parameters with kftune's defaults filled in: one field per honoured key.

    A key is added here with `setting(default, check, doc)`; the validators, the generated help and
    the README table pick it up. A rule between keys goes into `_cross_field_problems`.
    """

    learning_rate: float = setting(2e-4, _positive_number, "Peak learning rate.")
    num_train_epochs: float = setting(
        1.0, _positive_number,
        "Passes over the data (may be fractional); ignored when `max_steps` > 0.")
    max_steps: int = setting(
        -1, _int_at_least(-1), "Optimizer steps to run; > 0 overrides `num_train_epochs`.")
    per_device_train_batch_size: int = setting(
        8, _int_at_least(1), "Examples per micro-batch per process.")
    gradient_accumulation_steps: int | None = setting(
        None, _int_at_least(1),
        "Micro-batches per optimizer step; unset: derived from `global_batch_size`, else 1.")
    warmup_steps: float = setting(
        0, _count_or_fraction, "Warmup steps (a count), or a fraction of the total steps (< 1).")
    warmup_ratio: float = setting(
        0.0, _number_in(0, 1), "Warmup as a fraction of the total steps.")
    lr_scheduler_type: str = setting(
        "linear", _one_of(*SCHEDULERS), f"A transformers scheduler: {', '.join(SCHEDULERS)}.")
    lr_scheduler_kwargs: dict[str, Any] | None = setting(
        None, _optional(_mapping),
        "Extra arguments of the scheduler function (e.g. `num_cycles` for cosine_with_restarts).")
    weight_decay: float = setting(0.0, _non_negative_number, "AdamW weight decay.")
    adam_beta1: float = setting(0.9, _number_in(0, 1, high_open=True), "AdamW beta1.")
    adam_beta2: float = setting(0.999, _number_in(0, 1, high_open=True), "AdamW beta2.")
    adam_epsilon: float = setting(1e-8, _positive_number, "AdamW epsilon.")
    optim: str = setting(
        "adamw_torch_fused", _one_of(*OPTIMIZERS),
        "Optimizer: adamw_torch, adamw_torch_fused (fused on GPU), sgd.")
    max_grad_norm: float = setting(
        1.0, _non_negative_number, "Gradient clipping norm; 0: no clipping.")
    seed: int = setting(42, _int_at_least(0), "Seed of the LoRA init and dropout.")
    data_seed: int | None = setting(
        None, _optional(_int_at_least(0)), "Seed of the data order; unset: `seed`.")
    bf16: bool = setting(
        True, _boolean, "bf16 weights and compute on GPU (CPU always trains in fp32).")
    gradient_checkpointing: bool = setting(
        False, _boolean, "Recompute activations in the backward pass.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = setting(
        None, _optional(_mapping),
        "Arguments of `torch.utils.checkpoint.checkpoint` (e.g. `use_reentrant`).")
    logging_steps: float = setting(
        10, _positive_count_or_fraction,
        "Log every N optimizer steps, or a fraction of the total steps (< 1).")
    logging_first_step: bool = setting(True, _boolean, "Also log the first step.")
    logging_strategy: str = setting("steps", _one_of("steps", "no"), "steps or no.")
    save_strategy: str = setting("steps", _one_of("steps", "no"), "steps or no.")
    save_steps: float = setting(
        500, _positive_count_or_fraction,
        "Checkpoint every N optimizer steps, or a fraction of the total steps (< 1).")
    save_total_limit: int | None = setting(
        2, _optional(_int_at_least(1)), "Checkpoints kept (the oldest is removed first).")
    label_smoothing_factor: float = setting(
        0.0, _number_in(0, 1, high_open=True), "Label smoothing (sequence classification).")
    ddp_timeout: int = setting(1800, _int_at_least(1), "Collective timeout in seconds.")
    use_cpu: bool = setting(False, _boolean, "Train on CPU even when a GPU is present.")
    max_seq_length: int = setting(
        1024, _int_at_least(1),
        "Examples are truncated to this many tokens (preference: prompt + chosen, and prompt + "
        "rejected, each).", kftune=True)
    packing: bool = setting(
        True, _boolean,
        "causal-lm and preference: the examples (a pair's chosen and rejected completions) of a "
        "micro-batch are concatenated into one row without padding; attention never crosses "
        "their boundaries. false pads to the longest one.",
        kftune=True)
    global_batch_size: int | None = setting(
        None, _optional(_int_at_least(1)),
        "Examples per optimizer step across the job; `gradient_accumulation_steps` becomes "
        "global / (per_device x world size), which must be a whole number.", kftune=True)
    shuffle: bool = setting(
        True, _boolean, "Shuffle the examples every epoch (with `data_seed` or `seed`).",
        kftune=True)
    max_tokens_per_micro_batch: int | None = setting(
        None, _optional(_int_at_least(1)),
        "causal-lm and preference with packing: fill each micro-batch with examples up to this "
        "many tokens instead of `per_device_train_batch_size` examples (steady memory and step "
        "times); "
        ">= `max_seq_length`, not with `global_batch_size`.", kftune=True)
    pad_to_multiple_of: int | None = setting(
        None, _optional(_int_at_least(1)),
        "Round each micro-batch's row length up to a multiple of this (fewer shapes for the GPU "
        "kernels); the padding carries no loss and is not counted in the token figures.",
        kftune=True)
    fsdp: str | list[str] = setting(
        "", parallelism.check_fsdp,
        "Shard the frozen base per layer over the job's GPUs (FSDP2) instead of one copy per GPU: "
        "\"full_shard\", \"shard_grad_op\", \"hybrid_shard\" (shard in a node, replicate across "
        "nodes), \"hybrid_shard_zero2\", with or without \"auto_wrap\"; \"auto\": DDP when one "
        "copy fits a GPU, else full_shard; \"\" or \"no_shard\": DDP.")
    fsdp_config: dict[str, Any] | None = setting(
        None, parallelism.check_fsdp_config,
        "FSDP settings that apply to LoRA: reshard_after_forward, activation_checkpointing, "
        "transformer_layer_cls_to_wrap (a few more accepted without effect; others refused).")
    quantization: dict[str, Any] | None = setting(
        None, parallelism.check_quantization,
        "`BitsAndBytesConfig` fields to load the base in 4-bit (QLoRA), e.g. {\"load_in_4bit\": "
        "true, \"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_compute_dtype\": \"bfloat16\", "
        "\"bnb_4bit_use_double_quant\": true}; needs CUDA and bitsandbytes; not with fsdp.",
        kftune=True)

    beta: float = setting(
        0.1, _positive_number,
        "preference: how far the tuned model may move from the reference (the base with the "
        "adapter off); higher keeps it closer (TRL `DPOConfig.beta`).", kftune=True)
    loss_type: str = setting(
        "sigmoid", _one_of(*PREFERENCE_LOSSES),
        "preference: sigmoid (DPO), robust (DPO with `label_smoothing` as the flipped-label "
        "rate) or ipo (IPO, on completion-length-averaged log ratios), as TRL computes them "
        "(`DPOConfig.loss_type`).", kftune=True)
    label_smoothing: float = setting(
        0.0, _number_in(0, 0.5, high_open=True),
        "preference: the probability that a pair's labels are flipped; with sigmoid, "
        "conservative DPO; with robust, robust DPO (TRL `DPOConfig.label_smoothing`).",
        kftune=True)

    @classmethod
    def from_parameters(cls, training_parameters: Mapping[str, Any]) -> TrainingSettings:
        """Fills kftune's defaults in for the honoured keys of validated parameters."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in training_parameters.items() if key in names})

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step for `world_size` processes.

        Raises:
            InputError: when `global_batch_size` is not a multiple of per-device x world size.
        """
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        per_step = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_step:
            problems = Problems()
            problems.add(
                f"`training_parameters.global_batch_size` must be a multiple of "
                f"per_device_train_batch_size x world size = {self.per_device_train_batch_size} x "
                f"{world_size} = {per_step}, got {self.global_batch_size}; use e.g. "
                f"{max(per_step, self.global_batch_size // per_step * per_step)}"
            )
            problems.raise_if_any()
        return self.global_batch_size // per_step

    @property
    def parallelism(self) -> parallelism.Parallelism:
        """The layout of the base model over the job's GPUs (parallelism.py)."""
        return parallelism.resolve(dataclasses.asdict(self))

    @property
    def order_seed(self) -> int:
        """The seed of the data order."""
        return self.seed if self.data_seed is None else self.data_seed


SETTINGS: dict[str, dataclasses.Field] = {
    field.name: field for field in dataclasses.fields(TrainingSettings)
}


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A `TrainingArguments` name accepted with no effect on kftune."""

    check: Check
    """The values accepted."""
    why: str
    """Why it changes nothing (or what to use instead)."""


_UNUSED_LOADER = "micro-batches are built in memory from pre-tokenized rows"
_EVALUATE = "evaluate with the evaluate component"
_DATA_PARALLEL = "LoRA trains with data parallelism"
ACCEPTED_WITHOUT_EFFECT: dict[str, Accepted] = {
    "output_dir": Accepted(_optional(_string), "the adapter goes to the component's output"),
    "run_name": Accepted(_optional(_string), "not used"),
    "disable_tqdm": Accepted(_optional(_boolean), "kftune logs lines, not progress bars"),
    "log_level": Accepted(_optional(_string), "not used"),
    "log_level_replica": Accepted(_optional(_string), "not used"),
    "log_on_each_node": Accepted(_boolean, "kftune logs on global rank 0 only"),
    "report_to": Accepted(_report_to, "\"none\": metrics go to the log and the KFP Metrics"),
    "do_train": Accepted(_boolean, "the component always trains"),
    "overwrite_output_dir": Accepted(_boolean, "not used"),
    "remove_unused_columns": Accepted(_boolean, "not used"),
    "dataloader_num_workers": Accepted(_int_at_least(0), _UNUSED_LOADER),
    "dataloader_pin_memory": Accepted(_boolean, _UNUSED_LOADER),
    "ddp_find_unused_parameters": Accepted(_optional(_boolean), "not used"),
    "ddp_backend": Accepted(_optional(_one_of("nccl", "gloo")), "gloo on CPU, nccl on GPU"),
    "average_tokens_across_devices": Accepted(
        _boolean, "the loss is always normalized by the target tokens of the whole step"),
    "include_num_input_tokens_seen": Accepted(_any, "tokens are always counted"),
    "skip_memory_metrics": Accepted(_boolean, "not used"),
    # Switches kftune only supports switched off.
    "eval_strategy": Accepted(_off("no", why=_EVALUATE), "only \"no\""),
    "evaluation_strategy": Accepted(_off("no", why=_EVALUATE), "only \"no\""),
    "do_eval": Accepted(_off(False, why=_EVALUATE), "only false"),
    "push_to_hub": Accepted(
        _off(False, why="the adapter is the component's output artifact"), "only false"),
    "fp16": Accepted(_off(False, why="use bf16"), "only false"),
    "torch_compile": Accepted(_off(False), "only false"),
    "use_liger_kernel": Accepted(_off(False), "only false"),
    "deepspeed": Accepted(_off(None, why=_DATA_PARALLEL), "only null"),
    "auto_find_batch_size": Accepted(_off(False), "only false"),
    "load_best_model_at_end": Accepted(_off(False), "only false"),
    "dataloader_drop_last": Accepted(
        _off(False, why="kftune trains on every example"), "only false"),
    "resume_from_checkpoint": Accepted(
        _off(None, why="kftune resumes automatically from the last checkpoint in its output "
             "location"), "only null"),
}

# Every init field of transformers.TrainingArguments (5.x) plus names older releases had: these
# exist, so a key among them that kftune does not honour is "not supported" rather than "unknown".
ALL_TRAINING_ARGUMENTS: frozenset[str] = frozenset(
    """output_dir per_device_train_batch_size num_train_epochs max_steps learning_rate
    lr_scheduler_type lr_scheduler_kwargs warmup_steps optim optim_args weight_decay adam_beta1
    adam_beta2 adam_epsilon optim_target_modules gradient_accumulation_steps
    average_tokens_across_devices max_grad_norm label_smoothing_factor bf16 fp16 bf16_full_eval
    fp16_full_eval tf32 activation_checkpointing activation_checkpointing_kwargs
    gradient_checkpointing gradient_checkpointing_kwargs torch_compile torch_compile_backend
    torch_compile_mode use_liger_kernel liger_kernel_config use_cache neftune_noise_alpha
    torch_empty_cache_steps auto_find_batch_size logging_strategy logging_steps logging_first_step
    log_on_each_node logging_nan_inf_filter include_num_input_tokens_seen log_level
    log_level_replica disable_tqdm report_to run_name project trackio_space_id trackio_bucket_id
    trackio_static_space_id eval_strategy eval_steps eval_delay per_device_eval_batch_size
    prediction_loss_only eval_on_start eval_do_concat_batches eval_use_gather_object
    eval_accumulation_steps include_for_metrics batch_eval_metrics save_only_model save_strategy
    save_steps save_on_each_node save_total_limit enable_jit_checkpoint push_to_hub hub_token
    hub_private_repo hub_model_id hub_strategy hub_always_push hub_revision load_best_model_at_end
    metric_for_best_model greater_is_better ignore_data_skip restore_callback_states_from_checkpoint
    full_determinism seed data_seed use_cpu accelerator_config parallelism_config
    dataloader_drop_last dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers
    dataloader_prefetch_factor dataloader_multiprocessing_context dataloader_in_order
    remove_unused_columns label_names train_sampling_strategy length_column_name
    ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph
    ddp_backend ddp_timeout fsdp fsdp_config deepspeed debug skip_memory_metrics do_train do_eval
    do_predict resume_from_checkpoint local_rank
    overwrite_output_dir evaluation_strategy warmup_ratio logging_dir save_safetensors
    per_gpu_train_batch_size per_gpu_eval_batch_size group_by_length use_mps_device
    jit_mode_eval use_ipex bf16_full_eval fp16_opt_level fp16_backend half_precision_backend
    tpu_num_cores dataloader_persistent_workers past_index hub_private_repo
    gradient_checkpointing_kwargs include_inputs_for_metrics eval_do_concat_batches
    push_to_hub_model_id push_to_hub_organization push_to_hub_token mp_parameters
    ray_scope ddp_broadcast_buffers torchdynamo save_on_each_node no_cuda use_legacy_prediction_loop
    """.split()
)


def _training_checks() -> dict[str, Check]:
    checks: dict[str, Check] = {name: field.metadata["check"] for name, field in SETTINGS.items()}
    checks.update({name: accepted.check for name, accepted in ACCEPTED_WITHOUT_EFFECT.items()})
    return checks


# -- LoRA -------------------------------------------------------------------------------------


def _target_modules(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return None
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return None
    return (
        f"`{name}` must be a module name pattern (string), a non-empty list of module names, or "
        f"\"all-linear\"; got {shown(value)}"
    )


def _string_list(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        return None
    return f"`{name}` must be a list of module names, got {shown(value)}"


def _layers(name: str, value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 0):
        return None
    if isinstance(value, list) and all(_is_int(item) and item >= 0 for item in value):
        return None
    return f"`{name}` must be a layer index or a list of layer indices (>= 0), got {shown(value)}"


def _init_lora_weights(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or value in ("gaussian", "pissa", "olora", "orthogonal"):
        return None
    return (
        f"`{name}` must be true, false, \"gaussian\", \"pissa\", \"olora\" or \"orthogonal\"; "
        f"got {shown(value)}"
    )


LORA_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS",
                   "preference": "CAUSAL_LM"}

HONOURED_LORA_FIELDS: dict[str, Check] = {
    "r": _int_at_least(1),
    "lora_alpha": _positive_number,
    "lora_dropout": _number_in(0, 1, high_open=True),
    "bias": _one_of("none", "all", "lora_only"),
    "target_modules": _target_modules,
    "exclude_modules": _target_modules,
    "modules_to_save": _string_list,
    "use_rslora": _boolean,
    "use_dora": _boolean,
    "init_lora_weights": _init_lora_weights,
    "fan_in_fan_out": _boolean,
    "layers_to_transform": _layers,
    "layers_pattern": _optional(_string),
    "rank_pattern": _optional(_mapping),
    "alpha_pattern": _optional(_mapping),
    "lora_bias": _boolean,
    # kftune sets the task type from `task`; a value given must match it.
    "task_type": _optional(_one_of(*LORA_TASK_TYPES.values())),
    "inference_mode": _off(False, why="training needs trainable adapters"),
}

ALL_LORA_FIELDS: frozenset[str] = frozenset(
    """task_type peft_type auto_mapping peft_version base_model_name_or_path revision inference_mode
    r target_modules exclude_modules lora_alpha lora_dropout fan_in_fan_out bias use_rslora
    modules_to_save init_lora_weights layers_to_transform layers_pattern rank_pattern alpha_pattern
    megatron_config megatron_core trainable_token_indices loftq_config eva_config corda_config
    lora_ga_config use_dora velora_config alora_invocation_tokens use_qalora qalora_group_size
    monteclora_config layer_replication runtime_config lora_bias target_parameters use_bdlora
    arrow_config kasa_config ensure_weight_tying""".split()
)


# -- the validators -------------------------------------------------------------------------------


def _check_table(
    values: Mapping[str, Any],
    parameter: str,
    accepted: Mapping[str, Check],
    existing: frozenset[str],
    owner: str,
) -> list[str]:
    if not isinstance(values, Mapping):
        return [f"`{parameter}` must be an object (dict) of {owner} fields, got {shown(values)}"]
    problems: list[str] = []
    for key, value in values.items():
        if len(problems) == MAX_PROBLEMS:
            problems.append(f"`{parameter}` has more problems; fix the ones above first")
            break
        check = accepted.get(key)
        if check is not None:
            problem = check(f"{parameter}.{key}", value)
            if problem:
                problems.append(problem)
        elif key in existing:
            problems.append(
                f"`{parameter}.{key}` is a {owner} field that kftune does not support; remove it "
                f"(supported: {', '.join(sorted(accepted))})"
            )
        else:
            name = str(key)[:SHOWN_CHARACTERS]
            close = difflib.get_close_matches(name, sorted(set(accepted) | existing), n=1)
            hint = f"did you mean `{close[0]}`?" if close else "remove it"
            problems.append(
                f"`{parameter}.{name}` is not a {owner} field: unknown key {shown(key)}; {hint}"
            )
    return problems


def validate_training_parameters(
    training_parameters: Mapping[str, Any], task: Any = None
) -> list[str]:
    """Returns the problems with `training_parameters` for `task` (empty when they are fine).

    With `task` None (or not a string: the caller reports that), only the checks that hold for
    every task run. Imports neither torch nor transformers, except to check a non-empty
    `lr_scheduler_kwargs` / `gradient_checkpointing_kwargs` against what they are passed to.
    """
    problems = size_problems(training_parameters, "training_parameters")
    if problems:
        return problems
    problems = _check_table(training_parameters, "training_parameters", _training_checks(),
                            ALL_TRAINING_ARGUMENTS, "transformers.TrainingArguments")
    if not isinstance(training_parameters, Mapping):
        return problems
    problems.extend(_nested_kwargs_problems(training_parameters))
    if problems:
        return problems
    return _cross_field_problems(training_parameters, task if isinstance(task, str) else None)


def _nested_kwargs_problems(training_parameters: Mapping[str, Any]) -> list[str]:
    """The keys of the dicts kftune passes on as keyword arguments, against their callee."""
    problems = []
    scheduler = training_parameters.get("lr_scheduler_type", TrainingSettings.lr_scheduler_type)
    scheduler_kwargs = training_parameters.get("lr_scheduler_kwargs")
    if isinstance(scheduler_kwargs, Mapping) and scheduler_kwargs and scheduler in SCHEDULERS:
        problems.extend(_scheduler_kwargs_problems(scheduler, scheduler_kwargs))
    checkpointing_kwargs = training_parameters.get("gradient_checkpointing_kwargs")
    if isinstance(checkpointing_kwargs, Mapping) and checkpointing_kwargs:
        problems.extend(_checkpointing_kwargs_problems(checkpointing_kwargs))
    return problems


def _cross_field_problems(training_parameters: Mapping[str, Any], task: str | None) -> list[str]:
    """The rules between training parameters (each value on its own is fine)."""
    problems = []
    if "warmup_ratio" in training_parameters and training_parameters.get("warmup_steps"):
        problems.append(
            "`training_parameters.warmup_steps` and `training_parameters.warmup_ratio` are both "
            "set "
            f"({training_parameters['warmup_steps']!r}, {training_parameters['warmup_ratio']!r}); "
            "set only one"
        )
    if training_parameters.get("global_batch_size") and "gradient_accumulation_steps" in (
        training_parameters
    ):
        problems.append(
            "`training_parameters.global_batch_size` and "
            "`training_parameters.gradient_accumulation_steps` are both set; set only one "
            "(global_batch_size derives the accumulation steps from the world size)"
        )
    problems.extend(_token_budget_problems(training_parameters, task))
    problems.extend(_preference_problems(training_parameters, task))
    problems.extend(parallelism.cross_problems(training_parameters))
    return problems


def _preference_problems(training_parameters: Mapping[str, Any], task: str | None) -> list[str]:
    """The preference keys belong to task preference; label smoothing needs a loss that uses it."""
    if task is None:
        return []
    if task != "preference":
        return [
            f"`training_parameters.{key}` applies to task preference only, got it "
            f"({shown(training_parameters[key])}) with task {task!r}; remove it"
            for key in PREFERENCE_KEYS if key in training_parameters
        ]
    loss = training_parameters.get("loss_type", TrainingSettings.loss_type)
    if training_parameters.get("label_smoothing") and loss == "ipo":
        return [
            "`training_parameters.label_smoothing` does not apply to loss_type 'ipo', got "
            f"{training_parameters['label_smoothing']!r}; remove it or use loss_type sigmoid "
            "or robust"
        ]
    return []


def _token_budget_problems(training_parameters: Mapping[str, Any], task: str | None) -> list[str]:
    budget = training_parameters.get("max_tokens_per_micro_batch")
    if budget is None:
        return []
    name = "`training_parameters.max_tokens_per_micro_batch`"
    problems = []
    if task is not None and task not in ("causal-lm", "preference"):
        problems.append(
            f"{name} applies to tasks causal-lm and preference only, got it ({budget}) with "
            f"task {task!r}; "
            "remove it and set per_device_train_batch_size"
        )
    if training_parameters.get("packing") is False:
        problems.append(
            f"{name} needs packing, got it ({budget}) with packing false; remove one of them"
        )
    if training_parameters.get("global_batch_size"):
        problems.append(
            f"{name} and `training_parameters.global_batch_size` are both set; set only one "
            "(with a token budget, a step is world size x gradient_accumulation_steps "
            "micro-batches)"
        )
    max_seq_length = training_parameters.get("max_seq_length", TrainingSettings.max_seq_length)
    if _is_int(max_seq_length) and budget < max_seq_length:
        problems.append(
            f"{name} must be >= max_seq_length ({max_seq_length}) so that the longest example "
            f"fits in a micro-batch, got {budget}; raise it or lower max_seq_length"
        )
    return problems


def _unexpected_keys(parameter: str, given: Mapping[str, Any], accepted: list[str],
                     callee: str) -> list[str]:
    problems = []
    for key in given:
        if key not in accepted:
            takes = ", ".join(accepted) if accepted else "no extra arguments"
            problems.append(
                f"`training_parameters.{parameter}.{str(key)[:SHOWN_CHARACTERS]}` is not an "
                f"argument of {callee}; it takes {takes}"
            )
    return problems


def _scheduler_kwargs_problems(scheduler: str, kwargs: Mapping[str, Any]) -> list[str]:
    """`lr_scheduler_kwargs` against the parameters of the function transformers would call."""
    try:
        from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType
    except ImportError:  # a step without transformers: the trainer reports a bad key
        return []
    function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(scheduler)]
    # `get_scheduler` passes the optimizer and the step counts itself, and only the optimizer to
    # the constant schedule (which drops the kwargs).
    passed = {"optimizer", "num_warmup_steps", "num_training_steps"}
    accepted = [] if scheduler == "constant" else [
        name for name, parameter in inspect.signature(function).parameters.items()
        if name not in passed and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    callee = f"the {scheduler} scheduler (transformers.{function.__name__})"
    return _unexpected_keys("lr_scheduler_kwargs", kwargs, accepted, callee)


def _checkpointing_kwargs_problems(kwargs: Mapping[str, Any]) -> list[str]:
    """`gradient_checkpointing_kwargs` against the keyword arguments of torch's `checkpoint`."""
    try:
        from torch.utils.checkpoint import checkpoint
    except ImportError:  # a step without torch: the trainer reports a bad key
        return []
    # transformers binds these to `torch.utils.checkpoint.checkpoint`, whose own **kwargs would
    # reach the decoder layer's forward (a TypeError mid-step); `preserve_rng_state` is the one
    # it reads from them.
    accepted = [
        name for name, parameter in inspect.signature(checkpoint).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    accepted.append("preserve_rng_state")
    return _unexpected_keys("gradient_checkpointing_kwargs", kwargs, accepted,
                            "torch.utils.checkpoint.checkpoint")


def validate_lora_config(lora_config: Mapping[str, Any], task: Any = None) -> list[str]:
    """Returns the problems with `lora_config` for `task` (empty when it is fine).

    The fields are checked one by one, then PEFT's own `LoraConfig` is built from them, so that
    PEFT's rules between fields apply (this imports peft, and with it torch).
    """
    problems = size_problems(lora_config, "lora_config")
    if problems:
        return problems
    problems = _check_table(lora_config, "lora_config", HONOURED_LORA_FIELDS, ALL_LORA_FIELDS,
                            "peft.LoraConfig")
    if problems or not isinstance(lora_config, Mapping):
        return problems
    task_type = lora_config.get("task_type")
    if task_type and task in LORA_TASK_TYPES and task_type != LORA_TASK_TYPES[task]:
        problems.append(
            f"`lora_config.task_type` must be {LORA_TASK_TYPES[task]!r} for task "
            f"{task!r}, got {task_type!r}; remove it (kftune sets it from `task`)"
        )
    problems.extend(peft_problems(lora_config, task))
    return problems


def peft_problems(lora_config: Mapping[str, Any], task: Any = None) -> list[str]:
    """The problem PEFT finds when it builds `LoraConfig(**lora_config)`, as one message."""
    try:
        from peft import LoraConfig
    except ImportError:  # a step without peft: the trainer builds it, inside its error handling
        return []
    try:
        build_lora_config(LoraConfig, lora_config, task)
    except (ValueError, TypeError) as error:
        return [lora_config_problem(lora_config, error)]
    return []


def build_lora_config(lora_config_class: Any, lora_config: Mapping[str, Any], task: Any) -> Any:
    """`LoraConfig` of `lora_config`, its task type set from `task` (as the trainer builds it)."""
    fields = {key: value for key, value in lora_config.items() if key != "task_type"}
    return lora_config_class(task_type=LORA_TASK_TYPES.get(task), **fields)


def lora_config_problem(lora_config: Mapping[str, Any], error: Exception) -> str:
    """One line for a `lora_config` PEFT refused."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"`lora_config` = {shown(dict(lora_config))} is refused by peft.LoraConfig: {reason}"


# -- the trainer's config file --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs: the content of `CONFIG.json`.

    Its values were checked where they entered (`validate_training_parameters`,
    `validate_lora_config`); the trainer trusts them.
    """

    task: Task
    """`causal-lm`, `sequence-classification` or `preference`."""
    model_dir: str
    """The base model: a Model artifact directory (Hugging Face layout + manifest.json)."""
    data_dir: str
    """The training rows: a Dataset artifact directory (data.parquet + manifest.json)."""
    output_dir: str
    """Where checkpoints/ and final/ (the adapter artifact) are written."""
    training_parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The `TrainingSettings` keys given (defaults fill in the rest)."""
    lora_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """peft.LoraConfig fields."""
    merge: bool = False
    """Also write the base model with the adapter merged in to final/merged/."""

    @property
    def settings(self) -> TrainingSettings:
        """The training parameters with defaults filled in."""
        return TrainingSettings.from_parameters(self.training_parameters)

    def to_file(self, path: str | os.PathLike) -> Path:
        """Writes this config as `CONFIG.json` at `path`; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Reads a `CONFIG.json` written by `to_file`.

        Raises:
            InputError: when the file is missing, not JSON, or not shaped like one.
        """
        problems = Problems()
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            problems.add(f"`--config` must be a readable JSON file, got {str(path)!r}: {error}")
            problems.raise_if_any()
        if not isinstance(payload, dict):
            problems.add(f"`--config` must hold a JSON object, got {type(payload).__name__}")
            problems.raise_if_any()
        known = {field.name for field in dataclasses.fields(cls)}
        for key in sorted(set(payload) - known):
            problems.add(f"`--config` has unknown key {key!r}; expected {', '.join(sorted(known))}")
        for key in ("task", "model_dir", "data_dir", "output_dir"):
            if key not in payload:
                problems.add(f"`--config` is missing {key!r}")
        problems.extend(_shape_problems(payload))
        problems.raise_if_any()
        return cls(**payload)


def _shape_problems(payload: Mapping[str, Any]) -> list[str]:
    """What a `CONFIG.json` not written by `to_file` may get wrong; the values were checked."""
    problems = check_task(payload.get("task", TASKS[0]))
    for name in ("model_dir", "data_dir", "output_dir"):
        value = payload.get(name, "-")
        if not isinstance(value, str) or not value:
            problems.append(f"`{name}` must be a non-empty path, got {shown(value)}")
    for name in ("training_parameters", "lora_config"):
        if not isinstance(payload.get(name, {}), dict):
            problems.append(f"`{name}` must be an object (dict), got {shown(payload[name])}")
    if not isinstance(payload.get("merge", False), bool):
        problems.append(f"`merge` must be true or false, got {shown(payload['merge'])}")
    return problems


# -- documentation derived from the definitions ------------------------------------------------


def _default(field: dataclasses.Field) -> str:
    return "unset" if field.default is None else json.dumps(field.default)


def training_parameters_help() -> str:
    """The text documenting `training_parameters`: the component docstring and the CLI help."""
    honoured = [name for name, field in SETTINGS.items() if not field.metadata["kftune"]]
    extras = [
        f"`{name}` (default {_default(field)}): {field.metadata['doc']}"
        for name, field in SETTINGS.items() if field.metadata["kftune"]
    ]
    return (
        "`transformers.TrainingArguments` fields plus kftune keys. Honoured: "
        f"{', '.join(honoured)}. Accepted with no effect: "
        f"{', '.join(ACCEPTED_WITHOUT_EFFECT)}. Any other key is an error that names it. kftune "
        f"keys: {' '.join(extras)}"
    )


def readme_table() -> str:
    """The README's Markdown table of every honoured key: default, kftune or not, meaning."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, field in SETTINGS.items():
        origin = " (kftune)" if field.metadata["kftune"] else ""
        default = "unset" if field.default is None else f"`{_default(field)}`"
        rows.append(f"| `{name}`{origin} | {default} | {field.metadata['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(readme_table())


TRAINER_MODULE = "kftune.components.train_lora.pod.trainer"


def trainer_command(config_path: str | os.PathLike) -> list[str]:
    """The torchrun command that runs the trainer on one node (its layout comes from `PET_*`).

    One definition for both sides: the pod entrypoint runs it in each training pod, the local
    backend runs it as each local "node".
    """
    return [sys.executable, "-m", "torch.distributed.run", "-m", TRAINER_MODULE,
            "--config", str(config_path)]
