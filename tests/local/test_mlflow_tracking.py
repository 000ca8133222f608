"""Experiment tracking: a demo-sized run logs to a real MLflow server on 127.0.0.1.

The server is MLflow's own (`mlflow server`, SQLite store) started by the test; the run's
params, per-step and final metrics, the evaluation's results and the adapter's URI are read back
through MLflow's client. An unreachable tracker is a warning, and training succeeds.
"""

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kftune.components.common import demo
from kftune.components.evaluate.evaluation import run_evaluation
from kftune.components.train_lora.step.backends.local import free_port
from kftune.pipelines.lora_finetune import DEMO_LORA_CONFIG, DEMO_TRAINING_PARAMETERS
from support.train_step import run_step

pytestmark = pytest.mark.local
mlflow = pytest.importorskip("mlflow", reason="pip install 'kftune[test]' (mlflow's server)")

PARAMETERS = {**DEMO_TRAINING_PARAMETERS, "max_steps": 8, "logging_steps": 2}
LOGGED_STEPS = [1, 2, 4, 6, 8]


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (a SQLite store in a temporary directory)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--default-artifact-root", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"mlflow server did not start: {server.stdout.read()[-3000:]!r}")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    model = demo.demo_classifier_model(root / "minilm")
    rows = demo.sentiment_rows(360, seed=0, min_confidence=0.6)
    labels = demo.SENTIMENT_LABELS
    train = demo.write_dataset_artifact(root / "train", rows[:300], label_names=labels)
    held_out = demo.write_dataset_artifact(root / "eval", rows[300:], label_names=labels,
                                           source_uri="memory://held-out")
    return model, train, held_out


def train(artifacts, adapter: Path) -> dict:
    model, data, _ = artifacts
    return run_step(
        model_dir=str(model), model_uri=str(model), data_dir=str(data), data_uri=str(data),
        adapter_dir=str(adapter), adapter_uri=str(adapter), metrics=None,
        task="sequence-classification", training_parameters=PARAMETERS,
        lora_config=DEMO_LORA_CONFIG, num_workers=1, num_procs_per_worker="1",
        resources_per_worker={}, backend="local", image="", timeout_minutes=10,
        kubernetes_options={"env": {"OMP_NUM_THREADS": "1"}})


def test_a_run_is_logged_and_read_back_through_mlflows_client(tracker, artifacts, tmp_path,
                                                               monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker)
    monkeypatch.setenv("KFP_RUN_NAME", "lora-finetune-run-42")  # as the pipeline sets it
    adapter = tmp_path / "adapter"
    result = train(artifacts, adapter)
    run_evaluation(base_model_dir=str(artifacts[0]), adapter_dir=str(adapter),
                   eval_data_dir=str(artifacts[2]), task="sequence-classification",
                   max_examples=40)

    client = MlflowClient(tracker)
    experiment = client.get_experiment_by_name("kftune")
    (run,) = client.search_runs([experiment.experiment_id],
                                "attributes.run_name = 'lora-finetune-run-42'")
    assert run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == str(PARAMETERS["learning_rate"])
    assert run.data.params["lora.r"] == "8" and run.data.params["task"] == "sequence-classification"
    assert run.data.params["adapter_uri"] == str(adapter.resolve())
    assert run.data.tags["kftune.adapter_uri"] == str(adapter.resolve())
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [point.step for point in loss] == LOGGED_STEPS
    assert [point.value for point in loss] == pytest.approx(
        [loss for _, loss in result["train_loss"]])
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == len(LOGGED_STEPS)
    assert run.data.metrics["final_loss"] == pytest.approx(result["final_loss"])
    # The evaluate step added its results to the same run.
    assert {"eval_base_accuracy", "eval_tuned_accuracy", "eval_tuned_macro_f1"} <= set(
        run.data.metrics)


def test_an_unreachable_tracker_is_a_warning_and_training_succeeds(artifacts, tmp_path,
                                                                     monkeypatch, caplog):
    caplog.set_level("INFO")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    result = train(artifacts, tmp_path / "adapter")

    assert result["steps"] == PARAMETERS["max_steps"]
    assert "MLflow tracking stopped" in caplog.text and "training goes on" in caplog.text
    shutil.rmtree(tmp_path / "adapter")
