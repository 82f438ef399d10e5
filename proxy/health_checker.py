"""Active health checks: the I/O around `core.health`.

One probe per distinct target URL (origin + base path + health path), however
many routes point at it. Probes run under a semaphore so a large registry
cannot open thousands of connections at once; the scheduler's jitter keeps
them spread out in time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import aiohttp

from orchestrator.core.health import Health, HealthTracker, ProbeScheduler
from orchestrator.proxy.metrics import Metrics
from orchestrator.proxy.route_table import RouteRuntime, RouteTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _TargetSettings:
    interval: float
    timeout: float
    healthy_threshold: int
    unhealthy_threshold: int


class HealthMonitor:
    def __init__(
        self,
        metrics: Metrics,
        concurrency: int = 32,
        clock: Callable[[], float] = time.monotonic,
        on_change: Optional[Callable[[str, Health], None]] = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._on_change = on_change
        self._scheduler = ProbeScheduler()
        self._semaphore = asyncio.Semaphore(concurrency)
        self._settings: dict[str, _TargetSettings] = {}
        self.trackers: dict[str, HealthTracker] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: Optional[aiohttp.ClientSession] = None

    def update(self, table: RouteTable) -> None:
        """Probe exactly the targets of the serving routes of `table`."""
        settings: dict[str, _TargetSettings] = {}
        for rt in table.routes.values():
            target = rt.health_target()
            if target is None:
                continue
            hc = rt.route.health_check
            mine = _TargetSettings(hc.interval_seconds, hc.timeout_seconds, hc.healthy_threshold, hc.unhealthy_threshold)
            other = settings.get(target)
            # Routes sharing a target share a probe: the most demanding settings win.
            settings[target] = mine if other is None else _TargetSettings(
                min(other.interval, mine.interval), min(other.timeout, mine.timeout),
                max(other.healthy_threshold, mine.healthy_threshold),
                min(other.unhealthy_threshold, mine.unhealthy_threshold))
        for target, s in settings.items():
            tracker = self.trackers.get(target)
            if tracker is None or self._settings.get(target) != s:
                fresh = HealthTracker(s.healthy_threshold, s.unhealthy_threshold)
                if tracker is not None:  # keep what we know across a settings change
                    fresh.state = tracker.state
                self.trackers[target] = fresh
        for target in set(self.trackers) - set(settings):
            del self.trackers[target]
        self._settings = settings
        self._scheduler.set_targets({t: s.interval for t, s in settings.items()}, self._clock())
        self._wake.set()

    def health_of(self, rt: RouteRuntime) -> Health:
        if not rt.serving:
            return Health.DISABLED
        tracker = self.tracker_of(rt)
        return tracker.state if tracker else Health.UNKNOWN

    def tracker_of(self, rt: RouteRuntime) -> Optional[HealthTracker]:
        target = rt.health_target()
        return self.trackers.get(target) if target else None

    async def run(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        while True:
            self._wake.clear()
            for target in self._scheduler.pop_due(self._clock()):
                task = asyncio.create_task(self.probe(target))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            next_due = self._scheduler.next_due()
            delay = 3600.0 if next_due is None else max(0.0, next_due - self._clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 3600.0))
            except asyncio.TimeoutError:
                pass

    async def check_now(self, rt: RouteRuntime) -> Optional[HealthTracker]:
        target = rt.health_target()
        if target is None or target not in self.trackers:
            return None
        await self.probe(target)
        return self.trackers.get(target)

    async def probe(self, target: str) -> None:
        settings = self._settings.get(target)
        if settings is None or self._session is None:
            return
        async with self._semaphore:
            started = self._clock()
            ok, error = False, None
            try:
                async with self._session.get(
                    target, timeout=aiohttp.ClientTimeout(total=settings.timeout), allow_redirects=False
                ) as resp:
                    await resp.read()
                    ok = resp.status < 400
                    if not ok:
                        error = f"HTTP {resp.status}"
            except asyncio.TimeoutError:
                error = f"timed out after {settings.timeout:g}s"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"
            latency_ms = (self._clock() - started) * 1000
        self._metrics.health_probes["ok" if ok else "failed"] += 1
        tracker = self.trackers.get(target)
        if tracker is None:  # removed while probing
            return
        before = tracker.state
        after = tracker.record(ok, at=time.time(), latency_ms=latency_ms, error=error)
        if after is not before:
            log.info("health of %s: %s -> %s%s", target, before.value, after.value, f" ({error})" if error else "")
            if self._on_change is not None:
                self._on_change(target, after)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
