"""The route model, defined once: partial settings, their bounds, one overlay.

Every source of a route states only what it sets (None: inherit from below):

    built-in (model.Defaults())  <-  release defaults (Helm `defaults:`)
      <-  file / ConfigMap globals (`circuit_breaker:`, `health_check:`)  <-  the route's own fields

`Settings` is one such layer (camelCase, like the CRD and the chart's values);
`EndpointSpec` is a route's own layer plus the fields only a route has.
`overlay` folds a layer onto resolved `model.Defaults`; `resolve` turns an
`EndpointSpec` into the `model.Route` the proxy serves. The snake_case config
file (core/config_file.py) uses the same constrained types and translates into
these classes. The CRD and values.schema.json repeat the bounds, patterns and
enums for the API server and Helm: tests/unit/test_schema_drift.py fails when
they differ from these classes.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Any, Literal, Optional, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from orchestrator.core import model, urls

# --- constrained types: each bound is written here and nowhere else in Python ---

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
AuthType = Literal["none", "bearer", "api_key", "basic"]
Fallback = Literal["error_response"]

CallSeconds = Annotated[float, Field(gt=0, le=3_600)]
IntervalSeconds = Annotated[float, Field(gt=0, le=86_400)]
Threshold = Annotated[int, Field(ge=1, le=100)]
BreakerCount = Annotated[int, Field(ge=1, le=10_000)]
RetryAttempts = Annotated[int, Field(ge=0, le=5)]


def _matching(pattern: str, message: str) -> AfterValidator:
    """A check against `pattern` with a readable message (pydantic's own pattern error
    quotes the regex); the type also names the pattern for the JSON schema."""
    search = re.compile(pattern).search

    def check(value: str) -> str:
        if not search(value):
            raise ValueError(message)
        return value
    return AfterValidator(check)


ROUTE_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
RouteName = Annotated[str, Field(min_length=1, max_length=253, json_schema_extra={"pattern": ROUTE_NAME_PATTERN}),
                      _matching(ROUTE_NAME_PATTERN, "must be 1-253 letters, digits, '_', '-' or '.', starting and "
                                "ending with a letter or digit (it becomes a URL path segment)")]
HEALTH_PATH_PATTERN = r"^/"
HealthPath = Annotated[str, Field(max_length=1024, json_schema_extra={"pattern": HEALTH_PATH_PATTERN}),
                       _matching(HEALTH_PATH_PATTERN, "must start with '/'")]
Version = Annotated[str, Field(max_length=63)]

# Printable ASCII without space, '#' or '?' after the scheme ('@' not in the host):
# what a request line can carry as-is. Anything else gives a malformed request line
# on every call. The CRD has this pattern, and a CEL rule with URL_CHARS_MESSAGE.
URL_PATTERN = r'^https?://[!"$-.0->A-~]+(/[!"$->@-~]*)?$'
URL_CHARS_MESSAGE = ("must be printable ASCII without spaces or control characters (percent-encode other "
                     "characters, e.g. %20 for a space; use the punycode form of an international host name)")
URL_MAX_LENGTH = 2048
_URL_CHARS = re.compile(r"[!-~]+").fullmatch
_URL = re.compile(URL_PATTERN).fullmatch


def validate_backend_url(value: str) -> str:
    """The URL rule, with a message per way to get it wrong."""
    if not _URL_CHARS(value):
        raise ValueError(URL_CHARS_MESSAGE)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; callers' auth headers are forwarded")
    try:
        parts.port
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {exc}") from None
    if not _URL(value):  # what is left: e.g. an upper-case scheme, which the CRD refuses too
        raise ValueError("must look like http(s)://host[:port][/path] with a lower-case scheme")
    return value


def check_link_local(url: str, allowed: bool) -> None:
    """The SSRF guard at registration and compile time (the upstream client checks the resolved address too)."""
    host = urlsplit(url).hostname or ""
    if not allowed and urls.is_link_local(host):
        raise ValueError(f"url: {host} is link-local: {urls.LINK_LOCAL_HINT}")


def format_validation_error(exc: ValidationError, where: str) -> list[str]:
    """One line per problem: where, the field's path, what is wrong."""
    messages = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
        msg = err["msg"].removeprefix("Value error, ")
        messages.append(f"{where}: {loc}: {msg}")
    return messages


BackendURL = Annotated[str, Field(max_length=URL_MAX_LENGTH, json_schema_extra={"pattern": URL_PATTERN}),
                       AfterValidator(validate_backend_url)]

# Cross-field rules, as CEL in the CRD (path in the schema -> (rule, message)) and in Python below.
PROBE_TIMEOUT_RULE = ("!has(self.timeoutSeconds) || !has(self.intervalSeconds) || "
                      "self.timeoutSeconds <= self.intervalSeconds")
PROBE_TIMEOUT_MESSAGE = "healthCheck.timeoutSeconds must not exceed healthCheck.intervalSeconds"
URL_CHARS_RULE = "self.matches('^[!-~]+$')"
CEL_RULES: dict[str, list[tuple[str, str]]] = {
    "spec.url": [(URL_CHARS_RULE, f"url {URL_CHARS_MESSAGE}")],
    "spec.healthCheck": [(PROBE_TIMEOUT_RULE, PROBE_TIMEOUT_MESSAGE)],
}


# --- the layers ---

class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class HealthCheck(_Layer):
    enabled: Optional[bool] = None
    path: Optional[HealthPath] = None
    interval_seconds: Optional[IntervalSeconds] = None
    timeout_seconds: Optional[CallSeconds] = None
    healthy_threshold: Optional[Threshold] = None
    unhealthy_threshold: Optional[Threshold] = None


class CircuitBreaker(_Layer):
    failure_threshold: Optional[BreakerCount] = None
    reset_timeout_seconds: Optional[IntervalSeconds] = None
    half_open_max_calls: Optional[BreakerCount] = None
    fallback: Optional[Fallback] = None


class Retries(_Layer):
    attempts: Optional[RetryAttempts] = None
    on_server_error: Optional[bool] = None


class Settings(_Layer):
    """One layer of inheritable settings: the chart's `defaults:`, a file's globals, a route's own."""

    timeout_seconds: Optional[CallSeconds] = None
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    retries: Retries = Field(default_factory=Retries)


_ROUTE = model.Route(name="", url="")  # the built-in values of the fields only a route has


class EndpointSpec(Settings):
    """`Endpoint.spec` as the CRD defines it, checked again by the compiler: objects
    stored under an older, laxer schema must not be able to break the registry."""

    url: BackendURL
    route_name: Optional[RouteName] = None
    version: Version = _ROUTE.version
    methods: list[Method] = Field(default_factory=lambda: cast(list[Method], list(_ROUTE.methods)), min_length=1,
                                  max_length=7)
    auth_type: AuthType = cast(AuthType, _ROUTE.auth_type)
    disabled: bool = _ROUTE.disabled

    @field_validator("health_check")
    @classmethod
    def _probe_within_interval(cls, hc: HealthCheck) -> HealthCheck:
        # The CRD's CEL rule on healthCheck: a route's own probe timeout fits its own interval.
        if hc.timeout_seconds is not None and hc.interval_seconds is not None \
                and hc.timeout_seconds > hc.interval_seconds:
            raise ValueError(PROBE_TIMEOUT_MESSAGE)
        return hc


# --- the overlay ---

T = TypeVar("T")


def _pick(value: Optional[T], below: T) -> T:
    return below if value is None else value


def overlay(below: model.Defaults, layer: Settings) -> model.Defaults:
    """`layer`'s fields over `below`: only what the layer sets counts."""
    return model.Defaults(
        timeout_seconds=_pick(layer.timeout_seconds, below.timeout_seconds),
        health_check=_section(layer.health_check, below.health_check),
        circuit_breaker=_section(layer.circuit_breaker, below.circuit_breaker),
        retries=_section(layer.retries, below.retries),
    )


S = TypeVar("S", model.HealthCheckSettings, model.BreakerSettings, model.RetrySettings)


def _section(layer: BaseModel, below: S) -> S:
    """One section: the layer's fields (same names as the resolved dataclass's) over
    `below`, which is shared as it is when the layer sets none (the settings are frozen)."""
    if not layer.model_fields_set:
        return below
    changes = {name: value for name in layer.model_fields_set if (value := getattr(layer, name)) is not None}
    return replace(below, **changes) if changes else below


def resolve(spec: EndpointSpec, defaults: model.Defaults, name: str, source: model.Source) -> model.Route:
    """The effective route: the spec's own fields over `defaults`."""
    timeout = _pick(spec.timeout_seconds, defaults.timeout_seconds)
    # A probe never waits longer than a call to the same backend may, unless the route says so.
    probe_timeout = min(defaults.health_check.timeout_seconds, timeout)
    hc = defaults.health_check
    if hc.timeout_seconds != probe_timeout:
        hc = replace(hc, timeout_seconds=probe_timeout)
    settings = overlay(model.Defaults(timeout, hc, defaults.circuit_breaker, defaults.retries), spec)
    return model.Route(
        name=name,
        url=spec.url,
        version=spec.version,
        methods=tuple(dict.fromkeys(spec.methods)),
        auth_type=spec.auth_type,
        disabled=spec.disabled,
        timeout_seconds=settings.timeout_seconds,
        health_check=settings.health_check,
        circuit_breaker=settings.circuit_breaker,
        retries=settings.retries,
        source=source,
    )
