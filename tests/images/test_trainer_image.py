"""The trainer image runs the training pods of `kftune launch --dry-run` as the operator would.

The launch step (in the runtime image) prints the PyTorchJob; each replica's container command,
arguments and environment then run in the trainer image, 2 "nodes" (Master, Worker) x 2 processes,
two containers on the host network with the environment the Training Operator injects (PET_*,
MASTER_*, RANK, WORLD_SIZE). They stage the model and data from the local S3 server, train with
gloo, and node rank 0 uploads the adapter there.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.images

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _artifacts(tmp_path: Path, bucket: str) -> tuple[str, str]:
    """A Model and a Dataset artifact, as download_model and download_dataset write them, on S3."""
    from kftune.components.common.demo import tiny_causal_lm
    from kftune.components.common.transfer import upload_directory
    from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to
    from kftune.components.download_model.model import ModelSource, download_model_to

    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"text": f"note number {n} is short."}) + "\n"
                             for n in range(64)))
    download_dataset_to(DatasetSource(uri=str(notes), eval_fraction=0.0), tmp_path / "data",
                        tmp_path / "eval")
    download_model_to(ModelSource(uri=str(tiny_causal_lm(tmp_path / "tiny")), task="causal-lm"),
                      tmp_path / "model")
    model_uri, data_uri = f"s3://{bucket}/run-2/model", f"s3://{bucket}/run-2/train_data"
    upload_directory(tmp_path / "model", model_uri, parameter="model")
    upload_directory(tmp_path / "data", data_uri, parameter="train_data")
    return model_uri, data_uri


def test_two_pods_by_two_processes_train_and_upload_the_adapter(podman, images, s3,
                                                                tmp_path: Path) -> None:
    from kftune.components.train_lora.step.backends.local import free_port, operator_env

    bucket = s3.bucket("pipeline")
    model_uri, data_uri = _artifacts(tmp_path, bucket)
    output_uri = f"s3://{bucket}/run-2/train-lora/adapter"
    launch = podman.run(images.runtime, [
        "kftune", "launch", "--dry-run", "--task", "causal-lm", "--model-uri", model_uri,
        "--dataset-uri", data_uri, "--output-uri", output_uri, "--num-workers", "2",
        "--num-procs-per-worker", "2", "--env", "OMP_NUM_THREADS=1",
        "--training-parameters", json.dumps({"max_steps": 2, "save_strategy": "no",
                                             "per_device_train_batch_size": 2}),
        "--lora-config", json.dumps({"r": 4, "target_modules": "all-linear"}),
    ])
    assert launch.returncode == 0, launch.stderr
    job = yaml.safe_load(launch.stdout)
    assert job["spec"]["nprocPerNode"] == "2"

    port = free_port()
    s3_env = {name: os.environ[name] for name in S3_ENV}
    pods = []
    for rank, role in enumerate(("Master", "Worker")):
        (container,) = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"]
        assert container["image"] == images.trainer  # the trainer built beside the runtime image
        env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
        env |= operator_env(num_nodes=2, num_procs=2, node_rank=rank, master_port=port) | s3_env
        flags = ["--rm", "--network", "host", "--pull", "never", "--shm-size", "1g"]
        for key, value in env.items():
            flags += ["-e", f"{key}={value}"]
        pods.append(subprocess.Popen(
            ["podman", "run", *flags, images.trainer, *container["command"], *container["args"]],
            env=dict(podman.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [pod.communicate(timeout=900)[0] for pod in pods]

    for pod, log in zip(pods, logs, strict=True):
        assert pod.returncode == 0, log[-4000:]
    assert "uploaded the adapter" in logs[0] and "uploaded the adapter" not in logs[1]
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix="run-2/train-lora/adapter/")
    uploaded = {item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", [])}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= uploaded
