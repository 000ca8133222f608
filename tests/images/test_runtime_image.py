"""The runtime image runs each compiled component as a KFP pod would: the pipeline, step by step.

download_dataset reads from the local S3 server, download_model too, train_lora trains with the
local backend (torchrun inside the step's container), evaluate scores base and adapter; then the
optional steps: export_model merges the adapter, register_model registers adapter and merged
model in the Model Registry double, deploy_model serves them through the Kubernetes API double
(its KServe controller makes the service Ready), and benchmark runs lm-evaluation-harness on the
base model and the adapter with a local task fetched from S3. Each step's inputs are the previous
steps' outputs, as the pipeline wires them.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.fake_kubernetes import SERVING, FakeKubernetes
from support.model_registry_server import ModelRegistryServer

pytestmark = pytest.mark.images

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def test_the_pipeline_steps_run_in_the_runtime_image(launch_step, s3, tmp_path: Path) -> None:
    from kftune.components.common.demo import tiny_causal_lm
    from kftune.components.common.transfer import upload_directory

    bucket = s3.bucket("sources")
    rows = "".join(json.dumps({"body": f"note number {n} is short."}) + "\n" for n in range(60))
    dataset_uri = s3.put(bucket, "notes/notes.jsonl", rows)
    model_uri = f"s3://{bucket}/tiny-lm"
    upload_directory(tiny_causal_lm(tmp_path / "tiny"), model_uri, parameter="model")
    # What the step pods get from the `s3-credentials` Secret; the fake keys are the test server's.
    env = {name: os.environ[name] for name in S3_ENV} | {"OMP_NUM_THREADS": "1"}
    run = "minio://kftune/run-1"
    store: Path = launch_step.store

    dataset = launch_step(
        "download_dataset",
        {"uri": dataset_uri, "column_mapping": {"text": "body"}, "eval_fraction": 0.2},
        {}, {"train_data": f"{run}/download-dataset/train_data",
             "eval_data": f"{run}/download-dataset/eval_data"}, env)
    assert dataset.returncode == 0, dataset.log[-3000:]
    train_manifest = json.loads((store / "kftune/run-1/download-dataset/train_data/manifest.json")
                                .read_text())
    assert train_manifest["rows"] == 48 and train_manifest["source"]["uri"] == dataset_uri

    model = launch_step("download_model", {"uri": model_uri, "task": "causal-lm"}, {},
                        {"model": f"{run}/download-model/model"}, env)
    assert model.returncode == 0, model.log[-3000:]
    assert (store / "kftune/run-1/download-model/model/config.json").is_file()

    train = launch_step(
        "train_lora",
        {"task": "causal-lm", "backend": "local",
         "training_parameters": {"max_steps": 3, "save_strategy": "no"},
         "lora_config": {"r": 4, "target_modules": "all-linear"},
         "resources_per_worker": {}, "kubernetes_options": {}},
        {"model": f"{run}/download-model/model",
         "train_data": f"{run}/download-dataset/train_data"},
        {"adapter": f"{run}/train-lora/adapter", "metrics": f"{run}/train-lora/metrics"}, env)
    assert train.returncode == 0, train.log[-3000:]
    assert (store / "kftune/run-1/train-lora/adapter/adapter_config.json").is_file()
    (train_metrics,) = train.output["artifacts"]["metrics"]["artifacts"]
    assert train_metrics["metadata"]["steps"] == 3

    evaluation = launch_step(
        "evaluate", {"task": "causal-lm", "max_examples": 8, "batch_size": 8},
        {"base_model": f"{run}/download-model/model", "adapter": f"{run}/train-lora/adapter",
         "eval_data": f"{run}/download-dataset/eval_data"},
        {"metrics": f"{run}/evaluate/metrics",
         "classification_metrics": f"{run}/evaluate/classification_metrics",
         "report": f"{run}/evaluate/report"}, env)
    assert evaluation.returncode == 0, evaluation.log[-3000:]
    (metrics,) = evaluation.output["artifacts"]["metrics"]["artifacts"]
    assert metrics["metadata"]["eval_examples"] == 8
    assert metrics["metadata"]["base_perplexity"] > 1
    assert metrics["metadata"]["tuned_perplexity"] > 1
    optional_steps(launch_step, run, env)
    benchmark_step(launch_step, run, env, s3, bucket, tmp_path)


def benchmark_step(launch_step, run: str, env: dict[str, str], s3, bucket: str,
                   tmp_path: Path) -> None:
    """benchmark on the base model and the adapter, with a local task fetched from S3."""
    from kftune.components.benchmark.demo_task import TASK_NAME, write_sentiment_task

    tasks = write_sentiment_task(tmp_path / "tasks", count=12)
    for path in tasks.iterdir():
        s3.put(bucket, f"tasks/{path.name}", path.read_bytes())
    store: Path = launch_step.store
    benchmarked = launch_step(
        "benchmark", {"tasks": TASK_NAME, "limit": 6, "batch_size": 3,
                      "task_source": f"s3://{bucket}/tasks"},
        {"base_model": f"{run}/download-model/model", "tuned_model": f"{run}/train-lora/adapter"},
        {"metrics": f"{run}/benchmark/metrics", "report": f"{run}/benchmark/report"},
        env | {"HF_HUB_OFFLINE": "1"})
    assert benchmarked.returncode == 0, benchmarked.log[-3000:]
    (metrics,) = benchmarked.output["artifacts"]["metrics"]["artifacts"]
    assert {f"base/{TASK_NAME}/acc", f"tuned/{TASK_NAME}/acc"} <= set(metrics["metadata"])
    report = (store / "kftune/run-1/benchmark/report").read_text()
    assert f"| {TASK_NAME} | acc |" in report


def _ready_with_url(fake: FakeKubernetes, service: dict[str, Any]) -> None:
    """KServe's controller, briefly: the created service becomes Ready with a URL."""
    meta = service["metadata"]
    time.sleep(0.2)
    url = f"http://{meta['name']}.{meta['namespace']}.example.com"
    fake.set_status(meta["namespace"], meta["name"], {
        "observedGeneration": meta["generation"], "url": url, "addresses": [{"url": url}],
        "conditions": [{"type": kind, "status": "True", "reason": "", "message": "",
                        "lastTransitionTime": "2026-12-02T08:00:00Z"}
                       for kind in ("MainWorkloadReady", "Ready")]})


def optional_steps(launch_step, run: str, env: dict[str, str]) -> None:
    """export_model, register_model and deploy_model on the outputs of the steps before them."""
    store: Path = launch_step.store
    model, adapter = f"{run}/download-model/model", f"{run}/train-lora/adapter"
    merged = launch_step(
        "export_model", {"task": "causal-lm", "dtype": "float32", "max_shard_size": "50MB"},
        {"base_model": model, "adapter": adapter, "eval_metrics": f"{run}/evaluate/metrics"},
        {"merged_model": f"{run}/export-model/merged_model"}, env)
    assert merged.returncode == 0, merged.log[-3000:]
    assert (store / "kftune/run-1/export-model/merged_model/config.json").is_file()

    with ModelRegistryServer().running() as registry:
        registered = launch_step(
            "register_model",
            {"registry_address": registry.address, "registry_port": registry.port,
             "model_name": "notes", "version": "run-1"},
            {"adapter": adapter, "merged_model": f"{run}/export-model/merged_model",
             "eval_metrics": f"{run}/evaluate/metrics"},
            {"registration": f"{run}/register-model/registration"}, env)
        assert registered.returncode == 0, registered.log[-3000:]
        names = {entry["name"] for entry in registry.state.registered_models.values()}
    assert names == {"notes", "notes-merged"}
    assert (store / "kftune/run-1/register-model/registration").exists()

    kubeconfig = store / "kubeconfig"  # /minio/kubeconfig in the step's container
    with FakeKubernetes(serves=SERVING) as fake:
        fake.on_create = _ready_with_url
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "step",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "step", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "step", "context": {"cluster": "fake", "user": "step",
                                                      "namespace": "team"}}]}))
        deployed = launch_step(
            "deploy_model", {"serving_name": "notes", "namespace": "team", "timeout_minutes": 2},
            {"adapter": adapter, "base_model": model},
            {"service": f"{run}/deploy-model/service"}, env | {"KUBECONFIG": "/minio/kubeconfig"})
        assert deployed.returncode == 0, deployed.log[-3000:]
        assert fake.job("team", "notes") is not None
    assert deployed.output["parameterValues"]["Output"].startswith(
        "http://notes.team.example.com")
