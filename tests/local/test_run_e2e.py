"""`kftune run` end to end on CPU with the demo defaults: fine-tuned must beat the base model."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.local


def test_kftune_run_demo_improves_on_held_out_data(kftune_demo_run) -> None:
    completed, output_dir = kftune_demo_run  # the demo defaults (merged too: tests/local/conftest)
    tail = (completed.stdout + completed.stderr)[-6000:]
    assert completed.returncode == 0, tail
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["primary_metric"] == "accuracy"
    assert summary["tuned"]["accuracy"] > summary["base"]["accuracy"] + 0.1, summary
    assert summary["tuned"]["macro_f1"] > summary["base"]["macro_f1"], summary
    assert summary["improved"] is True
    assert (Path(summary["adapter_dir"]) / "adapter_config.json").is_file()
    assert Path(summary["report"]).is_file()
    assert "fine-tuned" in completed.stdout and "train time" in completed.stdout
    # The train step's HTML report: one loss point per logged step (1, 10, 20, ..., 60).
    page = Path(summary["training_report"]).read_text()
    loss = re.search(r'data-name="train loss" points="([^"]*)"', page).group(1).split()
    assert len(loss) == 7


def test_kftune_run_failing_step_is_one_line_naming_step_and_cause(tmp_path: Path) -> None:
    # A file that exists (a missing one is refused before any step) without the mapped columns:
    # only the download step, reading it, finds out.
    data = tmp_path / "tweets.csv"
    data.write_text("tweet,mood\n" + "".join(f"hello {number},0\n" for number in range(100)))
    completed = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(tmp_path / "r"),
         "--dataset-uri", str(data)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 1, completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()
    assert last[-2].startswith("kftune run: error: the pipeline failed: step 'download-dataset' "
                               "failed: InputError: "), last[-2:]
    assert "sentiment" in last[-2]  # the mapped column it lacks
    assert last[-1].startswith("hint:")
    assert "Traceback" not in completed.stderr + completed.stdout


def test_kftune_run_killed_trainer_is_one_line_naming_rank_and_signal(tmp_path: Path) -> None:
    from kftune.components.common.demo import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {number}?", "answer": f" {number}."})
                            + "\n" for number in range(40)))
    completed = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(tmp_path / "r"),
         "--task", "causal-lm", "--model-uri", str(model_dir), "--dataset-uri", str(data),
         "--column-mapping", '{"prompt": "question", "completion": "answer"}',
         "--eval-fraction", "0.1", "--num-workers", "2",
         "--lora-config", '{"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}',
         "--training-parameters", '{"max_steps": 4, "per_device_train_batch_size": 4}',
         "--kubernetes-options", json.dumps({"backoff_limit": 0, "env": {
             "KFTUNE_DEBUG_KILL_AT_STEP": "2", "KFTUNE_DEBUG_KILL_RANK": "1"}})],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    last = completed.stderr.strip().splitlines()
    assert re.fullmatch(
        r"kftune run: error: the pipeline failed: step 'train-lora' failed: RuntimeError: "
        r"training failed on node 1 of 2: trainer rank 1 \(pid \d+\) was killed by SIGKILL "
        r"\(out of memory, or killed from outside\)", last[-2]), last[-2:]
    assert last[-1].startswith("hint: re-run with --debug")
    # No traceback of the executor, torchrun or the surviving rank before that line.
    assert "Traceback" not in completed.stderr + completed.stdout
    assert "ChildFailedError" not in completed.stdout


def test_kftune_run_causal_lm_on_a_tiny_model(tmp_path: Path) -> None:
    from kftune.components.common.demo import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    data = tmp_path / "qa.jsonl"
    with data.open("w") as handle:
        for number in range(200):
            handle.write(json.dumps({"question": f"What is {number} plus one?",
                                     "answer": f" {number + 1}."}) + "\n")
    output_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(output_dir),
         "--task", "causal-lm", "--model-uri", str(model_dir), "--dataset-uri", str(data),
         "--column-mapping", '{"prompt": "question", "completion": "answer"}',
         "--eval-fraction", "0.1", "--eval-max-examples", "20",
         "--lora-config", '{"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}',
         "--training-parameters", '{"max_steps": 30, "per_device_train_batch_size": 8, '
                                  '"learning_rate": 3e-3, "save_strategy": "no"}'],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["primary_metric"] == "perplexity"
    assert summary["tuned"]["eval_loss"] < summary["base"]["eval_loss"], summary
    assert summary["improved"] is True
    report = Path(summary["report"]).read_text()
    assert "**Prompt**" in report and "**Fine-tuned**" in report
    # What a person reads: numbered steps, no kfp.local internals, no colour codes in a pipe.
    out = completed.stdout
    started = [line.split(" - INFO - ")[-1] for line in out.splitlines()
               if "Executing task" in line]
    # The two downloads run in either order.
    assert [line.split("]")[0] for line in started] == ["[1/4", "[2/4", "[3/4", "[4/4"], started
    assert sorted(line.split("'")[1] for line in started) == [
        "download-dataset", "download-model", "evaluate", "train-lora"]
    assert "Skipping conditional task" not in out and "\x1b[" not in out
    assert f"curves     : {summary['training_report']}" in out
    # The train step's HTML: one loss point per logged step (logging_steps 10 of 30: 1, 10, ...).
    page = Path(summary["training_report"]).read_text()
    loss = re.search(r'data-name="train loss" points="([^"]*)"', page).group(1).split()
    assert len(loss) == 4
    assert "<svg" in Path(summary["evaluation_report"]).read_text()
