"""The route model (core/spec.py) is the one definition; the CRD, the chart's
values.schema.json and values.yaml, and the snake_case config file repeat parts
of it. These tests fail, naming the field, as soon as a copy differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core import config_file, model, spec
from orchestrator.core.compile import defaults_from_values

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "endpoints.orchestrator.dev.yaml"
CHART_CRD = ROOT / "charts" / "orchestrator" / "crds" / "endpoints.orchestrator.dev.yaml"
VALUES_SCHEMA = ROOT / "charts" / "orchestrator" / "values.schema.json"
VALUES = ROOT / "charts" / "orchestrator" / "values.yaml"

# What a schema says about a value's range and shape (descriptions and Kubernetes list hints aside).
_KEYS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
         "pattern", "enum", "minItems", "maxItems")
Flat = dict[str, dict[str, Any]]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:  # pydantic's Optional[X]: X or null; null means "inherit", which a schema says by omission
        kinds = [_resolve(n, defs) for n in node["anyOf"] if n != {"type": "null"}]
        assert len(kinds) == 1, node
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **kinds[0]}
    return node


def _bounds(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out = {k: node[k] for k in _KEYS if k in node}
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(flag) is True:  # OpenAPI 3.0 (the CRD) spells it as a flag on minimum/maximum
            out[flag] = out.pop(bound)
        elif out.get(flag) is False:
            del out[flag]
    if "const" in node:
        out["enum"] = [node["const"]]
    if "items" in node:
        out["items"] = _bounds(_resolve(node["items"], defs), defs)
    return out


def flatten(node: dict[str, Any], defs: dict[str, Any] | None = None, prefix: str = "") -> Flat:
    """`field.path -> bounds` for every property below an object schema."""
    defs = defs if defs is not None else node.get("$defs", {})
    flat: Flat = {}
    for name, prop in node.get("properties", {}).items():
        prop = _resolve(prop, defs)
        path = f"{prefix}{name}"
        flat[path] = _bounds(prop, defs)
        if "properties" in prop:
            flat[path]["required"] = sorted(prop.get("required", []))
            flat.update(flatten(prop, defs, f"{path}."))
    return flat


def _crd_spec() -> dict[str, Any]:
    doc = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    (version,) = doc["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _model_spec() -> dict[str, Any]:
    return spec.EndpointSpec.model_json_schema(by_alias=True)


CRD_FLAT, MODEL_FLAT = flatten(_crd_spec()), flatten(_model_spec())
VALUES_FLAT = flatten(json.loads(VALUES_SCHEMA.read_text(encoding="utf-8"))["properties"]["defaults"])
SETTINGS_FLAT = flatten(spec.Settings.model_json_schema(by_alias=True))


def test_the_chart_ships_the_crd_unchanged() -> None:
    assert CHART_CRD.read_bytes() == CRD.read_bytes(), \
        "charts/orchestrator/crds differs from crds/: run `make chart-crds`"


def test_the_crd_and_the_model_have_the_same_fields() -> None:
    assert sorted(CRD_FLAT) == sorted(MODEL_FLAT)
    assert sorted(_crd_spec().get("required", [])) == sorted(_model_spec().get("required", []))


@pytest.mark.parametrize("field", sorted(MODEL_FLAT))
def test_crd_bounds_patterns_and_enums_equal_the_model(field: str) -> None:
    assert CRD_FLAT.get(field) == MODEL_FLAT[field], f"spec.{field}: the CRD says {CRD_FLAT.get(field)}, " \
                                                     f"core/spec.py says {MODEL_FLAT[field]}"


def test_crd_defaults_are_the_model_defaults() -> None:
    """Only fields no layer can override have a schema default: a default in the CRD
    for an inheritable setting would hide the release's default."""
    crd = _crd_spec()["properties"]
    fields = spec.EndpointSpec.model_fields
    by_alias = {info.alias or name: info for name, info in fields.items()}
    crd_defaults = {name: prop["default"] for name, prop in crd.items() if "default" in prop}
    model_defaults = {alias: info.get_default(call_default_factory=True) for alias, info in by_alias.items()
                      if not info.is_required() and alias not in ("healthCheck", "circuitBreaker", "retries")
                      and info.get_default(call_default_factory=True) is not None}
    assert crd_defaults == model_defaults
    for section in ("healthCheck", "circuitBreaker", "retries"):
        assert not [k for k, v in crd[section]["properties"].items() if "default" in v], f"spec.{section}"


def test_crd_cel_rules_are_the_models() -> None:
    found: dict[str, list[tuple[str, str]]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            found.setdefault(path, []).append((rule["rule"], rule["message"]))
        for name, prop in node.get("properties", {}).items():
            walk(prop, f"{path}.{name}")
    walk(_crd_spec(), "spec")
    assert found == spec.CEL_RULES


def test_the_model_enforces_the_cel_rules() -> None:
    with pytest.raises(ValueError, match=spec.PROBE_TIMEOUT_MESSAGE):
        spec.EndpointSpec.model_validate({"url": "http://a.svc",
                                          "healthCheck": {"timeoutSeconds": 5, "intervalSeconds": 2}})
    equal = {"timeoutSeconds": 2, "intervalSeconds": 2}  # allowed: the rule is <=
    spec.EndpointSpec.model_validate({"url": "http://a.svc", "healthCheck": equal})
    for url in ("http://a.svc/a b", "http://a.svc/caf\u00e9", "http://a.svc/\x7f", "http://a.svc/\t"):
        with pytest.raises(ValueError, match=r"must be printable ASCII without spaces or control characters"):
            spec.EndpointSpec.model_validate({"url": url})


@pytest.mark.parametrize("url, ok", [
    ("http://a.svc", True), ("https://a.svc:8443/base/path", True), ("http://[fe80::1%25eth0]:80/x", True),
    ("http://a.svc/a%20b", True), ("HTTP://a.svc", False), ("http://a b", False), ("http://a.svc/?q", False),
    ("http://a.svc/#f", False), ("http://u@a.svc", False), ("http://a.svc/\u00e9", False), ("ftp://a.svc", False),
])
def test_the_url_pattern_and_the_python_rule_agree(url: str, ok: bool) -> None:
    """What the API server's pattern accepts is what the compiler accepts (ports aside: Python is stricter)."""
    import re
    assert bool(re.fullmatch(spec.URL_PATTERN, url)) == ok
    try:
        spec.validate_backend_url(url)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == ok


@pytest.mark.parametrize("field", sorted(SETTINGS_FLAT))
def test_values_schema_defaults_equal_the_model(field: str) -> None:
    assert VALUES_FLAT.get(field) == SETTINGS_FLAT[field], (
        f"values.schema.json defaults.{field}: {VALUES_FLAT.get(field)}, core/spec.py Settings: {SETTINGS_FLAT[field]}")


def test_values_schema_defaults_have_the_same_fields() -> None:
    assert sorted(VALUES_FLAT) == sorted(SETTINGS_FLAT)


def _leaves(d: dict[str, Any], prefix: str = "") -> set[str]:
    return {p for k, v in d.items() for p in (_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k})}


def test_the_charts_shipped_defaults_are_the_built_in_defaults() -> None:
    """Standalone and cluster mode start from the same values, and values.yaml shows every one."""
    shipped = yaml.safe_load(VALUES.read_text(encoding="utf-8"))["defaults"]
    assert defaults_from_values(shipped) == model.Defaults()
    assert _leaves(shipped) == {p for p, b in SETTINGS_FLAT.items() if b.get("type") != "object"}


# The classic config file's names for the same fields (entry fields, then the file's global sections).
ENTRY_FIELDS = {
    "url": "url", "name": "routeName", "version": "version", "methods": "methods", "auth_type": "authType",
    "disabled": "disabled", "health_check_path": "healthCheck.path", "timeout": "timeoutSeconds",
    "retries": "retries.attempts", "retry_on_server_error": "retries.onServerError",
    "health_check_interval": "healthCheck.intervalSeconds", "circuit_breaker": "circuitBreaker",
    "circuit_breaker.failure_threshold": "circuitBreaker.failureThreshold",
    "circuit_breaker.reset_timeout": "circuitBreaker.resetTimeoutSeconds",
    "circuit_breaker.half_open_max_calls": "circuitBreaker.halfOpenMaxCalls",
}
GLOBAL_FIELDS = {
    "circuit_breaker": "circuitBreaker",
    "circuit_breaker.failure_threshold": "circuitBreaker.failureThreshold",
    "circuit_breaker.reset_timeout": "circuitBreaker.resetTimeoutSeconds",
    "circuit_breaker.half_open_max_calls": "circuitBreaker.halfOpenMaxCalls",
    "circuit_breaker.fallback_strategy": "circuitBreaker.fallback",
    "health_check": "healthCheck", "health_check.enabled": "healthCheck.enabled",
    "health_check.interval": "healthCheck.intervalSeconds", "health_check.timeout": "healthCheck.timeoutSeconds",
    "health_check.healthy_threshold": "healthCheck.healthyThreshold",
    "health_check.unhealthy_threshold": "healthCheck.unhealthyThreshold",
}


def test_config_file_entry_fields_are_the_models() -> None:
    entry = flatten(config_file.EndpointConfig.model_json_schema())
    assert sorted(entry) == sorted(ENTRY_FIELDS), "map every EndpointConfig field onto the spec in ENTRY_FIELDS"
    for snake, camel in ENTRY_FIELDS.items():
        theirs = {k: v for k, v in entry[snake].items() if k != "required"}
        ours = {k: v for k, v in MODEL_FLAT[camel].items() if k != "required"}
        assert theirs == ours, f"config file endpoints[].{snake} vs spec.{camel}"


def test_config_file_globals_are_the_models() -> None:
    file_schema = config_file.ConfigFile.model_json_schema()
    flat = {k: v for k, v in flatten(file_schema).items() if k.split(".")[0] in ("circuit_breaker", "health_check")}
    assert sorted(flat) == sorted(GLOBAL_FIELDS)
    for snake, camel in GLOBAL_FIELDS.items():
        theirs = {k: v for k, v in flat[snake].items() if k != "required"}
        ours = {k: v for k, v in SETTINGS_FLAT[camel].items() if k != "required"}
        assert theirs == ours, f"config file {snake} vs defaults {camel}"


def test_a_file_entry_and_an_endpoint_resolve_alike() -> None:
    """The snake_case entry translates into the same spec, so the overlay treats both alike."""
    entry = config_file.EndpointConfig.model_validate({
        "url": "http://a.svc/x", "name": "a", "methods": ["GET", "POST"], "auth_type": "bearer",
        "health_check_path": "/ready", "timeout": 4, "retries": 2, "retry_on_server_error": True,
        "health_check_interval": 9, "circuit_breaker": {"failure_threshold": 7, "reset_timeout": 11}})
    endpoint = spec.EndpointSpec.model_validate({
        "url": "http://a.svc/x", "routeName": "a", "methods": ["GET", "POST"], "authType": "bearer",
        "timeoutSeconds": 4, "retries": {"attempts": 2, "onServerError": True},
        "healthCheck": {"path": "/ready", "intervalSeconds": 9},
        "circuitBreaker": {"failureThreshold": 7, "resetTimeoutSeconds": 11}})
    defaults = defaults_from_values({"timeoutSeconds": 3, "healthCheck": {"timeoutSeconds": 6}})
    source = model.Source(kind="File")
    assert spec.resolve(entry.to_spec(), defaults, "a", source) == spec.resolve(endpoint, defaults, "a", source)


@pytest.mark.parametrize("partial, resolved", [
    (spec.HealthCheck, model.HealthCheckSettings), (spec.CircuitBreaker, model.BreakerSettings),
    (spec.Retries, model.RetrySettings)])
def test_each_partial_section_has_the_fields_of_its_resolved_form(partial: type, resolved: type) -> None:
    """The overlay copies fields by name."""
    assert sorted(partial.model_fields) == sorted(resolved.__dataclass_fields__)
