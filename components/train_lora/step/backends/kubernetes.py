"""The Kubernetes backends: one PyTorchJob or TrainJob, created, watched and cleaned up.

`KubernetesJobBackend` takes a `kubernetes.client.ApiClient` (in the cluster: the step's service
account; in tests: a client of a local API server double), the job manifest (`job.build_pytorchjob`
or `trainjob.build_trainjob`) and its `JobKind` (`PYTORCHJOB`: Training Operator v1, `TRAINJOB`:
Kubeflow Trainer v2). It

- creates the job; when the name is taken (409) by the same spec — a retried pipeline step — it
  re-attaches to it (a job that already failed is deleted and created again, so the retry trains);
- waits on the job's conditions through a watch that reconnects (from the last seen
  resourceVersion, after a fresh read) when the connection drops, the server errs, or the watch
  ends at once without events (proxies do that): with backoff, never in a tight loop;
- says a job suspended by Kueue while it waits for quota is waiting, with the reason;
- streams node 0's log (the master pod, or worker 0 of an elastic job, or the TrainJob's node 0)
  into this process's log while the job runs;
- on failure raises `RuntimeError` with the operator's reason and the last lines of the failing
  pod's log; on timeout deletes the job and raises `TimeoutError`.

API errors that a retry can fix (5xx, 429, dropped connections) are retried through
`common.retry` with exponential backoff; the others fail at once with the server's message.

The step's service account needs, in the job's namespace: `pytorchjobs.kubeflow.org` (or
`trainjobs.trainer.kubeflow.org`): create, get, list, watch, delete; `pods`: get, list;
`pods/log`: get.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ....common import retry
from ...failures import FailureRecord
from .. import job as job_lib
from .base import Backend

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class JobKind:
    """What differs between the PyTorchJob and the TrainJob to a backend that follows one."""

    kind: str
    """`PyTorchJob` or `TrainJob`."""
    group: str
    """API group."""
    version: str
    """API version."""
    plural: str
    """Resource name in URLs."""
    container: str
    """The training container of every pod."""
    succeeded: str
    """The condition type of success (`Succeeded`, `Complete`)."""
    job_label: str
    """The label naming the job on its pods."""
    main_pod_labels: Callable[[dict[str, Any]], dict[str, str]]
    """Labels (besides `job_label`) of the pod whose log is streamed, from the manifest."""
    installed_hint: str
    """What to check when the kind is not served."""

    @property
    def resource(self) -> str:
        """`pytorchjobs.kubeflow.org`, as RBAC names it."""
        return f"{self.plural}.{self.group}"


def _pytorchjob_main_pod(manifest: dict[str, Any]) -> dict[str, str]:
    specs = manifest.get("spec", {}).get("pytorchReplicaSpecs", {})
    # The master, or worker 0 of an elastic (Worker-only) job.
    replica = "master" if "Master" in specs else "worker"
    return {job_lib.REPLICA_TYPE_LABEL: replica, job_lib.REPLICA_INDEX_LABEL: "0"}


PYTORCHJOB = JobKind(
    kind=job_lib.KIND,
    group=job_lib.API_GROUP,
    version=job_lib.API_VERSION,
    plural=job_lib.PLURAL,
    container=job_lib.CONTAINER_NAME,
    succeeded="Succeeded",
    job_label=job_lib.JOB_NAME_LABEL,
    main_pod_labels=_pytorchjob_main_pod,
    installed_hint="is the Kubeflow Training Operator installed, and the namespace right?",
)


def _trainjob_main_pod(manifest: dict[str, Any]) -> dict[str, str]:
    from .. import trainjob

    return dict(trainjob.NODE_ZERO_LABELS)


def _trainjob_kind() -> JobKind:
    from .. import trainjob

    return JobKind(
        kind=trainjob.KIND,
        group=trainjob.API_GROUP,
        version=trainjob.API_VERSION,
        plural=trainjob.PLURAL,
        container=trainjob.CONTAINER_NAME,
        succeeded="Complete",
        job_label=trainjob.JOBSET_NAME_LABEL,
        main_pod_labels=_trainjob_main_pod,
        installed_hint="is Kubeflow Trainer v2 installed, and the namespace right?",
    )


TRAINJOB = _trainjob_kind()
# Conditions under which a job waits rather than runs: Kueue suspends a job until its quota frees.
WAITING = ("Suspended",)


class KubernetesJobBackend(Backend):
    """A PyTorchJob or TrainJob on the cluster `api_client` talks to.

    Args:
        api_client: a configured `kubernetes.client.ApiClient`.
        manifest: the job as a dict (`job.to_dict(...)` of `build_pytorchjob` or
            `build_trainjob`).
        kind: `PYTORCHJOB` or `TRAINJOB`.
        log_tail_lines: log lines of the failing pod quoted in a failure.
        poll_seconds: first wait between retries; doubles up to `max_backoff_seconds`.
        max_backoff_seconds: longest wait between retries.
        api_attempts: tries of one API call before giving up on a retryable error; default the
            retry policy's (`KFTUNE_RETRIES` when set, else 6).
        watch_seconds: longest a single watch request stays open before it is renewed.
        log_line: where the master's log lines go (default: this module's logger).
    """

    def __init__(
        self,
        api_client: Any,
        manifest: dict[str, Any],
        kind: JobKind = PYTORCHJOB,
        *,
        log_tail_lines: int = 50,
        poll_seconds: float = 1.0,
        max_backoff_seconds: float = retry.DEFAULTS.max_delay,
        api_attempts: int | None = None,
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
        self._api_attempts = api_attempts or retry.policy().api_attempts
        self._watch_seconds = watch_seconds
        self.kind = kind
        self._main_selector = ",".join(
            f"{key}={value}"
            for key, value in {kind.job_label: self.name, **kind.main_pod_labels(manifest)}.items()
        )
        prefix = "[node-0]"
        self._log_line = log_line or (lambda line: logger.info("%s %s", prefix, line))
        self._last_state = ""
        self._job_over = threading.Event()

    @property
    def title(self) -> str:
        """`PyTorchJob <namespace>/<name>`, as the messages name the job."""
        return f"{self.kind.kind} {self.namespace}/{self.name}"

    # -- Backend ---------------------------------------------------------------------------------

    def submit(self) -> str:
        """Creates the job, or re-attaches to the same job created by an earlier attempt.

        Raises:
            RuntimeError: when the server rejects the job, or the name belongs to another job.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            created = self._call(self._create, "create")
        except ApiException as error:
            if error.status != 409:
                raise RuntimeError(self._rejected(error)) from error
            self._reattach()
            return self.name
        self._check_nothing_dropped(created)
        logger.info(
            "created %s; follow it with: kubectl -n %s logs -f -l %s",
            self.title,
            self.namespace,
            self._main_selector,
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
        self._job_over = threading.Event()
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
            self._job_over.set()
            # Generous: the stream ends by itself once the pod has finished; the bound only guards
            # against an API server that hangs.
            log_thread.join(timeout=60.0 if succeeded else 0.2)
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
                container=self.kind.container,
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
                    self.kind.group,
                    self.kind.version,
                    self.namespace,
                    self.kind.plural,
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
            self.kind.group, self.kind.version, self.namespace, self.kind.plural, self.manifest
        )

    def _check_nothing_dropped(self, created: Any) -> None:
        """Fails (deleting the job) when the server pruned a field of the spec it was sent.

        A structural schema drops unknown fields silently: an older operator whose CRD lacks a
        field kftune writes (a Trainer before 2.2 has no `spec.runtimePatches`) would run the
        job without it — no volumes, no placement. Better to stop at once and say so.
        """
        sent = self.manifest.get("spec") or {}
        kept = (created or {}).get("spec") or {} if isinstance(created, dict) else sent
        dropped = sorted(key for key in sent if key not in kept)
        if not dropped:
            return
        self.delete()
        fields = ", ".join(f"spec.{key}" for key in dropped)
        hint = ""
        if "runtimePatches" in dropped:
            hint = (" (`runtimePatches` needs Kubeflow Trainer >= 2.2; 2.0 had `podSpecOverrides`"
                    " and 2.1 `podTemplateOverrides`, which kftune does not write: upgrade the "
                    "Trainer, or use backend 'kubernetes')")
        raise RuntimeError(
            f"the API server dropped {fields} of {self.title}, so its {self.kind.kind} CRD is "
            f"older than the one kftune writes for{hint}; deleted the job"
        )

    def _get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                lambda: self._custom.get_namespaced_custom_object(
                    self.kind.group,
                    self.kind.version,
                    self.namespace,
                    self.kind.plural,
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
        state = _terminal_condition(existing, self.kind)
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
        # Between watches: the wait grows while watches end (or fail) without news, so a proxy
        # that closes every watch at once costs a few requests a minute, not thousands a second.
        backoff = retry.Backoff(self._poll_seconds, self._max_backoff_seconds)
        while True:
            job = self._get()
            if job is None:
                raise RuntimeError(f"{self.title} was deleted while this step waited on it")
            outcome = self._observe(job)
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                return None
            try:
                outcome, news = self._watch_once(job, deadline)
            except RuntimeError:
                raise
            except Exception as error:  # any transport error: reconnect
                logger.warning("watch on %s dropped (%s); reconnecting", self.title, _short(error))
                outcome, news = None, False
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                return None
            if news:
                backoff.reset()
            else:
                backoff.sleep(limit=deadline - time.monotonic())

    def _watch_once(
        self, job: dict[str, Any], deadline: float
    ) -> tuple[tuple[str, dict[str, Any]] | None, bool]:
        """One watch from the job's resourceVersion: (outcome or None, whether events came)."""
        from kubernetes import watch

        remaining = deadline - time.monotonic()
        stream = watch.Watch()
        news = False
        try:
            for event in stream.stream(
                self._custom.list_namespaced_custom_object,
                self.kind.group,
                self.kind.version,
                self.namespace,
                self.kind.plural,
                field_selector=f"metadata.name={self.name}",
                resource_version=job.get("metadata", {}).get("resourceVersion"),
                timeout_seconds=max(1, min(math.ceil(remaining), self._watch_seconds)),
                _request_timeout=self._watch_seconds + 30,
            ):
                if event["type"] == "DELETED":
                    raise RuntimeError(f"{self.title} was deleted while this step waited on it")
                if event["type"] == "ERROR":
                    # 410 Gone (resourceVersion too old) and friends: read again, re-watch.
                    return None, news
                news = True
                outcome = self._observe(event["object"])
                if outcome is not None or time.monotonic() > deadline:
                    return outcome, news
        finally:
            stream.stop()
        return None, news

    def _observe(self, job: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        state = _current_state(job)
        if state and state != self._last_state:
            condition = _latest_condition(job, state)
            detail = (
                f" ({condition.get('reason')}: {condition.get('message')})"
                if condition.get("reason")
                else ""
            )
            if state in WAITING:
                # Kueue suspends a job until its queue has quota: a wait, not a failure.
                logger.info("%s is waiting (%s)%s", self.title, state, detail)
            else:
                logger.info("%s is %s%s", self.title, state, detail)
            self._last_state = state
        terminal = _terminal_condition(job, self.kind)
        if terminal is None:
            return None
        return terminal[0], job

    # -- logs ------------------------------------------------------------------------------------

    @property
    def _master_pod(self) -> str:
        """Node 0's pod: found by its labels (a TrainJob's pods have generated names)."""
        pods = self._core.list_namespaced_pod(self.namespace, label_selector=self._main_selector)
        names = sorted(pod.metadata.name for pod in pods.items)
        if not names:
            raise LookupError(f"no pod of {self.title} matches {self._main_selector} yet")
        return names[0]

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
                pod_name = self._master_pod
                response = self._core.read_namespaced_pod_log(
                    pod_name,
                    self.namespace,
                    container=self.kind.container,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                )
            except Exception:  # not created/started yet, or a transport error
                if self._job_over.is_set():  # the job ended and its pod is gone (cleaned up)
                    return
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
            except Exception:  # the stream dropped: reconnect
                pass
            finally:
                response.release_conn()
            if self._master_finished(pod_name):
                return
            stop.wait(pause)
            pause = min(pause * 2, self._poll_seconds)

    def _master_finished(self, pod_name: str) -> bool:
        try:
            pod = self._core.read_namespaced_pod(pod_name, self.namespace)
        except Exception:  # gone or unreachable: nothing more to stream
            return True
        return pod.status is not None and pod.status.phase in ("Succeeded", "Failed")

    def _safe_master_pod(self) -> str:
        try:
            return self._master_pod
        except Exception as error:  # a message without the pod beats none
            return f"(node 0: {_short(error)})"

    def _safe_logs(self, tail_lines: int) -> str:
        try:
            return self.logs(tail_lines)
        except Exception as error:  # a message without logs beats none
            return f"(no log: {_short(error)})"

    def _failure_message(self, job: dict[str, Any]) -> str:
        condition = _latest_condition(job, "Failed")
        reason = condition.get("reason") or "Failed"
        message = condition.get("message") or ""
        pod_name, previous, record = self._failing_pod()
        if record is not None:  # the pod's own record (its termination message): no log needed
            return (f"{self.title} failed: {_node(record)}{record.cause}\n"
                    f"pod {pod_name}: {reason}: {message}")
        try:
            tail = self._call(
                lambda: self._core.read_namespaced_pod_log(
                    pod_name,
                    self.namespace,
                    container=self.kind.container,
                    tail_lines=self._log_tail_lines,
                    previous=previous,
                ),
                "read the failing pod's log",
            )
        except Exception as error:
            tail = f"(no log: {_short(error)})"
        return (
            f"{self.title} failed: {reason}: {message}\n"
            f"last {self._log_tail_lines} log lines of pod {pod_name}:\n{tail.rstrip()}"
        )

    def _failing_pod(self) -> tuple[str, bool, FailureRecord | None]:
        """The pod whose container failed first, and whether that was a previous container.

        Also the failure record in its termination message (None: no record, e.g. the log's end
        that `FallbackToLogsOnError` puts there).
        """
        try:
            pods = self._call(
                lambda: self._core.list_namespaced_pod(
                    self.namespace, label_selector=f"{self.kind.job_label}={self.name}"
                ),
                "list pods",
            ).items
        except Exception:
            return self._safe_master_pod(), False, None
        failures = []
        for pod in pods:
            statuses = (pod.status.container_statuses or []) if pod.status else []
            for status in statuses:
                if status.name != self.kind.container:
                    continue
                # A failure in `last_state` belongs to a container that has been restarted since.
                for previous, state in ((False, status.state), (True, status.last_state)):
                    terminated = state.terminated if state is not None else None
                    if terminated is not None and terminated.exit_code:
                        finished = str(terminated.finished_at or "")
                        record = FailureRecord.from_message(terminated.message)
                        failures.append((finished, pod.metadata.name, previous, record))
        if not failures:
            return self._safe_master_pod(), False, None
        _, name, previous, record = min(failures, key=lambda failure: failure[:3])
        return name, previous, record

    # -- API calls -------------------------------------------------------------------------------

    def _call(self, function: Callable[[], T], what: str) -> T:
        """Calls the API through `common.retry`: server errors and dropped connections retried.

        Raises:
            ApiException: a client error (4xx other than 429), for the caller to interpret.
            RuntimeError: when retryable errors persist through every attempt.
        """
        try:
            return retry.call_with_retries(
                function,
                what=f"{what} {self.title}",
                retry_if=_retryable,
                total_attempts=self._api_attempts,
                backoff=retry.Backoff(self._poll_seconds, self._max_backoff_seconds),
            )
        except Exception as error:
            if not _retryable(error):
                raise
            problem = (
                f"HTTP {error.status} {error.reason}" if hasattr(error, "status") else _short(error)
            )
            raise RuntimeError(
                f"could not {what} {self.title}: the Kubernetes API kept failing ({problem}) "
                f"after {self._api_attempts} attempts"
            ) from error

    def _rejected(self, error: Any, what: str = "create") -> str:
        import json

        message = error.reason
        try:
            message = json.loads(error.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        hint = ""
        if error.status == 404 and what == "create":
            hint = f" ({self.kind.installed_hint})"
        elif error.status == 403 and "admission webhook" not in str(message):
            hint = f" (give the step's service account rights on {self.kind.resource})"
        return f"could not {what} {self.title}: HTTP {error.status}: {message}{hint}"


def _retryable(error: BaseException) -> bool:
    """5xx and 429 answers, and transport errors (refused, reset, timed out), are worth a retry."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        return error.status is None or error.status >= 500 or error.status == 429
    return isinstance(error, (OSError, HTTPError)) or retry.is_transient(error)


def _conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list((job.get("status") or {}).get("conditions") or [])


def _terminal_condition(job: dict[str, Any], kind: JobKind) -> tuple[str, dict[str, Any]] | None:
    """("Succeeded" | "Failed", the condition) once the job has ended, else None."""
    for condition in reversed(_conditions(job)):
        if condition.get("status") != "True":
            continue
        if condition.get("type") == kind.succeeded:
            return "Succeeded", condition
        if condition.get("type") == "Failed":
            return "Failed", condition
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


def _node(record: FailureRecord) -> str:
    return f"node {record.node_rank}: " if record.node_rank is not None else ""


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class PyTorchJobBackend(KubernetesJobBackend):
    """A Training Operator v1 PyTorchJob (`KubernetesJobBackend` of kind `PYTORCHJOB`)."""

    def __init__(self, api_client: Any, manifest: dict[str, Any], **options: Any) -> None:
        super().__init__(api_client, manifest, PYTORCHJOB, **options)


class TrainJobBackend(KubernetesJobBackend):
    """A Kubeflow Trainer v2 TrainJob (`KubernetesJobBackend` of kind `TRAINJOB`)."""

    def __init__(self, api_client: Any, manifest: dict[str, Any], **options: Any) -> None:
        super().__init__(api_client, manifest, TRAINJOB, **options)
