"""orchestrator/settings.py: every knob has a flag, an env var and help; precedence; one-line errors."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from orchestrator.cli import build_parser
from orchestrator.logs import JsonFormatter
from orchestrator.settings import (OperatorSettings, ProxySettings, SettingsError, StandaloneSettings, env_of,
                                   flag_of, load)

MODELS = {"standalone": StandaloneSettings, "proxy": ProxySettings, "operator": OperatorSettings}


def parse(monkeypatch: pytest.MonkeyPatch, command: str, argv: list[str], env: dict[str, str]):
    for model in MODELS.values():
        for info in model.model_fields.values():
            monkeypatch.delenv(env_of(info), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load(MODELS[command], build_parser().parse_args([command, *argv]))


@pytest.mark.parametrize("command", MODELS)
def test_every_knob_has_a_flag_an_env_var_and_help(command: str) -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    for name, info in MODELS[command].model_fields.items():
        assert flag_of(name) in text, name
        assert f"env {env_of(info)}" in " ".join(text.split()), name
        assert info.description, name


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse(monkeypatch, "proxy", ["--head-timeout", "3"],
              {"ORCHESTRATOR_HEAD_TIMEOUT": "7", "ORCHESTRATOR_REPORT_INTERVAL": "2.5", "POD_UID": "u-1"})
    assert s.head_timeout == 3.0
    assert s.report_interval == 2.5 and s.pod_uid == "u-1"  # once env-only, read with a bare float()
    assert s.keepalive_timeout == 60.0


def test_env_bool_and_case_insensitive_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse(monkeypatch, "standalone", ["--log-level", "DEBUG"], {"ACCESS_LOG": "yes", "ORCHESTRATOR_LOG_FORMAT": "JSON"})
    assert s.access_log is True and s.log_level == "debug" and s.log_format == "json"


def test_operator_namespaces_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse(monkeypatch, "operator", ["--watch-namespace", "a", "--watch-namespace", "b"], {})
    assert s.watch_namespace == ["a", "b"]
    assert parse(monkeypatch, "operator", [], {"ORCHESTRATOR_WATCH_NAMESPACES": '["x"]'}).watch_namespace == ["x"]


@pytest.mark.parametrize("command, argv, env, expected", [
    ("proxy", [], {"ORCHESTRATOR_REPORT_INTERVAL": "soon"},
     "--report-interval (env ORCHESTRATOR_REPORT_INTERVAL): input should be a valid number"),
    ("operator", [], {"ORCHESTRATOR_REPORT_STALE_SECONDS": "-1"},
     "--report-stale-seconds (env ORCHESTRATOR_REPORT_STALE_SECONDS): input should be greater than 0"),
    ("standalone", ["--port", "0"], {}, "--port (env PORT): input should be greater than or equal to 1, got '0'"),
    ("standalone", [], {"ORCHESTRATOR_LOG_FORMAT": "xml"}, "--log-format (env ORCHESTRATOR_LOG_FORMAT)"),
])
def test_a_bad_value_names_its_knob(monkeypatch: pytest.MonkeyPatch, command, argv, env, expected) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(monkeypatch, command, argv, env)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    if env:
        assert str(caught.value).endswith(f"from {next(iter(env))}")


def test_json_log_lines_carry_the_extra_fields() -> None:
    record = logging.LogRecord("orchestrator.proxy.access_log", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.route, record.status = "svc", 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /x" and line["level"] == "info" and line["logger"] == "orchestrator.proxy.access_log"
    assert line["route"] == "svc" and line["status"] == 200 and line["timestamp"].endswith("Z")
