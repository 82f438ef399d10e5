"""Service-level routes: `/`, `/health`, readiness, liveness and `/metrics`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from orchestrator.version import __version__
from orchestrator.proxy.api.common import get_state
from orchestrator.proxy.state import AppState

router = APIRouter(tags=["service"])


@router.get("/", summary="Service information")
async def root(state: AppState = Depends(get_state)) -> dict[str, Any]:
    return {
        "service": "Orchestrator",
        "description": "API gateway: /orchestrator/{name}/{path} forwards to the endpoint registered as {name}",
        "version": __version__,
        "mode": state.mode,
        "status": "running",
        "endpoints": len(state.table.routes),
        "registry_revision": state.registry.revision,
        "docs": "/docs",
        "redoc": "/redoc",
        "metrics": "/metrics",
    }


@router.get("/health", summary="Liveness of the service itself")
async def health(state: AppState = Depends(get_state)) -> dict[str, Any]:
    return {
        "status": "healthy",
        "mode": state.mode,
        "ready": state.ready,
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        "endpoints": len(state.table.routes),
        "registry_revision": state.registry.revision,
    }


@router.get("/livez", summary="Kubernetes liveness probe", include_in_schema=False)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready once a registry has been loaded")
async def readyz(state: AppState = Depends(get_state)) -> JSONResponse:
    body = {"ready": state.ready and not state.draining, "draining": state.draining,
            "registry_revision": state.registry.revision, "endpoints": len(state.table.routes)}
    if state.registry_problem:
        # Still Ready: the last good registry is served (a newer format waits for a newer proxy).
        body["registry_problem"] = state.registry_problem
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(state: AppState = Depends(get_state)) -> PlainTextResponse:
    return PlainTextResponse(state.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")
