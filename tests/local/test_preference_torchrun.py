"""Preference tuning (DPO) under real torchrun processes on CPU (gloo), and `kftune run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kftune.components.common import demo
from support import torchrun_env
from support.servers import free_port

pytestmark = pytest.mark.local

TRAINER = "kftune.components.train_lora.pod.trainer"
PARAMETERS = {
    "learning_rate": 5e-3, "num_train_epochs": 2, "logging_steps": 1, "save_steps": 2,
    "save_total_limit": 5, "max_seq_length": 128, "max_tokens_per_micro_batch": 512,
}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
PAIRS = 24


def torchrun(config: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "--max-restarts", "1",
               "-m", TRAINER, "--config", str(config)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600,
        env=torchrun_env.clean_env(OMP_NUM_THREADS="1",
                                   KFTUNE_DEBUG_SEEN_DIR=str(tmp_path / "seen"), **env))


def write_config(tmp_path: Path, inputs: tuple[Path, Path], **parameters: object) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "task": "preference", "model_dir": str(inputs[0]), "data_dir": str(inputs[1]),
        "output_dir": str(tmp_path / "out"), "training_parameters": {**PARAMETERS, **parameters},
        "lora_config": LORA}))
    return config


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preference")
    return (demo.tiny_causal_lm(root / "model"),
            demo.write_dataset_artifact(root / "data", demo.preference_rows(PAIRS)))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory,
            inputs: tuple[Path, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """DDP, 2 processes; rank 1 is SIGKILLed after step 3 (checkpoint at 2), torchrun restarts."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    result = torchrun(write_config(tmp_path, inputs), tmp_path, KFTUNE_DEBUG_KILL_AT_STEP="3",
                      KFTUNE_DEBUG_KILL_RANK="1")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return tmp_path, result


def test_two_processes_train_every_pair_once_per_epoch_and_resume(
        ddp_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    tmp_path, result = ddp_run
    assert "task preference, 2 process(es) (gloo)" in result.stdout
    assert "micro-batches of up to 512 tokens x 2 processes" in result.stdout
    assert "resumed from checkpoint step 2" in result.stdout
    metrics = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["examples_seen"] == 2 * PAIRS
    # Counting each (step, pair) once, every pair was trained on once per epoch, over both ranks.
    trained = set()
    for path in (tmp_path / "seen").glob("seen-rank*.txt"):
        trained.update(tuple(map(int, line.split())) for line in path.read_text().splitlines())
    for epoch in (0, 1):
        assert sorted(index for e, _, index in trained if e == epoch) == list(range(PAIRS))
    history = [json.loads(line) for line in
               (tmp_path / "out" / "final" / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == list(range(1, metrics["steps"] + 1))
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert all(name in record for record in history), name
    assert history[-1]["rewards/margins"] > 0
    manifest = json.loads((tmp_path / "out" / "final" / "manifest.json").read_text())
    assert manifest["task"] == "preference" and manifest["lora"]["task_type"] == "CAUSAL_LM"
    assert manifest["training"]["beta"] == 0.1


def test_sharded_preference_training_matches_ddp(
        tmp_path: Path, inputs: tuple[Path, Path],
        ddp_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    result = torchrun(write_config(tmp_path, inputs, fsdp="full_shard auto_wrap"), tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "parallelism: FSDP2 sharding" in result.stdout
    losses = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())["train_loss"]
    expected = json.loads((ddp_run[0] / "out" / "final" / "metrics.json").read_text())[
        "train_loss"]
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in expected],
                                                         rel=1e-3)


def test_kftune_run_preference_improves_held_out_preference_accuracy(tmp_path: Path) -> None:
    root = demo.write_preference_demo(tmp_path / "demo", count=600)
    output_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "run", "--output-dir", str(output_dir),
         "--task", "preference", "--model-uri", str(root / "model"),
         "--dataset-uri", str(root / "pairs.jsonl"), "--column-mapping", "{}",
         "--eval-fraction", "0.2",
         "--lora-config", json.dumps(demo.PREFERENCE_DEMO_LORA),
         "--training-parameters", json.dumps({**demo.PREFERENCE_DEMO_TRAINING, "max_steps": 30})],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["primary_metric"] == "preference_accuracy"
    assert summary["tuned"]["preference_accuracy"] > summary["base"]["preference_accuracy"]
    assert summary["tuned"]["reward_margin"] > 0
    assert (Path(summary["adapter_dir"]) / "adapter_config.json").is_file()
