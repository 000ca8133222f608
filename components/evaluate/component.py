"""KFP interface of the evaluate component."""

from kfp import dsl
from kfp.dsl import (
    HTML,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def evaluate(
    base_model: Input[Model],
    adapter: Input[Model],
    eval_data: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    task: str = "causal-lm",
    batch_size: int = 32,
    max_examples: int = 1000,
):
    """Compares the base model with the fine-tuned one on held-out rows.

    Args:
        base_model: The base model (output of download_model).
        adapter: The LoRA adapter (output of train_lora).
        eval_data: Held-out rows (the eval output of download_dataset); must not overlap training.
        metrics: Output. Base and fine-tuned metrics side by side.
        classification_metrics: Output. Confusion matrix of the fine-tuned model (classification).
        report: Output. A Markdown report: the table and, for causal LM, sample generations.
        html_report: Output. The same comparison as an HTML page: base and fine-tuned side by
            side as bars per metric, the table, and the samples.
        task: `causal-lm`, `sequence-classification` or `preference`.
        batch_size: Examples per forward pass.
        max_examples: Evaluate at most this many held-out rows (a seeded random sample).
    """
    from kftune.components.evaluate.evaluation import run_evaluation

    run_evaluation(
        base_model_dir=base_model.path,
        adapter_dir=adapter.path,
        eval_data_dir=eval_data.path,
        metrics=metrics,
        classification_metrics=classification_metrics,
        report_path=report.path,
        task=task,
        batch_size=batch_size,
        max_examples=max_examples,
        html_report_path=html_report.path,
    )
