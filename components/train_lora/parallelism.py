"""How a job spreads the base model over its GPUs: `fsdp`, `fsdp_config` and `quantization`.

Three training parameters, in the spellings of the reference's `transformers.TrainingArguments`
and `BitsAndBytesConfig`:

- `fsdp`: "" (the default: DDP, every GPU holds the whole frozen base), or FSDP words as a
  string or list: "full_shard" (shard the frozen base and the LoRA weights per decoder layer,
  gather each layer for its forward and again for its backward), "shard_grad_op" (keep the
  gathered layer from the forward to the backward: more memory, less communication),
  "hybrid_shard" / "hybrid_shard_zero2" (the same inside a node, replicated across nodes: a 2-D
  device mesh), "auto_wrap" (accepted: kftune always wraps per decoder layer), "no_shard"
  (= DDP), and kftune's "auto": DDP when the model and its activations fit one GPU, else
  full_shard (the trainer logs which and why).
- `fsdp_config`: the `TrainingArguments.fsdp_config` keys that apply to LoRA (`FSDP_CONFIG_KEYS`).
- `quantization`: `BitsAndBytesConfig` fields for 4-bit QLoRA (`QUANTIZATION_KEYS`), e.g.
  {"load_in_4bit": true, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
  "bnb_4bit_use_double_quant": true}. Needs CUDA; not with sharding (bitsandbytes' packed 4-bit
  weights keep their quantization state beside the tensor, which FSDP2's dim-0 sharding of the
  tensor cannot split; torchtune shards torchao's NF4 tensor instead).

Torch-free: config.py checks these on the step side, fit.py estimates memory from them, and
pod/sharding.py acts on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SHARDING_WORDS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2")
FSDP_WORDS = (*SHARDING_WORDS, "auto_wrap", "no_shard", "auto")
# Words of TrainingArguments.fsdp that kftune refuses, with the reason.
REFUSED_FSDP_WORDS = {
    "offload": "CPU offload of the sharded weights is not supported; use more GPUs or "
               "`quantization` (4-bit) on fewer",
}

FSDP_CONFIG_KEYS: dict[str, str] = {
    "reshard_after_forward": "true or false: overrides the choice of the fsdp word",
    "activation_checkpointing": "true or false: recompute each layer in the backward",
    "transformer_layer_cls_to_wrap": "class names of the layers to shard (default: the model's "
                                     "decoder or encoder layers)",
    "cpu_ram_efficient_loading": "accepted (no effect: each process loads its own copy)",
    "sync_module_states": "accepted (no effect: every process loads the same files)",
    "use_orig_params": "true only (FSDP2 always keeps the original parameters)",
    "limit_all_gathers": "accepted (no effect: FSDP2 bounds its own all-gathers)",
    "forward_prefetch": "accepted (no effect: FSDP2 prefetches the next layer)",
    "backward_prefetch": "accepted (no effect: FSDP2 prefetches the next layer)",
    "version": "2 only (kftune shards with FSDP2)",
    "fsdp_version": "2 only (kftune shards with FSDP2)",
}
REFUSED_FSDP_CONFIG_KEYS = {
    "min_num_params": "kftune shards per layer, not by size; remove it",
    "offload_params": "CPU offload is not supported; remove it",
    "xla": "XLA is not supported; remove it",
    "xla_fsdp_settings": "XLA is not supported; remove it",
    "xla_fsdp_grad_ckpt": "XLA is not supported; remove it",
    "state_dict_type": "kftune saves the adapter in PEFT layout; remove it",
    "mixed_precision_policy": "kftune gathers in bf16 and reduces in fp32 on GPU; remove it",
}

QUANTIZATION_KEYS = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
                     "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage",
                     "llm_int8_skip_modules", "quant_method")
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """The resolved layout of a job's model over its GPUs."""

    mode: str = "ddp"
    """ddp, shard (FSDP2) or auto (decided by the trainer from the GPU's memory)."""
    reshard_after_forward: bool = True
    """Free each gathered layer after its forward (full_shard) or keep it (shard_grad_op)."""
    hybrid: bool = False
    """Shard inside a node and replicate across nodes (a 2-D mesh)."""
    activation_checkpointing: bool = False
    """Recompute each layer in the backward (`fsdp_config.activation_checkpointing`)."""
    layer_classes: tuple[str, ...] = ()
    """Class names of the layers to shard; empty: the model's decoder or encoder layers."""
    quantized: bool = False
    """The base is loaded in 4-bit (`quantization`)."""


def fsdp_words(value: Any) -> list[str] | None:
    """The words of an `fsdp` value (a space-separated string or a list), or None if neither."""
    if value is None or value is False:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(word, str) for word in value):
        return [part for word in value for part in word.split()]
    return None


def check_fsdp(name: str, value: Any) -> str | None:
    """The problem with `training_parameters.fsdp`, if any (a config.py Check)."""
    words = fsdp_words(value)
    if words is None:
        return (f"`{name}` must be a string or a list of strings like \"full_shard auto_wrap\", "
                f"got {value!r}")
    bad = [word for word in words if word not in FSDP_WORDS]
    if bad:
        reasons = [f"{word!r}: {REFUSED_FSDP_WORDS[word]}" for word in bad
                   if word in REFUSED_FSDP_WORDS]
        unknown = [word for word in bad if word not in REFUSED_FSDP_WORDS]
        parts = [f"unknown word(s) {unknown}" if unknown else "", *reasons]
        return (f"`{name}` = {value!r}: {'; '.join(part for part in parts if part)}; use "
                f"{', '.join(FSDP_WORDS)}")
    modes = [word for word in words if word in (*SHARDING_WORDS, "no_shard", "auto")]
    if len(modes) > 1:
        return f"`{name}` = {value!r} names {len(modes)} sharding modes {modes}; pick one"
    return None


def check_fsdp_config(name: str, value: Any) -> str | None:
    """The problems with `training_parameters.fsdp_config`, if any, as one line."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return f"`{name}` must be an object (dict) of FSDP settings, got {value!r}"
    problems = []
    for key, item in value.items():
        field = f"`{name}.{key}`"
        if key in REFUSED_FSDP_CONFIG_KEYS:
            problems.append(f"{field} is not supported: {REFUSED_FSDP_CONFIG_KEYS[key]}")
        elif key not in FSDP_CONFIG_KEYS:
            problems.append(f"{field} is not an FSDP setting kftune knows; remove it (known: "
                            f"{', '.join(FSDP_CONFIG_KEYS)})")
        elif key in ("version", "fsdp_version") and item != 2:
            problems.append(f"{field} must be 2 (FSDP2), got {item!r}")
        elif key == "use_orig_params" and item is not True:
            problems.append(f"{field} must be true (FSDP2 keeps the original parameters), got "
                            f"{item!r}")
        elif key == "transformer_layer_cls_to_wrap" and fsdp_words(item) in (None, []):
            problems.append(f"{field} must be a class name or a list of them, got {item!r}")
        elif key in ("reshard_after_forward", "activation_checkpointing",
                     "cpu_ram_efficient_loading", "sync_module_states", "limit_all_gathers",
                     "forward_prefetch") and not isinstance(item, bool):
            problems.append(f"{field} must be true or false, got {item!r}")
    return "; ".join(problems) or None


def check_quantization(name: str, value: Any) -> str | None:
    """The problems with `training_parameters.quantization`, if any, as one line."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return (f"`{name}` must be an object (dict) of BitsAndBytesConfig fields like "
                '{"load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}, ' f"got {value!r}")
    problems = []
    for key, item in value.items():
        field = f"`{name}.{key}`"
        if key == "load_in_8bit":
            problems.append(f"{field}: 8-bit loading is not supported; use load_in_4bit")
        elif key not in QUANTIZATION_KEYS:
            problems.append(f"{field} is not a BitsAndBytesConfig field kftune supports; remove "
                            f"it (supported: {', '.join(QUANTIZATION_KEYS)})")
        elif key == "load_in_4bit" and item is not True:
            problems.append(f"{field} must be true (or remove `{name}`), got {item!r}")
        elif key == "bnb_4bit_quant_type" and item not in QUANT_TYPES:
            problems.append(f"{field} must be one of {', '.join(QUANT_TYPES)}, got {item!r}")
        elif key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage") and (
                item not in COMPUTE_DTYPES and item != "uint8"):
            problems.append(f"{field} must be one of {', '.join(COMPUTE_DTYPES)}, got {item!r}")
        elif key == "bnb_4bit_use_double_quant" and not isinstance(item, bool):
            problems.append(f"{field} must be true or false, got {item!r}")
        elif key == "quant_method" and item != "bitsandbytes":
            problems.append(f"{field} must be \"bitsandbytes\", got {item!r}")
    if "load_in_4bit" not in value and not problems:
        problems.append(f"`{name}` must set load_in_4bit: true")
    return "; ".join(problems) or None


def cross_problems(training_parameters: Mapping[str, Any]) -> list[str]:
    """Problems between `fsdp`, `fsdp_config`, `quantization` and the other settings."""
    words = fsdp_words(training_parameters.get("fsdp")) or []
    sharded = any(word in (*SHARDING_WORDS, "auto") for word in words)
    problems = []
    if training_parameters.get("fsdp_config") and not sharded:
        problems.append(
            "`training_parameters.fsdp_config` is set but `training_parameters.fsdp` shards "
            "nothing; set fsdp to \"full_shard\" (or another sharding word) or remove fsdp_config")
    if training_parameters.get("quantization") and sharded:
        problems.append(
            "`training_parameters.quantization` (4-bit) cannot be combined with `fsdp` "
            f"{training_parameters.get('fsdp')!r}: bitsandbytes' 4-bit weights do not shard under "
            "FSDP2; use 4-bit with DDP (one copy per GPU) or sharding in bf16")
    if training_parameters.get("use_cpu") and training_parameters.get("quantization"):
        problems.append(
            "`training_parameters.quantization` (4-bit) needs CUDA GPUs, got use_cpu true; remove "
            "one of them")
    return problems


def merge_problems(training_parameters: Mapping[str, Any], merge: Any) -> list[str]:
    """Problems between `merge` and the layout of the base model."""
    words = fsdp_words(training_parameters.get("fsdp")) or []
    problems = []
    if merge is True and any(word in SHARDING_WORDS for word in words):
        problems.append(
            "`merge` needs the whole base model in one process, got it with `fsdp` "
            f"{training_parameters.get('fsdp')!r}; set merge false (the adapter is saved) or train "
            "without sharding")
    if merge is True and training_parameters.get("quantization"):
        problems.append(
            "`merge` cannot merge into a 4-bit base (`quantization`); set merge false and merge "
            "the adapter into the bf16 base model later")
    return problems


def resolve(training_parameters: Mapping[str, Any]) -> Parallelism:
    """The layout that validated `training_parameters` ask for."""
    words = fsdp_words(training_parameters.get("fsdp")) or []
    options = training_parameters.get("fsdp_config") or {}
    quantized = bool(training_parameters.get("quantization"))
    layers = tuple(fsdp_words(options.get("transformer_layer_cls_to_wrap")) or ())
    checkpointing = bool(options.get("activation_checkpointing", False))
    if "auto" in words:
        mode = "auto"
    elif any(word in SHARDING_WORDS for word in words):
        mode = "shard"
    else:
        return Parallelism(quantized=quantized)
    zero2 = any(word in ("shard_grad_op", "hybrid_shard_zero2") for word in words)
    return Parallelism(
        mode=mode,
        reshard_after_forward=bool(options.get("reshard_after_forward", not zero2)),
        hybrid=any(word.startswith("hybrid_shard") for word in words),
        activation_checkpointing=checkpointing, layer_classes=layers, quantized=quantized)
