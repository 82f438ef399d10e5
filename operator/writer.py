"""The operator's calls to the API server that are not watches: registry,
Endpoint status, Events, and the one read a plan may need (the reports,
re-listed before a replica is declared gone, and to tell when the API server
is back).

Blocking client calls; the reconciler runs them in threads.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Mapping, Optional

import urllib3.exceptions
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.core import contract
from orchestrator.core.registry import Registry, encode_shards

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "orchestrator.dev", "v1alpha1", "endpoints"


def is_outage(exc: BaseException) -> bool:
    """The API server is away or overloaded (worth a retry), as opposed to a refusal."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or exc.status >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def no_answer(exc: BaseException) -> bool:
    """The API server did not answer at all (as opposed to answering 429/5xx while it starts)."""
    return is_outage(exc) and not (isinstance(exc, ApiException) and exc.status != 0)


def fail_fast(api: client.ApiClient) -> None:
    """Retry only connection failures inside a call, and never sleep on a Retry-After
    header: a kube-apiserver that is starting answers 503 with "Retry-After: 5", and
    urllib3 would hold the reconcile loop that long. The loop retries on its own
    schedule instead."""
    retries = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0,
                            respect_retry_after_header=False)
    api.rest_client.pool_manager.connection_pool_kw["retries"] = retries


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
            assert owner.metadata is not None and owner.metadata.name and owner.metadata.uid  # a stored object has them
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

    def list_reports(self) -> list[dict[str, Any]]:
        """The proxies' report ConfigMaps as plain dicts (what a watch would deliver)."""
        items = self.core.list_namespaced_config_map(
            self.namespace, label_selector=f"{contract.REPORT_LABEL}={self.registry_name}", _request_timeout=10).items
        return [self.core.api_client.sanitize_for_serialization(cm) for cm in items]

    def event(self, involved: Mapping[str, str], etype: str, reason: str, message: str) -> bool:
        """Post a core/v1 Event about an object; False if it failed (logged, never fatal)."""
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
            return True
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, involved["namespace"], involved["name"],
                        getattr(exc, "reason", None) or type(exc).__name__)
            return False

