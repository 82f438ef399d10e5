"""The route table: a registry compiled for fast lookup, swapped atomically.

A new table is built beside the old one and replaces it with one assignment,
so a request sees either the old or the new table, never a mix. Breakers
survive a swap when a route's breaker settings did not change, so editing an
unrelated field does not reset what the proxy has learned.
"""

from __future__ import annotations

from typing import Callable, Optional

from orchestrator.core import urls
from orchestrator.core.breaker import CircuitBreaker, Clock, State
from orchestrator.core.model import Route
from orchestrator.core.registry import Registry

# Admin statuses (standalone API). Anything but "active" answers 503.
STATUSES = ("active", "inactive", "maintenance")


class RouteRuntime:
    """One route plus everything the hot path needs precomputed."""

    __slots__ = ("route", "origin", "base_path", "methods", "allow", "breaker", "status")

    def __init__(self, route: Route, breaker: CircuitBreaker, status: str) -> None:
        self.route = route
        self.origin, self.base_path = urls.split_base(route.url)
        self.methods = frozenset(route.methods) | ({"HEAD"} if "GET" in route.methods else frozenset())
        self.allow = ", ".join(sorted(self.methods)).encode()
        self.breaker = breaker
        self.status = status

    @property
    def serving(self) -> bool:
        return not self.route.disabled and self.status == "active"

    def health_target(self) -> Optional[str]:
        hc = self.route.health_check
        if not hc.enabled or not self.serving:
            return None
        return self.origin + self.base_path + hc.path


class RouteTable:
    __slots__ = ("routes", "revision")

    def __init__(self, routes: dict[str, RouteRuntime], revision: str) -> None:
        self.routes = routes
        self.revision = revision

    @classmethod
    def empty(cls) -> "RouteTable":
        return cls({}, "")


BreakerFactory = Callable[[Route], CircuitBreaker]


def build_table(
    registry: Registry,
    previous: RouteTable,
    statuses: dict[str, str],
    make_breaker: BreakerFactory,
) -> RouteTable:
    routes: dict[str, RouteRuntime] = {}
    for name, route in registry.routes.items():
        old = previous.routes.get(name)
        status = statuses.get(name, "active")
        if old is not None and old.route is route and old.status == status:
            routes[name] = old  # the same route (a RouteMemo kept it): nothing to recompute
            continue
        if old is not None and old.route.circuit_breaker == route.circuit_breaker:
            breaker = old.breaker
        else:
            breaker = make_breaker(route)
        routes[name] = RouteRuntime(route, breaker, status)
    return RouteTable(routes, registry.revision)


def breaker_factory(clock: Clock, on_transition: Callable[[str, State, State], None]) -> BreakerFactory:
    def make(route: Route) -> CircuitBreaker:
        name = route.name
        return CircuitBreaker(
            route.circuit_breaker, clock=clock,
            on_transition=lambda old, new: on_transition(name, old, new),
        )
    return make
