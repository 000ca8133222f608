"""Errors from libraries are said in the user's terms: the parameter or file, and the fix.

Every case produces the real library error (a safetensors file written by safetensors and really
cut short, JSON and YAML that really do not parse, a codec name really given to Python's decoder,
torch's real checkpoint writer on a really full filesystem where one can be made) and checks that
what reaches the user names the parameter, the file and what to do, never a bare parser message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common import errors, retry
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import DiskFullError, InputError

torch = pytest.importorskip("torch")


# -- adapters: evaluate, export_model, register_model, deploy_model --------------------------------


def _adapter(directory: Path, *, config: str | None = None, truncate: bool = False) -> Path:
    """A PEFT-layout adapter whose weights safetensors really wrote (then cut short if asked)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    weights = directory / "adapter_model.safetensors"
    save_file({"base_model.model.layer.lora_A.weight": torch.zeros(8, 64),
               "base_model.model.layer.lora_B.weight": torch.zeros(64, 8)}, str(weights))
    if truncate:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (directory / "adapter_config.json").write_text(
        config if config is not None else json.dumps({"r": 8, "peft_type": "LORA"}))
    write_manifest(directory, {"kind": "adapter", "task": "causal-lm"})
    return directory


def _artifact(directory: Path, kind: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory, {"kind": kind, "task": "causal-lm"})
    return directory


def _evaluate(tmp_path: Path, adapter: Path) -> Any:
    from kftune.components.evaluate.evaluation import run_evaluation

    return run_evaluation(base_model_dir=str(_artifact(tmp_path / "base", "model")),
                          adapter_dir=str(adapter),
                          eval_data_dir=str(_artifact(tmp_path / "eval", "dataset")))


def _export(tmp_path: Path, adapter: Path) -> Any:
    from kftune.components.export_model.export import export_model

    return export_model(str(_artifact(tmp_path / "base", "model")), str(adapter),
                        str(tmp_path / "out"), task="causal-lm")


def _register(tmp_path: Path, adapter: Path) -> Any:
    from kftune.components.register_model import registry

    target = registry.RegistryTarget(server_address="http://127.0.0.1", model_name="m",
                                     version="v1")
    return registry.registration_plan(str(adapter), "s3://bucket/adapter", target)


def _deploy(tmp_path: Path, adapter: Path) -> Any:
    from kftune.components.deploy_model import deploy

    return deploy.serving_plan(str(adapter), str(adapter), deploy.DeployConfig(name="m"),
                               base_uri="s3://bucket/base", check_uris=False)


@dataclasses.dataclass
class AdapterCase:
    name: str
    step: Callable[[Path, Path], Any]
    config: str | None
    truncate: bool
    expected: list[str]


TRUNCATED = ["`adapter`", "adapter_model.safetensors is not a complete safetensors file",
             "truncated", "run train_lora again"]
NOT_JSON = ["`adapter`", "adapter_config.json is not valid JSON (line 1 column 8",
            "run train_lora again"]
ADAPTER_CASES = [
    AdapterCase("evaluate, truncated weights", _evaluate, None, True, TRUNCATED),
    AdapterCase("evaluate, config not JSON", _evaluate, '{"r": 8', False, NOT_JSON),
    AdapterCase("export_model, truncated weights", _export, None, True, TRUNCATED),
    AdapterCase("export_model, config not JSON", _export, '{"r": 8', False, NOT_JSON),
    AdapterCase("register_model, config not JSON", _register, '{"r": 8', False, NOT_JSON),
    AdapterCase("deploy_model, config not JSON", _deploy, '{"r": 8', False, NOT_JSON),
    AdapterCase("deploy_model, config not an object", _deploy, "[8]", False,
                ["`adapter`", "adapter_config.json must hold a JSON object, got list"]),
]


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=lambda case: case.name)
def test_a_damaged_adapter_is_named_with_the_fix(tmp_path: Path, case: AdapterCase) -> None:
    adapter = _adapter(tmp_path / "adapter", config=case.config, truncate=case.truncate)
    with pytest.raises(InputError) as caught:
        case.step(tmp_path, adapter)
    message = str(caught.value)
    for expected in case.expected:
        assert expected in message
    assert str(adapter) in message


def test_both_damaged_adapter_files_are_reported_at_once(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "adapter", config="{", truncate=True)
    with pytest.raises(InputError) as caught:
        _evaluate(tmp_path, adapter)
    assert len(caught.value.problems) == 1  # the config is read first, and refused alone
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(InputError) as caught:
        _evaluate(tmp_path, adapter)
    assert [problem.split(" is ")[0].rsplit("/", 1)[1] for problem in caught.value.problems] == [
        "adapter_model.safetensors", "tokenizer.json"]


# -- a model given by the user: download_model -----------------------------------------------------


def test_a_damaged_model_names_each_file_by_its_source(tmp_path: Path) -> None:
    from kftune.components.download_model.model import ModelSource, download_model_to

    source = tmp_path / "my-model"
    _adapter(source, config="{}", truncate=True)
    (source / "adapter_model.safetensors").rename(source / "model.safetensors")
    (source / "config.json").write_text('{"model_type": "llama",\n  oops}')
    (source / "tokenizer.json").write_text("{}")
    with pytest.raises(InputError) as caught:
        download_model_to(ModelSource(uri=str(source)), tmp_path / "out", check_loads=False)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"`uri`: {source}/config.json is not valid JSON (line 2 ")
    assert problems[1].startswith(f"`uri`: {source}/model.safetensors is not a complete "
                                  "safetensors file")
    assert all("upload them again" in problem for problem in problems)
    assert not (tmp_path / "out").exists()


# -- text codecs: download_dataset's encoding, the pipeline's dataset_encoding ---------------------


@pytest.mark.parametrize(("encoding", "expected"), [
    ("latin-9000", "`encoding` must name a text encoding Python knows, got 'latin-9000'"),
    ("rot13", "`encoding` must name a text encoding, got 'rot13', a codec that does not decode"),
    ("base64", "`encoding` must name a text encoding, got 'base64', a codec that does not decode"),
    ("undefined", "`encoding` must name a text encoding, got 'undefined', a codec that"),
    ("idna", "`encoding` must name a text encoding, got 'idna', a codec that does not decode"),
], ids=["unknown", "str-to-str", "bytes-to-bytes", "refuses-everything", "no-replace"])
def test_a_codec_that_cannot_read_text_is_refused_before_reading(tmp_path: Path, encoding: str,
                                                                 expected: str) -> None:
    from kftune.components.download_dataset.dataset import DatasetSource

    csv = tmp_path / "rows.csv"
    csv.write_text("text,label\nhello,a\n")
    with pytest.raises(InputError) as caught:
        DatasetSource(uri=str(csv), encoding=encoding)
    assert str(caught.value).startswith(expected)
    assert "e.g. utf-8, latin-1, cp1252" in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252", "utf-16", "utf_8_sig"])
def test_text_encodings_still_read(tmp_path: Path, encoding: str) -> None:
    from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to

    csv = tmp_path / "rows.csv"
    csv.write_bytes("text,label\nüber,a\nnaïve,b\n".encode(encoding))
    source = DatasetSource(uri=str(csv), encoding=encoding, eval_fraction=0.0)
    manifest, _ = download_dataset_to(source, tmp_path / "out", tmp_path / "held-out")
    assert manifest["rows"] == 2


def _damaged_json(directory: Path) -> None:
    (directory / "state.json").write_text("{")


def _truncated_arrow(directory: Path) -> None:
    (arrow,) = directory.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "expected"), [
    (_damaged_json, "`uri`: {saved}/state.json is not valid JSON (line 1 column 2: "),
    (_truncated_arrow, "`uri` '{saved}' could not be read as a save_to_disk directory (OSError: "),
], ids=["json", "arrow"])
def test_a_damaged_save_to_disk_directory_is_named(tmp_path: Path, damage: Callable[[Path], None],
                                                   expected: str) -> None:
    import datasets
    from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["a row"] * 500}).save_to_disk(str(saved))
    damage(saved)
    with pytest.raises(InputError) as caught:
        download_dataset_to(DatasetSource(uri=str(saved)), tmp_path / "out", tmp_path / "held")
    message = str(caught.value)
    assert message.startswith(expected.format(saved=saved))
    assert message.endswith("save the dataset again with save_to_disk, or copy it again")


# -- YAML the user gives: a kubeconfig ------------------------------------------------------------


BAD_YAML = "apiVersion: v1\nclusters: [\n  - name: x\n   bad: : :\n"


def test_a_kubeconfig_that_is_not_yaml_is_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from kftune.components.common import cluster

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(BAD_YAML)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(InputError) as caught:
        cluster.api_client(doing="talk to", fix="run inside a cluster")
    assert (f"no usable kubeconfig ({kubeconfig} is not valid YAML (while parsing a flow "
            "node: expected the node content, but found '-' at line 3 column 3)); set "
            "KUBECONFIG, or run inside a cluster") in str(caught.value)


def test_training_client_names_a_kubeconfig_that_is_not_yaml(tmp_path: Path) -> None:
    from kftune.pipelines.training_client import TrainingClient

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(BAD_YAML)
    with pytest.raises(InputError) as caught:
        TrainingClient(config_file=str(kubeconfig))
    assert str(caught.value).startswith(f"`config_file`: {kubeconfig} is not valid YAML (")


@pytest.mark.parametrize(("content", "expected"), [
    (BAD_YAML, "is not valid YAML (while parsing a flow node: expected the node content, but "
               "found '-' at line 3 column 3); pass a pipeline YAML written by `kftune compile`"),
    ("- just\n- a list\n", "is YAML but not a compiled KFP pipeline (no pipelineInfo)"),
], ids=["not-yaml", "not-a-pipeline"])
def test_a_pipeline_package_that_is_not_one_is_named_before_the_server(
        tmp_path: Path, content: str, expected: str) -> None:
    import kftune
    from support.kfp_server import KfpApiDouble, serving

    package = tmp_path / "pipeline.yaml"
    package.write_text(content)
    for api in serving(KfpApiDouble()):
        with pytest.raises(InputError) as caught:
            kftune.submit(host=api.host, package=package)
        assert f"`package`: {package} {expected}" in str(caught.value)
        assert api.requests == []


# -- JSON files the user gives: @FILE arguments ---------------------------------------------------


def test_a_json_file_given_to_kftune_run_is_named(tmp_path: Path) -> None:
    from kftune.pipelines import parameters

    bad = tmp_path / "lora.json"
    bad.write_text('{"r": 8,}')
    _, problems = parameters.parse_overrides([f"lora_config=@{bad}"])
    assert problems == [f"`lora_config`: {bad} is not valid JSON (line 1 column 9: Expecting "
                        "property name enclosed in double quotes); write a JSON object in it"]


def test_a_json_file_given_to_kftune_launch_is_named(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from kftune.pipelines.cli import main

    bad = tmp_path / "training.json"
    bad.write_bytes(b'{"learning_rate": "\xff"}')
    code = main(["launch", "--model-uri", "s3://b/model", "--dataset-uri", "s3://b/data",
                 "--output-uri", "s3://b/out", "--training-parameters", f"@{bad}", "--dry-run"])
    assert code == 2
    assert (f"`--training-parameters`: {bad} is not utf-8 text (byte 0xff at offset 19); write "
            "JSON in it") in capsys.readouterr().err


# -- the shared helpers ---------------------------------------------------------------------------


def _yaml_error() -> Exception:
    import yaml

    try:
        yaml.safe_load(BAD_YAML)
    except yaml.YAMLError as error:
        return error
    raise AssertionError("not an error")


def _wrapped_json_error() -> Exception:
    # transformers re-raises a config's JSON error as an OSError "is not a valid JSON file".
    try:
        try:
            json.loads("{")
        except json.JSONDecodeError as error:
            raise OSError("It looks like the config file is not a valid JSON file.") from error
    except OSError as error:
        return error
    raise AssertionError("not an error")


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: json.JSONDecodeError("Expecting value", "x = 1", 0),
     "is not valid JSON (line 1 column 1: Expecting value)"),
    (_wrapped_json_error, "is not valid JSON (line 1 column 2"),
    (_yaml_error, "is not valid YAML (while parsing a flow node: expected the node content, "
                  "but found '-' at line 3 column 3)"),
    (lambda: b"\xff".decode("utf-8"), "is not utf-8 text (byte 0xff at offset 0)"),
    (lambda: ValueError("something else"), None),
], ids=["json", "json-inside-oserror", "yaml", "bytes", "not-a-parse-error"])
def test_reading_names_the_file_and_the_fix(make: Callable[[], Any], expected: str | None) -> None:
    def fail() -> None:
        error = make()
        if isinstance(error, BaseException):
            raise error

    if expected is None:
        with pytest.raises(ValueError, match="something else"), errors.reading(
                "/x/f.json", parameter="p", fix="fix it"):
            fail()
        return
    with pytest.raises(InputError) as caught, errors.reading("/x/f", parameter="p",
                                                             fix="fix it"):
        fail()
    message = str(caught.value)
    assert message.startswith(f"`p`: /x/f {expected}") and message.endswith("; fix it")


# -- a full disk while a checkpoint is written ----------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "256k"):
    """A really small tmpfs at `path` (needs root and mount rights; skips without them)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): "
                    f"{mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _checkpoint(output: Path, tensor_elements: int = 200_000) -> Path:
    from kftune.components.train_lora.pod import checkpoint

    state = {"step": 3, "adapter": {"w": torch.zeros(tensor_elements)}}
    return checkpoint.save_checkpoint(output, 3, state, {"base_model": "m"}, keep=None)


def _assert_disk_full(error: BaseException, output: Path) -> None:
    message = str(error)
    assert isinstance(error, DiskFullError) and error.errno == errno.ENOSPC
    assert "No space left on device while writing checkpoint step 3 to " in message
    assert str(output / "checkpoints") in message
    assert "save_total_limit" in message
    # Not retried: neither by the retry policy nor by a restart of the job.
    assert not retry.is_transient(error)
    # Nothing half-written is left behind.
    assert list((output / "checkpoints").iterdir()) == []


def test_torchs_checkpoint_writer_on_a_full_filesystem_says_disk_full(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as small:
        with pytest.raises(DiskFullError) as caught:
            _checkpoint(small / "output")
        # torch's own error keeps no errno: it is what the disk-full error was raised from.
        assert isinstance(caught.value.__cause__, RuntimeError)
        _assert_disk_full(caught.value, small / "output")


def test_an_enospc_from_the_writer_says_disk_full(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kftune.components.train_lora.pod import checkpoint

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError) as caught:
        _checkpoint(tmp_path / "output")
    _assert_disk_full(caught.value, tmp_path / "output")


def test_staging_onto_a_full_disk_says_disk_full_and_is_permanent(
        tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's inputs copied from the artifact store onto a node-local disk too small for them."""
    from kftune.components.train_lora import failures
    from kftune.components.train_lora.pod import entrypoint

    bucket = s3.bucket("full-disk")
    s3.put(bucket, "model/manifest.json", json.dumps({"kind": "model"}))
    s3.put(bucket, "model/model.safetensors", b"\0" * 600_000)
    with small_filesystem(tmp_path / "small") as small:
        with pytest.raises(DiskFullError) as caught:
            entrypoint.stage_inputs(f"s3://{bucket}/model", f"s3://{bucket}/data", small / "in",
                                    wait_for_other_node=False)
        assert str(caught.value).startswith(
            f"[Errno 28] No space left on device while copying `model` 's3://{bucket}/model' to "
            "local disk; free space on that disk")
        assert not retry.is_transient(caught.value)
        assert list((small / "in").iterdir()) == []  # the partial staging is removed
        # The pod's failure record says it is for good: a restarted container would fail again.
        record = tmp_path / "termination-log"
        monkeypatch.setenv(failures.TERMINATION_MESSAGE_ENV, str(record))
        with pytest.raises(DiskFullError):
            entrypoint.main(["--task", "causal-lm", "--model-uri", f"s3://{bucket}/model",
                             "--data-uri", f"s3://{bucket}/data", "--output-uri",
                             str(tmp_path / "out"), "--work-dir", str(small / "work")])
        written = failures.FailureRecord.from_message(record.read_text())
        assert written is not None and written.bad_input
        assert "No space left on device" in written.cause


def _download_rows(tmp_path: Path, out: Path) -> None:
    from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to

    csv = tmp_path / "rows.csv"
    csv.write_text("text,label\n" + "".join(f"row number {index} {'x' * 40},a\n"
                                            for index in range(8000)))
    download_dataset_to(DatasetSource(uri=str(csv)), out / "train", out / "eval")


def _download_model(tmp_path: Path, out: Path) -> None:
    from kftune.components.download_model.model import ModelSource, download_model_to

    source = _adapter(tmp_path / "my-model", config="{}")
    (source / "adapter_model.safetensors").rename(source / "model.safetensors")
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "tokenizer.json").write_text(json.dumps({"padding": "x" * 400_000}))
    download_model_to(ModelSource(uri=str(source)), out / "model", check_loads=False)


@pytest.mark.parametrize(("step", "expected"), [
    (_download_rows, "loading '{tmp}/rows.csv' as a csv file (into the step's datasets cache)"),
    (_download_model, "writing the model '{tmp}/my-model' to {tmp}/small ("),
], ids=["dataset", "model"])
def test_a_download_onto_a_full_disk_says_disk_full(
        tmp_path: Path, step: Callable[[Path, Path], None], expected: str) -> None:
    expected = expected.format(tmp=tmp_path)
    with small_filesystem(tmp_path / "small") as small:
        with pytest.raises(DiskFullError) as caught:
            step(tmp_path, small)
        assert f"No space left on device while {expected}" in str(caught.value)
        assert str(caught.value).endswith(errors.OUTPUT_DISK_FIX)
        assert not retry.is_transient(caught.value)


@pytest.mark.parametrize(("error", "full"), [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), False),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
     False),
    (OSError(errno.EIO, "Input/output error"), False),
    (ConnectionResetError(errno.ECONNRESET, "reset"), False),
], ids=["enospc", "quota", "torch-writer-on-a-roomy-disk", "torch-writer-pos", "eio", "reset"])
def test_is_disk_full(tmp_path: Path, error: BaseException, full: bool) -> None:
    # tmp_path has room: torch's bare writer error there is not taken for a full disk.
    assert errors.is_disk_full(error, tmp_path) is full


def test_a_full_disk_is_never_transient() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise ConnectionError("upload failed") from error
    except ConnectionError as wrapped:
        assert not retry.is_transient(wrapped)
    assert retry.is_transient(ConnectionError("upload failed"))
