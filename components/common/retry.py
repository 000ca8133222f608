"""kftune's one retry policy (`RetryPolicy`), and bounded retries with exponential backoff.

Object stores, the Hub and the Kubernetes API fail now and then for reasons that go away on their
own (a reset connection, a 503, a slow response). Those are retried a bounded number of times;
anything else (a missing object, wrong credentials) fails at once. Failed training is started
again a bounded number of times too (local restarts, torchrun's elastic restarts), and KFP retries
the download steps of a cluster run. `RetryPolicy` holds every one of those numbers; `policy()`
reads the environment's knobs into it, so a pipeline run can tune them without new parameters:

- `KFTUNE_RETRIES`: attempts in total of one call, default 4 (6 for the Kubernetes API calls
  that follow a running job, unless it is set).
- `KFTUNE_RETRY_DELAY_SECONDS`: the first backoff delay, doubled per attempt (capped at 30 s),
  default 1.0; 0 retries at once the first time, then waits 0.1 s, 0.2 s, ...
- `KFTUNE_TIMEOUT_SECONDS`: connect/read timeout of one request, default 60.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import error_chain, is_disk_full

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES_ENV = "KFTUNE_RETRIES"
RETRY_DELAY_ENV = "KFTUNE_RETRY_DELAY_SECONDS"
TIMEOUT_ENV = "KFTUNE_TIMEOUT_SECONDS"
MAX_DELAY_SECONDS = 30.0
# The delay after a zero one: where a ladder that starts at 0 begins to double.
ZERO_FIRST_STEP_SECONDS = 0.1
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "503",
        "500",
        "Throttling",
    }
)


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {raw!r}")
    return value


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, kftune tries again: every retried thing's numbers."""

    attempts: int = 4
    """Tries in total of one transient-prone call (a download, a registry call)."""
    first_delay: float = 1.0
    """Seconds before the first retry; doubled per retry."""
    max_delay: float = MAX_DELAY_SECONDS
    """Longest wait between tries."""
    timeout_seconds: float = 60.0
    """Connect/read timeout of one request."""
    api_attempts: int = 6
    """Tries of one Kubernetes API call while a training job runs (a job outlives short API
    outages, so more than `attempts`)."""
    local_restarts: int = 2
    """How often a failed local training job starts again (`backoff_limit` unset)."""
    elastic_restarts: int = 3
    """How often torchrun restarts an elastic job's workers (`elastic_policy.max_restarts`)."""
    task_retries: int = 3
    """KFP retries of a cluster run's download steps (transient storage or Hub errors)."""
    task_backoff_seconds: int = 30
    """KFP's first wait before a step's retry."""
    task_backoff_factor: float = 2.0
    """KFP's growth of that wait per retry."""
    task_backoff_max_seconds: int = 600
    """KFP's longest wait before a retry."""

    def backoff(self, first: float | None = None) -> Backoff:
        """The delays between tries: from `first` (default `first_delay`) up to `max_delay`."""
        return Backoff(self.first_delay if first is None else first, self.max_delay)

    def kfp_retry(self) -> dict[str, object]:
        """Keyword arguments of a KFP task's `set_retry` for the download steps."""
        return {"num_retries": self.task_retries,
                "backoff_duration": f"{self.task_backoff_seconds}s",
                "backoff_factor": self.task_backoff_factor,
                "backoff_max_duration": f"{self.task_backoff_max_seconds}s"}


DEFAULTS = RetryPolicy()
"""The policy without environment knobs (what compiled pipelines and option defaults use)."""


def policy() -> RetryPolicy:
    """The policy with the environment's knobs (`KFTUNE_RETRIES`, ...), read now.

    Raises:
        ValueError: when a knob is not a number or is out of range.
    """
    retries = os.environ.get(RETRIES_ENV, "")
    attempts = int(_env_number(RETRIES_ENV, DEFAULTS.attempts, 1))
    return dataclasses.replace(
        DEFAULTS,
        attempts=attempts,
        first_delay=_env_number(RETRY_DELAY_ENV, DEFAULTS.first_delay, 0),
        timeout_seconds=_env_number(TIMEOUT_ENV, DEFAULTS.timeout_seconds, 0.01),
        api_attempts=attempts if retries else DEFAULTS.api_attempts,
    )


def attempts() -> int:
    """Attempts in total for one transient-prone operation (`KFTUNE_RETRIES`, default 4)."""
    return policy().attempts


def first_delay() -> float:
    """Seconds before the first retry (`KFTUNE_RETRY_DELAY_SECONDS`, default 1.0)."""
    return policy().first_delay


def timeout_seconds() -> float:
    """Connect/read timeout of one request in seconds (`KFTUNE_TIMEOUT_SECONDS`, default 60)."""
    return policy().timeout_seconds


def is_timeout(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is a timeout."""
    names = {"ConnectTimeoutError", "ReadTimeoutError", "ServerTimeoutError", "TimeoutException"}
    return any(
        isinstance(link, (TimeoutError, asyncio.TimeoutError, socket.timeout))
        or type(link).__name__ in names
        for link in error_chain(error)
    )


def _http_status(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


_CONNECTION_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ClientConnectorError",
        "ClientConnectorDNSError",
        "ClientProxyConnectionError",
        "ServerDisconnectedError",
        "NewConnectionError",
        "NameResolutionError",
        "ConnectError",
    }
)


def is_connection_failure(error: BaseException) -> bool:
    """Whether the server could not be reached at all (refused, reset, name not resolved).

    Some clients wrap that in a "not found" (fsspec's HTTP filesystem raises FileNotFoundError
    from the connection error), so the whole chain is looked at: the server never said "404".
    """
    return any(
        isinstance(link, (ConnectionError, socket.gaierror)) or type(link).__name__ in
        _CONNECTION_NAMES
        for link in error_chain(error)
    )


def transient_status(error: BaseException) -> int | None:
    """The 408/429/5xx HTTP status somewhere in `error`'s chain, if any."""
    for link in error_chain(error):
        status = _http_status(link)
        if status in TRANSIENT_HTTP_STATUS:
            return status
    return None


def is_transient(error: BaseException) -> bool:
    """Whether `error` is worth retrying: timeouts, dropped connections, 429/5xx responses.

    A full disk never is, whatever it is wrapped in: the next try fills it again.
    """
    if is_disk_full(error):
        return False
    if is_timeout(error) or is_connection_failure(error):
        return True
    transient_names = {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ConnectError",
        "RemoteProtocolError",
        "IncompleteRead",
    }
    for link in error_chain(error):
        if isinstance(link, ConnectionError) or type(link).__name__ in transient_names:
            return True
        if _http_status(link) in TRANSIENT_HTTP_STATUS:
            return True
        code = getattr(link, "response", None)
        if isinstance(code, dict):
            if code.get("Error", {}).get("Code") in _TRANSIENT_S3_CODES:
                return True
    return False


class Backoff:
    """Exponential delays: `first`, doubled after each use, at most `maximum`; `reset` restarts.

    The one backoff policy of kftune's retries: downloads, Kubernetes API calls and the watch of a
    training job all wait through it. A `first` of 0 retries at once, then grows from
    `ZERO_FIRST_STEP_SECONDS` like any other ladder (0, 0.1, 0.2, 0.4, ...), so a loop that waits
    through it never spins: a watch that keeps ending without news costs a few requests a minute.

    Raises:
        ValueError: when `first` or `maximum` is negative.
    """

    def __init__(self, first: float, maximum: float = MAX_DELAY_SECONDS) -> None:
        problems = [
            f"`{name}` must be >= 0 seconds, got {value!r}"
            for name, value in (("first", first), ("maximum", maximum))
            if value < 0
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self.first = first
        self.maximum = maximum
        self._next = first

    def next(self) -> float:
        """The delay to wait now (and doubles the one after it)."""
        delay = min(self._next, self.maximum)
        grown = self._next * 2 if self._next else ZERO_FIRST_STEP_SECONDS
        self._next = min(grown, self.maximum)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._next = self.first

    def sleep(self, limit: float | None = None) -> float:
        """Sleeps the next delay (at most `limit` seconds) and returns how long it slept."""
        delay = self.next() if limit is None else max(0.0, min(self.next(), limit))
        time.sleep(delay)
        return delay


def call_with_retries(
    operation: Callable[[], T],
    *,
    what: str,
    retry_if: Callable[[BaseException], bool] = is_transient,
    total_attempts: int | None = None,
    backoff: Backoff | None = None,
) -> T:
    """Runs `operation`, retrying transient failures with exponential backoff.

    Args:
        operation: the call to make; it must be safe to repeat.
        what: a short description for the log ("download s3://bucket/key"); no secrets.
        retry_if: which errors to retry.
        total_attempts: tries in all; default the policy's (`KFTUNE_RETRIES`, 4).
        backoff: the delays between tries; default the policy's (`KFTUNE_RETRY_DELAY_SECONDS`).

    Returns:
        What `operation` returned.

    Raises:
        Exception: the last error, when it is not transient or the attempts are used up.
    """
    current = policy()
    total = total_attempts if total_attempts is not None else current.attempts
    delays = backoff if backoff is not None else current.backoff()
    for attempt in range(1, total + 1):
        try:
            return operation()
        except Exception as error:
            if attempt == total or not retry_if(error):
                raise
            delay = delays.next()
            logger.warning(
                "%s failed (%s), attempt %d of %d; retrying in %.1f s",
                what,
                _describe(error),
                attempt,
                total,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _describe(error: BaseException) -> str:
    status = _http_status(error)
    return f"{type(error).__name__} {status}" if status else type(error).__name__
