"""`orchestrator operator`: serve /healthz and /metrics, list everything once,
start the reconcile loop, run kopf."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import kopf
import yaml

from orchestrator.core import compile as compiler
from orchestrator.core import contract, model
from orchestrator.core.registry import Registry, RegistryNotReady, UnknownFormat
from orchestrator.operator.api import KubeApi, core_path, group_path, is_outage
from orchestrator.operator.credentials import Credentials, CredentialsError, locate
from orchestrator.operator.handlers import build_registry, memo_for
from orchestrator.operator.peering import PeeringGuard
from orchestrator.operator.probes import KopfRetryFilter, Probes
from orchestrator.operator.reconciler import Reconciler, Settings
from orchestrator.operator.writer import GROUP, PLURAL, VERSION, Writer
from orchestrator.settings import OperatorSettings

log = logging.getLogger(__name__)
PEERING_NAME = "orchestrator"
# kopf's peering record of this operator expires this long after its last
# keep-alive (kopf refreshes it 5-10 s before that): a replacement for an operator
# that died uncleanly takes over within this many seconds, like a client-go Lease.
PEERING_LIFETIME = 15
# kopf retries a failed API request after each of these delays (its default,
# 1, 1, 2, 3, 5, 8, 13, 21 s, left watches down for up to 13 s after an outage).
ERROR_BACKOFFS = (0.5,) + (1.0,) * 60


def load_defaults(path: Optional[str]) -> model.Defaults:
    if not path:
        return model.Defaults()
    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return compiler.defaults_from_values(values)


def kopf_settings(settings: kopf.OperatorSettings) -> None:
    # Server- and client-side timeouts: a watch that silently died is re-established.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.WARNING
    # The operator names its resources and namespaces exactly: no need to list CRDs or
    # Namespaces (which the chart's RBAC does not grant, and kopf would retry for a minute).
    settings.scanning.disabled = True
    settings.networking.error_backoffs = ERROR_BACKOFFS
    settings.peering.lifetime = PEERING_LIFETIME
    settings.peering.stealth = True


@dataclass
class Snapshot:
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    registry: Optional[Registry] = None
    shards: int = 0


async def list_everything(writer: Writer, namespaces: Optional[list[str]]) -> Snapshot:
    """List everything once before the first write, so a restart never writes a
    registry that lacks objects the watches have not delivered yet. Page by page:
    at 10,000 Endpoints the whole answer is never held at once."""
    snap = Snapshot()
    api = writer.api
    selector = f"{contract.SOURCE_LABEL}=true"
    for ns in (list(namespaces) if namespaces else [None]):
        snap.endpoints.extend(await api.list(group_path(GROUP, VERSION, PLURAL, ns)))
        snap.configmaps.extend(await api.list(core_path(ns, "configmaps"), label_selector=selector))
    snap.configmaps.extend(await writer.list_reports())
    try:
        snap.registry, snap.shards = await writer.read_registry()
        log.info("found registry revision %s with %d routes", snap.registry.revision, len(snap.registry.routes))
    except UnknownFormat as exc:
        # Written by a newer release (a rollback of the operator): this release writes
        # its own format again, which every proxy release reads.
        log.warning("the registry was written by a newer release (%s): it will be rewritten", exc)
    except RegistryNotReady as exc:
        log.info("no usable registry yet (%s): it will be written", exc)
    return snap


def prime(reconciler: Reconciler, snap: Snapshot, listed_at: float) -> None:
    for item in snap.endpoints:
        reconciler.inputs.observe_endpoint(None, item, reconciler.clock.monotonic())
    for item in snap.configmaps:
        reconciler.inputs.observe_configmap(None, item)
    reconciler.inputs.reports_verified_at = listed_at
    reconciler.written.registry, reconciler.written.shards = snap.registry, snap.shards
    reconciler.primed = True
    reconciler.kick()


async def list_until_done(reconciler: Reconciler, namespaces: Optional[list[str]]) -> Snapshot:
    """The first listing, retried while the API server is away (one log line, not one per try)."""
    while True:
        listed_at = reconciler.clock.wall()
        try:
            snap = await list_everything(reconciler.writer, namespaces)
        except Exception as exc:
            if not is_outage(exc):
                raise
            reconciler.failed(exc)
            await asyncio.sleep(reconciler.settings.retry_seconds)
            continue
        gone = reconciler.contact.back(reconciler.clock.wall())
        if gone is not None:
            log.info("API server answers (after %.1f s)", gone)
        prime(reconciler, snap, listed_at)
        return snap


def run_operator(options: OperatorSettings) -> int:
    if options.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event is noise
    namespaces: Optional[list[str]] = options.watch_namespace or None
    settings = Settings(namespace=options.namespace, registry_name=options.registry,
                        defaults=load_defaults(options.defaults), report_stale_seconds=options.report_stale_seconds,
                        status_workers=options.status_workers, debounce_seconds=options.debounce_seconds,
                        hold_seconds=options.hold_seconds, allow_link_local=options.allow_link_local)
    try:
        credentials = locate(options.kubeconfig)
    except CredentialsError as exc:
        log.error("cannot reach the API server: %s", exc)
        return 2
    api = KubeApi(credentials)
    identity = f"{socket.gethostname()}/{os.getpid()}"
    peering = PeeringGuard(api, PEERING_NAME, identity, namespace=namespaces[0] if namespaces else None)
    writer = Writer(api, options.namespace, options.registry, owner_configmap=options.owner_configmap)
    reconciler = Reconciler(settings, writer, peering=peering)
    # kopf's own retries become one line per change of reachability (see probes.KopfRetryFilter).
    retry_filter = KopfRetryFilter(reconciler.lost_contact)
    for handler in logging.getLogger().handlers:
        handler.addFilter(retry_filter)
    return asyncio.run(_main(reconciler, credentials, namespaces, options.health_port, options.liveness_seconds,
                             identity))


async def _main(reconciler: Reconciler, credentials: Credentials, namespaces: Optional[list[str]], health_port: int,
                liveness_seconds: float, identity: str) -> int:
    probes = Probes(reconciler.contact, reconciler.metrics, time.time, liveness_seconds)
    await probes.start("0.0.0.0", health_port)
    loop_task = asyncio.create_task(reconciler.run(), name="reconciler")
    try:
        await list_until_done(reconciler, namespaces)
        settings = kopf.OperatorSettings()
        kopf_settings(settings)
        await kopf.operator(
            registry=build_registry(credentials),
            settings=settings,
            memo=memo_for(reconciler),
            clusterwide=namespaces is None,
            namespaces=namespaces or (),
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            # Given here, not in a startup handler: kopf picks its peering object before those run.
            peering_name=PEERING_NAME,
        )
    finally:
        loop_task.cancel()
        await probes.stop()
        await reconciler.writer.api.close()
    return 0
