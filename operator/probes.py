"""The operator's own HTTP endpoints (/healthz for the liveness probe, /metrics),
and the log filter that turns kopf's per-attempt retry errors into one line
per change of the API server's reachability.

Liveness: the operator is dead when its watches have been cut off (the API
server unreachable, and nothing delivered) for longer than `bound` seconds: a
restart then gets a fresh client, DNS lookup and connection. While the API
server merely has nothing to say, the operator is alive.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.operator.freshness import Contact
from orchestrator.operator.metrics import OperatorMetrics

log = logging.getLogger("orchestrator.operator")


def alive(contact: Contact, now: float, bound: float) -> bool:
    return contact.silent_for(now) <= bound


class Probes:
    def __init__(self, contact: Contact, metrics: OperatorMetrics, wall: Callable[[], float], bound: float) -> None:
        self.contact = contact
        self.metrics = metrics
        self.wall = wall
        self.bound = bound
        self._runner: web.AppRunner | None = None

    async def healthz(self, _: web.Request) -> web.Response:
        now = self.wall()
        if alive(self.contact, now, self.bound):
            return web.json_response({"status": "ok", "apiServer": "down" if self.contact.down else "up"})
        return web.json_response(
            {"status": "failing", "reason": f"watches cut off for {self.contact.silent_for(now):.0f} s "
                                            f"(bound {self.bound:g} s): {self.contact.reason}"}, status=503)

    async def metrics_text(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.add_routes([web.get("/healthz", self.healthz), web.get("/metrics", self.metrics_text)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class KopfRetryFilter(logging.Filter):
    """kopf logs every failed attempt of every request at ERROR (about one a second
    per watch during an outage). Those records become a call to `lost` (which logs
    one line when it is news) and are dropped; anything else from kopf passes."""

    def __init__(self, lost: Callable[[str], None]) -> None:
        super().__init__()
        self.lost = lost

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kopf"):
            return True
        message = record.getMessage()
        if message.startswith("Request attempt") and " failed" in message:
            self.lost(message.rsplit(" -> ", 1)[-1][:200])
            return False
        return True
