"""The benchmark step on a tiny Llama with a local task over the demo tweets: its numbers are the
harness's own (`lm_eval.simple_evaluate` called directly on the same models and settings), and
`kftune run --param benchmark_tasks=...` runs it end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kftune.components.benchmark import harness
from kftune.components.benchmark.demo_task import DATA_FILE, TASK_NAME, write_sentiment_task
from kftune.components.common import demo
from kftune.components.common.artifacts import write_manifest

pytestmark = pytest.mark.local

SETTINGS = {"num_fewshot": 0, "limit": 12, "batch_size": 4}


class Sink:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.values[metric] = value


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Llama, a LoRA adapter on it (random, non-zero) and the two merged."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("models")
    base = demo.tiny_causal_lm(root / "base")
    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(root / "adapter")
    write_manifest(root / "adapter", {"kind": "adapter", "task": "causal-lm"})
    model.merge_and_unload().save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "merged")
    write_manifest(root / "merged", {"kind": "model", "task": "causal-lm"})
    return {"base": base, "adapter": root / "adapter", "merged": root / "merged"}


def _harness_scores(model_args: dict[str, Any], task_dir: Path) -> dict[str, dict[str, float]]:
    """The harness's own numbers: simple_evaluate called directly, as its docs show."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    output = lm_eval.simple_evaluate(
        model="hf", model_args={**model_args, "dtype": "float32"}, tasks=[TASK_NAME],
        task_manager=TaskManager(include_path=str(task_dir)), device="cpu", **SETTINGS)
    return harness.scores(output)


def test_adapter_numbers_are_the_harness_own(models: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task_dir = write_sentiment_task(tmp_path / "tasks", count=30)
    sink = Sink()
    monkeypatch.chdir(tmp_path)  # a relative task source
    result = harness.run_benchmark(
        base_model_dir=str(models["base"]), tuned_model_dir=str(models["adapter"]),
        tasks=TASK_NAME, task_source="tasks", metrics=sink,
        report_path=str(tmp_path / "report.md"), **SETTINGS)
    monkeypatch.chdir(task_dir)  # where the task's relative data file is
    base = _harness_scores({"pretrained": str(models["base"])}, task_dir)
    tuned = _harness_scores({"pretrained": str(models["base"]), "peft": str(models["adapter"])},
                            task_dir)
    assert result["base"] == base and result["tuned"] == tuned
    assert set(base[TASK_NAME]) == {"acc", "acc_norm", "brier_score"}
    # The adapter changes the model: its probabilities differ from the base model's.
    assert base[TASK_NAME]["brier_score"] != tuned[TASK_NAME]["brier_score"]
    report = (tmp_path / "report.md").read_text()
    for metric, value in base[TASK_NAME].items():
        after = tuned[TASK_NAME][metric]
        assert sink.values[f"base/{TASK_NAME}/{metric}"] == value
        assert sink.values[f"tuned/{TASK_NAME}/{metric}"] == after
        assert sink.values[f"delta/{TASK_NAME}/{metric}"] == after - value
        assert (f"| {TASK_NAME} | {metric} | {value:.4f} | {after:.4f} | {after - value:+.4f} |"
                in report)


def test_merged_model_with_a_remote_task_over_a_dataset_artifact(
    models: dict[str, Path], tmp_path: Path, http_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The task YAML comes over HTTP(S); its rows are a Dataset artifact (data.parquet).
    source = write_sentiment_task(tmp_path / "source", count=30, data_file="data.parquet")
    rows = [json.loads(line) for line in (source / DATA_FILE).read_text().splitlines()]
    data = demo.write_dataset_artifact(tmp_path / "data", rows)
    url = http_server.add(f"{TASK_NAME}.yaml", (source / f"{TASK_NAME}.yaml").read_text())
    result = harness.run_benchmark(
        base_model_dir=str(models["base"]), tuned_model_dir=str(models["merged"]),
        tasks=TASK_NAME, task_source=url, task_data_dir=str(data), workdir=str(tmp_path / "w"),
        **SETTINGS)
    assert result["tuned_kind"] == "merged model"
    monkeypatch.chdir(data)
    assert result["tuned"] == _harness_scores({"pretrained": str(models["merged"])}, source)


def test_kftune_run_with_a_local_benchmark_task(tmp_path: Path) -> None:
    model_dir = demo.tiny_causal_lm(tmp_path / "tiny")
    task_dir = write_sentiment_task(tmp_path / "tasks", count=30)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {number}?", "answer": f" {number}."})
                            + "\n" for number in range(40)))
    output_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(output_dir),
         "--task", "causal-lm", "--model-uri", str(model_dir), "--dataset-uri", str(data),
         "--column-mapping", '{"prompt": "question", "completion": "answer"}',
         "--eval-fraction", "0.1", "--eval-max-examples", "4",
         "--lora-config", '{"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}',
         "--training-parameters", '{"max_steps": 4, "per_device_train_batch_size": 4, '
                                  '"save_strategy": "no"}',
         "--param", f"benchmark_tasks={TASK_NAME}", "--param", f"benchmark_task_source={task_dir}",
         "--param", "benchmark_limit=9", "--param", "benchmark_batch_size=3"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert f"benchmark  : {summary['benchmark_report']}" in completed.stdout
    text = Path(summary["benchmark_report"]).read_text()
    assert f"| {TASK_NAME} | acc |" in text and "at most 9 examples per task" in text
