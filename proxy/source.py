"""What the proxy needs of a registry source: the standalone file, or the cluster's registry.

The admin API asks the source's type what it can do (`isinstance(source,
WritableSource)`) instead of comparing mode strings: only a writable source
takes admin writes; the cluster's registry is the operator's to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, runtime_checkable

from orchestrator.core import config_file
from orchestrator.core.model import Route

Mode = Literal["standalone", "cluster"]


@dataclass
class ApplyResult:
    """The outcome of a reload: refused with errors, or the route names that changed."""

    ok: bool
    errors: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


@runtime_checkable
class RegistrySource(Protocol):
    """A read-only source: it loads routes into the AppState by itself (`apply_registry`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh(self) -> None:
        """Load the registry again now (`POST /router/refresh`)."""

    def status(self) -> dict[str, Any]:
        """What `GET /config/status` shows about this source."""


@runtime_checkable
class WritableSource(RegistrySource, Protocol):
    """A source the admin API may change: a configuration file plus routes registered by API."""

    path: Path

    async def load_file(self, path: Optional[Path] = None) -> config_file.LoadedConfig:
        """Read and validate a configuration file; changes nothing."""

    async def reload(self, drop_api_routes: bool = False) -> ApplyResult: ...

    def register(self, entry: config_file.EndpointConfig) -> Route:
        """Add a route (ValueError: refused, e.g. a link-local backend)."""

    def unregister(self, name: str) -> bool: ...


class NoSource:
    """The placeholder until `standalone.build` or `cluster.build` sets the real source."""

    async def start(self) -> None:
        raise RuntimeError("the proxy has no registry source")

    async def stop(self) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}
