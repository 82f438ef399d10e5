"""The compiled registry: revisions and shards."""

from __future__ import annotations

import dataclasses

import json
import random

import pytest

from orchestrator.core.model import BreakerSettings, HealthCheckSettings, Route, RetrySettings, Source
from orchestrator.core.registry import (FORMAT, Registry, RouteMemo, UnknownFormat, decode_shards, encode_shards,
                                        revision_of)


def route(i: int, **kw) -> Route:
    return Route(
        name=f"svc-{i:05d}", url=f"http://backend-{i}.ns.svc:8080/api", methods=("GET", "POST"),
        timeout_seconds=5.0, health_check=HealthCheckSettings(path="/healthz", interval_seconds=15.0),
        circuit_breaker=BreakerSettings(failure_threshold=3), retries=RetrySettings(attempts=1),
        source=Source(kind="Endpoint", namespace="team-a", name=f"svc-{i}", uid=f"uid-{i}", generation=2),
        **kw,
    )


def test_route_dict_round_trip():
    r = route(1, disabled=True)
    d = r.to_dict()
    assert d["timeoutSeconds"] == 5.0 and d["healthCheck"]["intervalSeconds"] == 15.0
    assert d["circuitBreaker"]["resetTimeoutSeconds"] == 60.0 and d["retries"]["onServerError"] is False
    assert Route.from_dict(json.loads(json.dumps(d))) == r


def test_the_wire_form_leaves_out_the_defaults_and_reads_back_the_same_route():
    plain = Route(name="pay", url="http://pay.ns.svc", source=Source(kind="Endpoint", namespace="ns", name="pay",
                                                                       uid="u1", generation=1))
    wire = plain.to_wire()
    assert wire == {"name": "pay", "url": "http://pay.ns.svc",
                    "source": {"kind": "Endpoint", "namespace": "ns", "name": "pay", "uid": "u1", "generation": 1}}
    assert Route.from_dict(json.loads(json.dumps(wire))) == plain
    custom = route(1, disabled=True)  # non-default values in every section
    wire = custom.to_wire()
    assert wire["healthCheck"] == {"path": "/healthz", "intervalSeconds": 15.0}
    assert wire["circuitBreaker"] == {"failureThreshold": 3} and wire["disabled"] is True
    assert Route.from_dict(json.loads(json.dumps(wire))) == custom


def test_what_an_omitted_key_means_is_part_of_the_format():
    # An older proxy fills an omitted key with ITS built-in default. Changing a default
    # below therefore changes what registries already written mean: bump FORMAT_VERSION.
    assert FORMAT == "orchestrator.dev/registry/v1"
    assert Route(name="x", url="http://x").to_dict() == {
        "name": "x", "url": "http://x", "version": "v1", "methods": ["GET"], "authType": "none",
        "disabled": False, "timeoutSeconds": 30.0,
        "healthCheck": {"enabled": True, "path": "/health", "intervalSeconds": 30.0, "timeoutSeconds": 10.0,
                        "healthyThreshold": 2, "unhealthyThreshold": 3},
        "circuitBreaker": {"failureThreshold": 5, "resetTimeoutSeconds": 60.0, "halfOpenMaxCalls": 3,
                           "fallback": "error_response"},
        "retries": {"attempts": 0, "onServerError": False},
        "source": {"kind": "File", "namespace": "", "name": "", "uid": "", "generation": 0, "entry": ""},
    }


def test_shards_round_trip_with_small_max_bytes():
    registry = Registry.build(route(i) for i in range(200))
    shards = encode_shards(registry, max_bytes=8 * 1024)
    assert len(shards) > 5
    assert all(len(s) <= 8 * 1024 for s in shards)
    again = decode_shards(reversed(shards))  # order of reading does not matter
    assert again.revision == registry.revision
    assert dict(again.routes) == dict(registry.routes)


def test_one_shard_when_it_fits():
    registry = Registry.build(route(i) for i in range(3))
    shards = encode_shards(registry)
    assert len(shards) == 1
    doc = json.loads(shards[0])
    assert (doc["index"], doc["count"], doc["revision"]) == (0, 1, registry.revision)


def test_empty_registry_round_trips():
    registry = Registry.build([])
    again = decode_shards(encode_shards(registry))
    assert again.routes == {} and again.revision == registry.revision


def test_mixed_revisions_refused():
    a = encode_shards(Registry.build(route(i) for i in range(100)), max_bytes=8 * 1024)
    b = encode_shards(Registry.build(route(i, version="v2") for i in range(100)), max_bytes=8 * 1024)
    assert len(a) == len(b) > 1
    with pytest.raises(ValueError, match="different revisions"):
        decode_shards([a[0]] + b[1:])


def test_incomplete_or_duplicated_set_refused():
    shards = encode_shards(Registry.build(route(i) for i in range(100)), max_bytes=8 * 1024)
    with pytest.raises(ValueError, match="incomplete"):
        decode_shards(shards[:-1])
    with pytest.raises(ValueError, match="incomplete"):
        decode_shards(shards + [shards[0]])
    with pytest.raises(ValueError):
        decode_shards([])
    bad = json.loads(shards[0])
    bad["format"] = "something/else"
    with pytest.raises(ValueError, match="format"):
        decode_shards([json.dumps(bad)] + shards[1:])


def test_a_newer_format_is_its_own_error_naming_both_formats():
    # A newer operator's registry, even with entries this release cannot parse.
    newer = json.dumps({"count": 1, "index": 0, "revision": "r999", "format": "orchestrator.dev/registry/v999",
                        "endpoints": [{"a shape": "from the future"}]})
    with pytest.raises(UnknownFormat) as caught:
        decode_shards([newer])
    assert "orchestrator.dev/registry/v999" in str(caught.value) and FORMAT in str(caught.value)


def test_revision_stable_under_reordering_and_sensitive_to_content():
    routes = [route(i) for i in range(50)]
    shuffled = routes[:]
    random.Random(1).shuffle(shuffled)
    assert Registry.build(routes).revision == Registry.build(shuffled).revision == revision_of(shuffled)
    changed = routes[:]
    changed[10] = dataclasses.replace(changed[10], timeout_seconds=6.0)
    assert Registry.build(changed).revision != Registry.build(routes).revision
    assert Registry.build(routes[:-1]).revision != Registry.build(routes).revision


def test_a_memo_rebuilds_only_the_routes_whose_entries_changed():
    memo = RouteMemo()
    first = decode_shards(encode_shards(Registry.build(route(i) for i in range(5))), memo)
    changed = [route(i) for i in range(4)] + [dataclasses.replace(route(4), methods=("GET",))] + [route(5)]  # one edited, one new
    second = decode_shards(encode_shards(Registry.build(changed)), memo)
    assert dict(second.routes) == {r.name: r for r in changed}
    assert all(second.routes[f"svc-{i:05d}"] is first.routes[f"svc-{i:05d}"] for i in range(4))
    assert second.routes["svc-00004"] is not first.routes["svc-00004"]
    third = decode_shards(encode_shards(Registry.build(changed[1:])), memo)  # one removed
    assert set(third.routes) == {r.name for r in changed[1:]}
    assert third.routes["svc-00001"] is first.routes["svc-00001"]
