"""Command line: `orchestrator [standalone]`, `orchestrator proxy`, `orchestrator operator`.

`python main.py` is `orchestrator standalone`. Flags win over environment
variables (CONFIG_PATH, HOST, PORT, LOG_LEVEL, RELOAD), which win over defaults.

Every flag comes from `orchestrator/settings.py` (one settings object per
process); a bad value is one line naming the knob and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from orchestrator.logs import setup_logging
from orchestrator.settings import (OperatorSettings, ProxySettings, SettingsError, StandaloneSettings, add_flags,
                                   load)

if TYPE_CHECKING:
    from orchestrator.proxy.state import AppState


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
    add_flags(standalone, StandaloneSettings)
    proxy = sub.add_parser("proxy", help="run the proxy in cluster mode, serving the operator's compiled registry")
    add_flags(proxy, ProxySettings)
    op = sub.add_parser("operator", help="run the operator (kopf)")
    add_flags(op, OperatorSettings)
    return parser


def run_standalone(settings: StandaloneSettings) -> int:
    from orchestrator.core.config_file import parse_config
    from orchestrator.core.model import Source
    from orchestrator.proxy import standalone
    from orchestrator.proxy.file_source import ensure_config, read_text

    path = Path(settings.config)
    try:
        if ensure_config(path):
            print(f"created a sample configuration at {path}", file=sys.stderr)
        text = read_text(path)
    except OSError as exc:  # a directory, no permission, ...: a message, not a traceback
        print(f"error: cannot read the configuration {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    loaded = parse_config(text, Source(kind="File", name=str(path)), allow_link_local=settings.allow_link_local)
    if not loaded.ok:
        print(f"error: {path} is invalid:", file=sys.stderr)
        for error in loaded.errors:
            print(f"  - {error}", file=sys.stderr)
        return 2
    level = settings.log_level or loaded.log_level.lower()
    setup_logging(level, settings.log_format)
    if settings.reload:
        return _run_reloading(settings, path, level)
    state = standalone.build(path, settings)
    return _serve(state, settings, level, cluster_mode=False)


def _run_reloading(settings: StandaloneSettings, path: Path, level: str) -> int:
    """Development only: uvicorn's reloader needs an import string (the settings go through the
    environment to the child); one port, no drain."""
    import uvicorn

    from orchestrator.proxy import standalone
    from orchestrator.proxy.http_server import Drain, protocol_for
    from orchestrator.proxy.server import uvicorn_config

    os.environ[standalone.ENV_CONFIG] = str(path.resolve())
    os.environ[standalone.ENV_SETTINGS] = settings.model_dump_json()
    config = uvicorn_config("orchestrator.proxy.standalone:app_from_env", settings.host, settings.port,
                            protocol_for(settings, Drain()), level, settings, factory=True, reload=True,
                            lifespan="on")
    uvicorn.Server(config).run()
    return 0


def run_cluster_proxy(settings: ProxySettings) -> int:
    from orchestrator.proxy import cluster

    level = settings.log_level or "info"
    setup_logging(level, settings.log_format)
    return _serve(cluster.build(settings), settings, level, cluster_mode=True)


def _serve(state: "AppState", settings: Union[StandaloneSettings, ProxySettings], level: str,
           cluster_mode: bool) -> int:
    """One traffic listener, plus an admin listener when --admin-port is set."""
    from orchestrator.core.admin_access import listener_policies
    from orchestrator.proxy import server

    policies = listener_policies(cluster_mode, settings.admin_port is not None, settings.admin_token,
                                 trust_loopback=not settings.admin_require_token)
    listeners = [server.Listener(settings.host, settings.port, policies[0])]
    if settings.admin_port is not None:
        listeners.append(server.Listener(settings.admin_host, settings.admin_port, policies[1]))
    return server.run(state, listeners, settings, level)


def run_operator(settings: OperatorSettings) -> int:
    from orchestrator.operator.main import run_operator as run

    setup_logging(settings.log_level, settings.log_format)
    return run(settings)


# Each command: the settings it reads, and what runs them (one table, one branch).
COMMANDS: dict[str, tuple[type, Callable[[Any], int]]] = {
    "standalone": (StandaloneSettings, run_standalone),
    "proxy": (ProxySettings, run_cluster_proxy),
    "operator": (OperatorSettings, run_operator),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        argv.insert(0, "standalone")
    args = parser.parse_args(argv)
    command = args.command or "standalone"
    model, runner = COMMANDS[command]
    try:
        settings: Any = load(model, args)
    except SettingsError as exc:  # one line naming the knob, argparse's exit code
        parser.exit(2, f"orchestrator {command}: error: {exc}\n")
    return runner(settings)
