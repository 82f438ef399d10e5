"""What the admin API asks of a registry source: its type says whether it takes writes."""

from __future__ import annotations

from pathlib import Path

from orchestrator.proxy.file_source import FileSource
from orchestrator.proxy.source import NoSource, RegistrySource, WritableSource
from orchestrator.proxy.state import AppState


def test_the_standalone_file_takes_writes(tmp_path: Path) -> None:
    state = AppState(mode="standalone")
    source = FileSource(state, tmp_path / "config.yaml")
    assert isinstance(source, RegistrySource) and isinstance(source, WritableSource)


def test_a_state_without_a_source_takes_no_writes() -> None:
    state = AppState(mode="cluster")
    assert isinstance(state.source, NoSource)
    assert isinstance(state.source, RegistrySource) and not isinstance(state.source, WritableSource)
