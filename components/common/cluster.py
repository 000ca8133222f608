"""The cluster a step talks to: its Kubernetes API client and its namespace, found one way.

Imports `kubernetes` only when a client is made, so the pod side may import this module's
constants without the client library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import retry
from .errors import InputError, parse_failure

# Where Kubernetes mounts the pod's namespace with its service account token.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
KUBECONFIG_FIX = "fix the file (`kubectl config view` shows what it parses to) or use another one"


def own_namespace(namespace: str = "") -> str:
    """`namespace`, else this pod's own namespace, else `default`."""
    if namespace:
        return namespace
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


def api_client(*, doing: str, fix: str) -> Any:
    """A client for this pod's cluster (its service account), else for `$KUBECONFIG`.

    Args:
        doing: What the cluster is for, in the error ("talk to", "deploy to").
        fix: The way out besides KUBECONFIG, in the error.

    Raises:
        InputError: when there is neither (no cluster to `doing`).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        path = os.environ.get("KUBECONFIG")
        try:
            # The library reads $KUBECONFIG once, at import: pass it explicitly.
            config.load_kube_config(config_file=path, client_configuration=configuration)
        except Exception as error:  # missing, unreadable or malformed: not usable
            parsed = parse_failure(error)
            detail = (f"{path or '~/.kube/config'} {parsed}" if parsed else
                      str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise InputError([
                f"no Kubernetes cluster to {doing}: not inside a cluster and no usable "
                f"kubeconfig ({detail}); set KUBECONFIG, or {fix}"
            ]) from None
    return client.ApiClient(configuration)


def serves(api_client: Any, group: str, version: str, plural: str) -> bool:
    """Whether the API server serves `plural` in `group/version` (transient errors retried).

    Raises:
        RuntimeError: when the server cannot be asked (other than 404).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        resources = retry.call_with_retries(
            lambda: client.CustomObjectsApi(api_client).get_api_resources(group, version),
            what=f"discover {group}/{version}")
    except ApiException as error:
        if error.status == 404:
            return False
        raise RuntimeError(f"could not ask the Kubernetes API whether it serves {plural}."
                           f"{group}/{version}: HTTP {error.status} {error.reason}") from None
    return any(resource.name == plural for resource in resources.resources or [])
