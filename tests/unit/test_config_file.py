"""The classic config.yaml format: every error names the entry and the field."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core import config_file
from orchestrator.core.model import Route, Source

SRC = Source(kind="File", name="config.yaml")


def parse(text: str) -> config_file.LoadedConfig:
    return config_file.parse_config(textwrap.dedent(text), SRC)


def test_sample_config_is_valid():
    loaded = config_file.parse_config(config_file.SAMPLE_CONFIG, SRC)
    assert loaded.ok, loaded.errors
    assert [r.name for r in loaded.routes] == ["httpbin_get", "secure_api"]
    secure = loaded.routes[1]
    assert secure.methods == ("GET", "POST")
    assert secure.auth_type == "bearer"
    assert secure.health_check.path == "/health"
    assert secure.health_check.interval_seconds == 30
    assert secure.circuit_breaker.failure_threshold == 5
    assert secure.source.entry == "secure_api"
    assert loaded.log_level == "INFO"


def test_globals_and_overrides_apply():
    loaded = parse("""
        endpoints:
          - {url: "http://a:1/x", name: a, timeout: 2, retries: 1,
             circuit_breaker: {failure_threshold: 9}, health_check_interval: 4}
          - {url: "http://b:1", name: b}
        circuit_breaker: {failure_threshold: 2, reset_timeout: 7, half_open_max_calls: 1}
        health_check: {interval: 3, timeout: 5, unhealthy_threshold: 4, healthy_threshold: 1, enabled: false}
        log_level: debug
    """)
    assert loaded.ok, loaded.errors
    a, b = loaded.routes
    assert a.circuit_breaker.failure_threshold == 9 and a.circuit_breaker.reset_timeout_seconds == 7
    assert b.circuit_breaker.failure_threshold == 2 and b.circuit_breaker.half_open_max_calls == 1
    assert a.health_check.interval_seconds == 4 and b.health_check.interval_seconds == 3
    assert a.health_check.timeout_seconds == 2  # never longer than the endpoint's own timeout
    assert not b.health_check.enabled and b.health_check.unhealthy_threshold == 4
    assert a.retries.attempts == 1
    assert loaded.log_level == "DEBUG"


@pytest.mark.parametrize("entry, field, words", [
    ('{url: "ftp://h/x", name: bad}', "url", "http"),
    ('{url: "javascript:alert(1)", name: bad}', "url", "http"),
    ('{url: "http://", name: bad}', "url", "host"),
    ('{url: "http://h:99999", name: bad}', "url", "port"),
    ('{url: "http://u:p@h", name: bad}', "url", "credentials"),
    ('{url: "http://h/?q=1", name: bad}', "url", "query"),
    ('{url: "http://h/a b", name: bad}', "url", "printable ASCII without spaces"),
    ('{url: "http://h/caf\\u00e9", name: bad}', "url", "printable ASCII without spaces"),
    ('{url: "http://h", name: bad, retries: 6}', "retries", "less than or equal to 5"),
    ('{url: "http://h", name: bad, version: "' + "v" * 64 + '"}', "version", "at most 63"),
    ('{url: "http://h", name: bad, methods: [GET, FETCH]}', "methods", ""),
    ('{url: "http://h", name: bad, methods: []}', "methods", ""),
    ('{url: "http://h", name: bad, timeout: -1}', "timeout", "greater"),
    ('{url: "http://h", name: bad, auth_type: oauth}', "auth_type", ""),
    ('{url: "http://h", name: bad, health_check_path: health}', "health_check_path", "/"),
    ('{url: "http://h", name: bad, colour: blue}', "colour", "Extra"),
    ('{url: "http://h", name: bad, circuit_breaker: {failure_threshold: 0}}', "circuit_breaker.failure_threshold", ""),
])
def test_entry_errors_name_index_name_and_field(entry, field, words):
    loaded = parse(f"""
        endpoints:
          - {{url: "http://ok:1", name: good}}
          - {entry}
    """)
    assert not loaded.ok
    assert [r.name for r in loaded.routes] == ["good"]  # valid entries are kept beside bad ones
    assert len(loaded.errors) == 1, loaded.errors
    error = loaded.errors[0]
    assert error.startswith(f"endpoints[1] (bad): {field}"), error
    assert words in error


def test_bad_names_are_refused():
    loaded = parse("""
        endpoints:
          - {url: "http://h", name: "a/b"}
          - {url: "http://h", name: ".."}
          - {url: "http://h", name: ""}
          - {url: "http://h"}
    """)
    assert [e.split(":")[0] for e in loaded.errors] == [
        "endpoints[0] (a/b)", "endpoints[1] (..)", "endpoints[2] ()", "endpoints[3]"]
    assert "endpoints[3]: name: Field required" in loaded.errors[3]


def test_duplicates_name_both_entries():
    loaded = parse("""
        endpoints:
          - {url: "http://a", name: svc}
          - {url: "http://b", name: other}
          - {url: "http://c", name: svc}
    """)
    assert loaded.errors == ["endpoints[2] (svc): name: duplicate of endpoints[0]"]
    assert [r.url for r in loaded.routes] == ["http://a", "http://b"]


def test_entry_that_is_not_a_mapping():
    loaded = parse("""
        endpoints:
          - "http://a"
          - {url: "http://b", name: b}
    """)
    assert loaded.parsed and [r.name for r in loaded.routes] == ["b"]
    assert len(loaded.errors) == 1 and loaded.errors[0].startswith("endpoints[0]: (entry):"), loaded.errors


@pytest.mark.parametrize("text, fragment", [
    ("endpoints: [", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("endpoints: {a: 1}\n", "config: endpoints:"),
    ("endpoint:\n  - {url: 'http://a', name: a}\n", "config: endpoint: Extra inputs"),
    ("circuit_breaker: {failure_threshold: 0}\n", "config: circuit_breaker.failure_threshold"),
    ("health_check: {interval: 0}\n", "config: health_check.interval"),
    ("log_level: loud\n", "config: log_level"),
])
def test_file_level_errors(text, fragment):
    loaded = config_file.parse_config(text, SRC)
    assert not loaded.ok and not loaded.parsed
    assert any(fragment in e for e in loaded.errors), loaded.errors


def test_empty_file_is_an_empty_valid_config():
    loaded = config_file.parse_config("", SRC)
    assert loaded.ok and loaded.routes == []


def test_entry_round_trip_through_route():
    loaded = parse("""
        endpoints:
          - {url: "http://a:1/base", name: a, methods: [GET, POST, GET], auth_type: api_key, disabled: true}
    """)
    route = loaded.routes[0]
    assert route.methods == ("GET", "POST")  # de-duplicated
    entry = config_file.entry_from_route(route)
    again = config_file.parse_config(
        config_file.yaml.safe_dump({"endpoints": [entry]}), SRC).routes[0]
    assert isinstance(again, Route) and again == route


@pytest.mark.parametrize("text", ["[" * 100_000, "a: " + "{x: " * 5000 + "1" + "}" * 5000,
                                  "endpoints: " + "[" * 3000 + "]" * 3000])
def test_a_document_nested_thousands_deep_is_an_error_not_a_crash(text):
    loaded = config_file.parse_config(text, Source(kind="File", name="deep.yaml"))
    assert not loaded.ok and "nested too deeply" in loaded.errors[0]
