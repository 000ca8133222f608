"""The fit estimate: a job that cannot fit its GPUs fails at submission, with the numbers."""

from __future__ import annotations

import dataclasses
import json

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.train_lora import fit
from support.fake_kubernetes import FakeKubernetes
from support.train_step import run_step

LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
            "vocab_size": 128256, "num_attention_heads": 32, "num_key_value_heads": 8}
LLAMA_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 28672,
             "vocab_size": 128256, "num_attention_heads": 64, "num_key_value_heads": 8}
SIZES = {"8b": (8_030_261_248, LLAMA_8B), "70b": (70_553_706_496, LLAMA_70B)}
R16ALL = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def model_artifact(tmp_path, size: str):
    parameters, config = SIZES[size]
    directory = tmp_path / size
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    write_manifest(directory, {"kind": "model", "task": "causal-lm", "parameters": parameters,
                               "dtype": "bfloat16"})
    return directory


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    size: str
    parameters: dict
    workers: int = 1
    procs: int = 1
    resources: dict = dataclasses.field(default_factory=lambda: {"gpu": 1})
    selector: dict = dataclasses.field(default_factory=dict)
    fragments: tuple[str, ...] = ()
    """Empty: the job fits."""


TOKENS_16K = {"max_tokens_per_micro_batch": 16384, "max_seq_length": 2048}
CASES = [
    Case("8B on an H200 (benchmark row)", "8b", TOKENS_16K,
         resources={"gpu": 1, "gpu_memory": "141G"}),
    Case("8B on an H200 named by the node selector", "8b", TOKENS_16K,
         selector={"nvidia.com/gpu.product": "NVIDIA-H200"}),
    Case("8B on a 24 GB GPU", "8b", TOKENS_16K, selector={"nvidia.com/gpu.product": "NVIDIA-L4"},
         fragments=("each of its 1 process(es) needs about 98.6 GiB (weights 15.0, LoRA 0.6, "
                    "activations 80.0, overhead 3.0)", "against 20.7 GiB usable of a GPU (node "
                    "selector nvidia.com/gpu.product=NVIDIA-L4)", "max_tokens_per_micro_batch <=",
                    "gradient_checkpointing true")),
    Case("70B bf16 on one 80 GB GPU", "70b", {"max_tokens_per_micro_batch": 4096,
                                              "max_seq_length": 2048},
         resources={"gpu": 1, "gpu_memory": "80Gi"},
         fragments=("weights 131.4", "options that would fit: fsdp \"full_shard\" over 4 GPUs "
                    "and gradient_checkpointing true (",
                    "quantization 4-bit and gradient_checkpointing true (")),
    Case("70B sharded over 4 nodes x 8 80 GB GPUs", "70b",
         {"fsdp": "full_shard", "fsdp_config": {"activation_checkpointing": True},
          "max_tokens_per_micro_batch": 8192, "max_seq_length": 2048},
         workers=4, procs=8, resources={"gpu": 8, "gpu_memory": "80Gi"}),
    Case("70B 4-bit on one H200, 4k tokens, checkpointing", "70b",
         {"quantization": {"load_in_4bit": True}, "gradient_checkpointing": True,
          "max_tokens_per_micro_batch": 4096, "max_seq_length": 2048},
         resources={"gpu": 1, "gpu_memory": "141G"}),
    Case("no GPU memory known: no estimate", "70b", {}, resources={"gpu": 1}),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fit_estimate(tmp_path, case):
    problems = fit.fit_problems(str(model_artifact(tmp_path, case.size)), case.parameters, R16ALL,
                                num_workers=case.workers, procs_per_worker=case.procs,
                                resources=case.resources,
                                options={"node_selector": case.selector})
    assert len(problems) == (1 if case.fragments else 0), problems
    for fragment in case.fragments:
        assert fragment in problems[0]


def test_lora_size_is_peft_s_count_for_llama_8b():
    # PEFT reports 41,943,040 trainable parameters for r=16 on every linear layer of Llama-3-8B
    # and 3,407,872 for r=8 on q_proj and v_proj.
    shape = fit.Shape.from_config(LLAMA_8B)
    assert shape.lora_parameters(16, all_linear=True) == 41_943_040
    assert shape.lora_parameters(8, all_linear=False) == 3_407_872


def test_a_job_that_cannot_fit_fails_at_submission_and_creates_nothing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data, {"kind": "dataset", "rows": 10})
    with FakeKubernetes() as fake:
        with pytest.raises(InputError, match="the job does not fit its GPUs") as caught:
            run_step(
                model_dir=str(model_artifact(tmp_path, "70b")), model_uri="s3://b/model",
                data_dir=str(data), data_uri="s3://b/data", adapter_dir=str(tmp_path / "out"),
                adapter_uri="s3://b/adapter", metrics=None, task="causal-lm",
                training_parameters={"max_steps": 10}, lora_config=R16ALL, num_workers=1,
                num_procs_per_worker=1, resources_per_worker={"gpu": 1, "gpu_memory": "80Gi"},
                backend="kubernetes", image="", timeout_minutes=5,
                kubernetes_options={"namespace": "kftune"}, api_client=fake.api_client())
    assert fake.requests == []
    assert "resources_per_worker.gpu_memory = '80Gi'" in str(caught.value)
