"""A Kubernetes API server double on 127.0.0.1, for the real `kubernetes` client.

It speaks the real HTTP API for the endpoints kftune's PyTorchJob backend uses — create, get,
delete, list and watch `pytorchjobs.kubeflow.org/v1`; list pods; read a pod and its log (with
`follow`, `tailLines`, `timestamps`, `previous`) — and rejects what a real server rejects: 409 for a
taken name, 404 for a missing object, 422 for an invalid name, 400 for a namespace mismatch, and
403 for what the Training Operator's validating webhook denies (a name that is no DNS-1035 label,
no `pytorch` container, a Master with replicas != 1, ...).
Objects carry a `resourceVersion`; a watch sends the events after the version it is given, ends
after `timeoutSeconds`, and can be dropped on purpose (`drop_watches`). `fail_next` makes the next
matching requests fail with a status (500 by default).

Why not kmock's emulator: it is an asyncio server (the sync client needs it on a loop in another
thread), its watch ignores `fieldSelector`, `resourceVersion` and `timeoutSeconds` and never ends,
it does not validate names (no 422) and has no pod logs; each would need a patch or a custom
reaction, which together are more code than these endpoints.

A test drives the jobs like the Training Operator would, through `set_condition`, `add_pod`,
`log` and `finish_pod`; `on_create` runs a scenario (in a thread) for every new job.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_JOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/pytorchjobs(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKubernetes:
    """The in-memory API server. Use as a context manager; `api_client()` gives a client of it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.previous_logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.created: list[str] = []
        self.deleted: list[str] = []
        self._version = 100
        self._faults: list[list[Any]] = []
        self._watch_generation = 0
        self._log_generation = 0
        self.on_create: Callable[[FakeKubernetes, dict[str, Any]], None] | None = None
        # Like a proxy that closes idle streams: every watch ends cleanly at once, with no event.
        self.end_watches_at_once = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        fake = self

        class Handler(_Handler):
            server_double = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` talking to this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    # -- test controls ---------------------------------------------------------------------------

    def fail_next(self, method: str, path_pattern: str, status: int = 500, times: int = 1) -> None:
        """Makes the next `times` requests `method` on a path matching `path_pattern` fail."""
        with self._cond:
            self._faults.append([method.upper(), re.compile(path_pattern), status, times])

    def drop_watches(self) -> None:
        """Ends every open watch and log stream (like a load balancer cutting idle connections)."""
        with self._cond:
            self._watch_generation += 1
            self._log_generation += 1
            self._cond.notify_all()

    def run_in_background(self, function: Callable[[], None]) -> None:
        """Runs `function` in a daemon thread (a controller scenario)."""
        thread = threading.Thread(target=function, daemon=True)
        thread.start()
        self._threads.append(thread)

    def set_condition(
        self, namespace: str, name: str, condition_type: str, reason: str = "", message: str = ""
    ) -> None:
        """Appends a condition (status True; the earlier ones of other types turn False)."""
        with self._cond:
            job = self.jobs.get((namespace, name))
            if job is None:
                return
            status = job.setdefault("status", {})
            conditions = status.setdefault("conditions", [])
            for condition in conditions:
                if condition["type"] != "Created":
                    condition["status"] = "False"
            conditions.append(
                {
                    "type": condition_type,
                    "status": "True",
                    "reason": reason or f"PyTorchJob{condition_type}",
                    "message": message or f"PyTorchJob {name} is {condition_type.lower()}.",
                    "lastUpdateTime": _now(),
                    "lastTransitionTime": _now(),
                }
            )
            self._touch(job, "MODIFIED")

    def add_pod(
        self, namespace: str, job_name: str, replica_type: str, index: int, phase: str = "Running"
    ) -> str:
        """Creates the pod the operator would create for one replica and returns its name."""
        name = f"{job_name}-{replica_type.lower()}-{index}"
        with self._cond:
            self.pods[(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._next_version()),
                    "labels": {
                        "training.kubeflow.org/job-name": job_name,
                        "training.kubeflow.org/replica-type": replica_type.lower(),
                        "training.kubeflow.org/replica-index": str(index),
                    },
                },
                "spec": {"containers": [{"name": "pytorch", "image": "trainer"}]},
                "status": {
                    "phase": phase,
                    "containerStatuses": [
                        {
                            "name": "pytorch",
                            "ready": phase == "Running",
                            "restartCount": 0,
                            "image": "trainer",
                            "imageID": "",
                            "state": {"running": {"startedAt": _now()}}
                            if phase == "Running"
                            else {"waiting": {"reason": "ContainerCreating"}},
                        }
                    ],
                },
            }
            self.logs.setdefault((namespace, name), [])
            self._cond.notify_all()
        return name

    def log(self, namespace: str, pod: str, *lines: str) -> None:
        """Appends lines to a pod's container log."""
        with self._cond:
            for line in lines:
                self.logs.setdefault((namespace, pod), []).append((_now(), line))
                time.sleep(0.000002)  # distinct timestamps
            self._cond.notify_all()

    def restart_container(self, namespace: str, pod: str, exit_code: int) -> None:
        """The container failed and was restarted (restartPolicy OnFailure): a fresh log."""
        with self._cond:
            status = self.pods[(namespace, pod)]["status"]["containerStatuses"][0]
            status["lastState"] = {
                "terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": _now(),
                               "startedAt": _now()}
            }
            status["restartCount"] += 1
            self.previous_logs[(namespace, pod)] = self.logs.get((namespace, pod), [])
            self.logs[(namespace, pod)] = []
            # The old container's log stream ends with it.
            self._log_generation += 1
            self._cond.notify_all()

    def finish_pod(self, namespace: str, pod: str, exit_code: int = 0) -> None:
        """The pod's container ended with `exit_code`."""
        with self._cond:
            record = self.pods[(namespace, pod)]
            record["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            record["status"]["containerStatuses"][0]["state"] = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": _now(),
                    "finishedAt": _now(),
                }
            }
            self._cond.notify_all()

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the stored job, or None."""
        with self._cond:
            found = self.jobs.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    # -- internals -------------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _touch(self, job: dict[str, Any], event_type: str) -> None:
        version = self._next_version()
        job["metadata"]["resourceVersion"] = str(version)
        self.events.append((version, event_type, copy.deepcopy(job)))
        self._cond.notify_all()

    def _fault(self, method: str, path: str) -> int | None:
        with self._cond:
            for fault in self._faults:
                if fault[0] == method and fault[1].search(path) and fault[3] > 0:
                    fault[3] -= 1
                    return fault[2]
        return None


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _operator_webhook_problems(job: dict[str, Any]) -> list[str]:
    """The checks of the Training Operator v1 PyTorchJob validating webhook."""
    problems = []
    name = job.get("metadata", {}).get("name", "")
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        problems.append(
            f'metadata.name: Invalid value: "{name}": should match: a DNS-1035 label must '
            "consist of lower case alphanumeric characters or '-', start with an alphabetic "
            "character, and end with an alphanumeric character"
        )
    spec = job.get("spec") or {}
    elastic = spec.get("elasticPolicy") or {}
    if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
        problems.append("spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with "
                        "spec.nprocPerNode")
    replica_specs = spec.get("pytorchReplicaSpecs")
    if not replica_specs:
        problems.append("spec.pytorchReplicaSpecs: Required value: must be required")
        return problems
    for replica_type, replica in replica_specs.items():
        path = f"spec.pytorchReplicaSpecs[{replica_type}]"
        if replica_type not in ("Master", "Worker"):
            problems.append(f'{path}: Unsupported value: "{replica_type}"')
        containers = (((replica or {}).get("template") or {}).get("spec") or {}).get(
            "containers") or []
        if not containers:
            problems.append(f"{path}.template.spec.containers: Required value: must be specified")
        for index, container in enumerate(containers):
            if not container.get("image"):
                problems.append(f"{path}.template.spec.containers[{index}].image: Required value")
        if not any(container.get("name") == "pytorch" for container in containers):
            problems.append(f"{path}.template.spec.containers: Required value: must have at "
                            "least one container with name pytorch")
        if replica_type == "Master" and (replica or {}).get("replicas") != 1:
            problems.append(f"{path}.replicas: Forbidden: must be 1")
    return problems


class _Handler(BaseHTTPRequestHandler):
    server_double: FakeKubernetes
    # Streamed bodies (watch, follow) are chunked, as the real server sends them: the client
    # reads them chunk by chunk. Every response closes its connection, to keep the server simple.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    def _error(self, code: int, reason: str, message: str) -> None:
        self._send(code, _status(code, reason, message))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self, method: str) -> None:
        fake = self.server_double
        path = self.path
        parsed = urllib.parse.urlsplit(path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(parsed.query).items()}
        with fake._cond:
            fake.requests.append((method, self.path))
        status = fake._fault(method, parsed.path)
        if status is not None:
            self._error(status, "InternalError", f"injected failure for {method} {parsed.path}")
            return
        jobs = _JOBS.match(parsed.path)
        pods = _PODS.match(parsed.path)
        if jobs:
            namespace, name = jobs.groups()
            if method == "POST" and name is None:
                return self._create_job(namespace)
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "True", "1"):
                    return self._watch_jobs(namespace, query)
                return self._list_jobs(namespace, query)
            if method == "GET":
                return self._get_job(namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete_job(namespace, name)
        if pods and method == "GET":
            namespace, name, log = pods.groups()
            if name is None:
                return self._list_pods(namespace, query)
            if log:
                return self._pod_log(namespace, name, query)
            return self._get_pod(namespace, name)
        self._error(404, "NotFound", f"the server could not find the requested resource {path}")

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    # -- pytorchjobs -----------------------------------------------------------------------------

    def _create_job(self, namespace: str) -> None:
        fake = self.server_double
        body = self._body()
        metadata = body.get("metadata") or {}
        name = metadata.get("name", "")
        if body.get("apiVersion") != "kubeflow.org/v1" or body.get("kind") != "PyTorchJob":
            return self._error(400, "BadRequest", "the API version in the data does not match")
        if metadata.get("namespace") not in (None, namespace):
            return self._error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if not name or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
            return self._send(
                422,
                _status(
                    422,
                    "Invalid",
                    f'PyTorchJob.kubeflow.org "{name}" is invalid: metadata.name: Invalid value: '
                    f'"{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                    "alphanumeric characters, '-' or '.'",
                    {"name": name, "group": "kubeflow.org", "kind": "PyTorchJob"},
                ),
            )
        denied = _operator_webhook_problems(body)
        if denied:
            # What the Training Operator's validating webhook answers (controller-runtime: 403).
            return self._error(
                403,
                "Forbidden",
                'admission webhook "validator.pytorchjob.training-operator.kubeflow.org" denied '
                f"the request: {', '.join(denied)}",
            )
        with fake._cond:
            if (namespace, name) in fake.jobs:
                return self._send(
                    409,
                    _status(
                        409,
                        "AlreadyExists",
                        f'pytorchjobs.kubeflow.org "{name}" already exists',
                        {"name": name, "group": "kubeflow.org", "kind": "pytorchjobs"},
                    ),
                )
            job = copy.deepcopy(body)
            job["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                generation=1,
            )
            fake.jobs[(namespace, name)] = job
            fake.created.append(name)
            fake._touch(job, "ADDED")
            response = copy.deepcopy(job)
        self._send(201, response)
        if fake.on_create is not None:
            scenario = fake.on_create
            fake.run_in_background(lambda: scenario(fake, copy.deepcopy(response)))

    def _get_job(self, namespace: str, name: str) -> None:
        job = self.server_double.job(namespace, name)
        if job is None:
            return self._error(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
        self._send(200, job)

    def _delete_job(self, namespace: str, name: str) -> None:
        fake = self.server_double
        with fake._cond:
            job = fake.jobs.pop((namespace, name), None)
            if job is None:
                return self._error(404, "NotFound", f'pytorchjobs.kubeflow.org "{name}" not found')
            fake.deleted.append(name)
            fake._touch(job, "DELETED")
            for key in [key for key in fake.pods if key[1].startswith(f"{name}-")]:
                fake.pods.pop(key)
            fake._cond.notify_all()
        self._send(200, _status(200, "", "") | {"status": "Success"})

    def _selected(self, namespace: str, query: dict[str, str]) -> Callable[[dict], bool]:
        field = query.get("fieldSelector", "")
        wanted_name = field.split("=", 1)[1] if field.startswith("metadata.name=") else None

        def check(job: dict) -> bool:
            meta = job["metadata"]
            return meta["namespace"] == namespace and wanted_name in (None, meta["name"])

        return check

    def _list_jobs(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        check = self._selected(namespace, query)
        with fake._cond:
            items = [copy.deepcopy(job) for job in fake.jobs.values() if check(job)]
            version = str(fake._version)
        self._send(
            200,
            {
                "apiVersion": "kubeflow.org/v1",
                "kind": "PyTorchJobList",
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def _watch_jobs(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        check = self._selected(namespace, query)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 3600)
        self._start_stream("application/json")
        if fake.end_watches_at_once:
            self._end_stream()
            return
        with fake._cond:
            generation = fake._watch_generation
            if query.get("resourceVersion"):
                since = int(query["resourceVersion"])
                pending: list[tuple[str, dict]] = []
            else:  # no version: the current objects first, as ADDED
                since = fake._version
                pending = [
                    ("ADDED", copy.deepcopy(job)) for job in fake.jobs.values() if check(job)
                ]
        try:
            while True:
                for event_type, obj in pending:
                    line = json.dumps({"type": event_type, "object": obj}) + "\n"
                    self._chunk(line.encode())
                with fake._cond:
                    while True:
                        if fake._watch_generation != generation:
                            return  # dropped: no clean end of the stream
                        if time.monotonic() > deadline:
                            self._end_stream()
                            return
                        fresh = [event for event in fake.events if event[0] > since]
                        if fresh:
                            break
                        fake._cond.wait(timeout=0.05)
                    since = fresh[-1][0]
                    pending = [(kind, obj) for _, kind, obj in fresh if check(obj)]
        except (BrokenPipeError, ConnectionResetError):
            return

    # -- pods ------------------------------------------------------------------------------------

    def _list_pods(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        selector = query.get("labelSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with fake._cond:
            items = [
                copy.deepcopy(pod)
                for (pod_namespace, _), pod in fake.pods.items()
                if pod_namespace == namespace
                and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
        self._send(
            200,
            {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
             "items": items},
        )

    def _get_pod(self, namespace: str, name: str) -> None:
        fake = self.server_double
        with fake._cond:
            pod = copy.deepcopy(fake.pods.get((namespace, name)))
        if pod is None:
            return self._error(404, "NotFound", f'pods "{name}" not found')
        self._send(200, pod)

    def _pod_log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        fake = self.server_double
        key = (namespace, name)
        with fake._cond:
            pod = fake.pods.get(key)
            if pod is None:
                return self._error(404, "NotFound", f'pods "{name}" not found')
            if pod["status"]["phase"] == "Pending":
                return self._error(
                    400,
                    "BadRequest",
                    f'container "pytorch" in pod "{name}" is waiting to start: ContainerCreating',
                )
            previous = query.get("previous") in ("true", "True")
            source = fake.previous_logs if previous else fake.logs
            lines = list(source.get(key, []))
        stamps = query.get("timestamps") in ("true", "True")

        def render(entries: list[tuple[str, str]]) -> bytes:
            return "".join(
                f"{stamp} {line}\n" if stamps else f"{line}\n" for stamp, line in entries
            ).encode()

        if query.get("follow") not in ("true", "True"):
            tail = int(query["tailLines"]) if query.get("tailLines") else None
            if tail is not None:
                lines = lines[-tail:] if tail else []
            return self._send(200, render(lines), "text/plain")
        self._start_stream("text/plain")
        with fake._cond:
            generation = fake._log_generation
        sent = 0
        try:
            while True:
                with fake._cond:
                    while True:
                        current = fake.logs.get(key, [])
                        pod = fake.pods.get(key)
                        done = pod is None or pod["status"]["phase"] in ("Succeeded", "Failed")
                        if len(current) > sent or done or fake._log_generation != generation:
                            break
                        fake._cond.wait(timeout=0.05)
                    chunk = current[sent:]
                    sent = len(current)
                if chunk:
                    self._chunk(render(chunk))
                if fake._log_generation != generation:
                    return  # dropped
                if done:
                    self._end_stream()
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
