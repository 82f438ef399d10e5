"""Assemble the proxy: the data plane in front, the FastAPI admin API behind.

Requests under `/orchestrator/` go straight to the forwarder (a bare ASGI
handler, the hot path); everything else is the admin API of the original
service, behind the access policy of `core/admin_access.py` and a body cap.
One `Gateway` per listener; all share one `AppState`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator, Optional

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.core import headers as hdrs
from orchestrator.core.admin_access import Policy, Role, decide
from orchestrator.core.failures import Failure
from orchestrator.proxy.api import config_api, health_api, registry_api, router_api, service
from orchestrator.proxy.api.common import ApiError
from orchestrator.proxy.forwarder import PREFIX, Forwarder, Message, Receive, Scope, Send
from orchestrator.proxy.state import AppState
from orchestrator.settings import ServeSettings
from orchestrator.version import __version__

log = logging.getLogger(__name__)

_PREFIX_BYTES = PREFIX.encode()
# Admin bodies are small JSON documents; anything larger is refused unread.
DEFAULT_ADMIN_MAX_BODY = 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

DESCRIPTION = """\
Orchestrator forwards `ANY /orchestrator/{name}/{path}` to the backend registered as `{name}`,
with authentication headers passed through untouched, active health checks and a circuit
breaker per endpoint. The routes below are the admin API.
"""


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "status": status, "message": message, **extra}}, status_code=status)


def create_admin_app(state: AppState) -> FastAPI:
    # No lifespan here: the runtime is started once per process by proxy/server.py
    # (or by `Gateway` when uvicorn's --reload runs it).
    app = FastAPI(title="Orchestrator", version=__version__, description=DESCRIPTION)
    app.state.gateway = state
    for module in (service, config_api, registry_api, health_api, router_api):
        app.include_router(module.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status_code, exc.code, str(exc.detail), **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _error(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"location": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{d['location']}: {d['message']}" for d in details)
        return _error(422, "invalid_request", f"the request is invalid: {summary}", details=details)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; the proxy's log has the details")

    return app


@contextlib.asynccontextmanager
async def start_runtime(state: AppState, settings: ServeSettings) -> AsyncIterator[None]:
    """The I/O that lives as long as the server: upstream pool and session, source, health checks."""
    import asyncio

    from orchestrator.proxy.upstream import Pool

    # The data plane's upstream client (proxy/upstream.py); aiohttp's session
    # below serves the health checks and /router/test, off the hot path.
    state.upstream = Pool(max_idle_per_origin=settings.upstream_max_idle, idle_timeout=settings.upstream_idle_timeout,
                          allow_link_local=settings.allow_link_local)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30)
    # DummyCookieJar: the proxy must never keep one caller's cookies for another.
    state.session = aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    health_task = asyncio.create_task(state.health.run(state.session), name="health-checks")
    try:
        await state.source.start()
        yield
    finally:
        await state.source.stop()
        health_task.cancel()
        await state.health.close()
        await state.session.close()
        await state.upstream.close()


def build_apps(state: AppState) -> tuple[FastAPI, Forwarder]:
    """The two ASGI handlers every listener's Gateway shares."""
    return create_admin_app(state), Forwarder(state)


class Gateway:
    """The outermost ASGI app of one listener: dispatch on the path prefix, guard the admin API."""

    def __init__(self, state: AppState, policy: Policy, admin: Optional[FastAPI] = None,
                 forwarder: Optional[Any] = None, admin_max_body: int = DEFAULT_ADMIN_MAX_BODY,
                 settings: Optional[ServeSettings] = None) -> None:
        self.state = state
        self.policy = policy
        self.admin = admin or create_admin_app(state)
        self.forwarder = forwarder or Forwarder(state)  # or the forwarder wrapped in the access log
        self.admin_max_body = admin_max_body
        self.settings = settings  # only for the lifespan (uvicorn --reload); proxy/server.py starts the runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Dispatch on the raw path: the forwarder parses the route name out of
            # it, so "/orchestrato%72/svc" (decoded: "/orchestrator/svc") must not
            # reach the forwarder with a raw path it cannot split.
            if (self.policy.role is not Role.ADMIN
                    and (scope.get("raw_path") or scope["path"].encode()).startswith(_PREFIX_BYTES)):
                await self.forwarder(scope, receive, send)
            else:
                await self._admin(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        authorization = None
        hosts = []
        for name, value in headers:
            if name == b"host":
                hosts.append(value)
            elif name == b"authorization":
                authorization = value
        try:
            hdrs.check_host(hosts, scope.get("http_version", "1.1"))
        except hdrs.Refused as exc:
            await self.forwarder.reject(send, exc.failure, headers, exc.detail, close=True)
            return
        client = scope.get("client")
        denied = decide(self.policy, scope["path"], client[0] if client else None, authorization)
        if denied is not None:
            extra = [(b"www-authenticate", b'Bearer realm="orchestrator-admin"')] \
                if denied.failure is Failure.ADMIN_UNAUTHENTICATED else None
            await self.forwarder.reject(send, denied.failure, headers, denied.detail, extra=extra)
            return
        if scope["method"] in _BODY_METHODS:
            bounded = await self._read_bounded(scope, receive, send)
            if bounded is None:
                return
            receive = bounded
        await self.admin(scope, receive, send)

    async def _read_bounded(self, scope: Scope, receive: Receive, send: Send) -> Optional[Receive]:
        """Read an admin body whole, up to the cap (413 beyond it); None when refused."""
        cap = self.admin_max_body
        headers = scope["headers"]
        too_large = f"admin request bodies are limited to {cap} bytes"
        for name, value in headers:
            if name == b"content-length" and (not value.isdigit() or int(value) > cap):
                await self.forwarder.reject(send, Failure.BODY_TOO_LARGE_ADMIN, headers, too_large, close=True)
                return None
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > cap:
                await self.forwarder.reject(send, Failure.BODY_TOO_LARGE_ADMIN, headers, too_large, close=True)
                return None
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def bounded_receive() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        return bounded_receive

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Only under `uvicorn --reload` (development): proxy/server.py starts the runtime otherwise."""
        await receive()  # lifespan.startup
        try:
            async with start_runtime(self.state, self.settings or ServeSettings()):
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except Exception as exc:  # a source that cannot start: say so, as uvicorn expects
            log.exception("the proxy runtime failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})
