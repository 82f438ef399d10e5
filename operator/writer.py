"""The operator's writes to the API server: registry, Endpoint status, Events.

Blocking client calls; the reconciler runs them in a thread.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Mapping, Optional

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.core import contract
from orchestrator.core.registry import Registry, encode_shards

log = logging.getLogger("orchestrator.operator")

GROUP, VERSION, PLURAL = "orchestrator.dev", "v1alpha1", "endpoints"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Writer:
    def __init__(self, api: client.ApiClient, namespace: str, registry_name: str,
                 component: str = "orchestrator-operator", owner_configmap: Optional[str] = None) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.registry_name = registry_name
        self.component = component
        self.owner_configmap = owner_configmap
        self._owners: Optional[list[client.V1OwnerReference]] = None

    def _owner_references(self) -> Optional[list[client.V1OwnerReference]]:
        """The owner ConfigMap's reference (looked up once), so garbage collection
        removes the registry together with the release that made it."""
        if self.owner_configmap is None:
            return None
        if self._owners is None:
            owner = self.core.read_namespaced_config_map(self.owner_configmap, self.namespace)
            self._owners = [client.V1OwnerReference(api_version="v1", kind="ConfigMap",
                                                    name=owner.metadata.name, uid=owner.metadata.uid)]
        return self._owners

    def write_registry(self, registry: Registry, previous_shards: int) -> int:
        """Write every shard, the named one last (it is what proxies watch). Returns the shard count."""
        documents = encode_shards(registry)
        count = len(documents)
        if count > contract.MAX_SHARDS:
            raise ValueError(f"the registry needs {count} shards, more than {contract.MAX_SHARDS}")
        for index in range(count - 1, -1, -1):
            data = {contract.REGISTRY_KEY: documents[index]}
            if index == 0:
                data.update(revision=registry.revision, shards=str(count))
            self._put_configmap(contract.shard_name(self.registry_name, index), data)
        for index in range(count, previous_shards):
            self._delete_configmap(contract.shard_name(self.registry_name, index))
        return count

    def _put_configmap(self, name: str, data: dict[str, str]) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=name, namespace=self.namespace, owner_references=self._owner_references(),
                labels={contract.REGISTRY_LABEL: self.registry_name, "app.kubernetes.io/managed-by": "orchestrator"},
            ),
            data=data,
        )
        try:
            self.core.replace_namespaced_config_map(name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_config_map(self.namespace, body)

    def _delete_configmap(self, name: str) -> None:
        try:
            self.core.delete_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch `.status`; False when the Endpoint is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def event(self, involved: Mapping[str, str], etype: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about an object (failures are logged, never fatal)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{involved['name']}.", namespace=involved["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=involved["apiVersion"], kind=involved["kind"], name=involved["name"],
                namespace=involved["namespace"], uid=involved.get("uid")),
            type=etype, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component=self.component),
            reporting_component=self.component, reporting_instance=self.component,
        )
        try:
            self.core.create_namespaced_event(involved["namespace"], body)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, involved["namespace"], involved["name"], exc.reason)


def involved(kind: str, api_version: str, meta: Mapping[str, Any]) -> dict[str, str]:
    return {"kind": kind, "apiVersion": api_version, "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""), "uid": meta.get("uid", "")}

