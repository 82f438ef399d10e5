"""A lean HTTP/1.1 client for the data plane: pooled `asyncio.Protocol` + httptools.

Why not aiohttp here: its client costs ~250-300 µs of CPU per proxied request,
more than half of the proxy's total (docs/performance.md); this one does the
same job for a fraction of that, because it does only what a proxy needs:

- one keep-alive pool per origin (scheme, host, port), at most
  `max_idle_per_origin` idle connections each, idle ones closed after
  `idle_timeout` seconds; https through `loop.create_connection(ssl=...)`
  with a verifying default context (server_hostname = the origin's host);
- the request head (request line, `Host` from the origin, the caller's headers
  exactly as given, then the framing this client computes itself: the body's
  Content-Length, or chunked) in one `transport.write`; the body written with
  flow control (`pause_writing`/`resume_writing`), never more bytes than
  declared;
- the response parsed by `httptools.HttpResponseParser`, its body handed to
  the consumer piece by piece with backpressure (`pause_reading` once more than
  `READ_HIGH_WATER` bytes wait for the consumer); Content-Length, chunked and
  read-until-close bodies; none for HEAD, 1xx, 204, 304; interim 1xx
  responses are skipped; a head larger than `MAX_RESPONSE_HEAD`, a status
  outside 100-599, a 101, or a transfer coding other than plain `chunked`
  fails the exchange (PROTOCOL_ERROR) and closes the connection;
- bytes pass through untouched: no decompression, no redirects, no cookies;
- one deadline per exchange (a single `loop.call_at`): when it passes the
  connection is aborted and whatever waits on it raises TIMEOUT;
- a connection goes back to the pool only if the request was fully sent, the
  response fully read, nothing failed, and neither side asked to close;
- a pooled connection the server closed while idle is retried once on a fresh
  connection, but only for an idempotent method (RFC 9110 §9.2.2: a POST is
  never replayed), only if nothing of the response arrived, and only if the
  request body is empty or was held whole in memory (never after streaming).

Errors are `UpstreamError(kind)` with `kind` a `core.failures.Failure`:
CONNECT_ERROR (refused, DNS, unreachable, TLS handshake), TIMEOUT,
PROTOCOL_ERROR (malformed response, connection lost mid-response). An
exception raised by the request body source (the caller hung up) propagates
unchanged. Not supported: HTTP/2, upgrades (101), trailers (dropped by
httptools), proxies, pipelining.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
from collections import deque
from typing import Awaitable, Callable, Optional, cast
from urllib.parse import urlsplit

import httptools

from orchestrator.core.failures import Failure
from orchestrator.core.headers import CHUNKED
from orchestrator.core.urls import LINK_LOCAL_HINT, is_link_local

HeaderList = list[tuple[bytes, bytes]]
# The request body: each call returns (piece, more_body), like ASGI's receive.
BodySource = Callable[[], Awaitable[tuple[bytes, bool]]]

READ_HIGH_WATER = 512 * 1024  # response bytes buffered before reading pauses
# Status line plus headers of a response (interim 1xx heads included): what a
# backend may make the proxy hold before the body starts.
MAX_RESPONSE_HEAD = 64 * 1024
# RFC 9110 §9.2.2: the only methods a client may send again on its own.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
DEFAULT_MAX_IDLE = 64
DEFAULT_IDLE_TIMEOUT = 30.0
# Methods for which a request without a body still says "Content-Length: 0"
# (what aiohttp did, and what some servers want for POST/PUT/PATCH/DELETE).
_NO_LENGTH_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_LAST_CHUNK = b"0\r\n\r\n"


class UpstreamError(Exception):
    """A failed exchange with the backend; `kind` says how (core.failures.Failure)."""

    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class BodyMismatch(ValueError):
    """The caller's body did not match the length it declared (never sent on)."""


# -- pure parts ------------------------------------------------------------------------

class Origin:
    """Where to connect, and the Host header that goes with it."""

    __slots__ = ("key", "scheme", "host", "port", "host_header", "tls")

    def __init__(self, key: str, scheme: str, host: str, port: int, host_header: bytes) -> None:
        self.key = key
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = host_header
        self.tls = scheme == "https"


def parse_origin(origin: str) -> Origin:
    """"http://h:8080" -> Origin; the Host header omits the scheme's default port."""
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) origin: {origin!r}")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    header = shown if port == default else f"{shown}:{port}"
    return Origin(f"{scheme}://{host}:{port}", scheme, host, port, header.encode("idna" if not header.isascii() else "ascii"))


def request_head(method: str, target: str, host_header: bytes, headers: HeaderList, body_length: int) -> bytes:
    """Serialise the request line and headers (ending with the blank line).

    `headers` are sent as given, after `host`, and must carry no framing
    (`core.headers.request_headers` strips it): the framing written here is
    computed from `body_length` alone (0: none, n bytes, or CHUNKED), so no
    header filtering upstream of this can leave a body without its length.
    Methods that usually carry a body get "Content-Length: 0" when they have none.
    """
    parts = [method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\nhost: ", host_header]
    for name, value in headers:
        parts += (b"\r\n", name, b": ", value)
    if body_length == CHUNKED:
        parts.append(b"\r\ntransfer-encoding: chunked")
    elif body_length or method not in _NO_LENGTH_METHODS:
        parts.append(b"\r\ncontent-length: %d" % body_length)
    parts.append(b"\r\n\r\n")
    return b"".join(parts)


def _codings(headers: HeaderList) -> Optional[list[bytes]]:
    """The transfer codings of a message, lower-case, in order; None without any."""
    codings: Optional[list[bytes]] = None
    for name, value in headers:
        if name == b"transfer-encoding":
            codings = (codings or []) + [c.strip().lower() for c in value.split(b",")]
    return codings


def chunk_frame(data: bytes) -> list[bytes]:
    """One piece of a chunked body (an empty piece would end the body: callers skip those)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def reusable(complete: bool, request_sent: bool, keep_alive: bool, failed: bool) -> bool:
    """May the connection serve another request after this exchange?"""
    return complete and request_sent and keep_alive and not failed


class Phase(enum.IntEnum):
    """How far the response of a connection's current exchange has come.

        WAITING --1xx head--> INTERIM --its end--> WAITING
        WAITING --final head--> BODY | UNTIL_CLOSE | COMPLETE (a HEAD request: no body)
        BODY --message complete--> COMPLETE;  UNTIL_CLOSE --EOF--> COMPLETE
        COMPLETE --end(), reusable--> POOLED --begin()--> WAITING

    A failure is not a phase: `exc` holds it whatever the phase (the consumer
    still gets the body pieces that arrived before it), and a connection whose
    exchange failed is closed, never pooled.
    """

    WAITING = 0      # for the response head (the request may still be going out)
    INTERIM = 1      # a 1xx head arrived: the final head follows
    BODY = 2         # head handed on; body framed by Content-Length or chunked (or none)
    UNTIL_CLOSE = 3  # head handed on; the body ends when the backend closes
    COMPLETE = 4     # the whole response is here
    POOLED = 5       # idle in the pool, between exchanges


# The hot path reads these module names: a member looked up on the class costs
# several times more, several times per request. (IntEnum: hashing and
# indexing by a member stay in C.)
WAITING, INTERIM, BODY, UNTIL_CLOSE, COMPLETE, POOLED = Phase
# The allowed moves, indexed by the phase moved from.
_MOVES: tuple[frozenset[Phase], ...] = (
    frozenset({WAITING, INTERIM, BODY, UNTIL_CLOSE, COMPLETE}),  # WAITING (to itself: a new connection's begin())
    frozenset({WAITING}),  # INTERIM
    frozenset({COMPLETE}),  # BODY
    frozenset({COMPLETE}),  # UNTIL_CLOSE
    frozenset({POOLED}),  # COMPLETE
    frozenset({WAITING}),  # POOLED
)
# The response head has been handed on (Pool.request may return).
_HEAD_DONE = frozenset({BODY, UNTIL_CLOSE, COMPLETE})


# -- the connection ----------------------------------------------------------------------

class _Conn(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    __slots__ = (
        "pool", "key", "loop", "transport", "parser", "parser_dirty", "idle_since", "closed",
        # per exchange
        "phase", "method", "status", "headers", "length", "keep_alive",
        "got_bytes", "broken", "chunks", "buffered", "reading_paused", "waiter",
        "exc", "body_exc", "request_sent", "write_paused", "drain_waiter", "timer", "timed_out",
        "writer", "body_task", "head_bytes", "header_bytes", "unsent",
    )
    # Set by connection_made, before the pool hands the connection out.
    transport: asyncio.Transport

    def __init__(self, pool: "Pool", key: str) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.parser_dirty = False
        self.idle_since = 0.0
        self.closed = False
        self.write_paused = False
        self.drain_waiter: Optional[asyncio.Future[None]] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.writer: Optional[asyncio.Task[None]] = None
        self.body_task: Optional[asyncio.Task[object]] = None
        self.waiter: Optional[asyncio.Future[None]] = None
        self.phase = WAITING
        self._reset("GET")

    def _move(self, phase: Phase) -> None:
        assert phase in _MOVES[self.phase], f"upstream exchange: {self.phase.name} -> {phase.name}"
        self.phase = phase

    def _reset(self, method: str) -> None:
        self._move(WAITING)
        self.method = method
        self.status = 0
        self.headers: HeaderList = []
        self.length: Optional[bytes] = None
        self.keep_alive = True
        self.got_bytes = False
        self.broken = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.exc: Optional[BaseException] = None
        self.body_exc: Optional[BaseException] = None
        self.request_sent = False
        self.timed_out = False
        self.head_bytes = 0  # raw bytes read while the head was incomplete
        self.header_bytes = 0  # header lines parsed (a head may arrive in one read)
        self.unsent = 0  # body bytes still owed under a Content-Length (0 when chunked)

    # -- exchange lifecycle (called by Pool / Response) ---------------------------------
    def begin(self, method: str, deadline: float) -> None:
        self._reset(method)
        if self.parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        self.timer = self.loop.call_at(deadline, self._deadline_passed)

    def end(self) -> None:
        """The consumer is done with this exchange: pool the connection or close it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        writer = self.writer
        if writer is not None:
            self.writer = None
            if not writer.done():
                writer.cancel()
        self.body_task = None
        if reusable(self.phase is COMPLETE, self.request_sent, self.keep_alive,
                    self.closed or self.broken or self.exc is not None or self.body_exc is not None):
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            self.chunks.clear()
            self.pool._put(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.transport.close()

    def _deadline_passed(self) -> None:
        self.timer = None
        if self.phase is COMPLETE:
            return  # the response is all here: nothing left to time out
        self.timed_out = True
        if self.exc is None:
            self.exc = UpstreamError(Failure.TIMEOUT, "the deadline passed")
        task = self.body_task
        if task is not None and not task.done():
            task.cancel()  # stuck reading the caller's body: the request() call maps this to TIMEOUT
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        waiter = self.loop.create_future()
        self.waiter = waiter
        await waiter

    def check(self) -> None:
        """Raise what went wrong with this exchange, if anything."""
        if self.body_exc is not None:
            raise self.body_exc
        if self.exc is not None:
            raise self.exc

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport: no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is POOLED or self.phase is COMPLETE:
            # Bytes nobody asked for (an idle connection, or after the response): this
            # connection's framing can no longer be trusted.
            self.broken = True
            self.transport.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the backend switched protocols, which the proxy does not support")
            return
        except httptools.HttpParserError as exc:
            self._fail(f"malformed response: {exc}")
            return
        if (self.phase is WAITING or self.phase is INTERIM) and self.exc is None:
            # Counted after feeding: the bytes of this read that belong to the
            # head are all there is while the head is incomplete.
            self.head_bytes += len(data)
            if self.head_bytes > MAX_RESPONSE_HEAD:
                self._fail(f"the response head exceeds {MAX_RESPONSE_HEAD // 1024} KiB")

    def eof_received(self) -> bool:
        if self.phase is UNTIL_CLOSE:
            self._move(COMPLETE)
            self._wake()
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self.phase is POOLED:
            self.pool._forget(self)
        elif self.phase is not COMPLETE and self.exc is None:
            if not self.got_bytes:
                detail = "the backend closed the connection before answering"
            else:
                detail = "the backend closed the connection mid-response"
            if exc is not None:
                detail += f" ({exc})"
            self.exc = UpstreamError(Failure.PROTOCOL_ERROR, detail)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()
        drain = self.drain_waiter
        if drain is not None:
            self.drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self.drain_waiter
        if drain is not None:
            self.drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    def _fail(self, detail: str) -> None:
        if self.exc is None:
            self.exc = UpstreamError(Failure.PROTOCOL_ERROR, detail)
        self.broken = True
        self.transport.abort()
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase is COMPLETE:
            self.broken = True
            return
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_RESPONSE_HEAD and self.exc is None:
            self._fail(f"the response head exceeds {MAX_RESPONSE_HEAD // 1024} KiB")
        name = name.lower()
        if name == b"content-length":
            self.length = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.phase is COMPLETE:
            self.broken = True
            return
        if self.exc is not None:
            return  # failed while the head arrived: no answer to hand on
        status = self.parser.get_status_code()
        if not 100 <= status <= 599 or status == 101:
            self._fail(f"the backend answered with status {status}")
            return
        if status < 200:
            self._move(INTERIM)  # 100 Continue & co.: the real answer follows
            self.headers = []
            self.length = None
            return
        codings = _codings(self.headers)
        if codings is not None and codings != [b"chunked"]:
            # RFC 9112 §6.1: anything but plain chunked would reach the caller
            # undecoded or mis-framed (`xchunked` is not `chunked`).
            self._fail(f"the backend used transfer coding {b', '.join(codings).decode('latin-1')!r}; "
                       "only chunked is supported")
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if self.method == "HEAD":
            # httptools cannot be told to skip the body: end the message here and
            # give the next exchange a fresh parser.
            self._move(COMPLETE)
            self.parser_dirty = True
        elif self.length is None and status not in (204, 304) and codings is None:
            self._move(UNTIL_CLOSE)
            self.keep_alive = False
        else:
            self._move(BODY)
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.phase is COMPLETE:
            self.broken = True
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        phase = self.phase
        if phase is INTERIM:
            self._move(WAITING)
            return
        if phase is COMPLETE:
            if self.method != "HEAD":
                self.broken = True
            return
        if phase is WAITING:
            return  # the head failed (`exc` is set): there is no answer to complete
        self._move(COMPLETE)
        self._wake()

    # -- request body ------------------------------------------------------------------------
    async def drain(self) -> None:
        while self.write_paused and not self.closed:
            waiter = self.loop.create_future()
            self.drain_waiter = waiter
            await waiter

    async def write_rest(self, body: BodySource, chunked: bool) -> None:
        """Stream the rest of the request body (a task next to the response reader)."""
        transport = self.transport
        try:
            while True:
                if self.write_paused:
                    await self.drain()
                piece, more = await body()
                if self.closed or self.exc is not None:
                    return
                if not chunked:
                    self.unsent -= len(piece)
                    if self.unsent < 0 or (not more and self.unsent):
                        raise BodyMismatch("the request body does not match its Content-Length")
                if piece:
                    if chunked:
                        transport.writelines(chunk_frame(piece))
                    else:
                        transport.write(piece)
                if not more:
                    if chunked:
                        transport.write(_LAST_CHUNK)
                    self.request_sent = True
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the caller hung up mid-upload (ClientGone), or worse
            self.body_exc = exc
            self.broken = True
            self.transport.abort()
            self._wake()


# -- the response handed to the consumer --------------------------------------------------

class Response:
    __slots__ = ("status", "headers", "length", "_conn")

    def __init__(self, conn: _Conn) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.length: Optional[int] = None
        if conn.length is not None:
            try:
                self.length = int(conn.length)
            except ValueError:
                pass
        self._conn: Optional[_Conn] = conn

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small)."""
        conn = self._conn
        assert conn is not None, "read after release"
        while conn.phase is not COMPLETE:
            conn.check()
            await conn.wait()
        data = b"".join(conn.chunks)
        conn.chunks.clear()
        return data

    async def next_chunk(self) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        conn = self._conn
        assert conn is not None, "read after release"
        while True:
            chunks = conn.chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                conn.buffered = 0
                if conn.reading_paused:
                    conn.reading_paused = False
                    conn.transport.resume_reading()
                return data
            if conn.phase is COMPLETE:
                return b""
            conn.check()
            await conn.wait()

    def release(self) -> None:
        """Done with the response: the connection is pooled if it can be, closed otherwise."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.end()


# -- the pool -----------------------------------------------------------------------------

class Pool:
    """Keep-alive connections per origin; one per application, created in the lifespan."""

    def __init__(self, max_idle_per_origin: int = DEFAULT_MAX_IDLE, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 loop: Optional[asyncio.AbstractEventLoop] = None, allow_link_local: bool = False) -> None:
        self.loop = loop or asyncio.get_running_loop()
        # The SSRF guard, checked on the address actually connected to: a host
        # name that resolves to a metadata service is refused like its literal.
        self.allow_link_local = allow_link_local
        self.max_idle = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._origins: dict[str, Origin] = {}
        self._idle: dict[str, list[_Conn]] = {}
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics

    def time(self) -> float:
        return self.loop.time()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def origin(self, origin: str) -> Origin:
        o = self._origins.get(origin)
        if o is None:
            o = self._origins[origin] = parse_origin(origin)
        return o

    async def request(self, origin: str, method: str, target: str, headers: HeaderList,
                      body: Optional[BodySource], body_length: int, deadline: float) -> Response:
        """Send one request and return once the response head has arrived.

        `deadline` is in loop time and bounds the whole exchange, body included,
        until `Response.release()`. `body` is None for a request without a body;
        `body_length` is its length in bytes or `core.headers.CHUNKED`.
        """
        o = self._origins.get(origin) or self.origin(origin)
        if body is None:
            body_length = 0
        chunked = body_length == CHUNKED
        head = request_head(method, target, o.host_header, headers, body_length)
        replayable = method in IDEMPOTENT
        first: Optional[bytes] = None  # the body's first piece, once read from the caller
        more = False  # ... and whether more follows
        streamed = False  # the rest is being streamed: the request can no longer be replayed
        for attempt in (0, 1):
            written = False  # a byte of this request went out on this connection
            conn = self._take(o.key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(o, deadline)
            conn.begin(method, deadline)
            try:
                if body is None:
                    written = True
                    conn.transport.write(head)
                    conn.request_sent = True
                else:
                    if first is None:
                        task = conn.body_task = asyncio.current_task()
                        try:
                            first, more = await body()
                        except asyncio.CancelledError:
                            if conn.timed_out and task is not None:
                                task.uncancel()
                                raise UpstreamError(Failure.TIMEOUT, "the request body did not arrive in time")
                            raise
                        conn.body_task = None
                        conn.check()  # died while we waited (nothing sent yet: a retry may replay `first`)
                    if not chunked:
                        conn.unsent = body_length - len(first)
                        if conn.unsent < 0 or (not more and conn.unsent):
                            raise BodyMismatch("the request body does not match its Content-Length")
                    written = True
                    if chunked:
                        pieces = [head, *chunk_frame(first)] if first else [head]
                        if not more:
                            pieces.append(_LAST_CHUNK)
                        conn.transport.writelines(pieces)
                    else:
                        conn.transport.writelines([head, first])
                    if more:
                        streamed = True
                        conn.writer = self.loop.create_task(conn.write_rest(body, chunked))
                    else:
                        conn.request_sent = True
                while conn.phase not in _HEAD_DONE:
                    conn.check()
                    await conn.wait()
                return Response(conn)
            except UpstreamError as exc:
                conn.end()
                if (reused and attempt == 0 and not conn.got_bytes and not streamed and not conn.timed_out
                        and exc.kind is Failure.PROTOCOL_ERROR and (replayable or not written)):
                    # A stale pooled connection: the request never got an answer. Sent
                    # again only if the backend cannot have acted on it: nothing was
                    # written yet, or the method is idempotent.
                    continue
                raise
            except BaseException:
                conn.end()
                raise
        raise AssertionError("unreachable: the loop returns or raises")

    async def _connect(self, o: Origin, deadline: float) -> _Conn:
        if self._closed:
            raise UpstreamError(Failure.CONNECT_ERROR, "the proxy is shutting down")
        loop = self.loop
        try:
            async with asyncio.timeout_at(deadline) as cm:
                if o.tls:
                    _, conn = await loop.create_connection(
                        lambda: _Conn(self, o.key), o.host, o.port, ssl=self.ssl_context, server_hostname=o.host)
                else:
                    _, conn = await loop.create_connection(lambda: _Conn(self, o.key), o.host, o.port)
        except TimeoutError as exc:
            if cm.expired():
                raise UpstreamError(Failure.TIMEOUT, "connecting to the backend timed out") from None
            raise UpstreamError(Failure.CONNECT_ERROR, str(exc) or "connect timed out") from None
        except OSError as exc:  # refused, DNS, unreachable, TLS handshake (ssl.SSLError)
            raise UpstreamError(Failure.CONNECT_ERROR, str(exc) or exc.__class__.__name__) from None
        if not self.allow_link_local:
            peer = conn.transport.get_extra_info("peername")
            if peer and is_link_local(peer[0]):
                conn.transport.abort()
                raise UpstreamError(Failure.CONNECT_ERROR, f"{o.host} is at link-local address {peer[0]}: "
                                                           f"{LINK_LOCAL_HINT}")
        self.connections_opened += 1
        return conn

    # -- idle connections ---------------------------------------------------------------------
    def _take(self, key: str) -> Optional[_Conn]:
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing() or conn.idle_since < limit:
                conn.close()
                continue
            return conn
        return None

    def _put(self, conn: _Conn) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn._move(POOLED)
        conn.idle_since = self.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(max(self.idle_timeout / 2, 0.05), self._sweep)

    def _forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle is not None:
            try:
                idle.remove(conn)
            except ValueError:
                pass

    def _sweep(self) -> None:
        self._sweeper = None
        limit = self.loop.time() - self.idle_timeout
        remaining = 0
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.idle_since < limit or conn.closed:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
                remaining += len(keep)
            else:
                del self._idle[key]
        if remaining and not self._closed:
            self._sweeper = self.loop.call_later(max(self.idle_timeout / 2, 0.05), self._sweep)

    def idle_count(self, origin: Optional[str] = None) -> int:
        if origin is not None:
            return len(self._idle.get(self.origin(origin).key, ()))
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
