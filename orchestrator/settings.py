"""Every knob of every process, in one place: its flag, environment variable, default and bounds.

One settings object per process (`StandaloneSettings`, `ProxySettings`,
`OperatorSettings`), parsed once at the edge (`orchestrator/cli.py`) and passed
down. Precedence: command-line flag, then environment variable, then default
(pydantic-settings: init arguments win over the environment). The flags and
`--help` are generated from the fields, so a knob cannot exist without a flag,
an environment variable and a line of help.

This module imports nothing of the proxy or the operator: both sides use it.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# Any case on input ("DEBUG" is what the seed's config files say).
LogLevel = Annotated[Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)]
LogFormat = Annotated[Literal["text", "json"], BeforeValidator(_lower)]


def knob(default: Any, env: str, help: str, **bounds: Any) -> Any:
    """A field read from `env` (exactly that name: some are the seed's HOST, PORT, ...)."""
    return Field(default, validation_alias=AliasChoices(env), description=help, **bounds)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=True,
                                      str_strip_whitespace=True, frozen=True)


class LogSettings(_Settings):
    log_format: LogFormat = knob("text", "ORCHESTRATOR_LOG_FORMAT",
                                 "text, or json: one JSON object per line, for a cluster's log pipeline")


class ServeSettings(LogSettings):
    """The listener, admin API, connection limits and upstream knobs both proxy modes share."""

    host: str = knob("0.0.0.0", "HOST", "address to listen on")
    port: int = knob(8000, "PORT", "port to listen on", ge=1, le=65535)
    log_level: Optional[LogLevel] = knob(None, "LOG_LEVEL",
                                         "critical|error|warning|info|debug (standalone default: the config "
                                         "file's log_level, else info)")
    access_log: bool = knob(False, "ACCESS_LOG",
                            "log every proxied request: route, method, status, upstream time, bytes, request id")
    # admin API (README: Security)
    admin_host: str = knob("127.0.0.1", "ORCHESTRATOR_ADMIN_HOST", "address of the separate admin listener")
    admin_port: Optional[int] = knob(None, "ORCHESTRATOR_ADMIN_PORT",
                                     "serve the admin API and /metrics on this port instead of the traffic port "
                                     "(default none: one port)", ge=1, le=65535)
    admin_token: Optional[str] = knob(None, "ORCHESTRATOR_ADMIN_TOKEN",
                                      "bearer token that opens the admin API to non-loopback callers "
                                      "(default none: loopback only)")
    admin_require_token: bool = knob(False, "ORCHESTRATOR_ADMIN_REQUIRE_TOKEN",
                                     "loopback callers need the admin token too, e.g. on a host shared with others")
    admin_max_body: int = knob(1024 * 1024, "ORCHESTRATOR_ADMIN_MAX_BODY",
                               "largest admin request body in bytes (413 beyond)", ge=1)
    allow_link_local: bool = knob(False, "ORCHESTRATOR_ALLOW_LINK_LOCAL",
                                  "allow backends at link-local addresses, e.g. cloud metadata "
                                  "(refused by default: the SSRF guard)")
    # client connections (README: Security)
    max_connections: int = knob(0, "ORCHESTRATOR_MAX_CONNECTIONS",
                                "concurrent client connections; beyond it idle ones are closed, then new ones "
                                "get 503 (0: from the fd limit)", ge=0)
    head_timeout: float = knob(10.0, "ORCHESTRATOR_HEAD_TIMEOUT",
                               "seconds for a request's line and headers to arrive (408 after)", ge=0.1)
    keepalive_timeout: float = knob(60.0, "ORCHESTRATOR_KEEPALIVE_TIMEOUT",
                                    "seconds an idle kept-alive client connection stays open", ge=1)
    max_request_line: int = knob(8 * 1024, "ORCHESTRATOR_MAX_REQUEST_LINE",
                                 "bytes of the request target (414 beyond)", ge=64)
    max_header_bytes: int = knob(64 * 1024, "ORCHESTRATOR_MAX_HEADER_BYTES",
                                 "bytes of all request headers (431 beyond)", ge=1024)
    max_headers: int = knob(100, "ORCHESTRATOR_MAX_HEADERS", "number of request headers (431 beyond)", ge=8)
    send_timeout: float = knob(60.0, "ORCHESTRATOR_SEND_TIMEOUT",
                               "seconds a caller may leave the proxy's writes blocked (it stopped reading) "
                               "before the connection is dropped", ge=0.1)
    drain_seconds: float = knob(5.0, "ORCHESTRATOR_DRAIN_SECONDS",
                                "after SIGTERM keep serving this long with /readyz 503 and Connection: close", ge=0)
    grace_seconds: float = knob(20.0, "ORCHESTRATOR_GRACE_SECONDS",
                                "then wait at most this long for in-flight requests", ge=1)
    # upstream side
    upstream_max_idle: int = knob(64, "ORCHESTRATOR_UPSTREAM_MAX_IDLE",
                                  "idle upstream connections kept per backend origin", ge=0)
    upstream_idle_timeout: float = knob(30.0, "ORCHESTRATOR_UPSTREAM_IDLE_TIMEOUT",
                                        "seconds an idle upstream connection is kept", gt=0)
    health_check_concurrency: int = knob(32, "ORCHESTRATOR_HEALTH_CHECK_CONCURRENCY",
                                         "active health probes in flight at once", ge=1)


class StandaloneSettings(ServeSettings):
    config: str = knob("config/config.yaml", "CONFIG_PATH",
                       "config file (created with a sample if missing)")
    reload: bool = knob(False, "RELOAD", "restart when the code changes (development: one port, no drain)")


class _KubeSettings(LogSettings):
    kubeconfig: Optional[str] = knob(None, "KUBECONFIG", "kubeconfig file (default: the in-cluster identity)")
    namespace: str = knob("orchestrator-system", "ORCHESTRATOR_NAMESPACE",
                          "namespace of the registry ConfigMaps and the reports")
    registry: str = knob("orchestrator-registry", "ORCHESTRATOR_REGISTRY", "name (prefix) of the registry ConfigMaps")


class ProxySettings(ServeSettings, _KubeSettings):
    pod_name: Optional[str] = knob(None, "POD_NAME", "this replica's Pod name (owner of its report)")
    pod_uid: Optional[str] = knob(None, "POD_UID", "this replica's Pod uid (the report's ownerReference)")
    replica_id: Optional[str] = knob(None, "REPLICA_ID", "report name suffix when there is no Pod")
    report_interval: float = knob(10.0, "ORCHESTRATOR_REPORT_INTERVAL",
                                  "seconds between report heartbeats (the operator counts a replica out "
                                  "after --report-stale-seconds without one)", gt=0)
    report_min_interval: float = knob(1.0, "ORCHESTRATOR_REPORT_MIN_INTERVAL",
                                      "changes within this many seconds share one report write", ge=0)
    watch_timeout: int = knob(60, "ORCHESTRATOR_WATCH_TIMEOUT",
                              "seconds the API server keeps one registry watch open before a fresh one", ge=1)


class OperatorSettings(_KubeSettings):
    log_level: LogLevel = knob("info", "LOG_LEVEL", "critical|error|warning|info|debug")
    watch_namespace: Optional[list[str]] = Field(
        None, validation_alias=AliasChoices("ORCHESTRATOR_WATCH_NAMESPACES"),
        description="namespace to watch for Endpoints and ConfigMaps (repeat the flag; env: a JSON list; "
                    "default: all)")
    defaults: Optional[str] = knob(None, "ORCHESTRATOR_DEFAULTS",
                                   "YAML/JSON file with global defaults (circuit_breaker, health_check, timeout)")
    owner_configmap: Optional[str] = knob(None, "ORCHESTRATOR_OWNER_CONFIGMAP",
                                          "a ConfigMap in --namespace that owns the registry ConfigMaps, so they "
                                          "go with it (the chart passes its defaults ConfigMap)")
    health_port: int = knob(8080, "HEALTH_PORT", "port of /healthz (liveness) and /metrics", ge=1, le=65535)
    liveness_seconds: float = knob(60.0, "LIVENESS_SECONDS",
                                   "/healthz fails once the API server has been unreachable and the watches "
                                   "silent this long", gt=0)
    allow_link_local: bool = knob(False, "ORCHESTRATOR_ALLOW_LINK_LOCAL",
                                  "accept Endpoints whose backend is link-local, e.g. cloud metadata "
                                  "(refused by default: the SSRF guard)")
    report_stale_seconds: float = knob(30.0, "ORCHESTRATOR_REPORT_STALE_SECONDS",
                                       "a replica whose report heartbeat is older than this no longer counts", gt=0)
    # 8 left 10,000 new Endpoints Ready a minute after they routed (patch latency under
    # load x queue depth); 32 async patches kept Ready within seconds (docs/performance-cluster.md).
    status_workers: int = knob(32, "ORCHESTRATOR_STATUS_WORKERS", "Endpoint status patches in flight at once",
                               ge=1, le=200)
    debounce_seconds: float = knob(0.05, "ORCHESTRATOR_DEBOUNCE_SECONDS",
                                   "a burst of changes within this window is handled in one pass", ge=0)
    hold_seconds: float = knob(1.0, "ORCHESTRATOR_HOLD_SECONDS",
                               "a new Endpoint's first status waits up to this long for Programmed", ge=0)


S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """A bad value: one line per knob, naming its flag and environment variable."""


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_of(info: FieldInfo) -> str:
    alias = info.validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def add_flags(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """One flag per field; absent flags stay absent (argparse.SUPPRESS) so the environment can fill them."""
    for name, info in model.model_fields.items():
        default = "none" if info.default is None else info.default
        if isinstance(default, bool):
            default = str(default).lower()
        help_text = f"{info.description} (env {env_of(info)}; default {default})".replace("%", "%%")
        if info.annotation is bool:
            parser.add_argument(flag_of(name), dest=name, action="store_const", const=True,
                                default=argparse.SUPPRESS, help=help_text)
        elif name == "watch_namespace":
            parser.add_argument(flag_of(name), dest=name, action="append", default=argparse.SUPPRESS,
                                metavar="NAMESPACE", help=help_text)
        else:
            parser.add_argument(flag_of(name), dest=name, default=argparse.SUPPRESS,
                                metavar=name.upper(), help=help_text)


def load(model: type[S], args: argparse.Namespace) -> S:
    """The settings from the parsed flags and the environment; SettingsError names each bad knob."""
    given = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    try:
        return model(**given)
    except ValidationError as exc:
        raise SettingsError(describe(model, exc, given)) from None


def describe(model: type[BaseSettings], exc: ValidationError, given: dict[str, Any]) -> str:
    by_env = {env_of(info): name for name, info in model.model_fields.items()}
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else ""
        name = by_env.get(key, key)
        info = model.model_fields.get(name)
        where = f"{flag_of(name)} (env {env_of(info)})" if info else key
        source = "" if name in given else f" from {env_of(info)}" if info else ""
        lines.append(f"{where}: {error['msg'].lower()}, got {error.get('input')!r}{source}")
    return "; ".join(lines)

