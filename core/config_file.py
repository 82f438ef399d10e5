"""The classic `config.yaml` format: parse, validate, turn into routes.

Used by the standalone proxy (the whole file) and by the operator (the
`config.yaml` key of each labelled ConfigMap). Every problem is reported with
the entry and field it concerns; valid entries are kept beside invalid ones so
the caller can choose to refuse the file (standalone reload) or skip the bad
entries (ConfigMap sources).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.core import model, spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The file's sections use the route model's constrained types (core/spec.py) under
# their classic snake_case names, and translate into its layers: `to_settings`,
# `to_spec`. Every field is optional except where the format always required it;
# what an entry leaves out is inherited (file globals <- release defaults <- built-ins).

class EndpointOverrides(_Strict):
    """Per-endpoint overrides of the global circuit breaker (all optional)."""

    failure_threshold: Optional[spec.BreakerCount] = None
    reset_timeout: Optional[spec.IntervalSeconds] = None
    half_open_max_calls: Optional[spec.BreakerCount] = None


class CircuitBreakerConfig(EndpointOverrides):
    fallback_strategy: Optional[spec.Fallback] = None


class HealthCheckConfig(_Strict):
    enabled: Optional[bool] = None
    interval: Optional[spec.IntervalSeconds] = None
    timeout: Optional[spec.CallSeconds] = None
    unhealthy_threshold: Optional[spec.Threshold] = None
    healthy_threshold: Optional[spec.Threshold] = None


_SPEC = spec.EndpointSpec.model_fields


class EndpointConfig(_Strict):
    """One entry of `endpoints:`; also the body of `POST /registry/endpoints`."""

    url: spec.BackendURL
    name: spec.RouteName
    version: spec.Version = _SPEC["version"].default
    methods: list[spec.Method] = Field(default_factory=_SPEC["methods"].default_factory, min_length=1, max_length=7)
    auth_type: spec.AuthType = _SPEC["auth_type"].default
    disabled: bool = _SPEC["disabled"].default
    health_check_path: Optional[spec.HealthPath] = None
    timeout: Optional[spec.CallSeconds] = Field(None, description="seconds; default 30 (or the release's)")
    retries: Optional[spec.RetryAttempts] = None
    retry_on_server_error: Optional[bool] = None
    circuit_breaker: Optional[EndpointOverrides] = None
    health_check_interval: Optional[spec.IntervalSeconds] = None

    def to_spec(self) -> spec.EndpointSpec:
        """The same entry in the route model (validated already, by the same types)."""
        cb = EndpointOverrides() if self.circuit_breaker is None else self.circuit_breaker
        return spec.EndpointSpec.model_construct(
            url=self.url, route_name=self.name, version=self.version, methods=self.methods,
            auth_type=self.auth_type, disabled=self.disabled, timeout_seconds=self.timeout,
            health_check=spec.HealthCheck.model_construct(
                path=self.health_check_path, interval_seconds=self.health_check_interval),
            circuit_breaker=spec.CircuitBreaker.model_construct(
                failure_threshold=cb.failure_threshold, reset_timeout_seconds=cb.reset_timeout,
                half_open_max_calls=cb.half_open_max_calls),
            retries=spec.Retries.model_construct(attempts=self.retries, on_server_error=self.retry_on_server_error),
        )


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

    def to_settings(self) -> spec.Settings:
        """The file's global sections as one layer of the route model."""
        cb, hc = self.circuit_breaker, self.health_check
        return spec.Settings.model_construct(
            health_check=spec.HealthCheck.model_construct(
                enabled=hc.enabled, interval_seconds=hc.interval, timeout_seconds=hc.timeout,
                healthy_threshold=hc.healthy_threshold, unhealthy_threshold=hc.unhealthy_threshold),
            circuit_breaker=spec.CircuitBreaker.model_construct(
                failure_threshold=cb.failure_threshold, reset_timeout_seconds=cb.reset_timeout,
                half_open_max_calls=cb.half_open_max_calls, fallback=cb.fallback_strategy),
        )


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


def defaults_from(cfg: ConfigFile, base: model.Defaults) -> model.Defaults:
    """The file's global sections over `base` (a ConfigMap source without them
    inherits the release's defaults)."""
    return spec.overlay(base, cfg.to_settings())


def route_from_entry(entry: EndpointConfig, defaults: model.Defaults, source: model.Source) -> model.Route:
    return spec.resolve(entry.to_spec(), defaults, entry.name, source)


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


TOO_DEEP = "not a usable configuration: it is nested too deeply (a configuration needs a few levels)"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def parse_config(text: str, source: model.Source, defaults: model.Defaults | None = None,
                 allow_link_local: bool = False) -> LoadedConfig:
    """Parse a config document. The file's global sections override `defaults`
    (the operator passes the release's defaults; standalone, the built-in ones)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return LoadedConfig(errors=[f"not valid YAML: {_yaml_problem(exc)}"], parsed=False)
    except RecursionError:  # "[[[[…" thousands deep: the parser recurses per level
        return LoadedConfig(errors=[TOO_DEEP], parsed=False)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return LoadedConfig(errors=["the top level must be a mapping with an 'endpoints:' list"], parsed=False)
    try:
        cfg = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        return LoadedConfig(errors=spec.format_validation_error(exc, "config"), parsed=False)
    except RecursionError:
        return LoadedConfig(errors=[TOO_DEEP], parsed=False)

    below = model.Defaults() if defaults is None else defaults
    result = LoadedConfig(defaults=defaults_from(cfg, below), log_level=cfg.log_level)
    seen: dict[str, int] = {}
    for index, item in enumerate(cfg.endpoints):
        label = f"endpoints[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label += f" ({item['name']})"
        try:
            entry = EndpointConfig.model_validate(item)
        except ValidationError as exc:
            result.errors.extend(spec.format_validation_error(exc, label))
            continue
        if entry.name in seen:
            result.errors.append(f"{label}: name: duplicate of endpoints[{seen[entry.name]}]")
            continue
        try:
            spec.check_link_local(entry.url, allow_link_local)
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
