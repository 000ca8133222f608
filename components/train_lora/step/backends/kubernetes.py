"""The Kubernetes backend: one Training Operator v1 PyTorchJob, created, watched and cleaned up.

`PyTorchJobBackend` takes a `kubernetes.client.ApiClient` (in the cluster: the step's service
account; in tests: a client of a local API server double) and the job manifest from
`job.build_pytorchjob`. It

- creates the job; when the name is taken (409) by the same spec — a retried pipeline step — it
  re-attaches to it (a job that already failed is deleted and created again, so the retry trains);
- waits on the job's conditions through a watch that reconnects (from the last seen
  resourceVersion, after a fresh read) when the connection drops or the server errs;
- streams the master pod's log into this process's log while the job runs;
- on `Failed` raises `RuntimeError` with the operator's reason and the last lines of the failing
  pod's log; on timeout deletes the job and raises `TimeoutError`.

API errors that a retry can fix (5xx, 429, dropped connections) are retried with exponential
backoff; the others fail at once with the server's message.

The step's service account needs, in the job's namespace: `pytorchjobs.kubeflow.org`: create,
get, list, watch, delete; `pods`: get, list; `pods/log`: get.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import job as job_lib
from .base import Backend

logger = logging.getLogger(__name__)

T = TypeVar("T")
TERMINAL = ("Succeeded", "Failed")


class PyTorchJobBackend(Backend):
    """A PyTorchJob on the cluster `api_client` talks to.

    Args:
        api_client: a configured `kubernetes.client.ApiClient`.
        manifest: the PyTorchJob as a dict (`job.to_dict(job.build_pytorchjob(...))`).
        log_tail_lines: log lines of the failing pod quoted in a failure.
        poll_seconds: first wait between retries; doubles up to `max_backoff_seconds`.
        max_backoff_seconds: longest wait between retries.
        api_attempts: tries of one API call before giving up on a retryable error.
        watch_seconds: longest a single watch request stays open before it is renewed.
        log_line: where the master's log lines go (default: this module's logger).
    """

    def __init__(
        self,
        api_client: Any,
        manifest: dict[str, Any],
        *,
        log_tail_lines: int = 50,
        poll_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        api_attempts: int = 6,
        watch_seconds: int = 60,
        log_line: Callable[[str], None] | None = None,
    ) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self.manifest = manifest
        self.name: str = manifest["metadata"]["name"]
        self.namespace: str = manifest["metadata"]["namespace"]
        self._log_tail_lines = log_tail_lines
        self._poll_seconds = poll_seconds
        self._max_backoff_seconds = max_backoff_seconds
        self._api_attempts = api_attempts
        self._watch_seconds = watch_seconds
        specs = manifest.get("spec", {}).get("pytorchReplicaSpecs", {})
        # The pod whose log is streamed: the master, or worker 0 of an elastic (Worker-only) job.
        self._main_replica = "master" if "Master" in specs else "worker"
        prefix = f"[{self._main_replica}-0]"
        self._log_line = log_line or (lambda line: logger.info("%s %s", prefix, line))
        self._last_state = ""

    @property
    def title(self) -> str:
        """`PyTorchJob <namespace>/<name>`, as the messages name the job."""
        return f"PyTorchJob {self.namespace}/{self.name}"

    # -- Backend ---------------------------------------------------------------------------------

    def submit(self) -> str:
        """Creates the job, or re-attaches to the same job created by an earlier attempt.

        Raises:
            RuntimeError: when the server rejects the job, or the name belongs to another job.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(self._create, "create")
        except ApiException as error:
            if error.status != 409:
                raise RuntimeError(self._rejected(error)) from error
            self._reattach()
            return self.name
        logger.info(
            "created %s; follow it with: kubectl -n %s logs -f %s",
            self.title,
            self.namespace,
            self._master_pod,
        )
        return self.name

    def wait(self, timeout_seconds: float) -> None:
        """Waits for `Succeeded`, streaming the master's log meanwhile.

        Raises:
            RuntimeError: when the job fails or disappears.
            TimeoutError: when it is not done after `timeout_seconds`; the job is deleted first.
        """
        deadline = time.monotonic() + timeout_seconds
        stop_logs = threading.Event()
        log_thread = threading.Thread(
            target=self._follow_master_log, args=(stop_logs,), name="master-log", daemon=True
        )
        log_thread.start()
        outcome = None
        try:
            outcome = self._wait_for_terminal(deadline)
        finally:
            # After a success the master's log stream ends by itself: let it deliver its last
            # lines. Otherwise the master may still be running; the failure message quotes the
            # failing pod's log instead.
            succeeded = outcome is not None and outcome[0] == "Succeeded"
            log_thread.join(timeout=5.0 if succeeded else 0.2)
            stop_logs.set()
        if outcome is None:
            tail = self._safe_logs(self._log_tail_lines)
            self.delete()
            minutes = timeout_seconds / 60
            raise TimeoutError(
                f"{self.title} did not finish within {minutes:g} minutes (`timeout_minutes`); "
                f"deleted it. Last lines of the master's log:\n{tail}"
            )
        condition_type, job = outcome
        if condition_type == "Failed":
            raise RuntimeError(self._failure_message(job))
        logger.info("%s succeeded", self.title)

    def logs(self, tail_lines: int = 50) -> str:
        """The last `tail_lines` lines of the master pod's log."""
        return self._call(
            lambda: self._core.read_namespaced_pod_log(
                self._master_pod,
                self.namespace,
                container=job_lib.CONTAINER_NAME,
                tail_lines=tail_lines,
            ),
            "read the master's log",
        )

    def delete(self) -> None:
        """Deletes the job (the operator removes its pods); a missing job is fine."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                lambda: self._custom.delete_namespaced_custom_object(
                    job_lib.API_GROUP,
                    job_lib.API_VERSION,
                    self.namespace,
                    job_lib.PLURAL,
                    self.name,
                    body=client.V1DeleteOptions(propagation_policy="Background"),
                ),
                "delete",
            )
        except ApiException as error:
            if error.status != 404:
                raise RuntimeError(self._rejected(error, "delete")) from error
            return
        logger.info("deleted %s", self.title)

    # -- creating --------------------------------------------------------------------------------

    def _create(self) -> Any:
        return self._custom.create_namespaced_custom_object(
            job_lib.API_GROUP, job_lib.API_VERSION, self.namespace, job_lib.PLURAL, self.manifest
        )

    def _get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                lambda: self._custom.get_namespaced_custom_object(
                    job_lib.API_GROUP,
                    job_lib.API_VERSION,
                    self.namespace,
                    job_lib.PLURAL,
                    self.name,
                ),
                "read",
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise RuntimeError(self._rejected(error, "read")) from error

    def _reattach(self) -> None:
        existing = self._get()
        if existing is None:  # deleted between our create and read: create it again
            self.submit()
            return
        wanted = self.manifest["metadata"].get("annotations", {}).get(job_lib.SPEC_HASH_ANNOTATION)
        found = (existing.get("metadata", {}).get("annotations") or {}).get(
            job_lib.SPEC_HASH_ANNOTATION
        )
        if wanted != found:
            raise RuntimeError(
                f"{self.title} already exists and runs something else (spec hash {found!r}, this "
                f"step's is {wanted!r}); delete it or set `kubernetes_options.job_name`"
            )
        state = _terminal_condition(existing)
        if state is not None and state[0] == "Failed":
            logger.warning(
                "%s exists from an earlier attempt and failed (%s); deleting it to train again",
                self.title,
                state[1].get("reason", ""),
            )
            self.delete()
            self._wait_until_gone()
            self._call(self._create, "create")
            logger.info("created %s", self.title)
            return
        logger.info(
            "%s exists from an earlier attempt of this step (%s); re-attaching to it",
            self.title,
            _current_state(existing) or "Created",
        )

    def _wait_until_gone(self, timeout_seconds: float = 300) -> None:
        deadline = time.monotonic() + timeout_seconds
        while self._get() is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.title} was not removed within {timeout_seconds} s")
            time.sleep(self._poll_seconds)

    # -- waiting ---------------------------------------------------------------------------------

    def _wait_for_terminal(self, deadline: float) -> tuple[str, dict[str, Any]] | None:
        """Returns (Succeeded|Failed, job), or None when the deadline passed."""
        from kubernetes import watch

        backoff = self._poll_seconds
        while True:
            job = self._get()
            if job is None:
                raise RuntimeError(f"{self.title} was deleted while this step waited on it")
            outcome = self._observe(job)
            if outcome is not None:
                return outcome
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            resource_version = job.get("metadata", {}).get("resourceVersion")
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self._custom.list_namespaced_custom_object,
                    job_lib.API_GROUP,
                    job_lib.API_VERSION,
                    self.namespace,
                    job_lib.PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    timeout_seconds=max(1, min(math.ceil(remaining), self._watch_seconds)),
                    _request_timeout=self._watch_seconds + 30,
                ):
                    if event["type"] == "DELETED":
                        raise RuntimeError(
                            f"{self.title} was deleted while this step waited on it"
                        )
                    if event["type"] == "ERROR":
                        # 410 Gone (resourceVersion too old) and friends: read again, re-watch.
                        break
                    outcome = self._observe(event["object"])
                    if outcome is not None:
                        return outcome
                    if time.monotonic() > deadline:
                        return None
                    backoff = self._poll_seconds
            except RuntimeError:
                raise
            except Exception as error:  # noqa: BLE001 — any transport error: reconnect
                logger.warning(
                    "watch on %s dropped (%s); reconnecting in %.1f s",
                    self.title,
                    _short(error),
                    backoff,
                )
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, self._max_backoff_seconds)
            finally:
                stream.stop()

    def _observe(self, job: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        state = _current_state(job)
        if state and state != self._last_state:
            condition = _latest_condition(job, state)
            logger.info(
                "%s is %s%s",
                self.title,
                state,
                f" ({condition.get('reason')}: {condition.get('message')})"
                if condition.get("reason")
                else "",
            )
            self._last_state = state
        terminal = _terminal_condition(job)
        if terminal is None:
            return None
        return terminal[0], job

    # -- logs ------------------------------------------------------------------------------------

    @property
    def _master_pod(self) -> str:
        return f"{self.name}-{self._main_replica}-0"

    def _follow_master_log(self, stop: threading.Event) -> None:
        """Copies the master's log into ours until the container ends or `stop` is set.

        Reconnects skip the lines already shown (by their timestamps), so a dropped stream or a
        restarted container neither repeats nor loses lines.
        """
        from kubernetes.watch.watch import iter_resp_lines

        last_seen: tuple[str, int] | None = None
        # Quick first looks (the master starts soon after the job), then every `poll_seconds`.
        pause = min(0.1, self._poll_seconds)
        while not stop.is_set():
            try:
                response = self._core.read_namespaced_pod_log(
                    self._master_pod,
                    self.namespace,
                    container=job_lib.CONTAINER_NAME,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                )
            except Exception:  # noqa: BLE001 — not created/started yet, or a transport error
                stop.wait(pause)
                pause = min(pause * 2, self._poll_seconds)
                continue
            try:
                for raw in iter_resp_lines(response):
                    stamp, _, line = raw.partition(" ")
                    key = _timestamp_key(stamp)
                    if last_seen is not None and key is not None and key <= last_seen:
                        continue
                    if key is not None:
                        last_seen = key
                    self._log_line(line)
                    if stop.is_set():
                        return
            except Exception:  # noqa: BLE001 — the stream dropped: reconnect
                pass
            finally:
                response.release_conn()
            if self._master_finished():
                return
            stop.wait(pause)
            pause = min(pause * 2, self._poll_seconds)

    def _master_finished(self) -> bool:
        try:
            pod = self._core.read_namespaced_pod(self._master_pod, self.namespace)
        except Exception:  # noqa: BLE001 — gone or unreachable: nothing more to stream
            return True
        return pod.status is not None and pod.status.phase in ("Succeeded", "Failed")

    def _safe_logs(self, tail_lines: int) -> str:
        try:
            return self.logs(tail_lines)
        except Exception as error:  # noqa: BLE001 — a message without logs beats none
            return f"(no log: {_short(error)})"

    def _failure_message(self, job: dict[str, Any]) -> str:
        condition = _latest_condition(job, "Failed")
        reason = condition.get("reason") or "Failed"
        message = condition.get("message") or ""
        pod_name, previous = self._failing_pod()
        try:
            tail = self._call(
                lambda: self._core.read_namespaced_pod_log(
                    pod_name,
                    self.namespace,
                    container=job_lib.CONTAINER_NAME,
                    tail_lines=self._log_tail_lines,
                    previous=previous,
                ),
                "read the failing pod's log",
            )
        except Exception as error:  # noqa: BLE001
            tail = f"(no log: {_short(error)})"
        return (
            f"{self.title} failed: {reason}: {message}\n"
            f"last {self._log_tail_lines} log lines of pod {pod_name}:\n{tail.rstrip()}"
        )

    def _failing_pod(self) -> tuple[str, bool]:
        """The pod whose container failed first (and whether that was a previous container)."""
        try:
            pods = self._call(
                lambda: self._core.list_namespaced_pod(
                    self.namespace, label_selector=f"{job_lib.JOB_NAME_LABEL}={self.name}"
                ),
                "list pods",
            ).items
        except Exception:  # noqa: BLE001
            return self._master_pod, False
        failures = []
        for pod in pods:
            statuses = (pod.status.container_statuses or []) if pod.status else []
            for status in statuses:
                if status.name != job_lib.CONTAINER_NAME:
                    continue
                # A failure in `last_state` belongs to a container that has been restarted since.
                for previous, state in ((False, status.state), (True, status.last_state)):
                    terminated = state.terminated if state is not None else None
                    if terminated is not None and terminated.exit_code:
                        finished = str(terminated.finished_at or "")
                        failures.append((finished, pod.metadata.name, previous))
        if not failures:
            return self._master_pod, False
        _, name, previous = min(failures)
        return name, previous

    # -- API calls -------------------------------------------------------------------------------

    def _call(self, function: Callable[[], T], what: str) -> T:
        """Calls the API, retrying server errors and dropped connections with backoff.

        Raises:
            ApiException: a client error (4xx other than 429), for the caller to interpret.
            RuntimeError: when retryable errors persist through every attempt.
        """
        from kubernetes.client.exceptions import ApiException

        backoff = self._poll_seconds
        for attempt in range(1, self._api_attempts + 1):
            try:
                return function()
            except ApiException as error:
                if error.status is not None and error.status < 500 and error.status != 429:
                    raise
                problem = f"HTTP {error.status} {error.reason}"
            except Exception as error:  # noqa: BLE001 — connection refused/reset, timeouts
                problem = _short(error)
            if attempt == self._api_attempts:
                raise RuntimeError(
                    f"could not {what} {self.title}: the Kubernetes API kept failing "
                    f"({problem}) after {attempt} attempts"
                )
            logger.warning(
                "could not %s %s (%s); retrying in %.1f s", what, self.title, problem, backoff
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_seconds)
        raise AssertionError("unreachable")

    def _rejected(self, error: Any, what: str = "create") -> str:
        import json

        message = error.reason
        try:
            message = json.loads(error.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        hint = ""
        if error.status == 404 and what == "create":
            hint = " (is the Kubeflow Training Operator installed, and the namespace right?)"
        elif error.status == 403 and "admission webhook" not in str(message):
            hint = " (give the step's service account rights on pytorchjobs.kubeflow.org)"
        return f"could not {what} {self.title}: HTTP {error.status}: {message}{hint}"


def _conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list((job.get("status") or {}).get("conditions") or [])


def _terminal_condition(job: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    for condition in reversed(_conditions(job)):
        if condition.get("type") in TERMINAL and condition.get("status") == "True":
            return condition["type"], condition
    return None


def _current_state(job: dict[str, Any]) -> str:
    true = [c for c in _conditions(job) if c.get("status") == "True"]
    return true[-1].get("type", "") if true else ""


def _latest_condition(job: dict[str, Any], condition_type: str) -> dict[str, Any]:
    for condition in reversed(_conditions(job)):
        if condition.get("type") == condition_type:
            return condition
    return {}


def _timestamp_key(stamp: str) -> tuple[str, int] | None:
    """Orders RFC 3339 timestamps with nanoseconds (whose trailing zeros Kubernetes drops)."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    seconds, _, fraction = stamp[:-1].partition(".")
    digits = (fraction + "000000000")[:9]
    return seconds, int(digits) if digits.isdigit() else 0


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
