"""The SIGTERM drain of one proxy process, over real sockets (issue 11, item 1).

A rolling update sends SIGTERM while the load balancer still routes new
connections to the replica for a second or two. The proxy must then: answer
/readyz 503, keep accepting and serving, tell kept-alive callers
`Connection: close`, then stop accepting, let in-flight calls finish, exit 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from testbed.harness import config_yaml, endpoint, free_port, wait_until

pytestmark = pytest.mark.timeout(90)


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=5)


def test_sigterm_drains_serves_in_flight_and_exits_zero(start_proxy, backend) -> None:
    admin_port = free_port()
    proxy = start_proxy(config_yaml([endpoint("drain", f"{backend.url}/drain1", timeout=20)], health={"enabled": False}),
                        args=("--drain-seconds", "3.5", "--grace-seconds", "15", "--admin-port", str(admin_port),
                              "--log-level", "info"))
    kept = proxy.client()
    first = kept.get("/orchestrator/drain/before")
    assert first.status_code == 200 and "close" not in first.headers.get("connection", "")

    # A long call in flight across the whole drain period.
    slow: dict[str, Any] = {}

    def call_slow() -> None:
        slow["response"] = httpx.get(f"{proxy.url}/orchestrator/drain/slow/8", timeout=30)
        slow["done"] = time.monotonic()

    caller = threading.Thread(target=call_slow)
    caller.start()
    wait_until(lambda: backend.hits("/drain1/slow/8") == 1, message="the slow call reached the backend")

    proxy.proc.send_signal(signal.SIGTERM)
    draining = wait_until(lambda: readyz(proxy.url).status_code == 503 and readyz(proxy.url),
                          message="/readyz 503 after SIGTERM")
    assert draining.json()["draining"] is True and draining.json()["ready"] is False
    assert readyz(f"http://127.0.0.1:{admin_port}").status_code == 503  # the admin port's probe agrees

    # Still accepting during the drain (3.5 s: room for a loaded machine): a new
    # connection is served, and told to go away after.
    fresh = httpx.get(f"{proxy.url}/orchestrator/drain/during", timeout=5)
    assert fresh.status_code == 200 and fresh.headers["connection"] == "close"
    # The kept-alive connection is served too, once more, with Connection: close.
    again = kept.get("/orchestrator/drain/kept")
    assert again.status_code == 200 and again.headers["connection"] == "close"
    assert backend.hits("/drain1/during") == 1 and backend.hits("/drain1/kept") == 1

    # After the drain period the port closes while the slow call is still running...
    wait_until(lambda: refuses(proxy.port), timeout=20, message="the traffic port closed after the drain")
    closed_at = time.monotonic()
    # ...which then completes whole, and the process exits 0.
    caller.join(timeout=30)
    assert slow["response"].status_code == 200 and slow["response"].json()["path"] == "/drain1/slow/8"
    assert closed_at < slow["done"]
    assert proxy.proc.wait(timeout=30) == 0
    log = proxy.log()
    assert "SIGTERM: draining for 3.5s" in log and "Traceback" not in log


def test_a_stream_in_flight_finishes_whole_after_the_ports_close(start_proxy, backend) -> None:
    proxy = start_proxy(config_yaml([endpoint("drip", f"{backend.url}/drip4", timeout=30)], health={"enabled": False}),
                        args=("--drain-seconds", "0.5", "--grace-seconds", "15"))
    with httpx.stream("GET", f"{proxy.url}/orchestrator/drip/drip/5", timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines) == "line 0"  # the answer has started: the stream is in flight
        proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses(proxy.port), timeout=20, message="the traffic port closed after the drain")
        rest = list(lines)
    assert rest == [f"line {i}" for i in range(1, 10)]
    assert proxy.proc.wait(timeout=30) == 0


def test_a_second_signal_skips_the_drain(start_proxy, backend) -> None:
    proxy = start_proxy(config_yaml([endpoint("drain", f"{backend.url}/drain2")], health={"enabled": False}),
                        args=("--drain-seconds", "600"))
    proxy.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: readyz(proxy.url).status_code == 503, message="/readyz 503 after SIGTERM")
    assert httpx.get(f"{proxy.url}/orchestrator/drain/x", timeout=5).status_code == 200
    proxy.proc.send_signal(signal.SIGTERM)
    # A 600 s drain period: only the second signal can end the process within the wait.
    assert proxy.proc.wait(timeout=30) == 0


def test_drain_seconds_zero_stops_accepting_at_once(start_proxy, backend) -> None:
    proxy = start_proxy(config_yaml([endpoint("drain", f"{backend.url}/drain3")], health={"enabled": False}),
                        args=("--drain-seconds", "0"))
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=30) == 0
    assert refuses(proxy.port)
