"""Assemble the proxy: the data plane in front, the FastAPI admin API behind.

Requests under `/orchestrator/` go straight to the forwarder (a bare ASGI
handler, the hot path); everything else is the admin API of the original
service. Both share one `AppState`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.version import __version__
from orchestrator.proxy.api import config_api, health_api, registry_api, router_api, service
from orchestrator.proxy.api.common import ApiError
from orchestrator.core.failures import Failure
from orchestrator.proxy.forwarder import PREFIX, Forwarder, Receive, Scope, Send
from orchestrator.proxy.state import AppState

log = logging.getLogger("orchestrator.proxy")

# Total request header bytes accepted (Envoy's default is 60 KiB): generous for
# large tokens and cookies, small enough that headers cannot exhaust memory.
MAX_HEADER_BYTES = 64 * 1024
_PREFIX_BYTES = PREFIX.encode()

DESCRIPTION = """\
Orchestrator forwards `ANY /orchestrator/{name}/{path}` to the backend registered as `{name}`,
with authentication headers passed through untouched, active health checks and a circuit
breaker per endpoint. The routes below are the admin API.
"""


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "status": status, "message": message, **extra}}, status_code=status)


def create_admin_app(state: AppState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with start_runtime(state):
            yield

    app = FastAPI(title="Orchestrator", version=__version__, description=DESCRIPTION, lifespan=lifespan)
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
async def start_runtime(state: AppState) -> AsyncIterator[None]:
    """The I/O that lives as long as the server: upstream pool and session, source, health checks."""
    import asyncio

    from orchestrator.proxy.upstream import Pool

    # The data plane's upstream client (proxy/upstream.py); aiohttp's session
    # below serves the health checks and /router/test, off the hot path.
    state.upstream = Pool()
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


class Gateway:
    """The outermost ASGI app: dispatch on the path prefix."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.admin = create_admin_app(state)
        self.forwarder = Forwarder(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # httptools sets no limit on header size: without this, a caller could
            # make the proxy hold (and forward) megabytes of headers per request.
            size = 0
            for name, value in scope["headers"]:
                size += len(name) + len(value) + 4
            if size > MAX_HEADER_BYTES:
                await self.forwarder.reject(send, Failure.HEADERS_TOO_LARGE, scope["headers"],
                                            detail=f"the request headers exceed {MAX_HEADER_BYTES // 1024} KiB")
                return
            # Dispatch on the raw path: the forwarder parses the route name out of
            # it, so "/orchestrato%72/svc" (decoded: "/orchestrator/svc") must not
            # reach the forwarder with a raw path it cannot split.
            if (scope.get("raw_path") or scope["path"].encode()).startswith(_PREFIX_BYTES):
                await self.forwarder(scope, receive, send)
                return
        await self.admin(scope, receive, send)
