"""The access log of proxied calls: one record per call, written after its last byte.

Off by default (`--access-log`). Each record carries the request id, route,
method, status, time to the response head (the backend's answer time, or the
gateway's own refusal), total time and body bytes sent, as `extra` fields:
`--log-format json` turns them into JSON keys.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.proxy.forwarder import PREFIX

Scope = dict[str, Any]
log = logging.getLogger(__name__)


class AccessLogged:
    """Wraps an ASGI app (the forwarder); the wrapper exists only when the access log is on."""

    def __init__(self, app: Any, logger: logging.Logger = log) -> None:
        self.app = app
        self.log = logger
        # Asked for explicitly: written whatever --log-level says about the rest.
        logger.setLevel(logging.INFO)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        head_at = 0.0
        status = 0
        sent = 0
        request_id = ""

        async def observed(message: dict[str, Any]) -> None:
            nonlocal head_at, status, sent, request_id
            if message["type"] == "http.response.start":
                head_at = time.perf_counter()
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        request_id = value.decode("latin-1")
            else:
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            done = time.perf_counter()
            path: str = scope["path"]
            route = path[len(PREFIX):].partition("/")[0] if path.startswith(PREFIX) else ""
            client = scope.get("client")
            upstream_ms = round((head_at - started) * 1000, 3) if head_at else None
            total_ms = round((done - started) * 1000, 3)
            self.log.info(
                '%s %s %s %d %s ms %d B id=%s', client[0] if client else "-", scope["method"], path,
                status or 499, upstream_ms, sent, request_id,
                extra={"request_id": request_id, "route": route, "method": scope["method"], "path": path,
                       "status": status or 499, "upstream_ms": upstream_ms, "duration_ms": total_ms,
                       "bytes": sent, "client": client[0] if client else None})
