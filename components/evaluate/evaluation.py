"""Compare a base model with its LoRA fine-tuned version on held-out rows.

Reads three kftune artifacts (the base Model, the adapter, the eval Dataset), refuses eval rows that
overlap the training rows (checked from the manifests alone), runs both models over the same rows
and reports the metrics side by side:

- sequence-classification: accuracy, macro-F1, per-class precision/recall, confusion matrix. The
  base model's classification head is freshly initialised (the pretrained checkpoint has none), so
  its numbers are the honest "before fine-tuning" baseline; the adapter carries the trained head
  (PEFT `modules_to_save`).
- causal-lm: mean loss and perplexity over completion tokens only where rows have a prompt (all
  tokens for plain text), plus a few prompt -> base / tuned generations for the report.
- preference: on held-out prompt/chosen/rejected pairs, the preference accuracy (how often the
  model gives the chosen completion the higher log-probability), and the implicit-reward
  accuracy and mean reward margin (`beta` x the log ratio to the reference policy, the base model:
  both 0 for the base itself), plus a few generations.

The base model is loaded once; the base numbers come from the same PEFT model with its adapter
disabled, so a large model is never held in memory twice. This module never imports kfp: the metric
outputs are any objects with KFP's `log_metric` / `log_confusion_matrix` methods.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..common.artifacts import DATA_FILE, MetricsSink, check_adapter_files, read_manifest
from ..common.errors import InputError, Problems
from ..common.report import evaluation_report
from ..common.tasks import IGNORE_INDEX, check_task
from ..common.tokenization import check_columns, tokenize_rows
from ..common.tracking import log_to_training_run

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 256
GENERATION_SAMPLES = 3
SAMPLE_SEED = 0
GENERATION_MAX_NEW_TOKENS = 48


class ConfusionMatrixSink(Protocol):
    """What the evaluation writes the confusion matrix to (KFP's `ClassificationMetrics` fits)."""

    def log_confusion_matrix(self, categories: list[str], matrix: list[list[int]]) -> None:
        """Records a confusion matrix: rows are true labels, columns predicted labels."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to evaluate."""

    task: str
    """`causal-lm`, `sequence-classification` or `preference`."""
    batch_size: int = 32
    """Examples per forward pass."""
    max_examples: int = 1000
    """Evaluate at most this many held-out rows (a seeded random sample of them)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Tokens per example; longer examples are truncated."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.extend(check_task(self.task))
        if self.batch_size < 1:
            problems.add(f"`batch_size` must be >= 1, got {self.batch_size}; try 32")
        if self.max_examples < 1:
            problems.add(f"`max_examples` must be >= 1, got {self.max_examples}; try 1000")
        if self.max_length < 8:
            problems.add(f"`max_length` must be >= 8, got {self.max_length}; try 256")
        problems.raise_if_any()


# --------------------------------------------------------------------------- manifests


def _base_split(split: str | None) -> str:
    """`train[:3000]` -> `train`: the split that row positions are counted in."""
    return (split or "").split("[", 1)[0].strip()


def _same_source(train_source: dict[str, Any], eval_source: dict[str, Any]) -> bool:
    def key(source: dict[str, Any]) -> tuple[str, str, str, str]:
        revision = source.get("resolved_revision") or source.get("revision") or ""
        return (
            str(source.get("uri") or ""),
            str(revision),
            str(source.get("subset") or ""),
            _base_split(source.get("split")),
        )

    return key(train_source) == key(eval_source)


def _normalize_ranges(ranges: Any) -> list[tuple[int, int]]:
    return sorted((int(start), int(stop)) for start, stop in ranges or [] if int(stop) > int(start))


def overlapping_rows(train_ranges: Any, eval_ranges: Any) -> int:
    """Number of row positions in both lists of half-open `[start, stop)` ranges."""
    train = _normalize_ranges(train_ranges)
    evaluated = _normalize_ranges(eval_ranges)
    count = 0
    i = j = 0
    while i < len(train) and j < len(evaluated):
        start = max(train[i][0], evaluated[j][0])
        stop = min(train[i][1], evaluated[j][1])
        count += max(0, stop - start)
        if train[i][1] < evaluated[j][1]:
            i += 1
        else:
            j += 1
    return count


def check_disjoint(adapter_manifest: dict[str, Any], eval_manifest: dict[str, Any]) -> list[str]:
    """Problems when the eval rows overlap the rows the adapter was trained on.

    Both manifests record where their rows come from (`source`: URI, revision, subset, split) and
    which positions of the base split they hold (`row_ranges`). Rows from a different source,
    revision, subset or base split cannot overlap.
    """
    train_data = adapter_manifest.get("train_data") or {}
    train_source = train_data.get("source") or {}
    eval_source = eval_manifest.get("source") or {}
    if not train_source or not eval_source:
        return []
    if train_data.get("fingerprint") and train_data.get("fingerprint") == eval_manifest.get(
        "fingerprint"
    ):
        return [
            "`eval_data` is the training data itself (same fingerprint "
            f"{eval_manifest.get('fingerprint')!r}); pass the `eval_data` output of "
            "download_dataset, not `train_data`"
        ]
    if not _same_source(train_source, eval_source):
        return []
    shared = overlapping_rows(train_data.get("row_ranges"), eval_manifest.get("row_ranges"))
    if shared == 0:
        return []
    return [
        f"`eval_data` overlaps the adapter's training rows: {shared} row(s) of "
        f"{eval_source.get('uri')!r} split {_base_split(eval_source.get('split'))!r} are in both "
        f"(train row_ranges {train_data.get('row_ranges')}, eval row_ranges "
        f"{eval_manifest.get('row_ranges')}); hold rows out with download_dataset's "
        "`eval_fraction` or `eval_split` so that metrics measure held-out data"
    ]


# --------------------------------------------------------------------------- metrics math


def classification_report(
    labels: Sequence[int], predictions: Sequence[int], num_labels: int
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    A class with no predictions has precision 0; one with no true rows has recall 0 (the
    scikit-learn `zero_division=0` convention). Macro-F1 averages over all `num_labels` classes.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for truth, predicted in zip(labels, predictions, strict=True):
        matrix[int(truth)][int(predicted)] += 1
    total = len(labels)
    correct = sum(matrix[index][index] for index in range(num_labels))
    precision, recall, f1 = [], [], []
    for index in range(num_labels):
        predicted_as = sum(matrix[row][index] for row in range(num_labels))
        actually = sum(matrix[index])
        hits = matrix[index][index]
        class_precision = hits / predicted_as if predicted_as else 0.0
        class_recall = hits / actually if actually else 0.0
        denominator = class_precision + class_recall
        precision.append(class_precision)
        recall.append(class_recall)
        f1.append(2 * class_precision * class_recall / denominator if denominator else 0.0)
    return {
        "accuracy": correct / total if total else 0.0,
        "macro_f1": sum(f1) / num_labels if num_labels else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": matrix,
    }


def perplexity(mean_loss: float) -> float:
    """`exp(loss)`, capped so that a diverged model reports a large finite number."""
    return math.exp(min(mean_loss, 50.0))


def _metric_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_") or "class"


# --------------------------------------------------------------------------- model I/O


def _device_and_dtype() -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def _load_tokenizer(adapter_dir: Path, base_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    # The adapter carries the tokenizer it was trained with (possibly with an added pad token).
    source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_models(
    task: str,
    base_model_dir: Path,
    adapter_dir: Path,
    num_labels: int | None,
    label_names: list[str] | None,
    trust_remote_code: bool,
) -> Any:
    """The base model wrapped with the adapter; `disable_adapter()` gives the base model back."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    device, dtype = _device_and_dtype()
    # The base classification head is randomly initialised: seed it so reruns agree.
    torch.manual_seed(0)
    if task == "sequence-classification":
        extra: dict[str, Any] = {"num_labels": num_labels}
        if label_names:
            extra["id2label"] = dict(enumerate(label_names))
            extra["label2id"] = {name: index for index, name in enumerate(label_names)}
        base = AutoModelForSequenceClassification.from_pretrained(
            str(base_model_dir), dtype=dtype, trust_remote_code=trust_remote_code, **extra
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(
            str(base_model_dir), dtype=dtype, trust_remote_code=trust_remote_code
        )
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.to(device)
    model.eval()
    return model


# --------------------------------------------------------------------------- data


def _read_rows(eval_data_dir: Path, max_examples: int) -> list[dict[str, Any]]:
    """The held-out rows; at most `max_examples` of them, a seeded random sample in source order.

    Held-out rows keep the order of the source, which may be sorted (by label, say): the first
    `max_examples` could all be one class, so a larger set is sampled instead of cut.
    """
    import pyarrow.parquet as pq

    path = eval_data_dir / DATA_FILE
    if not path.is_file():
        raise InputError(
            [
                f"`eval_data` must hold {DATA_FILE}, got {str(eval_data_dir)!r} without it; "
                "pass the `eval_data` output of download_dataset"
            ]
        )
    table = pq.read_table(path)
    if table.num_rows > max_examples:
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(table.num_rows), max_examples))
        table = table.take(chosen)
    return table.to_pylist()


def _render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, str]:
    """Splits a chat into (prompt, completion): the completion is the last assistant turn."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if messages and messages[-1]["role"] == "assistant":
        context, answer = messages[:-1], messages[-1]["content"]
    else:
        context, answer = messages, ""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
        return prompt, answer + (tokenizer.eos_token or "")
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in context) + "assistant: "
    return prompt, answer


def lm_segments(tokenizer: Any, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt, completion) of a causal-LM row, for the generation samples; no prompt for text."""
    if row.get("messages"):
        return _render_messages(tokenizer, row["messages"])
    if row.get("completion") is not None and row.get("prompt") is not None:
        return str(row["prompt"]), str(row["completion"])
    if row.get("text") is not None:
        return "", str(row["text"])
    raise InputError(
        [
            "`eval_data` rows for causal-lm need `text`, `prompt` + `completion` or `messages`, "
            f"got columns {sorted(row)}; set download_dataset's `column_mapping`"
        ]
    )


# --------------------------------------------------------------------------- evaluation loops

# How often a progress line is logged while a model is evaluated (and once at the end).
PROGRESS_SECONDS = 5.0


class Progress:
    """Logs `<what>: <done>/<total> rows (<percent>), <seconds> s` now and then, and at the end."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.started = self.last = time.monotonic()

    def advance(self, rows: int) -> None:
        """Counts `rows` more rows evaluated."""
        self.done += rows
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS or self.done >= self.total:
            self.last = now
            logger.info("%s: %d/%d rows (%.0f%%), %.0f s", self.what, self.done, self.total,
                        100 * self.done / max(self.total, 1), now - self.started)


def _predict_classes(
    model: Any, tokenizer: Any, texts: list[str], config: EvalConfig, what: str = "evaluating"
) -> list[int]:
    import torch

    device = next(model.parameters()).device
    predictions: list[int] = []
    progress = Progress(what, len(texts))
    with torch.inference_mode():
        for start in range(0, len(texts), config.batch_size):
            batch = tokenizer(
                texts[start : start + config.batch_size],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            ).to(device)
            logits = model(**batch).logits
            predictions.extend(int(value) for value in logits.argmax(dim=-1).tolist())
            progress.advance(len(batch["input_ids"]))
    return predictions


def _padded(batch: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
            device: Any) -> tuple[Any, Any, Any]:
    """`batch`'s (ids, labels) rows right-padded: (input ids, labels, attention mask) on `device`.

    Padding carries `pad_id`, no label (`IGNORE_INDEX`) and no attention.
    """
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
        attention[row, : len(ids)] = 1
    return input_ids.to(device), labels.to(device), attention.to(device)


def _lm_loss(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    pad_id: int,
    config: EvalConfig,
    what: str = "evaluating",
) -> tuple[float, int]:
    """Mean token loss over the target tokens, and how many tokens were scored.

    `examples` are (input ids, labels) with labels already aligned to the next token, as the
    trainer builds them (`kftune.components.common.tokenization.tokenize_rows`).
    """
    import torch

    device = next(model.parameters()).device
    total_loss = 0.0
    total_tokens = 0
    progress = Progress(what, len(examples))
    with torch.inference_mode():
        for start in range(0, len(examples), config.batch_size):
            batch = examples[start : start + config.batch_size]
            input_ids, labels, attention = _padded(batch, pad_id, device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            flat_labels = labels.reshape(-1)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), flat_labels, ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total_loss += float(loss)
            total_tokens += int((flat_labels != IGNORE_INDEX).sum())
            progress.advance(len(batch))
    return (total_loss / total_tokens if total_tokens else float("nan")), total_tokens


def _generate(model: Any, tokenizer: Any, prompt: str) -> str:
    import torch

    device = next(model.parameters()).device
    encoded = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            max_new_tokens=GENERATION_MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


# --------------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_report(result: dict[str, Any]) -> str:
    """The Markdown report: the base vs fine-tuned table, then task-specific detail."""
    lines = [
        "# Evaluation: base vs fine-tuned",
        "",
        f"Task: `{result['task']}`. Held-out rows evaluated: {result['examples']}.",
        "",
        "| metric | base | fine-tuned | change |",
        "|---|---|---|---|",
    ]
    for name in result["headline"]:
        base, tuned = result["base"][name], result["tuned"][name]
        lines.append(f"| {name} | {_fmt(base)} | {_fmt(tuned)} | {tuned - base:+.4f} |")
    if result["task"] == "sequence-classification":
        names = result["label_names"]
        lines += ["", "## Per class (fine-tuned)", "", "| class | precision | recall | F1 |"]
        lines.append("|---|---|---|---|")
        tuned = result["tuned"]
        for index, name in enumerate(names):
            lines.append(
                f"| {name} | {tuned['precision'][index]:.4f} | {tuned['recall'][index]:.4f} | "
                f"{tuned['f1'][index]:.4f} |"
            )
        lines += ["", "## Confusion matrix (fine-tuned; rows = true, columns = predicted)", ""]
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for name, row in zip(names, tuned["confusion_matrix"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(cell) for cell in row) + " |")
        lines += [
            "",
            "The base model's classification head is freshly initialised (the pretrained "
            "checkpoint has none): its row is the before-fine-tuning baseline.",
        ]
    else:
        if result["task"] == "preference":
            lines += ["", "Preference accuracy: how often the model gives the chosen completion "
                      "the higher log-probability. Rewards are `beta` x the log ratio to the base "
                      f"model (beta {result['beta']}), so the base model's are 0."]
        else:
            lines += ["", f"Scored tokens: {result['tokens']} (completion tokens only where rows "
                      "have a prompt)."]
        if result.get("samples"):
            lines += ["", "## Samples (greedy)", ""]
            for number, sample in enumerate(result["samples"], start=1):
                lines += [
                    f"### Sample {number}",
                    "",
                    "**Prompt**",
                    "",
                    "```",
                    sample["prompt"],
                    "```",
                    "",
                    "**Base**",
                    "",
                    "```",
                    sample["base"],
                    "```",
                    "",
                    "**Fine-tuned**",
                    "",
                    "```",
                    sample["tuned"],
                    "```",
                    "",
                ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def _max_length_from(adapter_manifest: dict[str, Any]) -> int:
    training = adapter_manifest.get("training") or {}
    parameters = training.get("training_parameters", training)
    for key in ("max_seq_length", "max_length"):
        value = parameters.get(key) if isinstance(parameters, dict) else None
        if isinstance(value, int | float) and value >= 8:
            return int(value)
    return DEFAULT_MAX_LENGTH


def run_evaluation(
    *,
    base_model_dir: str,
    adapter_dir: str,
    eval_data_dir: str,
    metrics: MetricsSink | None = None,
    classification_metrics: ConfusionMatrixSink | None = None,
    report_path: str | None = None,
    task: str = "causal-lm",
    batch_size: int = 32,
    max_examples: int = 1000,
    html_report_path: str | None = None,
) -> dict[str, Any]:
    """Evaluates the base model and the fine-tuned one on the same held-out rows.

    Args:
        base_model_dir: Model artifact directory (download_model output).
        adapter_dir: Adapter artifact directory (train_lora output).
        eval_data_dir: Dataset artifact directory holding held-out rows.
        metrics: Receives `base_<metric>` and `tuned_<metric>` scalars.
        classification_metrics: Receives the fine-tuned model's confusion matrix (classification).
        report_path: Where to write the Markdown report.
        task: `causal-lm`, `sequence-classification` or `preference`.
        batch_size: Examples per forward pass.
        max_examples: Evaluate at most this many held-out rows (a seeded random sample).
        html_report_path: Where to write the HTML report (base vs fine-tuned as bars).

    Returns:
        The result: `base` and `tuned` metric dicts, `headline` (the metric names of the table),
        `primary` (the metric that decides "better") and `higher_is_better`.

    Raises:
        InputError: bad parameters, an artifact of the wrong kind, a task mismatch, eval rows
            that overlap the training rows, or eval rows without the task's columns.
        ValueError: an input directory without a readable `manifest.json`.
    """
    base_path, adapter_path = Path(base_model_dir), Path(adapter_dir)
    eval_path = Path(eval_data_dir)
    model_manifest, adapter_manifest, eval_manifest = _check_inputs(
        base_path, adapter_path, eval_path, task=task, batch_size=batch_size,
        max_examples=max_examples,
    )
    config = EvalConfig(
        task=task,
        batch_size=batch_size,
        max_examples=max_examples,
        max_length=_max_length_from(adapter_manifest),
    )
    rows = _read_eval_rows(eval_path, config)
    num_labels, label_names = _label_space(task, rows, adapter_manifest, eval_manifest)
    logger.info(
        "Evaluating %s on %d held-out rows (batch %d, max length %d)",
        task,
        len(rows),
        config.batch_size,
        config.max_length,
    )
    tokenizer = _load_tokenizer(adapter_path, base_path)
    model = _load_models(
        task,
        base_path,
        adapter_path,
        num_labels,
        label_names,
        bool(model_manifest.get("trust_remote_code", False)),
    )
    result: dict[str, Any] = {"task": task, "examples": len(rows)}
    result.update(_compare(task, model, tokenizer, rows, config, (num_labels, label_names),
                           adapter_manifest))
    _publish(result, metrics, classification_metrics, report_path, html_report_path)
    log_to_training_run(adapter_path, {f"eval_{side}_{name}": float(result[side][name])
                                       for side in ("base", "tuned")
                                       for name in result["headline"]})
    base_value, tuned_value = result["base"][result["primary"]], result["tuned"][result["primary"]]
    logger.info("%s: base %.4f -> fine-tuned %.4f", result["primary"], base_value, tuned_value)
    return result


def _compare(task: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]],
             config: EvalConfig, labels: tuple[Any, Any],
             adapter_manifest: dict[str, Any]) -> dict[str, Any]:
    """The task's comparison of the base and the fine-tuned model on `rows`."""
    if task == "sequence-classification":
        return {**_compare_classifiers(model, tokenizer, rows, config, labels[0]),
                "label_names": labels[1]}
    if task == "preference":
        return _compare_preferences(model, tokenizer, rows, config, _beta_from(adapter_manifest))
    return _compare_language_models(model, tokenizer, rows, config)


def _check_inputs(
    base_path: Path, adapter_path: Path, eval_path: Path, *, task: str, batch_size: int,
    max_examples: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The three manifests, after every check that needs no model (all problems at once)."""
    problems = Problems()
    try:
        EvalConfig(task=task, batch_size=batch_size, max_examples=max_examples)
    except InputError as error:
        problems.extend(error.problems)
    model_manifest = read_manifest(base_path, parameter="base_model")
    adapter_manifest = read_manifest(adapter_path, parameter="adapter")
    eval_manifest = read_manifest(eval_path, parameter="eval_data")
    for parameter, manifest, kind in (
        ("base_model", model_manifest, "model"),
        ("adapter", adapter_manifest, "adapter"),
        ("eval_data", eval_manifest, "dataset"),
    ):
        if manifest.get("kind") != kind:
            problems.add(
                f"`{parameter}` must be a kftune {kind} artifact, got kind "
                f"{manifest.get('kind')!r} in {parameter}'s manifest; check the pipeline wiring"
            )
    adapter_task = adapter_manifest.get("task")
    if adapter_task and adapter_task != task:
        problems.add(
            f"`task` must match the adapter's task {adapter_task!r}, got {task!r}; pass "
            f"task={adapter_task!r}"
        )
    problems.extend(check_disjoint(adapter_manifest, eval_manifest))
    try:
        check_adapter_files(adapter_path, parameter="adapter")
    except InputError as error:
        problems.extend(error.problems)
    problems.raise_if_any()
    return model_manifest, adapter_manifest, eval_manifest


def _read_eval_rows(eval_path: Path, config: EvalConfig) -> list[dict[str, Any]]:
    """The held-out rows (at most `max_examples`), with the columns the task needs."""
    rows = _read_rows(eval_path, config.max_examples)
    if not rows:
        raise InputError(
            [
                f"`eval_data` must hold at least one row, got 0 in {str(eval_path)!r}; set "
                "download_dataset's `eval_fraction` > 0 or an `eval_split`"
            ]
        )
    # The trainer's column rules, worded for this step's input.
    problems = Problems()
    problems.extend(
        problem.replace("`train_data`", "`eval_data`")
        for problem in check_columns(config.task, list(rows[0]), num_labels=1)
    )
    problems.raise_if_any()
    return rows


def _label_space(
    task: str, rows: list[dict[str, Any]], adapter_manifest: dict[str, Any],
    eval_manifest: dict[str, Any],
) -> tuple[Any, Any]:
    """(number of classes, their names) for classification, from the manifests or the rows."""
    num_labels = adapter_manifest.get("num_labels") or eval_manifest.get("num_labels")
    label_names = adapter_manifest.get("label_names") or eval_manifest.get("label_names")
    if task == "sequence-classification":
        if not num_labels:
            num_labels = max(int(row["label"]) for row in rows) + 1
        num_labels = int(num_labels)
        label_names = [str(name) for name in label_names or range(num_labels)]
    return num_labels, label_names


def _compare_classifiers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: EvalConfig, num_labels: int
) -> dict[str, Any]:
    """Base (adapter off) and fine-tuned predictions on the same rows, as classification reports."""
    texts = [str(row["text"]) for row in rows]
    labels = [int(row["label"]) for row in rows]
    with model.disable_adapter():
        base_predictions = _predict_classes(model, tokenizer, texts, config, "base model")
    tuned_predictions = _predict_classes(model, tokenizer, texts, config, "fine-tuned model")
    return {
        "base": classification_report(labels, base_predictions, num_labels),
        "tuned": classification_report(labels, tuned_predictions, num_labels),
        "headline": ["accuracy", "macro_f1"],
        "primary": "accuracy",
        "higher_is_better": True,
    }


def _compare_language_models(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], config: EvalConfig
) -> dict[str, Any]:
    """Base and fine-tuned loss and perplexity on the completion tokens, and a few samples."""
    # The same tokenization as training: chat template, EOS, completion-only targets.
    try:
        tokenized = tokenize_rows("causal-lm", rows, tokenizer, config.max_length)
    except InputError as error:  # the trainer's wording names its own input
        raise InputError(
            [problem.replace("`train_data`", "`eval_data`") for problem in error.problems]
        ) from None
    examples = [(list(example.input_ids), list(example.labels)) for example in tokenized]
    segments = [lm_segments(tokenizer, row) for row in rows]
    with model.disable_adapter():
        base_loss, tokens = _lm_loss(model, examples, tokenizer.pad_token_id, config, "base model")
    tuned_loss, _ = _lm_loss(model, examples, tokenizer.pad_token_id, config, "fine-tuned model")
    samples = []
    for prompt, _ in [segment for segment in segments if segment[0]][:GENERATION_SAMPLES]:
        with model.disable_adapter():
            base_text = _generate(model, tokenizer, prompt)
        samples.append(
            {"prompt": prompt, "base": base_text, "tuned": _generate(model, tokenizer, prompt)}
        )
    return {
        "base": {"eval_loss": base_loss, "perplexity": perplexity(base_loss)},
        "tuned": {"eval_loss": tuned_loss, "perplexity": perplexity(tuned_loss)},
        "headline": ["eval_loss", "perplexity"],
        "primary": "perplexity",
        "higher_is_better": False,
        "tokens": tokens,
        "samples": samples,
    }


def _publish(
    result: dict[str, Any],
    metrics: MetricsSink | None,
    classification_metrics: ConfusionMatrixSink | None,
    report_path: str | None,
    html_report_path: str | None = None,
) -> None:
    if metrics is not None:
        for side in ("base", "tuned"):
            for name in result["headline"]:
                metrics.log_metric(f"{side}_{name}", float(result[side][name]))
        if result["task"] == "sequence-classification":
            for index, name in enumerate(result["label_names"]):
                key = _metric_key(name)
                for side in ("base", "tuned"):
                    metrics.log_metric(
                        f"{side}_precision_{key}", float(result[side]["precision"][index])
                    )
                    metrics.log_metric(f"{side}_recall_{key}", float(result[side]["recall"][index]))
        elif "tokens" in result:
            metrics.log_metric("eval_tokens", float(result["tokens"]))
        metrics.log_metric("eval_examples", float(result["examples"]))
    if classification_metrics is not None and result["task"] == "sequence-classification":
        classification_metrics.log_confusion_matrix(
            list(result["label_names"]), result["tuned"]["confusion_matrix"]
        )
    if report_path:
        path = Path(report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_report(result))
    if html_report_path:
        path = Path(html_report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(evaluation_report(result))


# --------------------------------------------------------------------------- preference


def _beta_from(adapter_manifest: dict[str, Any]) -> float:
    """The `beta` the adapter was trained with (the implicit rewards' scale); TRL's 0.1 else."""
    training = adapter_manifest.get("training") or {}
    beta = training.get("beta") if isinstance(training, dict) else None
    return float(beta) if isinstance(beta, int | float) and beta > 0 else 0.1


def _pair_log_probs(model: Any, examples: list[Any], pad_id: int, config: EvalConfig,
                    what: str) -> list[float]:
    """Summed completion log-probabilities of every sequence (chosen, rejected interleaved)."""
    import torch

    device = next(model.parameters()).device
    sequences: list[tuple[list[int], list[int]]] = []
    for example in examples:
        for part in (slice(None, example.split), slice(example.split, None)):
            sequences.append((list(example.input_ids[part]), list(example.labels[part])))
    log_probs: list[float] = []
    progress = Progress(what, len(examples))
    with torch.inference_mode():
        for start in range(0, len(sequences), 2 * config.batch_size):
            batch = sequences[start : start + 2 * config.batch_size]
            input_ids, labels, attention = _padded(batch, pad_id, device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            token = -torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            log_probs.extend(float(value) for value in token.sum(dim=1))
            progress.advance(len(batch) // 2)
    return log_probs


def preference_metrics(policy: Sequence[float], reference: Sequence[float],
                       beta: float) -> dict[str, float]:
    """Preference accuracy, implicit-reward accuracy and mean margin of interleaved log-probs."""
    pairs = len(policy) // 2
    if not pairs:
        return {"preference_accuracy": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    preferred = sum(policy[2 * i] > policy[2 * i + 1] for i in range(pairs))
    margins = [beta * ((policy[2 * i] - reference[2 * i])
                       - (policy[2 * i + 1] - reference[2 * i + 1])) for i in range(pairs)]
    return {"preference_accuracy": preferred / pairs,
            "reward_accuracy": sum(margin > 0 for margin in margins) / pairs,
            "reward_margin": sum(margins) / pairs}


def _compare_preferences(model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                         config: EvalConfig, beta: float) -> dict[str, Any]:
    """Base (the reference policy) and fine-tuned scores of the held-out pairs, and samples."""
    try:
        examples = tokenize_rows("preference", rows, tokenizer, config.max_length)
    except InputError as error:  # the trainer's wording names its own input
        raise InputError(
            [problem.replace("`train_data`", "`eval_data`") for problem in error.problems]
        ) from None
    with model.disable_adapter():
        base = _pair_log_probs(model, examples, tokenizer.pad_token_id, config, "base model")
    tuned = _pair_log_probs(model, examples, tokenizer.pad_token_id, config, "fine-tuned model")
    samples = []
    for row in rows[:GENERATION_SAMPLES]:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else _render_messages(
            tokenizer, list(row["prompt"]))[0]
        with model.disable_adapter():
            base_text = _generate(model, tokenizer, prompt)
        samples.append(
            {"prompt": prompt, "base": base_text, "tuned": _generate(model, tokenizer, prompt)})
    return {
        "base": preference_metrics(base, base, beta),
        "tuned": preference_metrics(tuned, base, beta),
        "headline": ["preference_accuracy", "reward_accuracy", "reward_margin"],
        "primary": "preference_accuracy",
        "higher_is_better": True,
        "beta": beta,
        "samples": samples,
    }
