"""`/config/*`: the standalone configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, Query

from orchestrator.core.config_file import entry_from_route
from orchestrator.proxy.api.common import ApiError, get_state, require_standalone
from orchestrator.proxy.state import AppState

router = APIRouter(prefix="/config", tags=["config"])


@router.get("/status", summary="Configuration status")
async def config_status(state: AppState = Depends(get_state)) -> dict[str, Any]:
    source = state.source
    if state.mode != "standalone":
        return {"mode": state.mode, **source.status()}
    return {
        "mode": state.mode,
        "config_path": str(source.path),
        "config_exists": source.path.exists(),
        "loaded": source.last is not None,
        "last_loaded_at": source.last_loaded_at,
        "endpoints_in_file": len(source.file_routes),
        "endpoints_registered_by_api": len(source.api_routes),
        "log_level": source.last.log_level if source.last else None,
        "last_errors": source.last_errors,
        "registry_revision": state.registry.revision,
    }


@router.post("/reload", summary="Re-read the configuration file")
async def reload(state: AppState = Depends(require_standalone)) -> dict[str, Any]:
    result = await state.source.reload()
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
    state: AppState = Depends(require_standalone),
) -> dict[str, Any]:
    source = state.source
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
