"""The `kftune` CLI: parameter overrides, early refusal of bad parameters, and `kftune submit`
against a local double of the KFP v2beta1 REST API."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from kftune.pipelines import cli, lora_finetune, parameters, run
from support.kfp_server import KfpApiDouble


@dataclasses.dataclass
class Case:
    name: str
    input: Any
    expected: Any = None
    expected_error: str | None = None


# --------------------------------------------------------------------------- overrides

OVERRIDE_CASES = [
    Case("string", ["split=train[:100]"], {"split": "train[:100]"}),
    Case("string_that_looks_like_json", ["model_revision=123"], {"model_revision": "123"}),
    Case("integer", ["num_workers=2"], {"num_workers": 2}),
    Case("float_from_integer", ["eval_fraction=0"], {"eval_fraction": 0.0}),
    Case("boolean", ["trust_remote_code=true"], {"trust_remote_code": True}),
    Case("dict", ['resources_per_worker={"cpu": 2}'], {"resources_per_worker": {"cpu": 2}}),
    Case("list", ['tolerations=[{"key": "gpu", "operator": "Exists"}]'],
         {"tolerations": [{"key": "gpu", "operator": "Exists"}]}),
    Case(
        "dict_key_on_top_of_default",
        ["training_parameters.max_steps=7"],
        {"training_parameters": {**lora_finetune.DEMO_TRAINING_PARAMETERS, "max_steps": 7}},
    ),
    Case("dashes_in_name", ["num-workers=3"], {"num_workers": 3}),
]


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=[case.name for case in OVERRIDE_CASES])
def test_param_overrides_are_typed(case: Case) -> None:
    overrides, problems = parameters.parse_overrides(case.input)
    assert problems == []
    assert overrides == case.expected


def test_named_flags_and_param_combine() -> None:
    overrides, problems = parameters.parse_overrides(
        ["task=causal-lm"], {"num_workers": "2", "lora_config": '{"r": 4}', "split": None}
    )
    assert problems == []
    assert overrides == {"num_workers": 2, "lora_config": {"r": 4}, "task": "causal-lm"}


BAD_OVERRIDE_CASES = [
    Case("unknown_name", ["num_worker=2"],
         expected_error="unknown pipeline parameter `num_worker`; did you mean `num_workers`?"),
    Case("not_an_integer", ["num_workers=two"], expected_error="`num_workers` must be an integer, "
                                                              "got 'two'"),
    Case("not_json_dict", ["lora_config=r=8"],
         expected_error="`lora_config` must be a JSON object, got 'r=8'"),
    Case("no_equals", ["num_workers"], expected_error="`--param` must be NAME=VALUE, got "
                                                      "'num_workers'"),
    Case("key_of_non_dict", ["split.x=1"], expected_error="only dict parameters have keys"),
]


@pytest.mark.parametrize("case", BAD_OVERRIDE_CASES, ids=[case.name for case in BAD_OVERRIDE_CASES])
def test_bad_overrides_are_named(case: Case) -> None:
    _, problems = parameters.parse_overrides(case.input)
    assert any(case.expected_error in problem for problem in problems), problems


def test_defaults_are_valid() -> None:
    arguments, overrides = parameters.resolve_arguments([])
    assert overrides == {}
    assert arguments["model_uri"] == lora_finetune.DEMO_MODEL_URI
    assert arguments["task"] == "sequence-classification"


BAD_RUN_CASES = [
    Case("workers", ["--num-workers", "0"], expected_error="`num_workers` must be >= 1, got 0"),
    Case("task", ["--param", "task=translation"],
         expected_error="`task` must be one of causal-lm, sequence-classification, preference; got "
                        "'translation'"),
    Case("backend", ["--backend", "slurm"],
         expected_error="`backend` must be one of auto, kubernetes, trainjob, local, got 'slurm'"),
    Case("scheme", ["--model-uri", "ftp://host/model"],
         expected_error="`model_uri` has an unknown scheme 'ftp://' in 'ftp://host/model'"),
    Case("split", ["--split", "train[:x]"],
         expected_error="`split` 'train[:x]' is not a valid split expression; use the `datasets` "
                        "slicing syntax"),
    Case("encoding", ["--dataset-encoding", "latin-9000"],
         expected_error="`dataset_encoding` must name a text encoding Python knows, got "
                        "'latin-9000'"),
    Case("training_parameter", ["--param", "training_parameters.per_device_train_batch_size=0"],
         expected_error="per_device_train_batch_size"),
    Case("token_budget_for_classification",
         ["--param", "training_parameters.max_tokens_per_micro_batch=4096"],
         expected_error="`training_parameters.max_tokens_per_micro_batch` applies to tasks "
                        "causal-lm and preference only, got it (4096) with task "
                        "'sequence-classification'"),
    Case("procs", ["--num-procs-per-worker", "many"],
         expected_error="`num_procs_per_worker` must be a positive whole number or 'auto', "
                        "got 'many'"),
]


@pytest.mark.parametrize("case", BAD_RUN_CASES, ids=[case.name for case in BAD_RUN_CASES])
def test_bad_parameters_fail_before_any_step_runs(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output_dir = tmp_path / "run"
    code = cli.main(["run", "--output-dir", str(output_dir), *case.input])
    captured = capsys.readouterr()
    assert code == 2
    assert case.expected_error in captured.err
    assert "hint:" in captured.err
    assert "Traceback" not in captured.err
    assert not output_dir.exists()  # nothing ran, nothing was written


# Checks that once let bad values through to a later step: `kftune run --check` reports each.
CHECK_CASES = [
    Case("gpus_typo", ["--resources-per-worker", '{"gpus": 1}'],
         expected_error="`resources_per_worker` has an unknown key 'gpus'; use gpu, cpu, memory"),
    Case("kubernetes_options_typo", ["--kubernetes-options", '{"namespac": "team"}'],
         expected_error="`kubernetes_options` has an unknown key 'namespac'"),
    Case("trainer_image", ["--trainer-image", "Not An Image!"],
         expected_error="`trainer_image` must be a container image reference like "
                        "'registry.example.com/team/trainer:1.0', got 'Not An Image!'"),
    Case("s3_without_bucket", ["--model-uri", "s3:///key"],
         expected_error="`model_uri` 's3:///key' is malformed: no bucket"),
    Case("hf_three_parts", ["--dataset-uri", "hf://a/b/c"],
         expected_error="`dataset_uri` 'hf://a/b/c' is malformed: write hf://<org>/<name>"),
    Case("pvc_claim_name", ["--model-uri", "pvc://My_Claim/x"],
         expected_error="`model_uri` 'pvc://My_Claim/x' has an invalid claim name 'My_Claim'"),
    Case("lora_cross_field",
         ["--lora-config", '{"target_modules": "all-linear", "layers_to_transform": [0]}'],
         expected_error="`lora_config` = {'target_modules': 'all-linear', 'layers_to_transform': "
                        "[0]} is refused by peft.LoraConfig: `layers_to_transform` cannot be used "
                        "when `target_modules` is a str."),
    Case("learning_rate_infinity", ["--param", "training_parameters.learning_rate=Infinity"],
         expected_error="`training_parameters.learning_rate` must be a finite number > 0, got inf"),
    Case("weight_decay_nan", ["--param", "training_parameters.weight_decay=NaN"],
         expected_error="`training_parameters.weight_decay` must be a finite number >= 0, "
                        "got nan"),
    Case("scheduler_kwargs",
         ["--param", "training_parameters.lr_scheduler_type=cosine",
          "--param", 'training_parameters.lr_scheduler_kwargs={"num_cyclez": 2}'],
         expected_error="`training_parameters.lr_scheduler_kwargs.num_cyclez` is not an argument "
                        "of the cosine scheduler (transformers.get_cosine_schedule_with_warmup); "
                        "it takes num_cycles, last_epoch"),
    Case("deploy_a_classifier_adapter", ["--deploy", "true"],
         expected_error="a sequence-classification adapter is served only merged (vLLM serves "
                        "LoRA adapters of generative models only): run with `merge` true"),
    Case("serving_kind", ["--serving-kind", "knative"],
         expected_error="`serving_kind` must be one of auto, llm-inference-service, "
                        "inference-service, got 'knative'"),
    Case("serving_resources", ["--serving-resources", '{"gpus": 1}'],
         expected_error="`serving_resources` has an unknown key 'gpus'; use gpu, cpu, memory"),
    Case("checkpointing_kwargs",
         ["--param", 'training_parameters.gradient_checkpointing_kwargs={"reentrant": false}'],
         expected_error="`training_parameters.gradient_checkpointing_kwargs.reentrant` is not an "
                        "argument of torch.utils.checkpoint.checkpoint; it takes use_reentrant"),
]


@pytest.mark.parametrize("case", CHECK_CASES, ids=[case.name for case in CHECK_CASES])
def test_check_reports_what_a_later_step_would_fail_on(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output_dir = tmp_path / "run"
    code = cli.main(["run", "--check", "--output-dir", str(output_dir), *case.input])
    err = capsys.readouterr().err
    assert code == 2
    assert case.expected_error in err
    assert "Traceback" not in err
    assert not output_dir.exists()


def test_check_of_valid_parameters_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output_dir = tmp_path / "run"
    arguments = ["--param", 'training_parameters.lr_scheduler_kwargs={"num_cycles": 1}',
                 "--param", "training_parameters.lr_scheduler_type=cosine_with_restarts",
                 "--param", 'training_parameters.gradient_checkpointing_kwargs='
                            '{"use_reentrant": false}']
    code = cli.main(["run", "--check", "--output-dir", str(output_dir), *arguments])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == "all parameters are valid\n"
    assert not output_dir.exists()


def test_unknown_param_does_not_stop_the_other_checks(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "--check", "--param", "nope=1", "--num-workers", "0",
                     "--trainer-image", "Not An Image!", "--model-uri", "s3:///key"])
    err = capsys.readouterr().err
    assert code == 2
    assert "4 problems" in err
    for fragment in ("unknown pipeline parameter `nope`", "`num_workers` must be >= 1",
                     "`trainer_image` must be", "`model_uri` 's3:///key' is malformed"):
        assert fragment in err


def test_dict_parameters_from_files(tmp_path: Path) -> None:
    training = tmp_path / "training.json"
    training.write_text(json.dumps({"max_steps": 3, "learning_rate": 1e-3}))
    lora = tmp_path / "lora.json"
    lora.write_text(json.dumps({"r": 4}))
    overrides, problems = parameters.parse_overrides(
        [f"lora_config=@{lora}"], {"training_parameters": f"@{training}"}
    )
    assert problems == []
    assert overrides == {"training_parameters": {"max_steps": 3, "learning_rate": 1e-3},
                         "lora_config": {"r": 4}}


def test_dict_parameter_from_a_missing_file(tmp_path: Path) -> None:
    _, problems = parameters.parse_overrides([f"lora_config=@{tmp_path / 'none.json'}"])
    assert problems == [
        f"`lora_config` names the file {str(tmp_path / 'none.json')!r}, which cannot be read: "
        "No such file or directory"
    ]


def test_huge_training_parameters_give_one_short_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({f"key_{index}": "x" * 100 for index in range(100_000)}))
    assert huge.stat().st_size > 10_000_000
    code = cli.main(["run", "--check", "--training-parameters", f"@{huge}"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"`training_parameters` is {huge.stat().st_size} bytes as JSON, more than the 65536 "
            "bytes kftune accepts") in err
    assert len(err) < 1000


def test_several_bad_parameters_reported_together(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "--num-workers", "0", "--backend", "slurm"])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 problems" in err and "`num_workers`" in err and "`backend`" in err


class FakeArtifact:
    def __init__(self, path: Path, metadata: dict[str, Any] | None = None):
        self.path = str(path)
        self.metadata = metadata or {}


def test_run_passes_overrides_to_the_pipeline_and_writes_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: dict[str, Any] = {}
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "metrics.json").write_text(json.dumps({"runtime_seconds": 12.5}))

    def fake_make_pipeline(*, download_retries: int) -> Any:
        def pipeline(**kwargs: Any) -> Any:
            received.update(kwargs, download_retries=download_retries)
            metrics = FakeArtifact(tmp_path / "m", {
                "base_accuracy": 0.3, "tuned_accuracy": 0.7, "base_macro_f1": 0.2,
                "tuned_macro_f1": 0.6})
            outputs = {"metrics": metrics, "adapter": FakeArtifact(adapter),
                       "report": FakeArtifact(tmp_path / "report.md")}
            return type("Task", (), {"outputs": outputs})()
        return pipeline

    monkeypatch.setattr(lora_finetune, "make_pipeline", fake_make_pipeline)
    output_dir = tmp_path / "run"
    code = cli.main(["run", "--output-dir", str(output_dir), "--num-workers", "2",
                     "--param", "training_parameters.max_steps=3"])
    assert code == 0
    assert received["num_workers"] == 2
    assert received["training_parameters"]["max_steps"] == 3
    assert received["download_retries"] == 0
    assert "split" not in received  # defaults stay the pipeline's
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["base"]["accuracy"] == 0.3 and summary["tuned"]["accuracy"] == 0.7
    assert summary["improved"] is True
    assert summary["train_seconds"] == 12.5
    assert summary["adapter_dir"] == str(adapter)
    out = capsys.readouterr().out
    assert "accuracy" in out and "0.7000" in out and "train time : 12.5 s" in out
    assert summary["would_deploy"] is None


@pytest.mark.parametrize("register, said", [(False, "would register"), (True, "registered")])
def test_the_registry_line_says_whether_the_run_registered(register: bool, said: str) -> None:
    summary = {"primary_metric": "accuracy", "base": {}, "tuned": {}, "train_seconds": 1.0,
               "wall_seconds": 2.0, "adapter_dir": "/runs/a", "arguments": {"register": register},
               "would_register": [{"name": "kftune-lora", "version": "run-1",
                                   "format": "peft-lora", "uri": "/runs/a"}]}

    assert f"registry   : {said} kftune-lora:run-1 (peft-lora) /runs/a" in run.format_table(
        summary).splitlines()


def test_run_with_deploy_shows_instead_of_deploying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: dict[str, Any] = {}
    artifacts = tmp_path / "run" / "artifacts" / "lora-finetune-1"
    adapter, base = artifacts / "train-lora" / "adapter", artifacts / "download-model" / "model"
    for directory, manifest in ((adapter, {"kind": "adapter", "task": "causal-lm",
                                           "lora": {"r": 8}}),
                                (base, {"kind": "model", "task": "causal-lm"})):
        directory.mkdir(parents=True)
        (directory / "manifest.json").write_text(json.dumps(manifest))

    def fake_make_pipeline(*, download_retries: int) -> Any:
        def pipeline(**kwargs: Any) -> Any:
            received.update(kwargs)
            outputs = {"metrics": FakeArtifact(tmp_path / "m", {"base_eval_loss": 3.0,
                                                                "tuned_eval_loss": 2.0}),
                       "adapter": FakeArtifact(adapter),
                       "report": FakeArtifact(tmp_path / "report.md")}
            return type("Task", (), {"outputs": outputs})()
        return pipeline

    monkeypatch.setattr(lora_finetune, "make_pipeline", fake_make_pipeline)
    code = cli.main(["run", "--output-dir", str(tmp_path / "run"), "--task", "causal-lm",
                     "--deploy", "true", "--serving-name", "tweets"])
    assert code == 0
    assert received["deploy"] is False  # no cluster here: the step is not run
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["arguments"]["deploy"] is True
    served = summary["would_deploy"]
    assert served["kinds"] == ["LLMInferenceService", "InferenceService"]
    assert (served["model_uri"], served["model_name"]) == (str(base), "tweets-base")
    assert served["adapters"] == [{"name": "tweets", "uri": str(adapter)}]
    model = served["manifests"]["LLMInferenceService"]["spec"]["model"]
    assert model["lora"]["adapters"] == [{"name": "tweets", "uri": str(adapter)}]
    out = capsys.readouterr().out
    assert ("serving    : would deploy LLMInferenceService or InferenceService tweets: "
            f"tweets-base = {base}\n"
            f"             + LoRA adapter tweets = {adapter}\n"
            "             called with model='tweets'") in out


# --------------------------------------------------------------------------- submit


def _uploaded_yaml(request: dict[str, Any]) -> str:
    assert request["content_type"].startswith("multipart/form-data")
    body = request["body"].decode()
    assert 'name="uploadfile"' in body
    return body


# kftune publishes no images: every submit names the registry its images were pushed to.
REGISTRY = ["--image-registry", "registry.example.com/ml"]


def test_submit_uploads_pipeline_creates_experiment_and_run(kfp_api: KfpApiDouble) -> None:
    code = cli.main(["submit", "--host", kfp_api.host, *REGISTRY, "--experiment", "sentiment",
                     "--run-name", "nightly", "--num-workers", "4",
                     "--param", "training_parameters.max_steps=9"])
    assert code == 0
    (upload,) = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == ["kftune-lora-finetune"]
    body = _uploaded_yaml(upload)
    assert "# Name: lora-finetune" in body and "train-lora" in body
    (experiment,) = kfp_api.find("POST", "/apis/v2beta1/experiments")
    assert json.loads(experiment["body"])["display_name"] == "sentiment"
    (run,) = kfp_api.find("POST", "/apis/v2beta1/runs")
    payload = json.loads(run["body"])
    assert payload["display_name"] == "nightly"
    assert payload["experiment_id"] == "e-1"
    assert payload["pipeline_version_reference"] == {"pipeline_id": "p-1",
                                                     "pipeline_version_id": "v-1"}
    parameters = payload["runtime_config"]["parameters"]
    assert parameters["num_workers"] == 4
    assert parameters["training_parameters"]["max_steps"] == 9
    assert "model_uri" not in parameters  # the server fills in the defaults
    assert kfp_api.find("POST", "/apis/v2beta1/recurringruns") == []


def test_submit_with_schedule_creates_recurring_run(kfp_api: KfpApiDouble) -> None:
    code = cli.main(["submit", "--host", kfp_api.host, *REGISTRY, "--schedule", "30 2 * * 1"])
    assert code == 0
    (recurring,) = kfp_api.find("POST", "/apis/v2beta1/recurringruns")
    payload = json.loads(recurring["body"])
    assert payload["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1"  # KFP adds seconds
    assert payload["pipeline_version_reference"]["pipeline_id"] == "p-1"
    assert payload["experiment_id"] == "e-1"
    assert payload["mode"] == "ENABLE"
    assert kfp_api.find("POST", "/apis/v2beta1/runs") == []


def test_submit_to_existing_pipeline_uploads_a_new_version(
    kfp_api_with_pipeline: KfpApiDouble,
) -> None:
    code = cli.main(["submit", "--host", kfp_api_with_pipeline.host, *REGISTRY])
    assert code == 0
    assert kfp_api_with_pipeline.find("POST", "/apis/v2beta1/pipelines/upload") == []
    (version,) = kfp_api_with_pipeline.find("POST", "/apis/v2beta1/pipelines/upload_version")
    assert version["query"]["pipelineid"] == ["p-old"]
    _uploaded_yaml(version)
    (run,) = kfp_api_with_pipeline.find("POST", "/apis/v2beta1/runs")
    assert json.loads(run["body"])["pipeline_version_reference"] == {
        "pipeline_id": "p-old", "pipeline_version_id": "v-2"}


def test_submit_bad_schedule_fails_before_contacting_the_server(
    kfp_api: KfpApiDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["submit", "--host", kfp_api.host, "--schedule", "every night"])
    assert code == 2
    assert "`--schedule` must be a cron expression" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_submit_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    double = KfpApiDouble()  # bound but never serving: take its free port, then close it
    host = double.host
    double.server.server_close()
    code = cli.main(["submit", "--host", host, *REGISTRY])
    err = capsys.readouterr().err
    assert code == 1
    assert f"kftune submit: error: the KFP server at {host}" in err
    assert "Traceback" not in err


def test_submit_with_pvc_mounts_the_claim_in_the_uploaded_pipeline(kfp_api: KfpApiDouble) -> None:
    code = cli.main(["submit", "--host", kfp_api.host, *REGISTRY, "--pvc", "datasets",
                     "--dataset-uri", "pvc://datasets/tweets.csv"])
    assert code == 0
    (upload,) = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    body = _uploaded_yaml(upload)
    assert "mountPath: /mnt/pvc/datasets" in body
    (run,) = kfp_api.find("POST", "/apis/v2beta1/runs")
    parameters = json.loads(run["body"])["runtime_config"]["parameters"]
    assert parameters["dataset_uri"] == "pvc://datasets/tweets.csv"


def test_launch_is_delegated_to_train_lora(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["launch", "--dry-run", "--task", "sequence-classification",
                     "--model-uri", "s3://bucket/model", "--dataset-uri", "s3://bucket/data",
                     "--output-uri", "s3://bucket/adapter", "--num-workers", "2"])
    assert code == 0
    assert "kind: PyTorchJob" in capsys.readouterr().out


SUMMARY_CASES = [
    Case("accuracy_up", {"base_accuracy": 0.3, "tuned_accuracy": 0.6}, ("accuracy", True)),
    Case("accuracy_down", {"base_accuracy": 0.6, "tuned_accuracy": 0.3}, ("accuracy", False)),
    Case("perplexity_down", {"base_perplexity": 90.0, "tuned_perplexity": 20.0,
                             "base_eval_loss": 4.5, "tuned_eval_loss": 3.0}, ("perplexity", True)),
    Case("perplexity_up", {"base_perplexity": 20.0, "tuned_perplexity": 90.0},
         ("perplexity", False)),
]


@pytest.mark.parametrize("case", SUMMARY_CASES, ids=[case.name for case in SUMMARY_CASES])
def test_summary_knows_which_direction_is_better(case: Case, tmp_path: Path) -> None:
    summary = run.summarize(case.input, tmp_path, None, 1.0)
    assert (summary["primary_metric"], summary["improved"]) == case.expected
    assert summary["train_seconds"] is None  # no metrics.json in the adapter
    assert case.expected[0] in run.format_table(summary)


def test_submit_with_runtime_image_runs_every_step_in_it(kfp_api: KfpApiDouble) -> None:
    from kftune.components.common.images import RUNTIME_IMAGE

    code = cli.main(["submit", "--host", kfp_api.host,
                     "--runtime-image", "registry.local/mirror/kftune-runtime:0.1.0"])
    assert code == 0
    (upload,) = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    body = _uploaded_yaml(upload)
    # Every step (download x2, train, evaluate, and the optional ones after it) runs in it.
    images = re.findall(r"^\s+image: (\S+)$", body, flags=re.MULTILINE)
    assert len(images) >= 4 and set(images) == {"registry.local/mirror/kftune-runtime:0.1.0"}
    assert RUNTIME_IMAGE not in body


def test_submit_with_image_registry_runs_every_step_in_its_runtime_image(
    kfp_api: KfpApiDouble,
) -> None:
    from kftune.components.common.images import RUNTIME_IMAGE

    assert cli.main(["submit", "--host", kfp_api.host, *REGISTRY]) == 0
    (upload,) = kfp_api.find("POST", "/apis/v2beta1/pipelines/upload")
    body = _uploaded_yaml(upload)
    # Every step (download x2, train, evaluate, and the optional ones after it) runs in it.
    images = re.findall(r"^\s+image: (\S+)$", body, flags=re.MULTILINE)
    assert len(images) >= 4 and set(images) == {"registry.example.com/ml/kftune-runtime:0.1.0"}
    assert RUNTIME_IMAGE not in body


def test_submit_without_images_is_refused_before_contacting_the_server(
    kfp_api: KfpApiDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["submit", "--host", kfp_api.host])
    err = capsys.readouterr().err
    assert code == 2
    assert "kftune publishes no images" in err and "--image-registry REGISTRY" in err
    assert kfp_api.requests == []
