"""`orchestrator proxy`: the proxy in cluster mode.

Routes come from the operator's compiled registry (watched, never polled);
this replica's health and breaker states go out in its report. Admin writes
are refused with 409: the operator owns the registry.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from orchestrator import kube
from orchestrator.proxy.registry_watch import RegistryWatcher
from orchestrator.proxy.reporter import Reporter
from orchestrator.proxy.state import AppState
from orchestrator.settings import ProxySettings


class ClusterSource:
    """The cluster's compiled registry, watched; and this replica's report (a read-only RegistrySource)."""

    def __init__(self, watcher: RegistryWatcher, reporter: Reporter) -> None:
        self.watcher = watcher
        self.reporter = reporter

    async def start(self) -> None:
        await self.watcher.start()
        await self.reporter.start()

    async def stop(self) -> None:
        await self.reporter.stop()
        await self.watcher.stop()

    async def refresh(self) -> None:
        await self.watcher.refresh()

    def status(self) -> dict[str, Any]:
        w, r = self.watcher, self.reporter
        return {
            "registry": f"{w.namespace}/{w.name}",
            "watch_connected": w.connected,
            "last_event_at": w.last_event_at,
            "last_error": w.last_error,
            "report": f"{r.namespace}/{r.name}",
            "report_writes": r.writes,
            "report_error": r.last_error,
        }


def build(settings: ProxySettings) -> AppState:
    state = AppState(mode="cluster", allow_link_local=settings.allow_link_local,
                     health_check_concurrency=settings.health_check_concurrency)
    api = kube.api_client(settings.kubeconfig)
    replica = settings.pod_name or settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    reporter = Reporter(
        state, api, settings.namespace, settings.registry, replica,
        pod_name=settings.pod_name, pod_uid=settings.pod_uid,
        heartbeat=settings.report_interval, min_interval=settings.report_min_interval,
    )
    watcher = RegistryWatcher(state, api, settings.namespace, settings.registry, watch_timeout=settings.watch_timeout)
    state.source = ClusterSource(watcher, reporter)
    return state
