"""run_training with the Kubernetes backend: an API server double plus a local S3 (moto).

The controller plays the operator and the pods: node rank 0 uploads the adapter to the step's
output URI with the pod's own upload code; the step then collects it and logs the metrics.
"""

import json
from pathlib import Path

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.common.transfer import download_directory, upload_directory
from kftune.components.train_lora.step.backends import Target, target_of
from kftune.components.train_lora.step.launch import whole_numbers_as_ints
from support.fake_kubernetes import FakeKubernetes
from support.train_step import run_step

NAMESPACE = "team-a"


class Metrics:
    def __init__(self):
        self.values = {}

    def log_metric(self, name, value):
        self.values[name] = value


def input_artifacts(tmp_path):
    model = tmp_path / "inputs" / "model"
    data = tmp_path / "inputs" / "data"
    model.mkdir(parents=True)
    data.mkdir(parents=True)
    write_manifest(model, {"kind": "model", "task": "causal-lm"})
    write_manifest(data, {"kind": "dataset", "rows": 10})
    return model, data


def fake_adapter(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * 128)
    (directory / "metrics.json").write_text(json.dumps({
        "train_loss": [[1, 2.0], [10, 0.5]], "final_loss": 0.5, "steps": 10,
        "tokens_per_second": 1234.5, "runtime_seconds": 12.0,
    }))
    write_manifest(directory, {"kind": "adapter", "task": "causal-lm"})
    return directory


def argument(job, flag):
    if job["kind"] == "TrainJob":
        args = job["spec"]["trainer"]["args"]
    else:
        args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "args"]
    return args[args.index(flag) + 1]


def make_controller(tmp_path, outcome="Succeeded"):
    """Plays the Training Operator (PyTorchJob) or Kubeflow Trainer (TrainJob) and the pods."""

    def controller(fake, job):
        name = job["metadata"]["name"]
        v2 = job["kind"] == "TrainJob"
        if v2:
            master, worker = (fake.add_pod(NAMESPACE, name, "node", index) for index in (0, 1))
        else:
            fake.set_condition(NAMESPACE, name, "Created")
            master = fake.add_pod(NAMESPACE, name, "Master", 0)
            worker = fake.add_pod(NAMESPACE, name, "Worker", 0)
            fake.set_condition(NAMESPACE, name, "Running")
        fake.log(NAMESPACE, master, "step 10 loss 0.5")
        if outcome == "Succeeded":
            upload_directory(fake_adapter(tmp_path / "pod-disk" / "final"),
                             argument(job, "--output-uri"))
            fake.finish_pod(NAMESPACE, master, 0)
            fake.finish_pod(NAMESPACE, worker, 0)
            fake.set_condition(NAMESPACE, name, "Complete" if v2 else "Succeeded")
        else:
            fake.log(NAMESPACE, master, "RuntimeError: NCCL timeout")
            fake.finish_pod(NAMESPACE, master, 1)
            fake.set_condition(NAMESPACE, name, "Failed", "JobSetFailed" if v2 else
                               "PyTorchJobFailed", "1 Master replica(s) failed.")

    return controller


def training_args(tmp_path, bucket, **overrides):
    model, data = input_artifacts(tmp_path)
    args = dict(
        model_dir=str(model), model_uri=f"s3://{bucket}/run-7/download-model/model",
        data_dir=str(data), data_uri=f"s3://{bucket}/run-7/download-dataset/train_data",
        adapter_dir=str(tmp_path / "outputs" / "adapter"),
        adapter_uri=f"s3://{bucket}/run-7/train-lora/adapter",
        metrics=Metrics(), task="causal-lm", training_parameters={"max_steps": 10},
        lora_config={"r": 8}, num_workers=2, num_procs_per_worker="1",
        resources_per_worker={"cpu": 1}, backend="kubernetes",
        image="registry.example.com/ml/kftune-trainer:0.1.0",
        timeout_minutes=5, kubernetes_options={"namespace": NAMESPACE},
    )
    args.update(overrides)
    return args


@pytest.mark.parametrize("backend, serves, kind", [
    ("kubernetes", ("pytorchjobs", "trainjobs"), "PyTorchJob"),
    ("trainjob", ("pytorchjobs", "trainjobs"), "TrainJob"),
    ("auto", ("pytorchjobs", "trainjobs"), "TrainJob"),
    ("auto", ("pytorchjobs",), "PyTorchJob"),
], ids=["pytorchjob", "trainjob", "auto picks TrainJob", "auto on a v1 cluster"])
def test_kubernetes_run_collects_the_adapter_and_metrics(s3, tmp_path, monkeypatch, backend,
                                                        serves, kind):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # auto: inside a cluster
    args = training_args(tmp_path, s3.bucket("pipeline"), backend=backend)
    with FakeKubernetes(serves=serves) as fake:
        fake.on_create = make_controller(tmp_path)
        result = run_step(**args, api_client=fake.api_client())
        (stored,) = [fake.job(NAMESPACE, name) for name in fake.created]
    assert stored["kind"] == kind

    adapter = Path(args["adapter_dir"])
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size == 128
    assert result["final_loss"] == 0.5
    assert args["metrics"].values == {"final_loss": 0.5, "steps": 10.0,
                                      "tokens_per_second": 1234.5, "runtime_seconds": 12.0}
    assert len(fake.created) == 1 and fake.created[0].startswith("kftune-clm-")


@pytest.mark.parametrize("backend, reason", [("kubernetes", "PyTorchJobFailed"),
                                             ("trainjob", "JobSetFailed")])
def test_kubernetes_failure_fails_the_step_and_publishes_nothing(s3, tmp_path, backend, reason):
    args = training_args(tmp_path, s3.bucket("pipeline"), backend=backend)
    with FakeKubernetes() as fake:
        fake.on_create = make_controller(tmp_path, outcome="Failed")
        with pytest.raises(RuntimeError, match=rf"failed: {reason}(.|\n)*NCCL timeout"):
            run_step(**args, api_client=fake.api_client())
    assert not Path(args["adapter_dir"]).exists()


def test_bad_input_creates_nothing(tmp_path):
    args = training_args(tmp_path, "pipeline", num_workers=0,
                         resources_per_worker={"memory": "ten gigs"},
                         lora_config={"r": 0}, backend="kubernetes")
    with FakeKubernetes() as fake:
        with pytest.raises(InputError) as caught:
            run_step(**args, api_client=fake.api_client())
    assert fake.requests == []
    message = str(caught.value)
    assert "`num_workers` must be >= 1, got 0" in message
    assert "'ten gigs'" in message and "`lora_config.r`" in message


def test_no_trainer_image_creates_nothing(tmp_path):
    """No `image` and a runtime image that names no trainer: refused before the job exists."""
    args = training_args(tmp_path, "pipeline", image="")
    with FakeKubernetes() as fake:
        with pytest.raises(InputError, match="`image` names no pullable image"):
            run_step(**args, api_client=fake.api_client())
    assert fake.requests == []


def test_kubernetes_backend_needs_remote_artifacts(tmp_path):
    args = training_args(tmp_path, "pipeline", adapter_uri=str(tmp_path / "adapter"))
    with pytest.raises(InputError, match="`adapter` must live in an object store"):
        run_step(**args, api_client=None)


def test_missing_input_artifacts_are_reported(tmp_path):
    args = training_args(tmp_path, "pipeline", backend="local")
    args["data_dir"] = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match="`train_data` must be a kftune artifact directory"):
        run_step(**args)


def test_unknown_backend(tmp_path):
    args = training_args(tmp_path, "pipeline", backend="slurm")
    with pytest.raises(InputError,
                       match="`backend` must be one of auto, kubernetes, trainjob, local"):
        run_step(**args)


@pytest.mark.parametrize("host, expected", [("10.0.0.1", Target.CLUSTER), (None, Target.LOCAL)],
                         ids=["in a cluster", "elsewhere"])
def test_auto_backend_is_kubernetes_only_inside_a_cluster(host, expected, monkeypatch):
    if host is None:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    else:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    assert target_of("auto") is expected
    assert target_of("local") is Target.LOCAL


def test_pod_staging_round_trip_through_s3(s3, tmp_path):
    bucket = s3.bucket("artifacts")
    uri = f"s3://{bucket}/run/adapter"
    upload_directory(fake_adapter(tmp_path / "final"), uri)
    keys = [item["Key"] for item in s3.client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == sorted(f"run/adapter/{name}" for name in (
        "adapter_config.json", "adapter_model.safetensors", "metrics.json", "manifest.json"))

    local = download_directory(f"minio://{bucket}/run/adapter", tmp_path / "down",
                               parameter="adapter")
    assert (local / "adapter_model.safetensors").read_bytes() == b"\0" * 128


def test_kfp_struct_numbers_are_turned_back_into_ints():
    # KFP passes dict parameters as protobuf Structs: every number arrives as a double.
    from_kfp = {"r": 8.0, "lora_dropout": 0.1, "target_modules": ["q_proj"],
                "nested": {"max_restarts": 3.0, "flag": True}}
    assert whole_numbers_as_ints(from_kfp) == {
        "r": 8, "lora_dropout": 0.1, "target_modules": ["q_proj"],
        "nested": {"max_restarts": 3, "flag": True},
    }
    assert isinstance(whole_numbers_as_ints(from_kfp)["r"], int)


def test_auto_on_a_cluster_serving_neither_kind_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    args = training_args(tmp_path, "pipeline", backend="auto")
    with FakeKubernetes(serves=()) as fake:
        with pytest.raises(RuntimeError, match="serves neither TrainJob .* nor PyTorchJob"):
            run_step(**args, api_client=fake.api_client())
    assert fake.created == []


def test_auto_refuses_options_the_discovered_kind_lacks(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    args = training_args(tmp_path, "pipeline", backend="auto",
                         kubernetes_options={"namespace": NAMESPACE, "backoff_limit": 3})
    with FakeKubernetes(serves=("trainjobs",)) as fake:
        with pytest.raises(InputError,
                           match="backoff_limit cannot be used with backend 'trainjob'"):
            run_step(**args, api_client=fake.api_client())
    assert fake.created == []
