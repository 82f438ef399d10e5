"""Prometheus metrics, kept as plain counters on the hot path.

Counting is a dict increment and a bisect; the text format is produced only
when `/metrics` is scraped. Gauges (breaker state, health) are read from the
live state at scrape time instead of being kept up to date on every change.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

from orchestrator.core.breaker import State
from orchestrator.core.health import Health

# The health gauge's value per state; any other (Unknown, Disabled) is -1.
_HEALTH_VALUE = {Health.HEALTHY: 1, Health.UNHEALTHY: 0}
# Seconds. Fine-grained at the low end: a proxy hop is usually sub-millisecond.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_ROUTE = "(unknown)"


class RouteMetrics:
    __slots__ = ("requests", "buckets", "latency_sum", "latency_count", "upstream_errors")

    def __init__(self) -> None:
        self.requests: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.upstream_errors: dict[str, int] = {}

    def observe(self, status: int, seconds: float) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1


class Metrics:
    def __init__(self) -> None:
        self.routes: dict[str, RouteMetrics] = {}
        self.health_probes: dict[str, int] = {"ok": 0, "failed": 0}

    def route(self, name: str) -> RouteMetrics:
        rm = self.routes.get(name)
        if rm is None:
            rm = self.routes[name] = RouteMetrics()
        return rm

    def render(self, breaker_states: Iterable[tuple[str, State]], health_states: Iterable[tuple[str, Health]]) -> str:
        out: list[str] = []
        out += ["# HELP orchestrator_requests_total Proxied requests by route and response status.",
                "# TYPE orchestrator_requests_total counter"]
        for name, rm in sorted(self.routes.items()):
            for status, count in sorted(rm.requests.items()):
                out.append(f'orchestrator_requests_total{{route="{_esc(name)}",status="{status}"}} {count}')
        out += ["# HELP orchestrator_request_duration_seconds Time from the request to the end of the response, or to the error.",
                "# TYPE orchestrator_request_duration_seconds histogram"]
        for name, rm in sorted(self.routes.items()):
            label = _esc(name)
            cumulative = 0
            for bound, count in zip(BUCKETS, rm.buckets):
                cumulative += count
                out.append(f'orchestrator_request_duration_seconds_bucket{{route="{label}",le="{bound}"}} {cumulative}')
            out.append(f'orchestrator_request_duration_seconds_bucket{{route="{label}",le="+Inf"}} {rm.latency_count}')
            out.append(f'orchestrator_request_duration_seconds_sum{{route="{label}"}} {rm.latency_sum:.6f}')
            out.append(f'orchestrator_request_duration_seconds_count{{route="{label}"}} {rm.latency_count}')
        out += ["# HELP orchestrator_upstream_errors_total Calls that failed to get a response from the backend.",
                "# TYPE orchestrator_upstream_errors_total counter"]
        for name, rm in sorted(self.routes.items()):
            for kind, count in sorted(rm.upstream_errors.items()):
                out.append(f'orchestrator_upstream_errors_total{{route="{_esc(name)}",kind="{kind}"}} {count}')
        out += ["# HELP orchestrator_circuit_breaker_state Breaker state per route (1 for the current state).",
                "# TYPE orchestrator_circuit_breaker_state gauge"]
        for name, state in breaker_states:
            for candidate in State:
                out.append(f'orchestrator_circuit_breaker_state{{route="{_esc(name)}",state="{candidate.value}"}} '
                           f'{int(candidate is state)}')
        out += ["# HELP orchestrator_endpoint_healthy Active health check result per route (1 healthy, 0 not, -1 unknown).",
                "# TYPE orchestrator_endpoint_healthy gauge"]
        for name, health in health_states:
            value = _HEALTH_VALUE.get(health, -1)
            out.append(f'orchestrator_endpoint_healthy{{route="{_esc(name)}",health="{health.value}"}} {value}')
        out += ["# HELP orchestrator_health_probes_total Active health probes sent, by outcome.",
                "# TYPE orchestrator_health_probes_total counter"]
        for outcome, count in sorted(self.health_probes.items()):
            out.append(f'orchestrator_health_probes_total{{outcome="{outcome}"}} {count}')
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
