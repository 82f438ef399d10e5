"""What the operator's watches saw: Endpoints, ConfigMap sources, replica reports.

Plain data with `observe_*` methods the kopf handlers call; no I/O, no clock
of its own (the caller passes `now`). Besides the objects it keeps what the
next pass needs to stay small: whether anything worth a compile changed, and
which Endpoints (or routes) need their status looked at again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from orchestrator.core import contract
from orchestrator.core.compile import ConfigMapObject, EndpointObject, Key, ObjectMeta
from orchestrator.operator.status import same_status

log = logging.getLogger(__name__)


def object_meta(body: Mapping[str, Any]) -> ObjectMeta:
    m = body.get("metadata", {})
    return ObjectMeta(namespace=m.get("namespace", ""), name=m.get("name", ""), uid=m.get("uid", ""),
                      generation=int(m.get("generation") or 0), created=m.get("creationTimestamp") or "")


KEPT_META = ("namespace", "name", "uid", "generation", "creationTimestamp")


def slim_meta(body: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a pass and an Event need, not the rest: managedFields,
    annotations (a last-applied-configuration copy of the spec) and labels of
    10,000 objects are most of the operator's memory otherwise."""
    m = body.get("metadata") or {}
    return {k: m[k] for k in KEPT_META if k in m}


@dataclass
class EndpointSeen:
    obj: EndpointObject
    status: Optional[dict[str, Any]]  # as the object shows it
    body_meta: dict[str, Any]  # see slim_meta
    generation_since: float  # monotonic time this generation was first seen


@dataclass
class Inputs:
    namespace: str  # where the reports live
    registry_name: str
    endpoints: dict[Key, EndpointSeen] = field(default_factory=dict)
    sources: dict[Key, ConfigMapObject] = field(default_factory=dict)
    source_meta: dict[Key, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, contract.Report] = field(default_factory=dict)
    report_texts: dict[str, str] = field(default_factory=dict)  # as last read: skip re-parsing a heartbeat
    # Wall time of the last successful re-list of the reports (the proof a pass may
    # rely on before it declares a replica stale).
    reports_verified_at: float = float("-inf")
    # -- what changed since the last pass -------------------------------------
    compile_dirty: bool = True
    dirty_keys: set[Key] = field(default_factory=set)
    dirty_routes: set[str] = field(default_factory=set)

    def observe_endpoint(self, event_type: Optional[str], body: Mapping[str, Any], now: float,
                         ours: Optional[Mapping[str, Any]] = None) -> bool:
        """Record an Endpoint event; True when a pass has something to do. `ours` is the
        status the operator last wrote to this object, if any."""
        meta = object_meta(body)
        if event_type == "DELETED":
            if self.endpoints.pop(meta.key, None) is None:
                return False
            self.compile_dirty = True
            return True
        before = self.endpoints.get(meta.key)
        obj = EndpointObject(meta, dict(body.get("spec") or {}))
        status = dict(body.get("status") or {}) or None
        since = before.generation_since if before is not None and before.obj.meta.generation == meta.generation \
            and before.obj.meta.uid == meta.uid else now
        self.endpoints[meta.key] = EndpointSeen(obj, status, slim_meta(body), since)
        if before is None or before.obj != obj:
            self.compile_dirty = True
            self.dirty_keys.add(meta.key)
            return True
        # Our own status patch coming back changes nothing; anything else on .status
        # (a user's edit, a restore from backup) is compared again by the pass.
        if before.status != status and not (ours is not None and same_status(ours, status)):
            self.dirty_keys.add(meta.key)
            return True
        return False

    def observe_configmap(self, event_type: Optional[str], body: Mapping[str, Any]) -> bool:
        """Record a ConfigMap event (a source, a report, or neither); True when a pass has something to do."""
        meta = object_meta(body)
        labels = body.get("metadata", {}).get("labels") or {}
        gone = event_type == "DELETED"
        wake = False
        if not gone and labels.get(contract.SOURCE_LABEL) == "true":
            text = (body.get("data") or {}).get(contract.SOURCE_KEY)
            source = ConfigMapObject(meta, text)
            if self.sources.get(meta.key) != source:
                self.compile_dirty = wake = True
            self.sources[meta.key] = source
            self.source_meta[meta.key] = slim_meta(body)
        elif meta.key in self.sources:  # deleted, or the label was taken off
            del self.sources[meta.key]
            self.source_meta.pop(meta.key, None)
            self.compile_dirty = wake = True
        if meta.namespace == self.namespace and labels.get(contract.REPORT_LABEL) == self.registry_name:
            wake = self._observe_report(meta.name, None if gone else (body.get("data") or {})) or wake
        return wake

    def _observe_report(self, name: str, data: Optional[Mapping[str, str]]) -> bool:
        before = self.reports.pop(name, None)
        before_text = self.report_texts.pop(name, None)
        if data is not None:
            try:
                self.reports[name] = contract.Report.from_data(data, before, before_text)
                self.report_texts[name] = data[contract.REPORT_KEY]
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable report %s: %s", name, exc)
        after = self.reports.get(name)
        if before is None or after is None:
            # A replica came or went: the pass sees its set of fresh replicas change.
            return before is not after
        if before_text == self.report_texts.get(name):
            return False  # a heartbeat: freshness is the pass's business, on its timer
        for route in set(before.routes) | set(after.routes):
            if before.routes.get(route) != after.routes.get(route):
                self.dirty_routes.add(route)
        return True

    def replace_reports(self, items: Iterable[Mapping[str, Any]], verified_at: float) -> None:
        """A fresh listing of the report ConfigMaps replaces what the watch delivered."""
        listed = {object_meta(item).name: item for item in items}
        for name in list(self.reports):
            if name not in listed:
                self._observe_report(name, None)
        for name, item in listed.items():
            self._observe_report(name, item.get("data") or {})
        self.reports_verified_at = verified_at

    def take_dirty(self) -> tuple[bool, set[Key], set[str]]:
        """What changed since the last call (and forget it)."""
        out = (self.compile_dirty, self.dirty_keys, self.dirty_routes)
        self.compile_dirty, self.dirty_keys, self.dirty_routes = False, set(), set()
        return out
