"""A TrainJob's `status.trainerStatus` advances while its (local) pod trains (KEP-2779).

The API server double serves the TrainJob (admitted by the vendored v2.3 CRD schema) and the
Trainer's status endpoint; the "pod" is the real trainer under the torch plugin's environment
plus the three variables the Trainer injects, and its log is what the step streams.
"""

import subprocess
import threading
import time

import pytest
from kftune.components.common import demo
from kftune.components.train_lora.config import trainer_command
from kftune.components.train_lora.pod.progress import (
    STATUS_TOKEN_ENV,
    STATUS_URL_ENV,
)
from kftune.components.train_lora.step import job as job_lib
from kftune.components.train_lora.step.backends import Target
from kftune.components.train_lora.step.backends.cluster_training import manifest_of
from kftune.components.train_lora.step.backends.kubernetes import TrainJobBackend
from kftune.components.train_lora.step.backends.local import free_port
from kftune.components.train_lora.step.spec import TrainingSpec
from kftune.components.train_lora.step.trainjob import trainjob_env
from support.fake_kubernetes import FakeKubernetes
from support.torchrun_env import clean_env
from support.train_step import plan_of

pytestmark = pytest.mark.local

NAMESPACE = "team-a"
NAME = "kftune-progress"
STEPS = 8


def trainjob_manifest() -> dict:
    plan = plan_of(task="causal-lm", training_parameters={}, lora_config={}, num_workers=1,
                   num_procs_per_worker=1, resources_per_worker={"cpu": 1},
                   backend="trainjob", image="registry.local/kftune/trainer:1")
    io = job_lib.PodIO("s3://bucket/model", "s3://bucket/data", "s3://bucket/run/adapter")
    return manifest_of(
        job_lib.JobRequest(plan.spec, plan.options, io, name=NAME, namespace=NAMESPACE),
        Target.TRAINJOB)


def trainer_config(tmp_path):
    model = demo.tiny_causal_lm(tmp_path / "model")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(32, seed=3)]
    data = demo.write_dataset_artifact(tmp_path / "data", rows)
    spec = TrainingSpec(
        task="causal-lm", num_workers=1, num_procs_per_worker=1,
        training_parameters={"learning_rate": 2e-2, "max_steps": STEPS, "logging_steps": 1,
                             "per_device_train_batch_size": 4, "save_strategy": "no",
                             "max_seq_length": 32},
        lora_config={"r": 4, "lora_alpha": 8, "target_modules": "all-linear"})
    return spec.trainer_config(model_dir=str(model), data_dir=str(data),
                               output_dir=str(tmp_path / "output")).to_file(
        tmp_path / "config.json")


def test_the_trainjob_status_advances_while_the_pod_trains(tmp_path):
    config = trainer_config(tmp_path)
    token = tmp_path / "token"
    seen_while_training: list[int] = []
    lines: list[str] = []

    def train_in_a_local_pod(fake, job):
        pod = fake.add_pod(NAMESPACE, NAME, "node", 0)
        token.write_text(fake.trainer_status_token)
        env = {**trainjob_env(job_name=NAME, num_nodes=1, num_procs=1, node_rank=0,
                              master_addr="127.0.0.1", master_port=free_port()),
               STATUS_URL_ENV: fake.trainer_status_url(NAMESPACE, NAME),
               STATUS_TOKEN_ENV: str(token)}
        process = subprocess.Popen(trainer_command(config), env=clean_env(OMP_NUM_THREADS="1",
                                                                          **env),
                                   cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)

        def watch_status():  # what `kubectl get trainjob` shows meanwhile
            while process.poll() is None:
                status = (fake.job(NAMESPACE, NAME) or {}).get("status", {})
                progress = status.get("trainerStatus", {}).get("progressPercentage")
                if progress is not None and (not seen_while_training
                                             or seen_while_training[-1] != progress):
                    seen_while_training.append(progress)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_status, daemon=True)
        watcher.start()
        for line in process.stdout:
            fake.log(NAMESPACE, pod, line.rstrip("\n"))
        process.wait()
        watcher.join()
        fake.finish_pod(NAMESPACE, pod, process.returncode)
        condition = ("Complete", "JobSetCompleted") if process.returncode == 0 else (
            "Failed", "JobSetFailed")
        fake.set_condition(NAMESPACE, NAME, *condition, "jobset finished")

    with FakeKubernetes() as fake:
        fake.on_create = train_in_a_local_pod
        backend = TrainJobBackend(fake.api_client(), trainjob_manifest(), poll_seconds=0.05,
                                  max_backoff_seconds=0.2, watch_seconds=2,
                                  log_line=lines.append)
        backend.submit()
        backend.wait(timeout_seconds=300)
        final = fake.job(NAMESPACE, NAME)["status"]["trainerStatus"]
        reported = list(fake.trainer_statuses)

    # Seen on the TrainJob while the pod was still training, then 100 % at the end.
    assert seen_while_training and seen_while_training[0] < 100, seen_while_training
    progress = [status["progressPercentage"] for status in reported]
    assert progress == sorted(progress) and progress[0] < 100 and progress[-1] == 100
    metrics = {metric["name"]: metric["value"] for metric in final["metrics"]}
    assert metrics["step"] == str(STEPS) and float(metrics["loss"]) > 0
    assert final["estimatedRemainingSeconds"] == 0 and final["lastUpdatedTime"].endswith("Z")
    # The step's own log shows the same progress, one line per logged step.
    assert sum(f"step {step}/{STEPS} " in line for line in lines
               for step in range(1, STEPS + 1)) == STEPS
