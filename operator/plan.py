"""The operator's one pass, pure: what the watches saw + what was written + the
time -> a plan (the registry to write, status patches, Events).

    plan = Pass(defaults, FreshnessRule(30)).run(inputs, changes, written, contact, now)

No I/O and no clock of its own, so every rule here (status diffing, which
replicas count, holding a new Endpoint's first status until it is
programmed, a restart that finds the world up to date) is tested on fake time
(tests/unit/test_operator_pass.py). The reconciler carries plans out and
records in `Written` what it committed to.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Optional

from orchestrator.core.compile import CompileCache, Compiled, Key, Verdict, compile_registry
from orchestrator.core.contract import Report
from orchestrator.core.model import Defaults
from orchestrator.core.registry import Registry
from orchestrator.operator import status as status_logic
from orchestrator.operator.freshness import Contact, FreshnessRule
from orchestrator.operator.inputs import Inputs

Event = status_logic.Event


@dataclass(frozen=True)
class Now:
    """One reading of the clock: monotonic for intervals, wall for timestamps and heartbeats."""

    monotonic: float
    wall: float

    @property
    def rfc3339(self) -> str:
        return datetime.datetime.fromtimestamp(self.wall, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Changes:
    """What changed since the last pass (from `Inputs.take_dirty`)."""

    compile: bool = False
    keys: set[Key] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)


@dataclass
class Written:
    """What the operator has written, or committed to write (a queued status patch
    counts: the queue retries until it lands or the Endpoint is gone)."""

    registry: Optional[Registry] = None
    shards: int = 0
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> status
    source_problems: dict[Key, tuple[str, ...]] = field(default_factory=dict)
    fresh: Optional[frozenset[str]] = None  # replicas concluded alive by the last pass
    compiled: Optional[Compiled] = None
    held: dict[Key, float] = field(default_factory=dict)  # status held back until (monotonic)

    def record(self, plan: "Plan", live_uids: set[str]) -> None:
        """The plan has been carried out (its status patches handed to the queue)."""
        if plan.registry is not None:
            self.registry = plan.registry
        self.compiled = plan.compiled
        self.source_problems = plan.source_problems
        self.fresh = plan.fresh
        self.held = plan.held
        for patch in plan.statuses:
            self.statuses[patch.uid] = patch.desired
        if len(self.statuses) > len(live_uids):
            self.statuses = {uid: st for uid, st in self.statuses.items() if uid in live_uids}


def involved(kind: str, api_version: str, meta: dict[str, Any]) -> dict[str, str]:
    return {"kind": kind, "apiVersion": api_version, "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""), "uid": meta.get("uid", "")}


@dataclass(frozen=True)
class StatusPatch:
    key: Key
    uid: str
    involved: dict[str, str]
    current: Optional[dict[str, Any]]  # what the object shows (or what was last committed)
    desired: dict[str, Any]
    events: tuple[Event, ...]

    def superseded_by(self, newer: "StatusPatch") -> "StatusPatch":
        """`newer` replaces this still unwritten patch: the Events are those from what
        the object really shows to the newest status."""
        events = tuple(status_logic.events_between(self.current, newer.desired))
        return StatusPatch(newer.key, newer.uid, newer.involved, self.current, newer.desired, events)


@dataclass(frozen=True)
class SourceEvent:
    involved: dict[str, str]
    type: str
    reason: str
    message: str


@dataclass
class Plan:
    compiled: Compiled
    registry: Optional[Registry]  # to write: its revision differs from the written one
    statuses: list[StatusPatch]
    source_events: list[SourceEvent]
    source_problems: dict[Key, tuple[str, ...]]
    fresh: frozenset[str]
    held: dict[Key, float]
    verify_reports: bool  # a replica looks stale: re-list the reports, then pass again
    wake_at: Optional[float]  # monotonic: pass again then (a held status, a replica turning stale)
    evaluated: int  # Endpoints whose status was computed


@dataclass
class Pass:
    defaults: Defaults
    freshness: FreshnessRule
    # A new Endpoint (or generation) usually is programmed within a few hundred ms;
    # holding its status that long makes Accepted+Programmed+Ready one write, not two.
    hold_seconds: float = 1.0
    allow_link_local: bool = False  # route link-local backends (the SSRF guard's opt-out)
    cache: CompileCache = field(default_factory=CompileCache)

    def run(self, inputs: Inputs, changes: Changes, written: Written, contact: Contact, now: Now) -> Plan:
        keys = set(changes.keys)
        everything = written.compiled is None
        if changes.compile or written.compiled is None:
            compiled = compile_registry((seen.obj for seen in inputs.endpoints.values()), inputs.sources.values(),
                                        self.defaults, written.registry, self.cache, self.allow_link_local)
            if written.compiled is not None:
                keys |= _verdicts_moved(written.compiled.endpoints, compiled.endpoints)
        else:
            compiled = written.compiled
        registry = compiled.registry
        to_write = registry if written.registry is None or written.registry.revision != registry.revision else None

        names = list(inputs.reports)
        judged = self.freshness.judge((inputs.reports[n] for n in names), names, now.wall, contact,
                                      written.fresh, inputs.reports_verified_at)
        everything = everything or judged.fresh != written.fresh
        fresh_reports = [inputs.reports[n] for n in sorted(judged.fresh)]

        if everything:
            keys = set(inputs.endpoints)
        else:
            keys |= written.held.keys()
            if changes.routes:
                keys |= {k for k, v in compiled.endpoints.items() if v.route in changes.routes}
        patches, held = self._statuses(inputs, written, compiled, fresh_reports, keys, now)

        events, problems = _source_events(inputs, written, compiled)
        wake = [*held.values()]
        if judged.next_check is not None:
            wake.append(now.monotonic + max(0.0, judged.next_check - now.wall))
        return Plan(compiled, to_write, patches, events, problems, judged.fresh, held, judged.verify,
                    min(wake) if wake else None, len(keys))

    def _statuses(self, inputs: Inputs, written: Written, compiled: Compiled, reports: list[Report],
                  keys: set[Key], now: Now) -> tuple[list[StatusPatch], dict[Key, float]]:
        patches: list[StatusPatch] = []
        held: dict[Key, float] = {k: t for k, t in written.held.items() if k not in keys and k in inputs.endpoints}
        for key in sorted(keys):
            seen = inputs.endpoints.get(key)
            verdict = compiled.endpoints.get(key)
            if seen is None or verdict is None:
                continue
            meta = seen.obj.meta
            agg = status_logic.aggregate(reports, verdict.route, meta.uid, verdict.serving_generation,
                                         bool(seen.obj.spec.get("disabled", False)))
            current = written.statuses.get(meta.uid) or seen.status
            desired = status_logic.desired_status(verdict, agg, meta.generation, current, now.rfc3339)
            if status_logic.same_status(desired, current):
                continue
            until = seen.generation_since + self.hold_seconds
            if _pending_news(desired, current, meta.generation) and now.monotonic < until:
                held[key] = until
                continue
            patches.append(StatusPatch(key, meta.uid, involved("Endpoint", "orchestrator.dev/v1alpha1", seen.body_meta),
                                       current, desired, tuple(status_logic.events_between(current, desired))))
        return patches, held


def _verdicts_moved(before: dict[Key, Verdict], after: dict[Key, Verdict]) -> set[Key]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _pending_news(desired: dict[str, Any], current: Optional[dict[str, Any]], generation: int) -> bool:
    """A status that would only say "not loaded yet" about a generation the object's
    status does not show yet: worth holding back for a moment."""
    programmed = status_logic.condition(desired, "Programmed") or {}
    if programmed.get("reason") != "Pending":
        return False
    return current is None or current.get("observedGeneration") != generation


def _source_events(inputs: Inputs, written: Written,
                   compiled: Compiled) -> tuple[list[SourceEvent], dict[Key, tuple[str, ...]]]:
    """A Warning Event on a ConfigMap source for each problem when its set of problems
    changes; a Normal one when it is clean again. The first pass after a start only
    learns the problems (they were reported by whoever saw them appear)."""
    events: list[SourceEvent] = []
    problems: dict[Key, tuple[str, ...]] = {}
    for key, report in compiled.configmaps.items():
        now_problems = tuple(report.problems)
        problems[key] = now_problems
        if written.compiled is None or now_problems == written.source_problems.get(key):
            continue
        ref = involved("ConfigMap", "v1", inputs.source_meta.get(key, {"namespace": key[0], "name": key[1]}))
        suffix = "; its last good entries keep routing" if report.kept_last_good else ""
        events += [SourceEvent(ref, "Warning", "InvalidEntry", f"skipped: {p}{suffix}") for p in now_problems]
        if report.loaded and not now_problems:
            events.append(SourceEvent(ref, "Normal", "Loaded",
                                      f"{len(report.loaded)} entries routing: {', '.join(report.loaded[:20])}"))
    return events, problems
