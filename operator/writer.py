"""The operator's calls to the API server that are not watches: registry,
Endpoint status, Events, and the reads a plan may need (the registry at
start, the reports, re-listed before a replica is declared gone and to tell
when the API server is back). Async, on the operator's one client
(`operator/api.py`).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Mapping, Optional

from orchestrator.core import contract
from orchestrator.core.registry import Registry, assemble, encode_shards, shard_count
from orchestrator.operator.api import ApiError, KubeApi, core_path, group_path, is_outage

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "orchestrator.dev", "v1alpha1", "endpoints"


class Writer:
    def __init__(self, api: KubeApi, namespace: str, registry_name: str,
                 component: str = "orchestrator-operator", owner_configmap: Optional[str] = None) -> None:
        self.api = api
        self.namespace = namespace
        self.registry_name = registry_name
        self.component = component
        self.owner_configmap = owner_configmap
        self._owners: Optional[list[dict[str, str]]] = None

    async def _owner_references(self) -> Optional[list[dict[str, str]]]:
        """The owner ConfigMap's reference (looked up once), so garbage collection
        removes the registry together with the release that made it."""
        if self.owner_configmap is None:
            return None
        if self._owners is None:
            owner = await self.api.get(core_path(self.namespace, "configmaps", self.owner_configmap))
            meta = owner["metadata"]
            self._owners = [{"apiVersion": "v1", "kind": "ConfigMap", "name": meta["name"], "uid": meta["uid"]}]
        return self._owners

    async def read_registry(self) -> tuple[Registry, int]:
        """The registry as written, and its shard count (RegistryNotReady, UnknownFormat, ApiError)."""
        documents: list[Optional[str]] = []
        count = 1
        index = 0
        while index < count:
            try:
                cm = await self.api.get(core_path(self.namespace, "configmaps",
                                                  contract.shard_name(self.registry_name, index)))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                documents.append(None)
            else:
                data = cm.get("data") or {}
                if index == 0:
                    count = shard_count(data)
                documents.append(data.get(contract.REGISTRY_KEY, ""))
            index += 1
        return assemble(documents), count

    async def write_registry(self, registry: Registry, previous_shards: int) -> int:
        """Write every shard, the named one last (it is what proxies watch). Returns the shard count."""
        documents = encode_shards(registry)
        count = len(documents)
        if count > contract.MAX_SHARDS:
            raise ValueError(f"the registry needs {count} shards, more than {contract.MAX_SHARDS}")
        for index in range(count - 1, -1, -1):
            data = {contract.REGISTRY_KEY: documents[index]}
            if index == 0:
                data.update(revision=registry.revision, shards=str(count))
            await self._put_configmap(contract.shard_name(self.registry_name, index), data)
        for index in range(count, previous_shards):
            await self._delete_configmap(contract.shard_name(self.registry_name, index))
        return count

    async def _put_configmap(self, name: str, data: dict[str, str]) -> None:
        metadata: dict[str, Any] = {
            "name": name, "namespace": self.namespace,
            "labels": {contract.REGISTRY_LABEL: self.registry_name, "app.kubernetes.io/managed-by": "orchestrator"},
        }
        owners = await self._owner_references()
        if owners:
            metadata["ownerReferences"] = owners
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        try:
            await self.api.put(core_path(self.namespace, "configmaps", name), body)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.api.post(core_path(self.namespace, "configmaps"), body)

    async def _delete_configmap(self, name: str) -> None:
        try:
            await self.api.delete(core_path(self.namespace, "configmaps", name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch `.status`; False when the Endpoint is gone."""
        try:
            await self.api.merge_patch(group_path(GROUP, VERSION, PLURAL, namespace, name, "status"),
                                       {"status": dict(status)})
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def list_reports(self) -> list[dict[str, Any]]:
        """The proxies' report ConfigMaps (what a watch would deliver)."""
        return await self.api.list(core_path(self.namespace, "configmaps"),
                                   label_selector=f"{contract.REPORT_LABEL}={self.registry_name}", timeout=10)

    async def event(self, involved: Mapping[str, str], etype: str, reason: str, message: str) -> bool:
        """Post a core/v1 Event about an object; False if it failed (logged, never fatal)."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": involved["name"], "namespace": involved["namespace"],
                               "uid": involved.get("uid")},
            "type": etype, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.component,
        }
        try:
            await self.api.post(core_path(involved["namespace"], "events"), body)
            return True
        except Exception as exc:
            if not (isinstance(exc, ApiError) or is_outage(exc)):
                raise
            log.warning("could not post event %s on %s/%s: %s", reason, involved["namespace"], involved["name"],
                        getattr(exc, "reason", None) or type(exc).__name__)
            return False
