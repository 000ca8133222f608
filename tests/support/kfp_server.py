"""A local stand-in for the KFP v2beta1 REST API, optionally behind Kubeflow's authentication."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class KfpApiDouble:
    """Records requests and answers like the KFP API server.

    With `bearer` or `cookie`, it answers 401 (as Kubeflow's oauth2-proxy / Istio gateway do) to
    any request without `Authorization: Bearer <bearer>` or without the cookie pair `cookie` in
    its `Cookie` header.
    """

    def __init__(
        self, existing_pipeline: bool = False, bearer: str = "", cookie: str = ""
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.existing_pipeline = existing_pipeline
        self.bearer = bearer
        self.cookie = cookie
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urllib.parse.urlsplit(self.path)
                request = {"method": self.command, "path": url.path,
                           "query": urllib.parse.parse_qs(url.query), "body": body,
                           "content_type": self.headers.get("Content-Type", ""),
                           "authorization": self.headers.get("Authorization", ""),
                           "cookie": self.headers.get("Cookie", "")}
                double.requests.append(request)
                if double.authorized(request):
                    status, response = double.respond(request)
                else:
                    status, response = 401, {"error": "Unauthorized", "code": 16}
                payload = json.dumps(response).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def authorized(self, request: dict[str, Any]) -> bool:
        if self.bearer and request["authorization"] != f"Bearer {self.bearer}":
            return False
        pairs = [pair.strip() for pair in request["cookie"].split(";")]
        return not self.cookie or self.cookie in pairs

    def respond(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path, method = request["path"], request["method"]
        api = "/apis/v2beta1"
        if path == f"{api}/healthz":
            return 200, {"multi_user": False}
        if path == f"{api}/pipelines" and method == "GET":
            if self.existing_pipeline:
                return 200, {"pipelines": [{"pipeline_id": "p-old",
                                            "display_name": "kftune-lora-finetune"}],
                             "total_size": 1}
            return 200, {}
        if path == f"{api}/pipelines/upload":
            return 200, {"pipeline_id": "p-1", "display_name": request["query"]["name"][0]}
        if path == f"{api}/pipelines/upload_version":
            return 200, {"pipeline_id": request["query"]["pipelineid"][0],
                         "pipeline_version_id": "v-2"}
        if path.startswith(f"{api}/pipelines/") and path.endswith("/versions"):
            return 200, {"pipeline_versions": [{"pipeline_id": "p-1",
                                                "pipeline_version_id": "v-1"}], "total_size": 1}
        if path == f"{api}/experiments" and method == "GET":
            return 200, {}
        if path == f"{api}/experiments" and method == "POST":
            return 200, {"experiment_id": "e-1", **json.loads(request["body"])}
        if path == f"{api}/runs" and method == "POST":
            return 200, {"run_id": "r-1", **json.loads(request["body"])}
        if path == f"{api}/recurringruns" and method == "POST":
            return 200, {"recurring_run_id": "rr-1", **json.loads(request["body"])}
        return 404, {"error": f"no route {method} {path}", "code": 5}

    def find(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


def serving(double: KfpApiDouble) -> Iterator[KfpApiDouble]:
    """Serves `double` on its port until the generator is closed."""
    thread = threading.Thread(target=double.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield double
    finally:
        double.server.shutdown()
        double.server.server_close()


@pytest.fixture
def kfp_api() -> Iterator[KfpApiDouble]:
    """A KFP API server without authentication and without pipelines."""
    yield from serving(KfpApiDouble())


@pytest.fixture
def kfp_api_with_pipeline() -> Iterator[KfpApiDouble]:
    """A KFP API server holding a pipeline named kftune-lora-finetune."""
    yield from serving(KfpApiDouble(existing_pipeline=True))
