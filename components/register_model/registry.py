"""register_model's logic: Model Registry entries for the adapter and the merged model.

What is registered comes from the artifacts' manifests alone (`registration_plan`, pure data, so
`kftune run` can show it without a registry): for the adapter, a version of the registered
model `model_name` with format `peft-lora`; for the merged model (when `merge` made one), a
version of `<model_name>-merged` with format `huggingface` (the layout KServe's Hugging Face
runtime and vLLM serve). Each version carries the KFP provenance as custom properties: the
pipeline run, the base model, the training data, the LoRA settings and the evaluation metrics.

The registry is reached through the `model-registry` Python client. Transient failures
(connection refused or reset, timeouts, 429/5xx) are retried with kftune's backoff
(common/retry.py); a registration is idempotent (the same version with the same URI is found, not
registered twice), so a retry after a half-done attempt is safe. A refusal (400/401/403, or the
version already registered with another URI) fails at once, with the registry's message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any
from urllib.parse import urlparse

from ..common import retry, secrets, uris
from ..common.artifacts import read_adapter_config, read_manifest
from ..common.errors import Problems

LOG = logging.getLogger(__name__)

ADAPTER_FORMAT = "peft-lora"
MERGED_FORMAT = "huggingface"
MERGED_SUFFIX = "-merged"


@dataclasses.dataclass(frozen=True)
class RegistryTarget:
    """Where and under which name the models are registered."""

    server_address: str
    """The registry's REST address, `http(s)://host[:port]` (e.g. the in-cluster Service)."""
    model_name: str
    """Registered model name of the adapter; the merged model is `<model_name>-merged`."""
    version: str
    """Version name, unique per registered model (the pipeline passes the KFP run's name)."""
    port: int = 0
    """The port when `server_address` has none (0: 8080 for http, 443 for https)."""
    author: str = "kftune"
    """Author and owner recorded on the entries."""

    def __post_init__(self) -> None:
        problems = Problems()
        parsed = urlparse(self.server_address)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            problems.add(f"`registry_address` must be http(s)://host[:port], got "
                         f"{uris.display_uri(self.server_address)!r}; e.g. "
                         "http://model-registry-service.kubeflow.svc.cluster.local:8080")
        problems.extend(uris.credential_problems(self.server_address,
                                                 parameter="registry_address"))
        for name in ("model_name", "version", "author"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                problems.add(f"`{name}` must be a non-empty string, got {value!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            problems.add(f"`registry_port` must be 0 (from the address) to 65535, got "
                         f"{self.port!r}")
        problems.extend(secrets.field_problems(self, {"server_address": "registry_address"}))
        problems.raise_if_any()


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{key}": value for key, value in sorted(values.items())
            if isinstance(value, (str, int, float, bool)) and not isinstance(value, dict)}


def provenance(adapter_manifest: dict[str, Any], eval_metrics: dict[str, Any] | None,
               run: dict[str, str]) -> dict[str, Any]:
    """The custom properties every registered version carries (str, int, float or bool)."""
    base = adapter_manifest.get("base_model") or {}
    base_source = base.get("source") or {}
    data = adapter_manifest.get("train_data") or {}
    data_source = data.get("source") or {}
    lora = adapter_manifest.get("lora") or {}
    properties: dict[str, Any] = {
        "kfp_run_id": run.get("run_id", ""),
        "kfp_run_name": run.get("run_name", ""),
        "task": adapter_manifest.get("task") or "",
        "base_model": uris.redact(str(base_source.get("uri") or "")),
        "base_model_revision": str(base_source.get("resolved_revision") or ""),
        "base_model_architecture": str(base.get("architecture") or ""),
        "dataset": uris.redact(str(data_source.get("uri") or "")),
        "dataset_split": str(data_source.get("split") or ""),
        "dataset_fingerprint": str(data.get("fingerprint") or ""),
        "lora_r": lora.get("r", ""),
        "lora_alpha": lora.get("lora_alpha", ""),
        "lora_target_modules": json.dumps(lora.get("target_modules")),
    }
    properties.update(_scalars("eval_", dict(eval_metrics or {})))
    return {key: value for key, value in properties.items() if value not in ("", None)}


def registration_plan(adapter_dir: str, adapter_uri: str, target: RegistryTarget, *,
                      merged_dir: str | None = None, merged_uri: str | None = None,
                      eval_metrics: dict[str, Any] | None = None,
                      run: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The entries to register (keyword arguments of `ModelRegistry.register_model`).

    Raises:
        InputError: when an artifact is not what its parameter expects.
    """
    problems = Problems()
    adapter_manifest = read_manifest(adapter_dir, parameter="adapter")
    if adapter_manifest.get("kind") != "adapter":
        problems.add(f"`adapter` must be an adapter artifact, got kind "
                     f"{adapter_manifest.get('kind')!r}; pass train_lora's adapter output")
    merged_manifest = read_manifest(merged_dir, parameter="merged_model") if merged_dir else None
    if merged_manifest is not None and not merged_manifest.get("merged_from"):
        problems.add("`merged_model` must be export_model's output (its manifest has no "
                     "merged_from)")
    problems.raise_if_any()
    properties = provenance(adapter_manifest, eval_metrics, run or {})
    peft_version = read_adapter_config(adapter_dir, parameter="adapter").get("peft_version", "")
    entries = [{
        "name": target.model_name, "version": target.version, "uri": adapter_uri,
        "model_format_name": ADAPTER_FORMAT, "model_format_version": peft_version or "1",
        "version_description": f"LoRA adapter of {properties.get('base_model', 'its base model')}",
        "metadata": properties,
    }]
    if merged_manifest is not None:
        check = merged_manifest.get("check") or {}
        entries.append({
            "name": target.model_name + MERGED_SUFFIX, "version": target.version,
            "uri": merged_uri or merged_dir, "model_format_name": MERGED_FORMAT,
            "model_format_version": "1",
            "version_description": f"{target.model_name} {target.version} merged into "
                                   f"{properties.get('base_model', 'its base model')}",
            "metadata": {**properties, "adapter": f"{target.model_name}:{target.version}",
                         "dtype": merged_manifest.get("dtype", ""),
                         **_scalars("merge_check_", check)},
        })
    return entries


class RegistryRefused(RuntimeError):
    """The registry answered, and said no."""


def _status_and_message(error: BaseException) -> tuple[int | None, str]:
    for link in retry.error_chain(error):
        status = getattr(link, "status", None)
        if isinstance(status, int):
            body = getattr(link, "body", None) or ""
            try:
                message = json.loads(body).get("message", body)
            except (ValueError, AttributeError):
                message = str(body)
            return status, str(message)[:300]
    return None, f"{type(error).__name__}: {error}"[:300]


def _register_one(client: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """One entry, idempotently: an existing version with the same URI is returned as is."""
    known = client.get_registered_model(entry["name"]) is not None
    existing = client.get_model_version(entry["name"], entry["version"]) if known else None
    if existing is not None:
        artifact = client.get_model_artifact(entry["name"], entry["version"])
        if artifact is None or artifact.uri != entry["uri"]:
            raise RegistryRefused(
                f"version {entry['version']!r} of {entry['name']!r} is already registered with "
                f"another artifact ({getattr(artifact, 'uri', None)!r}); pass another `version`")
        model = client.get_registered_model(entry["name"])
    else:
        model = client.register_model(**entry)
        existing = client.get_model_version(entry["name"], entry["version"])
        artifact = client.get_model_artifact(entry["name"], entry["version"])
    return {"name": entry["name"], "version": entry["version"], "uri": entry["uri"],
            "format": entry["model_format_name"], "registered_model_id": model.id,
            "model_version_id": existing.id, "model_artifact_id": artifact.id}


def register(entries: list[dict[str, Any]], target: RegistryTarget,
             client_factory: Any = None) -> list[dict[str, Any]]:
    """Registers `entries`; returns their registry ids.

    Raises:
        RuntimeError: the registry could not be reached (after the retries) or refused.
    """
    if client_factory is None:
        from model_registry import ModelRegistry as client_factory
    shown = uris.display_uri(target.server_address)

    def connect() -> Any:
        return client_factory(target.server_address, target.port or None, author=target.author,
                              is_secure=urlparse(target.server_address).scheme == "https")

    done = []
    try:
        client = retry.call_with_retries(connect, what=f"connect to the Model Registry at {shown}")
        for entry in entries:
            done.append(retry.call_with_retries(
                lambda entry=entry: _register_one(client, entry),
                what=f"register {entry['name']}:{entry['version']}"))
            LOG.info("registered %s version %s (%s)", entry["name"], entry["version"],
                     entry["uri"])
    except RegistryRefused as refused:
        raise RuntimeError(f"the Model Registry at {shown} refused: {refused}") from None
    except Exception as error:  # the client raises many kinds; each ends the step
        status, message = _status_and_message(error)
        if retry.is_transient(error):
            what = f"HTTP {status} {message}" if status else message
            raise RuntimeError(
                f"could not reach the Model Registry at {shown} after {retry.attempts()} "
                f"attempts ({what}); check `registry_address` and that the registry runs"
            ) from None
        hint = {401: "; the step's service account needs a token the registry accepts",
                403: "; the step's service account may not write to this registry"}.get(
                    status or 0, "")
        answer = f"HTTP {status} {message}" if status else message
        raise RuntimeError(f"the Model Registry at {shown} refused the registration: "
                           f"{answer}{hint}") from None
    return done
