"""The data plane as an attacker meets it: raw sockets in, a strict parser (h11) behind.

Each class of attack from the hardening issue has its tests here: request
smuggling through `Connection` options and framing, Host, hostile backends
(lengths, codings, status codes, heads, extra bytes), bounded resources
(request line, header block while it arrives, head timeout, connection cap),
a caller who hangs up, disguised paths, and backend URL validation. The
property-based tier in test_adversarial.py generates many more of each.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Iterator

import h11
import httpx
import pytest

from testbed.harness import ProxyFactory, config_yaml, endpoint, wait_until
from testbed.rawhttp import Hostile, Seen, StrictBackend, exchange, read_message

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def proxy(module_proxy_factory: ProxyFactory, strict: StrictBackend, hostile: Hostile):
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    config = config_yaml([
        endpoint("strict", strict.url + "/base", methods=methods),
        endpoint("getonly", strict.url + "/ro", methods=["GET"]),
        endpoint("hostile", hostile.backend.url, methods=methods),
    ], breaker={"failure_threshold": 1000}, health={"enabled": False})
    return module_proxy_factory(config, args=("--head-timeout", "1.5"))


@pytest.fixture(autouse=True)
def clean(strict: StrictBackend, hostile: Hostile) -> None:
    strict.reset()
    hostile.backend.reset()
    hostile.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    hostile.keep = True


def one(proxy, data: bytes) -> tuple:
    answers, closed = exchange(proxy.port, data)
    assert len(answers) == 1, answers
    return answers[0], closed


# -- 1. framing is the proxy's own ----------------------------------------------------------

SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("option", ["content-length", "Content-Length", "keep-alive, content-length",
                                    "transfer-encoding", "host", "te"])
@pytest.mark.parametrize("route", ["strict", "getonly"])
def test_connection_options_naming_framing_are_refused_and_nothing_is_smuggled(proxy, strict, option, route):
    request = (f"GET /orchestrator/{route}/a HTTP/1.1\r\nHost: gw\r\nConnection: {option}\r\n"
               f"Content-Length: {len(SMUGGLED)}\r\n\r\n").encode() + SMUGGLED
    answer, closed = one(proxy, request)
    assert answer.status == 400 and answer.json()["error"]["code"] == "bad_request"
    assert "Connection" in answer.json()["error"]["message"]
    assert closed
    assert strict.seen == [] and strict.errors == []


def test_framing_refusals_count_under_the_route_only_when_it_exists(proxy, strict):
    def count(route: str) -> float:
        text = httpx.get(proxy.url + "/metrics").text
        key = f'orchestrator_requests_total{{route="{route}",status="400"}} '
        return next((float(line[len(key):]) for line in text.splitlines() if line.startswith(key)), 0.0)
    before_known, before_unknown = count("strict"), count("(unknown)")
    bad = "POST /orchestrator/{}/a HTTP/1.1\r\nHost: gw\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx"
    assert one(proxy, bad.format("strict").encode())[0].status == 400
    assert one(proxy, bad.format("made-up-name").encode())[0].status == 400
    assert count("strict") == before_known + 1
    assert count("(unknown)") == before_unknown + 1  # a caller's made-up name is no label of its own
    assert 'route="made-up-name"' not in httpx.get(proxy.url + "/metrics").text


def test_bodies_arrive_with_the_proxys_own_framing(proxy, strict):
    requests = (b"POST /orchestrator/strict/p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
                b"PUT /orchestrator/strict/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                b"GET /orchestrator/getonly/g HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nxyz")
    answers, _ = exchange(proxy.port, requests, expect=3)
    assert [a.status for a in answers] == [200, 200, 200]
    assert [(a.json()["method"], a.json()["target"], a.json()["body"]) for a in answers] == [
        ("POST", "/base/p", "hello"), ("PUT", "/base/c", "abcde"), ("GET", "/ro/g", "xyz")]
    assert strict.errors == []
    post, put, get = strict.seen
    assert post.header("content-length") == ["5"] and post.header("transfer-encoding") == []
    assert put.header("transfer-encoding") == ["chunked"] and put.header("content-length") == []
    assert get.header("content-length") == ["3"]


@pytest.mark.parametrize("codings, status", [
    ("gzip, chunked", 501), ("deflate, chunked", 501), ("xchunked", 400), ("chunked, gzip", 400),
])
def test_request_transfer_codings_other_than_chunked_are_refused(proxy, strict, codings, status):
    request = (f"POST /orchestrator/strict/t HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: {codings}\r\n\r\n"
               "0\r\n\r\n").encode()
    answer, closed = one(proxy, request)
    assert answer.status == status and closed
    assert strict.seen == []


@pytest.mark.parametrize("head", [
    b"Content-Length: 3\r\nTransfer-Encoding: chunked",
    b"Content-Length: 3\r\nContent-Length: 4",
    b"Content-Length: -3",
    b"Content-Length: 3 3",
])
def test_conflicting_lengths_are_refused(proxy, strict, head):
    answer, closed = one(proxy, b"POST /orchestrator/strict/t HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n\r\nabc")
    assert answer.status == 400 and closed
    assert strict.seen == []


@pytest.mark.parametrize("hosts", [[], ["a", "a"], ["a", "b"], ["a b"], ["a/b"], ["user@a"]])
@pytest.mark.parametrize("path", ["/orchestrator/strict/h", "/health", "/registry/endpoints"])
def test_missing_repeated_or_malformed_host_is_400(proxy, strict, hosts, path):
    head = "".join(f"Host: {h}\r\n" for h in hosts)
    answer, closed = one(proxy, f"GET {path} HTTP/1.1\r\n{head}\r\n".encode())
    assert answer.status == 400 and "Host" in answer.json()["error"]["message"]
    assert strict.seen == []


def test_http_1_0_without_host_is_served(proxy, strict):
    answer, _ = one(proxy, b"GET /orchestrator/strict/old HTTP/1.0\r\n\r\n")
    assert answer.status == 200 and answer.json()["target"] == "/base/old"


# -- 3. every exchange is isolated, whatever the backend sends --------------------------------

def hostile_get(proxy, path: str = "/x") -> tuple:
    return one(proxy, f"GET /orchestrator/hostile{path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_with_a_length_are_relayed_cleanly(proxy, hostile, status):
    hostile.answer = b"HTTP/1.1 %d X\r\ncontent-length: 5\r\netag: \"1\"\r\n\r\n" % status
    answers, closed = exchange(proxy.port, b"GET /orchestrator/hostile/a HTTP/1.1\r\nHost: gw\r\n\r\n" * 2, expect=2)
    assert [a.status for a in answers] == [status, status]  # the caller's connection survived the first
    assert all(a.body == b"" and a.header("content-length") is None for a in answers)
    assert answers[0].header("etag") == '"1"'


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 600 Odd", b"HTTP/1.1 099 Low", b"HTTP/1.1 101 Switching",
                                         b"HTTP/1.1 2000 Big", b"HTTP/1.1 abc Nope", b"HTTP/9.9 200 OK"])
def test_invalid_status_codes_become_502(proxy, hostile, status_line):
    hostile.answer = status_line + b"\r\ncontent-length: 2\r\n\r\nok"
    answer, _ = hostile_get(proxy)
    assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_protocol_error"


@pytest.mark.parametrize("codings", [b"gzip", b"xchunked", b"gzip, chunked", b"chunked, identity"])
def test_response_transfer_codings_other_than_chunked_become_502(proxy, hostile, codings):
    hostile.answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + codings + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    hostile.keep = False
    answer, _ = hostile_get(proxy)
    assert answer.status == 502 and "transfer coding" in answer.json()["error"]["message"]


def test_a_huge_response_head_becomes_502(proxy, hostile):
    hostile.answer = b"HTTP/1.1 200 OK\r\n" + b"x-junk: " + b"a" * 100_000 + b"\r\ncontent-length: 2\r\n\r\nok"
    answer, _ = hostile_get(proxy)
    assert answer.status == 502 and "64 KiB" in answer.json()["error"]["message"]


def test_interim_responses_are_skipped(proxy, hostile):
    hostile.answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal")
    answer, _ = hostile_get(proxy)
    assert answer.status == 200 and answer.body == b"real"


def test_bytes_after_a_response_never_reach_another_caller(proxy, hostile):
    poison = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED"
    hostile.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + poison
    assert hostile_get(proxy, "/first")[0].body == b"ok"  # (may ride a connection pooled by an earlier test)
    before = hostile.backend.connections
    bodies = [hostile_get(proxy, f"/{i}")[0].body for i in range(5)]
    assert bodies == [b"ok"] * 5
    # each connection carried one exchange: one whose state is in doubt is never pooled
    assert hostile.backend.connections - before == 5


def test_a_body_shorter_than_its_length_is_502_and_the_connection_is_dropped(proxy, hostile):
    hostile.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"
    hostile.keep = False
    answer, _ = hostile_get(proxy)
    assert answer.status == 502
    hostile.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    hostile.keep = True
    assert hostile_get(proxy)[0].body == b"ok"


def test_a_streamed_answer_cut_short_by_the_backend_is_cut_short_for_the_caller(proxy, hostile):
    hostile.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 300_000  # then it closes
    hostile.keep = False
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /orchestrator/hostile/cut HTTP/1.1\r\nHost: gw\r\n\r\n")
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        events, body = [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                if not data:
                    break
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                body += len(event.data)
            else:
                events.append(event)
    assert isinstance(events[0], h11.Response) and events[0].status_code == 200
    assert not any(isinstance(e, h11.EndOfMessage) for e in events)  # never claimed complete
    assert body == 300_000  # what the backend sent, then the close
    hostile.answer, hostile.keep = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", True
    assert hostile_get(proxy)[0].body == b"ok"
    log = proxy.log()
    assert "ASGI callable returned without completing response" not in log  # not an error of ours
    assert "after the answer had started; the caller's connection is closed" in log


def test_concurrent_callers_each_get_their_own_answer(proxy, strict):
    results: dict[int, str] = {}

    def caller(i: int) -> None:
        with httpx.Client(base_url=proxy.url, timeout=20) as c:
            for j in range(20):
                token = f"{i}-{j}"
                r = c.post(f"/orchestrator/strict/{token}", content=token.encode(), headers={"x-token": token})
                data = r.json()
                if (data["target"], data["body"], data["token"]) != (f"/base/{token}", token, [token]):
                    results[i] = f"{token} got {data}"
                    return
        results[i] = "ok"
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: "ok" for i in range(8)}
    assert strict.errors == []


# -- 4. bounded resources -------------------------------------------------------------------

def test_pipelined_requests_are_answered_in_order_up_to_the_bound_then_the_connection_closes(proxy, strict):
    from orchestrator.proxy.http_server import MAX_PIPELINED
    n = 2000  # one sendall: uvicorn alone would parse and queue every one of them
    data = b"".join(b"GET /orchestrator/strict/p%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(n))
    answers, closed = exchange(proxy.port, data, expect=n)
    assert closed
    # The one in progress when the queue filled, plus the queue (a read may end before the bound).
    assert 1 <= len(answers) <= MAX_PIPELINED + 1, len(answers)
    assert all(a.status == 200 for a in answers)
    assert [json.loads(a.body)["target"] for a in answers] == [f"/base/p{i}" for i in range(len(answers))]
    assert answers[-1].headers.get("connection") == ["close"]
    assert [s.target for s in strict.seen] == [f"/base/p{i}" for i in range(len(answers))]  # nothing else left


def test_callers_pipelining_without_end_hold_no_queue_in_the_proxy(proxy, strict):
    from orchestrator.proxy.http_server import MAX_PIPELINED
    rss_before = proxy.rss_kb()
    stream = b"GET /orchestrator/strict/x HTTP/1.1\r\nHost: gw\r\n\r\n" * 8000  # 384 KB
    socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=0.05) for _ in range(16)]
    peak = rss_before
    try:
        pending = [memoryview(stream) for _ in socks]
        deadline = time.monotonic() + 1.2  # within the fixture's 1.5 s head timeout
        while time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                try:
                    k = sock.send(pending[i])
                except (socket.timeout, BlockingIOError):
                    continue
                except OSError:
                    continue
                pending[i] = pending[i][k:] if k < len(pending[i]) else memoryview(stream)
            peak = max(peak, proxy.rss_kb())
    finally:
        for sock in socks:
            sock.close()
    # Without the bound each connection's read of up to 256 KiB became ~5,000 queued
    # requests (about 7 MB each, ~100 MB for these 16); with it, 32 at most.
    assert peak - rss_before < 24 * 1024, peak - rss_before
    assert len(strict.seen) <= 16 * (MAX_PIPELINED + 1)


def test_request_line_cap_is_414(proxy):
    answer, closed = one(proxy, b"GET /orchestrator/strict/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert answer.status == 414 and closed


def test_too_many_headers_is_431(proxy):
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    answer, closed = one(proxy, b"GET /orchestrator/strict/h HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n")
    assert answer.status == 431 and closed


def test_an_endless_header_is_refused_while_it_arrives(proxy, strict):
    """431 comes back while the header still arrives, and the proxy never holds it whole."""
    rss_before = proxy.rss_kb()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(b"GET /orchestrator/strict/h HTTP/1.1\r\nHost: gw\r\nx-big: ")
    sent, limit = 0, 40 * 1024 * 1024
    answer = b""
    try:
        while sent < limit and not answer:
            sock.sendall(b"a" * 65536)
            sent += 65536
            sock.setblocking(False)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(10)
    if not answer:
        answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert sent < limit  # refused before the caller got through 40 MiB of one header
    assert proxy.rss_kb() - rss_before < 16 * 1024  # and the proxy never buffered it
    assert strict.seen == []


def test_a_slow_head_gets_408_and_the_connection_closes(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(b"GET /orchestrator/strict/slow HTTP/1.1\r\nHost: gw\r\n")  # ... and never the blank line
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"request_head_timeout" in data


def test_a_silent_connection_is_closed(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    assert sock.recv(1) == b""  # closed by the proxy (after --head-timeout), nothing said
    sock.close()


def test_a_caller_that_hangs_up_cancels_the_upstream_exchange(proxy, hostile):
    upstream_closed = threading.Event()

    def hold(seen: Seen) -> tuple[bytes, bool]:
        seen.sock.settimeout(15)
        try:
            if seen.sock.recv(1) == b"":
                upstream_closed.set()
        except OSError:
            pass
        return b"", False
    def breaker() -> dict:
        with httpx.Client(base_url=proxy.url) as c:
            return c.get("/health/endpoints/hostile").json()["circuit_breaker"]

    failures = breaker()["total_failures"]  # other tests of this backend fail on purpose
    hostile.backend.responder = hold
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        sock.sendall(b"GET /orchestrator/hostile/hold HTTP/1.1\r\nHost: gw\r\n\r\n")
        wait_until(lambda: hostile.backend.seen, message="the request reached the backend")
        sock.close()
        assert upstream_closed.wait(10), "the proxy kept the upstream exchange open after the caller left"
    finally:
        hostile.backend.responder = hostile.respond
    after = breaker()
    assert after["total_failures"] == failures, after  # a caller leaving is not the backend's fault
    with httpx.Client(base_url=proxy.url) as c:
        metrics = c.get("/metrics").text
    assert re.search(r'orchestrator_requests_total\{route="hostile",status="499"\} [1-9]', metrics), metrics


def test_connection_cap_refuses_politely_and_keeps_serving(start_proxy: ProxyFactory, strict):
    proxy = start_proxy(config_yaml([endpoint("strict", strict.url)], health={"enabled": False}),
                        args=("--max-connections", "8", "--head-timeout", "30"))
    busy = []
    try:
        # 8 connections mid-request (a head begun, not finished): none of them is idle
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            s.sendall(b"GET /orchestrator/strict/k HTTP/1.1\r\n")
            busy.append(s)
        wait_until(lambda: _refused(proxy.port), message="a connection beyond the cap is refused")
        # the ones it has are still served
        busy[0].sendall(b"Host: gw\r\n\r\n")
        busy[0].settimeout(10)
        caller = h11.Connection(h11.CLIENT)  # read the whole answer, however it is split
        caller.send(h11.Request(method="GET", target="/orchestrator/strict/k", headers=[("host", "gw")]))
        caller.send(h11.EndOfMessage())
        message = read_message(caller, busy[0])
        assert message is not None and message[0].status_code == 200
        # busy[0] is now an idle kept-alive connection: a newcomer takes its place
        answers, _ = exchange(proxy.port, b"GET /orchestrator/strict/new HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert answers[0].status == 200
        assert busy[0].recv(1) == b""  # the idle one was closed to make room
    finally:
        for s in busy:
            s.close()


def test_a_caller_that_stops_reading_is_dropped_after_the_send_timeout(start_proxy: ProxyFactory, strict):
    """Slow-read defence: a caller that asks for a big body and never reads loses the
    connection once the proxy's writes have been blocked for --send-timeout."""
    size = 48 * 1024 * 1024
    big = StrictBackend(lambda seen: (b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size, True))
    proxy = start_proxy(config_yaml([endpoint("big", big.url), endpoint("strict", strict.url)],
                                    health={"enabled": False}), args=("--send-timeout", "1"))
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(b"GET /orchestrator/big/file HTTP/1.1\r\nHost: gw\r\n\r\n")
        # Stop reading until the backend has sent its whole body (the proxy holds it
        # then), then well past the send timeout.
        wait_until(lambda: len(big.seen) == 1, message="the backend was asked")
        time.sleep(3)
        received = 0
        sock.settimeout(10)
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
        assert received < size, "the proxy kept the stalled connection and delivered the whole body"
        # and it still serves others
        answers, _ = exchange(proxy.port, b"GET /orchestrator/strict/next HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert answers[0].status == 200 and answers[0].json()["target"] == "/next"
    finally:
        sock.close()
        big.close()


def _refused(port: int) -> bool:
    answers, closed = exchange(port, b"GET /orchestrator/strict/x HTTP/1.1\r\nHost: gw\r\n\r\n")
    if answers and answers[0].status == 503:
        assert answers[0].json()["error"]["code"] == "too_many_connections" and closed
        return True
    return False


# -- 5. paths and backend URLs --------------------------------------------------------------

@pytest.mark.parametrize("path", ["a/..;/b", "..;/secret", "a/.;x/b", "%252e%252e/x", "a/%252e%252e%252f",
                                  "a/%2e%2e%3bx/b", "a/%00/b", "a/%0d%0aX-Injected:%201", "%2500", "a/%7f"])
def test_disguised_dot_segments_and_encoded_controls_are_400(proxy, strict, path):
    answer, _ = one(proxy, f"GET /orchestrator/strict/{path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    assert answer.status == 400 and answer.json()["error"]["code"] == "bad_path"
    assert strict.seen == []


@pytest.mark.parametrize("url, fragment", [
    ("http://127.0.0.1:1/a b", "printable ASCII"), ("http://127.0.0.1:1/caf\u00e9", "printable ASCII"),
    ("http://127.0.0.1:1/a\tb", "printable ASCII"), ("http://169.254.169.254/latest", "link-local"),
    ("http://[fe80::1]/x", "link-local"), ("http://[::ffff:169.254.169.254]/", "link-local"),
])
def test_backend_urls_are_validated_at_registration(proxy, url, fragment):
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post("/registry/endpoints", json={"config": {"name": "bad_url", "url": url}})
        assert r.status_code == 422 and fragment in r.text
        assert c.get("/registry/endpoints/bad_url").status_code == 404


def test_link_local_in_the_config_file_is_reported_and_skipped(start_proxy: ProxyFactory, strict):
    proxy = start_proxy(config_yaml([endpoint("good", strict.url)], health={"enabled": False}))
    proxy.write_config(config_yaml([endpoint("good", strict.url), endpoint("meta", "http://169.254.169.254/")],
                                   health={"enabled": False}))
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post("/config/reload")
        assert r.status_code == 422 and "endpoints[1] (meta): url: 169.254.169.254 is link-local" in r.text
        assert c.get("/orchestrator/good/x").status_code == 200


def test_link_local_allowed_when_the_operator_says_so(start_proxy: ProxyFactory, strict):
    proxy = start_proxy(config_yaml([endpoint("good", strict.url)], health={"enabled": False}),
                        args=("--allow-link-local",))
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post("/registry/endpoints", json={"config": {"name": "meta", "url": "http://169.254.169.254/"}})
        assert r.status_code == 201


# -- 6. the admin API -----------------------------------------------------------------------

def test_admin_bodies_are_capped(proxy):
    big = json.dumps({"config": {"name": "x", "url": "http://127.0.0.1:1/", "version": "v" * (2 << 20)}})
    with httpx.Client(base_url=proxy.url) as c:
        r = c.post("/registry/endpoints", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_body_too_large"

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536].encode()
        r = c.post("/registry/endpoints", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/registry/endpoints/x").status_code == 404


@pytest.fixture
def token_proxy(start_proxy: ProxyFactory, strict):
    """Loopback callers treated like remote ones, so the remote rules can be tested on 127.0.0.1."""
    return start_proxy(config_yaml([endpoint("strict", strict.url)], health={"enabled": False}),
                       args=("--admin-require-token", "--admin-token", "s3cret"))


@pytest.mark.parametrize("path", ["/", "/registry/endpoints", "/metrics", "/docs", "/openapi.json",
                                  "/config/status", "/health/endpoints/strict"])
def test_admin_calls_need_the_token_when_loopback_is_not_trusted(token_proxy, path):
    with httpx.Client(base_url=token_proxy.url) as c:
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == "admin_unauthenticated"
        r = c.get(path, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_forbidden"
        assert c.get(path, headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_admin_writes_need_the_token_too(token_proxy, strict):
    body = {"config": {"name": "evil", "url": "http://127.0.0.1:1/"}}
    with httpx.Client(base_url=token_proxy.url) as c:
        assert c.post("/registry/endpoints", json=body).status_code == 401
        assert c.delete("/registry/endpoints/strict").status_code == 401
        assert c.put("/registry/endpoints/strict/status", params={"status": "maintenance"}).status_code == 401
        assert c.get("/orchestrator/strict/x").status_code == 200  # traffic is untouched
        for path in ("/readyz", "/livez", "/health"):
            assert c.get(path).status_code == 200


def test_without_a_token_remote_admin_is_forbidden_with_a_hint(start_proxy: ProxyFactory, strict):
    proxy = start_proxy(config_yaml([endpoint("strict", strict.url)], health={"enabled": False}),
                        args=("--admin-require-token",))
    with httpx.Client(base_url=proxy.url) as c:
        r = c.get("/registry/endpoints")
        assert r.status_code == 403 and "--admin-token" in r.json()["error"]["message"]


def test_a_separate_admin_listener(start_proxy: ProxyFactory, strict):
    from testbed.harness import free_port

    admin_port = free_port()
    proxy = start_proxy(config_yaml([endpoint("strict", strict.url)], health={"enabled": False}),
                        args=("--admin-port", str(admin_port)))
    with httpx.Client(base_url=proxy.url) as traffic, httpx.Client(base_url=f"http://127.0.0.1:{admin_port}") as admin:
        assert traffic.get("/orchestrator/strict/x").status_code == 200
        for path in ("/registry/endpoints", "/metrics", "/", "/docs"):
            r = traffic.get(path)
            assert r.status_code == 404 and "admin port" in r.json()["error"]["message"]
        assert traffic.get("/readyz").status_code == 200
        assert admin.get("/registry/endpoints").json()["total"] == 1
        assert "orchestrator_requests_total" in admin.get("/metrics").text
        assert admin.get("/orchestrator/strict/x").status_code == 404  # no traffic on the admin port
