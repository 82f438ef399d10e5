"""The cluster mode end to end: real API server, operator and two proxy replicas
as local processes, real backends on 127.0.0.1 (DESIGN.md "Data flow")."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from testbed.stack import NAMESPACE, REGISTRY, Stack, endpoint_manifest
from testbed.harness import BACKEND, Backend, free_port, start_backend, stop, wait_for_port, wait_until

FAST_HEALTH = {"intervalSeconds": 0.5, "timeoutSeconds": 0.5, "healthyThreshold": 1, "unhealthyThreshold": 2}


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("stack"), replicas=2)
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = start_backend()
    yield b
    stop(b.proc)


def restart_backend(b: Backend) -> Backend:
    proc = subprocess.Popen([sys.executable, str(BACKEND), str(b.port)])
    wait_for_port(b.port, proc)
    return Backend(b.port, proc)


def test_apply_routes_on_every_replica_with_auth_intact(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("payments", f"{backend.url}/api", routeName="payment_service",
                                  methods=["GET", "POST"], healthCheck=FAST_HEALTH))
    responses = stack.wait_all("/orchestrator/payment_service/charges?limit=2", lambda r: r.status_code == 200,
                               headers={"Authorization": "Bearer secret-token"})
    for r in responses:
        echo = r.json()
        assert echo["path"] == "/api/charges" and echo["query"] == "limit=2"
        assert ["Authorization", "Bearer secret-token"] in echo["headers"]
    obj = stack.wait_for("payments", health="Healthy", circuitBreaker="Closed",
                         check=lambda o: stack.condition(o, "Ready").get("status") == "True")
    assert stack.condition(obj, "Programmed")["message"] == "loaded on 2 of 2 proxy replicas"
    assert obj["status"]["route"] == "/orchestrator/payment_service/"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    table = stack.cp.kubectl("get", "endpoints.orchestrator.dev", "payments").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "URL", "HEALTH", "BREAKER", "READY", "AGE"]
    assert row.split()[1:5] == [f"{backend.url}/api", "Healthy", "Closed", "True"]
    stack.wait_event("default", "payments", "Programmed")


def test_backend_down_unhealthy_breaker_open_then_recovers(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("flaky", backend.url, healthCheck=FAST_HEALTH,
                                  circuitBreaker={"failureThreshold": 2, "resetTimeoutSeconds": 1}))
    stack.wait_for("flaky", health="Healthy")
    stop(backend.proc)
    stack.wait_for("flaky", health="Unhealthy")
    stack.wait_event("default", "flaky", "Unhealthy")
    # Failing traffic through replica 0 only: its breaker opens, replica 1's stays closed.
    first = stack.proxies[0]
    codes = [httpx.get(f"{first.url}/orchestrator/flaky/x", timeout=5).status_code for _ in range(3)]
    assert codes[:2] == [502, 502] and codes[2] == 503
    obj = stack.wait_for("flaky", circuitBreaker="Open")
    assert obj["status"]["replicas"]["breakerOpen"] == 1
    stack.wait_event("default", "flaky", "CircuitOpen")

    revived = restart_backend(backend)
    try:
        stack.wait_for("flaky", health="Healthy")
        stack.wait_event("default", "flaky", "Healthy")
        # The breaker closes on a successful trial call once reset_timeout has passed.
        wait_until(lambda: httpx.get(f"{first.url}/orchestrator/flaky/x", timeout=5).status_code == 200, timeout=10)
        obj = stack.wait_for("flaky", circuitBreaker="Closed")
        assert obj["status"]["replicas"]["breakerOpen"] == 0
        stack.wait_event("default", "flaky", "CircuitClosed")
    finally:
        stop(revived.proc)


def test_spec_edits_follow_and_delete_removes(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("editable", backend.url, methods=["GET"]))
    stack.wait_all("/orchestrator/editable/a", lambda r: r.status_code == 200)
    posts = stack.request_all("POST", "/orchestrator/editable/a")
    assert [r.status_code for r in posts] == [405, 405] and posts[0].headers["allow"] == "GET, HEAD"

    stack.apply(endpoint_manifest("editable", backend.url, methods=["GET", "POST"], timeoutSeconds=0.5))
    obj = stack.wait_for("editable", check=lambda o: o.get("status", {}).get("observedGeneration") == 2)
    assert stack.condition(obj, "Accepted")["observedGeneration"] == 2
    stack.wait_all("/orchestrator/editable/a", lambda r: r.status_code == 200)
    assert [r.status_code for r in stack.request_all("POST", "/orchestrator/editable/a")] == [200, 200]
    # the new timeout is in force: a 2 s backend call now times out
    assert [r.status_code for r in stack.get_all("/orchestrator/editable/slow/2")] == [504, 504]

    stack.apply(endpoint_manifest("editable", backend.url, methods=["GET", "POST"], disabled=True))
    stack.wait_all("/orchestrator/editable/a", lambda r: r.status_code == 503)
    stack.wait_for("editable", health="Disabled", check=lambda o: o.get("status", {}).get("observedGeneration") == 3)

    stack.delete("endpoints.orchestrator.dev", "editable")
    stack.wait_all("/orchestrator/editable/a", lambda r: r.status_code == 404)
    registry = stack.cp.kubectl("get", "configmap", REGISTRY, "-n", NAMESPACE, "-o", "json").stdout
    assert "editable" not in json.loads(registry)["data"]["registry.json"]


def test_configmap_source_good_entries_route_bad_ones_are_events(stack: Stack, backend: Backend) -> None:
    def source(text: str) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "classic", "namespace": "default",
                             "labels": {"orchestrator.dev/registry-source": "true"}},
                "data": {"config.yaml": text}}

    good = yaml.safe_dump({"endpoints": [
        {"url": f"{backend.url}/one", "name": "cm_one"},
        {"url": "ftp://nope.example", "name": "cm_bad"},
        {"url": f"{backend.url}/two", "name": "cm_two"},
    ]})
    stack.apply(source(good))
    stack.wait_all("/orchestrator/cm_one/x", lambda r: r.status_code == 200 and r.json()["path"] == "/one/x")
    stack.wait_all("/orchestrator/cm_two/x", lambda r: r.status_code == 200)
    assert [r.status_code for r in stack.get_all("/orchestrator/cm_bad/x")] == [404, 404]
    event = stack.wait_event("default", "classic", "InvalidEntry", kind="ConfigMap")
    assert event["type"] == "Warning" and "cm_bad" in event["message"] and "url" in event["message"]

    stack.apply(source("endpoints: [ {url: broken"))
    stack.wait_event("default", "classic", "InvalidEntry", kind="ConfigMap")
    wait_until(lambda: any("not valid YAML" in e["message"]
                           for e in stack.events("default", "classic", "ConfigMap")), timeout=20)
    # A barrier instead of a sleep: the operator handles changes in order, so once an
    # Endpoint applied after the broken file routes everywhere, any registry that
    # (wrongly) dropped the file's entries would have reached the proxies too.
    stack.apply(endpoint_manifest("cm-barrier", f"{backend.url}/barrier"))
    stack.wait_all("/orchestrator/cm-barrier/x", lambda r: r.status_code == 200)
    assert [r.status_code for r in stack.get_all("/orchestrator/cm_one/x")] == [200, 200]
    stack.delete("endpoints.orchestrator.dev", "cm-barrier")
    stack.delete("configmap", "classic")
    stack.wait_all("/orchestrator/cm_one/x", lambda r: r.status_code == 404)


def test_route_conflict_oldest_wins(stack: Stack, control_plane, backend: Backend) -> None:
    control_plane.kubectl("create", "namespace", "team-old", check=False)
    control_plane.kubectl("create", "namespace", "team-new", check=False)
    stack.apply(endpoint_manifest("users", f"{backend.url}/old", namespace="team-old"))
    winner = stack.wait_for("users", namespace="team-old",
                            check=lambda o: stack.condition(o, "Accepted").get("status") == "True")
    # creationTimestamp has one-second resolution: the next object must be a second younger.
    born = datetime.datetime.fromisoformat(winner["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    wait_until(lambda: datetime.datetime.now(datetime.timezone.utc) >= born + datetime.timedelta(seconds=1.05),
               message="a second past the winner's creationTimestamp")
    stack.apply(endpoint_manifest("users", f"{backend.url}/new", namespace="team-new"))
    loser = stack.wait_for("users", namespace="team-new",
                           check=lambda o: stack.condition(o, "Accepted").get("reason") == "RouteConflict")
    accepted = stack.condition(loser, "Accepted")
    assert accepted["status"] == "False" and "team-old/users" in accepted["message"]
    assert [r.json()["path"] for r in stack.get_all("/orchestrator/users/x")] == ["/old/x", "/old/x"]
    stack.wait_event("team-new", "users", "RouteConflict")
    # when the winner goes, the other takes the route over
    stack.delete("endpoints.orchestrator.dev", "users", "team-old")
    stack.wait_all("/orchestrator/users/x", lambda r: r.status_code == 200 and r.json()["path"] == "/new/x")
    stack.wait_for("users", namespace="team-new", check=lambda o: stack.condition(o, "Accepted").get("status") == "True")


@pytest.mark.parametrize("spec, message", [
    ({"url": "ftp://files.example"}, "spec.url"),
    ({"url": "http://x.example", "methods": ["FETCH"]}, 'Unsupported value: "FETCH"'),
    ({"url": "http://x.example", "timeoutSeconds": -1}, "spec.timeoutSeconds"),
    ({"url": "http://x.example", "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 5}},
     "healthCheck.timeoutSeconds must not exceed healthCheck.intervalSeconds"),
    # Issue 8: a URL that no request line can carry is refused up front, with a message that says why.
    ({"url": "http://x.example/a b"}, "url must be printable ASCII without spaces or control characters"),
    ({"url": "http://x.example/caf\u00e9"}, "url must be printable ASCII without spaces or control characters"),
    ({"url": "http://x.example/\tx"}, "url must be printable ASCII without spaces or control characters"),
    ({"url": "http://x.example", "healthCheck": {"path": "health"}}, "spec.healthCheck.path"),
], ids=["ftp-url", "unknown-method", "negative-timeout", "cel-probe-timeout", "space-in-url", "non-ascii-url",
        "control-char-in-url", "health-path-without-slash"])
def test_schema_rejects_invalid_endpoints(stack: Stack, spec: dict, message: str) -> None:
    result = stack.apply({"apiVersion": "orchestrator.dev/v1alpha1", "kind": "Endpoint",
                          "metadata": {"name": "invalid", "namespace": "default"}, "spec": spec}, check=False)
    assert result.returncode != 0
    assert "is invalid" in result.stderr and message in result.stderr, result.stderr


def test_a_link_local_backend_is_not_accepted(stack: Stack) -> None:
    """The SSRF guard in the compiler: the operator runs without --allow-link-local."""
    stack.apply(endpoint_manifest("cloud-metadata", "http://169.254.169.254/latest"))
    try:
        obj = stack.wait_for("cloud-metadata", check=lambda o: stack.condition(o, "Accepted").get("status") == "False")
        accepted = stack.condition(obj, "Accepted")
        assert accepted["reason"] == "LinkLocalBackend"
        assert "169.254.169.254 is link-local" in accepted["message"]
        assert obj["status"].get("route") is None
    finally:
        stack.delete("endpoints.orchestrator.dev", "cloud-metadata")


def test_operator_restart_converges_to_what_exists(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("survivor", backend.url))
    stack.wait_all("/orchestrator/survivor/x", lambda r: r.status_code == 200)
    stack.stop_operator()
    # changes while the operator is away
    stack.apply(endpoint_manifest("born-while-down", backend.url))
    stack.delete("endpoints.orchestrator.dev", "survivor")
    assert [r.status_code for r in stack.get_all("/orchestrator/survivor/x")] == [200, 200]  # last good registry
    stack.start_operator()
    stack.wait_all("/orchestrator/born-while-down/x", lambda r: r.status_code == 200)
    stack.wait_all("/orchestrator/survivor/x", lambda r: r.status_code == 404)
    stack.wait_for("born-while-down", check=lambda o: stack.condition(o, "Ready").get("status") == "True")


def test_proxies_keep_routing_while_the_api_server_is_down(stack: Stack, control_plane, backend: Backend) -> None:
    stack.apply(endpoint_manifest("static", backend.url))
    stack.wait_all("/orchestrator/static/x", lambda r: r.status_code == 200)
    errors = [httpx.get(f"{p.url}/config/status", timeout=10).json()["last_error"] for p in stack.proxies]
    control_plane.kill_apiserver()
    try:
        # Awaited, not slept: every replica's registry watch has seen the outage.
        wait_until(lambda: all(httpx.get(f"{p.url}/config/status", timeout=10).json()["last_error"] != before
                               for p, before in zip(stack.proxies, errors)), timeout=30, message="watches broken")
        assert [r.status_code for r in stack.get_all("/orchestrator/static/x")] == [200, 200]
    finally:
        control_plane.start_apiserver()
    stack.apply(endpoint_manifest("after-outage", backend.url))
    stack.wait_all("/orchestrator/after-outage/x", lambda r: r.status_code == 200, timeout=40)


def test_route_churn_costs_nothing_elsewhere(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("steady", backend.url))
    stack.apply(endpoint_manifest("edited", backend.url, methods=["GET"]))
    stack.wait_all("/orchestrator/steady/x", lambda r: r.status_code == 200)
    stack.wait_all("/orchestrator/edited/x", lambda r: r.status_code == 200)
    failures: list[tuple[str, int]] = []
    calls = [0]
    done = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                for proxy in stack.proxies:
                    for route in ("steady", "edited"):
                        code = client.get(f"{proxy.url}/orchestrator/{route}/x").status_code
                        calls[0] += 1
                        if code != 200:
                            failures.append((route, code))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        manifests = [endpoint_manifest(f"churn-{i}", backend.url) for i in range(100)]
        stack.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
        for i, timeout in enumerate((3, 4, 5)):  # edit the busy route while the churn goes on
            stack.apply(endpoint_manifest("edited", backend.url, methods=["GET", "POST"], timeoutSeconds=timeout))
            time.sleep(0.3)
        for m in manifests[::2]:
            m["spec"]["methods"] = ["GET", "POST"]
        stack.cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
        stack.cp.kubectl("delete", "endpoints.orchestrator.dev", *[m["metadata"]["name"] for m in manifests],
                         "-n", "default", "--wait=false")
        stack.wait_all("/orchestrator/churn-99/x", lambda r: r.status_code == 404, timeout=30)
    finally:
        done.set()
        thread.join()
    assert calls[0] > 50
    assert failures == []


def test_an_accidental_second_operator_freezes_both(stack: Stack, backend: Backend) -> None:
    first = stack.operator
    assert first is not None
    # The bound for "nothing happens" below, measured rather than guessed: three times
    # what routing a new Endpoint takes on this machine with one operator.
    started = time.monotonic()
    stack.apply(endpoint_manifest("before-freeze", backend.url))
    stack.wait_all("/orchestrator/before-freeze/x", lambda r: r.status_code == 200)
    bound = max(3 * (time.monotonic() - started), 2.0)
    second = stack._spawn("operator-second", ["operator", "--kubeconfig", str(stack.cp.kubeconfig),
                                              "--namespace", NAMESPACE, "--health-port", str(free_port())],
                          env={}, port=0)
    try:
        wait_until(lambda: "pausing writes" in first.log(), timeout=60, interval=0.5,
                   message="the first operator pauses")
        stack.apply(endpoint_manifest("while-frozen", backend.url))
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:  # checked all along, so an early wrong route fails at once
            assert [r.status_code for r in stack.get_all("/orchestrator/while-frozen/x")] == [404, 404]
            time.sleep(0.2)  # pacing only
    finally:
        stop(second.proc)
    stack.wait_all("/orchestrator/while-frozen/x", lambda r: r.status_code == 200, timeout=90)
    assert "resuming" in first.log()


def test_kubectl_explain_describes_every_spec_field(stack: Stack) -> None:
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "endpoints.orchestrator.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    # kubectl reads the first dot-separated word as the resource, so the group goes in --api-version
    # (or use the short name: `kubectl explain oep.spec`).
    for args in (["endpoints.spec", "--api-version=orchestrator.dev/v1alpha1"], ["oep.spec"]):
        text = stack.cp.kubectl("explain", *args).stdout
        assert "KIND:       Endpoint\n" in text and "GROUP:      orchestrator.dev" in text
        for name, prop in spec.items():
            assert f"  {name}\t" in text, name
            assert prop["description"].split()[0] in text, name


def test_admin_writes_are_refused_in_cluster_mode(stack: Stack) -> None:
    proxy = stack.proxies[0]
    body = {"config": {"url": "http://127.0.0.1:9", "name": "sneaky"}}
    for method, path, kw in (("POST", "/registry/endpoints", {"json": body}),
                             ("DELETE", "/registry/endpoints/anything", {}),
                             ("PUT", "/registry/endpoints/anything/status?status=inactive", {}),
                             ("POST", "/config/reload", {})):
        r = httpx.request(method, f"{proxy.url}{path}", timeout=10, **kw)
        assert r.status_code == 409, (method, path, r.text)
        error = r.json()["error"]
        assert error["code"] == "managed_by_operator" and "kubectl apply" in error["message"]
    status = httpx.get(f"{proxy.url}/config/status", timeout=10).json()
    assert status["mode"] == "cluster" and status["watch_connected"] is True
