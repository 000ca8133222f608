"""A Kubeflow Model Registry REST server on 127.0.0.1, from the registry's own OpenAPI document.

The real server (Go, with a database) does not install here. This one serves the endpoints the
`model-registry` Python client uses to register a model, keeps the entities in memory, and checks
every request body against the schema the OpenAPI document (vendored beside it, see SOURCE)
gives for that operation, as the real server's generated handlers do: a body the real one would
reject is a 400 with the schema error. `oneOf` schemas with a discriminator (Artifact,
MetadataValue) are checked against the branch the discriminator names, as the generated
unmarshallers do. Duplicate names are 409, unknown parents 404, a missing bearer token 401 when
a token is required; `fail_next` makes the next requests answer a given status (transient 503s).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml
from openapi_schema_validator import OAS30Validator

SPEC_PATH = Path(__file__).parent / "model_registry" / "model-registry.yaml"
PREFIX = "/api/model_registry/v1alpha3"


@functools.cache
def _spec() -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """The OpenAPI document's components and request-body schemas, parsed once per process."""
    spec = yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    bodies = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            body = (operation.get("requestBody") or {}).get("content", {}).get(
                "application/json", {}).get("schema") if isinstance(operation, dict) else None
            if body:
                bodies[(method.upper(), path)] = body
    return _discriminated(spec["components"]), bodies


def _discriminated(components: dict[str, Any]) -> dict[str, Any]:
    """Each discriminated `oneOf` branch also requires its discriminator value."""
    components = copy.deepcopy(components)
    for schema in components["schemas"].values():
        discriminator = schema.get("discriminator")
        if not discriminator or "oneOf" not in schema:
            continue
        prop = discriminator["propertyName"]
        schema["oneOf"] = [
            {"allOf": [{"$ref": ref}, {"required": [prop],
                                       "properties": {prop: {"enum": [value]}}}]}
            for value, ref in discriminator["mapping"].items()
        ]
        del schema["discriminator"]
    return components


@dataclass
class RegistryState:
    """The registry's entities and the test's knobs."""

    registered_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    version_artifacts: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    token: str | None = None
    next_id: int = 1

    def new_id(self) -> str:
        value, self.next_id = str(self.next_id), self.next_id + 1
        return value


class ModelRegistryServer:
    """The server; `address` is `http://127.0.0.1:<port>`."""

    def __init__(self) -> None:
        self.components, self.bodies = _spec()
        self.state = RegistryState()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.address = "http://127.0.0.1"

    def validate(self, method: str, template: str, body: Any) -> str | None:
        """The schema error of `body` for the operation, or None when it is valid."""
        schema = self.bodies.get((method, PREFIX + template))
        if schema is None:
            return None
        validator = OAS30Validator({**schema, "components": self.components})
        errors = sorted(validator.iter_errors(body), key=lambda error: list(error.path))
        return "; ".join(f"{'/'.join(map(str, e.path)) or '<body>'}: {e.message}"
                         for e in errors) or None

    # -- the operations ---------------------------------------------------------------------

    def _entity(self, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
        now = str(int(time.time() * 1000))
        return {**body, "id": self.state.new_id(), "createTimeSinceEpoch": now,
                "lastUpdateTimeSinceEpoch": now, **extra}

    def handle(self, method: str, path: str, query: dict[str, str],
               body: Any) -> tuple[int, Any]:
        """One request: (status, JSON response)."""
        state = self.state
        route = [("GET", r"/registered_models", self._list_models),
                 ("GET", r"/registered_model", self._find_model),
                 ("POST", r"/registered_models", self._create_model),
                 ("GET", r"/model_version", self._find_version),
                 ("POST", r"/model_versions", self._create_version),
                 ("GET", r"/model_artifact", self._find_artifact),
                 ("GET", r"/model_versions/(\d+)/artifacts", self._list_artifacts),
                 ("POST", r"/model_versions/(\d+)/artifacts", self._create_artifact)]
        for verb, pattern, operation in route:
            match = re.fullmatch(PREFIX + pattern, path)
            if verb == method and match:
                template = re.sub(r"\(\\d\+\)", "{modelversionId}", pattern)
                problem = self.validate(method, template, body) if method == "POST" else None
                if problem:
                    return 400, {"code": "400", "message": f"invalid request body: {problem}"}
                state.requests.append((method, path, body))
                return operation(query, body, *match.groups())
        return 404, {"code": "404", "message": f"no route for {method} {path}"}

    def _list_models(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        items = list(self.state.registered_models.values())
        return 200, {"items": items, "size": len(items), "pageSize": int(query.get("pageSize") or
                                                                          100), "nextPageToken": ""}

    def _find_model(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for model in self.state.registered_models.values():
            if model["name"] == query.get("name"):
                return 200, model
        return 404, {"code": "404", "message": f"no registered model {query.get('name')!r}"}

    def _create_model(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if any(m["name"] == body["name"] for m in self.state.registered_models.values()):
            return 409, {"code": "409", "message": f"registered model {body['name']!r} exists"}
        model = self._entity(body, state=body.get("state", "LIVE"))
        self.state.registered_models[model["id"]] = model
        return 201, model

    def _find_version(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for version in self.state.model_versions.values():
            if version["name"] == query.get("name") and version["registeredModelId"] == query.get(
                    "parentResourceId"):
                return 200, version
        return 404, {"code": "404", "message": f"no model version {query.get('name')!r}"}

    def _create_version(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        parent = body["registeredModelId"]
        if parent not in self.state.registered_models:
            return 404, {"code": "404", "message": f"no registered model with id {parent}"}
        if any(v["name"] == body["name"] and v["registeredModelId"] == parent
               for v in self.state.model_versions.values()):
            return 409, {"code": "409", "message": f"model version {body['name']!r} exists"}
        version = self._entity(body, state=body.get("state", "LIVE"))
        self.state.model_versions[version["id"]] = version
        return 201, version

    def _find_artifact(self, query: dict[str, str], body: Any) -> tuple[int, Any]:
        for artifact_id in self.state.version_artifacts.get(query.get("parentResourceId", ""), []):
            if self.state.artifacts[artifact_id]["name"] == query.get("name"):
                return 200, self.state.artifacts[artifact_id]
        return 404, {"code": "404", "message": f"no model artifact {query.get('name')!r}"}

    def _list_artifacts(self, query: dict[str, str], body: Any, version_id: str) -> tuple[int, Any]:
        items = [self.state.artifacts[a] for a in self.state.version_artifacts.get(version_id, [])]
        return 200, {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}

    def _create_artifact(self, query: dict[str, str], body: dict[str, Any],
                         version_id: str) -> tuple[int, Any]:
        if version_id not in self.state.model_versions:
            return 404, {"code": "404", "message": f"no model version with id {version_id}"}
        artifact = self._entity(body, state=body.get("state", "LIVE"))
        self.state.artifacts[artifact["id"]] = artifact
        self.state.version_artifacts.setdefault(version_id, []).append(artifact["id"])
        return 201, artifact

    # -- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with server._lock:
                    status, payload = server._answer(self.command, url, raw,
                                                     self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

        return Handler

    def _answer(self, method: str, url: Any, raw: bytes,
                authorization: str | None) -> tuple[int, Any]:
        if self.state.fail_next:
            status = self.state.fail_next.pop(0)
            return status, {"code": str(status), "message": "injected failure"}
        if self.state.token and authorization != f"Bearer {self.state.token}":
            return 401, {"code": "401", "message": "missing or wrong bearer token"}
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError as error:
            return 400, {"code": "400", "message": f"body is not JSON: {error}"}
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        return self.handle(method, url.path, query, body)

    @contextmanager
    def running(self) -> Iterator[ModelRegistryServer]:
        """Serves in a thread until the block ends."""
        # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
        thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
