"""The trainer's configuration: what `CONFIG.json` holds, and the checks run before any pod starts.

`CONFIG.json` (the file `trainer.py --config` reads) is::

    {"task": "causal-lm" | "sequence-classification",
     "model_dir": <Model artifact dir>, "data_dir": <Dataset artifact dir>, "output_dir": <dir>,
     "training_parameters": {<transformers.TrainingArguments fields> + <kftune extras>},
     "lora_config": {<peft.LoraConfig fields>}, "merge": false}

`validate_training_parameters` and `validate_lora_config` are pure (no torch, transformers or peft
import): the light launch step calls them to reject bad input before it creates a job.

Training parameters honoured (the `transformers.TrainingArguments` names and meanings):
`learning_rate`, `num_train_epochs` (may be fractional), `max_steps` (> 0 overrides epochs),
`per_device_train_batch_size` (examples per micro-batch per process), `gradient_accumulation_steps`,
`warmup_steps` (a count, or a fraction of the total steps when < 1), `warmup_ratio`,
`lr_scheduler_type`, `lr_scheduler_kwargs`, `weight_decay`, `adam_beta1`, `adam_beta2`,
`adam_epsilon`, `optim` (adamw_torch, adamw_torch_fused, sgd), `max_grad_norm` (0: no clipping),
`seed`, `data_seed`, `bf16` (bf16 weights and compute on GPU; CPU always trains in fp32),
`gradient_checkpointing`, `gradient_checkpointing_kwargs`, `logging_steps`, `logging_first_step`,
`logging_strategy` (steps, no), `save_strategy` (steps, no), `save_steps` (a count, or a fraction of
the total steps when < 1), `save_total_limit`, `label_smoothing_factor` (sequence classification),
`ddp_timeout` (seconds), `use_cpu`.

Accepted because the reference recipe sets them, with no effect on kftune: `output_dir` (the adapter
goes to the component's output), `run_name`, `disable_tqdm`, `log_level`, `log_level_replica`,
`log_on_each_node` (kftune logs on global rank 0 only), `report_to` ("none"), `do_train`,
`overwrite_output_dir`, `remove_unused_columns`, `dataloader_num_workers`, `dataloader_pin_memory`
(micro-batches are built in memory from pre-tokenized rows: there is no loader to configure),
`ddp_find_unused_parameters`, `ddp_backend` (gloo on CPU, nccl on GPU either way),
`average_tokens_across_devices` (kftune always normalizes the loss by the target tokens of the whole
optimizer step across all ranks), `include_num_input_tokens_seen`, `skip_memory_metrics`.
Switches whose off value is accepted and whose on value is "not supported": evaluation
(`eval_strategy`, `do_eval`), `push_to_hub`, `fp16`, `torch_compile`, `use_liger_kernel`, `fsdp`,
`deepspeed`, `auto_find_batch_size`, `load_best_model_at_end`, `dataloader_drop_last` (kftune never
drops examples), `resume_from_checkpoint` (kftune resumes automatically from `output_dir`).
Every other `TrainingArguments` field is "not supported"; a name that is no field at all is
"unknown" and the error suggests the closest name.

kftune extras (not in `TrainingArguments`):
- `max_seq_length` (int, default 1024): examples are truncated to this many tokens.
- `packing` (bool, default true; causal-lm only): the examples of a micro-batch are concatenated
  into one row with no padding; `position_ids` restart at 0 for every example, so attention never
  crosses example boundaries. false pads each micro-batch to its longest example.
- `global_batch_size` (int): examples per optimizer step across the whole job. When given,
  `gradient_accumulation_steps` is derived as global / (per_device x world size), which must be an
  exact, positive integer; the trainer fails at start otherwise.
- `shuffle` (bool, default true): shuffle the examples each epoch (with `data_seed` or `seed`).
- `pad_to_multiple_of` (int): round each micro-batch's row length up to a multiple of this many
  tokens (padding carries no loss and, when packing, attends only to itself): fewer distinct
  shapes for the GPU kernels to specialize on. The padding is not counted in
  `max_tokens_per_micro_batch` or in the tokens/s figures.
- `max_tokens_per_micro_batch` (int; causal-lm with packing): fill each micro-batch with examples up
  to this many tokens instead of `per_device_train_batch_size` examples. An optimizer step then
  holds about world size x accumulation x this many tokens whatever the example lengths: steady
  memory and step times (e.g. 16384 for an 8B model on one 141 GB GPU). Must be >=
  `max_seq_length`; not with `global_batch_size` (use `gradient_accumulation_steps`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..common.errors import Problems
from ..common.tasks import Task, check_task

Check = Callable[[str, Any], "str | None"]


# -- value checks: each returns None when the value is fine, else the problem ------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> Check:
    def check(name: str, value: Any) -> str | None:
        if _is_int(value) and value >= minimum:
            return None
        return f"`{name}` must be an integer >= {minimum}, got {value!r}"

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
        return f"`{name}` must be a number in {interval}, got {value!r}"

    return check


def _positive_number(name: str, value: Any) -> str | None:
    if _is_number(value) and value > 0:
        return None
    return f"`{name}` must be a number > 0, got {value!r}"


def _non_negative_number(name: str, value: Any) -> str | None:
    if _is_number(value) and value >= 0:
        return None
    return f"`{name}` must be a number >= 0, got {value!r}"


def _boolean(name: str, value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    return f"`{name}` must be true or false, got {value!r}"


def _one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> str | None:
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return None
        listed = ", ".join(repr(choice) for choice in choices)
        return f"`{name}` must be one of {listed}; got {value!r}"

    return check


def _count_or_fraction(name: str, value: Any) -> str | None:
    """A step count (int >= 0, or a whole float such as 10.0) or a fraction (0 <= float < 1)."""
    if _is_int(value) and value >= 0:
        return None
    if isinstance(value, float) and value >= 1 and value.is_integer():
        return None
    if isinstance(value, float) and 0 <= value < 1:
        return None
    return (
        f"`{name}` must be a step count (integer >= 0) or a fraction of the total steps "
        f"(0 <= x < 1), got {value!r}"
    )


def _positive_count_or_fraction(name: str, value: Any) -> str | None:
    if (_is_int(value) or isinstance(value, float) and value.is_integer()) and value >= 1:
        return None
    if isinstance(value, float) and 0 < value < 1:
        return None
    return (
        f"`{name}` must be a step count (integer >= 1) or a fraction of the total steps "
        f"(0 < x < 1), got {value!r}"
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
    return f"`{name}` must be a string, got {value!r}"


def _mapping(name: str, value: Any) -> str | None:
    if isinstance(value, Mapping):
        return None
    return f"`{name}` must be an object (dict), got {value!r}"


def _report_to(name: str, value: Any) -> str | None:
    if value in (None, "none", "") or value == [] or value == ["none"]:
        return None
    return (
        f"`{name}` = {value!r} is not supported: kftune reports metrics to the pod log and the "
        "KFP Metrics artifact; remove it or set it to \"none\""
    )


def _off(*off_values: Any, why: str = "") -> Check:
    """Accepts the value that switches a feature off; any other value is "not supported"."""

    def check(name: str, value: Any) -> str | None:
        if any(value == off and type(value) is type(off) for off in off_values):
            return None
        hint = f" ({why})" if why else ""
        return (
            f"`{name}` = {value!r} is not supported by kftune{hint}; remove it or set it to "
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

# Fields of transformers.TrainingArguments that kftune honours, with their value checks.
HONOURED_TRAINING_PARAMETERS: dict[str, Check] = {
    "learning_rate": _positive_number,
    "num_train_epochs": _positive_number,
    "max_steps": _int_at_least(-1),
    "per_device_train_batch_size": _int_at_least(1),
    "gradient_accumulation_steps": _int_at_least(1),
    "warmup_steps": _count_or_fraction,
    "warmup_ratio": _number_in(0, 1),
    "lr_scheduler_type": _one_of(*SCHEDULERS),
    "lr_scheduler_kwargs": _optional(_mapping),
    "weight_decay": _non_negative_number,
    "adam_beta1": _number_in(0, 1, high_open=True),
    "adam_beta2": _number_in(0, 1, high_open=True),
    "adam_epsilon": _positive_number,
    "optim": _one_of(*OPTIMIZERS),
    "max_grad_norm": _non_negative_number,
    "seed": _int_at_least(0),
    "data_seed": _optional(_int_at_least(0)),
    "bf16": _boolean,
    "gradient_checkpointing": _boolean,
    "gradient_checkpointing_kwargs": _optional(_mapping),
    "logging_steps": _positive_count_or_fraction,
    "logging_first_step": _boolean,
    "logging_strategy": _one_of("steps", "no"),
    "save_strategy": _one_of("steps", "no"),
    "save_steps": _positive_count_or_fraction,
    "save_total_limit": _optional(_int_at_least(1)),
    "label_smoothing_factor": _number_in(0, 1, high_open=True),
    "ddp_timeout": _int_at_least(1),
    "use_cpu": _boolean,
}

# Fields the reference recipe commonly sets that have no effect here (see the module docstring).
ACCEPTED_WITHOUT_EFFECT: dict[str, Check] = {
    "output_dir": _optional(_string),
    "run_name": _optional(_string),
    "disable_tqdm": _optional(_boolean),
    "log_level": _optional(_string),
    "log_level_replica": _optional(_string),
    "log_on_each_node": _boolean,
    "report_to": _report_to,
    "do_train": _boolean,
    "overwrite_output_dir": _boolean,
    "remove_unused_columns": _boolean,
    "dataloader_num_workers": _int_at_least(0),
    "dataloader_pin_memory": _boolean,
    "ddp_find_unused_parameters": _optional(_boolean),
    "ddp_backend": _optional(_one_of("nccl", "gloo")),
    "average_tokens_across_devices": _boolean,
    "include_num_input_tokens_seen": _any,
    "skip_memory_metrics": _boolean,
    # Switches kftune only supports switched off.
    "eval_strategy": _off("no", why="evaluate with the evaluate component"),
    "evaluation_strategy": _off("no", why="evaluate with the evaluate component"),
    "do_eval": _off(False, why="evaluate with the evaluate component"),
    "push_to_hub": _off(False, why="the adapter is the component's output artifact"),
    "fp16": _off(False, why="use bf16"),
    "torch_compile": _off(False),
    "use_liger_kernel": _off(False),
    "fsdp": _off("", None, [], why="LoRA trains with data parallelism"),
    "deepspeed": _off(None, why="LoRA trains with data parallelism"),
    "auto_find_batch_size": _off(False),
    "load_best_model_at_end": _off(False),
    "dataloader_drop_last": _off(False, why="kftune trains on every example"),
    "resume_from_checkpoint": _off(
        None, why="kftune resumes automatically from the last checkpoint in its output location"
    ),
}

# kftune's own training parameters.
KFTUNE_EXTRAS: dict[str, Check] = {
    "max_seq_length": _int_at_least(1),
    "packing": _boolean,
    "global_batch_size": _optional(_int_at_least(1)),
    "shuffle": _boolean,
    "max_tokens_per_micro_batch": _optional(_int_at_least(1)),
    "pad_to_multiple_of": _optional(_int_at_least(1)),
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

# -- LoRA ---------------------------------------------------------------------------------------


def _target_modules(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return None
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return None
    return (
        f"`{name}` must be a module name pattern (string), a non-empty list of module names, or "
        f"\"all-linear\"; got {value!r}"
    )


def _string_list(name: str, value: Any) -> str | None:
    if value is None or (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        return None
    return f"`{name}` must be a list of module names, got {value!r}"


def _layers(name: str, value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 0):
        return None
    if isinstance(value, list) and all(_is_int(item) and item >= 0 for item in value):
        return None
    return f"`{name}` must be a layer index or a list of layer indices (>= 0), got {value!r}"


def _init_lora_weights(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or value in ("gaussian", "pissa", "olora", "orthogonal"):
        return None
    return (
        f"`{name}` must be true, false, \"gaussian\", \"pissa\", \"olora\" or \"orthogonal\"; "
        f"got {value!r}"
    )


LORA_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}

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
    # kftune sets the task type from `task`; a value given must match it (checked at train start).
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


def _check_table(
    values: Mapping[str, Any],
    parameter: str,
    accepted: Mapping[str, Check],
    existing: frozenset[str],
    owner: str,
) -> list[str]:
    if not isinstance(values, Mapping):
        return [f"`{parameter}` must be an object (dict) of {owner} fields, got {values!r}"]
    problems: list[str] = []
    for key, value in values.items():
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
            close = difflib.get_close_matches(str(key), sorted(set(accepted) | existing), n=1)
            hint = f"did you mean `{close[0]}`?" if close else "remove it"
            problems.append(
                f"`{parameter}.{key}` is not a {owner} field: unknown key {key!r}; {hint}"
            )
    return problems


def validate_training_parameters(
    training_parameters: Mapping[str, Any], task: Any = None
) -> list[str]:
    """Returns the problems with `training_parameters` for `task` (empty when they are fine).

    With `task` None (or not a string: the caller reports that), only the checks that hold for
    every task run. Pure: imports neither torch nor transformers.
    """
    accepted = {**HONOURED_TRAINING_PARAMETERS, **ACCEPTED_WITHOUT_EFFECT, **KFTUNE_EXTRAS}
    problems = _check_table(
        training_parameters,
        "training_parameters",
        accepted,
        ALL_TRAINING_ARGUMENTS,
        "transformers.TrainingArguments",
    )
    if problems or not isinstance(training_parameters, Mapping):
        return problems
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
    problems.extend(_token_budget_problems(training_parameters,
                                           task if isinstance(task, str) else None))
    return problems


def _token_budget_problems(training_parameters: Mapping[str, Any], task: str | None) -> list[str]:
    budget = training_parameters.get("max_tokens_per_micro_batch")
    if budget is None:
        return []
    name = "`training_parameters.max_tokens_per_micro_batch`"
    problems = []
    if task is not None and task != "causal-lm":
        problems.append(
            f"{name} applies to task causal-lm only, got it ({budget}) with task {task!r}; "
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


def validate_lora_config(lora_config: Mapping[str, Any]) -> list[str]:
    """Returns the problems with `lora_config` (empty when it is fine).

    Pure: imports neither torch nor peft.
    """
    return _check_table(lora_config, "lora_config", HONOURED_LORA_FIELDS, ALL_LORA_FIELDS,
                        "peft.LoraConfig")


# -- the resolved settings ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """The training parameters with kftune's defaults filled in (see the module docstring)."""

    learning_rate: float = 2e-4
    """Peak learning rate."""
    num_train_epochs: float = 1.0
    """Passes over the data (may be fractional); ignored when `max_steps` > 0."""
    max_steps: int = -1
    """Optimizer steps to run; > 0 overrides `num_train_epochs`."""
    per_device_train_batch_size: int = 8
    """Examples per micro-batch per process."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step; None: derived from `global_batch_size`, else 1."""
    global_batch_size: int | None = None
    """Examples per optimizer step across the job (kftune extra)."""
    warmup_steps: float = 0
    """Warmup steps (int) or fraction of total steps (float < 1)."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps."""
    lr_scheduler_type: str = "linear"
    """A transformers scheduler name."""
    lr_scheduler_kwargs: dict[str, Any] | None = None
    """Extra scheduler arguments."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    optim: str = "adamw_torch_fused"
    """Optimizer: adamw_torch, adamw_torch_fused (fused on GPU), sgd."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables."""
    seed: int = 42
    """Seed for the LoRA init and dropout."""
    data_seed: int | None = None
    """Seed for the data order; None: `seed`."""
    bf16: bool = True
    """bf16 weights and compute on GPU (CPU trains in fp32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass."""
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    """Passed to `gradient_checkpointing_enable`."""
    logging_steps: float = 10
    """Log every N optimizer steps (or a fraction of the total)."""
    logging_first_step: bool = True
    """Also log the first step."""
    logging_strategy: str = "steps"
    """steps or no."""
    save_strategy: str = "steps"
    """steps or no."""
    save_steps: float = 500
    """Checkpoint every N optimizer steps (or a fraction of the total)."""
    save_total_limit: int | None = 2
    """Checkpoints to keep (oldest removed first)."""
    label_smoothing_factor: float = 0.0
    """Label smoothing for sequence classification."""
    ddp_timeout: int = 1800
    """Collective timeout in seconds."""
    use_cpu: bool = False
    """Train on CPU even when a GPU is present."""
    max_seq_length: int = 1024
    """Examples are truncated to this many tokens (kftune extra)."""
    packing: bool = True
    """Padding-free packing of causal-lm micro-batches (kftune extra)."""
    shuffle: bool = True
    """Shuffle the examples every epoch (kftune extra)."""
    max_tokens_per_micro_batch: int | None = None
    """Fill micro-batches by tokens instead of examples (kftune extra)."""
    pad_to_multiple_of: int | None = None
    """Round causal-lm row lengths up to a multiple of this (kftune extra)."""

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
    def order_seed(self) -> int:
        """The seed of the data order."""
        return self.seed if self.data_seed is None else self.data_seed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs: the content of `CONFIG.json`."""

    task: Task
    """`causal-lm` or `sequence-classification`."""
    model_dir: str
    """The base model: a Model artifact directory (Hugging Face layout + manifest.json)."""
    data_dir: str
    """The training rows: a Dataset artifact directory (data.parquet + manifest.json)."""
    output_dir: str
    """Where checkpoints/ and final/ (the adapter artifact) are written."""
    training_parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    """transformers.TrainingArguments fields + kftune extras."""
    lora_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """peft.LoraConfig fields."""
    merge: bool = False
    """Also write the base model with the adapter merged in to final/merged/."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.extend(check_task(self.task))
        for name in ("model_dir", "data_dir", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.add(f"`{name}` must be a non-empty path, got {value!r}")
        problems.extend(validate_training_parameters(self.training_parameters, self.task))
        problems.extend(validate_lora_config(self.lora_config))
        task_type = (self.lora_config or {}).get("task_type") if isinstance(
            self.lora_config, Mapping) else None
        if task_type and self.task in LORA_TASK_TYPES and task_type != LORA_TASK_TYPES[self.task]:
            problems.add(
                f"`lora_config.task_type` must be {LORA_TASK_TYPES[self.task]!r} for task "
                f"{self.task!r}, got {task_type!r}; remove it (kftune sets it from `task`)"
            )
        if not isinstance(self.merge, bool):
            problems.add(f"`merge` must be true or false, got {self.merge!r}")
        problems.raise_if_any()

    @property
    def settings(self) -> TrainingSettings:
        """The training parameters with defaults filled in."""
        return TrainingSettings.from_parameters(self.training_parameters)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        """Reads a `CONFIG.json`.

        Raises:
            InputError: when the file is missing, not JSON, or holds bad values.
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
        problems.raise_if_any()
        return cls(**payload)

    def to_json(self) -> str:
        """The `CONFIG.json` text for this config."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
