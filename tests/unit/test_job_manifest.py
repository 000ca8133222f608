"""The PyTorchJob manifest: the reference example as a golden file, table cases, bad input."""

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kftune.components.common.errors import InputError
from kftune.components.train_lora.step import job as job_lib
from kftune.components.train_lora.step.backends import Target
from kftune.components.train_lora.step.backends.cluster_training import manifest_of
from kftune.components.train_lora.step.cli import launch_main
from kftune.components.train_lora.step.options import MAX_JOB_NAME_LENGTH
from kubernetes import client
from support.fake_kubernetes import FakeKubernetes
from support.train_step import plan_of

GOLDEN = Path(__file__).parent.parent / "golden" / "pytorchjob_reference_bert.yaml"
TRAINJOB_GOLDEN = Path(__file__).parent.parent / "golden" / "trainjob_reference_bert.yaml"
RUN_ROOT = "minio://mlpipeline/v2/artifacts/lora-finetune/3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"

# The reference: TrainingClient().train(num_workers=4, num_procs_per_worker=2,
# resources_per_worker={"gpu": 2, "cpu": 5, "memory": "10G"}, BERT on Yelp reviews with
# TrainingArguments(output_dir="test_trainer", save_strategy="no", eval_strategy="no",
# do_eval=False, disable_tqdm=True, log_level="info") and LoraConfig(r=8, lora_alpha=8,
# lora_dropout=0.1, bias="none")).
REFERENCE_ARGV = [
    "--dry-run",
    "--task", "sequence-classification",
    "--model-uri", f"{RUN_ROOT}/download-model/model",
    "--dataset-uri", f"{RUN_ROOT}/download-dataset/train_data",
    "--output-uri", f"{RUN_ROOT}/train-lora/adapter",
    "--namespace", "kubeflow-user-example-com",
    "--num-workers", "4",
    "--num-procs-per-worker", "2",
    "--resources-per-worker", '{"gpu": 2, "cpu": 5, "memory": "10G"}',
    "--training-parameters",
    '{"output_dir": "test_trainer", "save_strategy": "no", "eval_strategy": "no", '
    '"do_eval": false, "disable_tqdm": true, "log_level": "info"}',
    "--lora-config", '{"r": 8, "lora_alpha": 8, "lora_dropout": 0.1, "bias": "none"}',
    "--image", "ghcr.io/kftune/trainer:0.1.0",
]


def test_reference_example_matches_the_golden_manifest(capsys):
    assert launch_main(REFERENCE_ARGV) == 0
    printed = capsys.readouterr().out
    if os.environ.get("KFTUNE_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(printed)
    assert printed == GOLDEN.read_text(), "regenerate with KFTUNE_UPDATE_GOLDEN=1 and review"


def test_golden_manifest_follows_the_operator_contract():
    manifest = yaml.safe_load(GOLDEN.read_text())
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert manifest["spec"]["nprocPerNode"] == "2"
    for spec in specs.values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert container["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port"}]
        expected = {"nvidia.com/gpu": "2", "cpu": "5", "memory": "10G"}
        assert container["resources"] == {"requests": expected, "limits": expected}
        # KFP's MinIO keys arrive as secretKeyRef, never as plain values or arguments.
        secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                      if "valueFrom" in e}
        assert secret_env["AWS_ACCESS_KEY_ID"] == {"name": "mlpipeline-minio-artifact",
                                                   "key": "accesskey"}
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])


@dataclasses.dataclass
class Case:
    name: str
    config: dict[str, Any]  # the component's parameters (`kubernetes_options` among them)
    check: Any  # callable(manifest dict) -> None
    io: dict[str, str] = dataclasses.field(default_factory=dict)


def build(config: dict[str, Any], io: dict[str, str] | None = None,
          kind: str = "kubernetes") -> dict[str, Any]:
    parameters = dict(task="causal-lm", training_parameters={}, lora_config={}, num_workers=1,
                      num_procs_per_worker=1, resources_per_worker={})
    parameters.update(config)
    plan = plan_of(backend=kind, **parameters)
    pod_io = job_lib.PodIO(**{
        "model_uri": "s3://bucket/model", "data_uri": "s3://bucket/data",
        "output_uri": "s3://bucket/run-1/train-lora/adapter", **(io or {}),
    })
    return manifest_of(job_lib.request(plan.spec, plan.options, pod_io, namespace="team-a"),
                       Target(kind))


def master(manifest):
    """The pod spec of the master (of worker 0 for an elastic, Worker-only job)."""
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    return (specs.get("Master") or specs["Worker"])["template"]["spec"]


def container(manifest):
    return master(manifest)["containers"][0]


def env(manifest):
    return {item["name"]: item for item in container(manifest).get("env", [])}


def _single_worker(manifest):
    assert list(manifest["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def _auto_procs_gpu(manifest):
    assert manifest["spec"]["nprocPerNode"] == "4"  # one per GPU of the pod


def _auto_procs_cpu(manifest):
    assert manifest["spec"]["nprocPerNode"] == "1"  # not one per core


def _cpu_only(manifest):
    resources = container(manifest)["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "2Gi"},
                         "limits": {"cpu": "500m", "memory": "2Gi"}}


def _no_resources(manifest):
    assert container(manifest)["resources"] == {}


def _queue_label(manifest):
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"


def _secret_env(manifest):
    assert env(manifest)["HF_TOKEN"] == {
        "name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-secret", "key": "token"}}
    }
    assert "hf-secret" not in " ".join(container(manifest)["args"])


def _plain_env(manifest):
    assert env(manifest)["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}


def _elastic(manifest):
    # Worker-only: the operator points the c10d rendezvous at <job>-worker-0.
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert list(specs) == ["Worker"] and specs["Worker"]["replicas"] == 3
    assert manifest["spec"]["elasticPolicy"] == {
        "maxReplicas": 4, "maxRestarts": 5, "minReplicas": 2, "rdzvBackend": "c10d"
    }


def _pvc(manifest):
    spec = master(manifest)
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "train-cache"}} in (
        spec["volumes"])
    assert {"mountPath": "/mnt/pvc/train-cache", "name": "shared"} in (
        container(manifest)["volumeMounts"])
    args = container(manifest)["args"]
    assert args[args.index("--shared-dir") + 1] == "/mnt/pvc/train-cache"


def _scheduling(manifest):
    spec = master(manifest)
    assert spec["serviceAccountName"] == "trainer"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["priorityClassName"] == "high"
    assert spec["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]


def _run_policy(manifest):
    assert manifest["spec"]["runPolicy"] == {
        "activeDeadlineSeconds": 600, "backoffLimit": 2, "cleanPodPolicy": "All",
        "ttlSecondsAfterFinished": 60,
    }


def _no_minio_defaults(manifest):
    assert not any(name.startswith("AWS_") for name in env(manifest))


def _user_endpoint_wins(manifest):
    assert env(manifest)["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env(manifest)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


def _job_name(manifest):
    assert manifest["metadata"]["name"] == "my-run"


def _merge(manifest):
    assert container(manifest)["args"][-1] == "--merge"


def options(**values):
    return {"kubernetes_options": values}


CASES = [
    Case("single worker has no Worker replicas", {"num_workers": 1}, _single_worker),
    Case("auto procs with gpus", {"num_procs_per_worker": "auto",
                                  "resources_per_worker": {"gpu": 4}}, _auto_procs_gpu),
    Case("auto procs without gpus", {"num_procs_per_worker": "auto"}, _auto_procs_cpu),
    Case("cpu-only resources", {"resources_per_worker": {"cpu": "500m", "memory": "2Gi"}},
         _cpu_only),
    Case("gpu 0 adds no gpu resource", {"resources_per_worker": {"gpu": 0}}, _no_resources),
    Case("kueue queue", options(queue_name="team-queue"), _queue_label),
    Case("secret env as secretKeyRef", options(secret_env={"HF_TOKEN": "hf-secret:token"}),
         _secret_env),
    Case("plain env", options(env={"NCCL_DEBUG": "INFO"}), _plain_env),
    Case("elastic policy", {"num_workers": 3, **options(elastic_policy={
        "min_nodes": 2, "max_nodes": 4, "max_restarts": 5})}, _elastic),
    Case("pvc", options(pvc="train-cache"), _pvc),
    Case("scheduling", options(
        service_account="trainer", priority_class="high",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    ), _scheduling),
    Case("run policy", {"timeout_minutes": 10, **options(
        backoff_limit=2, clean_pod_policy="All", ttl_seconds_after_finished=60)}, _run_policy),
    Case("s3 uris need no minio defaults", {}, _no_minio_defaults),
    Case("user store settings win over minio defaults",
         options(env={"AWS_ENDPOINT_URL": "http://minio.storage:9000"},
                 secret_env={"AWS_ACCESS_KEY_ID": "mine:id", "AWS_SECRET_ACCESS_KEY": "mine:key"}),
         _user_endpoint_wins, io={"model_uri": "minio://mlpipeline/model"}),
    Case("explicit job name", options(job_name="my-run"), _job_name),
    Case("merge", {"merge": True}, _merge),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_manifest_cases(case):
    manifest = build(case.config, case.io)
    case.check(manifest)
    # Whatever the case, the operator's contract holds.
    assert container(manifest)["name"] == "pytorch"
    assert container(manifest)["command"] == [
        "python", "-m", "kftune.components.train_lora.pod.entrypoint"
    ]


def test_job_name_is_stable_per_step_and_distinct_across_runs():
    first = job_lib.derive_job_name(f"{RUN_ROOT}/train-lora/adapter", "causal-lm")
    again = job_lib.derive_job_name(f"{RUN_ROOT}/train-lora/adapter", "causal-lm")
    other_run = job_lib.derive_job_name(RUN_ROOT.replace("3f2a", "0000") + "/train-lora/adapter",
                                        "causal-lm")
    other_task = job_lib.derive_job_name(f"{RUN_ROOT}/train-lora-2/adapter", "causal-lm")
    assert first == again
    assert len({first, other_run, other_task}) == 3
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", first)
    assert len(first) <= MAX_JOB_NAME_LENGTH


def test_secrets_never_appear_in_the_manifest():
    token = "hf_SuperSecretValue123"
    with pytest.raises(InputError) as caught:
        build(options(secret_env={"HF_TOKEN": token}))
    assert token not in str(caught.value)
    manifest = build(options(secret_env={"HF_TOKEN": "hf-secret:token"}))
    assert "valueFrom" in env(manifest)["HF_TOKEN"] and "value" not in env(manifest)["HF_TOKEN"]


@dataclasses.dataclass
class Bad:
    name: str
    options: dict[str, Any]
    messages: list[str]


def component_args(**overrides):
    args = dict(
        task="causal-lm", training_parameters={}, lora_config={}, num_workers=2,
        num_procs_per_worker="2", resources_per_worker={"gpu": 1}, image="", timeout_minutes=60,
        kubernetes_options={}, backend="kubernetes",
    )
    args.update(overrides)
    return args


BAD = [
    Bad("num_workers 0", {"num_workers": 0}, ["`num_workers` must be >= 1, got 0"]),
    Bad("num_workers text", {"num_workers": "2"},
        ["`num_workers` must be a whole number >= 1, got '2'"]),
    Bad("procs word", {"num_procs_per_worker": "two"},
        ["`num_procs_per_worker` must be a positive whole number or 'auto', got 'two'"]),
    Bad("procs zero", {"num_procs_per_worker": "0"},
        ["`num_procs_per_worker` must be a positive whole number or 'auto', got 0"]),
    Bad("procs fraction", {"num_procs_per_worker": "1.5"},
        ["`num_procs_per_worker` must be a positive whole number or 'auto', got '1.5'"]),
    Bad("memory ten gigs", {"resources_per_worker": {"memory": "ten gigs"}},
        ["`resources_per_worker.memory` must be a Kubernetes quantity like \"10G\" or \"16Gi\", "
         "got 'ten gigs'"]),
    Bad("cpu zero", {"resources_per_worker": {"cpu": 0}},
        ["`resources_per_worker.cpu` must be > 0, got 0"]),
    Bad("cpu bool", {"resources_per_worker": {"cpu": True}},
        ["`resources_per_worker.cpu` must be a Kubernetes quantity like 5 or \"500m\", got True"]),
    Bad("gpu fraction", {"resources_per_worker": {"gpu": 1.5}},
        ["`resources_per_worker.gpu` must be a whole number of GPUs >= 0, got 1.5"]),
    Bad("gpu word", {"resources_per_worker": {"gpu": "two"}},
        ["`resources_per_worker.gpu` must be a whole number of GPUs >= 0, got 'two'"]),
    Bad("unknown resource", {"resources_per_worker": {"tpu": 1}},
        ["`resources_per_worker` has an unknown key 'tpu'; use gpu, cpu, memory, "
         "ephemeral-storage"]),
    Bad("unknown training parameter", {"training_parameters": {"lerning_rate": 1e-4}},
        ["`training_parameters.lerning_rate`", "did you mean `learning_rate`"]),
    Bad("token budget for classification",
        {"task": "sequence-classification",
         "training_parameters": {"max_tokens_per_micro_batch": 8192}},
        ["`training_parameters.max_tokens_per_micro_batch` applies to tasks causal-lm and "
         "preference only"]),
    Bad("invalid lora value", {"lora_config": {"r": 0}},
        ["`lora_config.r` must be an integer >= 1, got 0"]),
    Bad("image with spaces", {"image": "my trainer:latest"},
        ["`image` must be a container image reference", "got 'my trainer:latest'"]),
    Bad("image upper case repository", {"image": "ghcr.io/Team/Trainer:1"},
        ["got 'ghcr.io/Team/Trainer:1'"]),
    Bad("timeout 0", {"timeout_minutes": 0}, ["`timeout_minutes` must be > 0, got 0"]),
    Bad("task", {"task": "translation"},
        ["`task` must be one of causal-lm, sequence-classification, preference; got 'translation'"]),
    Bad("unknown option", {"kubernetes_options": {"namspace": "x"}},
        ["`kubernetes_options` has an unknown key 'namspace'"]),
    Bad("namespace", {"kubernetes_options": {"namespace": "Team_A"}},
        ["`kubernetes_options.namespace` must be a DNS-1123 label", "got 'Team_A'"]),
    Bad("secret value instead of reference",
        {"kubernetes_options": {"secret_env": {"HF_TOKEN": "hf_abc123"}}},
        ["`kubernetes_options.secret_env.HF_TOKEN` must be 'secret-name:key'"]),
    Bad("reserved env", {"kubernetes_options": {"env": {"WORLD_SIZE": "8"}}},
        ["`kubernetes_options.env.WORLD_SIZE` is set by the training operator / torchrun"]),
    Bad("env number", {"kubernetes_options": {"env": {"NCCL_TIMEOUT": 5}}},
        ["`kubernetes_options.env.NCCL_TIMEOUT` must be a string, got 5"]),
    Bad("elastic bounds", {"kubernetes_options": {"elastic_policy": {"min_nodes": 3,
                                                                     "max_nodes": 2}}},
        ["needs 1 <= min_nodes <= max_nodes, got min_nodes=3, max_nodes=2"]),
    Bad("elastic range", {"num_workers": 5,
                          "kubernetes_options": {"elastic_policy": {"min_nodes": 1,
                                                                    "max_nodes": 4}}},
        ["`num_workers` must lie between elastic_policy min_nodes=1 and max_nodes=4, got 5"]),
    Bad("elastic unknown key", {"kubernetes_options": {"elastic_policy": {"min": 1}}},
        ["`kubernetes_options.elastic_policy` has unknown keys ['min']"]),
    Bad("clean pod policy", {"kubernetes_options": {"clean_pod_policy": "Sometimes"}},
        ["`kubernetes_options.clean_pod_policy` must be one of None, Running, All, "
         "got 'Sometimes'"]),
    Bad("ttl", {"kubernetes_options": {"ttl_seconds_after_finished": -1}},
        ["`kubernetes_options.ttl_seconds_after_finished` must be a whole number >= 0, got -1"]),
    Bad("pvc claim", {"kubernetes_options": {"pvc": "Shared Cache"}},
        ["`kubernetes_options.pvc.claim_name` must name a PersistentVolumeClaim",
         "got 'Shared Cache'"]),
    Bad("toleration operator", {"kubernetes_options": {"tolerations": [{"operator": "Maybe"}]}},
        ["`kubernetes_options.tolerations[].operator` must be Equal or Exists, got 'Maybe'"]),
    Bad("job name", {"kubernetes_options": {"job_name": "x" * 60}},
        ["`kubernetes_options.job_name` must start with a letter"]),
    Bad("namespace of 70 characters", {"kubernetes_options": {"namespace": "a" * 70}},
        ["`kubernetes_options.namespace` must be a DNS-1123 label", "at most 63 characters"]),
    Bad("toleration seconds text",
        {"kubernetes_options": {"tolerations": [{"key": "k", "operator": "Exists",
                                                 "effect": "NoExecute",
                                                 "toleration_seconds": "abc"}]}},
        ["`kubernetes_options.tolerations[].toleration_seconds` must be a whole number of "
         "seconds, got 'abc'"]),
    Bad("credential as plain env",
        {"kubernetes_options": {"env": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}}},
        ["`kubernetes_options.env.AWS_SECRET_ACCESS_KEY` looks like a credential",
         "`secret_env`"]),
    Bad("token as plain env", {"kubernetes_options": {"env": {"HF_TOKEN": "hf_abc"}}},
        ["`kubernetes_options.env.HF_TOKEN` looks like a credential"]),
    Bad("runtime with a PyTorchJob", {"kubernetes_options": {"runtime": "torch-distributed"}},
        ["`kubernetes_options` runtime cannot be used with backend 'kubernetes'"]),
    Bad("unknown backend", {"backend": "slurm"},
        ["`backend` must be one of auto, kubernetes, trainjob, local, got 'slurm'"]),
    Bad("credentials in a uri", {"uris": {"model": "s3://AKIA:wJalr@bucket/model"}},
        ["`model`", "carries credentials in the URI"]),
    Bad("signed url", {"uris": {"model": "https://host/m?X-Amz-Signature=abc"}},
        ["`model`", "carries credentials in the URI"]),
]


@pytest.mark.parametrize("options, refused", [
    ({"namespace": "team-a", "queue_name": "q"}, "namespace, queue_name"),
    ({"secret_env": {"HF_TOKEN": "hf:token"}, "pvc": "cache"}, "pvc, secret_env"),
], ids=["placement", "secrets and claim"])
def test_the_local_backend_refuses_kubernetes_only_options(options, refused):
    with pytest.raises(InputError) as caught:
        plan_of(**component_args(kubernetes_options={**options, "env": {"A": "1"}},
                                     backend="local"))
    (problem,) = caught.value.problems
    assert problem.startswith(f"`kubernetes_options` {refused} cannot be used with backend 'local'")


@pytest.mark.parametrize("kind, refused", [
    ("trainjob", "backoff_limit, elastic_policy, priority_class"),
    ("kubernetes", "runtime"),
], ids=["trainjob", "pytorchjob"])
def test_each_kubernetes_kind_refuses_what_it_cannot_honour(kind, refused):
    options = {"runtime": "torch-distributed", "priority_class": "high", "backoff_limit": 2,
               "elastic_policy": {"min_nodes": 1, "max_nodes": 2}}
    with pytest.raises(InputError) as caught:
        plan_of(**component_args(kubernetes_options=options, backend=kind))
    (problem,) = caught.value.problems
    assert problem.startswith(f"`kubernetes_options` {refused} cannot be used with backend")


def test_secret_values_are_never_echoed():
    secret = "wJalrXUtnFEMI-K7MDENG"
    with pytest.raises(InputError) as caught:
        plan_of(**component_args(
            kubernetes_options={"env": {"DB_PASSWORD": secret}},
            uris={"adapter": f"s3://AKIA:{secret}@bucket/out"}))
    assert len(caught.value.problems) == 2
    assert secret not in str(caught.value)


@pytest.mark.parametrize("procs, resources, expected", [
    ("auto", {"gpu": 4}, 4), ("auto", {}, 1), ("3", {"gpu": 8}, 3),
], ids=["auto from gpus", "auto without gpus", "explicit"])
def test_auto_processes_resolve_from_the_gpus_requested(procs, resources, expected):
    plan = plan_of(**component_args(num_procs_per_worker=procs,
                                        resources_per_worker=resources))
    assert plan.spec.procs_per_node() == expected
    assert plan.spec.procs_per_node(host_gpus=2) == (expected if resources or procs != "auto"
                                                      else 2)


@pytest.mark.parametrize("bad", BAD, ids=[bad.name for bad in BAD])
def test_bad_input_is_reported_with_parameter_and_value(bad):
    with pytest.raises(InputError) as caught:
        plan_of(**component_args(**bad.options))
    message = str(caught.value)
    for expected in bad.messages:
        assert expected in message
    assert len(caught.value.problems) == 1, message


def test_every_problem_is_reported_at_once():
    with pytest.raises(InputError) as caught:
        plan_of(**component_args(
            num_workers=0, num_procs_per_worker="two",
            resources_per_worker={"memory": "ten gigs", "gpu": 0.5},
            training_parameters={"lerning_rate": 1}, lora_config={"r": 0}, image="Not An Image",
            kubernetes_options={"namespace": "Bad_NS"},
        ))
    assert len(caught.value.problems) == 8
    assert str(caught.value).startswith("8 problems:")


@pytest.mark.parametrize("argv, expected", [
    (["--dry-run", "--model-uri", "s3://b/m", "--dataset-uri", "s3://b/d", "--output-uri",
      "s3://b/o", "--resources-per-worker", '{"memory": "ten gigs"}'],
     "`resources_per_worker.memory` must be a Kubernetes quantity"),
    (["--dry-run", "--model-uri", "s3://b/m", "--dataset-uri", "s3://b/d", "--output-uri",
      "s3://b/o", "--lora-config", "{r: 8}"], "`--lora-config` must be JSON, got '{r: 8}'"),
    (["--dry-run", "--model-uri", "s3://b/m"], "the following arguments are required"),
    (["--dry-run", "--model-uri", "s3://b/m", "--dataset-uri", "s3://b/d", "--output-uri",
      "s3://b/o", "--num-workers", "zero"], "argument --num-workers: invalid int value"),
], ids=["bad quantity", "bad json", "missing flags", "bad int"])
def test_cli_errors_are_one_line_and_exit_2(argv, expected, capsys):
    assert launch_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1


PYTORCHJOB_ONLY = ("elastic policy", "run policy", "scheduling")


def test_every_manifest_is_admitted_by_the_api_server_and_the_operators_webhooks():
    # Schema (vendored CRDs: types, required fields, pruning) and webhook rules (from the
    # operators' sources; see test_fake_kubernetes_admission.py) decide, not kftune's own rules.
    manifests = [(yaml.safe_load(GOLDEN.read_text()), "pytorchjobs"),
                 (yaml.safe_load(TRAINJOB_GOLDEN.read_text()), "trainjobs"),
                 (build(KITCHEN_SINK, kind="kubernetes"), "pytorchjobs"),
                 (build(TRAINJOB_KITCHEN_SINK, kind="trainjob"), "trainjobs")]
    manifests += [(build(c.config, c.io), "pytorchjobs") for c in CASES]
    manifests += [(build(c.config, c.io, kind="trainjob"), "trainjobs") for c in CASES
                  if c.name not in PYTORCHJOB_ONLY]
    with FakeKubernetes() as fake:  # fails on leaving when the server would drop any field
        api = client.CustomObjectsApi(fake.api_client())
        for manifest, plural in manifests:
            group, version = manifest["apiVersion"].split("/")
            manifest["metadata"]["name"] += f"-{len(fake.created)}"
            api.create_namespaced_custom_object(group, version, manifest["metadata"]["namespace"],
                                                plural, manifest)
    assert len(fake.created) == len(manifests)


REFERENCE_CONTAINER_ENV = {
    "AWS_ENDPOINT_URL": {"name": "AWS_ENDPOINT_URL", "value": "http://minio-service.kubeflow:9000"},
    "AWS_ACCESS_KEY_ID": {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
        "name": "mlpipeline-minio-artifact", "key": "accesskey"}}},
    "AWS_SECRET_ACCESS_KEY": {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
        "name": "mlpipeline-minio-artifact", "key": "secretkey"}}},
}


def test_reference_example_as_a_trainjob_matches_its_golden_manifest(capsys):
    assert launch_main([*REFERENCE_ARGV, "--backend", "trainjob"]) == 0
    printed = capsys.readouterr().out
    if os.environ.get("KFTUNE_UPDATE_GOLDEN"):
        TRAINJOB_GOLDEN.write_text(printed)
    assert printed == TRAINJOB_GOLDEN.read_text(), "regenerate with KFTUNE_UPDATE_GOLDEN=1"


def test_the_reference_example_is_the_same_training_on_both_backends():
    pytorchjob = yaml.safe_load(GOLDEN.read_text())
    trainjob = yaml.safe_load(TRAINJOB_GOLDEN.read_text())
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert trainjob["kind"] == "TrainJob"
    spec = trainjob["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    trainer = spec["trainer"]
    # 4 workers x 2 processes, 2 GPU / 5 CPU / 10G each: Master 1 + Worker 3 on v1.
    specs = pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert trainer["numNodes"] == 4 == specs["Master"]["replicas"] + specs["Worker"]["replicas"]
    assert trainer["numProcPerNode"] == 2 == int(pytorchjob["spec"]["nprocPerNode"])
    (container,) = specs["Master"]["template"]["spec"]["containers"]
    expected = {"nvidia.com/gpu": "2", "cpu": "5", "memory": "10G"}
    assert trainer["resourcesPerNode"] == {"requests": expected, "limits": expected}
    assert container["resources"] == trainer["resourcesPerNode"]
    assert trainer["image"] == container["image"] == "ghcr.io/kftune/trainer:0.1.0"
    assert trainer["command"] == container["command"]
    assert trainer["args"] == container["args"]
    assert {e["name"]: e for e in trainer["env"]} == REFERENCE_CONTAINER_ENV
    assert {e["name"]: e for e in container["env"]} == REFERENCE_CONTAINER_ENV
    assert spec["activeDeadlineSeconds"] == pytorchjob["spec"]["runPolicy"][
        "activeDeadlineSeconds"] == 1440 * 60
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert node["name"] == "node" and patch["manager"] == "kftune.dev/launcher"
    assert pod["metadata"] == specs["Master"]["template"]["metadata"]
    assert pod["spec"]["volumes"] == specs["Master"]["template"]["spec"]["volumes"]
    assert pod["spec"]["containers"] == [{"name": "node",
                                          "volumeMounts": container["volumeMounts"]}]
    assert trainjob["metadata"]["labels"] == pytorchjob["metadata"]["labels"]
    assert trainjob["metadata"]["annotations"]["kftune.dev/output-uri"] == (
        pytorchjob["metadata"]["annotations"]["kftune.dev/output-uri"])


SHARED_SINK = {
    "num_workers": 3, "num_procs_per_worker": "auto", "merge": True, "timeout_minutes": 30,
    "resources_per_worker": {"gpu": 4, "cpu": "16", "memory": "64Gi",
                             "ephemeral-storage": "100Gi"},
    "training_parameters": {"learning_rate": 1e-4, "max_steps": 10},
    "lora_config": {"r": 16, "lora_alpha": 32},
    "image": "registry.example.com/team/trainer:2.0",
}
SHARED_OPTIONS = {
    "namespace": "team-a", "service_account": "trainer", "job_name": "sink",
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute",
                     "toleration_seconds": 60}],
    "queue_name": "team-queue", "env": {"NCCL_DEBUG": "INFO"},
    "secret_env": {"HF_TOKEN": "hf-secret:token"},
    "pvc": {"claim_name": "train-cache", "mount_path": "/cache", "sub_path": "runs"},
}
KITCHEN_SINK = {**SHARED_SINK, "kubernetes_options": {
    **SHARED_OPTIONS, "priority_class": "high", "backoff_limit": 2, "clean_pod_policy": "All",
    "ttl_seconds_after_finished": 60,
    "elastic_policy": {"min_nodes": 2, "max_nodes": 4, "max_restarts": 1}}}
TRAINJOB_KITCHEN_SINK = {**SHARED_SINK, "kubernetes_options": {
    **SHARED_OPTIONS, "runtime": "torch-distributed"}}


def test_kitchen_sink_on_both_backends():
    pytorchjob = build(KITCHEN_SINK, io={"model_uri": "minio://mlpipeline/model"})
    trainjob = build(TRAINJOB_KITCHEN_SINK, io={"model_uri": "minio://mlpipeline/model"},
                     kind="trainjob")
    (pod,) = {"Worker"} & set(pytorchjob["spec"]["pytorchReplicaSpecs"])  # elastic: Worker-only
    v1_pod = pytorchjob["spec"]["pytorchReplicaSpecs"][pod]["template"]["spec"]
    (v1_container,) = v1_pod.pop("containers")
    patch = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    v2_pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    (v2_mounts,) = v2_pod.pop("containers")
    trainer = trainjob["spec"]["trainer"]
    # What both kinds carry, they carry alike.
    assert v1_pod.pop("priorityClassName") == "high"
    assert v1_pod == v2_pod == {
        "serviceAccountName": "trainer",
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [
            {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"},
            {"effect": "NoExecute", "key": "spot", "operator": "Equal", "tolerationSeconds": 60,
             "value": "yes"}],
        "volumes": [
            {"emptyDir": {}, "name": "work"}, {"emptyDir": {"medium": "Memory"}, "name": "dshm"},
            {"name": "shared", "persistentVolumeClaim": {"claimName": "train-cache"}}],
    }
    assert v2_mounts == {"name": "node", "volumeMounts": v1_container["volumeMounts"]}
    assert {"mountPath": "/cache", "name": "shared", "subPath": "runs"} in v2_mounts[
        "volumeMounts"]
    for key in ("image", "command", "args", "env"):
        assert trainer[key] == v1_container[key], key
    assert trainer["args"][-3:] == ["--shared-dir", "/cache", "--merge"]
    assert {e["name"] for e in trainer["env"]} == {
        "NCCL_DEBUG", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}
    quantities = {"nvidia.com/gpu": "4", "cpu": "16", "memory": "64Gi",
                  "ephemeral-storage": "100Gi"}
    assert trainer["resourcesPerNode"] == {"requests": quantities, "limits": quantities}
    assert v1_container["resources"] == trainer["resourcesPerNode"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4  # auto: one per GPU
    assert pytorchjob["spec"]["nprocPerNode"] == "4"
    assert trainjob["spec"]["activeDeadlineSeconds"] == 1800
    for manifest in (pytorchjob, trainjob):
        assert manifest["metadata"]["name"] == "sink"
        assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    # Only the PyTorchJob has these.
    assert pytorchjob["spec"]["runPolicy"] == {"activeDeadlineSeconds": 1800, "backoffLimit": 2,
                                               "cleanPodPolicy": "All",
                                               "ttlSecondsAfterFinished": 60}
    assert pytorchjob["spec"]["elasticPolicy"]["maxReplicas"] == 4
