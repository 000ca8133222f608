"""A killed rank's cause travels as a record: pod entrypoint -> termination message -> step.

The pod entrypoint runs for real (torchrun, the trainer, a rank that SIGKILLs itself) and writes
its termination message file; the API server double then serves that message in the failed pod's
status, as the kubelet does, and the PyTorchJob backend reads the cause from there.
"""

import sys
import time
from pathlib import Path

import pytest
from kftune.components.common import demo
from kftune.components.train_lora.failures import TERMINATION_MESSAGE_ENV, FailureRecord
from kftune.components.train_lora.step import job as job_lib
from kftune.components.train_lora.step.backends import Target
from kftune.components.train_lora.step.backends.cluster_training import manifest_of
from kftune.components.train_lora.step.backends.kubernetes import PyTorchJobBackend
from kftune.components.train_lora.step.backends.local import LocalBackend
from support.fake_kubernetes import FakeKubernetes
from support.train_step import plan_of

pytestmark = pytest.mark.local

NAMESPACE = "team-a"
PARAMETERS = {"learning_rate": 2e-2, "max_steps": 4, "per_device_train_batch_size": 2,
              "logging_steps": 1, "save_strategy": "no", "max_seq_length": 32}


def run_pod_that_loses_a_rank(tmp_path: Path) -> str:
    """The entrypoint as one pod of 2 processes whose rank 1 is killed; its termination message."""
    import json

    model = demo.tiny_causal_lm(tmp_path / "tiny-llama")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(16, seed=3)]
    data = demo.write_dataset_artifact(tmp_path / "train", rows)
    message_file = tmp_path / "termination-log"
    # The local backend names each node's own record file; `env` puts the pod's path back, as
    # the kubelet's terminationMessagePath would be.
    backend = LocalBackend(
        ["env", f"{TERMINATION_MESSAGE_ENV}={message_file}",
         sys.executable, "-m", "kftune.components.train_lora.pod.entrypoint",
         "--task", "causal-lm", "--model-uri", str(model), "--data-uri", str(data),
         "--output-uri", str(tmp_path / "adapter"), "--work-dir", str(tmp_path / "pod"),
         "--training-parameters", json.dumps(PARAMETERS),
         "--lora-config", json.dumps({"r": 4, "target_modules": "all-linear"})],
        num_workers=1, num_procs_per_worker=2,
        env={"OMP_NUM_THREADS": "1", "KFTUNE_DEBUG_KILL_AT_STEP": "2",
             "KFTUNE_DEBUG_KILL_RANK": "1"},
        log_line=lambda line: None)
    backend.submit()
    with pytest.raises(RuntimeError):
        backend.wait(timeout_seconds=600)
    return message_file.read_text()


def pytorchjob() -> dict:
    plan = plan_of(task="causal-lm", training_parameters={}, lora_config={}, num_workers=1,
                       num_procs_per_worker=2, resources_per_worker={}, backend="kubernetes",
                       image="registry.local/kftune/trainer:1")
    io = job_lib.PodIO("s3://bucket/model", "s3://bucket/data", "s3://bucket/run/adapter")
    request = job_lib.JobRequest(plan.spec, plan.options, io, name="kftune-killed",
                                 namespace=NAMESPACE)
    return manifest_of(request, Target.PYTORCHJOB)


def test_a_killed_ranks_cause_reaches_the_step_through_the_termination_message(tmp_path):
    message = run_pod_that_loses_a_rank(tmp_path)
    record = FailureRecord.from_message(message)
    assert record is not None and record.killed and record.node_rank == 0
    assert record.cause.startswith("trainer rank 1 (pid ") and "SIGKILL" in record.cause

    def fail_with_that_message(fake, job):
        name = job["metadata"]["name"]
        fake.set_condition(NAMESPACE, name, "Created")
        master = fake.add_pod(NAMESPACE, name, "Master", 0)
        fake.set_condition(NAMESPACE, name, "Running")
        # The log's end says nothing useful: the cause must come from the status.
        fake.log(NAMESPACE, master, "step 1/4 loss 6.9", "Terminated")
        time.sleep(0.05)
        fake.finish_pod(NAMESPACE, master, 1, message=message)
        fake.set_condition(NAMESPACE, name, "Failed", "PyTorchJobFailed",
                           f"PyTorchJob {NAMESPACE}/{name} is failed because 1 Master replica(s) "
                           "failed.")

    with FakeKubernetes() as fake:
        fake.on_create = fail_with_that_message
        backend = PyTorchJobBackend(fake.api_client(), pytorchjob(), poll_seconds=0.02,
                                    max_backoff_seconds=0.1, watch_seconds=2,
                                    log_line=lambda line: None)
        backend.submit()
        with pytest.raises(RuntimeError) as caught:
            backend.wait(timeout_seconds=20)

    first, *rest = str(caught.value).splitlines()
    assert first.endswith(f"failed: node 0: {record.cause}"), first
    assert "Terminated" not in str(caught.value)  # no log tail: the record said it all
    assert "PyTorchJobFailed" in rest[0]
