"""The compiled registry: every route the proxy serves, with a content revision.

This is the contract between the operator and the proxies (DESIGN.md,
"Compiled registry"). The revision is a hash of the content, so writing the
same registry twice is a no-op and a proxy can tell whether it is current.
Large registries are split into shards that each fit a ConfigMap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from orchestrator.core.model import Route

FORMAT_VERSION = 1
FORMAT = f"orchestrator.dev/registry/v{FORMAT_VERSION}"
# A ConfigMap holds at most 1 MiB in total; keep room for metadata and keys.
SHARD_BYTES = 900 * 1024


class UnknownFormat(ValueError):
    """The registry was written in a format this release cannot read (a newer
    operator): the proxy keeps serving its last good registry and says why."""


@dataclass(frozen=True)
class Registry:
    routes: Mapping[str, Route]
    revision: str
    # Each route's canonical JSON, by name: computed once, used for the revision
    # and the shards (serialising 10,000 routes twice per change is seconds of CPU).
    documents: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, routes: Iterable[Route], known: Optional[Mapping[int, str]] = None) -> "Registry":
        """`known` maps id(route) to that route's JSON, for routes the caller has
        serialised before (the operator's compile cache)."""
        by_name = {r.name: r for r in sorted(routes, key=lambda r: r.name)}
        documents = {name: (known or {}).get(id(r)) or route_json(r) for name, r in by_name.items()}
        return cls(routes=by_name, revision=_revision(documents.values()), documents=documents)


def route_json(route: Route) -> str:
    return json.dumps(route.to_wire(), sort_keys=True, separators=(",", ":"))


def _revision(documents: Iterable[str]) -> str:
    # The hash of the JSON list of all routes in name order, without building it twice.
    digest = hashlib.sha256(b"[")
    for i, doc in enumerate(documents):
        digest.update(b"," + doc.encode() if i else doc.encode())
    digest.update(b"]")
    return digest.hexdigest()[:16]


def revision_of(routes: Iterable[Route]) -> str:
    return _revision(route_json(r) for r in sorted(routes, key=lambda r: r.name))


def encode_shards(registry: Registry, max_bytes: int = SHARD_BYTES) -> list[str]:
    """Split a registry into JSON documents each at most `max_bytes` long.

    Every shard carries the revision and its index/count, so a reader can tell
    a complete set of one revision from a half-written one.
    """
    items = [registry.documents.get(name) or route_json(r) for name, r in registry.routes.items()]
    groups: list[list[str]] = [[]]
    size = 0
    overhead = 200
    for item in items:
        if groups[-1] and size + len(item) + 1 + overhead > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item) + 1
    count = len(groups)
    return [
        '{"count":%d,"endpoints":[%s],"format":"%s","index":%d,"revision":"%s"}'
        % (count, ",".join(g), FORMAT, i, registry.revision)
        for i, g in enumerate(groups)
    ]


class RouteMemo:
    """The routes an earlier decode built, by name, with the entry each came from: an
    entry that did not change is not built again and keeps its Route object, so the
    proxy's route table can keep that route's runtime as it is. A change touches one
    route; without this, each proxy rebuilt all of them."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[dict[str, Any], Route]] = {}

    def route(self, entry: dict[str, Any]) -> Route:
        known = self._built.get(entry.get("name", ""))
        if known is not None and known[0] == entry:
            return known[1]
        return Route.from_dict(entry)

    def remember(self, entries: list[dict[str, Any]], routes: list[Route]) -> None:
        self._built = {r.name: (e, r) for e, r in zip(entries, routes)}


def decode_shards(documents: Iterable[str], memo: Optional[RouteMemo] = None) -> Registry:
    """Join shards back into a registry; refuse a mixed or incomplete set. `memo`:
    reuse the routes of the last decode whose entries did not change."""
    parsed: list[dict[str, Any]] = [json.loads(d) for d in documents]
    if not parsed:
        raise ValueError("no registry shards")
    revisions = {p.get("revision") for p in parsed}
    if len(revisions) != 1:
        raise ValueError(f"shards from different revisions: {sorted(map(str, revisions))}")
    formats = {p.get("format") for p in parsed}
    if formats != {FORMAT}:
        raise UnknownFormat(f"registry format {', '.join(sorted(map(str, formats)))} is not known to this proxy "
                            f"(it reads {FORMAT}); keeping the last good registry until the proxy is upgraded")
    count = parsed[0]["count"]
    indexes = sorted(p["index"] for p in parsed)
    if indexes != list(range(count)):
        raise ValueError(f"incomplete registry: have shards {indexes} of {count}")
    entries = [e for p in sorted(parsed, key=lambda p: p["index"]) for e in p["endpoints"]]
    routes = [memo.route(e) for e in entries] if memo is not None else [Route.from_dict(e) for e in entries]
    if memo is not None:
        memo.remember(entries, routes)
    return Registry(routes={r.name: r for r in routes}, revision=parsed[0]["revision"])


class RegistryNotReady(Exception):
    """The registry is absent or half-written (shards of different revisions)."""


def shard_count(head: Mapping[str, str]) -> int:
    """How many shards the head (shard 0, the named ConfigMap) says there are."""
    try:
        return max(1, int(head.get("shards", "1")))
    except ValueError:
        raise RegistryNotReady(f"bad shard count {head.get('shards')!r}") from None


def assemble(documents: list[Optional[str]]) -> Registry:
    """The registry from shard documents in index order (None: that shard's ConfigMap is missing)."""
    missing = [i for i, d in enumerate(documents) if d is None]
    if missing:
        raise RegistryNotReady(f"shard {missing[0]} of {len(documents)} is missing")
    try:
        return decode_shards(d or "" for d in documents)
    except UnknownFormat:
        raise  # not a half-written set: re-reading will not help
    except (ValueError, KeyError) as exc:
        raise RegistryNotReady(str(exc)) from None
