"""What the admin routers share: access to the app state, errors, views."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from orchestrator.core.config_file import entry_from_route
from orchestrator.proxy.route_table import RouteRuntime
from orchestrator.proxy.source import WritableSource
from orchestrator.proxy.state import AppState

CLUSTER_WRITE_HINT = (
    "this proxy runs in cluster mode: its routes come from Endpoint resources "
    "(endpoints.orchestrator.dev). Change them with `kubectl apply -f endpoint.yaml` "
    "(apiVersion: orchestrator.dev/v1alpha1, kind: Endpoint) or `kubectl delete endpoints.orchestrator.dev NAME`"
)


class ApiError(HTTPException):
    """An admin-API error with a stable JSON shape (see app.py's handlers)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code
        self.extra = extra


def get_state(request: Request) -> AppState:
    return request.app.state.gateway  # type: ignore[no-any-return]


def writable_source(request: Request) -> WritableSource:
    """Dependency for admin writes: refused unless the source takes them (in cluster
    mode the operator owns the registry)."""
    source = get_state(request).source
    if not isinstance(source, WritableSource):
        raise ApiError(409, "managed_by_operator", CLUSTER_WRITE_HINT)
    return source


def route_or_404(state: AppState, name: str) -> RouteRuntime:
    rt = state.route(name)
    if rt is None:
        raise ApiError(404, "endpoint_not_found", f"no endpoint is registered under the name {name!r}")
    return rt


def endpoint_view(state: AppState, rt: RouteRuntime, detail: bool = False) -> dict[str, Any]:
    route = rt.route
    view: dict[str, Any] = {
        **entry_from_route(route),
        "status": rt.status if not route.disabled else "disabled",
        "health": state.health_of(rt).value,
        "circuit_breaker": rt.breaker.current_state().value,
        "proxy_path": f"/orchestrator/{route.name}/",
        "source": route.source.kind,
    }
    if detail:
        view["settings"] = route.to_dict()
        view["circuit_breaker_stats"] = rt.breaker.snapshot()
    return view


def health_view(state: AppState, rt: RouteRuntime) -> dict[str, Any]:
    tracker = state.health.tracker_of(rt)
    view: dict[str, Any] = {
        "name": rt.route.name,
        "health": state.health_of(rt).value,
        "target": rt.health_target(),
        "last_checked_at": None,
        "last_error": None,
        "last_latency_ms": None,
        "consecutive_successes": 0,
        "consecutive_failures": 0,
        "checks": 0,
        "circuit_breaker": rt.breaker.snapshot(),
    }
    if tracker is not None:
        view.update(
            last_checked_at=tracker.last_checked_at,
            last_error=tracker.last_error,
            last_latency_ms=None if tracker.last_latency_ms is None else round(tracker.last_latency_ms, 2),
            consecutive_successes=tracker.successes,
            consecutive_failures=tracker.failures,
            checks=tracker.total_checks,
        )
    return view


def paginate(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    return {"total": len(items), "limit": limit, "offset": offset, "items": items[offset:offset + limit]}

