"""The one route model (core/spec.py): layers, the overlay, the rules it adds to the types."""

from __future__ import annotations

import pytest

from orchestrator.core import config_file, model, spec

SRC = model.Source(kind="Endpoint", namespace="ns", name="a")


def layer(**values: object) -> spec.Settings:
    return spec.Settings.model_validate(values)


def test_a_layer_sets_only_what_it_names_and_zero_or_false_count_as_set() -> None:
    below = spec.overlay(model.Defaults(), layer(retries={"attempts": 3, "onServerError": True},
                                                 healthCheck={"enabled": True, "path": "/ready"}))
    top = spec.overlay(below, layer(retries={"attempts": 0, "onServerError": False}, healthCheck={"enabled": False}))
    assert top.retries == model.RetrySettings(attempts=0, on_server_error=False)
    assert top.health_check.enabled is False and top.health_check.path == "/ready"
    assert top.circuit_breaker is below.circuit_breaker  # untouched sections are shared, not copied
    assert spec.overlay(below, layer()) == below


def test_layers_stack_release_then_file_then_route() -> None:
    release = spec.overlay(model.Defaults(), layer(timeoutSeconds=20, circuitBreaker={"failureThreshold": 4}))
    text = ("circuit_breaker: {failure_threshold: 6}\nhealth_check: {interval: 9}\n"
            "endpoints: [{url: 'http://a.svc', name: a, circuit_breaker: {reset_timeout: 2}}]")
    loaded = config_file.parse_config(text, model.Source(kind="ConfigMap"), defaults=release)
    assert loaded.ok, loaded.errors
    (route,) = loaded.routes
    assert route.timeout_seconds == 20  # release
    assert route.circuit_breaker.failure_threshold == 6  # file globals over release
    assert route.circuit_breaker.reset_timeout_seconds == 2  # the entry over both
    assert route.health_check.interval_seconds == 9
    assert route.circuit_breaker.half_open_max_calls == model.BreakerSettings().half_open_max_calls  # built-in


def test_a_probe_never_outlasts_the_call_unless_the_route_says_so() -> None:
    defaults = model.Defaults()  # probe timeout 10
    short = spec.resolve(spec.EndpointSpec(url="http://a.svc", timeoutSeconds=3), defaults, "a", SRC)
    assert short.health_check.timeout_seconds == 3
    own = spec.EndpointSpec.model_validate({"url": "http://a.svc", "timeoutSeconds": 3,
                                            "healthCheck": {"timeoutSeconds": 5, "intervalSeconds": 5}})
    assert spec.resolve(own, defaults, "a", SRC).health_check.timeout_seconds == 5


@pytest.mark.parametrize("health_check, error", [
    ({"path": "health"}, "must start with '/'"),
    ({"timeoutSeconds": 3, "intervalSeconds": 2}, spec.PROBE_TIMEOUT_MESSAGE),
    ({"intervalSeconds": 0}, "greater than 0"),
    ({"healthyThreshold": 101}, "less than or equal to 100"),
])
def test_health_check_rules(health_check: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        spec.EndpointSpec.model_validate({"url": "http://a.svc", "healthCheck": health_check})


def test_the_release_defaults_need_not_keep_the_per_route_cel_rule() -> None:
    """The CRD's rule is about one Endpoint's own fields; the defaults layer is checked by values.schema.json."""
    assert layer(healthCheck={"timeoutSeconds": 5, "intervalSeconds": 3}).health_check.timeout_seconds == 5


def test_link_local_is_refused_unless_allowed() -> None:
    with pytest.raises(ValueError, match="169.254.169.254 is link-local"):
        spec.check_link_local("http://169.254.169.254/latest", allowed=False)
    spec.check_link_local("http://169.254.169.254/latest", allowed=True)
    spec.check_link_local("http://metadata.example/", allowed=False)  # names are checked at connect time
