"""The trainer entrypoint on GPUs: NCCL, bf16 weights; plain torchrun and the operator's env."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kftune.components.common import demo
from support import torchrun_env
from support.servers import free_port

TRAINER = "kftune.components.train_lora.pod.trainer"
PARAMETERS = {
    "learning_rate": 2e-2, "num_train_epochs": 2, "per_device_train_batch_size": 4,
    "global_batch_size": 16, "logging_steps": 1, "save_steps": 2, "max_seq_length": 64,
    "bf16": True,
}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}




# Micro-batches filled by tokens instead of examples (steps then vary in example count),
# rows rounded up to a multiple of 16 tokens.
BY_TOKENS = {**{key: value for key, value in PARAMETERS.items()
                if key not in ("per_device_train_batch_size", "global_batch_size")},
             "max_tokens_per_micro_batch": 256, "pad_to_multiple_of": 16}


def write_job(tmp_path: Path, parameters: dict) -> Path:
    model = demo.tiny_causal_lm(tmp_path / "model")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(64, seed=2)]
    data = demo.write_dataset_artifact(tmp_path / "data", rows)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "task": "causal-lm", "model_dir": str(model), "data_dir": str(data),
        "output_dir": str(tmp_path / "out"), "training_parameters": parameters,
        "lora_config": LORA, "merge": True,
    }))
    return config


@pytest.fixture()
def job(tmp_path) -> Path:
    return write_job(tmp_path, PARAMETERS)


def check_outputs(tmp_path: Path, output: str, world_size: int, steps: int | None = 8) -> None:
    assert "(nccl), device cuda, weights bfloat16" in output
    metrics = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    assert metrics["world_size"] == world_size and metrics["examples_seen"] == 128
    if steps is not None:  # 64 examples, global batch 16: 4 steps per epoch, any world size
        assert metrics["steps"] == steps
    losses = [loss for _, loss in metrics["train_loss"]]
    assert losses[-1] < losses[0], losses
    per_epoch: dict[int, list[int]] = collections.defaultdict(list)
    for path in (tmp_path / "seen").glob("seen-rank*.txt"):
        for line in path.read_text().splitlines():
            epoch, _, index = map(int, line.split())
            per_epoch[epoch].append(index)
    assert {epoch: sorted(indices) for epoch, indices in per_epoch.items()} == {
        0: list(range(64)), 1: list(range(64))}
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "final" / "merged" / "config.json").is_file()
    print(output[-3000:])


def one_node_two_gpus(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """Plain torchrun, 1 node x 2 GPUs; fails the test when the trainer fails."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", TRAINER,
         "--config", str(config)],
        env=torchrun_env.clean_env(KFTUNE_DEBUG_SEEN_DIR=str(tmp_path / "seen")),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.gpu(count=2)
def test_one_node_two_gpus_plain_torchrun(job, tmp_path):
    result = one_node_two_gpus(job, tmp_path)
    check_outputs(tmp_path, result.stdout, world_size=2)


@pytest.mark.gpu(count=2)
def test_one_node_two_gpus_token_budget(tmp_path):
    result = one_node_two_gpus(write_job(tmp_path, BY_TOKENS), tmp_path)
    assert "micro-batches of up to 256 tokens x 2 processes" in result.stdout
    check_outputs(tmp_path, result.stdout, world_size=2, steps=None)


@pytest.mark.gpu(count=4)
def test_two_nodes_four_gpus_operator_environment(job, tmp_path):
    port = str(free_port())
    processes = []
    for node_rank, gpus in enumerate(("0,1", "2,3")):
        env = torchrun_env.clean_env(
            PET_NNODES="2", PET_NPROC_PER_NODE="2", PET_NODE_RANK=str(node_rank),
            PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port, MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port, RANK=str(node_rank), WORLD_SIZE="4",
            # Each "node" (pod) sees only its own GPUs, as in the cluster.
            CUDA_VISIBLE_DEVICES=gpus, KFTUNE_DEBUG_SEEN_DIR=str(tmp_path / "seen"))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "-m", TRAINER, "--config", str(job)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        stdout, _ = process.communicate(timeout=600)
        assert process.returncode == 0, stdout[-4000:]
        outputs.append(stdout)
    check_outputs(tmp_path, outputs[0], world_size=4)


@pytest.mark.gpu(count=1)
@pytest.mark.parametrize("fsdp", ["", "full_shard"], ids=["ddp", "fsdp2 (a mesh of one)"])
def test_one_gpu_token_budget_ddp_and_sharded(tmp_path, fsdp):
    """The fast path (varlen, chunked loss, compiled layers) under DDP and under FSDP2 on 1 GPU."""
    config = write_job(tmp_path, {**BY_TOKENS, "fsdp": fsdp})
    payload = json.loads(config.read_text())
    config.write_text(json.dumps({**payload, "merge": False}))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", TRAINER,
         "--config", str(config)],
        env=torchrun_env.clean_env(KFTUNE_DEBUG_SEEN_DIR=str(tmp_path / "seen")),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert ("FSDP2: 2 FSDPLlamaDecoderLayer units sharded over (1,)" in result.stdout) == bool(fsdp)
    assert "torch.compile x" in result.stdout  # the first step's note: the layers compiled
    metrics = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    losses = [loss for _, loss in metrics["train_loss"]]
    assert metrics["examples_seen"] == 128 and losses[-1] < losses[0], losses
    (tmp_path / "losses.json").write_text(json.dumps(losses))
    print(fsdp or "ddp", "losses:", [round(loss, 4) for loss in losses])


QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
         "bnb_4bit_use_double_quant": True}


@pytest.mark.gpu(count=1)
def test_one_gpu_qlora_and_a_prequantized_model(tmp_path):
    """4-bit NF4 from `quantization`, then from a model directory saved already quantized."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = write_job(tmp_path, {**BY_TOKENS, "quantization": QLORA})
    payload = {**json.loads(config.read_text()), "merge": False}
    config.write_text(json.dumps(payload))
    runs = {}
    prequantized = tmp_path / "model-bnb-4bit"
    model = AutoModelForCausalLM.from_pretrained(
        payload["model_dir"], dtype=torch.bfloat16, device_map={"": "cuda"},
        quantization_config=BitsAndBytesConfig(**QLORA))
    model.save_pretrained(prequantized)
    AutoTokenizer.from_pretrained(payload["model_dir"]).save_pretrained(prequantized)
    manifest = json.loads((Path(payload["model_dir"]) / "manifest.json").read_text())
    (prequantized / "manifest.json").write_text(json.dumps(manifest))
    assert "quantization_config" in json.loads((prequantized / "config.json").read_text())
    for name, overrides in (("qlora", {}), ("prequantized", {
            "model_dir": str(prequantized), "training_parameters": BY_TOKENS})):
        output = tmp_path / f"out-{name}"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**payload, **overrides, "output_dir": str(output)}))
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
             "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", TRAINER,
             "--config", str(path)],
            env=torchrun_env.clean_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        metrics = json.loads((output / "final" / "metrics.json").read_text())
        losses = [loss for _, loss in metrics["train_loss"]]
        assert losses[-1] < losses[0], losses
        assert (output / "final" / "adapter_model.safetensors").is_file()
        runs[name] = losses
    print("qlora losses:", runs)
