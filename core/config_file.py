"""The classic `config.yaml` format: parse, validate, turn into routes.

Used by the standalone proxy (the whole file) and by the operator (the
`config.yaml` key of each labelled ConfigMap). Every problem is reported with
the entry and field it concerns; valid entries are kept beside invalid ones so
the caller can choose to refuse the file (standalone reload) or skip the bad
entries (ConfigMap sources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.core import model, urls

ROUTE_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$"
ROUTE_NAME_RE = re.compile(ROUTE_NAME_PATTERN)

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CircuitBreakerConfig(_Strict):
    failure_threshold: int = Field(5, ge=1, le=10_000)
    reset_timeout: float = Field(60, gt=0, le=86_400)
    half_open_max_calls: int = Field(3, ge=1, le=10_000)
    fallback_strategy: Literal["error_response"] = "error_response"


class HealthCheckConfig(_Strict):
    enabled: bool = True
    interval: float = Field(30, gt=0, le=86_400)
    timeout: float = Field(10, gt=0, le=3_600)
    unhealthy_threshold: int = Field(3, ge=1, le=100)
    healthy_threshold: int = Field(2, ge=1, le=100)


class EndpointOverrides(_Strict):
    """Per-endpoint overrides of the global sections (all optional)."""

    failure_threshold: Optional[int] = Field(None, ge=1, le=10_000)
    reset_timeout: Optional[float] = Field(None, gt=0, le=86_400)
    half_open_max_calls: Optional[int] = Field(None, ge=1, le=10_000)


class EndpointConfig(_Strict):
    """One entry of `endpoints:`; also the body of `POST /registry/endpoints`."""

    url: str
    name: str
    version: str = "v1"
    methods: list[Method] = Field(default_factory=lambda: ["GET"], min_length=1)
    auth_type: Literal["none", "bearer", "api_key", "basic"] = "none"
    disabled: bool = False
    health_check_path: str = "/health"
    timeout: Optional[float] = Field(None, gt=0, le=3_600, description="seconds; default 30 (or the release's)")
    retries: int = Field(0, ge=0, le=5)
    retry_on_server_error: bool = False
    circuit_breaker: Optional[EndpointOverrides] = None
    health_check_interval: Optional[float] = Field(None, gt=0, le=86_400)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ROUTE_NAME_RE.match(value):
            raise ValueError(
                "must be 1-253 letters, digits, '_', '-' or '.', starting and ending "
                "with a letter or digit (it becomes a URL path segment)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return validate_backend_url(value)

    @field_validator("health_check_path")
    @classmethod
    def _hc_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # de-duplicate, keep order


class ConfigFile(_Strict):
    # Entries are validated one by one below (list[Any], not list[dict]), so an
    # entry that is not even a mapping is reported and skipped like any other
    # bad entry instead of making the whole file unreadable.
    endpoints: list[Any] = Field(default_factory=list)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# Printable ASCII without space: what a request line can carry as-is. A URL with
# anything else would give a malformed request line on every call.
_URL_CHARS = re.compile(r"[\x21-\x7e]+").fullmatch


def validate_backend_url(value: str) -> str:
    if not _URL_CHARS(value):
        raise ValueError("must be printable ASCII without spaces (percent-encode other characters, "
                         "e.g. %20 for a space; use the punycode form of an international host name)")
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
    return value


@dataclass
class LoadedConfig:
    """The outcome of parsing one file: good routes, and every problem found."""

    routes: list[model.Route] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    defaults: model.Defaults = field(default_factory=model.Defaults)
    log_level: str = "INFO"
    parsed: bool = True  # False when the file as a whole could not be read

    @property
    def ok(self) -> bool:
        return self.parsed and not self.errors


def format_validation_error(exc: ValidationError, where: str) -> list[str]:
    messages = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
        msg = err["msg"].removeprefix("Value error, ")
        messages.append(f"{where}: {loc}: {msg}")
    return messages


def defaults_from(cfg: ConfigFile, base: model.Defaults) -> model.Defaults:
    """The file's global sections over `base`: only the fields the file sets count,
    so a ConfigMap source without them inherits the release's defaults."""
    cb, hc = cfg.circuit_breaker, cfg.health_check
    bcb, bhc = base.circuit_breaker, base.health_check

    def pick(section: BaseModel, field: str, fallback: Any) -> Any:
        return getattr(section, field) if field in section.model_fields_set else fallback

    return model.Defaults(
        timeout_seconds=base.timeout_seconds,
        retries=base.retries,
        health_check=model.HealthCheckSettings(
            enabled=pick(hc, "enabled", bhc.enabled),
            path=bhc.path,
            interval_seconds=pick(hc, "interval", bhc.interval_seconds),
            timeout_seconds=pick(hc, "timeout", bhc.timeout_seconds),
            healthy_threshold=pick(hc, "healthy_threshold", bhc.healthy_threshold),
            unhealthy_threshold=pick(hc, "unhealthy_threshold", bhc.unhealthy_threshold),
        ),
        circuit_breaker=model.BreakerSettings(
            failure_threshold=pick(cb, "failure_threshold", bcb.failure_threshold),
            reset_timeout_seconds=pick(cb, "reset_timeout", bcb.reset_timeout_seconds),
            half_open_max_calls=pick(cb, "half_open_max_calls", bcb.half_open_max_calls),
            fallback=pick(cb, "fallback_strategy", bcb.fallback),
        ),
    )


def route_from_entry(entry: EndpointConfig, defaults: model.Defaults, source: model.Source) -> model.Route:
    timeout = entry.timeout or defaults.timeout_seconds
    hc = defaults.health_check
    hc = model.HealthCheckSettings(
        enabled=hc.enabled,
        path=entry.health_check_path,
        interval_seconds=entry.health_check_interval or hc.interval_seconds,
        timeout_seconds=min(hc.timeout_seconds, timeout),
        healthy_threshold=hc.healthy_threshold,
        unhealthy_threshold=hc.unhealthy_threshold,
    )
    cb = defaults.circuit_breaker
    if entry.circuit_breaker is not None:
        o = entry.circuit_breaker
        cb = model.BreakerSettings(
            failure_threshold=o.failure_threshold or cb.failure_threshold,
            reset_timeout_seconds=o.reset_timeout or cb.reset_timeout_seconds,
            half_open_max_calls=o.half_open_max_calls or cb.half_open_max_calls,
            fallback=cb.fallback,
        )
    return model.Route(
        name=entry.name,
        url=entry.url,
        version=entry.version,
        methods=tuple(entry.methods),
        auth_type=entry.auth_type,
        disabled=entry.disabled,
        timeout_seconds=timeout,
        health_check=hc,
        circuit_breaker=cb,
        retries=model.RetrySettings(attempts=entry.retries, on_server_error=entry.retry_on_server_error),
        source=source,
    )


def entry_from_route(route: model.Route) -> dict[str, Any]:
    """The config-file form of a route (for `/config/endpoints` and the API)."""
    return {
        "url": route.url,
        "name": route.name,
        "version": route.version,
        "methods": list(route.methods),
        "auth_type": route.auth_type,
        "disabled": route.disabled,
        "health_check_path": route.health_check.path,
        "timeout": route.timeout_seconds,
    }


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def check_link_local(url: str, allowed: bool) -> None:
    """The SSRF guard at registration time (the upstream client checks the resolved address too)."""
    host = urlsplit(url).hostname or ""
    if not allowed and urls.is_link_local(host):
        raise ValueError(f"url: {host} is link-local: {urls.LINK_LOCAL_HINT}")


def parse_config(text: str, source: model.Source, defaults: model.Defaults | None = None,
                 allow_link_local: bool = False) -> LoadedConfig:
    """Parse a config document. The file's global sections override `defaults`
    (the operator passes the release's defaults; standalone, the built-in ones)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return LoadedConfig(errors=[f"not valid YAML: {_yaml_problem(exc)}"], parsed=False)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return LoadedConfig(errors=["the top level must be a mapping with an 'endpoints:' list"], parsed=False)
    try:
        cfg = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        return LoadedConfig(errors=format_validation_error(exc, "config"), parsed=False)

    result = LoadedConfig(defaults=defaults_from(cfg, defaults or model.Defaults()), log_level=cfg.log_level)
    seen: dict[str, int] = {}
    for index, item in enumerate(cfg.endpoints):
        label = f"endpoints[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
        try:
            entry = EndpointConfig.model_validate(item)
        except ValidationError as exc:
            result.errors.extend(format_validation_error(exc, label))
            continue
        if entry.name in seen:
            result.errors.append(f"{label}: name: duplicate of endpoints[{seen[entry.name]}]")
            continue
        try:
            check_link_local(entry.url, allow_link_local)
        except ValueError as exc:
            result.errors.append(f"{label}: {exc}")
            continue
        seen[entry.name] = index
        entry_source = model.Source(
            kind=source.kind, namespace=source.namespace, name=source.name,
            uid=source.uid, generation=source.generation, entry=entry.name,
        )
        result.routes.append(route_from_entry(entry, result.defaults, entry_source))
    return result


SAMPLE_CONFIG = """\
# Orchestrator standalone configuration (created on first run; edit freely).
# Reload without a restart: curl -X POST http://localhost:8000/config/reload
endpoints:
  - url: "https://httpbin.org/get"
    name: "httpbin_get"
    version: "v1"
    methods: ["GET"]
    auth_type: "none"  # Documentation only - no auth required
    disabled: false
    health_check_path: "/get"
    timeout: 30

  - url: "https://api.example.com/v1"
    name: "secure_api"
    version: "v1"
    methods: ["GET", "POST"]
    auth_type: "bearer"  # Documentation only - backend expects Bearer token
    disabled: false
    health_check_path: "/health"
    timeout: 30

circuit_breaker:
  failure_threshold: 5
  reset_timeout: 60
  half_open_max_calls: 3
  fallback_strategy: "error_response"

health_check:
  enabled: true
  interval: 30
  timeout: 10
  unhealthy_threshold: 3
  healthy_threshold: 2

log_level: "INFO"
"""
