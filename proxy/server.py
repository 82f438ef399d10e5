"""Run the proxy's listeners: one process, one runtime, one or two ports, a drain on SIGTERM.

uvicorn serves each listener with the bounded connection protocol
(`proxy/http_server.py`). The runtime (upstream pool, health checks, the
registry source) is started here once for all listeners, before the first
port opens, so no listener ever sees a half-started state.

Shutdown is the one a rolling update needs (docs/architecture.md, "Drain"):
on SIGTERM `/readyz` turns 503 at once and every response carries
`Connection: close`, while the ports keep accepting for `drain_seconds`
(Kubernetes keeps sending traffic until every node has seen the Pod leave
the Service); then the ports close, in-flight requests get up to
`grace_seconds` to finish, and the process exits 0. A second signal, or
SIGINT, skips the drain period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import uvicorn

from orchestrator.core.admin_access import Policy
from orchestrator.proxy.access_log import AccessLogged
from orchestrator.proxy.app import Gateway, build_apps, start_runtime
from orchestrator.proxy.http_server import Drain, protocol_for, raise_fd_limit
from orchestrator.proxy.state import AppState
from orchestrator.settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    policy: Policy


class _Server(uvicorn.Server):
    """One listener; signals are handled by `serve` for all listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, host: str, port: int, protocol: type, log_level: str, settings: ServeSettings,
                   **extra: Any) -> uvicorn.Config:
    # proxy_headers=False: uvicorn would otherwise trust X-Forwarded-For/-Proto from
    # 127.0.0.1 and replace the peer address with a value the caller chose; the
    # gateway must see the real peer so it can append it to X-Forwarded-For.
    # ws="none": the proxy relays no protocol switch (see http_server.py).
    # access_log=False: the gateway writes its own (proxy/access_log.py), with the route and timings.
    # log_config=None: logging is set up once by orchestrator/logs.py (text or JSON).
    return uvicorn.Config(
        app, host=host, port=port, http=protocol, ws="none", loop="uvloop", log_level=log_level,
        access_log=False, log_config=None, server_header=False, date_header=False, proxy_headers=False,
        timeout_keep_alive=int(max(1, settings.keepalive_timeout)),
        timeout_graceful_shutdown=int(max(1, settings.grace_seconds)), **extra)


async def serve(state: AppState, listeners: list[Listener], settings: ServeSettings, log_level: str) -> None:
    drain = Drain()
    protocol = protocol_for(settings, drain)
    admin, forwarder = build_apps(state)
    access = AccessLogged(forwarder, settings.log_format) if settings.access_log else None
    traffic: Any = access or forwarder
    servers = [
        _Server(uvicorn_config(Gateway(state, item.policy, admin, traffic, settings.admin_max_body),
                               item.host, item.port, protocol, log_level, settings, lifespan="off"))
        for item in listeners
    ]
    loop = asyncio.get_running_loop()
    stopping: Optional[asyncio.Task[None]] = None

    def stop_now() -> None:
        for server in servers:
            server.should_exit = True

    async def drain_then_stop() -> None:
        log.info("SIGTERM: draining for %gs (readyz 503, Connection: close), then stopping", settings.drain_seconds)
        await asyncio.sleep(settings.drain_seconds)
        stop_now()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if sig is signal.SIGTERM and stopping is None and settings.drain_seconds > 0:
            state.begin_drain()
            drain.begin()
            for server in servers:
                for connection in list(server.server_state.connections):
                    cycle = getattr(connection, "cycle", None)
                    if cycle is not None and not cycle.response_started:
                        cycle.keep_alive = False  # its answer will say Connection: close
            stopping = loop.create_task(drain_then_stop())
            return
        stop_now()  # SIGINT, or a second signal: no drain period

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with start_runtime(state, settings):
        await asyncio.gather(*(server.serve() for server in servers))
    if stopping is not None:
        stopping.cancel()
    if access is not None:
        access.close()


def run(state: AppState, listeners: list[Listener], settings: ServeSettings, log_level: str) -> int:
    raise_fd_limit()
    import uvloop

    uvloop.run(serve(state, listeners, settings, log_level))
    return 0
