"""Standalone mode: the proxy serving `config/config.yaml`, no Kubernetes."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.core.admin_access import Policy, Role
from orchestrator.proxy.app import Gateway
from orchestrator.proxy.file_source import FileSource
from orchestrator.proxy.state import AppState
from orchestrator.settings import ServeSettings

# uvicorn --reload runs the app in a child process: the settings reach it through these.
ENV_CONFIG = "ORCHESTRATOR_CONFIG_PATH"
ENV_SETTINGS = "ORCHESTRATOR_RELOAD_SETTINGS"


def build(config_path: Path, settings: ServeSettings) -> AppState:
    state = AppState(mode="standalone", allow_link_local=settings.allow_link_local,
                     health_check_concurrency=settings.health_check_concurrency)
    level = settings.log_level.upper() if settings.log_level else None
    state.source = FileSource(state, config_path, log_level=level)
    return state


def app_from_env() -> Gateway:
    """Factory for `uvicorn --reload` (development), which needs an import string, not an object."""
    settings = ServeSettings.model_validate_json(os.environ[ENV_SETTINGS])
    state = build(Path(os.environ[ENV_CONFIG]), settings)
    return Gateway(state, Policy(Role.ALL, token=settings.admin_token), admin_max_body=settings.admin_max_body,
                   settings=settings)
