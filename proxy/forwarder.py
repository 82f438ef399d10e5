"""The data plane: `/orchestrator/{name}/{path}` as a bare ASGI handler.

This is the hot path, so it skips the web framework: one dict lookup for the
route, precomputed URL parts, headers handled as raw bytes, and a lean pooled
HTTP/1.1 client for the upstream call (`proxy/upstream.py`, chosen over
aiohttp's client by measurement: see docs/performance.md). Bodies stream in
both directions, so memory does not grow with body size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from orchestrator.core import headers as hdrs
from orchestrator.core import urls
from orchestrator.core.breaker import Admission
from orchestrator.core.failures import TABLE, Failure, error_body
from orchestrator.proxy.http_server import SCOPE_LINK, CallerLink
from orchestrator.proxy.metrics import UNKNOWN_ROUTE, RouteMetrics
from orchestrator.proxy.route_table import RouteRuntime
from orchestrator.proxy.state import AppState
from orchestrator.proxy.upstream import IDEMPOTENT, BodyMismatch, Pool, Response, UpstreamError

log = logging.getLogger(__name__)

# The ASGI types, as Starlette spells them (so the admin app accepts ours).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/orchestrator/"
_PREFIX_LEN = len(PREFIX)
# Bodies up to this size are read whole and sent in one message; larger ones stream.
_SMALL_BODY = 256 * 1024
# Sent with every refusal of a request whose framing is in doubt: whatever
# follows it on the connection is never read as another request.
_CLOSE = [(b"connection", b"close")]


class ClientGone(Exception):
    """The caller disconnected (while we read its body or streamed the answer)."""


class _Body:
    """The caller's request body, read piece by piece by the upstream client."""

    __slots__ = ("receive", "started")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.started = False  # a part of it was consumed: a retry could not resend it

    async def read(self) -> tuple[bytes, bool]:
        """The next piece and whether more follows (the upstream client's BodySource)."""
        self.started = True
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        return message.get("body", b""), message.get("more_body", False)


class Forwarder:
    """ASGI callable for everything under /orchestrator/."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.request_ids = hdrs.RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        state = self.state
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        rest = raw_path[_PREFIX_LEN:].decode("latin-1")
        name, _, sub_path = rest.partition("/")
        request_headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = hdrs.request_id_of(request_headers, self.request_ids)
        client = scope.get("client")
        try:
            upstream_headers, body_length = hdrs.request_headers(
                request_headers, client[0] if client else "", scope.get("scheme", "http"), request_id,
                scope.get("http_version", "1.1"))
        except hdrs.Refused as exc:
            # A known route's own label; any other name is one label for all (callers
            # choose names: one label each would let them grow the metrics without bound).
            label = name if name in state.table.routes else UNKNOWN_ROUTE
            state.metrics.route(label).observe(TABLE[exc.failure].status, time.perf_counter() - started)
            await self._fail(send, exc.failure, name, request_id, extra=_CLOSE, detail=exc.detail)
            return
        rt: Optional[RouteRuntime] = state.table.routes.get(name)
        if rt is None:
            state.metrics.route(UNKNOWN_ROUTE).observe(404, time.perf_counter() - started)
            await self._fail(send, Failure.UNKNOWN_ROUTE, name, request_id,
                             detail=f"no endpoint is registered under the name {name!r}")
            return
        metrics = state.metrics.route(name)
        method: str = scope["method"]
        if method not in rt.methods:
            metrics.observe(405, time.perf_counter() - started)
            await self._fail(send, Failure.METHOD_NOT_ALLOWED, name, request_id,
                             extra=[(b"allow", rt.allow)],
                             detail=f"{method} is not allowed; this endpoint accepts {rt.allow.decode()}")
            return
        if not rt.serving:
            metrics.observe(503, time.perf_counter() - started)
            why = "disabled" if rt.route.disabled else f"marked {rt.status}"
            await self._fail(send, Failure.DISABLED, name, request_id, detail=f"the endpoint {name!r} is {why}")
            return
        try:
            target = urls.safe_join(rt.base_path, sub_path)
        except urls.UnsafePath as exc:
            metrics.observe(400, time.perf_counter() - started)
            await self._fail(send, Failure.BAD_PATH, name, request_id, detail=str(exc))
            return
        query: bytes = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        breaker = rt.breaker
        admission = breaker.acquire()
        if admission is Admission.REJECTED:
            metrics.observe(503, time.perf_counter() - started)
            retry_after = max(1, int(breaker.retry_after() + 0.999))
            await self._fail(send, Failure.BREAKER_OPEN, name, request_id,
                             extra=[(b"retry-after", str(retry_after).encode())])
            return

        # The connection tells this task when the caller hangs up (by cancelling
        # it): the upstream exchange stops at once and the breaker hears nothing.
        link: Optional[CallerLink] = scope.get(SCOPE_LINK)
        if link is not None:
            link.watch(asyncio.current_task())
        verdict: Optional[bool] = None
        try:
            status = await self._forward(rt, method, target, upstream_headers, body_length, receive, send,
                                         request_id, started, metrics)
            verdict = status < 500
        except _UpstreamFailure as failure:
            verdict = False if TABLE[failure.kind].counts_against_breaker else None
            metrics.upstream_error(failure.kind.value)
            metrics.observe(TABLE[failure.kind].status, time.perf_counter() - started)
            if not failure.response_started:
                await self._fail(send, failure.kind, name, request_id, detail=failure.detail)
            else:
                log.warning("route %s: %s after the answer had started; the caller's connection is closed "
                            "(request id %s)", name, failure.detail, request_id.decode("latin-1"))
                if link is not None:
                    link.cut()
        except (ClientGone, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                if link is None or not link.gone:
                    raise  # the server is stopping, not the caller
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            # The caller went away: not the backend's fault, so no breaker verdict.
            verdict = None
            metrics.observe(499, time.perf_counter() - started)
        finally:
            if link is not None:
                link.watch(None)
            breaker.release(admission, verdict)

    async def _forward(
        self, rt: RouteRuntime, method: str, target: str, upstream_headers: list[tuple[bytes, bytes]],
        body_length: int, receive: Receive, send: Send, request_id: bytes, started: float, metrics: RouteMetrics,
    ) -> int:
        pool = self.state.upstream
        has_body = body_length != 0
        retry = rt.route.retries
        timeout = rt.route.timeout_seconds
        deadline = pool.time() + timeout  # bounds the whole call, retries included
        attempts = 1 + retry.attempts
        body = _Body(receive)
        source = body.read if has_body else None
        for attempt in range(attempts):
            try:
                resp = await pool.request(rt.origin, method, target, upstream_headers, source, body_length, deadline)
            except BodyMismatch as exc:
                raise _UpstreamFailure(Failure.BODY_TOO_LARGE, str(exc))
            except UpstreamError as exc:
                kind = exc.kind
                if kind is Failure.CONNECT_ERROR:
                    # Never reached the backend: safe to retry while time remains
                    # and no part of a streamed body was consumed.
                    if attempt + 1 < attempts and not body.started and deadline - pool.time() > 0:
                        continue
                    raise _UpstreamFailure(kind, f"the backend could not be reached: {exc.detail}")
                if kind is Failure.TIMEOUT:
                    raise _UpstreamFailure(kind, f"the backend did not answer within {timeout:g}s")
                raise _UpstreamFailure(Failure.PROTOCOL_ERROR, f"the backend's answer was not valid HTTP: {exc.detail}")
            if (resp.status >= 500 and retry.on_server_error and method in IDEMPOTENT and not has_body
                    and attempt + 1 < attempts and deadline - pool.time() > 0):
                resp.release()
                continue
            try:
                return await self._relay(resp, method, send, request_id, started, metrics)
            finally:
                resp.release()
        raise AssertionError("unreachable: the loop returns or raises")

    async def _relay(self, resp: Response, method: str, send: Send, request_id: bytes, started: float,
                     metrics: RouteMetrics) -> int:
        out_headers = hdrs.response_headers(resp.headers, resp.status, resp.length)
        if not any(n == b"x-request-id" for n, _ in out_headers):
            out_headers.append((b"x-request-id", request_id))
        status = resp.status
        length = resp.length
        try:
            if method == "HEAD" or status in (204, 304):
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                await send({"type": "http.response.body", "body": b""})
            elif length is not None and length <= _SMALL_BODY:
                data = await resp.read()
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                await send({"type": "http.response.body", "body": data})
            else:
                # uvicorn's send() silently drops data once the caller is gone; the
                # CallerLink cancels this task then, so a closed download stops
                # pulling the body from the backend.
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                try:
                    while True:
                        chunk = await resp.next_chunk()
                        if not chunk:
                            break
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except UpstreamError as exc:
                    # Headers are gone already: all we can do is cut the response short.
                    raise _UpstreamFailure(exc.kind, exc.detail, response_started=True)
                await send({"type": "http.response.body", "body": b""})
        except UpstreamError as exc:
            if exc.kind is Failure.TIMEOUT:
                raise _UpstreamFailure(Failure.TIMEOUT, "the backend's body did not arrive in time")
            raise _UpstreamFailure(Failure.PROTOCOL_ERROR, f"the backend's answer was cut short: {exc.detail}")
        metrics.observe(status, time.perf_counter() - started)
        return status

    async def reject(self, send: Send, failure: Failure, request_headers: list[tuple[bytes, bytes]],
                     detail: Optional[str] = None, extra: Optional[list[tuple[bytes, bytes]]] = None,
                     close: bool = False) -> None:
        """Answer a request refused before routing (by the dispatcher) in the same JSON shape."""
        if close:
            extra = (extra or []) + _CLOSE
        await self._fail(send, failure, "", hdrs.request_id_of(request_headers, self.request_ids),
                         extra=extra, detail=detail)

    async def _fail(self, send: Send, failure: Failure, route: str, request_id: bytes,
                    extra: Optional[list[tuple[bytes, bytes]]] = None, detail: Optional[str] = None) -> None:
        body = error_body(failure, route, request_id.decode("latin-1"), detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id)]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": TABLE[failure].status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _UpstreamFailure(Exception):
    def __init__(self, kind: Failure, detail: str, response_started: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.response_started = response_started
