"""`/health/*`: active health checks and circuit breakers."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends

from orchestrator.core.breaker import State
from orchestrator.core.health import Health
from orchestrator.proxy.api.common import get_state, health_view, route_or_404
from orchestrator.proxy.state import AppState

router = APIRouter(prefix="/health", tags=["health"])


def _overall(state: AppState) -> dict[str, Any]:
    routes = state.table.routes.values()
    health = Counter(state.health_of(rt) for rt in routes)
    breakers = Counter(rt.breaker.current_state() for rt in routes)
    bad = health[Health.UNHEALTHY] + breakers[State.OPEN]
    if bad:
        status = "unhealthy" if bad >= max(1, len(state.table.routes)) else "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "endpoints": {"total": len(state.table.routes), "healthy": health[Health.HEALTHY],
                      "unhealthy": health[Health.UNHEALTHY], "unknown": health[Health.UNKNOWN],
                      "disabled": health[Health.DISABLED]},
        "circuit_breakers": {"closed": breakers[State.CLOSED], "open": breakers[State.OPEN],
                             "half_open": breakers[State.HALF_OPEN]},
    }


@router.get("/status", summary="Overall health, including circuit breakers")
async def status(state: AppState = Depends(get_state)) -> dict[str, Any]:
    return _overall(state)


@router.get("/endpoints", summary="Health of every endpoint")
async def endpoints(state: AppState = Depends(get_state)) -> dict[str, Any]:
    items = [health_view(state, rt) for _, rt in sorted(state.table.routes.items())]
    return {"endpoints": items, "total": len(items)}


@router.get("/endpoints/{name}", summary="Health and breaker state of one endpoint")
async def endpoint(name: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    return health_view(state, route_or_404(state, name))


@router.post("/check/{name}", summary="Probe one endpoint now")
async def check(name: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    rt = route_or_404(state, name)
    tracker = await state.health.check_now(rt)
    view = health_view(state, rt)
    view["checked"] = tracker is not None
    if tracker is None:
        view["reason"] = "health checks are off for this endpoint (disabled, inactive, or checks disabled)"
    return view


@router.get("/unhealthy", summary="Endpoints whose health checks fail")
async def unhealthy(state: AppState = Depends(get_state)) -> dict[str, Any]:
    items = [health_view(state, rt) for _, rt in sorted(state.table.routes.items())
             if state.health_of(rt) is Health.UNHEALTHY]
    return {"endpoints": items, "total": len(items)}


@router.get("/summary", summary="Counts and the endpoints that need attention")
async def summary(state: AppState = Depends(get_state)) -> dict[str, Any]:
    attention = [
        {"name": name, "health": state.health_of(rt).value, "circuit_breaker": rt.breaker.current_state().value}
        for name, rt in sorted(state.table.routes.items())
        if state.health_of(rt) is Health.UNHEALTHY or rt.breaker.current_state() is not State.CLOSED
    ]
    return {**_overall(state), "needs_attention": attention}


@router.get("/circuit-breakers", summary="Circuit breaker of every endpoint")
async def circuit_breakers(state: AppState = Depends(get_state)) -> dict[str, Any]:
    items = {name: rt.breaker.snapshot() for name, rt in sorted(state.table.routes.items())}
    return {"circuit_breakers": items, "total": len(items)}


@router.get("/circuit-breakers/open", summary="Breakers that are open (or half-open)")
async def open_breakers(state: AppState = Depends(get_state)) -> dict[str, Any]:
    items = {name: rt.breaker.snapshot() for name, rt in sorted(state.table.routes.items())
             if rt.breaker.current_state() is not State.CLOSED}
    return {"circuit_breakers": items, "total": len(items)}
