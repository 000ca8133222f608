"""Sharding the frozen base model over the job's processes with FSDP2 (`fully_shard`).

Each decoder (or encoder) layer is its own FSDP unit and the rest of the model (embeddings, final
norm, output head, a classification head) is the root unit. Every parameter, frozen base and
LoRA alike, is split along dim 0 over the shard group; a layer's parameters are gathered for its
forward (and again for its backward unless `reshard_after_forward` is false). Gradients exist
only for the LoRA weights, so only they are reduce-scattered. On GPU the gathered weights are
bf16 and gradients are reduced in fp32, into fp32 LoRA shards that the optimizer updates.

Hybrid sharding shards inside a node and replicates across nodes: a 2-D mesh
(replicate = nodes, shard = processes per node), so the all-gathers of every layer stay on the
node's own links and only the LoRA gradients cross nodes.

The names of the parameters do not change (FSDP2 swaps them for DTensors in place), so the
adapter keeps PEFT's layout; `trainable_state` gathers the full LoRA tensors for saving.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..parallelism import Parallelism

LOG = logging.getLogger("kftune.trainer")


def layers_to_shard(model: torch.nn.Module, classes: tuple[str, ...]) -> list[torch.nn.Module]:
    """The model's decoder or encoder layers, or the modules of the named classes."""
    if classes:
        return [module for module in model.modules() if type(module).__name__ in classes]
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def device_mesh(world_size: int, device: torch.device, hybrid: bool) -> Any:
    """A 1-D mesh over the job, or (hybrid) a 2-D mesh: replicate over nodes, shard in a node."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = device.type
    if not hybrid:
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = max(1, world_size // per_node)
    return init_device_mesh(device_type, (nodes, per_node), mesh_dim_names=("replicate", "shard"))


def shard(model: torch.nn.Module, base: torch.nn.Module, layout: Parallelism,
          device: torch.device, mesh: Any) -> torch.nn.Module:
    """Shards `base` (the transformers model inside the PEFT `model`) in place; returns it.

    Raises:
        ValueError: when `fsdp_config.transformer_layer_cls_to_wrap` names no layer of the model.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = layers_to_shard(base, layout.layer_classes)
    if not layers:
        names = sorted({type(module).__name__ for module in base.modules()})
        raise ValueError(
            f"`training_parameters.fsdp_config.transformer_layer_cls_to_wrap` = "
            f"{list(layout.layer_classes)} names no layer of the model; its classes are {names}")
    options: dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                    reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=layout.reshard_after_forward, **options)
    fully_shard(base, **options)
    LOG.info("FSDP2: %d %s units sharded over %s (%s), reshard after forward: %s", len(layers),
             type(layers[0]).__name__, tuple(mesh.shape),
             "hybrid: replicate x shard" if layout.hybrid else "shard",
             layout.reshard_after_forward)
    return base


def host_memory_gib() -> tuple[float, float]:
    """(peak, current) resident memory of this process in GiB (Linux)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        now = pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        now = float("nan")
    return peak, now


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` holds FSDP2-sharded (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


@contextlib.contextmanager
def no_gradient_sync(wrapped: torch.nn.Module, root: torch.nn.Module | None) -> Iterator[None]:
    """Accumulates gradients locally for one micro-batch (DDP's no_sync; FSDP2's switch)."""
    if root is None:
        with wrapped.no_sync():
            yield
        return
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective), or the tensor itself."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: the whole trainable tensor on the CPU} (a collective under sharding)."""
    return {name: full(param.detach()).cpu() for name, param in model.named_parameters()
            if param.requires_grad}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with whole tensors, keyed by parameter name (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copies whole trainable tensors into the (possibly sharded) parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            param = parameters[name]
            if isinstance(param, DTensor):
                value = distribute_tensor(tensor.to(param.device_mesh.device_type,
                                                    dtype=param.dtype),
                                          param.device_mesh, param.placements)
                param.copy_(value)
            else:
                param.copy_(tensor.to(param.device))


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   state: dict[str, Any]) -> None:
    """Loads an `optimizer_state` into the optimizer of the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
