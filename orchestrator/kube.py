"""Kubernetes I/O shared by the operator and the cluster-mode proxy.

Blocking calls of the official client: callers run them with
`asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from orchestrator.core import contract
from orchestrator.core.registry import Registry, decode_shards

log = logging.getLogger("orchestrator.kube")


def api_client(kubeconfig: Optional[str]) -> client.ApiClient:
    """A client from a kubeconfig file, or the in-cluster service account."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    return config.new_client_from_config()


class RegistryNotReady(Exception):
    """The registry is absent or half-written (shards of different revisions)."""


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
    count = int(data.get("shards", "1"))
    documents = [data.get(contract.REGISTRY_KEY, "")]
    for index in range(1, count):
        try:
            shard = core.read_namespaced_config_map(contract.shard_name(name, index), namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise RegistryNotReady(f"shard {index} of {count} is missing") from None
            raise
        documents.append((shard.data or {}).get(contract.REGISTRY_KEY, ""))
    try:
        return decode_shards(documents)
    except (ValueError, KeyError) as exc:
        raise RegistryNotReady(str(exc)) from None
