"""Property-based adversarial tier: hypothesis writes the hostile bytes, h11 judges them.

A real proxy process sits between raw caller sockets and strict backends
(testbed/rawhttp.py). Hypothesis generates request heads from the
ingredients of smuggling and desync attacks (duplicate and malformed
Content-Length, transfer-coding lists, `Connection` options naming framing
headers, obs-fold, bare LF, control bytes, Host variants, dot segments in
every disguise) and backend answers from the ingredients of response desync
(bad status lines, length/coding conflicts, junk after the body). The
properties are the ones a gateway owes whatever it is sent:

- every byte the caller gets back parses as HTTP/1.1 (h11), and nothing is a 500;
- the backend only ever sees well-formed, whole requests (its h11 parser
  never complains), never more requests than the caller sent, each inside
  the route's base path with an allowed method;
- answers never cross: a probe sent after the attack on the same connection
  gets its own answer or none, never the backend's answer to something else;
- after a hostile backend answer, the next caller is served correctly.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Optional

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.harness import ProxyFactory, config_yaml, endpoint
from testbed.rawhttp import Hostile, StrictBackend, read_message

pytestmark = pytest.mark.timeout(600)

ALLOWED = ["GET", "POST", "PUT"]
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROBE = b"GET /orchestrator/strict/probe HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.fixture(scope="module")
def proxy(module_proxy_factory: ProxyFactory, strict: StrictBackend, hostile: Hostile):
    config = config_yaml([
        endpoint("strict", strict.url + "/base", methods=ALLOWED),
        endpoint("hostile", hostile.backend.url, methods=ALLOWED),
    ], breaker={"failure_threshold": 10000}, health={"enabled": False})
    return module_proxy_factory(config, args=("--head-timeout", "2"))


# -- what the caller sends -------------------------------------------------------------------

def header(name: str, values: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(values).map(lambda v: name.encode() + b":" + v)


FRAMING = st.one_of(
    header("Content-Length", [b" 5", b"5", b" 05", b" +5", b" 5,5", b" 5, 6", b" -1", b" 0x5", b"", b" 5 5",
                              b" 99999999999999999999", b" 0"]),
    header("Transfer-Encoding", [b" chunked", b" Chunked", b" chunked ", b" chunked, identity", b" identity",
                                 b" gzip, chunked", b" xchunked", b"\tchunked", b" chunked, chunked", b" "]),
    header("Connection", [b" close", b" keep-alive", b" content-length", b" Transfer-Encoding", b" x, host",
                          b" te", b" upgrade"]),
    header("Host", [b" gw", b"", b" a b", b" gw:99999", b" [::1]", b" gw\x00", b" gw/x"]),
    header("Expect", [b" 100-continue", b" nonsense"]),
    header("Upgrade", [b" websocket", b" h2c"]),
    st.sampled_from([b" folded: continuation", b"X-Ctl: a\x01b", b"X-Bad Name: v", b"X-Empty:", b": no-name",
                     b"X-Tab:\tv", b"Content-Length : 5", b"X-Cr: a\rb"]),
)
BODIES = st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n",
                          b"GET /orchestrator/strict/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
                          b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n", b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"])
PATHS = st.lists(st.sampled_from(["a", "..", ".", "%2e%2e", "%2E.", "..;", "%252e%252e", "%00", "%0d%0a", "%2f",
                                  "a;b", "~", "%ff", "\u00e9", "?q=1", "#f", "//", "a%20b"]),
                 min_size=0, max_size=4).map(lambda parts: "/".join(parts))
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "CONNECT", "TRACE", "get", "G\x01T", "PO ST"])
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 x"])
LINE_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


VALID_METHODS = st.sampled_from(["GET", "POST", "PUT"])
PLAIN_BODIES = st.sampled_from([b"hello", b"GET /orchestrator/strict/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n", b""])


def chunked(body: bytes) -> bytes:
    return (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"


@st.composite
def attacks(draw: st.DrawFn) -> bytes:
    """Mostly a well-formed request with a body (so that a framing bug has bytes to
    misplace), then zero or more hostile changes."""
    end = b"\r\n"
    method, version = draw(VALID_METHODS), "HTTP/1.1"
    body = draw(PLAIN_BODIES)
    headers = [b"Host: gw"]
    if draw(st.booleans()):
        headers.append(b"Transfer-Encoding: chunked")
        wire = chunked(body)
    else:
        headers.append(b"Content-Length: %d" % len(body))
        wire = body
    path = "a"
    for change in draw(st.lists(st.sampled_from(["header", "header", "header", "method", "version", "path",
                                                 "line-end", "drop-host", "body"]), max_size=3)):
        if change == "header":
            headers.insert(draw(st.integers(0, len(headers))), draw(FRAMING))
        elif change == "method":
            method = draw(METHODS)
        elif change == "version":
            version = draw(VERSIONS)
        elif change == "path":
            path = draw(PATHS)
        elif change == "line-end":
            end = draw(LINE_ENDS)
        elif change == "drop-host" and b"Host: gw" in headers:
            headers.remove(b"Host: gw")
        elif change == "body":
            wire = draw(BODIES)
    line = f"{method} /orchestrator/strict/{path} {version}".encode("utf-8")
    return end.join([line, *headers]) + end + end + wire


def read_answers(sock: socket.socket, methods: list[str], quiet: float = 0.4, limit: float = 6.0) -> tuple[list, bytes]:
    """Every response in what the proxy sends until it closes, goes quiet, or one per
    request in `methods` arrived (a HEAD's answer has no body, so h11 must know).

    Parsed strictly by h11: a response that does not parse fails the test."""
    wanted = len(methods)
    data = b""
    deadline = time.monotonic() + limit
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        if len(parse_responses(data, methods)) >= wanted:
            break
    return parse_responses(data, methods, complete=True), data


def parse_responses(data: bytes, methods: list[str], complete: bool = False) -> list[tuple[h11.Response, bytes]]:
    conn = h11.Connection(h11.CLIENT)
    feed = _Feed(data)
    answers: list[tuple[h11.Response, bytes]] = []
    while True:
        method = methods[len(answers)] if len(answers) < len(methods) else "GET"
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        try:
            message = read_message(conn, feed)  # type: ignore[arg-type]
        except _Starved:
            if complete:
                assert feed.rest() == b"", f"a partial response: {feed.rest()[:200]!r}"
            return answers
        if message is None:
            return answers
        answers.append(message)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return answers
        conn.start_next_cycle()


class _Starved(Exception):
    pass


class _Feed:
    """A socket-like view of bytes already received, for rawhttp.read_message."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.started = data, 0, 0

    def recv(self, n: int) -> bytes:
        if self.at >= len(self.data):
            raise _Starved
        chunk = self.data[self.at:self.at + n]
        self.at += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.data[self.at:]


def echo_target(body: bytes) -> Optional[str]:
    try:
        return json.loads(body)["target"]
    except (ValueError, KeyError, TypeError):
        return None


@EXAMPLES
@given(attack=attacks())
def test_no_request_is_smuggled_and_no_answer_crosses(proxy, strict, attack: bytes) -> None:
    strict.reset()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(attack + PROBE)
        # The attack's body may be a pipelined request of its own, then the probe.
        first = attack.split(b" ", 1)[0].decode("latin-1")
        answers, raw = read_answers(sock, ["HEAD" if first == "HEAD" else "GET", "GET", "GET"])
    time.sleep(0.05)  # the backend thread records what it parsed just after answering
    assert strict.errors == [], strict.errors
    seen = [(s.method, s.target) for s in strict.seen]
    assert len(seen) <= 3, seen
    for method, target in seen:
        assert target.startswith("/base/") or target == "/base", target
        assert method in ALLOWED or method == "HEAD", method  # HEAD goes wherever GET may
        assert "/../" not in target + "/", target
    statuses = [r.status_code for r, _ in answers]
    assert all(100 <= s < 600 and s != 500 for s in statuses), statuses
    # Answers never cross: the 200s echo the backend's requests in the order it saw them.
    # (A HEAD's answer has no body to compare: None.)
    echoed = [echo_target(body) for r, body in answers if r.status_code == 200]
    assert len(echoed) <= len(seen), (attack, echoed, seen)
    for echo, (_, target) in zip(echoed, seen):
        assert echo in (None, target), (attack, echoed, seen)


# -- what the backend answers ------------------------------------------------------------------

STATUS_LINES = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified",
                                b"HTTP/1.1 600 Odd", b"HTTP/1.1 101 Switching", b"HTTP/1.0 200 OK", b"HTTP/1.1 2000 X",
                                b"HTTP/1.1 200", b"HTTP/9.9 200 OK", b"ICY 200 OK", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"])
RESPONSE_HEADERS = st.one_of(
    header("Content-Length", [b" 2", b" 2, 2", b" 2, 3", b" -1", b" abc", b" 100", b" 0"]),
    header("Transfer-Encoding", [b" chunked", b" gzip", b" xchunked", b" chunked, identity"]),
    st.sampled_from([b"Connection: close", b" folded", b"X-Bad Name: v", b"Set-Cookie: a=b", b"X-Ctl: \x01"]),
)
RESPONSE_BODIES = st.sampled_from([b"ok", b"", b"2\r\nok\r\n0\r\n\r\n", b"okHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nPOISONED",
                                   b"zz\r\nok\r\n0\r\n\r\n", b"o"])


@st.composite
def backend_answers(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(RESPONSE_HEADERS, max_size=3))
    return b"\r\n".join([draw(STATUS_LINES), *headers]) + b"\r\n\r\n" + draw(RESPONSE_BODIES)


@EXAMPLES
@given(answer=backend_answers())
def test_a_hostile_backend_cannot_break_the_caller_or_the_next_one(proxy, strict, hostile, answer: bytes) -> None:
    hostile.answer, hostile.keep = answer, False
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /orchestrator/hostile/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        answers, raw = read_answers(sock, ["GET"])
    for response, body in answers:
        assert 100 <= response.status_code < 600 and response.status_code != 500, response
        # (POISONED may be this caller's body: without a length, a body ends at the close.)
    # The next caller, on a fresh connection, is served its own answer.
    strict.reset()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /orchestrator/strict/next HTTP/1.1\r\nHost: gw\r\n\r\n")
        after, _ = read_answers(sock, ["GET"])
    assert len(after) == 1 and after[0][0].status_code == 200
    assert echo_target(after[0][1]) == "/base/next"
