"""Run lm-evaluation-harness on a base model and on its fine-tuned version, side by side.

The fine-tuned model is either the LoRA adapter (a kftune adapter artifact, loaded by the harness's
HF model through its `peft=` argument on top of the base model) or a merged model (export_model's
output, loaded as it is). Both go through the harness's own `simple_evaluate` with the same tasks
and settings; its numbers go out unchanged as `base/<task>/<metric>`, `tuned/<task>/<metric>` and
`delta/<task>/<metric>` metrics and as a Markdown table. Relative `data_files` in local task YAMLs
are read from the `task_data` Dataset artifact when there is one, else from beside the YAMLs.

This module never imports kfp; the harness is imported when a benchmark runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.artifacts import MetricsSink, read_manifest
from ..common.errors import InputError, Problems
from ..common.transfer import download_directory
from . import tasks as task_sources

logger = logging.getLogger(__name__)

# simple_evaluate's result keys of a task that are not metrics.
NOT_METRICS = frozenset({"alias", "name", "sample_len", "sample_count", "samples"})


@dataclass(frozen=True)
class BenchmarkConfig:
    """What a benchmark runs: the harness's tasks and its settings, as `simple_evaluate` takes them.

    Raises `InputError` (every problem at once) when a setting or task name is bad, or a task
    needs the Hub where it is unreachable; see `tasks.benchmark_problems`.
    """

    tasks: tuple[str, ...]
    """Task, group or tag names of the harness's registry or of the local task source."""
    num_fewshot: int = 0
    """Few-shot examples in each prompt."""
    limit: int = 100
    """Examples per task (the first ones of its evaluation split)."""
    batch_size: int = 8
    """Requests per forward pass."""
    task_source: str = ""
    """A local task YAML or a directory of them (already fetched)."""


def model_arguments(model_dir: Path, adapter_dir: Path | None, *, device: str,
                    trust_remote_code: bool) -> dict[str, Any]:
    """The `model_args` of the harness's `hf` model for a model directory (and an adapter)."""
    arguments: dict[str, Any] = {
        "pretrained": str(model_dir),
        "dtype": "bfloat16" if device == "cuda" else "float32",
        "trust_remote_code": trust_remote_code,
    }
    if adapter_dir is not None:
        arguments["peft"] = str(adapter_dir)
        # The adapter carries the tokenizer it was trained with (possibly an added pad token).
        if (adapter_dir / "tokenizer_config.json").is_file():
            arguments["tokenizer"] = str(adapter_dir)
    return arguments


def metric_name(key: str) -> str:
    """`acc,none` -> `acc`; `exact_match,strict-match` -> `exact_match_strict-match`."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}_{filter_name}"


def scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each task's metric values (task -> metric -> value) from `simple_evaluate`'s output."""
    table: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if key in NOT_METRICS or "_stderr" in key.partition(",")[0]:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                table.setdefault(task, {})[metric_name(key)] = float(value)
    return table


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _working_directory(path: Path | None) -> Iterator[None]:
    """Runs the block in `path`, where `datasets` resolves relative `data_files`."""
    if path is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def evaluate_model(model_args: dict[str, Any], config: BenchmarkConfig, *, device: str,
                   include_path: str | None) -> dict[str, Any]:
    """The harness's `simple_evaluate` on one model with the benchmark's settings."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(config.tasks),
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        batch_size=config.batch_size,
        device=device,
        task_manager=task_sources.task_manager(include_path),
        log_samples=False,
    )


def _check_artifacts(base_model_dir: Path, tuned_model_dir: Path) -> tuple[dict, dict]:
    """The base and tuned manifests, after checking their kinds (all problems at once)."""
    problems = Problems()
    base = read_manifest(base_model_dir, parameter="base_model")
    tuned = read_manifest(tuned_model_dir, parameter="tuned_model")
    if base.get("kind") != "model":
        problems.add(f"`base_model` must be a kftune model artifact, got kind {base.get('kind')!r}"
                     " in its manifest; pass download_model's `model` output")
    if tuned.get("kind") not in ("adapter", "model"):
        problems.add(f"`tuned_model` must be a kftune adapter or merged model, got kind "
                     f"{tuned.get('kind')!r} in its manifest; pass train_lora's `adapter` or "
                     "export_model's `merged_model`")
    problems.raise_if_any()
    return base, tuned


def _fetch_task_source(task_source: str, workdir: str | None) -> str:
    """A local path for the task source (fetched when remote); '' when there is none."""
    if not task_source:
        return ""
    target = Path(workdir or tempfile.mkdtemp(prefix="kftune-benchmark-")) / "task-source"
    return str(download_directory(task_source, target, parameter="task_source").resolve())


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_report(result: dict[str, Any]) -> str:
    """The Markdown report: per task and metric, base and fine-tuned side by side, and the delta."""
    config: BenchmarkConfig = result["config"]
    lines = [
        "# Benchmark: base vs fine-tuned (lm-evaluation-harness)",
        "",
        f"Tasks: {', '.join(f'`{name}`' for name in config.tasks)}; {config.num_fewshot}-shot, "
        f"at most {config.limit} examples per task, batch {config.batch_size}, on "
        f"{result['device']}. Fine-tuned model: {result['tuned_kind']}.",
        "",
        "| task | metric | base | fine-tuned | delta |",
        "|---|---|---|---|---|",
    ]
    for task, metric, base, tuned in result["rows"]:
        delta = f"{tuned - base:+.4f}" if base is not None and tuned is not None else "–"
        lines.append(f"| {task} | {metric} | {_fmt(base)} | {_fmt(tuned)} | {delta} |")
    return "\n".join(lines) + "\n"


def comparison_rows(base: dict[str, dict[str, float]], tuned: dict[str, dict[str, float]],
                    ) -> list[tuple[str, str, float | None, float | None]]:
    """(task, metric, base value, tuned value) for every metric either model has, sorted."""
    rows = []
    for task in sorted(set(base) | set(tuned)):
        metrics = sorted(set(base.get(task, {})) | set(tuned.get(task, {})))
        for metric in metrics:
            rows.append((task, metric, base.get(task, {}).get(metric),
                         tuned.get(task, {}).get(metric)))
    return rows


def publish(result: dict[str, Any], metrics: MetricsSink | None, report_path: str | None) -> None:
    """Writes the metrics (`base/`, `tuned/`, `delta/<task>/<metric>`) and the report."""
    if metrics is not None:
        for task, metric, base, tuned in result["rows"]:
            for prefix, value in (("base", base), ("tuned", tuned)):
                if value is not None:
                    metrics.log_metric(f"{prefix}/{task}/{metric}", value)
            if base is not None and tuned is not None:
                metrics.log_metric(f"delta/{task}/{metric}", tuned - base)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(render_report(result))


def _checked_config(tasks: str | Sequence[str], source: str, model_task: str, *,
                    num_fewshot: int, limit: int, batch_size: int) -> BenchmarkConfig:
    """The benchmark's config after `benchmark_problems` (raised all at once)."""
    names = task_sources.parse_tasks(tasks)
    problems = [] if names else [
        f"`tasks` must name at least one task of the harness, got {tasks!r}; e.g. 'hellaswag' "
        "or the name of a task in `task_source`"]
    problems += task_sources.benchmark_problems(
        names, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, task_source=source,
        model_task=model_task)
    if problems:
        raise InputError(problems)
    return BenchmarkConfig(tasks=names, num_fewshot=num_fewshot, limit=limit,
                           batch_size=batch_size, task_source=source)


def run_benchmark(
    *,
    base_model_dir: str,
    tuned_model_dir: str,
    tasks: str | Sequence[str],
    num_fewshot: int = 0,
    limit: int = 100,
    batch_size: int = 8,
    task_source: str = "",
    task_data_dir: str | None = None,
    metrics: MetricsSink | None = None,
    report_path: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Runs the harness's tasks on the base model and on the fine-tuned one.

    Args:
        base_model_dir: Model artifact directory (download_model's output).
        tuned_model_dir: The adapter (train_lora's output) or the merged model (export_model's).
        tasks: Harness task, group or tag names (comma-separated, or a list).
        num_fewshot: Few-shot examples per prompt.
        limit: Examples per task.
        batch_size: Requests per forward pass.
        task_source: URI of a task YAML or a directory of them, for tasks not in the registry.
        task_data_dir: A Dataset artifact where local tasks' relative `data_files` are read.
        metrics: Receives `base/<task>/<metric>`, `tuned/...` and `delta/...` scalars.
        report_path: Where to write the Markdown report.
        workdir: Where a remote task source is downloaded (default: a new temporary directory).

    Returns:
        `base` and `tuned` (task -> metric -> value), `rows` (the report's table), `config`,
        `device` and `tuned_kind`.

    Raises:
        InputError: every problem with the settings, tasks and artifacts, before any model loads.
    """
    base_path, tuned_path = Path(base_model_dir), Path(tuned_model_dir)
    base_manifest, tuned_manifest = _check_artifacts(base_path, tuned_path)
    model_task = tuned_manifest.get("task") or base_manifest.get("task") or task_sources.CAUSAL_LM
    source = _fetch_task_source(task_source, workdir)
    config = _checked_config(tasks, source, model_task, num_fewshot=num_fewshot, limit=limit,
                             batch_size=batch_size)
    local = task_sources.local_source(source, parameter="task_source")
    data_root = Path(task_data_dir) if task_data_dir else (
        None if local is None else local if local.is_dir() else local.parent)
    adapter = tuned_path if tuned_manifest["kind"] == "adapter" else None
    device = _device()
    trust = bool(base_manifest.get("trust_remote_code", False))
    models = {
        "base": model_arguments(base_path, None, device=device, trust_remote_code=trust),
        "tuned": model_arguments(base_path if adapter else tuned_path, adapter, device=device,
                                 trust_remote_code=trust),
    }
    found: dict[str, dict[str, dict[str, float]]] = {}
    with _working_directory(data_root):
        for label, model_args in models.items():
            logger.info("benchmark: %s model on %s (%d-shot, limit %d, batch %d, %s)", label,
                        ", ".join(config.tasks), config.num_fewshot, config.limit,
                        config.batch_size, device)
            started = time.monotonic()
            output = evaluate_model(model_args, config, device=device,
                                    include_path=task_sources.include_directory(local))
            found[label] = scores(output)
            logger.info("benchmark: %s model done in %.0f s: %s", label,
                        time.monotonic() - started, found[label])
    result = {"config": config, "base": found["base"], "tuned": found["tuned"], "device": device,
              "tuned_kind": "LoRA adapter on the base" if adapter else "merged model",
              "rows": comparison_rows(found["base"], found["tuned"])}
    publish(result, metrics, report_path)
    return result
