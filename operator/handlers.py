"""kopf handlers: thin, and async so they run on the event loop beside the
reconciler (kopf would run sync handlers in threads). They record what the watches see and wake the reconciler.

They never write: no finalizers, no annotations on users' objects. The only
writer of Endpoint status is the reconcile loop.
"""

from __future__ import annotations

from typing import Any

import kopf

from orchestrator.operator import login
from orchestrator.operator.reconciler import OperatorState


def memo_for(operator_state: OperatorState) -> kopf.Memo:
    # kopf hands each object a *shallow copy* of the memo: the state object must
    # sit inside it, or attribute writes would land on a copy.
    return kopf.Memo(state=operator_state)


def state(memo: kopf.Memo) -> OperatorState:
    return memo["state"]  # type: ignore[no-any-return]


def build_registry() -> kopf.OperatorRegistry:
    """A fresh handler registry (instead of kopf's process-global default)."""
    registry = kopf.OperatorRegistry()

    kopf.on.login(registry=registry)(login.login)

    @kopf.on.event("orchestrator.dev", "v1alpha1", "endpoints", registry=registry)
    async def endpoint_seen(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        state(memo).observe_endpoint(event.get("type"), body)

    # All ConfigMaps: a label filter here would miss the moment a label is taken
    # off; the state object checks the labels itself.
    @kopf.on.event("", "v1", "configmaps", registry=registry)
    async def configmap_seen(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        state(memo).observe_configmap(event.get("type"), body)

    return registry
