"""Rollouts under traffic lose nothing (issue 11, item 2).

HAProxy (testbed/loadbalancer.py) stands in for kube-proxy in front of
proxy replicas in cluster mode (real API server and operator). Keep-alive
callers send steady GETs and POSTs through it while the replicas are
replaced the way a Deployment's RollingUpdate does it (maxSurge 1,
maxUnavailable 0: start a new replica, wait until it is Ready and in the
load balancer, SIGTERM an old one), then scaled down 3 -> 1 and up 1 -> 3.
A replica receiving SIGTERM leaves the load balancer only LB_DELAY later, as
a terminating Pod leaves the Service's endpoints on every node only after a
second or two. No failed call, no lost and no duplicated POST.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import httpx
import pytest

from testbed.stack import Process, Stack, endpoint_manifest
from testbed.harness import Backend, wait_until
from testbed.loadbalancer import LoadBalancer, haproxy
from testbed.traffic import Callers, Figures

pytestmark = pytest.mark.timeout(300)

# The proxies' --drain-seconds (the chart's default is 5). ROLLOUT_DRAIN_SECONDS=0 shows
# what the drain is for: the same test then fails calls (docs/architecture.md).
DRAIN_SECONDS = float(os.environ.get("ROLLOUT_DRAIN_SECONDS", "3"))
LB_DELAY = 1.5  # SIGTERM -> out of the load balancer (kube-proxy's propagation)
ROUTE = "/orchestrator/rollout"


@pytest.fixture(scope="module", autouse=True)
def need_haproxy() -> None:
    if haproxy() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed: tools/test.sh installs it (tools/lb/install.sh)")
        pytest.skip("ROLLOUT TESTS NOT RUN: haproxy is not installed (tools/lb/install.sh installs it, as root)")


@dataclass
class Leaving:
    """A replica that got SIGTERM: when it exited, and with which code."""

    proxy: Process
    signalled: float
    exited: Optional[float] = None
    code: Optional[int] = None
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    def watch(self) -> "Leaving":
        def wait() -> None:
            self.code = self.proxy.proc.wait()
            self.exited = time.monotonic()
        self._thread = threading.Thread(target=wait, daemon=True)
        self._thread.start()
        return self

    def join(self) -> float:
        assert self._thread is not None
        self._thread.join(timeout=60)
        assert self.code == 0, f"{self.proxy.name} exited with {self.code}:\n{self.proxy.log()[-3000:]}"
        assert self.exited is not None
        return self.exited - self.signalled


class Fleet:
    """Proxy replicas behind the load balancer, started and stopped like Pods."""

    def __init__(self, stack: Stack, lb: LoadBalancer) -> None:
        self.stack = stack
        self.lb = lb
        self.serial = 0
        self.leaving: list[Leaving] = []

    def members(self) -> list[Process]:
        names = set(self.lb.members())
        return [p for p in self.stack.proxies if p.name in names]

    def start_one(self) -> Process:
        """A new Pod: started, Ready, serving the route, then published in the load balancer."""
        self.serial += 1
        proxy = self.stack.add_proxy(f"v{self.serial}", "--drain-seconds", str(DRAIN_SECONDS),
                                     "--grace-seconds", "10")
        proxy.name = f"v{self.serial}"
        wait_until(lambda: httpx.get(f"{proxy.url}{ROUTE}/probe", timeout=5).status_code == 200, timeout=30,
                   message=f"{proxy.name} serves the route")
        self.lb.add(proxy.name, proxy.port)
        return proxy

    def terminate(self, proxies: list[Process]) -> list[Leaving]:
        """Pods deleted: SIGTERM now, out of the load balancer LB_DELAY later."""
        leaving = []
        for proxy in proxies:
            proxy.proc.send_signal(signal.SIGTERM)
            leaving.append(Leaving(proxy, time.monotonic()).watch())
        time.sleep(LB_DELAY)  # the endpoints update on its way to every node: traffic keeps coming
        for item in leaving:
            self.lb.remove(item.proxy.name)
            self.stack.proxies.remove(item.proxy)
        self.leaving += leaving
        return leaving

    def scale_to(self, count: int) -> None:
        while len(self.members()) < count:
            self.start_one()
        if len(self.members()) > count:
            self.terminate(self.members()[count:])


@pytest.fixture(scope="module")
def fleet(control_plane, tmp_path_factory, backend: Backend) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("rollout")
    stack = Stack(control_plane, workdir, replicas=0)
    lb = LoadBalancer(workdir)
    try:
        stack.start()
        stack.apply(endpoint_manifest("rollout", f"{backend.url}/roll", methods=["GET", "POST"]))
        lb.start()
        fleet = Fleet(stack, lb)
        fleet.scale_to(3)
        stack.wait_for("rollout", check=lambda o: stack.condition(o, "Ready").get("status") == "True")
        yield fleet
    finally:
        stack.stop()
        lb.stop()
        stack.delete("endpoints.orchestrator.dev", "rollout")


def arrived(backend: Backend) -> dict[str, int]:
    return httpx.get(f"{backend.url}/_control/calls", timeout=10).json()["ids"]


def ready_since(stack: Stack) -> str:
    ready = stack.condition(stack.get("rollout"), "Ready")
    assert ready.get("status") == "True", ready
    return ready["lastTransitionTime"]


def under_traffic(fleet: Fleet, backend: Backend, what: str, operation) -> Figures:
    """Run `operation` while callers go through the load balancer; check and print the figures."""
    before = ready_since(fleet.stack)
    callers = Callers(fleet.lb.url, ROUTE).start()
    try:
        callers.wait_calls(100)  # steady traffic before...
        leaving = operation()
        callers.wait_calls(100)  # ...and after
    finally:
        callers.stop()
    drains = [item.join() for item in leaving]
    figures = callers.figures(arrived(backend))
    print(f"\n{what}: {figures.line()}; SIGTERM -> exit {', '.join(f'{d:.2f}s' for d in drains) or '-'} "
          f"(drain {DRAIN_SECONDS:g}s, out of the LB after {LB_DELAY:g}s); load {os.getloadavg()[0]:.2f}")
    assert figures.failures == [], figures.failures[:10]
    assert figures.lost == [] and figures.duplicated == []
    assert figures.posts > 0 and figures.gets > 0
    # The Endpoint stayed Ready throughout: its Ready condition never moved.
    assert ready_since(fleet.stack) == before
    return figures


def test_rolling_update_replaces_every_replica_without_a_failed_call(fleet: Fleet, backend: Backend) -> None:
    fleet.scale_to(3)

    def roll() -> list[Leaving]:
        leaving = []
        for old in list(fleet.members()):
            fleet.start_one()  # maxSurge 1: the new one first, Ready and in the LB...
            leaving += fleet.terminate([old])  # ...then the old one leaves (maxUnavailable 0)
        return leaving

    under_traffic(fleet, backend, "rolling update 3 replicas", roll)
    assert len(fleet.members()) == 3


def test_scale_down_three_to_one_without_a_failed_call(fleet: Fleet, backend: Backend) -> None:
    fleet.scale_to(3)

    def down() -> list[Leaving]:
        leaving = fleet.terminate(fleet.members()[1:])
        # Each leaving replica said so in its report, and the operator counts it out.
        def draining(replica: str) -> bool:
            cm = json.loads(fleet.stack.cp.kubectl("get", "configmap", f"{fleet.stack.registry}-report-{replica}",
                                                   "-n", fleet.stack.namespace, "-o", "json").stdout)
            return json.loads(cm["data"]["report.json"]).get("draining") is True
        for item in leaving:
            wait_until(lambda r=item.proxy.name: draining(r), timeout=20, message=f"{item.proxy.name} reports draining")
        fleet.stack.wait_for("rollout", check=lambda o: fleet.stack.condition(o, "Programmed").get("message")
                             == "loaded on 1 of 1 proxy replicas")
        return leaving

    under_traffic(fleet, backend, "scale down 3 -> 1", down)
    assert len(fleet.members()) == 1


def test_scale_up_one_to_three_without_a_failed_call(fleet: Fleet, backend: Backend) -> None:
    fleet.scale_to(1)

    def up() -> list[Leaving]:
        fleet.start_one()
        fleet.start_one()
        return []

    under_traffic(fleet, backend, "scale up 1 -> 3", up)
    assert len(fleet.members()) == 3
