"""The local backend end to end: 2 "nodes" x 2 processes on CPU through the real trainer."""

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kftune.components.common import demo
from kftune.components.train_lora.step.backends.local import LocalBackend
from support.train_step import run_step

pytestmark = pytest.mark.local

PARAMETERS = {
    "learning_rate": 2e-2, "max_steps": 4, "per_device_train_batch_size": 2,
    "logging_steps": 1, "save_strategy": "no", "max_seq_length": 32,
}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


class Metrics:
    def __init__(self):
        self.values = {}

    def log_metric(self, name, value):
        self.values[name] = value


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    model = demo.tiny_causal_lm(tmp_path_factory.mktemp("model") / "tiny-llama")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(24, seed=3)]
    data = demo.write_dataset_artifact(tmp_path_factory.mktemp("data") / "train", rows)
    return model, data


def training(artifacts, tmp_path, **overrides):
    model, data = artifacts
    args = dict(
        model_dir=str(model), model_uri=str(model), data_dir=str(data), data_uri=str(data),
        adapter_dir=str(tmp_path / "adapter"), adapter_uri=str(tmp_path / "adapter"),
        metrics=Metrics(), task="causal-lm", training_parameters=PARAMETERS, lora_config=LORA,
        num_workers=2, num_procs_per_worker="2", resources_per_worker={}, backend="local",
        image="", timeout_minutes=10, kubernetes_options={"env": {"OMP_NUM_THREADS": "1"}},
    )
    args.update(overrides)
    return args


def test_two_nodes_by_two_processes_train_an_adapter(artifacts, tmp_path, caplog):
    caplog.set_level("INFO")
    args = training(artifacts, tmp_path)
    result = run_step(**args)

    adapter = Path(args["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["training"]["world_size"] == 4
    assert result["steps"] == 4
    assert args["metrics"].values["steps"] == 4.0
    assert "final_loss" in args["metrics"].values
    # The nodes' output reaches our log, prefixed (the trainer logs from global rank 0 only).
    assert "[node-0]" in caplog.text and "step 4/4" in caplog.text
    # The work directory is gone; only the adapter is left beside it.
    assert [path.name for path in tmp_path.iterdir()] == ["adapter"]


def test_a_killed_rank_fails_the_step_naming_it(artifacts, tmp_path):
    args = training(artifacts, tmp_path, kubernetes_options={"backoff_limit": 0, "env": {
        "OMP_NUM_THREADS": "1", "KFTUNE_DEBUG_KILL_AT_STEP": "2", "KFTUNE_DEBUG_KILL_RANK": "3",
    }})
    with pytest.raises(RuntimeError) as caught:
        run_step(**args)

    first, *rest = str(caught.value).splitlines()
    # Global rank 3 is node 1's second process.
    assert re.fullmatch(r"training failed on node 1 of 2: trainer rank 3 \(pid \d+\) was killed "
                        r"by SIGKILL \(out of memory, or killed from outside\)", first), first
    assert "log lines of node 1" in rest[0]
    assert not Path(args["adapter_dir"]).exists()


def test_the_trainers_own_error_is_the_first_line(artifacts, tmp_path):
    args = training(artifacts, tmp_path, lora_config={**LORA, "target_modules": ["nope"]})
    with pytest.raises(RuntimeError) as caught:
        run_step(**args)

    first = str(caught.value).splitlines()[0]
    # Every rank finds the same problem; the first to fail is quoted.
    assert re.match(r"training failed on node [01] of 2: trainer rank [0-3]: InputError: "
                    r"`lora_config.target_modules` \['nope'\] match no layer", first), first
    assert "restart" not in first  # bad input is never retried


def test_a_killed_worker_restarts_the_job_which_resumes_from_its_checkpoint(
        artifacts, tmp_path, caplog):
    caplog.set_level("INFO")
    seen = tmp_path / "seen"
    args = training(
        artifacts, tmp_path / "run",
        training_parameters={**PARAMETERS, "max_steps": 8, "save_strategy": "steps",
                             "save_steps": 3},
        kubernetes_options={"backoff_limit": 1, "env": {
            "OMP_NUM_THREADS": "1", "KFTUNE_DEBUG_KILL_AT_STEP": "5",
            "KFTUNE_DEBUG_KILL_RANK": "2", "KFTUNE_DEBUG_SEEN_DIR": str(seen)}})
    result = run_step(**args)

    assert "starting the job again (restart 1 of 1)" in caplog.text
    assert "trainer rank 2 (pid" in caplog.text and "killed by SIGKILL" in caplog.text
    assert result["steps"] == 8 and result["resumed_from_step"] == 3
    assert [step for step, _ in result["train_loss"]] == list(range(1, 9))
    # 3 steps of 8 rows per epoch. Steps 4-5 (epoch 1) ran in both attempts on the same
    # examples: counted once per (epoch, step, example), each of the 24 rows was trained on once
    # in each whole epoch.
    trained = set()
    for path in seen.glob("seen-rank*.txt"):
        trained.update(tuple(map(int, line.split())) for line in path.read_text().splitlines())
    for whole_epoch in (0, 1):
        assert sorted(index for epoch, _, index in trained if epoch == whole_epoch) == list(
            range(24))


def test_the_pod_entrypoint_stages_trains_and_uploads(artifacts, tmp_path):
    """pod.py as the operator would start it in 2 pods, with local paths as artifact URIs."""
    model, data = artifacts
    output_uri = tmp_path / "uploaded-adapter"
    command = [
        sys.executable, "-m", "kftune.components.train_lora.pod.entrypoint",
        "--task", "causal-lm", "--model-uri", str(model), "--data-uri", str(data),
        "--output-uri", str(output_uri), "--work-dir", str(tmp_path / "pod-{rank}"),
        "--training-parameters", json.dumps(PARAMETERS), "--lora-config", json.dumps(LORA),
    ]
    lines = []
    # Each node needs its own "emptyDir": a tiny wrapper substitutes the node rank.
    wrapper = (
        "import os, runpy, sys\n"
        "sys.argv = ['pod'] + [a.replace('{rank}', os.environ['PET_NODE_RANK']) "
        "for a in sys.argv[1:]]\n"
        "runpy.run_module('kftune.components.train_lora.pod.entrypoint', run_name='__main__')\n"
    )
    backend = LocalBackend([sys.executable, "-c", wrapper, *command[3:]], num_workers=2,
                           num_procs_per_worker=1, env={"OMP_NUM_THREADS": "1"},
                           log_line=lines.append)
    backend.submit()
    backend.wait(timeout_seconds=600)

    assert (output_uri / "adapter_config.json").is_file()
    assert (output_uri / "manifest.json").is_file()
    assert any("[node-0]" in line and "uploaded the adapter" in line for line in lines)
    assert not any("[node-1]" in line and "uploaded the adapter" in line for line in lines)


def test_the_component_runs_under_kfp_local(artifacts, tmp_path):
    from kfp import dsl, local
    from kftune.components.train_lora.component import train_lora

    model, data = artifacts
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)

    @dsl.pipeline
    def train_only() -> dsl.Model:
        base = dsl.importer(artifact_uri=str(model), artifact_class=dsl.Model, reimport=False)
        rows = dsl.importer(artifact_uri=str(data), artifact_class=dsl.Dataset, reimport=False)
        task = train_lora(model=base.output, train_data=rows.output, task="causal-lm",
                          training_parameters=PARAMETERS, lora_config=LORA, num_workers=2,
                          num_procs_per_worker="1", backend="local")
        return task.outputs["adapter"]

    run = train_only()
    adapter = Path(run.output.path)
    assert (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "manifest.json").read_text())["training"]["world_size"] == 2


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB filesystem (tmpfs): room for the run's config, not for its adapter."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_named_in_the_first_line(artifacts, small_disk):
    args = training(artifacts, small_disk, num_workers=1, num_procs_per_worker="1",
                    kubernetes_options={"backoff_limit": 0, "env": {"OMP_NUM_THREADS": "1"}})
    with pytest.raises(RuntimeError) as caught:
        run_step(**args)

    first = str(caught.value).splitlines()[0]
    assert first.startswith("training failed on node 0 of 1: trainer rank 0: "), first
    assert "No space left on device" in first
    assert first.endswith("-- the disk is full: free space on it, or point the run's output "
                          "elsewhere"), first
    assert not Path(args["adapter_dir"]).exists()


STEP = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from kftune.components.train_lora.step.backends import StepFiles
from kftune.components.train_lora.step.launch import run_training
from kftune.components.train_lora.step.spec import TrainParameters
args = json.loads(sys.argv[1])
def take(cls):
    return cls(**{name: args.pop(name) for name in list(args) if name in cls.__dataclass_fields__})
files = take(StepFiles)
run_training(take(TrainParameters), files, **args)
"""


def test_sigterm_of_the_step_stops_its_nodes(artifacts, tmp_path):
    """The KFP step (what a cluster's pod runs) with the local backend, stopped by SIGTERM."""
    import psutil

    args = training(artifacts, tmp_path, metrics=None,
                    training_parameters={**PARAMETERS, "max_steps": 100_000})
    log = tmp_path / "step.log"
    with log.open("w") as handle:
        step = subprocess.Popen([sys.executable, "-c", STEP, json.dumps(args)], stdout=handle,
                                stderr=subprocess.STDOUT)
    tree = []
    try:
        deadline = time.monotonic() + 600
        while "step 1/100000" not in log.read_text() and time.monotonic() < deadline:
            assert step.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        tree = psutil.Process(step.pid).children(recursive=True)
        assert sum("pod.trainer" in " ".join(child.cmdline()) for child in tree) >= 6, tree
        step.terminate()
        assert step.wait(timeout=120) == 143, log.read_text()[-3000:]
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert [child for child in alive if child.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        for child in [step, *tree]:
            with contextlib.suppress(Exception):
                child.kill()
    assert "cancelled: deleting the training job" in log.read_text()
    assert not Path(args["adapter_dir"]).exists()
