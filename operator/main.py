"""`orchestrator operator`: prime the state, start the reconcile loop, run kopf."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import kopf
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator import kube
from orchestrator.core import compile as compiler
from orchestrator.core import contract
from orchestrator.core.registry import Registry
from orchestrator.operator.handlers import build_registry, memo_for
from orchestrator.operator.peering import PeeringGuard
from orchestrator.operator.reconciler import OperatorState, Settings
from orchestrator.operator.writer import GROUP, PLURAL, VERSION, Writer

log = logging.getLogger("orchestrator.operator")
PEERING_NAME = "orchestrator"


def load_defaults(path: Optional[str]) -> compiler.model.Defaults:
    if not path:
        return compiler.model.Defaults()
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


@dataclass
class Snapshot:
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    configmaps: list[dict[str, Any]] = field(default_factory=list)
    registry: Optional[Registry] = None
    shards: int = 0


def list_everything(settings: Settings, api: client.ApiClient, namespaces: Optional[list[str]]) -> Snapshot:
    """List everything once before the first write (blocking; run in a thread), so a
    restart never writes a registry that lacks objects the watches have not delivered yet."""
    snap = Snapshot()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    scopes: list[Optional[str]] = list(namespaces) if namespaces else [None]
    for ns in scopes:
        eps = (custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL) if ns
               else custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        snap.endpoints.extend(eps.get("items", []))
        selector = f"{contract.SOURCE_LABEL}=true"
        cms = (core.list_namespaced_config_map(ns, label_selector=selector) if ns
               else core.list_config_map_for_all_namespaces(label_selector=selector))
        snap.configmaps.extend(api.sanitize_for_serialization(cm) for cm in cms.items)
    reports = core.list_namespaced_config_map(
        settings.namespace, label_selector=f"{contract.REPORT_LABEL}={settings.registry_name}")
    snap.configmaps.extend(api.sanitize_for_serialization(cm) for cm in reports.items)
    try:
        head = core.read_namespaced_config_map(settings.registry_name, settings.namespace)
        snap.registry = kube.read_registry(core, settings.namespace, settings.registry_name, head)
        snap.shards = int((head.data or {}).get("shards", "1"))
        log.info("found registry revision %s with %d routes", snap.registry.revision, len(snap.registry.routes))
    except (kube.RegistryNotReady, ApiException) as exc:
        log.info("no usable registry yet (%s): it will be written", getattr(exc, "reason", exc))
    return snap


def prime(state: OperatorState, snap: Snapshot) -> None:
    for item in snap.endpoints:
        state.observe_endpoint(None, item)
    for item in snap.configmaps:
        state.observe_configmap(None, item)
    state.registry, state.shards_written = snap.registry, snap.shards
    state.primed = True


def run_operator(args: argparse.Namespace) -> int:
    if args.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per watch event is noise
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it
    namespaces: Optional[list[str]] = args.watch_namespace or None
    settings = Settings(namespace=args.namespace, registry_name=args.registry, defaults=load_defaults(args.defaults))
    stale = os.environ.get("ORCHESTRATOR_REPORT_STALE_SECONDS")
    if stale:
        settings.report_stale_seconds = float(stale)
    api = kube.api_client(args.kubeconfig)
    state = OperatorState(settings=settings, writer=Writer(api, args.namespace, args.registry,
                                                           owner_configmap=args.owner_configmap))
    identity = f"{socket.gethostname()}/{os.getpid()}"
    state.peering = PeeringGuard(api, PEERING_NAME, identity, namespace=namespaces[0] if namespaces else None)
    return asyncio.run(_main(state, api, namespaces, args.health_port, identity))


async def _main(state: OperatorState, api: client.ApiClient, namespaces: Optional[list[str]], health_port: int,
                identity: str) -> int:
    prime(state, await asyncio.to_thread(list_everything, state.settings, api, namespaces))
    registry = build_registry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_settings(settings)

    loop_task = asyncio.create_task(state.run(), name="reconciler")
    try:
        await kopf.operator(
            registry=registry,
            memo=memo_for(state),
            clusterwide=namespaces is None,
            namespaces=namespaces or (),
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            # Given here, not in a startup handler: kopf picks its peering object before those run.
            peering_name=PEERING_NAME,
        )
    finally:
        loop_task.cancel()
    return 0
