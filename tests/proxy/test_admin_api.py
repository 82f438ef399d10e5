"""Every call of the original service's REST API, against a real proxy and backend."""

from __future__ import annotations

import pytest

from testbed.harness import config_yaml, endpoint, free_port, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, backend):
    backend.set_health("hcfail", 500)
    config = config_yaml([
        endpoint("echo", f"{backend.url}/api", health_check_path="/health/echo", auth_type="bearer"),
        endpoint("down", f"http://127.0.0.1:{free_port()}/x", timeout=1),
        endpoint("off", f"{backend.url}/api", disabled=True, health_check_path="/health/off"),
        endpoint("hcfail", f"{backend.url}/api", methods=["GET"], health_check_path="/health/hcfail"),
    ])
    p = module_proxy_factory(config)
    c = p.client()
    # Wait for the first health verdicts so the views below are settled.
    wait_until(lambda: c.get("/health/endpoints/echo").json()["health"] == "Healthy", message="echo healthy")
    wait_until(lambda: c.get("/health/endpoints/hcfail").json()["health"] == "Unhealthy", message="hcfail unhealthy")
    wait_until(lambda: c.get("/health/endpoints/down").json()["health"] == "Unhealthy", message="down unhealthy")
    return p


@pytest.fixture
def c(proxy):
    return proxy.client()


def test_root(c):
    body = c.get("/").json()
    assert body["service"] == "Orchestrator"
    assert body["mode"] == "standalone" and body["status"] == "running"
    assert body["endpoints"] == 4 and len(body["registry_revision"]) == 16


def test_health(c):
    r = c.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["ready"] is True and body["endpoints"] == 4
    assert c.get("/readyz").json()["ready"] is True
    assert c.get("/livez").status_code == 200


def test_docs_redoc_openapi(c):
    docs = c.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    redoc = c.get("/redoc")
    assert redoc.status_code == 200 and "redoc" in redoc.text.lower()
    spec = c.get("/openapi.json").json()
    paths = set(spec["paths"])
    for path in ["/", "/health", "/config/status", "/config/reload", "/config/endpoints", "/config/validate",
                 "/registry/endpoints", "/registry/endpoints/{name}", "/registry/endpoints/{name}/status",
                 "/registry/stats", "/registry/sync", "/health/status", "/health/endpoints",
                 "/health/endpoints/{name}", "/health/check/{name}", "/health/unhealthy", "/health/summary",
                 "/health/circuit-breakers", "/health/circuit-breakers/open", "/router/routes",
                 "/router/test/{name}", "/router/refresh", "/router/debug/{name}/{path}"]:
        assert path in paths, path


def test_config_status(c, proxy):
    body = c.get("/config/status").json()
    assert body["mode"] == "standalone"
    assert body["config_path"] == str(proxy.config_path)
    assert body["config_exists"] is True and body["loaded"] is True
    assert body["endpoints_in_file"] == 4 and body["last_errors"] == []
    assert body["log_level"] == "WARNING"


def test_config_endpoints(c):
    body = c.get("/config/endpoints").json()
    assert body["total"] == 4
    by_name = {e["name"]: e for e in body["endpoints"]}
    assert set(by_name) == {"echo", "down", "off", "hcfail"}
    assert by_name["echo"]["auth_type"] == "bearer" and by_name["echo"]["source"] == "File"
    assert by_name["off"]["disabled"] is True
    assert by_name["hcfail"]["methods"] == ["GET"]


def test_config_validate(c, proxy):
    # Relative to the working directory, as in the guide.
    body = c.post("/config/validate", params={"config_path": "config/config.yaml"}).json()
    assert body == {"valid": True, "config_path": str(proxy.config_path), "endpoints": 4, "errors": []}
    assert c.post("/config/validate").json()["valid"] is True  # default: the running file
    bad = proxy.config_path.with_name("bad.yaml")
    bad.write_text("endpoints:\n  - {url: 'ftp://x', name: legacy}\n")
    body = c.post("/config/validate", params={"config_path": str(bad)}).json()
    assert body["valid"] is False
    assert body["errors"][0].startswith("endpoints[0] (legacy): url:")
    missing = c.post("/config/validate", params={"config_path": "config/nope.yaml"}).json()
    assert missing["valid"] is False and "cannot read" in missing["errors"][0]
    outside = c.post("/config/validate", params={"config_path": "/etc/passwd"})
    assert outside.status_code == 400 and outside.json()["error"]["code"] == "path_not_allowed"


def test_config_reload(c):
    body = c.post("/config/reload").json()
    assert body["status"] == "reloaded"
    assert body["added"] == [] and body["removed"] == [] and body["endpoints"] == 4


def test_registry_list_filter_paginate(c):
    body = c.get("/registry/endpoints").json()
    assert body["total"] == 4 and [e["name"] for e in body["endpoints"]] == ["down", "echo", "hcfail", "off"]
    echo = next(e for e in body["endpoints"] if e["name"] == "echo")
    assert echo["status"] == "active" and echo["health"] == "Healthy" and echo["circuit_breaker"] == "Closed"
    assert echo["proxy_path"] == "/orchestrator/echo/"
    disabled = c.get("/registry/endpoints", params={"status": "disabled"}).json()
    assert [e["name"] for e in disabled["endpoints"]] == ["off"]
    active = c.get("/registry/endpoints", params={"status": "active", "limit": 10, "offset": 0}).json()
    assert [e["name"] for e in active["endpoints"]] == ["down", "echo", "hcfail"]
    page = c.get("/registry/endpoints", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 4 and page["limit"] == 1 and page["offset"] == 1
    assert [e["name"] for e in page["endpoints"]] == ["echo"]
    assert c.get("/registry/endpoints", params={"status": "bogus"}).status_code == 422
    assert c.get("/registry/endpoints", params={"limit": 0}).status_code == 422


def test_registry_get_one(c):
    body = c.get("/registry/endpoints/echo").json()
    assert body["name"] == "echo" and body["settings"]["name"] == "echo"
    assert body["settings"]["circuitBreaker"]["failureThreshold"] == 3
    assert body["circuit_breaker_stats"]["state"] == "Closed"
    missing = c.get("/registry/endpoints/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "endpoint_not_found"


def test_register_status_unregister(c, backend):
    cfg = {"url": f"{backend.url}/api", "name": "example_v2", "version": "v2", "methods": ["GET", "POST"],
           "auth_type": "bearer", "disabled": False, "timeout": 30}
    try:
        r = c.post("/registry/endpoints", json={"config": cfg})
        assert r.status_code == 201, r.text
        assert r.json()["endpoint"]["name"] == "example_v2" and r.json()["endpoint"]["source"] == "API"
        assert c.get("/orchestrator/example_v2/hello").status_code == 200
        assert c.get("/registry/endpoints/example_v2").json()["version"] == "v2"
        dup = c.post("/registry/endpoints", json={"config": cfg})
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "endpoint_exists"

        r = c.put("/registry/endpoints/example_v2/status", params={"status": "inactive"})
        assert r.status_code == 200 and r.json()["endpoint"]["status"] == "inactive"
        off = c.get("/orchestrator/example_v2/hello")
        assert off.status_code == 503 and off.json()["error"]["code"] == "endpoint_disabled"
        inactive = c.get("/registry/endpoints", params={"status": "inactive"}).json()["endpoints"]
        assert [e["name"] for e in inactive] == ["example_v2"]
        assert c.put("/registry/endpoints/example_v2/status", params={"status": "active"}).status_code == 200
        assert c.get("/orchestrator/example_v2/hello").status_code == 200

        r = c.delete("/registry/endpoints/example_v2")
        assert r.status_code == 200 and r.json() == {"status": "unregistered", "name": "example_v2"}
        assert c.get("/orchestrator/example_v2/hello").status_code == 404
        assert c.delete("/registry/endpoints/example_v2").status_code == 404
        assert c.put("/registry/endpoints/nope/status", params={"status": "active"}).status_code == 404
    finally:  # the other tests count the file's 4 endpoints, whatever order they run in
        c.delete("/registry/endpoints/example_v2")


def test_registry_stats(c):
    body = c.get("/registry/stats").json()
    assert body["total_endpoints"] == 4
    assert body["by_status"] == {"active": 3, "disabled": 1}
    assert body["by_health"]["Disabled"] == 1 and body["by_health"]["Healthy"] == 1
    assert body["by_source"] == {"File": 4}
    assert len(body["registry_revision"]) == 16


def test_registry_sync_drops_api_endpoints(c, backend):
    cfg = {"url": f"{backend.url}/api", "name": "temp_api"}
    before = c.get("/registry/stats").json()["total_endpoints"]
    try:
        assert c.post("/registry/endpoints", json={"config": cfg}).status_code == 201
        assert c.get("/registry/stats").json()["total_endpoints"] == before + 1
        body = c.post("/registry/sync").json()
        # Sync leaves exactly the file's 4 endpoints, whatever API ones existed before.
        assert body["status"] == "synced" and "temp_api" in body["removed"] and body["endpoints"] == 4
        assert c.get("/registry/endpoints/temp_api").status_code == 404
    finally:
        c.delete("/registry/endpoints/temp_api")


def test_health_status_and_summary(c):
    body = c.get("/health/status").json()
    assert body["status"] == "degraded"
    assert body["endpoints"] == {"total": 4, "healthy": 1, "unhealthy": 2, "unknown": 0, "disabled": 1}
    summary = c.get("/health/summary").json()
    assert {e["name"] for e in summary["needs_attention"]} >= {"down", "hcfail"}
    assert summary["endpoints"]["total"] == 4


def test_health_endpoints(c):
    body = c.get("/health/endpoints").json()
    assert body["total"] == 4
    by_name = {e["name"]: e for e in body["endpoints"]}
    assert by_name["off"]["health"] == "Disabled" and by_name["off"]["target"] is None
    echo = c.get("/health/endpoints/echo").json()
    assert echo["health"] == "Healthy" and echo["target"].endswith("/api/health/echo")
    assert echo["checks"] >= 1 and echo["last_error"] is None and echo["circuit_breaker"]["state"] == "Closed"
    hc = c.get("/health/endpoints/hcfail").json()
    assert hc["health"] == "Unhealthy" and hc["last_error"] == "HTTP 500" and hc["consecutive_failures"] >= 2
    assert c.get("/health/endpoints/nope").status_code == 404


def test_health_check_now(c):
    before = c.get("/health/endpoints/echo").json()["checks"]
    body = c.post("/health/check/echo").json()
    assert body["checked"] is True and body["health"] == "Healthy" and body["checks"] > before
    off = c.post("/health/check/off").json()
    assert off["checked"] is False and "reason" in off
    assert c.post("/health/check/nope").status_code == 404


def test_health_unhealthy(c):
    body = c.get("/health/unhealthy").json()
    assert sorted(e["name"] for e in body["endpoints"]) == ["down", "hcfail"]


def test_circuit_breakers(c):
    body = c.get("/health/circuit-breakers").json()
    assert body["total"] == 4 and set(body["circuit_breakers"]) == {"down", "echo", "hcfail", "off"}
    assert body["circuit_breakers"]["echo"]["failure_threshold"] == 3
    assert c.get("/health/circuit-breakers/open").json() == {"circuit_breakers": {}, "total": 0}


def test_open_circuit_breakers(start_proxy, backend):
    # A proxy of its own: a breaker tripped here must not change what the module's other tests see.
    proxy = start_proxy(config_yaml([
        endpoint("echo", f"{backend.url}/api"),
        endpoint("down", f"http://127.0.0.1:{free_port()}/x", timeout=1),
    ], health={"enabled": False}))
    c = proxy.client()
    for _ in range(3):  # the default failure_threshold: 3 connect failures
        assert c.get("/orchestrator/down/x").status_code == 502
    opened = c.get("/health/circuit-breakers/open").json()
    assert list(opened["circuit_breakers"]) == ["down"] and opened["total"] == 1
    assert opened["circuit_breakers"]["down"]["state"] == "Open"


def test_router_routes(c, backend):
    body = c.get("/router/routes").json()
    assert body["total"] == 4
    echo = next(r for r in body["routes"] if r["name"] == "echo")
    assert echo == {"name": "echo", "path": "/orchestrator/echo/{path}", "upstream": f"{backend.url}/api",
                    "methods": ["DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"], "serving": True, "timeout": 5.0}
    off = next(r for r in body["routes"] if r["name"] == "off")
    assert off["serving"] is False


def test_router_test(c):
    ok = c.get("/router/test/echo").json()
    assert ok["reachable"] is True and ok["status_code"] == 200 and ok["url"].endswith("/api/health/echo")
    down = c.get("/router/test/down").json()
    assert down["reachable"] is False and down["error"]
    assert c.get("/router/test/nope").status_code == 404


def test_router_refresh(c):
    body = c.post("/router/refresh").json()
    assert body["status"] == "refreshed" and body["routes"] == 4


def test_router_debug(c, backend):
    body = c.get("/router/debug/echo/some/path", params={"x": "1"}).json()
    assert body["upstream_url"] == f"{backend.url}/api/some/path?x=1" and body["allowed"] is True
    assert c.get("/router/debug/echo/a//b").json()["upstream_url"] == f"{backend.url}/api/a/b"
    bad = c.get("/router/debug/echo/a/%2e%2e/%2e%2e/etc").json()
    assert bad["allowed"] is False and bad["upstream_url"] is None
    assert c.get("/router/debug/nope/x").status_code == 404


def test_unknown_admin_path_is_json_404(c):
    r = c.get("/no/such/thing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = c.delete("/health/status")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed" and "allow" in r.headers
