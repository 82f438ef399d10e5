"""Compile Endpoints and ConfigMap sources into one registry: a pure function.

    compile_registry(endpoints, configmaps, defaults, previous) -> Compiled

No I/O and no Kubernetes client: the operator feeds it what its watches saw
and writes out what it returns. Rules (DESIGN.md):
- an Endpoint's route name is `spec.routeName`, else `metadata.name`;
- a route name is unique: an Endpoint beats a ConfigMap entry; among equals
  the oldest (creationTimestamp, then namespace/name) wins, the others get
  `RouteConflict` naming the winner;
- invalid input is status data, not an exception: one bad object never
  blocks the others; an Endpoint whose new spec is invalid keeps routing at
  its last accepted version, and a ConfigMap that no longer parses keeps its
  last good entries (both found in `previous`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from orchestrator.core import config_file, model
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
    reason: str  # Accepted | Invalid | RouteConflict
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class _HealthCheckSpec(_Strict):
    enabled: Optional[bool] = None
    path: str = "/health"
    interval_seconds: Optional[float] = Field(None, gt=0, le=86_400)
    timeout_seconds: Optional[float] = Field(None, gt=0, le=3_600)
    healthy_threshold: Optional[int] = Field(None, ge=1, le=100)
    unhealthy_threshold: Optional[int] = Field(None, ge=1, le=100)


class _BreakerSpec(_Strict):
    failure_threshold: Optional[int] = Field(None, ge=1, le=10_000)
    reset_timeout_seconds: Optional[float] = Field(None, gt=0, le=86_400)
    half_open_max_calls: Optional[int] = Field(None, ge=1, le=10_000)
    fallback: Optional[Literal["error_response"]] = None


class _RetrySpec(_Strict):
    attempts: Optional[int] = Field(None, ge=0, le=5)
    on_server_error: Optional[bool] = None


class EndpointSpec(_Strict):
    """`Endpoint.spec` as the CRD defines it, checked again here: objects stored
    under an older, laxer schema must not be able to break the registry."""

    url: str
    route_name: Optional[str] = None
    version: str = "v1"
    methods: list[config_file.Method] = Field(default_factory=lambda: ["GET"], min_length=1)
    auth_type: Literal["none", "bearer", "api_key", "basic"] = "none"
    disabled: bool = False
    timeout_seconds: Optional[float] = Field(None, gt=0, le=3_600)
    retries: _RetrySpec = Field(default_factory=_RetrySpec)
    health_check: _HealthCheckSpec = Field(default_factory=_HealthCheckSpec)
    circuit_breaker: _BreakerSpec = Field(default_factory=_BreakerSpec)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return config_file.validate_backend_url(value)

    @field_validator("route_name")
    @classmethod
    def _route_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not config_file.ROUTE_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not a valid route name (letters, digits, '_', '-', '.')")
        return value


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def route_from_spec(obj: EndpointObject, defaults: model.Defaults) -> model.Route:
    """The effective route of one Endpoint; raises ValueError with a readable message."""
    try:
        spec = EndpointSpec.model_validate(dict(obj.spec))
    except ValidationError as exc:
        raise ValueError("; ".join(config_file.format_validation_error(exc, "spec"))) from None
    name = spec.route_name or obj.meta.name
    timeout = _pick(spec.timeout_seconds, defaults.timeout_seconds)
    health_check, circuit_breaker, retries = _merge(
        spec.health_check, spec.circuit_breaker, spec.retries, defaults,
        # A probe never waits longer than a call to the same backend may.
        probe_timeout=min(defaults.health_check.timeout_seconds, timeout),
    )
    return model.Route(
        name=name,
        url=spec.url,
        version=spec.version,
        methods=tuple(dict.fromkeys(spec.methods)),
        auth_type=spec.auth_type,
        disabled=spec.disabled,
        timeout_seconds=timeout,
        health_check=health_check,
        circuit_breaker=circuit_breaker,
        retries=retries,
        source=model.Source(kind="Endpoint", namespace=obj.meta.namespace, name=obj.meta.name,
                            uid=obj.meta.uid, generation=obj.meta.generation),
    )


def _merge(
    hc: _HealthCheckSpec, cb: _BreakerSpec, rt: _RetrySpec, base: model.Defaults, probe_timeout: float,
) -> tuple[model.HealthCheckSettings, model.BreakerSettings, model.RetrySettings]:
    """Overlay the fields a spec sets on the defaults below it."""
    dhc, dcb, drt = base.health_check, base.circuit_breaker, base.retries
    return (
        model.HealthCheckSettings(
            enabled=_pick(hc.enabled, dhc.enabled),
            path=hc.path,
            interval_seconds=_pick(hc.interval_seconds, dhc.interval_seconds),
            timeout_seconds=_pick(hc.timeout_seconds, probe_timeout),
            healthy_threshold=_pick(hc.healthy_threshold, dhc.healthy_threshold),
            unhealthy_threshold=_pick(hc.unhealthy_threshold, dhc.unhealthy_threshold),
        ),
        model.BreakerSettings(
            failure_threshold=_pick(cb.failure_threshold, dcb.failure_threshold),
            reset_timeout_seconds=_pick(cb.reset_timeout_seconds, dcb.reset_timeout_seconds),
            half_open_max_calls=_pick(cb.half_open_max_calls, dcb.half_open_max_calls),
            fallback=_pick(cb.fallback, dcb.fallback),
        ),
        model.RetrySettings(
            attempts=_pick(rt.attempts, drt.attempts),
            on_server_error=_pick(rt.on_server_error, drt.on_server_error),
        ),
    )


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
    with the same defaults (the operator): an Endpoint whose (uid, generation)
    did not change is neither validated nor serialised again. Results are the
    same with or without it."""

    routes: dict[tuple[str, int, str, str], "model.Route | str"] = field(default_factory=dict)  # str: the error
    documents: dict[int, str] = field(default_factory=dict)  # id(route) -> its registry JSON


def _endpoint_route(ep: EndpointObject, defaults: model.Defaults, cache: Optional[CompileCache],
                    seen: set[tuple[str, int, str, str]]) -> "model.Route | str":
    key = (ep.meta.uid, ep.meta.generation, ep.meta.namespace, ep.meta.name)
    if cache is not None and ep.meta.uid:
        seen.add(key)
        hit = cache.routes.get(key)
        if hit is not None:
            return hit
    try:
        result: model.Route | str = route_from_spec(ep, defaults)
    except ValueError as exc:
        result = str(exc)
    if cache is not None and ep.meta.uid:
        cache.routes[key] = result
    return result


def compile_registry(
    endpoints: Iterable[EndpointObject],
    configmaps: Iterable[ConfigMapObject],
    defaults: model.Defaults,
    previous: Optional[Registry] = None,
    cache: Optional[CompileCache] = None,
) -> Compiled:
    candidates: list[_Candidate] = []
    verdicts: dict[Key, Verdict] = {}
    reports: dict[Key, SourceReport] = {}
    seen: set[tuple[str, int, str, str]] = set()

    for ep in endpoints:
        meta = ep.meta
        route_or_error = _endpoint_route(ep, defaults, cache, seen)
        try:
            if isinstance(route_or_error, str):
                raise ValueError(route_or_error)
            route = route_or_error
            verdict = Verdict(True, "Accepted", "the Endpoint is valid and holds its route",
                              route.name, meta.generation)
        except ValueError as exc:
            kept = _previous_routes(previous, "Endpoint", meta.uid)
            if not kept:
                verdicts[meta.key] = Verdict(False, "Invalid", f"the spec is invalid: {exc}",
                                             str(ep.spec.get("routeName") or meta.name), None)
                continue
            route = kept[0]
            verdict = Verdict(False, "Invalid",
                              f"the spec is invalid: {exc}; generation {route.source.generation} keeps routing",
                              route.name, route.source.generation)
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
            loaded = config_file.parse_config(cm.text, source, defaults=defaults)
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


class DefaultsSpec(_Strict):
    """The release-wide defaults (Helm values `defaults:`), camelCase like the CRD."""

    timeout_seconds: float = Field(30, gt=0, le=3_600)
    health_check: _HealthCheckSpec = Field(default_factory=_HealthCheckSpec)
    circuit_breaker: _BreakerSpec = Field(default_factory=_BreakerSpec)
    retries: _RetrySpec = Field(default_factory=_RetrySpec)


def defaults_from_values(values: Optional[Mapping[str, Any]]) -> model.Defaults:
    """Global defaults from a mapping; unset fields keep the built-in defaults."""
    try:
        spec = DefaultsSpec.model_validate(dict(values or {}))
    except ValidationError as exc:
        raise ValueError("; ".join(config_file.format_validation_error(exc, "defaults"))) from None
    base = model.Defaults()
    health_check, circuit_breaker, retries = _merge(
        spec.health_check, spec.circuit_breaker, spec.retries, base, probe_timeout=base.health_check.timeout_seconds)
    return model.Defaults(timeout_seconds=spec.timeout_seconds, health_check=health_check,
                          circuit_breaker=circuit_breaker, retries=retries)
