"""The operator's loop: watch events in, plans out, plans carried out.

kopf handlers call `endpoint_event` / `configmap_event`, which record the
object in `Inputs` and wake the loop. The loop runs the pure pass
(`plan.Pass`) and carries out its plan: the registry first (it is what routes
traffic), then source Events, then status patches handed to `StatusQueue`,
which writes beside the loop so thousands of patches never hold up the next
registry write. Debounce is leading-edge: the first change of a quiet period
is handled at once, a burst coalesces behind it.

Everything that reads the time goes through the injected `Clock`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from orchestrator.core.model import Defaults
from orchestrator.operator.metrics import OperatorMetrics
from orchestrator.operator.freshness import Contact, FreshnessRule
from orchestrator.operator.inputs import Inputs
from orchestrator.operator.peering import PeeringGuard
from orchestrator.operator.plan import Changes, Event, Now, Pass, Plan, StatusPatch, Written
from orchestrator.operator.api import is_outage, no_answer
from orchestrator.operator.writer import Writer

log = logging.getLogger(__name__)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


def reading(clock: Clock) -> Now:
    return Now(clock.monotonic(), clock.wall())


@dataclass
class Settings:
    namespace: str  # where the registry and the reports live
    registry_name: str
    defaults: Defaults
    debounce_seconds: float = 0.05
    report_stale_seconds: float = 30.0
    hold_seconds: float = 1.0  # see plan.Pass.hold_seconds
    status_workers: int = 32  # status patches in flight (async: a task each, no thread)
    retry_seconds: float = 1.0  # after a failed write, and between probes while the API server is away
    peering_seconds: float = 2.0  # how often the peering object is read (a rival pauses writes within this)
    allow_link_local: bool = False  # route backends at link-local addresses (--allow-link-local)


class Debounce:
    """Leading-edge debounce: run at once after a quiet `window`, else at the window's end.

    A change to what is routed (a compile) waits only behind the last compile, not
    behind a pass that only looked at reports or statuses: those passes follow every
    change (the replicas report the new revision, the status patch comes back), and
    the next change would otherwise wait up to a window behind them for nothing."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.last = float("-inf")  # any pass
        self.last_compile = float("-inf")

    def delay(self, now: float, compile: bool = False) -> float:
        last = self.last_compile if compile else self.last
        return max(0.0, last + self.window - now)

    def ran(self, now: float, compile: bool = False) -> None:
        self.last = now
        if compile:
            self.last_compile = now


class StatusQueue:
    """Status patches keyed by Endpoint uid, latest wins, a few written at once; the
    Events of a transition once its patch has landed, after any waiting patch (in a
    burst, Ready=True on the next Endpoint matters more than the news about this one).

    A patch that fails because the API server is away is put back (unless a newer
    one for the same Endpoint arrived meanwhile) and retried."""

    def __init__(self, writer: Writer, workers: int, outage: Callable[[BaseException], None],
                 retry_seconds: float, metrics: OperatorMetrics) -> None:
        self.writer = writer
        self.metrics = metrics
        self.workers = workers
        self.outage = outage
        self.retry_seconds = retry_seconds
        self.pending: "OrderedDict[str, StatusPatch]" = OrderedDict()
        self.events: deque[tuple[dict[str, str], Event]] = deque()
        self.in_flight = 0
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"status-{i}") for i in range(self.workers)]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def put(self, patch: StatusPatch) -> None:
        older = self.pending.pop(patch.uid, None)
        self.pending[patch.uid] = older.superseded_by(patch) if older is not None else patch
        self._changed()

    def size(self) -> int:
        return len(self.pending) + self.in_flight

    def _changed(self) -> None:
        self.metrics.status_pending.set(self.size())
        if self.pending or self.events:
            self._ready.set()

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            if self.pending:
                _, patch = self.pending.popitem(last=False)
                await self._patch(patch)
            elif self.events:
                await self._event(*self.events.popleft())
            else:
                self._ready.clear()

    async def _patch(self, patch: StatusPatch) -> None:
        self.in_flight += 1
        self._changed()
        try:
            ns, name = patch.key
            landed = await self.writer.patch_status(ns, name, patch.desired)
            self.metrics.status_writes.labels("ok" if landed else "gone").inc()
            if landed:
                self.events.extend((patch.involved, event) for event in patch.events)
        except Exception as exc:
            self.metrics.status_writes.labels("failed").inc()
            if is_outage(exc):
                self.outage(exc)
                if patch.uid not in self.pending:
                    self.pending[patch.uid] = patch
                await asyncio.sleep(self.retry_seconds)
            else:  # a rejected patch is a bug to see, not to retry in a loop
                log.exception("status patch of %s/%s failed", *patch.key)
        finally:
            self.in_flight -= 1
            self._changed()

    async def _event(self, involved: dict[str, str], event: Event) -> None:
        etype, reason, message = event
        ok = await self.writer.event(involved, etype, reason, message)
        self.metrics.events.labels("ok" if ok else "failed").inc()


class Reconciler:
    """Owns the inputs, what was written, and the loop that connects them."""

    def __init__(self, settings: Settings, writer: Writer, clock: Optional[Clock] = None,
                 peering: Optional[PeeringGuard] = None, metrics: Optional[OperatorMetrics] = None) -> None:
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.writer = writer
        self.clock = clock or SystemClock()
        self.peering = peering
        self.inputs = Inputs(settings.namespace, settings.registry_name)
        self.written = Written()
        self.contact = Contact()
        self.pass_ = Pass(settings.defaults, FreshnessRule(settings.report_stale_seconds), settings.hold_seconds,
                          settings.allow_link_local)
        self.debounce = Debounce(settings.debounce_seconds)
        self.statuses = StatusQueue(writer, settings.status_workers, self.failed, settings.retry_seconds,
                                    self.metrics)
        self.primed = False  # no pass until the initial listing is in
        self._kick = asyncio.Event()
        self._wake_at: Optional[float] = None

    # -- what the watches saw ----------------------------------------------------
    def endpoint_event(self, event_type: Optional[str], body: Mapping[str, Any]) -> None:
        self._heard()
        uid = (body.get("metadata") or {}).get("uid", "")
        if self.inputs.observe_endpoint(event_type, body, self.clock.monotonic(), self.written.statuses.get(uid)):
            self.kick()

    def configmap_event(self, event_type: Optional[str], body: Mapping[str, Any]) -> None:
        self._heard()
        if self.inputs.observe_configmap(event_type, body):
            self.kick()

    def _heard(self) -> None:
        gone = self.contact.event(self.clock.wall())
        if gone is not None:
            self._back(gone)

    def kick(self) -> None:
        self._kick.set()

    # -- the API server's comings and goings ---------------------------------------
    def failed(self, exc: BaseException) -> None:
        """A call failed in a way worth retrying: no answer at all is an outage; an
        answer such as 503 while the API server starts is only a reason to try again."""
        if no_answer(exc):
            self.lost_contact(exc)
        else:
            log.debug("API server busy (%s); retrying", exc)

    def lost_contact(self, reason: object) -> None:
        """Something failed to reach the API server: one line when that is news."""
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        if self.contact.lost(self.clock.wall(), str(text)[:120]):
            self.metrics.watch_restarts.inc()
            self.metrics.api_reachable.set(0)
            log.warning("API server unreachable (%s); retrying every %g s, writes wait, replicas keep their status",
                        self.contact.reason, self.settings.retry_seconds)
            self.kick()

    def _back(self, gone: float) -> None:
        self.metrics.api_reachable.set(1)
        log.info("API server answers again (away %.1f s); replicas get %g s to report before any counts as gone",
                 gone, self.settings.report_stale_seconds)
        self.kick()

    async def _probe(self) -> None:
        """While the API server is away: try to list the reports. Success means it is
        back (storage included, which /version would not prove), and the listing is
        the freshest word on every replica."""
        at = self.clock.wall()
        try:
            items = await self.writer.list_reports()
        except Exception as exc:
            if not is_outage(exc):
                raise
            return
        self.inputs.replace_reports(items, at)
        gone = self.contact.back(self.clock.wall())
        if gone is not None:
            self._back(gone)

    # -- the loop --------------------------------------------------------------------
    async def watch_peers(self) -> None:
        """Read kopf's peering object every `peering_seconds`, beside the loop: a pass
        must not wait for that round trip, and a rival is noticed within the period."""
        assert self.peering is not None
        said = ""
        while True:
            try:
                await self.peering.check()
                said = ""
            except Exception as exc:
                if is_outage(exc):
                    self.failed(exc)
                elif str(exc) != said:  # a refusal (RBAC?) once per distinct error, not every period
                    said = str(exc)
                    log.exception("reading the peering object failed (until it succeeds once, nothing is written)")
            await asyncio.sleep(self.settings.peering_seconds)

    async def run(self) -> None:
        self.statuses.start()
        peers = asyncio.create_task(self.watch_peers(), name="peers") if self.peering is not None else None
        try:
            while True:
                await self._wait()
                if not self.primed:
                    continue
                try:
                    if self.contact.down:
                        await self._probe()
                        if self.contact.down:
                            continue  # nothing can be written; what changed stays marked for later
                    await self.reconcile()
                except Exception as exc:  # keep the loop alive; the next pass retries
                    if is_outage(exc):
                        self.failed(exc)
                    else:
                        log.exception("reconcile failed; retrying")
                    self._wake_at = self.clock.monotonic() + self.settings.retry_seconds
        finally:
            if peers is not None:
                peers.cancel()
            self.statuses.stop()

    async def _wait(self) -> None:
        now = self.clock.monotonic()
        wake = self._wake_at
        if self.contact.down:
            wake = min(wake or float("inf"), now + self.settings.retry_seconds)
        timeout = None if wake is None else max(0.0, wake - now)
        try:
            await asyncio.wait_for(self._kick.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            pass
        # A burst: let it settle behind the pass that just ran. A change to what is routed
        # arriving meanwhile is looked at again (it waits only behind the last compile).
        while (delay := self.debounce.delay(self.clock.monotonic(), self.inputs.compile_dirty)) > 0:
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
        self._kick.clear()
        self.debounce.ran(self.clock.monotonic(), self.inputs.compile_dirty)

    async def reconcile(self) -> None:
        # Frozen while a rival is alive, and until the peering object has been read once:
        # write nothing, forget nothing (what changed stays marked in the inputs).
        if self.peering is not None and (not self.peering.checked or self.peering.rivals):
            self._wake_at = self.clock.monotonic() + self.settings.retry_seconds
            return
        compile_dirty, keys, routes = self.inputs.take_dirty()
        changes = Changes(compile_dirty, keys, routes)
        started = time.perf_counter()
        plan = self.pass_.run(self.inputs, changes, self.written, self.contact, reading(self.clock))
        took = time.perf_counter() - started
        self.metrics.pass_seconds.observe(took)
        self.metrics.passes.inc()
        log.debug("pass: compile=%s, %d Endpoint(s) evaluated, %d status patch(es), registry %s, %.1f ms",
                  changes.compile, plan.evaluated, len(plan.statuses),
                  "unchanged" if plan.registry is None else plan.registry.revision, took * 1000)
        await self.carry_out(plan, changes)

    def _restore(self, changes: Changes) -> None:
        self.inputs.compile_dirty |= changes.compile
        self.inputs.dirty_keys |= changes.keys
        self.inputs.dirty_routes |= changes.routes

    async def carry_out(self, plan: Plan, changes: Changes) -> None:
        written = self.written
        if plan.registry is not None:
            try:
                written.shards = await self.writer.write_registry(plan.registry, written.shards)
            except Exception:
                self.metrics.registry_writes.labels("failed").inc()
                self._restore(changes)
                raise
            self.metrics.registry_writes.labels("ok").inc()
            log.info("registry revision %s written: %d routes in %d shard(s)",
                     plan.registry.revision, len(plan.registry.routes), written.shards)
        for event in plan.source_events:
            ok = await self.writer.event(event.involved, event.type, event.reason, event.message)
            self.metrics.events.labels("ok" if ok else "failed").inc()
        if plan.fresh != written.fresh:
            if written.fresh is not None:
                log.info("proxy replicas reporting: %s", ", ".join(sorted(plan.fresh)) or "none")
            self.metrics.replicas_reporting.set(len(plan.fresh))
        written.record(plan, {seen.obj.meta.uid for seen in self.inputs.endpoints.values()})
        for patch in plan.statuses:
            self.statuses.put(patch)
        self._wake_at = plan.wake_at
        if plan.verify_reports and not self.contact.down:
            await self.verify_reports()

    async def verify_reports(self) -> None:
        """A replica looks stale: list the reports before concluding anything."""
        at = self.clock.wall()
        items = await self.writer.list_reports()
        self.inputs.replace_reports(items, at)
        self.kick()
