"""The operator's Prometheus metrics (served on /metrics by `operator/probes.py`).

One registry per operator object, not the process-global default, so tests
can build as many operators as they like.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "orchestrator_operator"


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.passes = Counter(f"{PREFIX}_reconcile_passes", "Reconcile passes run.", registry=r)
        self.pass_seconds = Histogram(
            f"{PREFIX}_reconcile_pass_seconds", "Time of the pure pass (compile, status diff), seconds.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r)
        self.registry_writes = Counter(f"{PREFIX}_registry_writes", "Registry writes by outcome (ok, failed).",
                                       ["outcome"], registry=r)
        self.status_writes = Counter(f"{PREFIX}_status_writes",
                                     "Endpoint status patches by outcome (ok, gone, failed).", ["outcome"], registry=r)
        self.events = Counter(f"{PREFIX}_events", "Kubernetes Events posted, by outcome (ok, failed).",
                              ["outcome"], registry=r)
        self.status_pending = Gauge(f"{PREFIX}_status_patches_pending",
                                    "Status patches queued or in flight.", registry=r)
        self.watch_restarts = Counter(
            f"{PREFIX}_watch_restarts",
            "Times the operator lost the API server and its watches had to reconnect.", registry=r)
        self.api_reachable = Gauge(f"{PREFIX}_api_reachable", "1 while the API server answers, else 0.", registry=r)
        self.replicas_reporting = Gauge(f"{PREFIX}_replicas_reporting",
                                        "Proxy replicas whose reports count (fresh heartbeat).", registry=r)
        self.api_reachable.set(1)
