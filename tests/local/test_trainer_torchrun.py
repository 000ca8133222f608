"""The trainer entrypoint under real torchrun processes on CPU (gloo), as the operator starts it."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kftune.components.common import demo
from kftune.components.train_lora.pod import trainer
from support import torchrun_env
from support.servers import free_port

pytestmark = pytest.mark.local

TRAINER = "kftune.components.train_lora.pod.trainer"
CAUSAL_PARAMETERS = {
    "learning_rate": 2e-2, "num_train_epochs": 2, "per_device_train_batch_size": 4,
    "logging_steps": 1, "save_steps": 3, "save_total_limit": 5, "max_seq_length": 48,
    "global_batch_size": 8,
}
CAUSAL_LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}


def clean_env(**extra: str) -> dict[str, str]:
    # One thread per process: several ranks share the 2 CI cores.
    return torchrun_env.clean_env(OMP_NUM_THREADS="1", **extra)


def write_config(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(fields))
    return path


def torchrun(config: Path, *, nproc: int = 2, max_restarts: int = 0, env: dict | None = None,
             timeout: int = 240) -> subprocess.CompletedProcess:
    """Plain torchrun: one node, `nproc` processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "--max-restarts", str(max_restarts),
               "-m", TRAINER, "--config", str(config)]
    return subprocess.run(command, env=clean_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def operator_nodes(config: Path, *, nodes: int = 2, nproc: int = 2, env: dict | None = None,
                   timeout: int = 240) -> list[subprocess.CompletedProcess]:
    """`nodes` torchrun processes configured only by the Training Operator's pod environment."""
    port = str(free_port())
    processes = []
    for node_rank in range(nodes):
        pod_env = clean_env(
            PET_NNODES=str(nodes), PET_NPROC_PER_NODE=str(nproc), PET_NODE_RANK=str(node_rank),
            PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port, MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port, RANK=str(node_rank), WORLD_SIZE=str(nodes * nproc),
            **(env or {}))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "-m", TRAINER, "--config",
             str(config)],
            env=pod_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for process in processes:
        stdout, _ = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, ""))
    return results


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def read_seen(directory: Path) -> dict[int, list[int]]:
    """Example indices trained on, per epoch, over all ranks."""
    per_epoch: dict[int, list[int]] = collections.defaultdict(list)
    for path in directory.glob("seen-rank*.txt"):
        for line in path.read_text().splitlines():
            epoch, _step, index = map(int, line.split())
            per_epoch[epoch].append(index)
    return per_epoch


def final_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "final" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return demo.tiny_causal_lm(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def causal_data(tmp_path_factory) -> Path:
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(30, seed=1)]
    return demo.write_dataset_artifact(tmp_path_factory.mktemp("data") / "train", rows)


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory, tiny_model, causal_data):
    """1 node x 2 processes with plain torchrun: the baseline other tests compare with."""
    tmp_path = tmp_path_factory.mktemp("one-node")
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters=CAUSAL_PARAMETERS, lora_config=CAUSAL_LORA)
    result = torchrun(config, env={"KFTUNE_DEBUG_SEEN_DIR": str(tmp_path / "seen")})
    assert_ok(result)
    return tmp_path, result


def test_one_node_two_processes_trains_and_saves_a_loadable_adapter(one_node_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp_path, result = one_node_run
    output = tmp_path / "out"
    metrics = final_metrics(output)
    # 30 examples, global batch 8: 4 steps per epoch, 2 epochs.
    assert metrics["steps"] == 8 and metrics["examples_seen"] == 60
    losses = [loss for _, loss in metrics["train_loss"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert "step 8/8 (100.0%)" in result.stdout and "eta" in result.stdout
    # Per step: its number, the job's tokens, seconds since the loop started, rank 0's seconds in
    # garbage collection and torch.compile runs (no compilation on CPU).
    rows = metrics["step_times"]
    assert [row[0] for row in rows] == list(range(1, 9)) and all(len(row) == 5 for row in rows)
    assert all(row[3] >= 0 and row[4] == 0 for row in rows)
    assert "[rank 1]" not in result.stdout  # progress is logged by global rank 0 only

    manifest = json.loads((output / "final" / "manifest.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["task"] == "causal-lm"
    assert manifest["base_model"]["architecture"] == "LlamaForCausalLM"
    assert manifest["training"]["world_size"] == 2
    assert (output / "final" / "tokenizer.json").is_file()

    inputs = torch.tensor([[5, 17, 33, 70, 120]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base_logits = base(inputs).logits
        adapted = PeftModel.from_pretrained(base, output / "final").eval()
        adapted_logits = adapted(inputs).logits
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-4)


def test_one_node_sees_every_example_once_per_epoch(one_node_run):
    tmp_path, _ = one_node_run
    seen = read_seen(tmp_path / "seen")
    assert sorted(seen) == [0, 1]
    for indices in seen.values():
        assert sorted(indices) == list(range(30))
    assert {path.name for path in (tmp_path / "seen").iterdir()} == {"seen-rank0.txt",
                                                                    "seen-rank1.txt"}


def test_two_nodes_from_the_operator_environment(tmp_path, tiny_model, causal_data):
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters={**CAUSAL_PARAMETERS, "save_strategy": "no",
                                               "per_device_train_batch_size": 2},
                          lora_config=CAUSAL_LORA, merge=True)
    results = operator_nodes(config, env={"KFTUNE_DEBUG_SEEN_DIR": str(tmp_path / "seen")})
    for result in results:
        assert_ok(result)
    seen = read_seen(tmp_path / "seen")
    assert len(list((tmp_path / "seen").glob("seen-rank*.txt"))) == 4
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == list(range(30))
    metrics = final_metrics(tmp_path / "out")
    assert metrics["world_size"] == 4 and metrics["steps"] == 8
    assert "4 process(es) (gloo)" in results[0].stdout
    assert (tmp_path / "out" / "final" / "merged" / "config.json").is_file()


def test_token_budget_and_padded_micro_batches_see_every_example_once(
        tmp_path, tiny_model, causal_data):
    parameters = {key: value for key, value in CAUSAL_PARAMETERS.items()
                  if key not in ("global_batch_size", "per_device_train_batch_size")}
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters={**parameters, "save_strategy": "no",
                                               "max_tokens_per_micro_batch": 96,
                                               "pad_to_multiple_of": 16},
                          lora_config=CAUSAL_LORA)
    result = torchrun(config, env={"KFTUNE_DEBUG_SEEN_DIR": str(tmp_path / "seen")})
    assert_ok(result)
    assert "micro-batches of up to 96 tokens x 2 processes x 1 accumulation" in result.stdout
    seen = read_seen(tmp_path / "seen")
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == list(range(30))
    metrics = final_metrics(tmp_path / "out")
    assert metrics["examples_seen"] == 60
    # Several examples share each 96-token micro-batch: fewer steps than 30 per epoch.
    assert 2 * 30 / 2 > metrics["steps"] >= 2 * 30 * 20 / (2 * 96), metrics["steps"]


def test_resume_after_a_killed_process_finishes_with_the_same_step_count(
        tmp_path, tiny_model, causal_data):
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters=CAUSAL_PARAMETERS, lora_config=CAUSAL_LORA)
    # Rank 1 is SIGKILLed after step 5 (checkpoint at 3): torchrun restarts both processes.
    result = torchrun(config, max_restarts=1,
                      env={"KFTUNE_DEBUG_KILL_AT_STEP": "5", "KFTUNE_DEBUG_KILL_RANK": "1",
                           "KFTUNE_DEBUG_SEEN_DIR": str(tmp_path / "seen")})
    assert_ok(result)
    assert "resumed from checkpoint step 3" in result.stdout
    metrics = final_metrics(tmp_path / "out")
    assert metrics["steps"] == 8 and metrics["resumed_from_step"] == 3
    # The loss curve is continuous: steps 1-3 from before the kill, 4-8 after.
    assert [step for step, _ in metrics["train_loss"]] == list(range(1, 9))
    # Steps 4-5 ran twice (before the kill and after the resume) on the same examples; counting
    # each (step, example) once, every example was trained on once per epoch.
    trained = set()
    for path in (tmp_path / "seen").glob("seen-rank*.txt"):
        trained.update(tuple(map(int, line.split())) for line in path.read_text().splitlines())
    for epoch in (0, 1):
        assert sorted(index for e, _, index in trained if e == epoch) == list(range(30))


def run_in_process(config: Path, monkeypatch) -> int:
    """The entrypoint in this process, alone (no torchrun): quick for error paths."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return trainer.main(["--config", str(config)])


def test_corrupt_checkpoint_is_skipped_and_other_lora_shape_is_an_error(
        one_node_run, tmp_path, capsys, monkeypatch):
    source, _ = one_node_run
    output = tmp_path / "out"
    # A finished run's checkpoints (steps 3 and 6), without its final output.
    (output / "checkpoints").mkdir(parents=True)
    for step in (3, 6):
        src = source / "out" / "checkpoints" / f"step-{step}"
        dst = output / "checkpoints" / f"step-{step}"
        dst.mkdir()
        for path in src.iterdir():
            (dst / path.name).write_bytes(path.read_bytes())
    state = output / "checkpoints" / "step-6" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    # A crash mid-write leaves a partial directory: never picked up.
    (output / "checkpoints" / ".step-7.partial-x").mkdir()
    config = json.loads((source / "config.json").read_text())
    resumed = write_config(tmp_path, "config", **{**config, "output_dir": str(output)})
    # Resumed by one process instead of two: global_batch_size keeps the step count.
    assert run_in_process(resumed, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step-6" in out
    assert "resumed from checkpoint step 3" in out
    assert final_metrics(output)["steps"] == 8

    other = write_config(tmp_path, "other", **{**config, "output_dir": str(output),
                                               "lora_config": {**CAUSAL_LORA, "r": 4}})
    assert run_in_process(other, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "from a different LoRA shape" in err
    assert "use a new output location" in err


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"lora_config": {"target_modules": ["q_proj", "nonexistent"]}},
         "`lora_config.target_modules` ['nonexistent'] match no layer of the model"),
        ({"training_parameters": {"per_device_train_batch_size": 64}},
         "`training_parameters.per_device_train_batch_size` x world size = 64 x 1 = 64 must be "
         "<= the 30 training rows"),
        ({"training_parameters": {"per_device_train_batch_size": 4, "global_batch_size": 6}},
         "`training_parameters.global_batch_size` must be a multiple of "
         "per_device_train_batch_size x world size = 4 x 1 = 4, got 6"),
        ({"task": "sequence-classification"},
         "`train_data` must have columns text and label for task sequence-classification"),
        ({"training_parameters": {"quantization": {"load_in_4bit": True}}},
         "`training_parameters.quantization` (4-bit QLoRA) needs a CUDA GPU; this process runs "
         "on cpu"),
        ({"training_parameters": {"fsdp": "full_shard",
                                  "fsdp_config": {"transformer_layer_cls_to_wrap": "NoLayer"}}},
         "`training_parameters.fsdp_config.transformer_layer_cls_to_wrap` = ['NoLayer'] names no "
         "layer of the model"),
    ],
    ids=["target modules match nothing", "batch larger than data",
         "global batch does not fit world size", "columns do not fit task", "4-bit on CPU",
         "fsdp layer class matches nothing"],
)
def test_bad_input_is_a_clear_error(tmp_path, tiny_model, causal_data, capsys, monkeypatch,
                                    overrides, fragment):
    fields = {"task": "causal-lm", "model_dir": str(tiny_model), "data_dir": str(causal_data),
              "output_dir": str(tmp_path / "out"), **overrides}
    assert run_in_process(write_config(tmp_path, "config", **fields), monkeypatch) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err
    assert "step 1/" not in captured.out  # before any step


def test_model_the_task_cannot_load_is_a_clear_error(tmp_path, tiny_model, causal_data, capsys,
                                                     monkeypatch):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for path in tiny_model.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config_json = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config_json, "model_type": "no-such-arch"}))
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(broken),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"))
    assert run_in_process(config, monkeypatch) == 2
    err = capsys.readouterr().err
    assert "`model` (LlamaForCausalLM, model_type 'llama') cannot be loaded for task 'causal-lm'" \
        in err


@pytest.mark.parametrize(
    ("rows", "parameters"),
    [
        ([{"messages": [{"role": "user", "content": f"tell me about cars {index}"},
                        {"role": "assistant", "content": "driverless cars are safe"}]}
          for index in range(12)], {"packing": True}),
        ([{"prompt": f"question {index}:", "completion": " the answer is yes"}
          for index in range(12)], {"packing": False, "gradient_checkpointing": True}),
    ],
    ids=["chat messages, packed", "prompt completion, padded, gradient checkpointing"],
)
def test_chat_and_prompt_completion_data_train(tmp_path, tiny_model, capsys, monkeypatch, rows,
                                                parameters):
    data_dir = demo.write_dataset_artifact(tmp_path / "data", rows)
    config = write_config(
        tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
        data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
        training_parameters={"learning_rate": 3e-2, "max_steps": 6, "logging_steps": 1,
                             "per_device_train_batch_size": 4, "save_strategy": "no",
                             **parameters},
        lora_config=CAUSAL_LORA)
    assert run_in_process(config, monkeypatch) == 0, capsys.readouterr().err
    losses = [loss for _, loss in final_metrics(tmp_path / "out")["train_loss"]]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_lora_sequence_classification_beats_the_base_model(tmp_path):
    import pyarrow.parquet as pq
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = demo.demo_classifier_model(tmp_path / "minilm")
    rows = demo.sentiment_rows(720, seed=0, min_confidence=0.6)
    labels = demo.SENTIMENT_LABELS
    train_dir = demo.write_dataset_artifact(tmp_path / "train", rows[:480], label_names=labels)
    eval_rows = rows[480:]
    config = write_config(
        tmp_path, "config", task="sequence-classification", model_dir=str(model_dir),
        data_dir=str(train_dir), output_dir=str(tmp_path / "out"),
        training_parameters={"learning_rate": 4e-3, "num_train_epochs": 2,
                             "per_device_train_batch_size": 16, "logging_steps": 5,
                             "save_strategy": "no", "max_seq_length": 40, "warmup_ratio": 0.1},
        lora_config={"r": 8, "lora_alpha": 16, "lora_dropout": 0.1})
    assert_ok(torchrun(config))
    manifest = json.loads((tmp_path / "out" / "final" / "manifest.json").read_text())
    assert manifest["num_labels"] == 3 and manifest["label_names"] == list(labels)
    assert pq.read_table(train_dir / "data.parquet").num_rows == 480

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "final")

    def accuracy(model) -> float:
        correct = 0
        with torch.no_grad():
            for start in range(0, len(eval_rows), 100):
                batch = eval_rows[start : start + 100]
                encoded = tokenizer([row["text"] for row in batch], padding=True,
                                    truncation=True, max_length=40, return_tensors="pt")
                predicted = model(**encoded).logits.argmax(-1).tolist()
                correct += sum(p == row["label"] for p, row in zip(predicted, batch, strict=True))
        return correct / len(eval_rows)

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).eval()
    base_accuracy = accuracy(base)
    tuned = PeftModel.from_pretrained(base, tmp_path / "out" / "final").eval()
    tuned_accuracy = accuracy(tuned)
    print(f"held-out accuracy: base {base_accuracy:.3f}, LoRA {tuned_accuracy:.3f}")
    assert tuned_accuracy > base_accuracy + 0.12
    assert tuned_accuracy > 0.5


# -- sharded (FSDP2) against DDP -------------------------------------------------------------------
# On CPU every rank computes in fp32 and the only difference between the layouts is the order in
# which gradients are summed (reduce-scatter over the shard group, or DDP's all-reduce buckets),
# a few fp32 roundings (~1e-7 relative) per step. AdamW's first updates are close to lr x
# sign(gradient), so a gradient that is ~0 can round to the other sign and move one adapter
# element by up to 2 x lr x steps; the loss and the adapter's norm average that out. The bounds
# below are 100 x what the runs show (losses equal to ~1e-7, adapters to ~1e-7 here).
LOSS_RTOL = 1e-5
ADAPTER_RTOL = 1e-4


def adapter_tensors(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(output_dir / "final" / "adapter_model.safetensors")


def assert_read_only_their_rows(stdout: str, shards: int, world: int) -> None:
    """Each process read its 1/shards of the checkpoint, by the trainer's count of bytes read.

    With every tensor read, and each one by its owners only, the loss of step 1 equal to DDP's
    (which loads with `from_pretrained`) also shows that the model is the same.
    """
    import re

    line = next(line for line in stdout.splitlines() if "loading: meta device" in line)
    total = float(re.search(r"checkpoint \(([\d.]+) MiB\)", line).group(1))
    reads = [(float(mib), int(count)) for mib, count in
             re.findall(r"read ([\d.]+) MiB in (\d+) tensors", line)]
    assert len(reads) == world, line
    for mib, count in reads:
        assert mib <= total / shards + 0.02 and count == 21, (line, total)
    assert sum(mib for mib, _ in reads[:shards]) >= total - 0.02, line  # one node: all of it


def assert_same_training(output: Path, baseline: Path, steps: int = 8) -> None:
    losses = [loss for _, loss in final_metrics(output)["train_loss"]]
    expected = [loss for _, loss in final_metrics(baseline)["train_loss"]][:steps]
    assert len(losses) == steps and losses == pytest.approx(expected, rel=LOSS_RTOL)
    sharded, reference = adapter_tensors(output), adapter_tensors(baseline)
    assert sorted(sharded) == sorted(reference)
    for name, tensor in reference.items():
        assert (sharded[name] - tensor).norm() <= ADAPTER_RTOL * tensor.norm() + 1e-7, name


@pytest.mark.parametrize(
    ("fsdp", "nodes"),
    [("full_shard auto_wrap", 1), (["shard_grad_op"], 1), ("hybrid_shard", 2)],
    ids=["full_shard, 1 node x 2", "shard_grad_op, 1 node x 2", "hybrid_shard, 2 nodes x 2"],
)
def test_sharded_training_matches_ddp(one_node_run, tmp_path, tiny_model, causal_data, fsdp,
                                      nodes):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    baseline, _ = one_node_run
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters={**CAUSAL_PARAMETERS, "fsdp": fsdp,
                                               "per_device_train_batch_size": 4 // nodes},
                          lora_config=CAUSAL_LORA)
    env = {"KFTUNE_DEBUG_SEEN_DIR": str(tmp_path / "seen")}
    results = [torchrun(config, env=env)] if nodes == 1 else operator_nodes(config, env=env)
    for result in results:
        assert_ok(result)
    assert "parallelism: FSDP2 sharding" in results[0].stdout
    mesh = "(2, 2) (hybrid: replicate x shard)" if nodes == 2 else "(2,) (shard)"
    assert f"2 FSDPLlamaDecoderLayer units sharded over {mesh}" in results[0].stdout
    assert_read_only_their_rows(results[0].stdout, shards=2, world=2 * nodes)
    assert_same_training(tmp_path / "out", baseline / "out")
    for epoch, indices in read_seen(tmp_path / "seen").items():
        assert sorted(indices) == list(range(30)), epoch
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    PeftModel.from_pretrained(base, tmp_path / "out" / "final")  # the PEFT layout loads


def test_sharded_checkpoint_resumes_at_another_world_size(one_node_run, tmp_path, tiny_model,
                                                          causal_data, capsys, monkeypatch):
    baseline, _ = one_node_run
    config = write_config(tmp_path, "config", task="causal-lm", model_dir=str(tiny_model),
                          data_dir=str(causal_data), output_dir=str(tmp_path / "out"),
                          training_parameters={**CAUSAL_PARAMETERS, "fsdp": "full_shard"},
                          lora_config=CAUSAL_LORA)
    seen = tmp_path / "seen"
    # 2 processes, sharded; rank 1 dies after step 5 (checkpoint at 3) and is not restarted.
    killed = torchrun(config, env={"KFTUNE_DEBUG_KILL_AT_STEP": "5",
                                   "KFTUNE_DEBUG_SEEN_DIR": str(seen)})
    assert killed.returncode != 0
    assert (tmp_path / "out" / "checkpoints" / "step-3").is_dir()
    # Resumed by 1 process, still sharded (a mesh of one).
    monkeypatch.setenv("KFTUNE_DEBUG_SEEN_DIR", str(seen))
    assert run_in_process(config, monkeypatch) == 0, capsys.readouterr().err
    assert "resumed from checkpoint step 3" in capsys.readouterr().out
    metrics = final_metrics(tmp_path / "out")
    assert metrics["steps"] == 8 and metrics["resumed_from_step"] == 3
    assert metrics["world_size"] == 1
    assert_same_training(tmp_path / "out", baseline / "out")
    trained = set()
    for path in seen.glob("seen-rank*.txt"):
        trained.update(tuple(map(int, line.split())) for line in path.read_text().splitlines())
    for epoch in (0, 1):
        assert sorted(index for e, _, index in trained if e == epoch) == list(range(30))


def test_sharded_sequence_classification_matches_ddp(tmp_path):
    model_dir = demo.demo_classifier_model(tmp_path / "minilm")
    rows = demo.sentiment_rows(64, seed=0)
    train_dir = demo.write_dataset_artifact(tmp_path / "train", rows,
                                            label_names=demo.SENTIMENT_LABELS)
    parameters = {"learning_rate": 4e-3, "max_steps": 4, "per_device_train_batch_size": 8,
                  "global_batch_size": 16, "logging_steps": 1, "save_strategy": "no",
                  "max_seq_length": 40}
    outputs = {}
    for name, extra in (("sharded", {"fsdp": "full_shard"}), ("ddp", {})):
        outputs[name] = tmp_path / f"out-{name}"
        config = write_config(
            tmp_path, name, task="sequence-classification", model_dir=str(model_dir),
            data_dir=str(train_dir), output_dir=str(outputs[name]),
            training_parameters={**parameters, **extra}, lora_config={"r": 8, "lora_alpha": 16})
        # Both with 2 processes: BERT's dropout draws from each rank's generator, so the same
        # ranks must see the same examples for the same masks.
        result = torchrun(config)
        assert_ok(result)
        assert ("FSDPBertLayer units sharded" in result.stdout) == (name == "sharded")
        if name == "sharded":  # a new classification head: whole copies, loaded in turns
            assert "loading: whole copies, one process of a node at a time (the task's head " \
                "is new, not in the checkpoint)" in result.stdout
            assert "host memory after loading in turns" in result.stdout
    assert_same_training(outputs["sharded"], outputs["ddp"], steps=4)
