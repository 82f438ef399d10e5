"""The route model: one endpoint with every setting resolved.

A `Route` is what the proxy serves. It is built from a config-file entry
(standalone), an `Endpoint` resource or a ConfigMap entry (cluster), with the
global defaults applied, so the proxy never needs to know where it came from.
Its dict form (camelCase, like the CRD) is the compiled-registry contract.
The field defaults below are the built-in defaults, the bottom of the overlay
in core/spec.py (which holds the partial form every source writes, and the bounds).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class HealthCheckSettings:
    enabled: bool = True
    path: str = "/health"
    interval_seconds: float = 30.0
    timeout_seconds: float = 10.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    reset_timeout_seconds: float = 60.0
    half_open_max_calls: int = 3
    fallback: str = "error_response"


@dataclass(frozen=True, slots=True)
class RetrySettings:
    # Extra attempts after a connect failure (the request never reached the backend).
    attempts: int = 0
    # Also retry after a response began (5xx): only for idempotent methods, opt-in.
    on_server_error: bool = False


@dataclass(frozen=True, slots=True)
class Defaults:
    """Global settings that every endpoint inherits unless it overrides them."""

    timeout_seconds: float = 30.0
    health_check: HealthCheckSettings = field(default_factory=HealthCheckSettings)
    circuit_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a route was declared: shown in status, debug output and conflicts."""

    kind: str  # Endpoint | ConfigMap | File | API
    namespace: str = ""
    name: str = ""
    uid: str = ""
    generation: int = 0
    entry: str = ""  # the entry's name inside a ConfigMap or file


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    url: str
    version: str = "v1"
    methods: tuple[str, ...] = ("GET",)
    auth_type: str = "none"
    disabled: bool = False
    timeout_seconds: float = 30.0
    health_check: HealthCheckSettings = field(default_factory=HealthCheckSettings)
    circuit_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)
    source: Source = field(default_factory=lambda: Source(kind="File"))

    def to_dict(self) -> dict[str, Any]:
        """The registry wire form: camelCase keys, like the CRD's spec."""
        return {
            "name": self.name,
            "url": self.url,
            "version": self.version,
            "methods": list(self.methods),
            "authType": self.auth_type,
            "disabled": self.disabled,
            "timeoutSeconds": float(self.timeout_seconds),
            "healthCheck": _camel(self.health_check),
            "circuitBreaker": _camel(self.circuit_breaker),
            "retries": _camel(self.retries),
            "source": _camel(self.source),
        }

    def to_wire(self) -> dict[str, Any]:
        """`to_dict` without what `from_dict` would restore anyway: the keys (and whole
        sections) that hold the built-in default. A route of the registry shrinks about
        threefold, and every registry write is parsed by each proxy, the operator and
        the API server."""
        full = self.to_dict()
        wire: dict[str, Any] = {}
        for key, value in full.items():
            default = _WIRE_DEFAULTS.get(key, _REQUIRED)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if default.get(k, _REQUIRED) != v}
                if not value:
                    continue
            elif value == default:
                continue
            wire[key] = value
        return wire

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Route":
        """The inverse of `to_dict`. A key that is absent takes the field's default
        above (the one place built-in values live), never a fallback written here."""
        fields: dict[str, Any] = {}
        for key, value in data.items():
            if key in _PLAIN:
                fields[_PLAIN[key]] = value
            elif key in _SECTIONS:
                name, kind = _SECTIONS[key]
                snake = _SNAKE[kind]
                fields[name] = kind(**{snake.get(k, k): v for k, v in value.items()})
        if "methods" in fields:
            fields["methods"] = tuple(fields["methods"])
        return cls(**fields)


_PLAIN = {"name": "name", "url": "url", "version": "version", "methods": "methods", "authType": "auth_type",
          "disabled": "disabled", "timeoutSeconds": "timeout_seconds"}
_SECTIONS: dict[str, tuple[str, Any]] = {
    "healthCheck": ("health_check", HealthCheckSettings), "circuitBreaker": ("circuit_breaker", BreakerSettings),
    "retries": ("retries", RetrySettings), "source": ("source", Source)}


def _camel_key(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


# Per section class: (field, wire key, is a number of seconds). The sections hold
# plain values only, so reading the slots is what `asdict` did, at a third of the cost.
_WIRE = {kind: tuple((f, _camel_key(f), f.endswith("_seconds")) for f in kind.__dataclass_fields__)
         for _, kind in _SECTIONS.values()}
_SNAKE = {kind: {camel: f for f, camel, _ in keys} for kind, keys in _WIRE.items()}


_REQUIRED: Any = object()  # stands for a field without a default: never equal to a value


def _wire_defaults() -> dict[str, Any]:
    """The built-in default of each wire key (each section key, for the sections), as `to_dict` writes it."""
    fields = Route.__dataclass_fields__
    out: dict[str, Any] = {}
    for key, name in _PLAIN.items():
        f = fields[name]
        if f.default is not MISSING:
            out[key] = list(f.default) if isinstance(f.default, tuple) else f.default
    out["timeoutSeconds"] = float(out["timeoutSeconds"])
    for key, (_, kind) in _SECTIONS.items():
        section = kind.__dataclass_fields__
        out[key] = {camel: (float(section[f].default) if seconds else section[f].default)
                    for f, camel, seconds in _WIRE[kind] if section[f].default is not MISSING}
    return out


def _camel(section: Any) -> dict[str, Any]:
    # Seconds as float: 30 and 30.0 must hash to the same revision.
    return {camel: float(getattr(section, f)) if seconds else getattr(section, f)
            for f, camel, seconds in _WIRE[type(section)]}


_WIRE_DEFAULTS = _wire_defaults()
