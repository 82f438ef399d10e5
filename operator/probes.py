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
import time
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.operator.freshness import Contact
from orchestrator.operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)


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


# kopf's request errors that mean "no answer" (as opposed to an answer it did not like).
_UNREACHABLE = ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "TimeoutError",
                "ServerTimeoutError", "ConnectionResetError")


class KopfRetryFilter(logging.Filter):
    """kopf logs every failed attempt of every request at ERROR (about one a second
    per watch during an outage). An attempt that got no answer becomes a call to
    `lost` (which logs one line when it is news); one that got an answer (a 429 or
    5xx while the API server starts, say) becomes one line per `quiet` seconds.
    Both are then dropped; anything else from kopf passes."""

    def __init__(self, lost: Callable[[str], None], quiet: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.lost = lost
        self.quiet = quiet
        self.clock = clock
        self._said = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kopf"):
            return True
        message = record.getMessage()
        if not (message.startswith("Request attempt") and " failed" in message):
            return True
        error = message.rsplit(" -> ", 1)[-1]
        if error.startswith(_UNREACHABLE):
            self.lost(error[:200])
        elif self.clock() - self._said >= self.quiet:
            self._said = self.clock()
            log.warning("API server answered with an error (%s); kopf retries", error[:120])
        return False
