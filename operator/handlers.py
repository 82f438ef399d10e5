"""kopf handlers: thin, and async so they run on the event loop beside the
reconciler (kopf would run sync handlers in threads). They record what the watches see and wake the reconciler.

They never write: no finalizers, no annotations on users' objects. The only
writer of Endpoint status is the reconcile loop.
"""

from __future__ import annotations

from typing import Any

import kopf

from orchestrator.operator.credentials import Credentials
from orchestrator.operator.login import login_handler
from orchestrator.operator.reconciler import Reconciler


def memo_for(reconciler: Reconciler) -> kopf.Memo:
    # kopf hands each object a *shallow copy* of the memo: the reconciler must
    # sit inside it, or attribute writes would land on a copy.
    return kopf.Memo(reconciler=reconciler)


def reconciler_of(memo: kopf.Memo) -> Reconciler:
    return memo["reconciler"]  # type: ignore[no-any-return]


def build_registry(credentials: Credentials) -> kopf.OperatorRegistry:
    """A fresh handler registry (instead of kopf's process-global default)."""
    registry = kopf.OperatorRegistry()

    kopf.on.login(registry=registry)(login_handler(credentials))

    @kopf.on.event("orchestrator.dev", "v1alpha1", "endpoints", registry=registry)
    async def endpoint_seen(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        reconciler_of(memo).endpoint_event(event.get("type"), body)

    # All ConfigMaps: a label filter here would miss the moment a label is taken
    # off; Inputs checks the labels itself.
    @kopf.on.event("", "v1", "configmaps", registry=registry)
    async def configmap_seen(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        reconciler_of(memo).configmap_event(event.get("type"), body)

    return registry
