"""`orchestrator operator` flags that feed the compiler."""

from __future__ import annotations

import pytest

from orchestrator.cli import build_parser
from orchestrator.settings import OperatorSettings, load


def allow_link_local(argv: list[str]) -> bool:
    return load(OperatorSettings, build_parser().parse_args(["operator", *argv])).allow_link_local


def test_link_local_backends_are_refused_unless_the_flag_or_env_allows_them(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ORCHESTRATOR_ALLOW_LINK_LOCAL", raising=False)
    assert allow_link_local([]) is False
    assert allow_link_local(["--allow-link-local"]) is True
    monkeypatch.setenv("ORCHESTRATOR_ALLOW_LINK_LOCAL", "true")
    assert allow_link_local([]) is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--help"])
    assert "ORCHESTRATOR_ALLOW_LINK_LOCAL" in capsys.readouterr().out
