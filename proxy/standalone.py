"""Standalone mode: the proxy serving `config/config.yaml`, no Kubernetes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from orchestrator.core.admin_access import Policy, Role
from orchestrator.proxy.app import Gateway
from orchestrator.proxy.file_source import FileSource
from orchestrator.proxy.state import AppState

ENV_CONFIG = "ORCHESTRATOR_CONFIG_PATH"
ENV_LOG_LEVEL = "ORCHESTRATOR_LOG_LEVEL"


ENV_ADMIN_TOKEN = "ORCHESTRATOR_ADMIN_TOKEN"


def build(config_path: Path, log_level: Optional[str] = None) -> AppState:
    state = AppState(mode="standalone")
    state.source = FileSource(state, config_path, log_level=log_level)
    return state


def app_from_env() -> Gateway:
    """Factory for `uvicorn --reload` (development), which needs an import string, not an object."""
    state = build(Path(os.environ[ENV_CONFIG]), os.environ.get(ENV_LOG_LEVEL) or None)
    return Gateway(state, Policy(Role.ALL, token=os.environ.get(ENV_ADMIN_TOKEN) or None))
