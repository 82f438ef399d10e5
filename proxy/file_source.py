"""Standalone mode's registry source: `config/config.yaml` plus admin-API changes.

The file is the durable source. Endpoints registered through
`POST /registry/endpoints` live beside the file's entries until the process
stops or `POST /registry/sync` makes the registry match the file again.
A file that fails validation is never applied: the running registry stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Optional

from orchestrator.core import config_file, model, spec
from orchestrator.core.model import Route, Source
from orchestrator.core.registry import Registry
from orchestrator.proxy.source import ApplyResult
from orchestrator.proxy.state import AppState

log = logging.getLogger(__name__)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def ensure_config(path: Path) -> bool:
    """Create the sample config if the file is missing; True when created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_file.SAMPLE_CONFIG, encoding="utf-8")
    return True


class FileSource:
    """The standalone registry: a configuration file plus routes registered by API (a WritableSource)."""

    def __init__(self, state: AppState, path: Path, log_level: Optional[str] = None) -> None:
        self.state = state
        self.path = path
        self.log_level = log_level  # from --log-level / LOG_LEVEL: wins over the file's log_level
        self.file_routes: dict[str, Route] = {}
        self.api_routes: dict[str, Route] = {}
        self.last: Optional[config_file.LoadedConfig] = None
        self.last_loaded_at: Optional[float] = None
        self.last_errors: list[str] = []

    async def start(self) -> None:
        result = await self.reload()
        if not result.ok:
            raise RuntimeError(f"{self.path} is invalid:\n  " + "\n  ".join(result.errors))

    async def stop(self) -> None:
        return None

    async def refresh(self) -> None:
        self.state.apply_registry(self.state.registry)

    def status(self) -> dict[str, Any]:
        return {
            "config_path": str(self.path),
            "config_exists": self.path.exists(),
            "loaded": self.last is not None,
            "last_loaded_at": self.last_loaded_at,
            "endpoints_in_file": len(self.file_routes),
            "endpoints_registered_by_api": len(self.api_routes),
            "log_level": self.last.log_level if self.last else None,
            "last_errors": self.last_errors,
            "registry_revision": self.state.registry.revision,
        }

    async def load_file(self, path: Optional[Path] = None) -> config_file.LoadedConfig:
        """Read and validate a config file off the event loop; changes nothing."""
        target = path or self.path
        try:
            text = await asyncio.to_thread(read_text, target)
        except OSError as exc:
            return config_file.LoadedConfig(errors=[f"cannot read {target}: {exc.strerror or exc}"], parsed=False)
        return config_file.parse_config(text, Source(kind="File", name=str(target)),
                                        allow_link_local=self.state.allow_link_local)

    async def reload(self, drop_api_routes: bool = False) -> ApplyResult:
        loaded = await self.load_file()
        if not loaded.ok:
            self.last_errors = loaded.errors
            log.error("configuration %s refused, keeping the running registry: %s", self.path, "; ".join(loaded.errors))
            return ApplyResult(ok=False, errors=loaded.errors)
        self.last = loaded
        self.last_errors = []
        self.last_loaded_at = time.time()
        logging.getLogger("orchestrator").setLevel(self.log_level or loaded.log_level)
        before = dict(self.state.registry.routes)
        self.file_routes = {r.name: r for r in loaded.routes}
        if drop_api_routes:
            self.api_routes = {}
        else:
            # A name now in the file is the file's again.
            for name in list(self.api_routes):
                if name in self.file_routes:
                    del self.api_routes[name]
        return self._apply(before)

    @property
    def defaults(self) -> model.Defaults:
        return self.last.defaults if self.last else model.Defaults()

    def register(self, entry: config_file.EndpointConfig) -> Route:
        """Add a route from the admin API (raises ValueError for a link-local backend)."""
        spec.check_link_local(entry.url, self.state.allow_link_local)
        route = config_file.route_from_entry(entry, self.defaults, Source(kind="API", entry=entry.name))
        self.api_routes[route.name] = route
        self._apply(dict(self.state.registry.routes))
        return route

    def unregister(self, name: str) -> bool:
        found = self.api_routes.pop(name, None) is not None or self.file_routes.pop(name, None) is not None
        if found:
            self.state.statuses.pop(name, None)
            self._apply(dict(self.state.registry.routes))
        return found

    def _apply(self, before: dict[str, Route]) -> ApplyResult:
        routes = {**self.file_routes, **self.api_routes}
        self.state.apply_registry(Registry.build(routes.values()))
        return ApplyResult(
            ok=True,
            added=sorted(set(routes) - set(before)),
            removed=sorted(set(before) - set(routes)),
            updated=sorted(n for n in routes if n in before and before[n] != routes[n]),
        )
