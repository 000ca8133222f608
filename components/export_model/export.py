"""export_model's logic: a LoRA adapter merged into its base model, checked, in HF layout.

The output directory is a Model artifact any `AutoModelFor<task>.from_pretrained` (and vLLM, TGI,
KServe's Hugging Face runtime) loads: config.json (the task architecture, the export dtype, the
labels), sharded safetensors with their index, the tokenizer, generation_config.json (causal LM)
and manifest.json (base model, adapter, training data, training and evaluation metrics, the
logits check and the peak memory of the merge).

The merge streams tensor by tensor (merge.py). The check then compares, on a few fixed inputs, the
logits of the exported files with those of PEFT's `PeftModel` (the base model plus the adapter,
in float32): one model in memory at a time. A correct export differs from that reference only by
rounding `W + scaling * B @ A` to the export dtype, so the tolerance is twice the deviation of
PEFT's own merge rounded the same way (measured on the same inputs), plus 1e-5 of the logits'
scale for float32 summation order. A dropped module, a wrong scaling or a head left out moves the
logits by a share of the adapter's whole effect, which is reported beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
from pathlib import Path
from typing import Any, Literal

from ..common.artifacts import (
    atomic_directory,
    check_adapter_files,
    read_manifest,
    write_manifest,
)
from ..common.errors import InputError, Problems, writing
from ..common.tasks import check_task, model_task
from . import merge

LOG = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film, the acting was wonderful!",
    "Terrible service, I will never come back.",
    "Kubeflow Pipelines runs each step in its own container.",
)
TOLERANCE_FACTOR = 2.0
RELATIVE_FLOOR = 1e-5


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What export_model writes, besides the model itself."""

    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype of the merged weights (the merge itself is computed in float32)."""
    max_shard_size: str = "5GB"
    """Largest safetensors shard: `5GB`, `500MB`, `2GiB` or bytes (Hugging Face's default)."""
    check_inputs: int = 4
    """How many fixed texts the logits check runs (0 skips the check)."""

    def __post_init__(self) -> None:
        problems = Problems()
        if self.dtype not in DTYPES:
            problems.add(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            merge.parse_size(self.max_shard_size)
        except InputError as error:
            problems.extend(error.problems)
        if not isinstance(self.check_inputs, int) or not 0 <= self.check_inputs <= len(
                CHECK_TEXTS):
            problems.add(f"`check_inputs` must be an integer from 0 to {len(CHECK_TEXTS)}, got "
                         f"{self.check_inputs!r}")
        problems.raise_if_any()


# --------------------------------------------------------------------------- the task model


def _auto_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "sequence-classification" else (
        AutoModelForCausalLM)


def task_config(base_dir: Path, task: str, label_names: list[str] | None, dtype: str) -> Any:
    """The base model's config for the task model: labels (classification) and the dtype."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=False)
    if task == "sequence-classification":
        names = list(label_names or [])
        config.num_labels = len(names)
        config.id2label = dict(enumerate(names))
        config.label2id = {name: index for index, name in enumerate(names)}
    config.dtype = dtype
    return config


def meta_model(config: Any, task: str) -> tuple[dict[str, Any], set[str], str, str]:
    """Shapes of the task model's state dict, its parameter names, base_model_prefix, class name.

    Built on the meta device: no weights are allocated.
    """
    import torch

    with torch.device("meta"):
        model = _auto_class(task).from_config(config, trust_remote_code=False)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    required = {name for name, _ in model.named_parameters()}
    return shapes, required, model.base_model_prefix, type(model).__name__


def write_metadata(base_dir: Path, adapter_dir: Path, output_dir: Path, config: Any,
                   architecture: str, task: str) -> None:
    """config.json, the tokenizer (the adapter's, else the base's), generation_config.json."""
    from transformers import AutoTokenizer, GenerationConfig

    config.architectures = [architecture]
    config.save_pretrained(str(output_dir))
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False).save_pretrained(
        str(output_dir))
    if (base_dir / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(str(base_dir)).save_pretrained(str(output_dir))
    elif task == "causal-lm":
        GenerationConfig.from_model_config(config).save_pretrained(str(output_dir))


# --------------------------------------------------------------------------- the logits check


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return model(**batch).logits.float()


def compute_in_float32(model: Any) -> Any:
    """Runs `model` in float32 while its weights stay stored in their own (lower) dtype.

    Every module whose weights are all bfloat16 or float16 gets accelerate's layerwise casting
    hook: up to float32 for its own forward, back after. The logits are those of the model upcast
    to float32 (the upcast is exact), with one module at a time in float32.
    """
    import torch
    from accelerate.hooks import LayerwiseCastingHook, add_hook_to_module

    for module in model.modules():
        dtypes = {parameter.dtype for parameter in module.parameters()}
        owns = next(module.parameters(recurse=False), None) is not None
        if owns and len(dtypes) == 1 and dtypes <= {torch.bfloat16, torch.float16}:
            add_hook_to_module(module, LayerwiseCastingHook(
                storage_dtype=dtypes.pop(), compute_dtype=torch.float32, non_blocking=False),
                append=True)
    return model


def _load(task: str, directory: Path, **extra: Any) -> Any:
    """The task model in the dtype its files hold (one copy of them), computing in float32."""
    model = _auto_class(task).from_pretrained(str(directory), dtype="auto",
                                              trust_remote_code=False, **extra)
    return compute_in_float32(model.eval())


def _merge_rounded(model: Any, dtype: Any) -> None:
    """PEFT's merge in float32, one LoRA layer at a time, then every weight rounded to `dtype`."""
    import torch
    from accelerate.hooks import remove_hook_from_module
    from peft.tuners.tuners_utils import BaseTunerLayer

    remove_hook_from_module(model, recurse=True)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.get_base_layer().to(torch.float32)
            module.merge()
            module.get_base_layer().to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
    compute_in_float32(model)


def reference_logits(base_dir: Path, adapter_dir: Path, task: str, label_names: list[str] | None,
                     batch: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Base + adapter (PeftModel, float32), the base alone, and PEFT's merge rounded to `dtype`.

    The base is held in its stored dtype and computed in float32 (`compute_in_float32`), the
    adapter's tensors in float32: the same logits as a float32 copy, in half the memory for a
    bf16 base. The modules the adapter replaces in full (a classification head) are made float32
    before PEFT loads them, so their saved values are kept exactly.
    """
    import torch
    from peft import PeftModel

    extra: dict[str, Any] = {}
    if task == "sequence-classification":
        names = list(label_names or [])
        extra = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                 "label2id": {name: index for index, name in enumerate(names)}}
    base = _auto_class(task).from_pretrained(str(base_dir), dtype="auto",
                                             trust_remote_code=False, **extra)
    for name in merge.read_adapter(adapter_dir)[2]:
        module = name.rpartition(".")[0]
        with contextlib.suppress(AttributeError):
            base.get_submodule(module).to(torch.float32)
    model = compute_in_float32(PeftModel.from_pretrained(base, str(adapter_dir)).eval())
    reference = _logits(model, batch)
    with model.disable_adapter():
        base_only = _logits(model, batch)
    _merge_rounded(model, getattr(torch, dtype))
    rounded = _logits(model, batch)
    del model, base
    gc.collect()
    return {"reference": reference, "base": base_only, "rounded": rounded}


def check_logits(base_dir: Path, adapter_dir: Path, merged_dir: Path, task: str,
                 label_names: list[str] | None, dtype: str, count: int) -> dict[str, Any]:
    """Compares the exported model's logits with base + adapter; returns the figures.

    Each model is held in the dtype of its files and computed in float32, one at a time.

    Raises:
        RuntimeError: when the exported logits are off by more than the tolerance.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = dict(tokenizer(list(CHECK_TEXTS[:count]), return_tensors="pt", padding=True))
    expected = reference_logits(base_dir, adapter_dir, task, label_names, batch, dtype)
    merged = _load(task, merged_dir)
    exported = _logits(merged, batch)
    del merged
    gc.collect()
    mask = batch["attention_mask"].bool() if task == "causal-lm" else slice(None)

    def deviation(left: Any, right: Any) -> float:
        return float((left[mask] - right[mask]).abs().max())

    reference = expected["reference"]
    scale = float(reference[mask].abs().max())
    figures = {
        "inputs": count,
        "max_abs_error": deviation(exported, reference),
        "rounding_floor": deviation(expected["rounded"], reference),
        "vs_peft_merge_rounded": deviation(exported, expected["rounded"]),
        "adapter_effect": deviation(reference, expected["base"]),
        "logits_scale": scale,
    }
    figures["tolerance"] = TOLERANCE_FACTOR * figures["rounding_floor"] + RELATIVE_FLOOR * scale
    if not figures["max_abs_error"] <= figures["tolerance"]:
        raise RuntimeError(
            "the merged model's logits differ from base + adapter by "
            f"{figures['max_abs_error']:.3g} (tolerance {figures['tolerance']:.3g}; the adapter's "
            f"effect is {figures['adapter_effect']:.3g}); the merge is wrong, nothing was written")
    return figures


# --------------------------------------------------------------------------- the step


def _inputs(base_dir: Path, adapter_dir: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    problems = Problems()
    problems.extend(check_task(task))
    manifests = {}
    for parameter, directory, kind in (("base_model", base_dir, "model"),
                                       ("adapter", adapter_dir, "adapter")):
        try:
            manifests[parameter] = read_manifest(directory, parameter=parameter)
        except ValueError as error:
            problems.add(str(error))
            continue
        if manifests[parameter].get("kind") != kind:
            problems.add(f"`{parameter}` must be a {kind} artifact, got kind "
                         f"{manifests[parameter].get('kind')!r}; check the pipeline wiring")
    adapter_task = manifests.get("adapter", {}).get("task")
    if adapter_task and adapter_task != task:
        problems.add(f"`task` is {task!r} but the adapter was trained for {adapter_task!r}; pass "
                     f"task={adapter_task!r}")
    if manifests.get("base_model", {}).get("trust_remote_code"):
        problems.add("`base_model` needs trust_remote_code, which kftune never enables")
    try:
        check_adapter_files(adapter_dir, parameter="adapter")
    except InputError as error:
        problems.extend(error.problems)
    problems.raise_if_any()
    return manifests["base_model"], manifests["adapter"]


def export_model(base_model_dir: str, adapter_dir: str, output_dir: str, *, task: str,
                 config: ExportConfig | None = None,
                 eval_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merges the adapter into the base model, checks the logits, publishes `output_dir`.

    Returns:
        The merged model's manifest.

    Raises:
        InputError: bad inputs or an adapter the merge does not support (all problems at once).
        RuntimeError: when the merged logits do not match base + adapter (nothing is published).
    """
    import torch

    config = config or ExportConfig()
    base_dir, adapter_path = Path(base_model_dir), Path(adapter_dir)
    base_manifest, adapter_manifest = _inputs(base_dir, adapter_path, task)
    task = model_task(task)  # a preference adapter is a causal-LM adapter
    label_names = adapter_manifest.get("label_names")
    model_config = task_config(base_dir, task, label_names, config.dtype)
    shapes, required, prefix, architecture = meta_model(model_config, task)
    with atomic_directory(output_dir) as staging, writing(
            staging, what="the merged model", fix="give the step's volume room for a copy of the "
            "base model in `dtype` (or export in a smaller dtype)"):
        done = merge.merge_weights(
            base_dir, adapter_path, staging, expected=shapes, required=required, prefix=prefix,
            dtype=getattr(torch, config.dtype), max_shard_bytes=merge.parse_size(
                config.max_shard_size))
        merge_peak = merge.peak_rss_bytes()
        LOG.info("merged %d modules into %d shard(s), peak RSS %.0f MiB",
                 len(done["merged_modules"]), len(done["shards"]), merge_peak / 2**20)
        write_metadata(base_dir, adapter_path, staging, model_config, architecture, task)
        check = None
        if config.check_inputs:
            check = check_logits(base_dir, adapter_path, staging, task, label_names,
                                 config.dtype, config.check_inputs)
            LOG.info("logits check: max error %.3g <= tolerance %.3g (adapter effect %.3g)",
                     check["max_abs_error"], check["tolerance"], check["adapter_effect"])
        manifest = _manifest(base_manifest, adapter_manifest, adapter_path, done, check,
                             config, architecture, task, eval_metrics, merge_peak)
        write_manifest(staging, manifest)
    return manifest


def _training_metrics(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    return {key: value for key, value in metrics.items() if not isinstance(value, (list, dict))}


def _manifest(base_manifest: dict[str, Any], adapter_manifest: dict[str, Any], adapter_dir: Path,
              done: dict[str, Any], check: dict[str, Any] | None, config: ExportConfig,
              architecture: str, task: str, eval_metrics: dict[str, Any] | None,
              merge_peak: int) -> dict[str, Any]:
    lora = done["lora_config"]
    return {
        "kind": "model",
        "format": "safetensors",
        "source": base_manifest.get("source"),
        "task": task,
        "architecture": architecture,
        "model_type": base_manifest.get("model_type"),
        "parameters": base_manifest.get("parameters"),
        "dtype": config.dtype,
        "size_bytes": done["size_bytes"],
        "shards": done["shards"],
        "trust_remote_code": False,
        "merged_from": {
            "base_model": {key: base_manifest.get(key)
                           for key in ("source", "architecture", "model_type")},
            "adapter": {"lora": adapter_manifest.get("lora") or {
                "r": lora.r, "lora_alpha": lora.lora_alpha, "use_rslora": lora.use_rslora},
                "merged_modules": len(done["merged_modules"]),
                "replaced_tensors": done["replaced_tensors"]},
            "train_data": adapter_manifest.get("train_data"),
            "training_metrics": _training_metrics(adapter_dir),
            "eval_metrics": dict(eval_metrics or {}),
        },
        "check": check,
        "peak_rss_bytes": {"merge": merge_peak, "total": merge.peak_rss_bytes()},
    }
