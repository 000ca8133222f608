"""Local stand-ins for remote storage, for offline tests.

- `s3_server` (session) runs moto's S3-compatible server (`ThreadedMotoServer`) on 127.0.0.1 at a
  free port; `s3` (per test) points the AWS env vars at it, resets its state and gives a boto3
  client plus `put`/`bucket` helpers. `s3_auth` additionally turns on moto's IAM authentication
  and returns real (moto) credentials, so wrong keys are refused like on AWS/MinIO.
- `http_server` serves in-memory files over HTTP on 127.0.0.1, with optional failures (status
  codes for the first N requests), delays, and any status/headers (e.g. a fake Hub API answer
  with `X-Error-Code`), to test retries, timeouts and error mapping; it records request headers.
- `hub_cache` points HF_HOME/HF_HUB_CACHE at a temporary directory in offline mode;
  `populate_hub_cache` writes a repository snapshot in the layout huggingface_hub reads
  (blobs/, snapshots/<commit>/, refs/<ref>).

Use the fixtures from a test module with `pytest_plugins = ("support.servers",)` (or import them:
`from support.servers import s3, s3_server  # noqa: F401`); import helpers such as
`populate_hub_cache` inside the tests that need them, so pytest can register the module as a plugin
before it is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Values that never appear in a real environment, so tests can assert they leak nowhere.
FAKE_ACCESS_KEY = "AKIAKFTUNETESTKEY0001"
FAKE_SECRET_KEY = "kftune-test-secret-do-not-log-0123456789"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(make_server: Callable[[int], Any]) -> Iterator[str]:
    """Starts `make_server(port)` on a free port of 127.0.0.1; yields its URL; stops it after."""
    port = free_port()
    server = make_server(port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Starts moto's S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with _serving(lambda port: ThreadedMotoServer(ip_address="127.0.0.1", port=port,
                                                  verbose=False)) as endpoint:
        yield endpoint


@dataclass
class S3:
    """The S3 test server as seen by one test."""

    endpoint: str
    client: object

    def bucket(self, name: str) -> str:
        """Creates a bucket; returns its name."""
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, body: bytes | str) -> str:
        """Uploads an object; returns its s3:// URI."""
        data = body.encode() if isinstance(body, str) else body
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"


def _moto_api(endpoint: str, path: str, data: bytes = b"") -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}",
        data=data,
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would hide the data from moto
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """Starts gcp-storage-emulator (the GCS JSON API, in memory) on 127.0.0.1; yields its URL."""
    from gcp_storage_emulator.server import create_server

    with _serving(lambda port: create_server("127.0.0.1", port, in_memory=True)) as endpoint:
        yield endpoint


@dataclass
class GCS:
    """The GCS test server as seen by one test; writes go through the plain JSON API."""

    endpoint: str

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def bucket(self, name: str) -> str:
        """Creates a bucket; returns its name."""
        self._call("POST", "/storage/v1/b?project=kftune-test", json.dumps({"name": name}).encode(),
                   "application/json")
        return name

    def put(self, bucket: str, key: str, body: bytes | str) -> str:
        """Uploads an object; returns its gs:// URI."""
        data = body.encode() if isinstance(body, str) else body
        name = urllib.parse.quote(key, safe="")
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", data,
                   "application/octet-stream")
        return f"gs://{bucket}/{key}"


@pytest.fixture
def gcs(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> GCS:
    """A wiped GCS emulator with STORAGE_EMULATOR_HOST (which gcsfs honours) pointing at it."""
    with urllib.request.urlopen(f"{gcs_server}/wipe", timeout=10):
        pass
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return GCS(gcs_server)


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A clean moto S3 server with the AWS env vars (endpoint, region, fake keys) pointing at it."""
    import boto3

    _moto_api(s3_server, "reset")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    return S3(s3_server, client)


@pytest.fixture
def s3_auth(s3: S3, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Turns on IAM authentication in the moto server; yields a valid (access key, secret).

    The env vars and `s3.client` use these valid keys; a test changes the env vars to see
    refused credentials.
    """
    import boto3

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1")
    iam.create_user(UserName="kftune")
    iam.put_user_policy(
        UserName="kftune",
        PolicyName="all-s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="kftune")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    _moto_api(s3.endpoint, "reset-auth", b"0")
    s3.client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _moto_api(s3.endpoint, "reset-auth", b"inf")


@dataclass
class Route:
    """What the HTTP test server answers for one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    fail_first: int = 0
    fail_status: int = 503
    delay_seconds: float = 0.0
    hits: int = 0
    request_headers: list[dict[str, str]] = field(default_factory=list)


@dataclass
class HttpServer:
    """A local HTTP server with programmable routes."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)

    def add(self, path: str, body: bytes | str, **behaviour) -> str:
        """Serves `body` at `path`; returns the full URL."""
        data = body.encode() if isinstance(body, str) else body
        self.routes["/" + path.lstrip("/")] = Route(data, **behaviour)
        return self.url(path)

    def url(self, path: str) -> str:
        """The full URL of `path`."""
        return f"{self.base_url}/{path.lstrip('/')}"


def _handler(server_state: HttpServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _route(self) -> Route | None:
            route = server_state.routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            return route

        def do_HEAD(self):
            route = self._route()
            if route is None:
                return
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()

        def do_GET(self):
            route = self._route()
            if route is None:
                return
            route.hits += 1
            route.request_headers.append(dict(self.headers.items()))
            if route.delay_seconds:
                time.sleep(route.delay_seconds)
            if route.hits <= route.fail_first:
                self.send_response(route.fail_status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = route.body
            start, stop = 0, len(body)
            if "Range" in self.headers and body:
                spec = self.headers["Range"].split("=", 1)[1]
                first, _, last = spec.partition("-")
                start = int(first or 0)
                stop = min(int(last) + 1, len(body)) if last else len(body)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
            else:
                self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            try:
                self.wfile.write(body[start:stop])
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A local HTTP server on 127.0.0.1; add files with `http_server.add(path, body)`."""
    state = HttpServer(base_url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def populate_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    files: Mapping[str, bytes | str | os.PathLike],
    *,
    repo_type: str = "model",
    ref: str = "main",
    commit: str | None = None,
) -> str:
    """Writes a repository snapshot into a huggingface_hub cache; returns its commit hash.

    The layout is the one huggingface_hub documents and reads back (`<type>s--<org>--<name>/` with
    `blobs/<hash>`, `snapshots/<commit>/<path>` symlinks to the blobs, and `refs/<ref>` holding
    the commit), so `snapshot_download(..., local_files_only=True)` and offline mode find it.

    Args:
        cache_dir: the HF_HUB_CACHE directory.
        repo_id: "org/name".
        files: repository path -> content (bytes or str) or a local file (a Path) to copy.
        repo_type: "model" or "dataset".
        ref: the branch or tag the commit is published under.
        commit: the commit hash (40 hex); derived from the content when None.
    """
    contents: dict[str, bytes] = {}
    for path, value in files.items():
        if isinstance(value, bytes):
            contents[path] = value
        elif isinstance(value, str):
            contents[path] = value.encode()
        else:
            contents[path] = Path(value).read_bytes()
    if commit is None:
        digest = hashlib.sha1()
        for path in sorted(contents):
            digest.update(path.encode() + b"\0" + contents[path])
        commit = digest.hexdigest()
    folder = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for path, data in contents.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = folder / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty huggingface_hub cache in offline mode; yields the HF_HUB_CACHE directory."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache
