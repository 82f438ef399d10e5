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


def _server_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on (env HOST; default 0.0.0.0)")
    parser.add_argument("--port", type=_port, default=os.environ.get("PORT", str(default_port)),
                        help=f"port to listen on (env PORT; default {default_port})")
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("LOG_LEVEL"),
                        help="critical|error|warning|info|debug, any case (env LOG_LEVEL; default: the config file's log_level, else info)")
    parser.add_argument("--access-log", action="store_true", default=_env_bool("ACCESS_LOG"),
                        help="log every request (env ACCESS_LOG; off by default: it costs throughput)")


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
    loaded = parse_config(text, Source(kind="File", name=str(path)))
    if not loaded.ok:
        print(f"error: {path} is invalid:", file=sys.stderr)
        for error in loaded.errors:
            print(f"  - {error}", file=sys.stderr)
        return 2
    level = args.log_level or loaded.log_level.lower()
    _setup_logging(level)
    common = _uvicorn_options(args, level)
    if args.reload:
        os.environ[standalone.ENV_CONFIG] = str(path.resolve())
        os.environ[standalone.ENV_LOG_LEVEL] = (args.log_level or "").upper()
        uvicorn.run("orchestrator.proxy.standalone:app_from_env", factory=True, reload=True, **common)
    else:
        uvicorn.run(standalone.build(path, (args.log_level or "").upper() or None), **common)
    return 0


def run_cluster_proxy(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.proxy import cluster

    level = args.log_level or "info"
    _setup_logging(level)
    uvicorn.run(cluster.build(args), **_uvicorn_options(args, level))
    return 0


def _uvicorn_options(args: argparse.Namespace, level: str) -> dict[str, Any]:
    # proxy_headers=False: uvicorn would otherwise trust X-Forwarded-For/-Proto from
    # 127.0.0.1 and replace the peer address with a value the caller chose; the
    # gateway must see the real peer so it can append it to X-Forwarded-For.
    return dict(host=args.host, port=int(args.port), log_level=level, access_log=args.access_log,
                loop="uvloop", http="httptools", lifespan="on", server_header=False, date_header=False,
                proxy_headers=False)


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
