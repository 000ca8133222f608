"""Loading a sharded model without a whole copy per process: meta device, then each shard's rows.

The model is built on the meta device (no memory; the computed buffers such as rotary
frequencies stay real), wrapped with LoRA and sharded by FSDP2. Each process then allocates only
its shards and reads only its rows of every tensor from the safetensors files (FSDP2 splits each
tensor along dim 0 into world-size chunks). The LoRA weights are made the way PEFT makes them,
from the same seeded generator, so that they equal a DDP run's.

It applies when the checkpoint holds every weight of the model in safetensors and the LoRA
layers are plain linear ones with PEFT's default or gaussian init. Otherwise (a new
classification head, DoRA, PiSSA-like inits that read the base weights) `can_load` says why not
and the trainer loads whole copies in turns instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ADAPTER = "default"
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1}


def _weight_map(model_dir: str) -> dict[str, str] | None:
    """{tensor name: safetensors file} of a model directory, or None without safetensors."""
    directory = Path(model_dir)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return {name: str(directory / file)
                for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(single), "pt") as handle:
        return dict.fromkeys(handle.keys(), str(single))


def checkpoint_name(parameter: str) -> str:
    """The checkpoint name of a parameter of the PEFT-wrapped model."""
    return parameter.removeprefix("base_model.model.").replace(".base_layer.", ".")


def empty_base(model_class: Any, model_dir: str, dtype: torch.dtype, attention: str) -> Any:
    """The base model on the meta device (buffers real), frozen."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(config, dtype=dtype, attn_implementation=attention,
                                        trust_remote_code=False)
    model.requires_grad_(False)
    return model


def can_load(model: torch.nn.Module, model_dir: str, lora_config: dict[str, Any]) -> str | None:
    """None when the meta path applies to the (PEFT-wrapped, meta) model, else why not."""
    weights = _weight_map(model_dir)
    if weights is None:
        return "the checkpoint is not in safetensors"
    missing = [name for name, param in model.named_parameters()
               if not param.requires_grad and checkpoint_name(name) not in weights]
    if missing:
        return f"the checkpoint lacks {len(missing)} weight(s) of the model, e.g. {missing[0]}"
    if lora_config.get("use_dora") or lora_config.get("init_lora_weights", True) not in (
            True, False, "gaussian"):
        return "the LoRA init reads the base weights"
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    others = [type(module).__name__ for module in model.modules()
              if isinstance(module, BaseTunerLayer) and not isinstance(module, LoraLinear)]
    if others:
        return f"LoRA layers of kind {others[0]}"
    return None


def _lora_layers(model: torch.nn.Module) -> Iterator[Any]:
    from peft.tuners.lora.layer import Linear as LoraLinear

    for module in model.modules():
        if isinstance(module, LoraLinear) and ADAPTER in module.lora_A:
            yield module


def make_lora(model: torch.nn.Module, seed: int, init: Any, base_dtype: torch.dtype) -> dict[
    str, torch.Tensor
]:
    """Builds the LoRA weights on the CPU as PEFT does on a loaded model; returns them by name.

    PEFT creates each adapter's two linear layers on the CPU (their default init draws from the
    generator), then re-initializes them (`reset_lora_parameters`), in module order, then moves
    them to the base layer's dtype; kftune keeps them in fp32. Replayed here from the same seed.
    """
    torch.manual_seed(seed)
    for layer in _lora_layers(model):
        rank = layer.r[ADAPTER]
        layer.lora_A[ADAPTER] = torch.nn.Linear(layer.in_features, rank, bias=False)
        layer.lora_B[ADAPTER] = torch.nn.Linear(rank, layer.out_features,
                                                bias=layer.lora_bias[ADAPTER])
        layer.reset_lora_parameters(ADAPTER, init)
        for linear in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            linear.to(base_dtype).float().requires_grad_(True)
    return {name: param.detach().clone() for name, param in model.named_parameters()
            if param.requires_grad}


def _shard_rows(param: Any) -> tuple[int, int]:
    """(first row, row count) of this process's dim-0 shard of an FSDP2 DTensor parameter."""
    from torch.distributed.tensor import Shard

    mesh = param.device_mesh
    dim = next(index for index, placement in enumerate(param.placements)
               if isinstance(placement, Shard))
    chunk = -(-param.shape[0] // mesh.size(dim))  # torch.chunk's size
    return mesh.get_coordinate()[dim] * chunk, param.to_local().shape[0]


def fill_shards(model: torch.nn.Module, model_dir: str, device: torch.device,
                buffers: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> dict[str, int]:
    """Allocates this process's shards on `device` and reads their rows from the checkpoint.

    Returns {"bytes_read", "checkpoint_bytes", "tensors_read"} for this process.
    """
    from safetensors import safe_open

    from .sharding import load_trainable

    model.to_empty(device=device)
    named_buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in buffers.items():
            named_buffers[name].copy_(value)
    weights = _weight_map(model_dir) or {}
    handles: dict[str, Any] = {}
    stats = {"bytes_read": 0, "checkpoint_bytes": 0, "tensors_read": 0}
    try:
        for name, param in model.named_parameters():
            if param.requires_grad:
                continue
            key = checkpoint_name(name)
            file = weights[key]
            handle = handles.get(file) or handles.setdefault(file, safe_open(file, "pt"))
            rows = handle.get_slice(key)
            start, count = _shard_rows(param)
            local = param.to_local()
            stats["checkpoint_bytes"] += _ELEMENT_BYTES.get(rows.get_dtype(), 4) * param.numel()
            if count:
                value = rows[start:start + count]
                with torch.no_grad():
                    local.copy_(value.to(device=local.device, dtype=local.dtype))
                stats["bytes_read"] += value.numel() * value.element_size()
                stats["tensors_read"] += 1
    finally:
        handles.clear()
    load_trainable(model, lora)
    return stats
