"""deploy_model against the Kubernetes API: pick the kind, create or replace, wait for Ready.

The client is passed in (`kubernetes.client.ApiClient`); in a pipeline step it is the pod's
service account, which needs create/get/update (and with `delete_on_failure` delete) on
`llminferenceservices` or `inferenceservices` of `serving.kserve.io` in the target namespace,
and for `auto` the discovery of both groups (which every authenticated account may read).

- **Idempotent.** A service of the same name that kftune created (label
  `app.kubernetes.io/managed-by: kftune`) is replaced at its current `resourceVersion` (a
  conflict is retried), not a 409; one somebody else created is refused.
- **Ready.** The status is read (transient errors retried) with kftune's backoff until the
  `Ready` condition is True for this version of the spec (`status.observedGeneration`) and a URL
  is published (`status.url`, else `status.addresses` / `status.address`).
- **Failed.** A condition whose reason says the controller gave up (`*Error`, `*Failed`,
  `ProgressDeadlineExceeded`, an InferenceService model `BlockedByFailedLoad` / `InvalidSpec`)
  fails at once with every non-True condition's type, reason and message.
- **Timeout.** After `timeout_seconds` the step fails saying what it was still waiting for.
  Either way the service is left in place for `kubectl describe` (the next run replaces it),
  unless `delete_on_failure` is set.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..common import cluster, retry
from . import deploy as spec

LOG = logging.getLogger(__name__)

TERMINAL_REASONS = frozenset({"ProgressDeadlineExceeded", "RevisionFailed", "ScalingCRDNotFound",
                              "InvalidSpec", "BlockedByFailedLoad"})
MAX_POLL_SECONDS = 30.0


def default_api_client() -> Any:
    """A client for this pod's cluster (its service account), else for `$KUBECONFIG`.

    Raises:
        InputError: when there is neither.
    """
    return cluster.api_client(doing="deploy to", fix="run the pipeline with `deploy` false")


def _served(api_client: Any, kind: str) -> bool:
    version, plural, _ = spec.RESOURCES[kind]
    return cluster.serves(api_client, spec.GROUP, version, plural)


def _what(kind: str) -> str:
    version, _, name = spec.RESOURCES[kind]
    return f"{name} ({spec.GROUP}/{version})"


def choose_kind(api_client: Any, wanted: str, plan: spec.ServingPlan) -> str:
    """The kind to create: `wanted`, or for `auto` the first of `plan.kinds` the cluster serves.

    Raises:
        RuntimeError: when the cluster does not serve it (or, for `auto`, any that fits).
    """
    if wanted != "auto":
        if not _served(api_client, wanted):
            raise RuntimeError(f"this cluster does not serve {_what(wanted)}: install KServe "
                               "v0.20 or later with it, or choose another `serving_kind`")
        return wanted
    for kind in plan.kinds:
        if _served(api_client, kind):
            LOG.info("serving_kind auto: %s, which the cluster serves", _what(kind))
            return kind
    missing = " nor ".join(_what(kind) for kind in plan.kinds)
    raise RuntimeError(f"this cluster serves neither {missing}: install KServe (the "
                       "LLMInferenceService controller, or the InferenceService one with the "
                       "Hugging Face runtime), or run with `deploy` false")


class Refused(RuntimeError):
    """The API server (or a webhook) said no: not worth retrying."""


def _message(error: Any) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (ValueError, TypeError, AttributeError):
        return str(getattr(error, "reason", error))


def _conflict(error: BaseException) -> bool:
    return getattr(error, "status", None) == 409 or retry.is_transient(error)


def apply(api: Any, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Creates `body`, or replaces the service kftune created under that name; returns it.

    Raises:
        RuntimeError: refused (RBAC, the schema, a webhook, somebody else's service), or the
            API could not be reached.
    """
    from kubernetes.client.exceptions import ApiException

    version, plural, kind_name = spec.RESOURCES[kind]
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    where = (spec.GROUP, version, namespace, plural)

    def attempt() -> dict[str, Any]:
        try:
            return api.create_namespaced_custom_object(*where, body)
        except ApiException as error:
            if error.status != 409:
                raise
        current = api.get_namespaced_custom_object(*where, name)
        labels = current["metadata"].get("labels") or {}
        if any(labels.get(key) != value for key, value in spec.MANAGED_BY.items()):
            raise Refused(f"{kind_name} {namespace}/{name} exists and kftune did not create it "
                          "(no app.kubernetes.io/managed-by: kftune label); choose another "
                          "`serving_name`, or delete it")
        updated = copy.deepcopy(body)
        updated["metadata"]["labels"] = {**labels, **body["metadata"]["labels"]}
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        LOG.info("%s %s/%s exists: replacing it", kind_name, namespace, name)
        return api.replace_namespaced_custom_object(*where, name, updated)

    try:
        return retry.call_with_retries(attempt, what=f"create {kind_name} {namespace}/{name}",
                                       retry_if=_conflict)
    except ApiException as error:
        hint = (f"; the step's service account needs create, get and update on {plural}."
                f"{spec.GROUP} in namespace {namespace}" if error.status in (401, 403)
                and "admission webhook" not in _message(error) else "")
        raise RuntimeError(f"the Kubernetes API refused {kind_name} {namespace}/{name}: HTTP "
                           f"{error.status} {_message(error)}{hint}") from None


def service_url(status: dict[str, Any]) -> str:
    """The URL the service publishes: `status.url`, else its first address."""
    addresses = status.get("addresses") or [status.get("address") or {}]
    return status.get("url") or next((a.get("url") for a in addresses if a.get("url")), "")


def _not_true(status: dict[str, Any]) -> list[str]:
    lines = [f"{c.get('type')} {c.get('status')}"
             + "".join(f": {part}" for part in (c.get("reason"), c.get("message")) if part)
             for c in status.get("conditions") or [] if c.get("status") != "True"]
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure:
        lines.append(f"model {failure.get('reason', '')}: {failure.get('message', '')}")
    return lines


def _failed(status: dict[str, Any]) -> bool:
    model = status.get("modelStatus") or {}
    if model.get("transitionStatus") in ("BlockedByFailedLoad", "InvalidSpec"):
        return True
    reasons = [c.get("reason") or "" for c in status.get("conditions") or []
               if c.get("status") == "False"]
    return any(reason in TERMINAL_REASONS or reason.endswith(("Error", "Failed"))
               for reason in reasons)


def state(service: dict[str, Any]) -> tuple[str, str]:
    """(`ready` | `failed` | `waiting`, the URL or what is not ready yet) of a service."""
    status = service.get("status") or {}
    observed, generation = status.get("observedGeneration"), service["metadata"].get("generation")
    if not status.get("conditions"):
        return "waiting", "no status yet (is KServe's controller running?)"
    if observed is not None and generation is not None and observed < generation:
        return "waiting", f"the controller to see generation {generation} (it saw {observed})"
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status["conditions"])
    if ready and service_url(status):
        return "ready", service_url(status)
    if _failed(status):
        return "failed", "; ".join(_not_true(status))
    if ready:
        return "waiting", "a URL in its status (Ready, but none published yet)"
    return "waiting", "; ".join(_not_true(status)) or "Ready"


def wait_ready(api: Any, kind: str, namespace: str, name: str, config: spec.DeployConfig,
               clock: Callable[[], float] = time.monotonic) -> str:
    """Waits until the service is Ready; returns its URL.

    Raises:
        RuntimeError: the service failed (its conditions' reasons and messages).
        TimeoutError: it was not Ready within `config.timeout_seconds`.
    """
    version, plural, kind_name = spec.RESOURCES[kind]
    deadline = clock() + config.timeout_seconds
    backoff = retry.Backoff(config.poll_seconds, MAX_POLL_SECONDS)
    shown = ""
    while True:
        service = retry.call_with_retries(
            lambda: api.get_namespaced_custom_object(spec.GROUP, version, namespace, plural, name),
            what=f"read {kind_name} {namespace}/{name}")
        outcome, detail = state(service)
        if outcome == "ready":
            return detail
        if outcome == "failed":
            raise RuntimeError(f"{kind_name} {namespace}/{name} failed: {detail}")
        if detail != shown:
            LOG.info("%s %s/%s: waiting for %s", kind_name, namespace, name, detail)
            shown = detail
            backoff.reset()
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError(
                f"{kind_name} {namespace}/{name} was not Ready after "
                f"{config.timeout_seconds:g} s; still waiting for {detail}")
        backoff.sleep(limit=remaining)


def deploy(plan: spec.ServingPlan, config: spec.DeployConfig,
           api_client: Any = None) -> dict[str, Any]:
    """Creates (or replaces) the service for `plan`, waits until it is Ready; returns where.

    Raises:
        InputError: no cluster to talk to.
        RuntimeError: the cluster serves no fitting kind, refused the service, or it failed.
        TimeoutError: it was not Ready in time.
    """
    from kubernetes import client

    api_client = api_client if api_client is not None else default_api_client()
    api = client.CustomObjectsApi(api_client)
    kind = choose_kind(api_client, config.kind, plan)
    namespace = cluster.own_namespace(config.namespace)
    body = spec.manifest(kind, plan, config, namespace)
    version, plural, kind_name = spec.RESOURCES[kind]
    apply(api, kind, body)
    LOG.info("%s %s/%s applied: serving %s", kind_name, namespace, config.name, plan.model_uri)
    try:
        url = wait_ready(api, kind, namespace, config.name, config)
    except (RuntimeError, TimeoutError):
        if config.delete_on_failure:
            retry.call_with_retries(lambda: api.delete_namespaced_custom_object(
                spec.GROUP, version, namespace, plural, config.name),
                what=f"delete {kind_name} {namespace}/{config.name}")
            LOG.info("deleted %s %s/%s (delete_on_failure)", kind_name, namespace, config.name)
        raise
    LOG.info("%s %s/%s is Ready at %s", kind_name, namespace, config.name, url)
    return {"kind": kind_name, "api_version": f"{spec.GROUP}/{version}", "name": config.name,
            "namespace": namespace, "url": url, **plan.summary(config.name),
            **spec.endpoints(kind, url, plan)}
