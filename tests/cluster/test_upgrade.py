"""Upgrades with mixed releases, and an operator restart that writes nothing
(issue 11, items 3 and 4), against the real API server.

- A registry in a format this proxy release does not know (what a newer
  operator would write) is kept out: the proxies keep serving their last good
  registry, stay Ready and say why in /readyz and in their reports. An older
  operator started over it (a rollback) writes its own format again.
- A restarted operator (the chart's Recreate on `helm upgrade`) over an
  up-to-date world of UPGRADE_ENDPOINTS Endpoints (200 here; set 1000 by hand)
  writes no registry, patches no status and posts no Event.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import httpx
import pytest

from testbed.stack import Stack, endpoint_manifest
from testbed.harness import Backend, wait_until
from test_operator_outage import metric

pytestmark = pytest.mark.timeout(300)

APPS = "upgrade-apps"  # the Endpoints' namespace
COUNT = int(os.environ.get("UPGRADE_ENDPOINTS", "200"))
FAST_HEALTH = {"intervalSeconds": 0.5, "timeoutSeconds": 0.5, "healthyThreshold": 1, "unhealthyThreshold": 2}


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory) -> Iterator[Stack]:
    # A registry of its own: no report left by another module's proxies counts here.
    s = Stack(control_plane, tmp_path_factory.mktemp("upgrade"), replicas=2,
              namespace="upgrade-system", registry="upgrade-registry")
    control_plane.kubectl("create", "namespace", APPS, check=False)
    try:
        yield s.start()
    finally:
        s.stop()
        control_plane.kubectl("delete", "endpoints.orchestrator.dev", "--all", "-n", APPS, "--wait=false", check=False)


def readyz(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return {"code": r.status_code, **r.json()}


def registry_configmap(stack: Stack) -> dict[str, Any]:
    return json.loads(stack.cp.kubectl("get", "configmap", stack.registry, "-n", stack.namespace, "-o", "json").stdout)


def test_a_registry_in_an_unknown_format_keeps_the_last_good_one_serving(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("mixed", f"{backend.url}/mixed", namespace=APPS, healthCheck=FAST_HEALTH))
    stack.wait_all("/orchestrator/mixed/x", lambda r: r.status_code == 200)
    good = registry_configmap(stack)
    revision = good["data"]["revision"]

    # A newer operator took over and wrote its own format (the old one is stopped first:
    # the chart's operator Deployment is Recreate).
    stack.stop_operator()
    newer = dict(good)
    newer["data"] = {"revision": "future-1", "shards": "1", "registry.json": json.dumps(
        {"count": 1, "index": 0, "revision": "future-1", "format": "orchestrator.dev/registry/v999",
         "endpoints": [{"a shape": "this release cannot read"}]})}
    newer["metadata"] = {k: v for k, v in good["metadata"].items() if k not in ("resourceVersion", "managedFields")}
    stack.cp.kubectl("replace", "-f", "-", input=json.dumps(newer))

    for proxy in stack.proxies:
        seen = wait_until(lambda p=proxy: "registry_problem" in (r := readyz(p.url)) and r, timeout=30,
                          message=f"{proxy.name} noticed the newer format")
        assert seen["code"] == 200 and seen["ready"] is True, seen  # still Ready...
        assert seen["registry_revision"] == revision  # ...on the last good registry
        assert "orchestrator.dev/registry/v999" in seen["registry_problem"]
        assert "keeping the last good registry" in seen["registry_problem"]
        assert "registry revision future-1 not loaded" in proxy.log()
    assert [r.status_code for r in stack.get_all("/orchestrator/mixed/x")] == [200, 200]

    def reported_error(replica: str) -> str:
        cm = json.loads(stack.cp.kubectl("get", "configmap", f"{stack.registry}-report-{replica}", "-n",
                                         stack.namespace, "-o", "json").stdout)
        return json.loads(cm["data"]["report.json"]).get("registryError", "")
    for replica in ("r0", "r1"):
        wait_until(lambda r=replica: "v999" in reported_error(r), timeout=30, message=f"{replica} reports why")

    # Rolled back: this release's operator starts over the newer registry and writes its own format.
    stack.start_operator()
    wait_until(lambda: registry_configmap(stack)["data"]["revision"] == revision, timeout=30,
               message="the registry rewritten in this release's format")
    for proxy in stack.proxies:
        wait_until(lambda p=proxy: "registry_problem" not in readyz(p.url), timeout=30,
                   message=f"{proxy.name} current again")
    assert [r.status_code for r in stack.get_all("/orchestrator/mixed/x")] == [200, 200]
    assert "written by a newer release" in stack.operator.log()


def endpoints_ready(stack: Stack) -> list[dict[str, Any]]:
    items = json.loads(stack.cp.kubectl("get", "endpoints.orchestrator.dev", "-n", APPS, "-o", "json").stdout)["items"]
    return [o for o in items if stack.condition(o, "Ready").get("status") == "True"
            and o.get("status", {}).get("observedGeneration") == o["metadata"]["generation"]
            and o["status"].get("replicas", {}).get("reporting") == len(stack.proxies)]


def operator_settled(stack: Stack, passes: float = 1) -> bool:
    try:
        return (metric(stack, "orchestrator_operator_reconcile_passes_total") >= passes
                and metric(stack, "orchestrator_operator_status_patches_pending") == 0
                and metric(stack, "orchestrator_operator_replicas_reporting") == len(stack.proxies))
    except httpx.HTTPError:
        return False  # not listening yet


def test_a_restarted_operator_over_an_up_to_date_world_writes_nothing(stack: Stack, backend: Backend) -> None:
    # A few Endpoints with fast health checks (their health is part of the status), the rest without.
    items = [endpoint_manifest(f"up-{i:04d}", f"{backend.url}/up/{i}", namespace=APPS,
                               **({"healthCheck": FAST_HEALTH} if i < 10 else {"healthCheck": {"enabled": False}}))
             for i in range(COUNT)]
    stack.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    # And "mixed", when the test above ran.
    total = len(json.loads(stack.cp.kubectl("get", "endpoints.orchestrator.dev", "-n", APPS, "-o", "json").stdout)["items"])
    wait_until(lambda: len(endpoints_ready(stack)) >= total, timeout=180, interval=1,
               message=f"{total} Endpoints Ready")
    checked = {o["metadata"]["name"] for o in endpoints_ready(stack)
               if o["spec"].get("healthCheck", {}).get("enabled", True)}
    wait_until(lambda: {o["metadata"]["name"] for o in endpoints_ready(stack) if o["status"]["health"] == "Healthy"}
               >= checked, timeout=60, message="health checked")
    wait_until(lambda: operator_settled(stack), timeout=60, message="the operator settled")

    def world() -> tuple[str, dict[str, str], int]:
        eps = json.loads(stack.cp.kubectl("get", "endpoints.orchestrator.dev", "-n", APPS, "-o", "json").stdout)
        events = json.loads(stack.cp.kubectl("get", "events", "-n", APPS, "-o", "json").stdout)["items"]
        return (registry_configmap(stack)["metadata"]["resourceVersion"],
                {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in eps["items"]}, len(events))

    # helm upgrade with a changed operator: Recreate, the old one stops and a new one starts.
    stack.stop_operator()
    before = world()  # whatever the old one wrote is in
    started = time.monotonic()
    stack.start_operator()
    wait_until(lambda: operator_settled(stack), timeout=120, interval=0.2, message="the new operator's first pass")
    settled = time.monotonic() - started
    writes = {name: metric(stack, f"orchestrator_operator_{name}_total")
              for name in ("registry_writes", "status_writes", "events")}
    print(f"\nrestart over {total} Endpoints: first pass done {settled:.1f} s after start; writes {writes}; "
          f"load {os.getloadavg()[0]:.2f}")
    assert writes == {"registry_writes": 0, "status_writes": 0, "events": 0}
    after = world()
    assert after[0] == before[0], "the registry ConfigMap was written"
    moved = sorted(n for n in after[1] if after[1][n] != before[1].get(n))
    assert not moved, f"{len(moved)} Endpoints written, e.g. {stack.get(moved[0], APPS)}"
    assert after[2] == before[2], "Events were posted"
    log = stack.operator.log()  # every operator of this module appends to the same file
    assert "found registry revision" in log and "written:" not in log.rsplit("found registry revision", 1)[-1]
