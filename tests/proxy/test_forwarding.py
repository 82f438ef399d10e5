"""The data plane: headers, auth passthrough, errors and path safety, over real sockets."""

from __future__ import annotations

import http.client
import json
import socket

import httpx
import pytest

from testbed.harness import config_yaml, endpoint, free_port, header_values

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, backend):
    config = config_yaml([
        endpoint("echo", f"{backend.url}/api"),
        endpoint("root", backend.url + "/"),
        endpoint("getonly", f"{backend.url}/api", methods=["GET"]),
        endpoint("slow", f"{backend.url}/api", timeout=0.5),
        endpoint("down", f"http://127.0.0.1:{free_port()}/x"),
        endpoint("off", f"{backend.url}/api", disabled=True),
    ], breaker={"failure_threshold": 1000}, health={"enabled": False})  # no probes: count only our hits
    return module_proxy_factory(config)


@pytest.fixture
def c(proxy):
    return proxy.client()


def raw_request(proxy, method: str, target: str, headers: dict[str, str] | None = None):
    """Send the request line exactly as given (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def raw_bytes(proxy, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# -- auth and headers -----------------------------------------------------------------

def test_auth_headers_reach_the_backend_unchanged(c):
    token = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"
    echo = c.get("/orchestrator/echo/users", headers={"Authorization": token, "X-API-Key": "k-123",
                                                      "Cookie": "session=abc; theme=dark"}).json()
    assert header_values(echo, "authorization") == [token]
    assert header_values(echo, "x-api-key") == ["k-123"]
    cookie = header_values(echo, "cookie")
    assert len(cookie) == 1 and sorted(cookie[0].split("; ")) == ["session=abc", "theme=dark"]
    basic = c.get("/orchestrator/echo/resource", auth=("username", "password")).json()
    assert header_values(basic, "authorization") == ["Basic dXNlcm5hbWU6cGFzc3dvcmQ="]


def test_hop_by_hop_dropped_and_forwarding_headers_added(c, proxy, backend):
    r = c.get("/orchestrator/echo/h", headers={
        "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5", "TE": "trailers",
        "Proxy-Authorization": "Basic eA==", "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "spoofed",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "v=1",
    })
    echo = r.json()
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert header_values(echo, hop) == [], hop
    assert header_values(echo, "host") == [f"127.0.0.1:{backend.port}"]
    assert header_values(echo, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert header_values(echo, "x-forwarded-proto") == ["http"]
    assert header_values(echo, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]
    assert header_values(echo, "traceparent") == ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    assert header_values(echo, "tracestate") == ["v=1"]


def test_request_id_kept_or_created_and_echoed(c):
    r = c.get("/orchestrator/echo/rid", headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert header_values(r.json(), "x-request-id") == ["req-42"]
    r = c.get("/orchestrator/echo/rid")
    created = r.headers["x-request-id"]
    assert len(created) == 32
    assert header_values(r.json(), "x-request-id") == [created]
    err = c.get("/orchestrator/nope/x", headers={"X-Request-ID": "req-43"})
    assert err.headers["x-request-id"] == "req-43" and err.json()["error"]["request_id"] == "req-43"


def test_response_hop_by_hop_dropped(c):
    r = c.get("/orchestrator/echo/hop")
    assert r.status_code == 200 and r.text == "hop"
    assert "x-internal" not in r.headers and "keep-alive" not in r.headers
    assert r.headers["x-end-to-end"] == "kept" and r.headers["set-cookie"] == "a=1"


def test_method_query_body_and_path(c, backend):
    echo = c.post("/orchestrator/echo/a/b/?q=1&r=%2F&q=2", content=b"x" * 1234,
                  headers={"Content-Type": "application/octet-stream"}).json()
    assert echo["method"] == "POST" and echo["raw_path"] == "/api/a/b/?q=1&r=%2F&q=2"
    assert echo["body_length"] == 1234
    assert header_values(echo, "content-type") == ["application/octet-stream"]
    for method in ("PUT", "PATCH", "DELETE"):
        assert c.request(method, "/orchestrator/echo/m").json()["method"] == method
    assert c.get("/orchestrator/root/x/y").json()["path"] == "/x/y"
    assert c.get("/orchestrator/echo").json()["path"] == "/api/"  # no trailing slash: the base itself
    assert c.get("/orchestrator/echo/").json()["path"] == "/api/"
    head = c.head("/orchestrator/getonly/x")
    assert head.status_code == 200 and head.content == b""


# -- errors -----------------------------------------------------------------------------

def error_of(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()["error"]
    assert body["code"] == code and body["status"] == status and body["message"]
    return body


def test_unknown_route_404(c):
    body = error_of(c.get("/orchestrator/nope/x"), 404, "unknown_route")
    assert body["route"] == "nope" and "nope" in body["message"]


def test_method_not_allowed_405_with_allow(c, backend):
    before = backend.hits("/api/not-allowed")
    r = c.post("/orchestrator/getonly/not-allowed", json={})
    error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, HEAD"
    r = c.request("PROPFIND", "/orchestrator/getonly/not-allowed")
    error_of(r, 405, "method_not_allowed")
    assert backend.hits("/api/not-allowed") == before


def test_disabled_503(c):
    error_of(c.get("/orchestrator/off/x"), 503, "endpoint_disabled")


def test_unreachable_502(c):
    body = error_of(c.get("/orchestrator/down/x"), 502, "upstream_unreachable")
    assert body["route"] == "down"


def test_timeout_504(c):
    body = error_of(c.get("/orchestrator/slow/slow/3"), 504, "upstream_timeout")
    assert "0.5s" in body["message"]


@pytest.mark.parametrize("code", [400, 401, 403, 404, 418, 429, 500, 502, 503])
def test_backend_errors_pass_through_unchanged(c, code):
    r = c.get(f"/orchestrator/echo/status/{code}")
    assert r.status_code == code
    assert r.json() == {"backend_status": code, "detail": "from the backend"}
    assert r.headers["x-backend"] == "yes"


# -- path safety --------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/orchestrator/echo/../../x",
    "/orchestrator/echo/a/../../x",
    "/orchestrator/echo/%2e%2e/x",
    "/orchestrator/echo/%2E%2E/%2e%2e/etc/passwd",
    "/orchestrator/echo/..%2f..%2fx",
    "/orchestrator/echo/..\\..\\x",
    "/orchestrator/echo/a/..%5c..%5cx",
])
def test_paths_that_climb_are_refused(proxy, backend, target):
    before = backend.hits("/")
    status, headers, body = raw_request(proxy, "GET", target)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "bad_path"
    assert backend.hits("/") == before  # never reached the backend


@pytest.mark.parametrize("target, path", [
    ("/orchestrator/echo//evil.com/x", "/api/evil.com/x"),
    ("/orchestrator/echo/a//b///c", "/api/a/b/c"),
    ("/orchestrator/echo/@evil.com/x", "/api/@evil.com/x"),
    ("/orchestrator/echo/http://evil/x", "/api/http:/evil/x"),
    ("/orchestrator/echo/a/../b", "/api/b"),
    ("/orchestrator/echo/a/./b/%2e/c", "/api/a/b/c"),
    ("/orchestrator/echo/a%2Fb", "/api/a%2Fb"),
    ("/orchestrator/echo/50%/%zz", "/api/50%25/%25zz"),
    ("/orchestrator/echo/a;b=c/x#frag", "/api/a;b=c/x"),
])
def test_unnormalised_paths_stay_on_the_backend(proxy, backend, target, path):
    status, headers, body = raw_request(proxy, "GET", target)
    assert status == 200, body
    echo = json.loads(body)
    assert echo["raw_path"] == path
    assert [v for k, v in echo["headers"] if k.lower() == "host"] == [f"127.0.0.1:{backend.port}"]


def test_encoded_prefix_is_not_split_by_the_forwarder(proxy):
    status, _, body = raw_request(proxy, "GET", "/orchestrato%72/echo/x")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, _, body = raw_request(proxy, "GET", "/orchestrator//echo/x")
    assert status == 404 and json.loads(body)["error"]["route"] == ""


def test_absolute_form_request_target_cannot_pick_the_host(proxy, backend):
    # RFC 9112 §3.2.2: a server accepts the absolute form; only its path routes
    # here, and the upstream Host is the route's backend, never the caller's.
    status, _, body = raw_request(proxy, "GET", "http://evil.example/orchestrator/echo/x")
    assert status == 200, body
    echo = json.loads(body)
    assert echo["raw_path"] == "/api/x"
    assert header_values(echo, "host") == [f"127.0.0.1:{backend.port}"]


# -- malformed requests -------------------------------------------------------------------

def test_bad_json_body_is_422_json(c):
    r = c.post("/registry/endpoints", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = c.post("/registry/endpoints", json={"config": {"name": "x"}})
    assert r.status_code == 422 and "config.url" in r.json()["error"]["message"]
    r = c.post("/registry/endpoints", json={"config": {"name": "x", "url": "ftp://a"}})
    assert r.status_code == 422 and "http" in r.json()["error"]["message"]
    r = c.post("/registry/endpoints", json=[1, 2])
    assert r.status_code == 422


def test_unknown_status_value_is_422_json(c):
    r = c.put("/registry/endpoints/echo/status", params={"status": "sleeping"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = c.put("/registry/endpoints/echo/status")
    assert r.status_code == 422


@pytest.mark.parametrize("path", ["/health", "/orchestrator/echo/x"])
def test_oversized_header_is_4xx_json(c, path):
    r = c.get(path, headers={"X-Big": "a" * 100_000})
    assert r.status_code == 431, r.status_code
    assert r.json()["error"]["code"] == "request_headers_too_large"
    # Large but sane headers (a big JWT, many cookies) still pass.
    assert c.get(path, headers={"Authorization": "Bearer " + "a" * 7000}).status_code == 200


def test_invalid_method_token_is_4xx(proxy):
    answer = raw_bytes(proxy, b"GE(T /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), answer[:200]
    answer = raw_bytes(proxy, b"GET /orchestrator/echo/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\nConnection: close\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1 4"), answer[:200]


def test_proxy_still_serves_after_malformed_requests(proxy, c):
    # Its own malformed requests first: the test must not depend on the order the others ran in.
    raw_bytes(proxy, b"GE(T /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw_bytes(proxy, b"GET /orchestrator/echo/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    assert c.get("/orchestrator/echo/x", headers={"X-Big": "a" * 100_000}).status_code == 431
    assert c.get("/orchestrator/echo/ok").status_code == 200


# -- metrics ------------------------------------------------------------------------------

def test_metrics(c):
    c.get("/orchestrator/echo/m1")
    c.get("/orchestrator/echo/status/500")
    c.get("/orchestrator/down/x")
    c.get("/orchestrator/slow/slow/2")
    c.get("/orchestrator/nope/x")
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    assert samples['orchestrator_requests_total{route="echo",status="200"}'] >= 1
    assert samples['orchestrator_requests_total{route="echo",status="500"}'] >= 1
    assert samples['orchestrator_requests_total{route="down",status="502"}'] >= 1
    assert samples['orchestrator_requests_total{route="slow",status="504"}'] >= 1
    assert samples['orchestrator_requests_total{route="(unknown)",status="404"}'] >= 1
    assert samples['orchestrator_upstream_errors_total{route="down",kind="upstream_unreachable"}'] >= 1
    assert samples['orchestrator_upstream_errors_total{route="slow",kind="upstream_timeout"}'] >= 1
    # The latency histogram: cumulative buckets ending in +Inf == count.
    buckets = [(k, v) for k, v in samples.items() if k.startswith('orchestrator_request_duration_seconds_bucket{route="echo"')]
    assert len(buckets) > 5
    values = [v for _, v in buckets]
    assert values == sorted(values)
    assert samples['orchestrator_request_duration_seconds_bucket{route="echo",le="+Inf"}'] == \
        samples['orchestrator_request_duration_seconds_count{route="echo"}']
    assert samples['orchestrator_request_duration_seconds_sum{route="echo"}'] > 0
    assert samples['orchestrator_request_duration_seconds_bucket{route="slow",le="0.25"}'] < \
        samples['orchestrator_request_duration_seconds_bucket{route="slow",le="+Inf"}']
    # Breaker state and health per route, one sample per state.
    for route in ("echo", "down", "off"):
        states = [samples[f'orchestrator_circuit_breaker_state{{route="{route}",state="{s}"}}']
                  for s in ("Closed", "Open", "HalfOpen")]
        assert states == [1, 0, 0]
    assert samples['orchestrator_endpoint_healthy{route="off",health="Disabled"}'] == -1
    assert samples['orchestrator_endpoint_healthy{route="echo",health="Unknown"}'] == -1
    assert "# TYPE orchestrator_request_duration_seconds histogram" in text
