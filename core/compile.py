"""Compile Endpoints and ConfigMap sources into one registry: a pure function.

    compile_registry(endpoints, configmaps, defaults, previous) -> Compiled

No I/O and no Kubernetes client: the operator feeds it what its watches saw
and writes out what it returns. Rules (DESIGN.md):
- an Endpoint's route name is `spec.routeName`, else `metadata.name`;
- a route name is unique: an Endpoint beats a ConfigMap entry; among equals
  the oldest (creationTimestamp, then namespace/name) wins, the others get
  `RouteConflict` naming the winner;
- a backend at a link-local address (cloud metadata) is refused, reason
  `LinkLocalBackend`, unless the caller allows it (the SSRF guard);
- invalid input is status data, not an exception: one bad object never
  blocks the others; an Endpoint whose new spec is invalid keeps routing at
  its last accepted version, and a ConfigMap that no longer parses keeps its
  last good entries (both found in `previous`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from pydantic import ValidationError

from orchestrator.core import config_file, model, spec
from orchestrator.core.registry import Registry

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class ObjectMeta:
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    created: str = ""  # RFC 3339 creationTimestamp: sorts chronologically as text

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class EndpointObject:
    meta: ObjectMeta
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class ConfigMapObject:
    meta: ObjectMeta
    text: Optional[str]  # the `config.yaml` key, None when absent


@dataclass(frozen=True)
class Verdict:
    """What the compiler decided about one Endpoint (feeds its Accepted condition)."""

    accepted: bool
    reason: str  # Accepted | Invalid | LinkLocalBackend | RouteConflict
    message: str
    route: str
    # The generation whose settings are routing now (None: not routing at all).
    serving_generation: Optional[int]


@dataclass
class SourceReport:
    """What the compiler decided about one ConfigMap source (feeds its Events)."""

    loaded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kept_last_good: bool = False


@dataclass
class Compiled:
    registry: Registry
    endpoints: dict[Key, Verdict]
    configmaps: dict[Key, SourceReport]


class Refused(ValueError):
    """An Endpoint the compiler will not route; `reason` goes to its Accepted condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def route_from_spec(obj: EndpointObject, defaults: model.Defaults, allow_link_local: bool = False) -> model.Route:
    """The effective route of one Endpoint; raises Refused with a readable message."""
    try:
        endpoint = spec.EndpointSpec.model_validate(dict(obj.spec))
    except ValidationError as exc:
        problems = "; ".join(spec.format_validation_error(exc, "spec"))
        raise Refused("Invalid", f"the spec is invalid: {problems}") from None
    try:
        spec.check_link_local(endpoint.url, allow_link_local)
    except ValueError as exc:
        raise Refused("LinkLocalBackend", f"the backend is refused: spec.{exc}") from None
    source = model.Source(kind="Endpoint", namespace=obj.meta.namespace, name=obj.meta.name,
                          uid=obj.meta.uid, generation=obj.meta.generation)
    name = obj.meta.name if endpoint.route_name is None else endpoint.route_name
    return spec.resolve(endpoint, defaults, name, source)


@dataclass(frozen=True)
class _Candidate:
    route: model.Route
    rank: tuple[int, str, str, str, str]  # Endpoint before ConfigMap, then oldest, then ns/name/entry
    label: str  # how a conflict message names it
    endpoint: Optional[Key] = None
    configmap: Optional[Key] = None
    verdict_if_wins: Optional[Verdict] = None


def _label(kind: str, meta: ObjectMeta, entry: str = "") -> str:
    base = f"{kind} {meta.namespace}/{meta.name}"
    return f"{base} entry {entry!r}" if entry else base


def _previous_routes(previous: Optional[Registry], kind: str, uid: str) -> list[model.Route]:
    if previous is None or not uid:
        return []
    return [r for r in previous.routes.values() if r.source.kind == kind and r.source.uid == uid]


@dataclass
class CompileCache:
    """What an earlier compile learnt, for a caller that compiles again and again
    with the same defaults and link-local setting (the operator): an Endpoint
    whose (uid, generation) did not change is neither validated nor serialised
    again. Results are the same with or without it."""

    routes: dict[tuple[str, int, str, str], "model.Route | Refused"] = field(default_factory=dict)
    documents: dict[int, str] = field(default_factory=dict)  # id(route) -> its registry JSON


def _endpoint_route(ep: EndpointObject, defaults: model.Defaults, allow_link_local: bool,
                    cache: Optional[CompileCache], seen: set[tuple[str, int, str, str]]) -> "model.Route | Refused":
    key = (ep.meta.uid, ep.meta.generation, ep.meta.namespace, ep.meta.name)
    if cache is not None and ep.meta.uid:
        seen.add(key)
        hit = cache.routes.get(key)
        if hit is not None:
            return hit
    try:
        result: model.Route | Refused = route_from_spec(ep, defaults, allow_link_local)
    except Refused as exc:
        result = exc
    if cache is not None and ep.meta.uid:
        cache.routes[key] = result
    return result


def compile_registry(
    endpoints: Iterable[EndpointObject],
    configmaps: Iterable[ConfigMapObject],
    defaults: model.Defaults,
    previous: Optional[Registry] = None,
    cache: Optional[CompileCache] = None,
    allow_link_local: bool = False,
) -> Compiled:
    """`allow_link_local`: route backends at link-local addresses (refused by default: the SSRF guard)."""
    candidates: list[_Candidate] = []
    verdicts: dict[Key, Verdict] = {}
    reports: dict[Key, SourceReport] = {}
    seen: set[tuple[str, int, str, str]] = set()

    for ep in endpoints:
        meta = ep.meta
        route = _endpoint_route(ep, defaults, allow_link_local, cache, seen)
        if isinstance(route, Refused):
            refused = route
            kept = _previous_routes(previous, "Endpoint", meta.uid)
            if not kept:
                verdicts[meta.key] = Verdict(False, refused.reason, str(refused),
                                             str(ep.spec.get("routeName") or meta.name), None)
                continue
            route = kept[0]
            verdict = Verdict(False, refused.reason, f"{refused}; generation {route.source.generation} keeps routing",
                              route.name, route.source.generation)
        else:
            verdict = Verdict(True, "Accepted", "the Endpoint is valid and holds its route",
                              route.name, meta.generation)
        candidates.append(_Candidate(route, (0, meta.created, meta.namespace, meta.name, ""),
                                     _label("Endpoint", meta), endpoint=meta.key, verdict_if_wins=verdict))

    for cm in configmaps:
        meta = cm.meta
        report = reports[meta.key] = SourceReport()
        source = model.Source(kind="ConfigMap", namespace=meta.namespace, name=meta.name,
                              uid=meta.uid, generation=meta.generation)
        if cm.text is None:
            loaded = config_file.LoadedConfig(errors=["the ConfigMap has no 'config.yaml' key"], parsed=False)
        else:
            loaded = config_file.parse_config(cm.text, source, defaults=defaults, allow_link_local=allow_link_local)
        routes = loaded.routes
        if not loaded.parsed:
            routes = _previous_routes(previous, "ConfigMap", meta.uid)
            report.kept_last_good = bool(routes)
        report.problems.extend(loaded.errors)
        for route in routes:
            entry = route.source.entry or route.name
            candidates.append(_Candidate(route, (1, meta.created, meta.namespace, meta.name, entry),
                                         _label("ConfigMap", meta, entry), configmap=meta.key))

    winners: dict[str, _Candidate] = {}
    for cand in sorted(candidates, key=lambda c: c.rank):
        holder = winners.get(cand.route.name)
        if holder is None:
            winners[cand.route.name] = cand
            if cand.endpoint is not None and cand.verdict_if_wins is not None:
                verdicts[cand.endpoint] = cand.verdict_if_wins
            if cand.configmap is not None:
                reports[cand.configmap].loaded.append(cand.route.name)
            continue
        message = f"route {cand.route.name!r} is already held by {holder.label}, which is older or takes precedence"
        if cand.endpoint is not None:
            verdicts[cand.endpoint] = Verdict(False, "RouteConflict", message, cand.route.name, None)
        if cand.configmap is not None:
            reports[cand.configmap].problems.append(f"entry {cand.route.source.entry!r}: {message}")

    registry = Registry.build((c.route for c in winners.values()), known=cache.documents if cache else None)
    if cache is not None:
        for key in set(cache.routes) - seen:  # Endpoints deleted or changed since
            del cache.routes[key]
        live = {id(r): r for r in cache.routes.values() if not isinstance(r, str)}
        cache.documents = {i: doc for name, doc in registry.documents.items()
                           if (i := id(registry.routes[name])) in live}
    return Compiled(registry=registry, endpoints=verdicts, configmaps=reports)


def defaults_from_values(values: Optional[Mapping[str, Any]]) -> model.Defaults:
    """The release's defaults (Helm values `defaults:`) over the built-in ones."""
    try:
        layer = spec.Settings.model_validate(dict(values or {}))
    except ValidationError as exc:
        raise ValueError("; ".join(spec.format_validation_error(exc, "defaults"))) from None
    return spec.overlay(model.Defaults(), layer)
