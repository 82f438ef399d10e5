"""The proxy's application state: the one mutable object the handlers share.

It owns the current route table (replaced whole on every registry change),
the metrics, the health monitor and the upstream HTTP session. Sources of
routes (the standalone config file, or the cluster's registry ConfigMaps)
call `apply_registry`; nothing else changes the table.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Optional

import aiohttp

from orchestrator.core.breaker import State
from orchestrator.core.health import Health
from orchestrator.core.registry import Registry
from orchestrator.proxy.health_checker import HealthMonitor
from orchestrator.proxy.metrics import Metrics
from orchestrator.proxy.route_table import RouteRuntime, RouteTable, breaker_factory, build_table
from orchestrator.proxy.source import Mode, NoSource, RegistrySource

if TYPE_CHECKING:  # imported at run time only by the lifespan that creates it (it needs the loop)
    from orchestrator.proxy.upstream import Pool

log = logging.getLogger(__name__)

Listener = Callable[[], None]


class AppState:
    # The data plane's upstream pool: created in the lifespan (it needs the running loop).
    upstream: Pool

    def __init__(self, mode: Mode, clock: Callable[[], float] = time.monotonic, allow_link_local: bool = False,
                 health_check_concurrency: int = 32) -> None:
        self.mode = mode
        self.started_at = time.time()
        self.clock = clock
        self.metrics = Metrics()
        self.table = RouteTable.empty()
        self.registry = Registry.build([])
        self.registry_loaded_at: Optional[float] = None
        self.ready = False  # True once a registry has been loaded
        self.allow_link_local = allow_link_local  # the SSRF guard's opt-out (--allow-link-local)
        self.draining = False  # SIGTERM arrived: /readyz says 503 so traffic moves elsewhere
        # Why the newest registry was not loaded (e.g. a format from a newer release); the
        # last good one is still served. Shown in /readyz and the cluster report.
        self.registry_problem: Optional[str] = None
        self.statuses: dict[str, str] = {}  # admin status overrides (standalone)
        self.health = HealthMonitor(self.metrics, concurrency=health_check_concurrency, clock=clock,
                                    on_change=lambda target, h: self.notify())
        self.session: Optional[aiohttp.ClientSession] = None  # health checks, /router/test
        self.source: RegistrySource = NoSource()  # set by standalone.build or cluster.build
        self._make_breaker = breaker_factory(clock, self._breaker_moved)
        self._listeners: list[Listener] = []

    # -- registry ---------------------------------------------------------
    def apply_registry(self, registry: Registry, arrived: Optional[float] = None) -> None:
        """Swap in a new registry atomically (one assignment of the table). `arrived`: when
        its source saw the change (this state's clock), for the log line."""
        table = build_table(registry, self.table, self.statuses, self._make_breaker)
        self.registry = registry
        self.table = table
        self.registry_loaded_at = time.time()
        self.ready = True
        self.registry_problem = None
        self.health.update(table)
        took = "" if arrived is None else f" ({(self.clock() - arrived) * 1000:.0f} ms after it arrived)"
        log.info("registry revision %s loaded: %d routes%s", registry.revision or "(empty)", len(registry.routes), took)
        self.notify()

    def begin_drain(self) -> None:
        """SIGTERM: /readyz turns 503, and the report says so (the operator counts this replica out)."""
        self.draining = True
        self.notify()

    def registry_refused(self, problem: Optional[str]) -> None:
        """Record (or clear, with None) why the newest registry is not served."""
        if problem != self.registry_problem:
            self.registry_problem = problem
            self.notify()

    def set_status(self, name: str, status: str) -> None:
        self.statuses[name] = status
        self.apply_registry(self.registry)

    # -- views --------------------------------------------------------------
    def route(self, name: str) -> Optional[RouteRuntime]:
        return self.table.routes.get(name)

    def health_of(self, rt: RouteRuntime) -> Health:
        return self.health.health_of(rt)

    def render_metrics(self) -> str:
        routes = sorted(self.table.routes.items())
        return self.metrics.render(
            ((n, rt.breaker.current_state()) for n, rt in routes),
            ((n, self.health_of(rt)) for n, rt in routes),
        )

    # -- change notification (the cluster reporter listens) -----------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _breaker_moved(self, route: str, old: State, new: State) -> None:
        log.warning("circuit breaker of %s: %s -> %s", route, old.value, new.value)
        self.notify()
