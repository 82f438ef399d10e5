"""`/router/*`: the route table, connectivity tests and path debugging."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from fastapi import APIRouter, Depends, Request

from orchestrator.core import urls
from orchestrator.proxy.api.common import get_state, route_or_404
from orchestrator.proxy.state import AppState

router = APIRouter(prefix="/router", tags=["router"])


@router.get("/routes", summary="Active routes")
async def routes(state: AppState = Depends(get_state)) -> dict[str, Any]:
    items = [
        {"name": name, "path": f"/orchestrator/{name}/{{path}}", "upstream": rt.route.url,
         "methods": sorted(rt.methods), "serving": rt.serving, "timeout": rt.route.timeout_seconds}
        for name, rt in sorted(state.table.routes.items())
    ]
    return {"routes": items, "total": len(items), "registry_revision": state.table.revision}


@router.get("/test/{name}", summary="Test connectivity to an endpoint's backend")
async def test(name: str, state: AppState = Depends(get_state)) -> dict[str, Any]:
    rt = route_or_404(state, name)
    url = rt.health_target() or rt.origin + rt.base_path + rt.route.health_check.path
    started = time.perf_counter()
    result: dict[str, Any] = {"name": name, "url": url}
    assert state.session is not None  # opened by the lifespan, before any request
    try:
        async with state.session.get(url, timeout=aiohttp.ClientTimeout(total=rt.route.health_check.timeout_seconds),
                                     allow_redirects=False) as resp:
            await resp.read()
            result.update(reachable=True, status_code=resp.status)
    except asyncio.TimeoutError:
        result.update(reachable=False, error="timed out")
    except aiohttp.ClientError as exc:
        result.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


@router.post("/refresh", summary="Rebuild the route table from the current registry")
async def refresh(state: AppState = Depends(get_state)) -> dict[str, Any]:
    await state.source.refresh()
    return {"status": "refreshed", "routes": len(state.table.routes), "registry_revision": state.table.revision}


@router.get("/debug/{name}/{path:path}", summary="Show the exact upstream URL a path resolves to")
async def debug(name: str, path: str, request: Request, state: AppState = Depends(get_state)) -> dict[str, Any]:
    rt = route_or_404(state, name)
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    prefix = f"/router/debug/{name}"
    raw_sub = raw[len(prefix):].lstrip("/") if raw.startswith(prefix) else path
    query = request.scope.get("query_string", b"").decode("latin-1")
    result: dict[str, Any] = {"name": name, "path": raw_sub, "backend": rt.route.url,
                              "methods": sorted(rt.methods), "serving": rt.serving}
    try:
        result["upstream_url"] = urls.upstream_url(rt.origin, rt.base_path, raw_sub, query)
        result["allowed"] = True
    except urls.UnsafePath as exc:
        result.update(upstream_url=None, allowed=False, reason=str(exc))
    return result
