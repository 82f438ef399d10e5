"""`/config/*`: the standalone configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, Query

from orchestrator.core.config_file import entry_from_route
from orchestrator.proxy.api.common import ApiError, get_state, writable_source
from orchestrator.proxy.source import WritableSource
from orchestrator.proxy.state import AppState

router = APIRouter(prefix="/config", tags=["config"])


@router.get("/status", summary="Configuration status")
async def config_status(state: AppState = Depends(get_state)) -> dict[str, Any]:
    return {"mode": state.mode, **state.source.status()}


@router.post("/reload", summary="Re-read the configuration file")
async def reload(source: WritableSource = Depends(writable_source),
                 state: AppState = Depends(get_state)) -> dict[str, Any]:
    result = await source.reload()
    if not result.ok:
        raise ApiError(422, "invalid_config",
                       "the configuration file is invalid; the running registry was kept", errors=result.errors)
    return {"status": "reloaded", "added": result.added, "removed": result.removed, "updated": result.updated,
            "endpoints": len(state.table.routes), "registry_revision": state.registry.revision}


@router.get("/endpoints", summary="Endpoints as configured")
async def config_endpoints(state: AppState = Depends(get_state)) -> dict[str, Any]:
    routes = state.registry.routes.values()
    items = [{**entry_from_route(r), "source": r.source.kind} for r in routes]
    return {"endpoints": items, "total": len(items)}


@router.post("/validate", summary="Validate a configuration file without applying it")
async def validate(
    config_path: Optional[str] = Query(None, description="a YAML file in the configuration's folder"),
    source: WritableSource = Depends(writable_source),
) -> dict[str, Any]:
    path = source.path if not config_path else _confined(Path(config_path), source.path.parent)
    loaded = await source.load_file(path)
    return {"valid": loaded.ok, "config_path": str(path), "endpoints": len(loaded.routes), "errors": loaded.errors}


def _confined(path: Path, folder: Path) -> Path:
    """Only files inside the configuration's folder: this API must not read arbitrary files."""
    folder = folder.resolve()
    candidate = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if folder not in candidate.parents:
        raise ApiError(400, "path_not_allowed", f"config_path must name a file inside {folder}")
    return candidate
