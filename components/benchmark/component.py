"""KFP interface of the benchmark component."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def benchmark(
    base_model: Input[Model],
    tuned_model: Input[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    tasks: str,
    num_fewshot: int = 0,
    limit: int = 100,
    batch_size: int = 8,
    task_source: str = "",
    task_data: Input[Dataset] = None,
):
    """Runs lm-evaluation-harness tasks on the base model and on the fine-tuned one.

    Both models go through the harness's `simple_evaluate` with the same tasks and settings, on
    the GPU when the step has one, else on CPU. Bad settings, unknown task names (with the
    closest registered names) and tasks that need an unreachable Hugging Face Hub fail the step
    before any model is loaded.

    Args:
        base_model: The base model (output of download_model); a causal LM.
        tuned_model: The LoRA adapter (output of train_lora, run through the harness's PEFT
            support) or the merged model (output of export_model).
        metrics: Output. `base/<task>/<metric>`, `tuned/<task>/<metric>` and
            `delta/<task>/<metric>` for every metric the harness reports.
        report: Output. A Markdown table: per task and metric, base and fine-tuned side by side
            with the delta.
        tasks: Harness task, group or tag names, comma-separated (e.g. `hellaswag,arc_easy`), or
            names of tasks in `task_source`. Registry tasks read their data from the Hub.
        num_fewshot: Few-shot examples in each prompt.
        limit: Examples per task (the first ones of the task's evaluation split).
        batch_size: Requests per forward pass.
        task_source: A task YAML or a directory of them (path, `file://`, `pkg://`, `pvc://`,
            `s3://`, `gs://`, `https://`) for local tasks, e.g. on an air-gapped cluster.
        task_data: Optional. A Dataset artifact whose files the local task YAMLs name by
            relative `data_files` (e.g. `data.parquet`); without it they are read beside the
            YAMLs.
    """
    import logging

    from kftune.components.benchmark.harness import run_benchmark

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_benchmark(
        base_model_dir=base_model.path,
        tuned_model_dir=tuned_model.path,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        task_source=task_source,
        task_data_dir=task_data.path if task_data is not None else None,
        metrics=metrics,
        report_path=report.path,
    )
