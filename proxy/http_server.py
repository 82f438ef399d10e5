"""The client-facing HTTP/1.1 connection: uvicorn's httptools protocol, bounded.

uvicorn parses requests with httptools and runs the ASGI app; on its own it
sets no limit on the request line or the header block, never times out a
connection that sends nothing or sends its head one byte at a time, and
accepts connections until the process runs out of file descriptors. This
subclass adds, while reading and before anything is buffered beyond the cap:

- a request-line cap (414) and a header-block cap in bytes and in count (431);
- a head timeout: from the moment a connection opens, or a new request
  starts on a kept-alive one, until its header block is complete (408, or a
  silent close when not one byte of a request arrived);
- a cap on concurrent connections: at the cap an idle kept-alive connection
  is closed to make room, and when none is idle the new one gets a 503 and is
  closed; the connections already being served are never touched;
- errors in the proxy's JSON shape instead of uvicorn's plain text;
- a `CallerLink` in every request's scope, so the forwarder learns at once
  that a caller hung up (uvicorn would only tell a task that calls receive());
- draining: once `Drain.begin()` was called every response carries
  `Connection: close` and the connection closes after it;
- a bound on pipelining: uvicorn parses every request in a read (up to
  256 KiB) and queues each one behind the request in progress, and resumes
  reading after every answer, so a caller that pipelines without end grows
  the queue without end. Past `MAX_PIPELINED` waiting requests the rest of
  the connection's input is dropped unparsed, the last accepted request is
  answered with `Connection: close`, and the connection closes after it (a
  client retries unanswered pipelined requests, RFC 9112 section 9.3.2).

Only uvicorn's documented protocol hooks and the attributes its own httptools
protocol uses are touched; tests/proxy/test_limits.py runs them over real sockets.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Any, Optional

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.core.failures import TABLE, Failure, error_body
from orchestrator.settings import ServeSettings

SCOPE_LINK = "orchestrator.caller"
"""Scope key of the request's `CallerLink`."""


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds; each is a knob in orchestrator/settings.py, whose defaults
    follow nginx (request line 8 KiB) and Envoy (headers 60 KiB, 100 lines)."""

    max_request_line: int  # bytes of the request target
    max_header_bytes: int  # bytes of all header lines
    max_headers: int  # header lines
    head_timeout: float  # seconds to receive a complete request head
    keepalive_timeout: float  # seconds an idle kept-alive connection stays open
    max_connections: int  # 0: derived from the file-descriptor limit
    send_timeout: float  # seconds a caller may leave our writes blocked (slow-read defence)

    @classmethod
    def of(cls, settings: ServeSettings) -> "Limits":
        return cls(settings.max_request_line, settings.max_header_bytes, settings.max_headers,
                   settings.head_timeout, settings.keepalive_timeout, settings.max_connections,
                   settings.send_timeout)


def default_max_connections() -> int:
    """Half the file descriptors (each caller may need one upstream connection), less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, (soft - 128) // 2))


def raise_fd_limit() -> None:
    """Use the hard file-descriptor limit (Go's runtime does the same at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Drain:
    """Shared by every connection of one process: set once SIGTERM arrives."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False

    def begin(self) -> None:
        self.draining = True


class CallerLink:
    """Between one request's connection and the forwarder's task: tells the task
    that its caller hung up (by cancelling it), and lets the task cut the
    connection when an answer already under way cannot be completed."""

    __slots__ = ("task", "gone", "_cycle", "_transport")

    def __init__(self) -> None:
        self.task: Optional[asyncio.Task[Any]] = None
        self.gone = False
        self._cycle: Any = None
        self._transport: Optional[asyncio.Transport] = None

    def bind(self, cycle: Any, transport: asyncio.Transport) -> None:
        self._cycle, self._transport = cycle, transport

    def watch(self, task: Optional[asyncio.Task[Any]]) -> None:
        self.task = task

    def lost(self) -> None:
        self.gone = True
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()

    def cut(self) -> None:
        """Close the connection after what was sent (the caller sees a message cut
        short, as HTTP/1.1 allows nothing else once the head went out). uvicorn is
        told the caller is gone, or it logs the unfinished answer as its own error."""
        if self._cycle is not None:
            self._cycle.disconnected = True
        if self._transport is not None:
            self._transport.close()


def canned_response(failure: Failure, detail: Optional[str] = None) -> bytes:
    """A complete JSON error response that closes the connection."""
    body = error_body(failure, "", "", detail)
    status = TABLE[failure].status
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ])


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


# After a refusal the connection is half-closed and what the caller still sends
# is read and dropped for a moment (nginx's "lingering close"): closing with
# unread data makes the kernel send a reset, which can destroy the answer
# before the caller reads it.
LINGER_SECONDS = 2.0
LINGER_AT_CAP_SECONDS = 0.25  # short: a connection flood must not pile these up
LINGER_BYTES = 1024 * 1024


# Requests parsed and waiting behind the one in progress, per connection (each
# holds its scope and headers: a few KiB).
MAX_PIPELINED = 32


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing a request that broke a limit."""


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. Subclassed per server by `protocol_for`."""

    limits: Limits  # set by protocol_for
    drain: Drain = Drain()
    max_connections: int = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._raw_head = 0  # bytes read while the current head is incomplete
        self._header_bytes = 0
        self._header_count = 0
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._refusal: Optional[tuple[Failure, str]] = None
        self._link: Optional[CallerLink] = None
        self._requests = 0
        self._lingering = False
        self._linger_bytes = 0
        self._stall_timer: Optional[asyncio.TimerHandle] = None
        self._pipeline_full = False  # input past MAX_PIPELINED is dropped; closing after the queue

    # -- connection ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._evict_idle():
            self.connections.discard(self)
            transport.write(canned_response(Failure.OVERLOADED))
            self._linger(LINGER_AT_CAP_SECONDS)
            return
        self._arm_head_timer()

    def _evict_idle(self) -> bool:
        """Close one kept-alive connection that waits for nothing, to make room."""
        for other in self.connections:
            if other is not self and isinstance(other, BoundedProtocol) and other._idle():
                other.transport.close()
                self.connections.discard(other)
                return True
        return False

    def _idle(self) -> bool:
        return (self._requests > 0 and not self._in_head
                and (self.cycle is None or self.cycle.response_complete))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_head_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        link = self._link
        if link is not None:
            self._link = None
            if self.cycle is not None and not self.cycle.response_complete:
                link.lost()
        super().connection_lost(exc)

    # -- reading ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._pipeline_full:
            return
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here: the request is answered as a plain one and
            # the connection closes after it, so no bytes after the head are ever
            # read as HTTP.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        except httptools.HttpParserError as exc:
            if self._pipeline_full:
                self._stop_after_pipeline()
                return
            refusal = self._refusal or (Failure.BAD_REQUEST, f"the request is not valid HTTP/1.1: {_reason(exc)}")
            self._refuse(*refusal)
            return
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            # Still inside a head: every byte of this read belongs to it. (httptools
            # holds a header line until it is complete, so the callbacks alone
            # would not see one endless line.)
            self._raw_head += len(data)
            if self._raw_head > self.limits.max_request_line + self.limits.max_header_bytes:
                self._refuse(Failure.HEADERS_TOO_LARGE, "the request head is too large")

    def _refuse(self, failure: Failure, detail: str) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing() and not self._lingering:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # A request already handed to the app (its body was malformed): the
                # app sees a disconnect and its answer goes nowhere, ours is the one.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.write(canned_response(failure, detail))
            self._linger(LINGER_SECONDS)

    def _linger(self, seconds: float) -> None:
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(seconds, self.transport.close)

    def on_message_begin(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete and len(self.pipeline) >= MAX_PIPELINED:
            self._pipeline_full = True
            raise _Refuse()
        super().on_message_begin()
        self._in_head = True
        self._raw_head = 0
        self._header_bytes = 0
        self._header_count = 0
        self._requests += 1
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_request_line:
            self._refusal = (Failure.URI_TOO_LONG,
                             f"the request target exceeds {self.limits.max_request_line} bytes")
            raise _Refuse()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            self._refusal = (Failure.HEADERS_TOO_LARGE, f"the request has more than {self.limits.max_headers} headers")
            raise _Refuse()
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = (Failure.HEADERS_TOO_LARGE,
                             f"the request headers exceed {self.limits.max_header_bytes // 1024} KiB")
            raise _Refuse()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        link = self._link = CallerLink()
        self.scope[SCOPE_LINK] = link  # type: ignore[literal-required]
        super().on_headers_complete()
        link.bind(self.cycle, self.transport)
        if self.drain.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # uvicorn then sends Connection: close and closes

    def on_response_complete(self) -> None:
        self._link = None
        super().on_response_complete()
        if self._pipeline_full:
            self.flow.pause_reading()  # uvicorn resumes reading after every answer

    def _stop_after_pipeline(self) -> None:
        """The queue is full: answer what was accepted, the last with Connection: close."""
        self.flow.pause_reading()
        if self.cycle is not None:  # the newest request: the last one queued, or the one in progress
            self.cycle.keep_alive = False

    # -- a caller that stops reading -------------------------------------------------
    # The transport's buffer is full and our writes wait on the caller: a slow
    # reader (or one that never reads) would hold this connection, the upstream
    # exchange and its buffers for as long as it likes. Like nginx's
    # send_timeout, the connection is dropped when no write has gone through
    # for `send_timeout` seconds; the forwarder then sees a caller hang-up.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.limits.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().resume_writing()

    def _send_stalled(self) -> None:
        self._stall_timer = None
        if not self.transport.is_closing():
            self.transport.abort()  # a close would wait for the buffer to drain: it never will

    # -- the head timer --------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._raw_head or self._header_count:
            self._refuse(Failure.HEAD_TIMEOUT,
                         f"the request head did not arrive within {self.limits.head_timeout:g}s")
        else:
            self.transport.close()  # nothing asked: nothing to answer

    def shutdown(self) -> None:
        self._cancel_head_timer()
        super().shutdown()


def protocol_for(settings: ServeSettings, drain: Drain) -> type[BoundedProtocol]:
    """A protocol class bound to one server's limits (uvicorn instantiates it per connection)."""
    limits = Limits.of(settings)
    cap = limits.max_connections or default_max_connections()
    return type("BoundedProtocol", (BoundedProtocol,), {"limits": limits, "drain": drain, "max_connections": cap})


def _reason(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return text[:120]
