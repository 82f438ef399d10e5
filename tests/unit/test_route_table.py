"""The route table: what a swap keeps of the old table."""

from __future__ import annotations

from orchestrator.core.breaker import CircuitBreaker, State
from orchestrator.core.model import BreakerSettings, Route
from orchestrator.core.registry import Registry
from orchestrator.proxy.route_table import RouteTable, breaker_factory, build_table


def make_breaker():
    return breaker_factory(clock=lambda: 0.0, on_transition=lambda name, old, new: None)


def test_the_same_route_object_keeps_its_runtime_and_an_edited_route_keeps_its_breaker() -> None:
    pay, users = Route(name="pay", url="http://pay.ns.svc/api"), Route(name="users", url="http://users.ns.svc")
    first = build_table(Registry.build([pay, users]), RouteTable.empty(), {}, make_breaker())
    edited = Route(name="users", url="http://users.ns.svc", methods=("GET", "POST"))
    second = build_table(Registry.build([pay, edited]), first, {}, make_breaker())
    assert second.routes["pay"] is first.routes["pay"]  # nothing recomputed for an unchanged route
    assert second.routes["users"] is not first.routes["users"] and second.routes["users"].methods >= {"POST"}
    assert second.routes["users"].breaker is first.routes["users"].breaker  # same breaker settings: kept
    stricter = Route(name="pay", url="http://pay.ns.svc/api", circuit_breaker=BreakerSettings(failure_threshold=1))
    third = build_table(Registry.build([stricter, edited]), second, {}, make_breaker())
    assert third.routes["pay"].breaker is not second.routes["pay"].breaker
    assert isinstance(third.routes["pay"].breaker, CircuitBreaker)
    assert third.routes["pay"].breaker.current_state() is State.CLOSED


def test_a_changed_admin_status_is_not_taken_from_the_old_runtime() -> None:
    pay = Route(name="pay", url="http://pay.ns.svc")
    first = build_table(Registry.build([pay]), RouteTable.empty(), {}, make_breaker())
    second = build_table(Registry.build([pay]), first, {"pay": "maintenance"}, make_breaker())
    assert second.routes["pay"].status == "maintenance" and not second.routes["pay"].serving
    assert second.routes["pay"].breaker is first.routes["pay"].breaker
