"""The trainer under exactly the environment the Trainer's torch plugin gives a TrainJob's nodes.

2 nodes x 2 processes on CPU with gloo: each "node" is `torchrun -m ...pod.trainer` started with
only `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`
(`trainjob.trainjob_env`, from trainer v2.3's `torch.go`) — none of the `MASTER_ADDR`, `RANK`,
`WORLD_SIZE` the v1 operator adds — with the master address pointed at 127.0.0.1 instead of the
headless Service name.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kftune.components.common import demo
from kftune.components.train_lora.config import trainer_command
from kftune.components.train_lora.step.backends.local import free_port
from kftune.components.train_lora.step.spec import TrainingSpec
from kftune.components.train_lora.step.trainjob import trainjob_env
from support.torchrun_env import clean_env

pytestmark = pytest.mark.local


def test_two_trainjob_nodes_by_two_processes_train_an_adapter(tmp_path):
    model = demo.tiny_causal_lm(tmp_path / "model")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(24, seed=3)]
    data = demo.write_dataset_artifact(tmp_path / "data", rows)
    spec = TrainingSpec(
        task="causal-lm", num_workers=2, num_procs_per_worker=2,
        training_parameters={"learning_rate": 2e-2, "max_steps": 3, "logging_steps": 1,
                             "per_device_train_batch_size": 2, "save_strategy": "no",
                             "max_seq_length": 32},
        lora_config={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    )
    config = tmp_path / "config.json"
    output = tmp_path / "output"
    spec.trainer_config(model_dir=str(model), data_dir=str(data),
                        output_dir=str(output)).to_file(config)
    port = free_port()
    nodes = []
    for rank in range(spec.num_workers):
        env = trainjob_env(job_name="kftune-clm-test", num_nodes=spec.num_workers,
                           num_procs=spec.procs_per_node(), node_rank=rank,
                           master_addr="127.0.0.1", master_port=port)
        assert sorted(env) == ["PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NNODES",
                               "PET_NODE_RANK", "PET_NPROC_PER_NODE"]
        nodes.append(subprocess.Popen(
            trainer_command(config), env=clean_env(OMP_NUM_THREADS="1", **env), cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for node in nodes:
        out, _ = node.communicate(timeout=400)
        outputs.append(out)
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(
        out[-3000:] for out in outputs)

    final = output / "final"
    assert (final / "adapter_config.json").is_file()
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 4
    assert json.loads((final / "metrics.json").read_text())["steps"] == 3
    assert "step 3/3" in outputs[0]


def test_the_torch_plugin_source_sets_exactly_these_variables():
    # The vendored plugin source (tests/crds/torch_plugin.go.txt, trainer v2.3.0) names the
    # variables through constants; their values are in pkg/constants.
    source = (Path(__file__).parent.parent / "crds" / "torch_plugin.go.txt").read_text()
    names = {"TorchEnvNumNodes", "TorchEnvNumProcPerNode", "TorchEnvNodeRank",
             "TorchEnvMasterAddr", "TorchEnvMasterPort"}
    assert all(f"constants.{name}" in source for name in names)
    assert '"%s-%s-0-0.%s", trainJob.Name, constants.Node, trainJob.Name' in source
    env = trainjob_env(job_name="j", num_nodes=2, num_procs=2, node_rank=1)
    assert env["PET_MASTER_ADDR"] == "j-node-0-0.j" and env["PET_MASTER_PORT"] == "29500"
    assert sys.version_info >= (3, 10)
