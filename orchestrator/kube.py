"""Kubernetes I/O shared by the operator and the cluster-mode proxy.

Blocking calls of the official client: callers run them with
`asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Optional

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from orchestrator.core import contract
from orchestrator.core.registry import Registry, RegistryNotReady, assemble, shard_count
from orchestrator.serviceaccount import ServiceAccount, TokenFile

log = logging.getLogger(__name__)


def api_client(kubeconfig: Optional[str]) -> client.ApiClient:
    """A client from a kubeconfig file, or the in-cluster service account.

    Blocking (reads files): call it before the event loop runs or in a thread.
    """
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster_client(ServiceAccount.from_environment())
    return config.new_client_from_config()


def in_cluster_client(account: ServiceAccount) -> client.ApiClient:
    """The official client with the Pod's identity, re-reading the token file
    on every change and after a 401 (its own in-cluster loader re-reads it
    only once a minute, and never on a 401)."""
    token = account.token_file("kubernetes client")
    cfg = client.Configuration()
    cfg.host = account.server
    cfg.ssl_ca_cert = str(account.ca_path)
    cfg.api_key["BearerToken"] = token.header()  # fails now, with a message, if unreadable

    def refresh(configuration: client.Configuration) -> None:
        # Called by the client before every request, in the thread making it.
        configuration.api_key["BearerToken"] = token.header()

    cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]  # declared as None in the client's __init__
    return TokenApiClient(cfg, token)


class TokenApiClient(client.ApiClient):
    """An ApiClient that, on a 401, re-reads the token and retries once if
    the file now holds another one (a rotation that raced the call). Safe
    for writes too: the API server authenticates before it does anything."""

    def __init__(self, configuration: client.Configuration, token: TokenFile) -> None:
        super().__init__(configuration)
        self.token = token

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        # The request's headers, auth included, are found by parameter name:
        # the positional layout differs between releases of the client.
        headers = _CALL_API.bind(self, *args, **kwargs).arguments.get("header_params")
        headers = headers if isinstance(headers, dict) else {}
        for retry in (False, True):
            sent = headers.get("authorization")
            try:
                response = super().call_api(*args, **kwargs)
            except ApiException as exc:  # older clients raise from the REST layer
                if exc.status != 401 or retry or not self.token.refused(sent):
                    raise
            else:
                if getattr(response, "status", None) != 401:
                    self.token.accepted()
                    return response
                if retry or not self.token.refused(sent):
                    return response  # the generated method raises ApiException(401)
                response.read()  # drain it: the connection goes back to the pool
            headers["authorization"] = self.token.header()
        raise AssertionError("unreachable")


_CALL_API = inspect.signature(client.ApiClient.call_api)


def read_registry(core: client.CoreV1Api, namespace: str, name: str,
                  first: Optional[client.V1ConfigMap] = None) -> Registry:
    """Read the compiled registry: shard 0 is the named ConfigMap itself."""
    try:
        head = first or core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise RegistryNotReady(f"ConfigMap {namespace}/{name} does not exist yet") from None
        raise
    data = head.data or {}
    documents: list[Optional[str]] = [data.get(contract.REGISTRY_KEY, "")]
    for index in range(1, shard_count(data)):
        try:
            shard = core.read_namespaced_config_map(contract.shard_name(name, index), namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            documents.append(None)
        else:
            documents.append((shard.data or {}).get(contract.REGISTRY_KEY, ""))
    return assemble(documents)
