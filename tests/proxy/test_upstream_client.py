"""The data plane's upstream client (proxy/upstream.py) through the real proxy.

Keep-alive reuse against the aiohttp backend; everything a well-behaved
backend does not do (closing idle connections, HTTP/1.0 read-until-close,
malformed answers, TLS with a self-signed certificate) against tiny raw-socket
servers running in threads of the test.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Callable, Optional

import httpx
import pytest

from testbed.harness import config_yaml, endpoint, run_proxy, wait_until

pytestmark = pytest.mark.timeout(60)


# -- raw servers -----------------------------------------------------------------------------

class Conn:
    """One accepted connection, with helpers to read requests off it."""

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.file = sock.makefile("rb")

    def read_request(self) -> Optional[tuple[bytes, bytes]]:
        """(head, body), or None if the client closed the connection."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line)
        head = b"".join(lines)
        body = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                body = self.file.read(int(value))
        return head, body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class RawServer:
    """A threaded 127.0.0.1 server running `handler(conn)` for each connection (optionally TLS)."""

    def __init__(self, handler: Callable[[Conn], None], tls: Optional[ssl.SSLContext] = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.closed = 0  # connections this server has closed (their handler returned)
        self.requests = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            sock.settimeout(10)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.handler(Conn(sock, number))
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self.lock:
                self.closed += 1

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def response(body: bytes = b"ok", status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n%s\r\n%s" % (
        status.encode(), len(body), extra, body)


def serve_forever(answer: Callable[[bytes, Conn], Optional[bytes]]) -> Callable[[Conn], None]:
    """A keep-alive handler: every request gets `answer(head, conn)`; None hangs up."""
    def handler(conn: Conn) -> None:
        while True:
            request = conn.read_request()
            if request is None:
                return
            data = answer(request[0], conn)
            if data is None:
                return
            conn.send(data)
    return handler


def closes_when_idle(conn: Conn) -> None:
    """Keep-alive by the headers, but the server drops the connection after 50 ms idle."""
    while True:
        conn.sock.settimeout(0.05)
        try:
            request = conn.read_request()
        except (socket.timeout, TimeoutError):
            return
        if request is None:
            return
        conn.send(response(b"conn %d" % conn.number))


def one_answer_per_connection(conn: Conn) -> None:
    """Answers the first request, then hangs up on the next one unanswered (the idle-close race)."""
    if conn.read_request() is None:
        return
    conn.send(response(b"conn %d" % conn.number))
    conn.read_request()


def http10_until_close(conn: Conn) -> None:
    request = conn.read_request()
    if request is None:
        return
    size = 1_000_000 if b"/big" in request[0] else 5
    conn.send(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
    for start in range(0, size, 100_000):
        conn.send(b"z" * min(100_000, size - start))


def odd_answers(head: bytes, conn: Conn) -> Optional[bytes]:
    path = head.split(b" ")[1]
    if head.startswith(b"HEAD"):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nx-head: yes\r\n\r\n"
    if path.endswith(b"/204"):
        return b"HTTP/1.1 204 No Content\r\nx-s: 204\r\n\r\n"
    if path.endswith(b"/304"):
        return b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"
    if path.endswith(b"/chunked"):
        pieces = [b"alpha-", b"beta-", b"gamma"]
        return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"".join(b"%x;ext=y\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
    if path.endswith(b"/continue"):
        return b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"after 100")
    if path.endswith(b"/garbage"):
        return b"SPDY/9 what\r\n\r\n"
    if path.endswith(b"/cut"):
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly a few bytes")
        return None
    if path.endswith(b"/bigcut"):
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\n" + b"c" * 500_000)
        return None
    return response(b"path " + path)


@pytest.fixture(scope="module")
def servers():
    made = {
        "idle": RawServer(closes_when_idle),
        "race": RawServer(one_answer_per_connection),
        "http10": RawServer(http10_until_close),
        "odd": RawServer(serve_forever(odd_answers)),
    }
    yield made
    for s in made.values():
        s.stop()


@pytest.fixture(scope="module")
def proxy(module_proxy_factory, backend, servers):
    config = config_yaml([
        endpoint("ka", f"{backend.url}/ka"),
        endpoint("idle", servers["idle"].url),
        endpoint("race", servers["race"].url),
        endpoint("http10", servers["http10"].url),
        endpoint("odd", servers["odd"].url, methods=["GET", "POST"]),
    ], breaker={"failure_threshold": 1000}, health={"enabled": False})
    return module_proxy_factory(config)


@pytest.fixture
def c(proxy):
    return proxy.client()


def connections(backend, prefix: str) -> int:
    return httpx.get(f"{backend.url}/_control/connections", params={"prefix": prefix}).json()["connections"]


def upstream_errors(c, route: str) -> float:
    total = 0.0
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'orchestrator_upstream_errors_total{{route="{route}"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- keep-alive ----------------------------------------------------------------------------------

def test_keep_alive_connections_are_reused(c, backend):
    for i in range(20):
        r = c.get(f"/orchestrator/ka/seq/{i}")
        assert r.status_code == 200 and r.json()["path"] == f"/ka/seq/{i}"
    assert connections(backend, "/ka/seq/") == 1  # one caller at a time: one upstream connection

    # bodies (with a length and chunked) leave the connection reusable too
    assert c.post("/orchestrator/ka/seq/upload/1", content=b"x" * 5000).json()["received"] == 5000
    assert c.post("/orchestrator/ka/seq/upload/2", content=iter([b"a" * 100, b"b" * 200])).json()["received"] == 300
    assert c.get("/orchestrator/ka/seq/download/300000").content == b"x" * 300000
    head = c.head("/orchestrator/ka/seq/head")
    assert head.status_code == 200 and head.content == b""
    r = c.get("/orchestrator/ka/seq/after")
    assert r.status_code == 200
    # Counted under this test's own prefix: the other tests' connections are not its business.
    assert connections(backend, "/ka/seq/") <= 2


def test_concurrent_callers_share_a_bounded_set_of_connections(proxy, backend):
    errors: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=proxy.url, timeout=10) as cl:
            for i in range(15):
                r = cl.get(f"/orchestrator/ka/par/{n}/{i}")
                if r.status_code != 200 or r.json()["path"] != f"/ka/par/{n}/{i}":
                    errors.append(f"{n}/{i}: {r.status_code}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert connections(backend, "/ka/par/") <= 8 < 8 * 15


def test_server_closing_idle_connections_causes_no_error(c, servers):
    idle = servers["idle"]
    opened = idle.connections
    for _ in range(6):
        closed = idle.closed
        r = c.get("/orchestrator/idle/x")
        assert r.status_code == 200, r.text
        # Awaited, not slept: the server closed the pooled connection before the next request.
        wait_until(lambda: idle.closed > closed, message="the server closed the idle connection")
    assert upstream_errors(c, "idle") == 0  # (no other test uses this route)
    assert idle.connections - opened == 6  # so every request met a connection the server had closed


def test_a_stale_connection_that_races_the_request_is_retried(c, servers):
    before = servers["race"].connections
    errors = upstream_errors(c, "race")  # the POST test makes one on purpose, maybe earlier
    bodies = [c.get("/orchestrator/race/x").text for _ in range(5)]
    assert all(b.startswith("conn ") for b in bodies)
    assert len(set(bodies)) == 5  # every request got its own fresh connection, after the stale one failed
    # an idempotent request with a small body (held whole) is replayed on the fresh connection too
    r = c.put("/orchestrator/race/x", content=b"payload")
    assert r.status_code == 200, r.text
    assert upstream_errors(c, "race") == errors
    assert servers["race"].connections - before >= 6


def test_a_post_on_a_stale_connection_is_never_replayed(c, servers):
    """RFC 9110 §9.2.2: the backend may have acted on it; the caller decides."""
    c.get("/orchestrator/race/warm")  # leaves one pooled connection that the backend drops on next use
    opened = servers["race"].connections
    r = c.post("/orchestrator/race/x", content=b"payload")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_protocol_error"
    assert servers["race"].connections == opened  # no second connection carried it again


# -- response framing --------------------------------------------------------------------------

def test_chunked_responses(c, backend):
    r = c.get("/orchestrator/odd/chunked")
    assert r.status_code == 200 and r.content == b"alpha-beta-gamma"
    big = c.get("/orchestrator/ka/download/3000000", params={"chunked": "1"})
    assert big.status_code == 200 and len(big.content) == 3000000 and "content-length" not in big.headers
    assert c.get("/orchestrator/odd/chunked").content == b"alpha-beta-gamma"


def test_read_until_close_responses(c, servers):
    r = c.get("/orchestrator/http10/small")
    assert r.status_code == 200 and r.content == b"zzzzz"
    r = c.get("/orchestrator/http10/big")
    assert r.status_code == 200 and r.content == b"z" * 1_000_000
    assert c.get("/orchestrator/http10/small").content == b"zzzzz"
    assert upstream_errors(c, "http10") == 0


def test_head_204_304_and_interim_responses_carry_no_body(c):
    r = c.head("/orchestrator/odd/h")
    assert r.status_code == 200 and r.content == b"" and r.headers["x-head"] == "yes"
    assert r.headers["content-length"] == "1234"  # a HEAD answer's length passes through
    r = c.get("/orchestrator/odd/204")
    assert r.status_code == 204 and r.content == b"" and r.headers["x-s"] == "204"
    r = c.get("/orchestrator/odd/304")
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == '"v1"'
    r = c.get("/orchestrator/odd/continue")
    assert r.status_code == 200 and r.text == "after 100"
    # the connection that carried all of that still works
    assert c.get("/orchestrator/odd/plain").text == "path /plain"


def test_malformed_or_cut_answers_are_502(c):
    r = c.get("/orchestrator/odd/garbage")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_protocol_error"
    r = c.get("/orchestrator/odd/cut")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_protocol_error"
    # a large body cut mid-way: the status is out already, so the caller sees a short body
    with pytest.raises(httpx.RemoteProtocolError):
        c.get("/orchestrator/odd/bigcut")
    assert c.get("/orchestrator/odd/fine").text == "path /fine"


def test_timeout_on_a_pooled_connection_then_recovery(start_proxy, backend):
    # timeout: room for a loaded machine's normal answers; /slow/5 is far beyond it.
    proxy = start_proxy(config_yaml([endpoint("t", f"{backend.url}/t", timeout=1.0)], health={"enabled": False}))
    c = proxy.client()
    assert c.get("/orchestrator/t/warm").status_code == 200
    r = c.get("/orchestrator/t/slow/5")
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert c.get("/orchestrator/t/again").status_code == 200


# -- https ----------------------------------------------------------------------------------------

def self_signed(tmp: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography")  # noqa: F841
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_backend_with_verification(tmp_path):
    cert, key = self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = RawServer(serve_forever(lambda head, conn: response(b"tls conn %d" % conn.number)), tls=ctx)
    config = config_yaml([endpoint("tls", server.url)], health={"enabled": False})
    trusting = untrusting = None
    try:
        # The proxy verifies by default; here it trusts the test's CA through OpenSSL's usual variable.
        (tmp_path / "a").mkdir()
        trusting = run_proxy(tmp_path / "a", config, env={"SSL_CERT_FILE": str(cert)})
        c = trusting.client()
        assert [c.get("/orchestrator/tls/x").text for _ in range(3)] == ["tls conn 1"] * 3  # reused
        (tmp_path / "b").mkdir()
        untrusting = run_proxy(tmp_path / "b", config, env={})
        r = untrusting.client().get("/orchestrator/tls/x")
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
        assert "certificate" in r.json()["error"]["message"].lower()
    finally:
        for p in (trusting, untrusting):
            if p is not None:
                p.stop()
        server.stop()
