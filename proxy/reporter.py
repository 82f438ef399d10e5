"""Cluster mode: this replica's report ConfigMap (health and breakers per route).

Written when something changes (batched: at most one write per
`min_interval`) and as a heartbeat every `heartbeat` seconds, so the operator
can tell a live replica from a dead one. A newly loaded registry revision is
reported at once, without the batch window: it is what turns a new Endpoint
Ready. Owned by the replica's Pod when it has one, so the garbage collector
removes it with the Pod.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.core import contract
from orchestrator.proxy.state import AppState

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, state: AppState, api: client.ApiClient, namespace: str, registry: str, replica: str,
                 pod_name: Optional[str] = None, pod_uid: Optional[str] = None,
                 heartbeat: float = 10.0, min_interval: float = 1.0) -> None:
        self.state = state
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.registry = registry
        self.replica = replica
        self.name = contract.report_name(registry, replica)
        self.pod = (pod_name, pod_uid) if pod_name and pod_uid else None
        self.heartbeat = heartbeat
        self.min_interval = min_interval
        self.writes = 0
        self.last_error: Optional[str] = None
        self._dirty = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._last_content: object = None
        self._last_revision: Optional[str] = None

    async def start(self) -> None:
        self.state.subscribe(self._dirty.set)
        self._task = asyncio.create_task(self._run(), name="reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def build(self) -> contract.Report:
        routes = {
            name: contract.RouteReport(
                health=self.state.health_of(rt), breaker=rt.breaker.current_state(),
                uid=rt.route.source.uid, generation=rt.route.source.generation)
            for name, rt in self.state.table.routes.items()
        }
        return contract.Report(replica=self.replica, heartbeat=time.time(),
                               revision=self.state.registry.revision, routes=routes,
                               draining=self.state.draining, registry_error=self.state.registry_problem or "")

    async def _run(self) -> None:
        last_write = 0.0
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=self.heartbeat)
            except asyncio.TimeoutError:
                pass
            # Batch: whatever else changes within min_interval goes into the same write,
            # except a new registry revision, which the operator is waiting for.
            # (A floor of 0.1 s still bounds the writes while a burst of applies goes on.)
            new_revision = self.state.ready and self.state.registry.revision != self._last_revision
            window = min(self.min_interval, 0.1) if new_revision else self.min_interval
            wait = window - (time.monotonic() - last_write)
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            if not self.state.ready:
                continue
            report = self.build()
            due = time.monotonic() - last_write >= self.heartbeat * 0.9
            if report.content() == self._last_content and not due:
                continue
            try:
                await asyncio.to_thread(self._write, report)
                self._last_content = report.content()
                self._last_revision = report.revision
                self.writes += 1
                if self.last_error is not None:
                    log.info("report %s written again", self.name)
                self.last_error = None
                last_write = time.monotonic()
            except Exception as exc:  # API server away: try again on the next tick
                if self.last_error is None:  # one line when it starts failing, not one per try
                    log.warning("could not write report %s (retrying every second): %s: %s", self.name,
                                type(exc).__name__, str(exc)[:200])
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(1.0)
                self._dirty.set()  # retry at once, not after a heartbeat interval

    def _write(self, report: contract.Report) -> None:
        owners = None
        if self.pod is not None:
            owners = [client.V1OwnerReference(api_version="v1", kind="Pod", name=self.pod[0], uid=self.pod[1])]
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, owner_references=owners,
                labels={contract.REPORT_LABEL: self.registry, "app.kubernetes.io/managed-by": "orchestrator"}),
            data=report.to_data(),
        )
        try:
            self.core.replace_namespaced_config_map(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_config_map(self.namespace, body)
