"""register_model against a local Model Registry REST server built from the registry's OpenAPI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.register_model import registry
from support.model_registry_server import PREFIX, ModelRegistryServer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KFTUNE_RETRY_DELAY_SECONDS", "0.01")
    # The double is plain HTTP, but the client builds an SSL context, loading the system's CA
    # bundle (about 70 ms), for every request: no bundle to load.
    monkeypatch.setenv("SSL_CERT_FILE", os.devnull)
    with ModelRegistryServer().running() as running:
        yield running


def _artifacts(tmp_path: Path) -> tuple[str, str]:
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_version": "0.21.2", "r": 8}))
    write_manifest(adapter, {
        "kind": "adapter", "task": "causal-lm",
        "base_model": {"source": {"uri": "hf://org/base", "resolved_revision": "abc123"},
                       "architecture": "LlamaForCausalLM"},
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "train_data": {"source": {"uri": "s3://bucket/data.jsonl", "split": "train[:90%]"},
                       "fingerprint": "f00d"},
    })
    merged.mkdir()
    write_manifest(merged, {"kind": "model", "dtype": "bfloat16", "merged_from": {"x": 1},
                            "check": {"max_abs_error": 0.001, "tolerance": 0.004}})
    return str(adapter), str(merged)


def _target(server: ModelRegistryServer, **changes: Any) -> registry.RegistryTarget:
    fields = {"server_address": server.address, "port": server.port, "model_name": "sentiment",
              "version": "run-1", **changes}
    return registry.RegistryTarget(**fields)


def _plan(tmp_path: Path, target: registry.RegistryTarget) -> list[dict[str, Any]]:
    adapter, merged = _artifacts(tmp_path)
    return registry.registration_plan(
        adapter, "s3://mlpipeline/v2/artifacts/run-1/adapter", target, merged_dir=merged,
        merged_uri="s3://mlpipeline/v2/artifacts/run-1/merged",
        eval_metrics={"tuned_eval_loss": 1.25, "base_eval_loss": 2.5},
        run={"run_id": "a1b2", "run_name": "run-1"})


def test_registers_adapter_and_merged_model_with_provenance(server: ModelRegistryServer,
                                                            tmp_path: Path) -> None:
    target = _target(server)
    done = registry.register(_plan(tmp_path, target), target)

    assert [(entry["name"], entry["version"], entry["format"]) for entry in done] == [
        ("sentiment", "run-1", "peft-lora"), ("sentiment-merged", "run-1", "huggingface")]
    state = server.state
    assert sorted(model["name"] for model in state.registered_models.values()) == [
        "sentiment", "sentiment-merged"]
    version = state.model_versions[done[0]["model_version_id"]]
    properties = version["customProperties"]
    assert properties["kfp_run_id"] == {"metadataType": "MetadataStringValue",
                                        "string_value": "a1b2"}
    assert properties["base_model"]["string_value"] == "hf://org/base"
    assert properties["dataset_fingerprint"]["string_value"] == "f00d"
    assert properties["eval_tuned_eval_loss"] == {"metadataType": "MetadataDoubleValue",
                                                  "double_value": 1.25}
    artifact = state.artifacts[done[1]["model_artifact_id"]]
    assert artifact["uri"] == "s3://mlpipeline/v2/artifacts/run-1/merged"
    assert (artifact["modelFormatName"], artifact["artifactType"]) == ("huggingface",
                                                                       "model-artifact")
    merged_properties = state.model_versions[done[1]["model_version_id"]]["customProperties"]
    assert merged_properties["adapter"]["string_value"] == "sentiment:run-1"


def test_registering_again_finds_the_same_entries(server: ModelRegistryServer,
                                                  tmp_path: Path) -> None:
    target = _target(server)
    first = registry.register(_plan(tmp_path, target), target)
    again = registry.register(_plan(tmp_path / "retry", target), target)
    assert again == first
    assert len(server.state.model_versions) == 2 and len(server.state.artifacts) == 2


def test_transient_errors_are_retried(server: ModelRegistryServer, tmp_path: Path) -> None:
    server.state.fail_next = [503, 502]
    target = _target(server)
    done = registry.register(_plan(tmp_path, target)[:1], target)
    assert done[0]["name"] == "sentiment" and not server.state.fail_next


@dataclasses.dataclass
class Failure:
    name: str
    arrange: Any
    expected: str


def _other_uri(server: ModelRegistryServer, tmp_path: Path) -> None:
    target = _target(server)
    entry = {**_plan(tmp_path / "first", target)[0], "uri": "s3://elsewhere/adapter"}
    registry.register([entry], target)


FAILURES = [
    Failure("unavailable", lambda server, tmp: setattr(server.state, "fail_next", [503] * 20),
            "could not reach the Model Registry at http://127.0.0.1 after 2 attempts (HTTP 503"),
    Failure("token required", lambda server, tmp: setattr(server.state, "token", "s3cret"),
            "refused the registration: HTTP 401 missing or wrong bearer token; the step's "
            "service account needs a token"),
    Failure("version taken", _other_uri,
            "refused: version 'run-1' of 'sentiment' is already registered with another "
            "artifact ('s3://elsewhere/adapter'); pass another `version`"),
]


@pytest.mark.parametrize("case", FAILURES, ids=lambda case: case.name)
def test_failures_name_the_registry_and_the_cause(server: ModelRegistryServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  case: Failure) -> None:
    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    case.arrange(server, tmp_path)
    target = _target(server)
    with pytest.raises(RuntimeError) as raised:
        registry.register(_plan(tmp_path, target), target)
    assert case.expected in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_unreachable_registry_fails_after_the_retries(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    monkeypatch.setenv("KFTUNE_RETRY_DELAY_SECONDS", "0.01")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = registry.RegistryTarget(server_address="http://127.0.0.1", port=port,
                                     model_name="m", version="v")
    adapter, _ = _artifacts(tmp_path)
    with pytest.raises(RuntimeError, match="could not reach the Model Registry at "
                                           "http://127.0.0.1 after 2 attempts"):
        registry.register(registry.registration_plan(adapter, "s3://b/a", target), target)


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"name": 5}, "name: 5 is not of type 'string'"),
     ({"name": "m", "state": "GONE"}, "state: 'GONE' is not one of"),
     ({"name": "m", "customProperties": {"k": {"metadataType": "MetadataIntValue",
                                               "int_value": 3}}}, "customProperties/k"),
     ({"description": "no name"}, "'name' is a required property")],
    ids=["name-not-a-string", "unknown-state", "int-value-not-a-string", "no-name"],
)
def test_server_rejects_what_the_schema_rejects(server: ModelRegistryServer, body: dict[str, Any],
                                                expected: str) -> None:
    request = urllib.request.Request(
        f"{server.address}:{server.port}{PREFIX}/registered_models", method="POST",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400
    assert expected in json.loads(raised.value.read())["message"]
    assert not server.state.registered_models


def test_bad_target_reports_every_problem() -> None:
    with pytest.raises(InputError) as raised:
        registry.RegistryTarget(server_address="ftp://user:pw@host", model_name="", version=" ",
                                port=70000)
    message = str(raised.value)
    assert "`registry_address` must be http(s)://host[:port]" in message
    assert "`model_name` must be a non-empty string" in message
    assert "`registry_port`" in message and "pw" not in message
