"""The operator's one reconcile loop: watched objects in, registry and status out.

kopf handlers only record what the watches saw (`observe_*`) and `kick()`
this loop. Each pass compiles everything (a pure function), writes the
registry if its revision changed, then patches the status of the Endpoints
whose status would look different, and posts Events for transitions. Bursts
of changes are coalesced by a short debounce, so 100 applies cost a handful
of registry writes, not 100.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from orchestrator.core import contract
from orchestrator.core.compile import (CompileCache, Compiled, ConfigMapObject, EndpointObject, Key, ObjectMeta,
                                       compile_registry)
from orchestrator.core.model import Defaults
from orchestrator.core.registry import Registry
from orchestrator.operator import status as status_logic
from orchestrator.operator.peering import PeeringGuard
from orchestrator.operator.writer import Writer, involved, now_rfc3339

log = logging.getLogger("orchestrator.operator")


@dataclass
class Settings:
    namespace: str  # where the registry and the reports live
    registry_name: str
    defaults: Defaults
    debounce_seconds: float = 0.05
    report_stale_seconds: float = 30.0
    resync_seconds: float = 5.0  # re-evaluate report freshness at least this often


def _meta(body: Mapping[str, Any]) -> ObjectMeta:
    m = body.get("metadata", {})
    return ObjectMeta(namespace=m.get("namespace", ""), name=m.get("name", ""), uid=m.get("uid", ""),
                      generation=int(m.get("generation") or 0), created=m.get("creationTimestamp") or "")


@dataclass
class _EndpointSeen:
    obj: EndpointObject
    status: Optional[dict[str, Any]]
    body_meta: dict[str, Any]


@dataclass
class OperatorState:
    """Everything the operator knows; the kopf memo object holds one."""

    settings: Settings
    writer: Optional[Writer] = None
    endpoints: dict[Key, _EndpointSeen] = field(default_factory=dict)
    sources: dict[Key, ConfigMapObject] = field(default_factory=dict)
    source_meta: dict[Key, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, contract.Report] = field(default_factory=dict)
    _report_texts: dict[str, str] = field(default_factory=dict)  # as last read, to skip re-parsing
    registry: Optional[Registry] = None  # as last written (or found at start)
    shards_written: int = 0
    status_written: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> status we patched
    source_problems: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=lambda: {"registry": 0, "status": 0, "events": 0})
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    primed: bool = False  # no writes until the initial listing is complete
    # Only Endpoint and source changes need a compile; a report only moves status.
    _dirty_inputs: bool = True
    _compiled: Optional[Compiled] = None
    _compile_cache: CompileCache = field(default_factory=CompileCache)
    peering: Optional[PeeringGuard] = None
    _status_due: bool = False
    _fresh_at_last_pass: frozenset[str] = frozenset()
    _status_task: Optional["asyncio.Task[None]"] = None

    # -- what the watches saw ----------------------------------------------
    def observe_endpoint(self, event_type: Optional[str], body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        log.debug("Endpoint %s/%s generation %d: %s", meta.namespace, meta.name, meta.generation, event_type or "listed")
        if event_type == "DELETED":
            self.endpoints.pop(meta.key, None)
            self._dirty_inputs = True
        else:
            before = self.endpoints.get(meta.key)
            seen = _EndpointSeen(EndpointObject(meta, dict(body.get("spec") or {})),
                                 dict(body.get("status") or {}) or None, dict(body.get("metadata") or {}))
            self.endpoints[meta.key] = seen
            # Our own status patches come back as MODIFIED: they change nothing to compile.
            if before is None or before.obj != seen.obj:
                self._dirty_inputs = True
        self.kick()

    def observe_configmap(self, event_type: Optional[str], body: Mapping[str, Any]) -> None:
        meta = _meta(body)
        labels = body.get("metadata", {}).get("labels") or {}
        gone = event_type == "DELETED"
        if not gone and labels.get(contract.SOURCE_LABEL) == "true":
            text = (body.get("data") or {}).get(contract.SOURCE_KEY)
            self.sources[meta.key] = ConfigMapObject(meta, text)
            self.source_meta[meta.key] = dict(body.get("metadata") or {})
            self._dirty_inputs = True
            self.kick()
        elif meta.key in self.sources:  # deleted, or the label was taken off
            del self.sources[meta.key]
            self.source_meta.pop(meta.key, None)
            self._dirty_inputs = True
            self.kick()
        if meta.namespace == self.settings.namespace and labels.get(contract.REPORT_LABEL) == self.settings.registry_name:
            before = self.reports.pop(meta.name, None)
            before_text = self._report_texts.pop(meta.name, None)
            if not gone:
                data = body.get("data") or {}
                try:
                    self.reports[meta.name] = contract.Report.from_data(data, before, before_text)
                    self._report_texts[meta.name] = data[contract.REPORT_KEY]
                except (KeyError, ValueError, TypeError) as exc:
                    log.warning("ignoring unreadable report %s: %s", meta.name, exc)
            after = self.reports.get(meta.name)
            # A heartbeat alone changes nothing visible; the periodic pass checks freshness.
            if before is None or after is None or before.content() != after.content():
                self.kick()

    def kick(self) -> None:
        self._kick.set()

    # -- the loop -------------------------------------------------------------
    async def run(self) -> None:
        while True:
            kicked = True
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=self.settings.resync_seconds)
                await asyncio.sleep(self.settings.debounce_seconds)  # let a burst settle
            except asyncio.TimeoutError:
                kicked = False
            self._kick.clear()
            if not self.primed:
                continue
            try:
                if self.peering is not None and await asyncio.to_thread(self.peering.check):
                    continue  # frozen: another operator is alive
                # The timer only matters when a report went stale: otherwise a pass over
                # every Endpoint would find nothing to do (at 10,000 that is real CPU).
                fresh = frozenset(r.replica for r in self.fresh_reports())
                if not kicked and fresh == self._fresh_at_last_pass and self._compiled is not None:
                    continue
                self._fresh_at_last_pass = fresh
                await self.reconcile()
            except Exception:  # keep the loop alive; the next pass retries everything
                log.exception("reconcile failed; retrying")
                await asyncio.sleep(1.0)
                self.kick()

    def compile(self) -> Compiled:
        return compile_registry(
            (seen.obj for seen in self.endpoints.values()),
            self.sources.values(),
            self.settings.defaults,
            self.registry,
            self._compile_cache,
        )

    async def reconcile(self) -> None:
        assert self.writer is not None
        if self._dirty_inputs or self._compiled is None:
            self._dirty_inputs = False
            self._compiled = self.compile()
            log.debug("compiled %d endpoints, %d sources: revision %s", len(self.endpoints), len(self.sources),
                      self._compiled.registry.revision)
        compiled = self._compiled
        registry = compiled.registry
        if self.registry is None or registry.revision != self.registry.revision:
            self.shards_written = await asyncio.to_thread(self.writer.write_registry, registry, self.shards_written)
            self.writes["registry"] += 1
            log.info("registry revision %s written: %d routes in %d shard(s)",
                     registry.revision, len(registry.routes), self.shards_written)
            self.registry = registry
        await self._report_sources(compiled)
        # Status writes run beside the loop: a burst of them (thousands after a
        # restart, or many replicas reporting) must not hold up the next registry write.
        self._status_due = True
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.create_task(self._status_writer(), name="status-writer")

    async def _status_writer(self) -> None:
        while self._status_due:
            self._status_due = False
            assert self._compiled is not None
            try:
                await self._update_statuses(self._compiled)
            except Exception:
                log.exception("status update failed; retrying")
                await asyncio.sleep(1.0)
                self._status_due = True

    def fresh_reports(self) -> list[contract.Report]:
        horizon = time.time() - self.settings.report_stale_seconds
        return [r for r in self.reports.values() if r.heartbeat >= horizon]

    async def _update_statuses(self, compiled: Compiled) -> None:
        reports = self.fresh_reports()
        now = now_rfc3339()
        changes = []
        for key, seen in list(self.endpoints.items()):
            verdict = compiled.endpoints.get(key)
            if verdict is None:
                continue
            meta = seen.obj.meta
            agg = status_logic.aggregate(reports, verdict.route, meta.uid, verdict.serving_generation,
                                         bool(seen.obj.spec.get("disabled", False)))
            current = self.status_written.get(meta.uid) or seen.status
            desired = status_logic.desired_status(verdict, agg, meta.generation, current, now)
            if not status_logic.same_status(desired, current):
                changes.append((seen, current, desired))
        # A few writes in flight at once: thousands of first statuses should not queue one by one.
        gate = asyncio.Semaphore(8)

        async def write(seen: _EndpointSeen, current: Optional[dict[str, Any]], desired: dict[str, Any]) -> None:
            assert self.writer is not None
            meta = seen.obj.meta
            async with gate:
                if not await asyncio.to_thread(self.writer.patch_status, meta.namespace, meta.name, desired):
                    return
                self.writes["status"] += 1
                self.status_written[meta.uid] = desired
                ref = involved("Endpoint", "orchestrator.dev/v1alpha1", seen.body_meta)
                for etype, reason, message in status_logic.events_between(current, desired):
                    self.writes["events"] += 1
                    await asyncio.to_thread(self.writer.event, ref, etype, reason, message)

        await asyncio.gather(*(write(*change) for change in changes))
        live = {seen.obj.meta.uid for seen in self.endpoints.values()}
        for uid in list(self.status_written):
            if uid not in live:
                del self.status_written[uid]

    async def _report_sources(self, compiled: Compiled) -> None:
        """A Warning Event on a ConfigMap source for each new problem (once per change)."""
        assert self.writer is not None
        for key, report in compiled.configmaps.items():
            problems = tuple(report.problems)
            if problems == self.source_problems.get(key):
                continue
            self.source_problems[key] = problems
            ref = involved("ConfigMap", "v1", self.source_meta.get(key, {"namespace": key[0], "name": key[1]}))
            for problem in problems:
                suffix = "; its last good entries keep routing" if report.kept_last_good else ""
                self.writes["events"] += 1
                await asyncio.to_thread(self.writer.event, ref, "Warning", "InvalidEntry", f"skipped: {problem}{suffix}")
            if report.loaded and not problems:
                await asyncio.to_thread(self.writer.event, ref, "Normal", "Loaded",
                                        f"{len(report.loaded)} entries routing: {', '.join(report.loaded[:20])}")
        for key in list(self.source_problems):
            if key not in compiled.configmaps:
                del self.source_problems[key]
