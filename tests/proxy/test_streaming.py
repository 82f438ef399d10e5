"""Bodies stream through the proxy: memory does not grow with body size."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from testbed.harness import config_yaml, endpoint, wait_until

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024
SIZE = 200 * MB


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, backend):
    return module_proxy_factory(config_yaml([endpoint("big", f"{backend.url}/api", timeout=60)],
                                            health={"enabled": False}))


class PeakRss:
    """Sample the proxy's VmRSS while a transfer runs."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.peak = proxy.rss_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proxy.rss_kb())
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def warm_up(c) -> int:
    """A few mid-sized transfers first, so allocator warm-up is not counted as growth."""
    for _ in range(3):
        assert len(c.get("/orchestrator/big/download/4194304").content) == 4 * MB
        assert c.post("/orchestrator/big/upload", content=b"x" * 4 * MB).json()["received"] == 4 * MB
    return 0


def chunks(total: int, size: int = 256 * 1024):
    block = b"u" * size
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_download_streams(proxy, chunked):
    c = proxy.client(timeout=60)
    warm_up(c)
    before = proxy.rss_kb()
    received = 0
    with PeakRss(proxy) as rss:
        with c.stream("GET", f"/orchestrator/big/download/{SIZE}", params={"chunked": "1"} if chunked else None) as r:
            assert r.status_code == 200
            if not chunked:
                assert r.headers["content-length"] == str(SIZE)
            for chunk in r.iter_raw():
                received += len(chunk)
    assert received == SIZE
    growth_mb = (rss.peak - before) / 1024
    assert growth_mb < 50, f"proxy RSS grew by {growth_mb:.1f} MB for a {SIZE // MB} MB download"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_upload_streams(proxy, chunked):
    c = proxy.client(timeout=60)
    warm_up(c)
    before = proxy.rss_kb()
    headers = {"Content-Type": "application/octet-stream"}
    if not chunked:
        headers["Content-Length"] = str(SIZE)
    with PeakRss(proxy) as rss:
        r = c.post("/orchestrator/big/upload", content=chunks(SIZE), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["received"] == SIZE
    growth_mb = (rss.peak - before) / 1024
    assert growth_mb < 50, f"proxy RSS grew by {growth_mb:.1f} MB for a {SIZE // MB} MB upload"


def metric(c, line_start: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def register(c, backend, name):
    r = c.post("/registry/endpoints", json={"config": {"url": f"{backend.url}/api", "name": name, "timeout": 60,
                                                       "methods": ["GET", "POST"]}})
    assert r.status_code == 201, r.text


def test_caller_closing_a_download_stops_the_transfer(proxy, backend):
    c = proxy.client()
    register(c, backend, "gone_dl")
    size = 4 * 1024 * MB  # far more than could finish during the test
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(f"GET /orchestrator/gone_dl/download/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 4 * MB:
            got += len(s.recv(65536))
    # The proxy notices, drops the upstream call and records a client-closed request.
    wait_until(lambda: metric(c, 'orchestrator_requests_total{route="gone_dl",status="499"}') == 1,
               timeout=3, message="499 recorded")
    breaker = c.get("/health/endpoints/gone_dl").json()["circuit_breaker"]
    assert breaker["total_failures"] == 0 and breaker["state"] == "Closed"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_caller_abandoning_an_upload_is_not_a_backend_failure(proxy, backend, framing):
    c = proxy.client()
    name = f"gone_ul_{framing.replace('-', '_')}"
    register(c, backend, name)
    header = "Content-Length: 104857600" if framing == "content-length" else "Transfer-Encoding: chunked"
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(f"POST /orchestrator/{name}/upload HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
        for _ in range(32):
            piece = b"x" * 65536
            s.sendall(piece if framing == "content-length" else b"10000\r\n" + piece + b"\r\n")
    wait_until(lambda: metric(c, f'orchestrator_requests_total{{route="{name}",status="499"}}') == 1,
               timeout=3, message="499 recorded")
    breaker = c.get(f"/health/endpoints/{name}").json()["circuit_breaker"]
    assert breaker["total_failures"] == 0 and breaker["consecutive_failures"] == 0
    assert metric(c, f'orchestrator_upstream_errors_total{{route="{name}",kind="upstream_protocol_error"}}') == 0
