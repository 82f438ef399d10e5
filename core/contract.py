"""What the operator and the proxies agree on: object names, labels, data keys,
and the per-replica report format. Both sides import this module; neither
imports the other (they only meet through the API server).

Registry (operator -> proxies), for a registry named R:
  ConfigMap R          data: registry.json (shard 0), revision, shards (count)
  ConfigMap R-1 ...    data: registry.json (shard i), for registries over 1 MiB
  The operator writes shards 1..n-1 first and R last, so a proxy that sees R
  change can fetch the rest; every shard carries the revision, so a mixed set
  is detected and re-read.
Reports (proxies -> operator):
  ConfigMap R-report-<replica>, labelled REPORT_LABEL=R, data report.json
  (routes: health, breaker, uid, generation) and heartbeat (its own key).

Versions (issue 11, mixed releases during an upgrade): every shard names its
registry format (core/registry.py FORMAT), and a proxy keeps its last good
registry when it meets one it does not know. A report carries `format`
(absent: 1, the first release); readers take the fields they know and ignore
the rest, so an operator reads the reports of older and newer proxies alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, TypeVar

from orchestrator.core.breaker import State
from orchestrator.core.health import Health

SOURCE_LABEL = "orchestrator.dev/registry-source"  # on user ConfigMaps in the classic format
SOURCE_KEY = "config.yaml"
REGISTRY_LABEL = "orchestrator.dev/registry"  # on the compiled registry ConfigMaps (value: R)
REPORT_LABEL = "orchestrator.dev/report"  # on report ConfigMaps (value: R)
REGISTRY_KEY = "registry.json"
REPORT_KEY = "report.json"
HEARTBEAT_KEY = "heartbeat"
REPORT_FORMAT = 2  # 2 added draining and registryError
MAX_SHARDS = 32  # 32 x 900 KiB: room for far more than 10,000 endpoints; RBAC lists the names


def shard_name(registry: str, index: int) -> str:
    return registry if index == 0 else f"{registry}-{index}"


def shard_names(registry: str) -> list[str]:
    return [shard_name(registry, i) for i in range(MAX_SHARDS)]


def report_name(registry: str, replica: str) -> str:
    return f"{registry}-report-{replica}"[:253]


@dataclass
class RouteReport:
    health: Health
    breaker: State
    uid: str = ""
    generation: int = 0


@dataclass
class Report:
    replica: str
    heartbeat: float  # wall-clock seconds; the operator ignores stale reports
    revision: str
    routes: dict[str, RouteReport] = field(default_factory=dict)
    # SIGTERM arrived: the replica is leaving, the operator counts it out of Programmed.
    draining: bool = False
    # Why the replica does not serve the registry the operator wrote (e.g. an unknown format).
    registry_error: str = ""
    format: int = REPORT_FORMAT

    def to_data(self) -> dict[str, str]:
        """ConfigMap data. The heartbeat has a key of its own, so a reader can tell
        a heartbeat-only write from new content without parsing every route."""
        doc: dict[str, Any] = {
            "format": self.format, "replica": self.replica, "revision": self.revision,
            "routes": {n: [r.health, r.breaker, r.uid, r.generation] for n, r in sorted(self.routes.items())}}
        if self.draining:
            doc["draining"] = True
        if self.registry_error:
            doc["registryError"] = self.registry_error
        body = json.dumps(doc, separators=(",", ":"))
        return {REPORT_KEY: body, HEARTBEAT_KEY: f"{self.heartbeat:.3f}"}

    @classmethod
    def from_data(cls, data: Mapping[str, str], known: Optional["Report"] = None,
                  known_text: Optional[str] = None) -> "Report":
        """Read a report; `known`/`known_text` (the last one read) skip the parse
        when only the heartbeat moved."""
        text, heartbeat = data[REPORT_KEY], float(data[HEARTBEAT_KEY])
        if known is not None and text == known_text:
            return replace(known, heartbeat=heartbeat)
        parsed: dict[str, Any] = json.loads(text)
        # Only the fields this release knows; a newer proxy's extra keys (and extra
        # items in a route's list) are ignored, an older one's missing keys default.
        return cls(
            replica=str(parsed["replica"]),
            heartbeat=heartbeat,
            revision=str(parsed.get("revision", "")),
            # Extra items (a newer proxy's) are ignored, and so is a state this
            # release does not know (read as Unknown health, a Closed breaker): during
            # a rolling upgrade the route still counts as loaded on that replica.
            routes={n: RouteReport(_known(Health, v[0], Health.UNKNOWN), _known(State, v[1], State.CLOSED),
                                   v[2], v[3])
                    for n, v in parsed.get("routes", {}).items()},
            draining=parsed.get("draining") is True,
            registry_error=str(parsed.get("registryError", "")),
            format=int(parsed.get("format", 1)),
        )

    def content(self) -> tuple[str, dict[str, RouteReport], bool, str]:
        """Everything but the heartbeat: a change here is worth a write now."""
        return self.revision, self.routes, self.draining, self.registry_error


_E = TypeVar("_E", Health, State)


def _known(kind: type[_E], value: Any, default: _E) -> _E:
    try:
        return kind(value)
    except ValueError:
        return default
