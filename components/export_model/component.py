"""KFP interface of the export_model component."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def export_model(
    base_model: Input[Model],
    adapter: Input[Model],
    merged_model: Output[Model],
    task: str = "causal-lm",
    dtype: str = "bfloat16",
    max_shard_size: str = "5GB",
    check_inputs: int = 4,
    eval_metrics: Input[Metrics] = None,
):
    """Merges a LoRA adapter into its base model: full weights in Hugging Face layout.

    The merge streams tensor by tensor (one base shard read at a time, `W += scaling * B @ A`
    in float32, written shard by shard), so it never holds two copies of the model. The merged
    model's logits are then checked against base + adapter (PEFT) on a few fixed texts; a
    mismatch fails the step and publishes nothing. DoRA and other adapters that cannot be merged
    this way are refused with the reason.

    Args:
        base_model: The base model (output of download_model), safetensors weights.
        adapter: The LoRA adapter (output of train_lora).
        merged_model: Output. config.json, sharded safetensors with their index, the tokenizer,
            generation_config.json (causal LM) and manifest.json (base, adapter, training data,
            metrics, the logits check, the merge's peak memory).
        task: `causal-lm`, `sequence-classification` or `preference` (as trained).
        dtype: Dtype of the merged weights: `bfloat16`, `float16` or `float32`.
        max_shard_size: Largest safetensors shard, e.g. `5GB` or `500MB`.
        check_inputs: Fixed texts the logits check runs (0 to 4; 0 skips the check).
        eval_metrics: Optional. The evaluate step's metrics, recorded in the manifest.
    """
    from kftune.components.export_model.export import ExportConfig
    from kftune.components.export_model.export import export_model as run_export

    manifest = run_export(
        base_model_dir=base_model.path,
        adapter_dir=adapter.path,
        output_dir=merged_model.path,
        task=task,
        config=ExportConfig(dtype=dtype, max_shard_size=max_shard_size, check_inputs=check_inputs),
        eval_metrics=dict(eval_metrics.metadata) if eval_metrics is not None else None,
    )
    merged_model.metadata.update({
        "format": "safetensors", "dtype": manifest["dtype"], "task": task,
        "architecture": manifest["architecture"], "size_bytes": manifest["size_bytes"],
    })
