"""Command line: `orchestrator [standalone]`, `orchestrator proxy`, `orchestrator operator`.

`python main.py` is `orchestrator standalone`. Flags win over environment
variables (CONFIG_PATH, HOST, PORT, LOG_LEVEL, RELOAD), which win over defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)} (any case), not {value!r}")
    return level


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, not {port}")
    return port


def _number(kind: type, minimum: float) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return number
    return parse


def _server_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The listener flags both proxy modes share."""
    from orchestrator.proxy.http_server import Limits
    from orchestrator.proxy.server import Lifecycle

    env = os.environ.get
    parser.add_argument("--host", default=env("HOST", "0.0.0.0"), help="address to listen on (env HOST; default 0.0.0.0)")
    parser.add_argument("--port", type=_port, default=env("PORT", str(default_port)),
                        help=f"port to listen on (env PORT; default {default_port})")
    parser.add_argument("--log-level", type=_log_level, default=env("LOG_LEVEL"),
                        help="critical|error|warning|info|debug, any case (env LOG_LEVEL; default: the config file's log_level, else info)")
    parser.add_argument("--access-log", action="store_true", default=_env_bool("ACCESS_LOG"),
                        help="log every request (env ACCESS_LOG; off by default: it costs throughput)")
    admin = parser.add_argument_group("admin API (README: Security)")
    admin.add_argument("--admin-host", default=env("ORCHESTRATOR_ADMIN_HOST", "127.0.0.1"),
                       help="address of the separate admin listener (env ORCHESTRATOR_ADMIN_HOST)")
    admin.add_argument("--admin-port", type=_port, default=env("ORCHESTRATOR_ADMIN_PORT"),
                       help="serve the admin API and /metrics on this port instead of the traffic port "
                            "(env ORCHESTRATOR_ADMIN_PORT; default none: one port)")
    admin.add_argument("--admin-token", default=env("ORCHESTRATOR_ADMIN_TOKEN"),
                       help="bearer token that opens the admin API to non-loopback callers "
                            "(env ORCHESTRATOR_ADMIN_TOKEN; default none: loopback only)")
    admin.add_argument("--admin-require-token", action="store_true", default=_env_bool("ORCHESTRATOR_ADMIN_REQUIRE_TOKEN"),
                       help="loopback callers need the admin token too, e.g. on a host shared with other users "
                            "(env ORCHESTRATOR_ADMIN_REQUIRE_TOKEN)")
    admin.add_argument("--admin-max-body", type=_number(int, 1), default=env("ORCHESTRATOR_ADMIN_MAX_BODY", "1048576"),
                       help="largest admin request body in bytes, 413 beyond (default 1 MiB)")
    admin.add_argument("--allow-link-local", action="store_true", default=_env_bool("ORCHESTRATOR_ALLOW_LINK_LOCAL"),
                       help="allow backends at link-local addresses, e.g. cloud metadata (env "
                            "ORCHESTRATOR_ALLOW_LINK_LOCAL; refused by default: the SSRF guard)")
    d, life = Limits(), Lifecycle()
    limits = parser.add_argument_group("client connection limits (README: Security)")
    for flag, key, kind, minimum, default, what in (
        ("--max-connections", "MAX_CONNECTIONS", int, 0, d.max_connections,
         "concurrent client connections; beyond it idle ones are closed, then new ones get 503 (0: from the fd limit)"),
        ("--head-timeout", "HEAD_TIMEOUT", float, 0.1, d.head_timeout,
         "seconds for a request's line and headers to arrive (408 after)"),
        ("--keepalive-timeout", "KEEPALIVE_TIMEOUT", float, 1, d.keepalive_timeout,
         "seconds an idle kept-alive client connection stays open"),
        ("--max-request-line", "MAX_REQUEST_LINE", int, 64, d.max_request_line, "bytes of the request target (414 beyond)"),
        ("--max-header-bytes", "MAX_HEADER_BYTES", int, 1024, d.max_header_bytes, "bytes of all request headers (431 beyond)"),
        ("--max-headers", "MAX_HEADERS", int, 8, d.max_headers, "number of request headers (431 beyond)"),
        ("--drain-seconds", "DRAIN_SECONDS", float, 0, life.drain_seconds,
         "after SIGTERM keep serving this long with /readyz 503 and Connection: close"),
        ("--grace-seconds", "GRACE_SECONDS", float, 1, life.grace_seconds,
         "then wait at most this long for in-flight requests"),
    ):
        limits.add_argument(flag, type=_number(kind, minimum), default=env(f"ORCHESTRATOR_{key}", str(default)),
                            help=f"{what} (env ORCHESTRATOR_{key}; default {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Orchestrator API gateway. Without a command, runs the standalone proxy from config/config.yaml.",
    )
    sub = parser.add_subparsers(dest="command")

    standalone = sub.add_parser(
        "standalone", help="run the proxy from a config file (the default)",
        description="Run the proxy from a config file (what `python main.py` does). "
                    "Other commands: `proxy` (cluster mode), `operator`; see `python main.py COMMAND --help`.")
    _standalone_flags(standalone)

    proxy = sub.add_parser("proxy", help="run the proxy in cluster mode, serving the operator's compiled registry")
    _server_flags(proxy, 8000)
    proxy.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig file (default: in-cluster config)")
    proxy.add_argument("--namespace", default=os.environ.get("ORCHESTRATOR_NAMESPACE", "orchestrator-system"),
                       help="namespace of the registry ConfigMaps")
    proxy.add_argument("--registry", default=os.environ.get("ORCHESTRATOR_REGISTRY", "orchestrator-registry"),
                       help="name (prefix) of the registry ConfigMaps")
    proxy.add_argument("--pod-name", default=os.environ.get("POD_NAME"), help="this replica's Pod name (owner of its report)")
    proxy.add_argument("--replica-id", default=os.environ.get("REPLICA_ID"), help="report name suffix when there is no Pod")

    op = sub.add_parser("operator", help="run the operator (kopf)")
    op.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    op.add_argument("--namespace", default=os.environ.get("ORCHESTRATOR_NAMESPACE", "orchestrator-system"),
                    help="namespace where the registry ConfigMaps and reports live")
    op.add_argument("--watch-namespace", action="append", default=None,
                    help="namespace to watch for Endpoints and ConfigMaps (repeat; default: all)")
    op.add_argument("--registry", default=os.environ.get("ORCHESTRATOR_REGISTRY", "orchestrator-registry"))
    op.add_argument("--defaults", default=os.environ.get("ORCHESTRATOR_DEFAULTS"),
                    help="YAML/JSON file with global defaults (circuit_breaker, health_check, timeout)")
    op.add_argument("--owner-configmap", default=os.environ.get("ORCHESTRATOR_OWNER_CONFIGMAP"),
                    help="a ConfigMap in --namespace that owns the registry ConfigMaps, so they go with it "
                         "(the Helm chart passes its defaults ConfigMap: `helm uninstall` then removes them)")
    op.add_argument("--log-level", type=_log_level, default=os.environ.get("LOG_LEVEL", "info"))
    op.add_argument("--health-port", type=_port, default=os.environ.get("HEALTH_PORT", "8080"),
                    help="port of /healthz (liveness) and /metrics")
    op.add_argument("--allow-link-local", action="store_true", default=_env_bool("ORCHESTRATOR_ALLOW_LINK_LOCAL"),
                    help="accept Endpoints whose backend is link-local, e.g. cloud metadata (env "
                         "ORCHESTRATOR_ALLOW_LINK_LOCAL; refused by default: the SSRF guard)")
    op.add_argument("--liveness-seconds", type=float, default=os.environ.get("LIVENESS_SECONDS", "60"),
                    help="/healthz fails once the API server has been unreachable and the watches silent this long")
    return parser


def _standalone_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("CONFIG_PATH", "config/config.yaml"),
                        help="config file (env CONFIG_PATH; default config/config.yaml, created with a sample if missing)")
    _server_flags(parser, 8000)
    parser.add_argument("--reload", action="store_true", default=_env_bool("RELOAD"),
                        help="restart when the code changes (development; env RELOAD)")


def run_standalone(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.core.config_file import parse_config
    from orchestrator.core.model import Source
    from orchestrator.proxy import standalone
    from orchestrator.proxy.file_source import ensure_config, read_text

    path = Path(args.config)
    try:
        if ensure_config(path):
            print(f"created a sample configuration at {path}", file=sys.stderr)
        text = read_text(path)
    except OSError as exc:  # a directory, no permission, ...: a message, not a traceback
        print(f"error: cannot read the configuration {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    loaded = parse_config(text, Source(kind="File", name=str(path)), allow_link_local=args.allow_link_local)
    if not loaded.ok:
        print(f"error: {path} is invalid:", file=sys.stderr)
        for error in loaded.errors:
            print(f"  - {error}", file=sys.stderr)
        return 2
    level = args.log_level or loaded.log_level.lower()
    _setup_logging(level)
    if args.reload:
        # Development only: uvicorn's reloader needs an import string; one port, no drain.
        from orchestrator.proxy.http_server import Drain, protocol_for
        from orchestrator.proxy.server import uvicorn_config

        os.environ[standalone.ENV_CONFIG] = str(path.resolve())
        os.environ[standalone.ENV_LOG_LEVEL] = (args.log_level or "").upper()
        if args.admin_token:
            os.environ[standalone.ENV_ADMIN_TOKEN] = args.admin_token
        config = uvicorn_config("orchestrator.proxy.standalone:app_from_env", args.host, int(args.port),
                                protocol_for(_limits(args), Drain()), level, args.access_log, _limits(args),
                                _lifecycle(args), factory=True, reload=True, lifespan="on")
        uvicorn.Server(config).run()
        return 0
    state = standalone.build(path, (args.log_level or "").upper() or None)
    return _serve(state, args, level, cluster_mode=False)


def run_cluster_proxy(args: argparse.Namespace) -> int:
    from orchestrator.proxy import cluster

    level = args.log_level or "info"
    _setup_logging(level)
    return _serve(cluster.build(args), args, level, cluster_mode=True)


def _limits(args: argparse.Namespace) -> Any:
    from orchestrator.proxy.http_server import Limits

    return Limits(max_request_line=args.max_request_line, max_header_bytes=args.max_header_bytes,
                  max_headers=args.max_headers, head_timeout=args.head_timeout,
                  keepalive_timeout=args.keepalive_timeout, max_connections=args.max_connections)


def _lifecycle(args: argparse.Namespace) -> Any:
    from orchestrator.proxy.server import Lifecycle

    return Lifecycle(drain_seconds=args.drain_seconds, grace_seconds=args.grace_seconds)


def _serve(state: Any, args: argparse.Namespace, level: str, cluster_mode: bool) -> int:
    """One traffic listener, plus an admin listener when --admin-port is set (always in cluster mode)."""
    from orchestrator.core.admin_access import Policy, Role
    from orchestrator.proxy import server

    state.allow_link_local = args.allow_link_local
    # Cluster mode: the admin port is protected by not being in the Service (and a
    # NetworkPolicy), so Prometheus can scrape /metrics there; standalone keeps the
    # loopback-or-token rule on every listener.
    guarded = not cluster_mode
    token = args.admin_token or None

    def policy(role: Role) -> Policy:
        return Policy(role, guarded, token, trust_loopback=not args.admin_require_token)
    if args.admin_port:
        listeners = [server.Listener(args.host, int(args.port), policy(Role.TRAFFIC)),
                     server.Listener(args.admin_host, int(args.admin_port), policy(Role.ADMIN))]
    else:
        listeners = [server.Listener(args.host, int(args.port), policy(Role.ALL))]
    return server.run(state, listeners, _limits(args), _lifecycle(args), level, args.access_log, args.admin_max_body)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "standalone")
    args = parser.parse_args(argv)
    if args.command in (None, "standalone"):
        return run_standalone(args)
    if args.command == "proxy":
        return run_cluster_proxy(args)
    from orchestrator.operator.main import run_operator
    _setup_logging(args.log_level)
    return run_operator(args)
