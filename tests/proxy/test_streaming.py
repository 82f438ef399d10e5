"""Bodies stream through the proxy: memory does not grow with body size."""

from __future__ import annotations

import threading
import time

import pytest

from harness import config_yaml, endpoint

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
