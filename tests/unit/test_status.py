"""Endpoint status from verdicts and replica reports (operator/status.py): pure."""

from __future__ import annotations

from orchestrator.core.compile import Verdict
from orchestrator.core.contract import Report, RouteReport
from orchestrator.operator import status

ACCEPTED = Verdict(True, "Accepted", "the Endpoint is valid and holds its route", "pay", 3)
CONFLICT = Verdict(False, "RouteConflict", "route 'pay' is already held by Endpoint a/pay", "pay", None)


def report(replica: str, health: str = "Healthy", breaker: str = "Closed", generation: int = 3,
           uid: str = "u1", route: str = "pay") -> Report:
    return Report(replica, heartbeat=0.0, revision="r", routes={route: RouteReport(health, breaker, uid, generation)})


def cond(st: dict, ctype: str) -> dict:
    c = status.condition(st, ctype)
    assert c is not None
    return dict(c)


def test_programmed_counts_replicas_serving_this_generation() -> None:
    reports = [report("a"), report("b"), report("c", generation=2)]
    agg = status.aggregate(reports, "pay", "u1", 3, disabled=False)
    assert (agg.reporting, agg.programmed, agg.healthy) == (3, 2, 2)
    st = status.desired_status(ACCEPTED, agg, 3, None, "T0")
    assert cond(st, "Programmed")["status"] == "False"
    assert cond(st, "Programmed")["message"] == "loaded on 2 of 3 proxy replicas"
    assert cond(st, "Ready") | {"type": "Programmed"} == cond(st, "Programmed")


def test_a_draining_replica_counts_neither_as_reporting_nor_programmed() -> None:
    # Three replicas, one received SIGTERM and still reports the current generation; a
    # new one has not loaded it yet: 1 of 2, the leaving replica changes nothing.
    leaving = report("old")
    leaving.draining = True
    agg = status.aggregate([report("a"), report("b"), leaving], "pay", "u1", 3, disabled=False)
    assert (agg.reporting, agg.programmed) == (2, 2)
    st = status.desired_status(ACCEPTED, agg, 3, None, "T0")
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Ready")["message"] == "loaded on 2 of 2 proxy replicas"
    # A draining replica that is behind (it will never load the new generation) does not hold Ready back.
    behind = report("old", generation=2)
    behind.draining = True
    agg = status.aggregate([report("a"), behind], "pay", "u1", 3, disabled=False)
    assert status.desired_status(ACCEPTED, agg, 3, st, "T1")["conditions"][2]["status"] == "True"


def test_a_report_for_another_uid_does_not_count() -> None:
    agg = status.aggregate([report("a", uid="someone-else")], "pay", "u1", 3, disabled=False)
    assert agg.programmed == 0 and agg.health == "Unknown"


def test_health_is_the_majority_and_a_tie_reads_unhealthy() -> None:
    def health(*states: str) -> str:
        reports = [report(str(i), health=h) for i, h in enumerate(states)]
        return status.aggregate(reports, "pay", "u1", 3, disabled=False).health
    assert health("Healthy", "Healthy", "Unhealthy") == "Healthy"
    assert health("Healthy", "Unhealthy") == "Unhealthy"
    assert health("Unknown", "Unknown") == "Unknown"
    assert status.aggregate([report("a")], "pay", "u1", 3, disabled=True).health == "Disabled"


def test_breaker_open_on_any_replica_is_open_with_a_count() -> None:
    agg = status.aggregate([report("a", breaker="Open"), report("b"), report("c", breaker="HalfOpen")],
                           "pay", "u1", 3, disabled=False)
    assert (agg.breaker, agg.breaker_open, agg.breaker_half_open) == ("Open", 1, 1)
    st = status.desired_status(ACCEPTED, agg, 3, None, "T0")
    assert st["circuitBreaker"] == "Open" and st["replicas"]["breakerOpen"] == 1


def test_no_replicas_reads_unknown_not_false() -> None:
    st = status.desired_status(ACCEPTED, status.aggregate([], "pay", "u1", 3, False), 3, None, "T0")
    assert cond(st, "Programmed")["status"] == "Unknown"
    assert cond(st, "Programmed")["reason"] == "NoProxyReplicas"


def test_conflict_is_not_accepted_and_holds_no_route() -> None:
    st = status.desired_status(CONFLICT, status.aggregate([report("a")], "pay", "u1", None, False), 5, None, "T0")
    assert cond(st, "Accepted") == {"type": "Accepted", "status": "False", "reason": "RouteConflict",
                                    "message": CONFLICT.message, "observedGeneration": 5, "lastTransitionTime": "T0"}
    assert st["route"] is None and cond(st, "Ready")["status"] == "False"


def test_transition_times_move_only_with_the_status() -> None:
    agg = status.aggregate([report("a")], "pay", "u1", 3, disabled=False)
    first = status.desired_status(ACCEPTED, agg, 3, None, "T0")
    again = status.desired_status(ACCEPTED, agg, 3, first, "T1")
    assert status.same_status(first, again)
    assert again["lastUpdateTime"] == "T0" and cond(again, "Ready")["lastTransitionTime"] == "T0"
    sick = status.aggregate([report("a", health="Unhealthy")], "pay", "u1", 3, disabled=False)
    later = status.desired_status(ACCEPTED, sick, 3, again, "T2")
    assert not status.same_status(later, again)
    assert cond(later, "Healthy")["lastTransitionTime"] == "T2"
    assert cond(later, "Ready")["lastTransitionTime"] == "T0"
    assert later["lastUpdateTime"] == "T2"


def test_events_for_each_visible_transition_once() -> None:
    healthy = status.desired_status(ACCEPTED, status.aggregate([report("a")], "pay", "u1", 3, False), 3, None, "T0")
    assert [e[1] for e in status.events_between(None, healthy)] == ["Programmed"]
    assert status.events_between(healthy, healthy) == []
    down = status.desired_status(
        ACCEPTED, status.aggregate([report("a", health="Unhealthy", breaker="Open")], "pay", "u1", 3, False),
        3, healthy, "T1")
    kinds = [(e[0], e[1]) for e in status.events_between(healthy, down)]
    assert kinds == [("Warning", "Unhealthy"), ("Warning", "CircuitOpen")]
    back = status.desired_status(ACCEPTED, status.aggregate([report("a")], "pay", "u1", 3, False), 3, down, "T2")
    assert [e[1] for e in status.events_between(down, back)] == ["Healthy", "CircuitClosed"]
    conflict = status.desired_status(CONFLICT, status.aggregate([], "pay", "u1", None, False), 4, back, "T3")
    assert [(e[0], e[1]) for e in status.events_between(back, conflict)] == [("Warning", "RouteConflict")]
