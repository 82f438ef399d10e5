"""The data plane's upstream client: its pure parts, then the pool against in-process servers.

The in-process servers are plain `asyncio.start_server` handlers on 127.0.0.1
speaking raw HTTP/1.1, so each test controls exactly what the backend sends
and when it closes. Behaviour through the real proxy is in tests/proxy/test_upstream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable, Optional

import pytest

from orchestrator.core.failures import Failure
from orchestrator.proxy import upstream
from orchestrator.core.headers import CHUNKED
from orchestrator.proxy.upstream import Pool, UpstreamError, chunk_frame, parse_origin, request_head, reusable

pytestmark = pytest.mark.timeout(30)


# -- pure parts ------------------------------------------------------------------------------

@pytest.mark.parametrize("origin, key, host, port, header, tls", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1", 8080, b"127.0.0.1:8080", False),
    ("http://svc", "http://svc:80", "svc", 80, b"svc", False),
    ("http://svc:80", "http://svc:80", "svc", 80, b"svc", False),      # default port not shown
    ("https://svc", "https://svc:443", "svc", 443, b"svc", True),
    ("https://svc:8443", "https://svc:8443", "svc", 8443, b"svc:8443", True),
    ("HTTP://Svc.Example:81", "http://svc.example:81", "svc.example", 81, b"svc.example:81", False),
    ("http://[::1]:9000", "http://::1:9000", "::1", 9000, b"[::1]:9000", False),
])
def test_parse_origin(origin, key, host, port, header, tls):
    o = parse_origin(origin)
    assert (o.key, o.host, o.port, o.host_header, o.tls) == (key, host, port, header, tls)


@pytest.mark.parametrize("origin", ["ftp://h", "http://", "h:80"])
def test_parse_origin_refuses_non_http(origin):
    with pytest.raises(ValueError):
        parse_origin(origin)


HEADERS = [(b"authorization", b"Bearer x"), (b"x-a", b"1"), (b"x-a", b"2"), (b"x-request-id", b"rid")]


def test_request_head_without_body():
    head = request_head("GET", "/api/x?q=1", b"h:1", HEADERS, 0)
    assert head == (b"GET /api/x?q=1 HTTP/1.1\r\nhost: h:1\r\nauthorization: Bearer x\r\n"
                    b"x-a: 1\r\nx-a: 2\r\nx-request-id: rid\r\n\r\n")


def test_request_head_host_comes_from_the_origin_only():
    head = request_head("GET", "/", b"backend:80", [(b"x", b"y")], 0)
    assert head.count(b"host:") == 1 and b"host: backend:80\r\n" in head


@pytest.mark.parametrize("method, adds", [("POST", True), ("PUT", True), ("PATCH", True), ("DELETE", True),
                                          ("GET", False), ("HEAD", False), ("OPTIONS", False)])
def test_bodyless_requests_say_length_zero_where_a_body_is_usual(method, adds):
    head = request_head(method, "/", b"h", [], 0)
    assert (b"content-length: 0\r\n" in head) is adds


def test_request_head_with_a_length():
    head = request_head("POST", "/u", b"h", [], 5)
    assert head == b"POST /u HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\n"


def test_request_head_chunked():
    head = request_head("POST", "/u", b"h", [(b"x", b"1")], CHUNKED)
    assert head == b"POST /u HTTP/1.1\r\nhost: h\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n"


def test_request_head_framing_is_computed_not_inherited():
    """Whatever framing headers the caller's list still held, exactly one framing goes out."""
    for length, expected in ((7, b"content-length: 7"), (CHUNKED, b"transfer-encoding: chunked")):
        head = request_head("PUT", "/u", b"h", [(b"x", b"1")], length)
        assert head.count(b"content-length") + head.count(b"transfer-encoding") == 1
        assert expected in head


def test_request_head_refuses_a_target_that_is_not_ascii():
    with pytest.raises(UnicodeEncodeError):
        request_head("GET", "/caf\xe9", b"h", [], 0)


def test_request_head_keeps_raw_target_bytes():
    head = request_head("GET", "/a%2Fb/%C3%A9?x=%zz&y", b"h", [], 0)
    assert head.startswith(b"GET /a%2Fb/%C3%A9?x=%zz&y HTTP/1.1\r\n")


def test_chunk_frame():
    assert b"".join(chunk_frame(b"hello")) == b"5\r\nhello\r\n"
    assert b"".join(chunk_frame(b"x" * 300)) == b"12c\r\n" + b"x" * 300 + b"\r\n"


@pytest.mark.parametrize("complete, sent, keep_alive, failed, expected", [
    (True, True, True, False, True),
    (False, True, True, False, False),   # response not fully read
    (True, False, True, False, False),   # request body not fully sent
    (True, True, False, False, False),   # a side said Connection: close (or HTTP/1.0)
    (True, True, True, True, False),     # something went wrong
])
def test_reusable(complete, sent, keep_alive, failed, expected):
    assert reusable(complete, sent, keep_alive, failed) is expected


# -- the pool against raw in-process servers -----------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """127.0.0.1 server running `handler(reader, writer, connection_number)` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0
        self.server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> "RawServer":
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request; bodies by Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"content-length:" in lower:
        n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(n)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            piece = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += piece[:-2]
    return head, body


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


LOOPS = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop  # what the proxy runs on (uvicorn[standard])
    LOOPS["uvloop"] = uvloop.new_event_loop
except ImportError:  # pragma: no cover
    pass
_loop_factory = asyncio.new_event_loop


@pytest.fixture(params=sorted(LOOPS))
def event_loop_kind(request):
    """Every pool test runs on both the stock asyncio loop and uvloop."""
    global _loop_factory
    _loop_factory = LOOPS[request.param]
    yield request.param
    _loop_factory = asyncio.new_event_loop


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        runner.run(coro_fn())


async def get(pool: Pool, origin: str, path: str = "/", method: str = "GET", timeout: float = 5.0,
              body: Optional[list[bytes]] = None, chunked: bool = False, headers=None) -> tuple[int, bytes]:
    source = None
    length = 0
    if body is not None:
        pieces = list(body)
        length = CHUNKED if chunked else sum(map(len, pieces))

        async def source() -> tuple[bytes, bool]:
            return pieces.pop(0), bool(pieces)
    resp = await pool.request(origin, method, path, headers or [], source, length, pool.time() + timeout)
    try:
        data = b""
        while True:
            chunk = await resp.next_chunk()
            if not chunk:
                break
            data += chunk
        return resp.status, data
    finally:
        resp.release()


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `predicate()` holds: an event awaited, not a sleep with a margin."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def pooled(**settings) -> AsyncIterator[Pool]:
    """A Pool closed however the test ends (an assertion failing inside included)."""
    pool = Pool(**settings)
    try:
        yield pool
    finally:
        await pool.close()


async def keep_alive_server(reader, writer, n):
    while True:
        head, body = await read_request(reader)
        writer.write(ok(b"n=%d len=%d" % (n, len(body))))
        await writer.drain()


@pytest.mark.usefixtures("event_loop_kind")
def test_keep_alive_reuses_one_connection():
    async def main():
        async with RawServer(keep_alive_server) as srv:
            async with pooled() as pool:
                for _ in range(5):
                    assert await get(pool, srv.origin) == (200, b"n=1 len=0")
                assert srv.connections == 1 and pool.connections_opened == 1
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_host_header_and_head_serialised_in_one_piece():
    seen = []

    async def handler(reader, writer, n):
        head, _ = await read_request(reader)
        seen.append(head)
        writer.write(ok())

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                assert (await get(pool, srv.origin, "/p?q", headers=[(b"x-a", b"1")]))[0] == 200
                port = srv.origin.rsplit(":", 1)[1]
                assert seen[0] == f"GET /p?q HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nx-a: 1\r\n\r\n".encode()
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_connection_close_from_the_server_is_not_reused():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(ok(extra=b"connection: close\r\n"))
        await writer.drain()
        await reader.read()  # the client is the one to close

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                for _ in range(3):
                    assert await get(pool, srv.origin) == (200, b"ok")
                assert srv.connections == 3 and pool.idle_count() == 0
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_stale_pooled_connection_is_retried_once_on_a_fresh_one():
    """The server answers once per connection, then drops it when the next request comes."""
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(ok(b"conn %d" % n))
        await writer.drain()
        await read_request(reader)  # the second request on this connection: hang up unanswered

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                results = [await get(pool, srv.origin) for _ in range(3)]
                assert results == [(200, b"conn 1"), (200, b"conn 2"), (200, b"conn 3")]
                # an idempotent request with a small body held whole is replayed as well
                assert await get(pool, srv.origin, method="PUT", body=[b"abc"]) == (200, b"conn 4")
                # a POST never is (RFC 9110 §9.2.2): the backend may have acted on it
                with pytest.raises(UpstreamError) as err:
                    await get(pool, srv.origin, method="POST", body=[b"abc"])
                assert err.value.kind is Failure.PROTOCOL_ERROR
                assert srv.connections == 4  # no fresh connection was opened to replay it
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_fresh_connection_closed_unanswered_is_a_protocol_error_without_retry():
    async def handler(reader, writer, n):
        await read_request(reader)  # and close without a word

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                with pytest.raises(UpstreamError) as err:
                    await get(pool, srv.origin)
                assert err.value.kind is Failure.PROTOCOL_ERROR
                assert srv.connections == 1
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_streamed_body_is_never_replayed():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request's head: hang up mid-body

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                assert (await get(pool, srv.origin))[0] == 200
                with pytest.raises(UpstreamError) as err:
                    await get(pool, srv.origin, method="POST", body=[b"a", b"b", b"c"], chunked=True)
                assert err.value.kind is Failure.PROTOCOL_ERROR
                assert srv.connections == 1
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_server_closing_idle_connections_is_noticed():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.05)  # then close the idle connection

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                for _ in range(3):
                    assert await get(pool, srv.origin) == (200, b"ok")
                    await eventually(lambda: pool.idle_count() == 0)  # dropped when the server closed it
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_idle_bound_and_expiry():
    async def main():
        async with RawServer(keep_alive_server) as srv:
            # idle_timeout: far longer than the gather takes, so no connection expires before the count.
            async with pooled(max_idle_per_origin=2, idle_timeout=2.0) as pool:
                await asyncio.gather(*(get(pool, srv.origin, "/slow") for _ in range(5)))
                assert pool.connections_opened == 5
                assert pool.idle_count(srv.origin) == 2  # the other three were closed on release
                await eventually(lambda: pool.idle_count() == 0)  # expired
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_chunked_response_with_extensions_and_trailers():
    async def handler(reader, writer, n):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in (b"hel", b"lo ", b"world"):
                writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\nx-trailer: 1\r\n\r\n")

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                assert await get(pool, srv.origin) == (200, b"hello world")
                assert await get(pool, srv.origin) == (200, b"hello world")
                assert srv.connections == 1
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_read_until_close_response():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        for _ in range(10):
            writer.write(b"x" * 100_000)
            await writer.drain()

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                for _ in range(2):
                    assert await get(pool, srv.origin) == (200, b"x" * 1_000_000)
                assert srv.connections == 2 and pool.idle_count() == 0
    run(main)


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.usefixtures("event_loop_kind")
def test_bodiless_statuses_and_head_keep_the_connection_usable(status):
    async def handler(reader, writer, n):
        while True:
            head, _ = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")  # no body, as HEAD says
            elif b"/none" in head:
                writer.write(b"HTTP/1.1 %d X\r\netag: a\r\n\r\n" % status)
            else:
                writer.write(ok())

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                assert await get(pool, srv.origin, "/none") == (status, b"")
                assert await get(pool, srv.origin, method="HEAD") == (200, b"")
                assert await get(pool, srv.origin) == (200, b"ok")
                assert await get(pool, srv.origin, method="HEAD") == (200, b"")
                assert await get(pool, srv.origin, "/none") == (status, b"")
                assert srv.connections == 1
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_interim_1xx_responses_are_skipped():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok(b"final"))

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                resp = await pool.request(srv.origin, "GET", "/", [], None, 0, pool.time() + 5)
                assert resp.status == 200 and resp.headers == [(b"content-length", b"5")]
                assert await resp.read() == b"final"
                resp.release()
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_malformed_and_cut_responses_are_protocol_errors():
    async def handler(reader, writer, n):
        await read_request(reader)
        if n == 1:
            writer.write(b"this is not http\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                for _ in range(2):
                    with pytest.raises(UpstreamError) as err:
                        await get(pool, srv.origin)
                    assert err.value.kind is Failure.PROTOCOL_ERROR
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_connect_errors():
    async def main():
        async with pooled() as pool:
            async with RawServer(keep_alive_server) as srv:
                origin = srv.origin
            with pytest.raises(UpstreamError) as err:  # nothing listens there any more
                await get(pool, origin)
            assert err.value.kind is Failure.CONNECT_ERROR
            with pytest.raises(UpstreamError) as err:
                await get(pool, "http://no-such-host.invalid:80")
            assert err.value.kind is Failure.CONNECT_ERROR
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_deadline_covers_head_and_body():
    async def handler(reader, writer, n):
        head, _ = await read_request(reader)
        if b"/slowhead" in head:
            await asyncio.sleep(5)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfive.")
        await asyncio.sleep(5)

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                with pytest.raises(UpstreamError) as err:
                    await get(pool, srv.origin, "/slowhead", timeout=0.2)
                assert err.value.kind is Failure.TIMEOUT  # (the server would have answered after 5 s)
                resp = await pool.request(srv.origin, "GET", "/slowbody", [], None, 0, pool.time() + 0.2)
                with pytest.raises(UpstreamError) as err:
                    await resp.read()
                assert err.value.kind is Failure.TIMEOUT
                resp.release()
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_stalled_request_body_times_out():
    async def main():
        async with RawServer(keep_alive_server) as srv:
            async with pooled() as pool:

                async def never() -> tuple[bytes, bool]:
                    await asyncio.sleep(10)
                    return b"", False
                with pytest.raises(UpstreamError) as err:
                    await pool.request(srv.origin, "POST", "/", [], never, 1,
                                       pool.time() + 0.2)
                assert err.value.kind is Failure.TIMEOUT
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_body_source_errors_propagate_unchanged():
    class Gone(Exception):
        pass

    async def main():
        async with RawServer(keep_alive_server) as srv:
            async with pooled() as pool:
                calls = 0

                async def source() -> tuple[bytes, bool]:
                    nonlocal calls
                    calls += 1
                    if calls == 3:
                        raise Gone()
                    return b"x", True
                with pytest.raises(Gone):
                    await pool.request(srv.origin, "POST", "/", [], source, CHUNKED, pool.time() + 5)
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_slow_consumer_pauses_reading():
    total = 8 * 1024 * 1024

    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        block = b"y" * 65536
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    async def main():
        async with RawServer(handler) as srv:
            async with pooled() as pool:
                resp = await pool.request(srv.origin, "GET", "/", [], None, 0, pool.time() + 20)
                got = 0
                peak = 0
                while True:
                    conn = resp._conn
                    peak = max(peak, conn.buffered)
                    chunk = await resp.next_chunk()
                    if not chunk:
                        break
                    got += len(chunk)
                    await asyncio.sleep(0.001)  # a slow consumer
                resp.release()
                assert got == total
                # bounded by the high-water mark plus what one read can add
                assert peak <= upstream.READ_HIGH_WATER + 1024 * 1024
    run(main)


@pytest.mark.usefixtures("event_loop_kind")
def test_request_bodies_content_length_and_chunked():
    async def main():
        async with RawServer(keep_alive_server) as srv:
            async with pooled() as pool:
                pieces = [b"a" * 1000, b"", b"b" * 70000, b"c"]
                n = sum(map(len, pieces))
                assert await get(pool, srv.origin, method="PUT", body=list(pieces)) == (200, b"n=1 len=%d" % n)
                assert await get(pool, srv.origin, method="POST", body=list(pieces), chunked=True) \
                    == (200, b"n=1 len=%d" % n)
                assert await get(pool, srv.origin, method="POST", body=[b""], chunked=True) == (200, b"n=1 len=0")
                assert srv.connections == 1
    run(main)


@pytest.mark.parametrize("pieces", [[b"whole"], [b"first,", b"second"]], ids=["whole", "streamed"])
@pytest.mark.usefixtures("event_loop_kind")
def test_pooled_connection_dying_while_the_caller_sends_its_body_is_retried(pieces):
    """Nothing was written yet when the connection died: the piece already read is replayed."""
    hang_up = asyncio.Event()

    async def handler(reader, writer, n):
        head, body = await read_request(reader)
        writer.write(ok(b"conn %d got %s" % (n, body)))
        await writer.drain()
        if n == 1:
            await hang_up.wait()  # then close the pooled connection, when the test says

    class Recording(Pool):
        """The pool as it is, remembering the idle connection it hands out (to await its end)."""
        taken = None

        def _take(self, key):
            conn = self.taken = super()._take(key)
            return conn

    async def main():
        async with RawServer(handler) as srv:
            pool = Recording()
            try:
                assert await get(pool, srv.origin) == (200, b"conn 1 got ")
                queue = list(pieces)

                async def slow_source() -> tuple[bytes, bool]:
                    if pool.taken is not None and not pool.taken.closed:
                        # The pooled connection dies while we hold the caller's first piece.
                        hang_up.set()
                        await eventually(lambda: pool.taken.closed)
                    return queue.pop(0), bool(queue)
                resp = await pool.request(srv.origin, "POST", "/", [], slow_source, CHUNKED, pool.time() + 5)
                assert resp.status == 200 and await resp.read() == b"conn 2 got " + b"".join(pieces)
                assert srv.connections == 2
                resp.release()
            finally:
                await pool.close()
    run(main)
