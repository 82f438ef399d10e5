"""Endpoint status from the compiler's verdict and the proxies' reports: pure.

`desired_status` returns the whole `.status` of one Endpoint; `same_status`
compares two of them while ignoring timestamps, so the operator patches only
when something a user can see has changed.
"""

from __future__ import annotations

from collections import abc
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from orchestrator.core.breaker import State
from orchestrator.core.compile import Verdict
from orchestrator.core.contract import Report
from orchestrator.core.health import Health

_TIMESTAMPS = ("lastTransitionTime", "lastUpdateTime")


@dataclass(frozen=True)
class Aggregate:
    reporting: int
    programmed: int
    healthy: int
    unhealthy: int
    breaker_open: int
    breaker_half_open: int
    health: Health
    breaker: State


def aggregate(reports: Iterable[Report], route: str, uid: str, generation: Optional[int], disabled: bool) -> Aggregate:
    """Combine the fresh reports of all replicas for one Endpoint's route.

    A draining replica (SIGTERM, leaving within seconds) counts neither as
    reporting nor as programmed: a rollout or scale-down then never shows an
    Endpoint as loaded on fewer replicas than report, so Ready does not flap."""
    reporting = programmed = healthy = unhealthy = opened = half = 0
    for report in reports:
        if report.draining:
            continue
        reporting += 1
        seen = report.routes.get(route)
        if seen is None or generation is None or seen.uid != uid or seen.generation != generation:
            continue
        programmed += 1
        healthy += seen.health == Health.HEALTHY
        unhealthy += seen.health == Health.UNHEALTHY
        opened += seen.breaker == State.OPEN
        half += seen.breaker == State.HALF_OPEN
    if disabled:
        health = Health.DISABLED
    elif healthy + unhealthy == 0:
        health = Health.UNKNOWN
    else:
        # Replicas probe the same backend; disagreement means trouble somewhere, so ties read Unhealthy.
        health = Health.HEALTHY if healthy > unhealthy else Health.UNHEALTHY
    breaker = State.OPEN if opened else State.HALF_OPEN if half else State.CLOSED
    return Aggregate(reporting, programmed, healthy, unhealthy, opened, half, health, breaker)


def _condition(ctype: str, status: str, reason: str, message: str, generation: int,
               previous: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    old = previous.get(ctype)
    since = now if old is None or old.get("status") != status else old.get("lastTransitionTime", now)
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def desired_status(
    verdict: Verdict,
    agg: Aggregate,
    generation: int,
    current: Optional[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    previous = {c["type"]: c for c in (current or {}).get("conditions", []) if "type" in c}
    routing = verdict.serving_generation is not None

    accepted = _condition("Accepted", "True" if verdict.accepted else "False", verdict.reason, verdict.message,
                          generation, previous, now)
    if not routing:
        programmed = ("False", "NotAccepted", "the Endpoint holds no route, so no proxy serves it")
    elif agg.reporting == 0:
        programmed = ("Unknown", "NoProxyReplicas", "no proxy replica has reported yet; is the proxy Deployment running?")
    elif agg.programmed == agg.reporting:
        programmed = ("True", "Programmed", f"loaded on {agg.programmed} of {agg.reporting} proxy replicas")
    else:
        programmed = ("False", "Pending", f"loaded on {agg.programmed} of {agg.reporting} proxy replicas")
    if agg.health is Health.HEALTHY:
        healthy = ("True", "Healthy", f"health checks pass on {agg.healthy} of {agg.programmed} proxy replicas")
    elif agg.health is Health.UNHEALTHY:
        healthy = ("False", "Unhealthy", f"health checks fail on {agg.unhealthy} of {agg.programmed} proxy replicas")
    elif agg.health is Health.DISABLED:
        healthy = ("Unknown", "Disabled", "the Endpoint is disabled; it is not health-checked")
    else:
        healthy = ("Unknown", "NotChecked", "no health check result yet")

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "route": f"/orchestrator/{verdict.route}/" if routing else None,
        "health": agg.health.value,
        "circuitBreaker": agg.breaker.value,
        "replicas": {
            "reporting": agg.reporting,
            "programmed": agg.programmed,
            "healthy": agg.healthy,
            "unhealthy": agg.unhealthy,
            "breakerOpen": agg.breaker_open,
        },
        "conditions": [
            accepted,
            _condition("Programmed", *programmed, generation, previous, now),
            # Ready mirrors Programmed so Helm, Flux and Argo CD can wait on it.
            _condition("Ready", *programmed, generation, previous, now),
            _condition("Healthy", *healthy, generation, previous, now),
        ],
    }
    changed = current is None or not same_status(status, current)
    status["lastUpdateTime"] = now if changed else (current or {}).get("lastUpdateTime", now)
    return status


def _strip(value: Any) -> Any:
    # The leaves first: the pass compares hundreds of statuses, and an isinstance
    # check against Mapping (an ABC) costs about a microsecond per value.
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, abc.Mapping):
        return {k: _strip(v) for k, v in value.items() if k not in _TIMESTAMPS and v is not None}
    return value


def same_status(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    return _strip(a or {}) == _strip(b or {})


def condition(status: Optional[Mapping[str, Any]], ctype: str) -> Optional[Mapping[str, Any]]:
    for c in (status or {}).get("conditions", []):
        if c.get("type") == ctype:
            return c
    return None


Event = tuple[str, str, str]  # (type, reason, message)


def events_between(current: Optional[Mapping[str, Any]], desired: Mapping[str, Any]) -> list[Event]:
    """The Events a change of status deserves: each visible transition once."""
    events: list[Event] = []
    old_acc, new_acc = condition(current, "Accepted"), condition(desired, "Accepted")
    if new_acc and new_acc["status"] == "False" and (
            old_acc is None or old_acc.get("status") != "False" or old_acc.get("message") != new_acc["message"]):
        events.append(("Warning", new_acc["reason"], new_acc["message"]))
    old_prog, new_prog = condition(current, "Programmed"), condition(desired, "Programmed")
    if new_prog and new_prog["status"] == "True" and (
            old_prog is None or old_prog.get("status") != "True"
            or old_prog.get("observedGeneration") != new_prog["observedGeneration"]):
        events.append(("Normal", "Programmed", f"generation {new_prog['observedGeneration']} {new_prog['message']}"))
    old_health, new_health = (current or {}).get("health"), desired.get("health")
    if new_health != old_health:
        message = (condition(desired, "Healthy") or {}).get("message", "")
        if new_health == Health.UNHEALTHY:
            events.append(("Warning", "Unhealthy", f"the backend is unreachable or failing: {message}"))
        elif new_health == Health.HEALTHY and old_health == Health.UNHEALTHY:
            events.append(("Normal", "Healthy", f"the backend recovered: {message}"))
    old_cb, new_cb = (current or {}).get("circuitBreaker"), desired.get("circuitBreaker")
    if new_cb != old_cb:
        open_on = desired.get("replicas", {}).get("breakerOpen", 0)
        if new_cb == State.OPEN:
            events.append(("Warning", "CircuitOpen", f"the circuit breaker is open on {open_on} proxy replica(s)"))
        elif new_cb == State.HALF_OPEN:
            events.append(("Normal", "CircuitHalfOpen", "the circuit breaker lets trial calls through"))
        elif old_cb in (State.OPEN, State.HALF_OPEN):
            events.append(("Normal", "CircuitClosed", "the circuit breaker closed: calls succeed again"))
    return events
