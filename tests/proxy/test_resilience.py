"""Circuit breaker, active health checks, reloads and registry swaps, end to end."""

from __future__ import annotations

import threading

import pytest

from testbed.harness import config_yaml, endpoint, wait_until

pytestmark = pytest.mark.timeout(60)
RESET = 3.0


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, backend):
    backend.set_health("hc", 200)
    config = config_yaml([
        # One breaker per test: a breaker left open by one must not decide another.
        endpoint("flaky", f"{backend.url}/flaky", health_check_path="/health/flaky"),
        endpoint("flaky2", f"{backend.url}/flaky2", health_check_path="/health/flaky2"),
        endpoint("hc", f"{backend.url}/api", health_check_path="/health/hc"),
        endpoint("quiet", f"{backend.url}/api", health_check_path="/health/quiet"),
        endpoint("off", f"{backend.url}/api", disabled=True, health_check_path="/health/offprobe"),
    # reset_timeout leaves room for a slow machine: the Open-state checks must finish before it.
    ], breaker={"failure_threshold": 3, "reset_timeout": RESET, "half_open_max_calls": 1})
    return module_proxy_factory(config)


@pytest.fixture
def c(proxy):
    return proxy.client()


def breaker_state(c, route: str) -> str:
    return c.get(f"/health/endpoints/{route}").json()["circuit_breaker"]["state"]


def test_breaker_opens_rejects_without_the_backend_then_recovers(c, backend):
    before = backend.hits("/flaky/status/500")
    for _ in range(3):
        assert c.get("/orchestrator/flaky/status/500").status_code == 500  # passes through, counts
    assert backend.hits("/flaky/status/500") == before + 3
    for _ in range(5):
        r = c.get("/orchestrator/flaky/status/500")
        assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open"
        assert 1 <= int(r.headers["retry-after"]) <= RESET
    assert backend.hits("/flaky/status/500") == before + 3  # rejected calls never touched the backend
    view = c.get("/health/endpoints/flaky").json()["circuit_breaker"]
    assert view["state"] == "Open" and view["total_rejected"] == 5
    assert list(c.get("/health/circuit-breakers/open").json()["circuit_breakers"]) == ["flaky"]
    assert 'orchestrator_circuit_breaker_state{route="flaky",state="Open"} 1' in c.get("/metrics").text

    wait_until(lambda: breaker_state(c, "flaky") == "HalfOpen", timeout=RESET + 5, message="reset timeout")
    r = c.get("/orchestrator/flaky/ok")  # the trial call
    assert r.status_code == 200
    assert c.get("/health/endpoints/flaky").json()["circuit_breaker"]["state"] == "Closed"
    assert c.get("/orchestrator/flaky/again").status_code == 200


def test_half_open_failure_reopens(c, backend):
    for _ in range(3):
        assert c.get("/orchestrator/flaky2/status/503").status_code == 503
    r = c.get("/orchestrator/flaky2/x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open"
    wait_until(lambda: breaker_state(c, "flaky2") == "HalfOpen", timeout=RESET + 5, message="reset timeout")
    assert c.get("/orchestrator/flaky2/status/502").status_code == 502  # the trial fails
    r = c.get("/orchestrator/flaky2/x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "circuit_open"
    wait_until(lambda: breaker_state(c, "flaky2") == "HalfOpen", timeout=RESET + 5, message="reset timeout")
    assert c.get("/orchestrator/flaky2/x").status_code == 200
    assert breaker_state(c, "flaky2") == "Closed"


def test_active_health_checks_follow_the_backend(c, backend):
    wait_until(lambda: c.get("/health/endpoints/hc").json()["health"] == "Healthy", message="hc healthy")
    backend.set_health("hc", 500)
    wait_until(lambda: c.get("/health/endpoints/hc").json()["health"] == "Unhealthy", message="hc unhealthy")
    assert c.get("/health/endpoints/hc").json()["last_error"] == "HTTP 500"
    assert "hc" in [e["name"] for e in c.get("/health/unhealthy").json()["endpoints"]]
    assert 'orchestrator_endpoint_healthy{route="hc",health="Unhealthy"} 0' in c.get("/metrics").text
    backend.set_health("hc", 200)
    wait_until(lambda: c.get("/health/endpoints/hc").json()["health"] == "Healthy", message="hc healthy again")
    assert 'orchestrator_endpoint_healthy{route="hc",health="Healthy"} 1' in c.get("/metrics").text


def sibling_probes(backend, count: int) -> None:
    """Return once route `hc` (same schedule: interval 0.3 s, timeout 0.5 s) got
    `count` more probes: the bound for "is not probed", instead of a sleep."""
    start = backend.hits("/api/health/hc")
    wait_until(lambda: backend.hits("/api/health/hc") >= start + count, message=f"{count} probes of hc")


def test_disabled_and_inactive_endpoints_are_not_probed(c, backend):
    sibling_probes(backend, 4)
    assert backend.hits("/api/health/offprobe") == 0
    assert c.get("/health/endpoints/off").json()["health"] == "Disabled"
    wait_until(lambda: backend.hits("/api/health/quiet") > 0, message="quiet probed")
    assert c.put("/registry/endpoints/quiet/status", params={"status": "maintenance"}).status_code == 200
    sibling_probes(backend, 3)  # > the probe timeout: a probe of quiet already in flight has landed
    stopped = backend.hits("/api/health/quiet")
    sibling_probes(backend, 4)
    assert backend.hits("/api/health/quiet") == stopped
    assert c.get("/health/endpoints/quiet").json()["health"] == "Disabled"
    assert c.put("/registry/endpoints/quiet/status", params={"status": "active"}).status_code == 200
    wait_until(lambda: backend.hits("/api/health/quiet") > stopped, message="quiet probed again")


def test_invalid_reload_is_refused_and_the_registry_keeps_serving(start_proxy, backend):
    good = config_yaml([endpoint("a", f"{backend.url}/api")], health={"enabled": False})
    proxy = start_proxy(good)
    c = proxy.client()
    revision = c.get("/registry/stats").json()["registry_revision"]
    proxy.write_config(config_yaml([
        endpoint("a", f"{backend.url}/api"),
        endpoint("legacy", "ftp://files.example/x"),
        endpoint("b", f"{backend.url}/api", timeout=-3),
    ]))
    r = c.post("/config/reload")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_config"
    assert any(e.startswith("endpoints[1] (legacy): url:") for e in error["errors"]), error["errors"]
    assert any(e.startswith("endpoints[2] (b): timeout:") for e in error["errors"]), error["errors"]
    assert c.get("/orchestrator/a/still").status_code == 200
    assert c.get("/orchestrator/b/x").status_code == 404
    assert c.get("/registry/stats").json()["registry_revision"] == revision
    assert c.get("/config/status").json()["last_errors"] == error["errors"]
    assert c.post("/registry/sync").status_code == 422

    proxy.write_config("endpoints: [\n")
    r = c.post("/config/reload")
    assert r.status_code == 422 and "YAML" in r.json()["error"]["errors"][0]

    proxy.write_config(config_yaml([endpoint("a", f"{backend.url}/api"), endpoint("b", f"{backend.url}/api")]))
    r = c.post("/config/reload")
    assert r.status_code == 200 and r.json()["added"] == ["b"]
    assert c.get("/orchestrator/b/x").status_code == 200
    assert c.get("/config/status").json()["last_errors"] == []


def test_registry_swaps_cause_no_errors_on_other_routes(start_proxy, backend):
    def config(i: int) -> str:
        # Route A's own timeout changes too: a changed route must not blink either.
        others = [endpoint(f"file{j}", f"{backend.url}/api") for j in range(i % 5)]
        return config_yaml([endpoint("a", f"{backend.url}/api", timeout=5 + i % 2), *others],
                           health={"interval": 0.2})
    proxy = start_proxy(config(0))
    admin = proxy.client()
    stop = threading.Event()
    results: list[int] = []

    def hammer() -> None:
        with proxy.client() as client:
            while not stop.is_set():
                results.append(client.get("/orchestrator/a/loop").status_code)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for i in range(30):
            name = f"api{i}"
            assert admin.post("/registry/endpoints", json={"config": {"url": f"{backend.url}/api", "name": name}}).status_code == 201
            proxy.write_config(config(i + 1))
            assert admin.post("/config/reload").status_code == 200
            assert admin.put(f"/registry/endpoints/{name}/status", params={"status": "inactive"}).status_code == 200
            assert admin.delete(f"/registry/endpoints/{name}").status_code == 200
            assert admin.post("/router/refresh").status_code == 200
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert len(results) > 100
    failures = [s for s in results if s != 200]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {set(failures)}"
