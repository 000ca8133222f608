"""The streaming merge: base safetensors shards + a LoRA adapter -> merged safetensors shards.

The merged model is written tensor by tensor: each base shard is opened with
`safetensors.safe_open` (memory-mapped), each tensor is read, merged when it is a LoRA target
(`W += scaling * B @ A`, computed in float32, PEFT's own `scaling` rules), cast to the export dtype
and appended to the output shard being filled, which is written as soon as it reaches
`max_shard_size`. Peak memory is about one base shard (the mapped pages read so far), one output
shard and the adapter, never a second copy of the model.

Names follow the task model (`AutoModelFor<task>` built on the meta device, so no memory): the
adapter's keys are that model's module paths, and a checkpoint of the bare backbone (`BertModel`
under `BertForSequenceClassification`) maps to them with the model's `base_model_prefix`, as
transformers' loader does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import InputError

ADAPTER_PREFIX = "base_model.model."
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LORA_SUFFIXES = {
    # adapter key suffix -> (role, layer kind)
    ".lora_A.weight": ("A", "linear"),
    ".lora_B.weight": ("B", "linear"),
    ".lora_B.bias": ("B_bias", "linear"),
    ".lora_embedding_A": ("A", "embedding"),
    ".lora_embedding_B": ("B", "embedding"),
}
# LoraConfig fields whose adapters cannot be merged by `W += scaling * B @ A` onto the base as
# downloaded: DoRA rescales the merged weight's columns; PiSSA/OLoRA/CorDA/LoftQ initialisations
# change the base weights themselves; aLoRA only acts after its invocation tokens; trainable
# tokens, target_parameters and layer replication change the model's structure.
REFUSED_INIT = ("pissa", "olora", "corda", "loftq")


@dataclass
class LoraTarget:
    """The adapter tensors of one LoRA-wrapped module."""

    module: str
    kind: str = "linear"
    tensors: dict[str, Any] = field(default_factory=dict)


def unsupported_features(config: Any) -> list[str]:
    """The problems with a `peft.LoraConfig` that this merge does not handle (empty: supported)."""
    problems = []
    peft_type = str(getattr(config, "peft_type", "LORA")).rsplit(".", 1)[-1]
    if peft_type != "LORA":
        problems.append(f"`adapter` is a {peft_type} adapter; export_model merges LoRA adapters")
    checks = [
        ("use_dora", bool(getattr(config, "use_dora", False)),
         "DoRA rescales each merged column by a learned magnitude"),
        ("init_lora_weights", str(getattr(config, "init_lora_weights", True)).lower()
         .startswith(REFUSED_INIT), "this initialisation changed the base weights in training"),
        ("alora_invocation_tokens", bool(getattr(config, "alora_invocation_tokens", None)),
         "activated LoRA only applies after its invocation tokens, which merged weights cannot"),
        ("trainable_token_indices", bool(getattr(config, "trainable_token_indices", None)),
         "trainable tokens are stored as deltas of selected embedding rows"),
        ("target_parameters", bool(getattr(config, "target_parameters", None)),
         "LoRA on raw parameters (MoE experts) is outside this merge"),
        ("layer_replication", bool(getattr(config, "layer_replication", None)),
         "replicated layers change the model's structure"),
        ("use_qalora", bool(getattr(config, "use_qalora", False)),
         "QA-LoRA merges into quantized group weights"),
        ("megatron_config", bool(getattr(config, "megatron_config", None)),
         "Megatron-parallel layers are outside this merge"),
    ]
    for name, present, why in checks:
        if present:
            problems.append(
                f"`adapter` uses `{name}` ({getattr(config, name)!r}), which export_model does not "
                f"merge: {why}; serve the adapter on top of the base model instead")
    return problems


def lora_scaling(config: Any, module: str, rank: int) -> float:
    """PEFT's scaling of module `module`: `lora_alpha / r` (rslora: `/ sqrt(r)`), with patterns."""
    from peft.utils.other import get_pattern_key

    rank_key = get_pattern_key((config.rank_pattern or {}).keys(), module)
    alpha_key = get_pattern_key((config.alpha_pattern or {}).keys(), module)
    expected_rank = (config.rank_pattern or {}).get(rank_key, config.r)
    alpha = (config.alpha_pattern or {}).get(alpha_key, config.lora_alpha)
    if expected_rank != rank:
        raise InputError([f"`adapter` module {module!r} has rank {rank} but adapter_config.json "
                          f"says {expected_rank}; the adapter files do not belong together"])
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def read_adapter(adapter_dir: Path) -> tuple[Any, dict[str, LoraTarget], dict[str, Any]]:
    """The adapter's LoraConfig, its LoRA targets by module, and its whole-tensor replacements.

    Replacements are the tensors PEFT saves in full (`modules_to_save` such as a classification
    head, and biases with `bias="all"`/`"lora_only"`); they replace the base tensors.

    Raises:
        InputError: a missing or unreadable adapter, or features the merge does not support.
    """
    from peft import LoraConfig
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not (adapter_dir / "adapter_config.json").is_file() or not weights.is_file():
        raise InputError([f"`adapter` {str(adapter_dir)!r} has no adapter_config.json and "
                          "adapter_model.safetensors; pass train_lora's adapter output"])
    config = LoraConfig.from_pretrained(str(adapter_dir))
    problems = unsupported_features(config)
    if problems:
        raise InputError(problems)
    targets: dict[str, LoraTarget] = {}
    replacements: dict[str, Any] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            name = key.removeprefix(ADAPTER_PREFIX)
            suffix = next((s for s in LORA_SUFFIXES if name.endswith(s)), None)
            if suffix is None:
                # With an embedding target PEFT also saves the wrapped layer's own weight.
                replacements[name.replace(".base_layer.", ".")] = handle.get_tensor(key)
                continue
            role, kind = LORA_SUFFIXES[suffix]
            module = name[: -len(suffix)]
            target = targets.setdefault(module, LoraTarget(module, kind))
            target.tensors[role] = handle.get_tensor(key)
    return config, targets, replacements


def lora_delta(config: Any, target: LoraTarget, weight_shape: tuple[int, ...]) -> Any:
    """`scaling * B @ A` in float32, laid out like the base weight (PEFT's `get_delta_weight`)."""
    a_matrix, b_matrix = target.tensors.get("A"), target.tensors.get("B")
    if a_matrix is None or b_matrix is None or a_matrix.dim() != 2 or b_matrix.dim() != 2:
        raise InputError([f"`adapter` module {target.module!r} is not a Linear or Embedding LoRA "
                          "pair (lora_A/lora_B matrices); convolution LoRA is not merged"])
    if target.kind == "embedding":
        # lora_embedding_A is (r, num_embeddings), lora_embedding_B (dim, r): delta = (B A)^T.
        rank = a_matrix.shape[0]
        delta = (b_matrix.float() @ a_matrix.float()).T
    else:
        rank = a_matrix.shape[0]
        delta = b_matrix.float() @ a_matrix.float()
        if config.fan_in_fan_out:  # GPT-2's Conv1D stores the weight as (in, out)
            delta = delta.T
    delta = delta * lora_scaling(config, target.module, rank)
    if tuple(delta.shape) != tuple(weight_shape):
        raise InputError([f"`adapter` module {target.module!r} has a delta of shape "
                          f"{tuple(delta.shape)} for a base weight of shape {tuple(weight_shape)}; "
                          "the adapter was trained on another base model"])
    return delta


def base_shards(base_dir: Path) -> dict[str, list[str]]:
    """Base checkpoint shard file -> its tensor names (safetensors only).

    Raises:
        InputError: when the base model has no safetensors weights.
    """
    from safetensors import safe_open

    index = base_dir / INDEX_FILE
    if index.is_file():
        shards: dict[str, list[str]] = {}
        for name, shard in json.loads(index.read_text())["weight_map"].items():
            shards.setdefault(shard, []).append(name)
        return shards
    if (base_dir / SINGLE_FILE).is_file():
        with safe_open(str(base_dir / SINGLE_FILE), framework="pt") as handle:
            return {SINGLE_FILE: list(handle.keys())}
    raise InputError([f"`base_model` {str(base_dir)!r} has no safetensors weights "
                      f"({SINGLE_FILE} or {INDEX_FILE}); download_model writes them"])


def model_name(checkpoint_name: str, expected: dict[str, Any], prefix: str) -> str | None:
    """The task model's name for a checkpoint tensor, as transformers' loader maps it, or None."""
    candidates = [checkpoint_name, f"{prefix}.{checkpoint_name}"]
    if prefix and checkpoint_name.startswith(f"{prefix}."):
        candidates.append(checkpoint_name[len(prefix) + 1:])
    return next((name for name in candidates if name in expected), None)


SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


class ShardWriter:
    """Streams tensors, in a layout fixed in advance, into safetensors shards on disk.

    The layout (names and shapes in write order) is known before any weight is read, so each
    shard's header is written first and every tensor goes to disk as it arrives: nothing but the
    tensor at hand is held in memory. Shards hold at most `max_bytes` of data (a larger tensor
    gets a shard of its own); `finish` names them `model-0000i-of-0000n.safetensors` with an index.
    """

    def __init__(self, directory: Path, layout: list[tuple[str, tuple[int, ...]]], dtype: Any,
                 max_bytes: int):
        import torch

        self.directory, self.dtype, self._bytes = directory, dtype, torch.uint8
        self.shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
        filled = 0
        for name, shape in layout:
            size = math.prod(shape) * dtype.itemsize
            if self.shards[-1] and filled + size > max_bytes:
                self.shards.append([])
                filled = 0
            self.shards[-1].append((name, shape))
            filled += size
        self.total_bytes = sum(math.prod(shape) for _, shape in layout) * dtype.itemsize
        self._order = iter([(index, name) for index, shard in enumerate(self.shards)
                            for name, _ in shard])
        self._file: Any = None
        self._written = 0

    def _path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.tmp"

    def _open(self, index: int) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in self.shards[index]:
            size = math.prod(shape) * self.dtype.itemsize
            header[name] = {"dtype": SAFETENSORS_DTYPES[str(self.dtype).removeprefix("torch.")],
                            "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors does
        self._file = self._path(index).open("wb")
        self._file.write(struct.pack("<Q", len(encoded)) + encoded)
        self._written = 0

    def add(self, name: str, tensor: Any) -> None:
        """Writes the next tensor of the layout (in its order) to disk."""
        index, expected = next(self._order)
        if name != expected:
            raise RuntimeError(f"export_model wrote {name!r} where the layout has {expected!r}")
        if self._written == 0 and self._file is None:
            self._open(index)
        data = tensor.to(self.dtype).contiguous().reshape(-1).view(self._bytes)
        self._file.write(memoryview(data.numpy()))
        self._written += 1
        if self._written == len(self.shards[index]):
            self._file.close()
            self._file = None
            self._written = 0

    def finish(self) -> list[str]:
        """Names the shards Hugging Face style, writes the index; returns the shard file names.

        Raises:
            RuntimeError: when tensors of the layout were not written.
        """
        left = [name for _, name in self._order]
        if left or self._file is not None:
            raise RuntimeError(f"export_model did not write {len(left)} tensors ({left[:3]})")
        if len(self.shards) == 1:
            self._path(0).rename(self.directory / SINGLE_FILE)
            return [SINGLE_FILE]
        count, weight_map, names = len(self.shards), {}, []
        for index, shard in enumerate(self.shards):
            name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            self._path(index).rename(self.directory / name)
            names.append(name)
            weight_map.update(dict.fromkeys((tensor for tensor, _ in shard), name))
        index_file = {"metadata": {"total_size": self.total_bytes},
                      "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(index_file, indent=2) + "\n")
        return names


def plan(base_dir: Path, expected: dict[str, Any], prefix: str,
         replacements: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(model name, base shard, checkpoint name) of every tensor to write, in write order.

    Base tensors come shard by shard; the adapter's full tensors that the base lacks (a new
    classification head) come last, with no shard.
    """
    entries, seen = [], set()
    for shard, names in base_shards(base_dir).items():
        for checkpoint_name in names:
            name = model_name(checkpoint_name, expected, prefix)
            if name is not None and name not in seen:
                entries.append((name, shard, checkpoint_name))
                seen.add(name)
    entries += [(name, None, None) for name in replacements
                if name in expected and name not in seen]
    return entries


def merge_weights(base_dir: Path, adapter_dir: Path, output_dir: Path, *, expected: dict[str, Any],
                  required: set[str], prefix: str, dtype: Any,
                  max_shard_bytes: int) -> dict[str, Any]:
    """Streams the merged weights of the task model into `output_dir`; returns what was done.

    `expected` maps each state-dict name of the task model to its shape; `required` are the names
    that must be written (the parameters: tied ones once, persistent buffers optional).

    Raises:
        InputError: adapter tensors without a base tensor, missing tensors (both found before any
            weight is read), shape mismatches.
    """
    from safetensors import safe_open

    config, targets, replacements = read_adapter(adapter_dir)
    weight_of = {f"{module}.weight": target for module, target in targets.items()}
    bias_of = {f"{module}.bias": target for module, target in targets.items()
               if "B_bias" in target.tensors}
    entries = plan(base_dir, expected, prefix, replacements)
    _check_complete({name for name, _, _ in entries}, required, weight_of, bias_of, replacements)
    writer = ShardWriter(output_dir, [(name, expected[name]) for name, _, _ in entries], dtype,
                         max_shard_bytes)
    merged: list[str] = []
    for shard, group in itertools.groupby(entries, key=lambda entry: entry[1]):
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(safe_open(str(base_dir / shard), framework="pt")) if (
                shard is not None) else None
            for name, _, checkpoint_name in group:
                tensor = replacements[name] if name in replacements else handle.get_tensor(
                    checkpoint_name)
                tensor = _merged(config, name, tensor, weight_of, bias_of, merged)
                _check_shape(name, tensor, expected)
                writer.add(name, tensor)
                del tensor
    shards = writer.finish()
    return {"merged_modules": sorted(merged), "shards": shards, "size_bytes": writer.total_bytes,
            "replaced_tensors": sorted(name for name in replacements if name in expected),
            "lora_config": config}


def _merged(config: Any, name: str, tensor: Any, weight_of: dict[str, LoraTarget],
            bias_of: dict[str, LoraTarget], merged: list[str]) -> Any:
    """`tensor` with its LoRA update applied (float32), if it is a LoRA target's weight or bias."""
    if name in weight_of:
        target = weight_of[name]
        tensor = tensor.float() + lora_delta(config, target, tuple(tensor.shape))
        merged.append(target.module)
    if name in bias_of:
        target = bias_of[name]
        scaling = lora_scaling(config, target.module, target.tensors["A"].shape[0])
        tensor = tensor.float() + scaling * target.tensors["B_bias"].float()
    return tensor


def _check_shape(name: str, tensor: Any, expected: dict[str, Any]) -> None:
    if tuple(tensor.shape) != tuple(expected[name]):
        raise InputError([f"tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                          f"{tuple(expected[name])}; the adapter belongs to another base model"])


def _check_complete(planned: set[str], required: set[str], weight_of: dict[str, Any],
                    bias_of: dict[str, Any], replacements: dict[str, Any]) -> None:
    problems = []
    leftovers = sorted(set(weight_of) - planned) + sorted(set(bias_of) - planned) + sorted(
        set(replacements) - planned)
    if leftovers:
        problems.append(f"`adapter` has tensors for {len(leftovers)} weights the base model lacks "
                        f"(first: {leftovers[:3]}); pass the base model the adapter was trained on")
    missing = sorted(required - planned)
    if missing:
        problems.append(f"neither `base_model` nor `adapter` holds {len(missing)} of the model's "
                        f"weights (first: {missing[:3]}); a new head must be in the adapter's "
                        "modules_to_save")
    if problems:
        raise InputError(problems)


def parse_size(value: str | int) -> int:
    """`"5GB"`, `"500MB"`, `"2GiB"` or a byte count -> bytes.

    Raises:
        InputError: for anything else.
    """
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    text = str(value).strip().upper()
    number = text.rstrip("KMGIB")
    unit = text[len(number):]
    try:
        size = int(float(number) * units[unit])
    except (ValueError, KeyError):
        size = 0
    if size <= 0:
        raise InputError([f"`max_shard_size` must be a size like 5GB, 500MB or a byte count, got "
                          f"{value!r}"])
    return size


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (0 where it cannot be read).

    Linux's `VmHWM` belongs to the process image, whereas `ru_maxrss` survives `exec` and so also
    counts the parent's memory at the time it forked.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
