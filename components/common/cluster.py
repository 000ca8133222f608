"""The cluster a step talks to: its Kubernetes API client and its namespace, found one way.

Imports `kubernetes` only when a client is made, so the pod side may import this module's
constants without the client library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputError

# Where Kubernetes mounts the pod's namespace with its service account token.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


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
        try:
            # The library reads $KUBECONFIG once, at import: pass it explicitly.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        except Exception as error:  # missing, unreadable or malformed: not usable
            raise InputError([
                f"no Kubernetes cluster to {doing}: not inside a cluster and no usable "
                f"kubeconfig ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
                f"; set KUBECONFIG, or {fix}"
            ]) from None
    return client.ApiClient(configuration)
