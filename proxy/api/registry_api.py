"""`/registry/*`: the endpoints the proxy serves, and admin changes to them."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from orchestrator.core.config_file import EndpointConfig
from orchestrator.proxy.api.common import ApiError, endpoint_view, get_state, paginate, route_or_404, writable_source
from orchestrator.proxy.route_table import STATUSES
from orchestrator.proxy.source import WritableSource
from orchestrator.proxy.state import AppState

router = APIRouter(prefix="/registry", tags=["registry"])

StatusFilter = Literal["active", "inactive", "maintenance", "disabled"]


class RegisterRequest(BaseModel):
    config: EndpointConfig


@router.get("/endpoints", summary="List registered endpoints")
async def list_endpoints(
    status: Optional[StatusFilter] = Query(None, description="only endpoints with this status"),
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    state: AppState = Depends(get_state),
) -> dict[str, Any]:
    views = [endpoint_view(state, rt) for _, rt in sorted(state.table.routes.items())]
    if status is not None:
        views = [v for v in views if v["status"] == status]
    page = paginate(views, limit, offset)
    return {"endpoints": page.pop("items"), **page}


@router.get("/endpoints/{name}", summary="One endpoint, with its settings and breaker")
async def get_endpoint(name: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    return endpoint_view(state, route_or_404(state, name), detail=True)


@router.post("/endpoints", status_code=201, summary="Register an endpoint (standalone only)")
async def register(body: RegisterRequest, source: WritableSource = Depends(writable_source),
                   state: AppState = Depends(get_state)) -> dict[str, Any]:
    if state.route(body.config.name) is not None:
        raise ApiError(409, "endpoint_exists",
                       f"an endpoint named {body.config.name!r} is already registered; delete it first")
    try:
        source.register(body.config)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"the request is invalid: config.{exc}") from None
    return {"status": "registered", "endpoint": endpoint_view(state, route_or_404(state, body.config.name))}


@router.put("/endpoints/{name}/status", summary="Set an endpoint's status (standalone only)")
async def set_status(
    name: str,
    status: Literal["active", "inactive", "maintenance"] = Query(..., description=" | ".join(STATUSES)),
    _: WritableSource = Depends(writable_source),
    state: AppState = Depends(get_state),
) -> dict[str, Any]:
    route_or_404(state, name)
    state.set_status(name, status)
    return {"status": "updated", "endpoint": endpoint_view(state, route_or_404(state, name))}


@router.delete("/endpoints/{name}", summary="Unregister an endpoint (standalone only)")
async def unregister(name: str, source: WritableSource = Depends(writable_source),
                     state: AppState = Depends(get_state)) -> dict[str, Any]:
    route_or_404(state, name)
    source.unregister(name)
    return {"status": "unregistered", "name": name}


@router.get("/stats", summary="Registry statistics")
async def stats(state: AppState = Depends(get_state)) -> dict[str, Any]:
    views = [endpoint_view(state, rt) for rt in state.table.routes.values()]
    return {
        "total_endpoints": len(views),
        "by_status": dict(Counter(v["status"] for v in views)),
        "by_health": dict(Counter(v["health"] for v in views)),
        "by_circuit_breaker": dict(Counter(v["circuit_breaker"] for v in views)),
        "by_source": dict(Counter(v["source"] for v in views)),
        "registry_revision": state.registry.revision,
        "registry_loaded_at": state.registry_loaded_at,
    }


@router.post("/sync", summary="Make the registry match the configuration file (standalone only)")
async def sync(source: WritableSource = Depends(writable_source),
               state: AppState = Depends(get_state)) -> dict[str, Any]:
    result = await source.reload(drop_api_routes=True)
    if not result.ok:
        raise ApiError(422, "invalid_config",
                       "the configuration file is invalid; the running registry was kept", errors=result.errors)
    return {"status": "synced", "added": result.added, "removed": result.removed, "updated": result.updated,
            "endpoints": len(state.table.routes)}
