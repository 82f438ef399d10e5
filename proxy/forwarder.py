"""The data plane: `/orchestrator/{name}/{path}` as a bare ASGI handler.

This is the hot path, so it skips the web framework: one dict lookup for the
route, precomputed URL parts, headers handled as raw bytes, and aiohttp as
the upstream client (chosen by measurement, see docs/performance.md). Bodies
stream in both directions, so memory does not grow with body size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiohttp
from yarl import URL

from orchestrator.core import headers as hdrs
from orchestrator.core import urls
from orchestrator.core.breaker import Admission
from orchestrator.core.failures import TABLE, Failure, error_body
from orchestrator.proxy.metrics import UNKNOWN_ROUTE
from orchestrator.proxy.route_table import RouteRuntime

log = logging.getLogger("orchestrator.proxy")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX = "/orchestrator/"
_PREFIX_LEN = len(PREFIX)
# Bodies up to this size are read whole and sent in one message; larger ones stream.
_SMALL_BODY = 256 * 1024
_CHUNK = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ClientGone(Exception):
    """The caller disconnected (while we read its body or streamed the answer)."""


class _Body:
    """What happened to the caller's request body, shared with its generator."""

    __slots__ = ("started", "done", "gone")

    def __init__(self, has_body: bool) -> None:
        self.started = False  # a part of it was consumed: a retry could not resend it
        self.done = not has_body  # fully read: `receive` is free for disconnect watching
        self.gone = False  # the caller disconnected mid-body


def _has_body(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in raw_headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class Forwarder:
    """ASGI callable for everything under /orchestrator/."""

    def __init__(self, state: Any) -> None:
        # `state` is the proxy's AppState (imported lazily there to avoid a cycle).
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        state = self.state
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        rest = raw_path[_PREFIX_LEN:].decode("latin-1")
        name, _, sub_path = rest.partition("/")
        request_headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = hdrs.request_id_of(request_headers)
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
            url = urls.upstream_url(rt.origin, rt.base_path, sub_path, scope.get("query_string", b"").decode("latin-1"))
        except urls.UnsafePath as exc:
            metrics.observe(400, time.perf_counter() - started)
            await self._fail(send, Failure.BAD_PATH, name, request_id, detail=str(exc))
            return
        breaker = rt.breaker
        admission = breaker.acquire()
        if admission is Admission.REJECTED:
            metrics.observe(503, time.perf_counter() - started)
            retry_after = max(1, int(breaker.retry_after() + 0.999))
            await self._fail(send, Failure.BREAKER_OPEN, name, request_id,
                             extra=[(b"retry-after", str(retry_after).encode())])
            return

        client = scope.get("client")
        upstream_headers = hdrs.request_headers(
            request_headers, client[0] if client else "", scope.get("scheme", "http"), request_id)
        verdict: Optional[bool] = None
        try:
            status = await self._forward(rt, method, url, upstream_headers, request_headers, receive, send,
                                         request_id, started, metrics)
            verdict = status < 500
        except _UpstreamFailure as failure:
            verdict = False if TABLE[failure.kind].counts_against_breaker else None
            metrics.upstream_error(failure.kind.value)
            metrics.observe(TABLE[failure.kind].status, time.perf_counter() - started)
            if not failure.response_started:
                await self._fail(send, failure.kind, name, request_id, detail=failure.detail)
        except ClientGone:
            # The caller went away: not the backend's fault, so no breaker verdict.
            verdict = None
            metrics.observe(499, time.perf_counter() - started)
        finally:
            breaker.release(admission, verdict)

    async def _forward(
        self, rt: RouteRuntime, method: str, url: str, upstream_headers: list[tuple[bytes, bytes]],
        request_headers: list[tuple[bytes, bytes]], receive: Receive, send: Send,
        request_id: bytes, started: float, metrics: Any,
    ) -> int:
        session: aiohttp.ClientSession = self.state.session
        has_body = _has_body(request_headers)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in upstream_headers]
        target = URL(url, encoded=True)
        retry = rt.route.retries
        deadline = time.monotonic() + rt.route.timeout_seconds
        attempts = 1 + retry.attempts
        body = _Body(has_body)
        for attempt in range(attempts):
            remaining = deadline - time.monotonic()
            timeout = rt.client_timeout if attempt == 0 else aiohttp.ClientTimeout(total=max(remaining, 0.001))
            data = _request_body(receive, body) if has_body else None
            try:
                resp = await session.request(
                    method, target, headers=headers, data=data, timeout=timeout,
                    allow_redirects=False, auto_decompress=False,
                )
            except aiohttp.ClientConnectorError as exc:
                # Never reached the backend: safe to retry while time remains
                # and no part of a streamed body was consumed.
                if body.gone:
                    raise ClientGone() from exc
                if attempt + 1 < attempts and not body.started and deadline - time.monotonic() > 0:
                    continue
                raise _UpstreamFailure(Failure.CONNECT_ERROR, f"the backend could not be reached: {exc.os_error or exc}")
            except asyncio.TimeoutError:
                raise _UpstreamFailure(Failure.TIMEOUT,
                                       f"the backend did not answer within {rt.route.timeout_seconds:g}s")
            except ClientGone:
                raise
            except aiohttp.ClientError as exc:
                # aiohttp wraps an error raised by the body generator (the caller
                # disconnected mid-upload) in a ClientError: that is not a backend failure.
                if body.gone:
                    raise ClientGone() from exc
                raise _UpstreamFailure(Failure.PROTOCOL_ERROR, f"the backend's answer was not valid HTTP: {exc}")
            if (resp.status >= 500 and retry.on_server_error and method in IDEMPOTENT and not has_body
                    and attempt + 1 < attempts and deadline - time.monotonic() > 0):
                resp.release()
                continue
            try:
                return await self._relay(resp, method, send, receive, body, request_id, started, metrics)
            finally:
                resp.release()
        raise AssertionError("unreachable: the loop returns or raises")

    async def _relay(self, resp: aiohttp.ClientResponse, method: str, send: Send, receive: Receive,
                     body: _Body, request_id: bytes, started: float, metrics: Any) -> int:
        out_headers = hdrs.response_headers((n.lower(), v) for n, v in resp.raw_headers)
        if not any(n == b"x-request-id" for n, _ in out_headers):
            out_headers.append((b"x-request-id", request_id))
        status = resp.status
        length = resp.content_length
        try:
            if method == "HEAD" or status in (204, 304):
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                await send({"type": "http.response.body", "body": b""})
            elif length is not None and length <= _SMALL_BODY:
                body = await resp.read()
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                await send({"type": "http.response.body", "body": body})
            else:
                await send({"type": "http.response.start", "status": status, "headers": out_headers})
                # uvicorn's send() silently drops data once the caller is gone, so
                # without a watcher a closed download would still pull the whole body
                # from the backend. Watch only once the request body is fully read:
                # until then `receive` belongs to the body generator.
                watcher = asyncio.ensure_future(_disconnected(receive)) if body.done else None
                try:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        if watcher is not None and watcher.done():
                            raise ClientGone()
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    # Headers are gone already: all we can do is cut the response short.
                    kind = Failure.TIMEOUT if isinstance(exc, asyncio.TimeoutError) else Failure.PROTOCOL_ERROR
                    raise _UpstreamFailure(kind, str(exc), response_started=True)
                finally:
                    if watcher is not None:
                        watcher.cancel()
                await send({"type": "http.response.body", "body": b""})
        except asyncio.TimeoutError:
            raise _UpstreamFailure(Failure.TIMEOUT, "the backend's body did not arrive in time")
        except aiohttp.ClientError as exc:
            raise _UpstreamFailure(Failure.PROTOCOL_ERROR, f"the backend's answer was cut short: {exc}")
        metrics.observe(status, time.perf_counter() - started)
        return status

    async def reject(self, send: Send, failure: Failure, request_headers: list[tuple[bytes, bytes]],
                     detail: Optional[str] = None) -> None:
        """Answer a request refused before routing (by the dispatcher) in the same JSON shape."""
        await self._fail(send, failure, "", hdrs.request_id_of(request_headers), detail=detail)

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


async def _request_body(receive: Receive, body: _Body) -> AsyncIterator[bytes]:
    body.started = True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            body.gone = True
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            body.done = True
            return


async def _disconnected(receive: Receive) -> None:
    """Return once the caller has disconnected (after its request body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
