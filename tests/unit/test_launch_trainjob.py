"""The TrainJob backend and `backend: auto` against the API server double (real kubernetes client).

A small controller (the scenarios below) plays Kubeflow Trainer and JobSet: it starts the nodes'
pods (`<job>-node-0-<index>-<suffix>`, with JobSet's labels), writes their logs and sets the
TrainJob's conditions (Suspended while Kueue holds it, then Complete or Failed).
"""

import os
import signal
import threading
import time

import pytest
import yaml
from kftune.components.common.errors import InputError
from kftune.components.train_lora.step import job as job_lib
from kftune.components.train_lora.step.backends import Target, deleting_on_exit, discovery
from kftune.components.train_lora.step.backends.cluster_training import manifest_of
from kftune.components.train_lora.step.backends.kubernetes import TrainJobBackend
from support.fake_kubernetes import FakeKubernetes
from support.structural import CRDS
from support.train_step import plan_of

NAMESPACE = "team-a"
NAME = "kftune-clm-0123456789ab"


def make_manifest(name=NAME, num_workers=2, output_uri="s3://bucket/run-1/train/adapter",
                  options=None):
    plan = plan_of(
        task="causal-lm", training_parameters={}, lora_config={}, num_workers=num_workers,
        num_procs_per_worker=2, resources_per_worker={"cpu": 2}, backend="trainjob",
        image="registry.local/kftune/trainer:1", kubernetes_options=options or {},
    )
    io = job_lib.PodIO("s3://bucket/model", "s3://bucket/data", output_uri)
    job = job_lib.JobRequest(plan.spec, plan.options, io, name=name, namespace=NAMESPACE)
    return manifest_of(job, Target.TRAINJOB)


@pytest.fixture
def fake():
    with FakeKubernetes() as server:
        yield server


@pytest.fixture
def node_lines():
    return []


def make_backend(fake, manifest, lines, **overrides):
    options = dict(poll_seconds=0.02, max_backoff_seconds=0.1, watch_seconds=2,
                   log_line=lines.append)
    options.update(overrides)
    return TrainJobBackend(fake.api_client(), manifest, **options)


def start_nodes(fake, job):
    name = job["metadata"]["name"]
    return [fake.add_pod(NAMESPACE, name, "node", index)
            for index in range(job["spec"]["trainer"]["numNodes"])]


def complete(fake, job):
    pods = start_nodes(fake, job)
    for step in range(1, 4):
        fake.log(NAMESPACE, pods[0], f"step {step} loss {3.0 / step:.3f}")
        time.sleep(0.02)
    fake.log(NAMESPACE, pods[1], "node 1 is not streamed")
    fake.log(NAMESPACE, pods[0], "saved adapter")
    for pod in pods:
        fake.finish_pod(NAMESPACE, pod, 0)
    fake.set_condition(NAMESPACE, job["metadata"]["name"], "Complete", "JobSetCompleted",
                       "jobset completed")


def fail(fake, job):
    pods = start_nodes(fake, job)
    fake.log(NAMESPACE, pods[0], "step 1 loss 2.000")
    fake.log(NAMESPACE, pods[1], "Traceback (most recent call last):",
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    fake.finish_pod(NAMESPACE, pods[1], 1)
    fake.set_condition(NAMESPACE, job["metadata"]["name"], "Failed", "JobSetFailed",
                       "jobset failed: job node-0 failed")


def run_forever(fake, job):
    pods = start_nodes(fake, job)
    fake.log(NAMESPACE, pods[0], "step 1 loss 2.000")


def suspended_then_admitted(release):
    def scenario(fake, job):
        name = job["metadata"]["name"]
        fake.set_condition(NAMESPACE, name, "Suspended", "Suspended", "TrainJob is suspended")
        release.wait(10)  # Kueue admits the workload when the queue has quota
        fake.set_condition(NAMESPACE, name, "Suspended", "Resumed", status="False")
        complete(fake, job)

    return scenario


def test_success_streams_node_zero_and_nothing_else(fake, node_lines, caplog):
    caplog.set_level("INFO")
    fake.on_create = complete
    backend = make_backend(fake, make_manifest(), node_lines)

    assert backend.submit() == NAME
    backend.wait(timeout_seconds=20)

    assert node_lines == [
        "step 1 loss 3.000", "step 2 loss 1.500", "step 3 loss 1.000", "saved adapter"]
    assert f"TrainJob {NAMESPACE}/{NAME} is Complete (JobSetCompleted" in caplog.text
    assert f"TrainJob {NAMESPACE}/{NAME} succeeded" in caplog.text
    assert fake.created == [NAME] and fake.deleted == []


def test_failure_names_the_reason_and_quotes_the_failing_node(fake, node_lines):
    fake.on_create = fail
    backend = make_backend(fake, make_manifest(num_workers=3), node_lines)
    backend.submit()

    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=20)

    message = str(caught.value)
    assert f"TrainJob {NAMESPACE}/{NAME} failed: JobSetFailed: jobset failed" in message
    assert f"pod {NAME}-node-0-1-" in message
    assert "CUDA out of memory" in message


def test_timeout_deletes_the_trainjob(fake, node_lines):
    fake.on_create = run_forever
    backend = make_backend(fake, make_manifest(), node_lines)
    backend.submit()

    with pytest.raises(TimeoutError, match=r"TrainJob .* did not finish within .* deleted it"):
        backend.wait(timeout_seconds=0.6)

    assert fake.deleted == [NAME] and fake.job(NAMESPACE, NAME) is None
    assert fake.pods == {}  # its pods went with it


def test_sigterm_deletes_the_trainjob(fake, node_lines):
    fake.on_create = run_forever
    backend = make_backend(fake, make_manifest(), node_lines)
    backend.submit()
    timer = threading.Timer(0.4, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()

    with pytest.raises(SystemExit) as caught, deleting_on_exit(backend):
        backend.wait(timeout_seconds=30)

    assert caught.value.code == 143
    assert fake.deleted == [NAME]


def test_a_retried_step_reattaches_to_its_trainjob(fake, node_lines, caplog):
    caplog.set_level("INFO")
    release = threading.Event()

    def run_until_released(fake, job):
        pods = start_nodes(fake, job)
        release.wait(10)
        for pod in pods:
            fake.finish_pod(NAMESPACE, pod, 0)
        fake.set_condition(NAMESPACE, job["metadata"]["name"], "Complete", "JobSetCompleted")

    fake.on_create = run_until_released
    make_backend(fake, make_manifest(), node_lines).submit()  # this attempt's pod then dies
    retry = make_backend(fake, make_manifest(), node_lines)
    assert retry.submit() == NAME
    release.set()
    retry.wait(timeout_seconds=20)

    assert fake.created == [NAME]
    assert "re-attaching" in caplog.text


def test_a_kueue_suspended_trainjob_is_waiting_not_failed(fake, node_lines, caplog):
    caplog.set_level("INFO")
    release = threading.Event()
    fake.on_create = suspended_then_admitted(release)
    backend = make_backend(fake, make_manifest(options={"queue_name": "team-queue"}), node_lines)
    backend.submit()
    threading.Timer(0.5, release.set).start()

    backend.wait(timeout_seconds=20)

    assert (f"TrainJob {NAMESPACE}/{NAME} is waiting (Suspended) (Suspended: TrainJob is "
            "suspended)") in caplog.text
    assert "succeeded" in caplog.text
    stored = fake.job(NAMESPACE, NAME)
    assert stored["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"


def test_a_trainer_older_than_2_2_drops_runtime_patches_and_fails_clearly(node_lines, tmp_path):
    # Trainer 2.1's CRD has no spec.runtimePatches: its structural schema prunes the field.
    crd = yaml.safe_load((CRDS / "trainer.kubeflow.org_trainjobs.yaml").read_text())
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["runtimePatches"]
    old_crd = tmp_path / "trainjobs-2.1.yaml"
    old_crd.write_text(yaml.safe_dump(crd))
    with FakeKubernetes(crd_files={"trainjobs": str(old_crd)}) as fake:
        fake.allow_pruning = True
        backend = make_backend(fake, make_manifest(), node_lines)
        with pytest.raises(RuntimeError, match=r"dropped spec.runtimePatches .* Trainer >= 2.2"):
            backend.submit()
        assert fake.deleted == [NAME]


# -- backend: auto --------------------------------------------------------------------------------

OTHER_RUNTIME = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
                 "metadata": {"name": "deepspeed-distributed"}, "spec": {}}


@pytest.mark.parametrize("serves, runtimes, runtime, expected", [
    (("pytorchjobs",), None, None, "kubernetes"),
    (("trainjobs",), None, None, "trainjob"),
    (("pytorchjobs", "trainjobs"), None, None, "trainjob"),
    (("pytorchjobs", "trainjobs"), [OTHER_RUNTIME], None, "kubernetes"),
    (("trainjobs",), [OTHER_RUNTIME], "deepspeed-distributed", "trainjob"),
], ids=["only v1", "only v2", "both: TrainJob preferred",
        "both, but no torch-distributed runtime", "a named runtime that exists"])
def test_auto_picks_the_kind_the_cluster_serves(serves, runtimes, runtime, expected, caplog):
    caplog.set_level("INFO")
    with FakeKubernetes(serves=serves, runtimes=runtimes) as fake:
        kind = discovery.pick_backend(fake.api_client(), runtime=runtime or "torch-distributed",
                                      runtime_given=runtime is not None)
    assert kind is Target(expected)
    assert f"backend auto: {'TrainJob' if expected == 'trainjob' else 'PyTorchJob'}" in caplog.text


@pytest.mark.parametrize("serves, runtime, error, expected", [
    ((), None, RuntimeError, "serves neither TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow "
     "Trainer v2) nor PyTorchJob (kubeflow.org/v1, Training Operator v1)"),
    (("pytorchjobs", "trainjobs"), "torch-tuned", InputError,
     "`kubernetes_options.runtime` 'torch-tuned' is no ClusterTrainingRuntime of this cluster; "
     "it has torch-distributed"),
    (("trainjobs",), None, InputError, "'torch-distributed' is no ClusterTrainingRuntime"),
    (("pytorchjobs",), "torch-distributed", InputError, "needs a TrainJob, which this cluster"),
], ids=["neither", "unknown runtime", "only v2 without the default runtime",
        "a runtime on a v1-only cluster"])
def test_auto_fails_clearly_before_anything_is_created(serves, runtime, error, expected):
    runtimes = [OTHER_RUNTIME] if serves == ("trainjobs",) else None
    with FakeKubernetes(serves=serves, runtimes=runtimes) as fake:
        with pytest.raises(error) as caught:
            discovery.pick_backend(fake.api_client(), runtime=runtime or "torch-distributed",
                                   runtime_given=runtime is not None)
        assert [method for method, _ in fake.requests if method != "GET"] == []
    assert expected in str(caught.value)


def test_an_explicit_trainjob_backend_checks_its_runtime_first():
    with FakeKubernetes() as fake:
        with pytest.raises(InputError, match="'torch-tuned' is no ClusterTrainingRuntime"):
            discovery.check_runtime(fake.api_client(), "torch-tuned")
        fake.forbid_runtime_list = True  # a namespaced service account: the webhook decides
        discovery.check_runtime(fake.api_client(), "torch-tuned")
        assert fake.created == []


# -- kftune launch --------------------------------------------------------------------------------

LAUNCH = ["--namespace", NAMESPACE, "--num-workers", "2", "--model-uri", "s3://b/m",
          "--dataset-uri", "s3://b/d", "--output-uri", "s3://b/o",
          "--image", "registry.example.com/ml/kftune-trainer:0.1.0"]


def write_kubeconfig(path, server):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "me"}}],
    }))
    return path


@pytest.mark.parametrize("serves, kind", [
    (("trainjobs",), "TrainJob"), (("pytorchjobs",), "PyTorchJob"),
    (("pytorchjobs", "trainjobs"), "TrainJob"),
], ids=["v2 cluster", "v1 cluster", "both"])
def test_kftune_launch_auto_dry_run_prints_the_kind_the_cluster_serves(
        tmp_path, monkeypatch, capsys, serves, kind):
    from kftune.components.train_lora.step.cli import launch_main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeKubernetes(serves=serves) as fake:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", fake.url)))
        assert launch_main(["--dry-run", "--backend", "auto", *LAUNCH]) == 0
        assert fake.created == []
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == kind


def test_kftune_launch_creates_and_follows_a_trainjob(fake, tmp_path, monkeypatch, capsys,
                                                     caplog):
    from kftune.components.train_lora.step.cli import launch_main

    caplog.set_level("INFO")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", fake.url)))
    fake.on_create = complete

    assert launch_main(["--backend", "trainjob", *LAUNCH]) == 0

    (name,) = fake.created
    assert fake.job(NAMESPACE, name)["kind"] == "TrainJob"
    assert f"TrainJob {NAMESPACE}/{name} succeeded" in caplog.text
    assert "kftune launch:" not in capsys.readouterr().err
