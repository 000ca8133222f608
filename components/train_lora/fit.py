"""Whether a training job fits its GPUs: a per-process memory estimate, before anything launches.

Torch-free: the launch step calls `fit_problems` with the Model artifact's manifest and config
(parameter count, dtype, shape), the training settings (sharding, 4-bit, LoRA, token budget)
and the GPU's memory (`resources_per_worker.gpu_memory`, or the `nvidia.com/gpu.product` node
selector's entry in `GPU_MEMORY_GIB`). The trainer's `fsdp: "auto"` uses `estimate_for` too.

The estimate per process, in bytes:
- frozen base: parameters x bytes per weight (2 for bf16; 4-bit NF4 is 4.5 bits per weight of
  the linear layers with its block scales, while embeddings and the output head stay bf16),
  divided by the shard count when sharded, plus two gathered layers (the one computing and the
  one prefetched);
- LoRA: trainable parameters x 16 bytes (fp32 weight, gradient and two AdamW moments), divided
  by the shard count;
- activations: ACTIVATION_BYTES x hidden size per token per layer, for the tokens of one
  micro-batch (with gradient checkpointing: 2 x hidden per token per layer plus one layer's
  full activations);
- OVERHEAD_BYTES for the CUDA context, the allocator's slack and the chunked loss head.

ACTIVATION_BYTES = 40 is calibrated on BENCHMARKS.md's 1-GPU rows (phase s2a, r16all): the
estimate is 98.6 GiB for 8B at 16,384 tokens (measured peak 86.8 GiB, +14%) and 45.5 GiB for 1B
at 32,768 tokens (measured 50.6 GiB, -10%). USABLE_FRACTION leaves room for that error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import parallelism

GIB = 2**30
ACTIVATION_BYTES = 40
OVERHEAD_BYTES = 3 * GIB
USABLE_FRACTION = 0.92
"""The share of a GPU's memory a job may plan to use (the rest is fragmentation headroom)."""
WEIGHT_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0}
NF4_BYTES = 4.5 / 8

# GiB of memory (as nvidia-smi reports it) by the `nvidia.com/gpu.product` label that NVIDIA's
# GPU feature discovery sets on nodes.
GPU_MEMORY_GIB = {
    "NVIDIA-H200": 140.4, "NVIDIA-H100-80GB-HBM3": 79.6, "NVIDIA-H100-PCIe": 79.6,
    "NVIDIA-H100-NVL": 93.6, "NVIDIA-A100-SXM4-80GB": 80.0, "NVIDIA-A100-80GB-PCIe": 80.0,
    "NVIDIA-A100-SXM4-40GB": 40.0, "NVIDIA-A100-PCIE-40GB": 40.0, "NVIDIA-L40S": 45.0,
    "NVIDIA-L40": 45.0, "NVIDIA-L4": 22.5, "NVIDIA-A10G": 22.5, "NVIDIA-A10": 22.5,
    "Tesla-T4": 15.0, "Tesla-V100-SXM2-32GB": 32.0, "NVIDIA-RTX-A6000": 47.5,
    "NVIDIA-GeForce-RTX-4090": 24.0,
}
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes one training process needs on its GPU."""

    weights: float
    lora: float
    activations: float
    overhead: float = OVERHEAD_BYTES

    @property
    def total(self) -> float:
        """All of it."""
        return self.weights + self.lora + self.activations + self.overhead

    def describe(self) -> str:
        """'71.2 GiB (weights 15.0, LoRA 0.7, activations 52.5, overhead 3.0)'."""
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, LoRA "
                f"{self.lora / GIB:.1f}, activations {self.activations / GIB:.1f}, overhead "
                f"{self.overhead / GIB:.1f})")


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model's config."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_fraction: float = 1.0
    tied: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Shape:
        """From a transformers config.json (decoder and encoder names alike)."""
        config = config.get("text_config") or config
        hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
        heads = config.get("num_attention_heads") or 1
        return cls(hidden=hidden,
                   layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
                   intermediate=int(config.get("intermediate_size") or 4 * hidden),
                   vocab=int(config.get("vocab_size") or 0),
                   kv_fraction=(config.get("num_key_value_heads") or heads) / heads,
                   tied=bool(config.get("tie_word_embeddings", False)))

    def lora_parameters(self, rank: int, all_linear: bool) -> int:
        """LoRA parameters for rank `rank` on q/v (PEFT's usual default) or every linear layer."""
        d, kv, i = self.hidden, self.hidden * self.kv_fraction, self.intermediate
        per_layer = (d + d) + (d + kv)  # q_proj, v_proj: r x (in + out) each
        if all_linear:
            per_layer += (d + kv) + (d + d) + 2 * (d + i) + (i + d)  # k, o, gate, up, down
        return int(rank * per_layer * self.layers)


def estimate(parameters: int, dtype: str, shape: Shape, *, shards: int = 1,
             quantized: bool = False, lora_parameters: int = 0, tokens: int = 1024,
             checkpointing: bool = False) -> Estimate:
    """The per-process estimate of the module docstring."""
    outside_layers = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    in_layers = max(0, parameters - outside_layers)
    bf16 = WEIGHT_BYTES.get(str(dtype).removeprefix("torch."), 2.0)
    bf16 = min(bf16, 2.0)  # the trainer loads fp32 checkpoints as bf16 on GPU
    per_weight_in_layers = NF4_BYTES if quantized else bf16
    weights = (in_layers * per_weight_in_layers + outside_layers * bf16) / shards
    if shards > 1:
        weights += 2 * in_layers / max(1, shape.layers) * bf16  # gathered + prefetched layer
    per_token_layer = ACTIVATION_BYTES * shape.hidden
    if checkpointing:
        activations = tokens * shape.hidden * 2 * shape.layers + tokens * per_token_layer
    else:
        activations = tokens * per_token_layer * shape.layers
    return Estimate(weights=weights, lora=16 * lora_parameters / shards, activations=activations)


def _tokens(settings: Mapping[str, Any]) -> int:
    from .config import TrainingSettings

    budget = settings.get("max_tokens_per_micro_batch")
    if budget:
        return int(budget)
    return int(settings.get("per_device_train_batch_size",
                            TrainingSettings.per_device_train_batch_size)) * int(
        settings.get("max_seq_length", TrainingSettings.max_seq_length))


def estimate_for(manifest: Mapping[str, Any], config: Mapping[str, Any],
                 settings: Mapping[str, Any], lora_config: Mapping[str, Any],
                 shards: int = 1) -> Estimate:
    """The estimate for a Model artifact (manifest + config.json) and validated settings."""
    shape = Shape.from_config(config)
    targets = lora_config.get("target_modules")
    all_linear = targets == "all-linear" or (isinstance(targets, list) and len(targets) > 2)
    checkpointing = bool(settings.get("gradient_checkpointing")) or bool(
        (settings.get("fsdp_config") or {}).get("activation_checkpointing"))
    return estimate(
        int(manifest.get("parameters") or 0), str(manifest.get("dtype") or "bfloat16"), shape,
        shards=shards, quantized=bool(settings.get("quantization")) or bool(
            config.get("quantization_config")),
        lora_parameters=shape.lora_parameters(int(lora_config.get("r", 8)), all_linear),
        tokens=_tokens(settings), checkpointing=checkpointing)


def gpu_memory_bytes(resources: Mapping[str, Any],
                     node_selector: Mapping[str, str]) -> tuple[float | None, str]:
    """(bytes of one GPU, where that figure came from), or (None, why it is unknown)."""
    named = resources.get("gpu_memory")
    if named is not None:
        from kubernetes.utils import parse_quantity

        return float(parse_quantity(named)), f"resources_per_worker.gpu_memory = {named!r}"
    product = node_selector.get(GPU_PRODUCT_LABEL)
    if product in GPU_MEMORY_GIB:
        return GPU_MEMORY_GIB[product] * GIB, f"node selector {GPU_PRODUCT_LABEL}={product}"
    return None, "no resources_per_worker.gpu_memory and no known GPU product in the node selector"


def fit_problems(model_dir: str, training_parameters: Any, lora_config: Any,
                 num_workers: Any, procs_per_worker: Any, resources: Any,
                 options: Any) -> list[str]:
    """One problem (with the numbers and the options that would fit) if the job cannot fit.

    Values the other checks reject (wrong types, bad settings) are left to them, which run once
    (`launch.plan`): this one does not check them again, and finds no problem where a value it
    reads cannot be estimated. `procs_per_worker` is an int, "auto", or the component's string.
    """
    from .step.spec import parse_num_procs

    if not (isinstance(training_parameters, Mapping) and isinstance(lora_config, Mapping)
            and isinstance(resources, Mapping) and isinstance(num_workers, int)):
        return []
    procs_per_worker = parse_num_procs(procs_per_worker)
    try:
        return _fit_problems(model_dir, training_parameters, lora_config, num_workers,
                             procs_per_worker, resources, options)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError):
        return []  # a value the settings check reports


def _fit_problems(model_dir: str, training_parameters: Mapping[str, Any],
                  lora_config: Mapping[str, Any], num_workers: int, procs_per_worker: Any,
                  resources: Mapping[str, Any], options: Any) -> list[str]:
    node_selector = (options or {}).get("node_selector") if isinstance(options, Mapping) else {}
    if not isinstance(node_selector, Mapping):
        node_selector = {}
    gpus = resources.get("gpu")
    if not isinstance(procs_per_worker, int):  # "auto": one process per GPU of the pod
        procs_per_worker = gpus if isinstance(gpus, int) and gpus > 0 else 1
    try:
        memory, source = gpu_memory_bytes(resources, node_selector)
    except (ValueError, TypeError, ArithmeticError):
        return []  # check_resources reports a bad gpu_memory
    if memory is None:
        return []
    try:
        manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return []  # the input checks report a missing or broken Model artifact
    if not manifest.get("parameters"):
        return []
    layout = parallelism.resolve(training_parameters)
    world = max(1, num_workers * max(1, procs_per_worker))
    shards = world if layout.mode == "shard" else 1
    if layout.mode == "shard" and layout.hybrid:
        shards = max(1, procs_per_worker)
    if layout.mode == "auto":
        shards = world
    usable = memory * USABLE_FRACTION
    need = estimate_for(manifest, config, training_parameters, lora_config, shards)
    if need.total <= usable:
        return []
    return [_not_fitting(need, usable, source, manifest, config, training_parameters,
                         lora_config, world, shards)]


def _fits(manifest: Mapping[str, Any], config: Mapping[str, Any], settings: Mapping[str, Any],
          lora_config: Mapping[str, Any], shards: int, usable: float) -> Estimate | None:
    need = estimate_for(manifest, config, settings, lora_config, shards)
    return need if need.total <= usable else None


def _options(manifest: Mapping[str, Any], config: Mapping[str, Any], settings: Mapping[str, Any],
             lora_config: Mapping[str, Any], shards: int, usable: float) -> list[str]:
    """Changes that would make the job fit, each with its estimate."""
    checkpointed = {**settings, "gradient_checkpointing": True}
    quantized = {**settings, "quantization": {"load_in_4bit": True}}
    options = []
    for label, changed in (("", settings), (" and gradient_checkpointing true", checkpointed)):
        if settings.get("quantization") or (label and settings.get("gradient_checkpointing")):
            continue
        for gpus in (2, 4, 8, 16, 32, 64, 128, 256):
            need = _fits(manifest, config, {**changed, "fsdp": "full_shard"}, lora_config, gpus,
                         usable)
            if gpus > shards and need:
                options.append(f"fsdp \"full_shard\" over {gpus} GPUs{label} "
                               f"({need.total / GIB:.1f} GiB per GPU)")
                break
    if not settings.get("quantization") and shards == 1:
        for label, changed in (("", quantized), (" and gradient_checkpointing true",
                                                 {**quantized, "gradient_checkpointing": True})):
            need = _fits(manifest, config, changed, lora_config, 1, usable)
            if need:
                options.append(f"quantization 4-bit{label} ({need.total / GIB:.1f} GiB per GPU)")
                break
    need = estimate_for(manifest, config, settings, lora_config, shards)
    tokens = _tokens(settings)
    spare = usable - (need.total - need.activations)
    if spare > 0 and spare / (need.activations / max(1, tokens)) >= 256:
        options.append(f"max_tokens_per_micro_batch <= "
                       f"{int(spare / (need.activations / max(1, tokens)))}")
    need = _fits(manifest, config, checkpointed, lora_config, shards, usable)
    if need and not settings.get("gradient_checkpointing"):
        options.append(f"gradient_checkpointing true ({need.total / GIB:.1f} GiB per GPU)")
    return options


def _not_fitting(need: Estimate, usable: float, source: str, manifest: Mapping[str, Any],
                 config: Mapping[str, Any], settings: Mapping[str, Any],
                 lora_config: Mapping[str, Any], world: int, shards: int) -> str:
    options = _options(manifest, config, settings, lora_config, shards, usable)
    return (f"the job does not fit its GPUs: each of its {world} process(es) needs about "
            f"{need.describe()} for {manifest.get('parameters'):,} parameters "
            f"({manifest.get('dtype')}), {_tokens(settings)} tokens per micro-batch, "
            f"{f'sharded {shards} ways' if shards > 1 else 'one whole copy per GPU'}, against "
            f"{usable / GIB:.1f} GiB usable of a GPU ({source}); options that would fit: "
            f"{'; '.join(options) or 'a GPU with more memory'}")
