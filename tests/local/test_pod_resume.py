"""A pod rescheduled onto another node (its local disk lost) resumes from the artifact store."""

import json
import sys

import pytest
from kftune.components.common import demo
from kftune.components.train_lora.step.backends.local import LocalBackend

pytestmark = pytest.mark.local
pytest_plugins = ("support.servers",)

PARAMETERS = {
    "learning_rate": 2e-2, "max_steps": 8, "per_device_train_batch_size": 2,
    "logging_steps": 1, "save_strategy": "steps", "save_steps": 3, "max_seq_length": 32,
}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def run_pod(model, data, output_uri, work_dir, env):
    """The pod entrypoint as the operator starts it on one node (1 pod x 2 processes)."""
    lines = []
    backend = LocalBackend(
        [sys.executable, "-m", "kftune.components.train_lora.pod.entrypoint",
         "--task", "causal-lm", "--model-uri", str(model), "--data-uri", str(data),
         "--output-uri", output_uri, "--work-dir", str(work_dir),
         "--training-parameters", json.dumps(PARAMETERS), "--lora-config", json.dumps(LORA)],
        num_workers=1, num_procs_per_worker=2, env={"OMP_NUM_THREADS": "1", **env},
        log_line=lines.append)
    backend.submit()
    try:
        backend.wait(timeout_seconds=600)
    except RuntimeError as error:
        return False, lines, str(error)
    return True, lines, ""


def test_a_rescheduled_pod_resumes_from_the_checkpoint_in_the_artifact_store(tmp_path, s3):
    model = demo.tiny_causal_lm(tmp_path / "tiny-llama")
    rows = [{"text": row["text"]} for row in demo.sentiment_rows(24, seed=3)]
    data = demo.write_dataset_artifact(tmp_path / "train", rows)
    bucket = s3.bucket("pipeline")
    output_uri = f"s3://{bucket}/run-1/train-lora/adapter"

    # First pod: rank 1 is SIGKILLed after step 5; checkpoint 3 was committed before.
    ok, lines, error = run_pod(model, data, output_uri, tmp_path / "node-a", {
        "KFTUNE_DEBUG_KILL_AT_STEP": "5", "KFTUNE_DEBUG_KILL_RANK": "1"})
    assert not ok and "trainer rank 1 (pid" in error.splitlines()[0], error
    assert "killed by SIGKILL" in error.splitlines()[0], error
    # The pod's own last word (what the launch step quotes on a cluster) names it too.
    assert any("the trainer failed: trainer rank 1 (pid" in line and "SIGKILL" in line
               for line in lines), lines[-5:]
    stored = {item["Key"] for item in s3.client.list_objects_v2(
        Bucket=bucket, Prefix="run-1/train-lora/checkpoints/").get("Contents", [])}
    assert "run-1/train-lora/checkpoints/step-3/COMPLETE" in stored, stored

    # Its replacement on another node: an empty local disk.
    ok, lines, error = run_pod(model, data, output_uri, tmp_path / "node-b", {})
    assert ok, error
    log = "\n".join(lines)
    assert "downloaded checkpoint step 3" in log and "resumed from checkpoint step 3" in log
    metrics = json.loads(s3.client.get_object(
        Bucket=bucket, Key="run-1/train-lora/adapter/metrics.json")["Body"].read())
    assert metrics["steps"] == 8 and metrics["resumed_from_step"] == 3
    assert [step for step, _ in metrics["train_loss"]] == list(range(1, 9))
    # The adapter is uploaded: the stored checkpoints are gone.
    assert "Contents" not in s3.client.list_objects_v2(
        Bucket=bucket, Prefix="run-1/train-lora/checkpoints/")
