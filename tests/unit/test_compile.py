"""Golden tests for the registry compiler.

Each `testdata/compile/<case>.in.yaml` holds Endpoints and ConfigMaps (and
optionally `before:`, compiled first to act as the previous registry); the
matching `.out.yaml` pins the registry *and* every verdict together.
Regenerate after an intended change with: UPDATE_GOLDEN=1 pytest tests/unit/test_compile.py
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from orchestrator.core.compile import (CompileCache, Compiled, ConfigMapObject, EndpointObject, ObjectMeta, compile_registry,
                                       defaults_from_values)
from orchestrator.core.registry import Registry

CASES = Path(__file__).parent / "testdata" / "compile"


def _meta(m: dict[str, Any]) -> ObjectMeta:
    return ObjectMeta(namespace=m.get("namespace", "default"), name=m["name"], uid=m.get("uid", m["name"]),
                      generation=m.get("generation", 1), created=m.get("creationTimestamp", "2026-01-01T00:00:00Z"))


def _compile(doc: dict[str, Any], previous: Optional[Registry], shuffle: Optional[random.Random] = None) -> Compiled:
    endpoints = [EndpointObject(_meta(e["metadata"]), e.get("spec", {})) for e in doc.get("endpoints", [])]
    configmaps = [ConfigMapObject(_meta(c["metadata"]), (c.get("data") or {}).get("config.yaml"))
                  for c in doc.get("configmaps", [])]
    if shuffle is not None:
        shuffle.shuffle(endpoints)
        shuffle.shuffle(configmaps)
    return compile_registry(endpoints, configmaps, defaults_from_values(doc.get("defaults")), previous,
                            allow_link_local=doc.get("allowLinkLocal", False))


def _render(result: Compiled) -> dict[str, Any]:
    return {
        "revision": result.registry.revision,
        "routes": {name: route.to_dict() for name, route in result.registry.routes.items()},
        "endpoints": {f"{ns}/{name}": vars(v) for (ns, name), v in sorted(result.endpoints.items())},
        "configmaps": {f"{ns}/{name}": vars(r) for (ns, name), r in sorted(result.configmaps.items())},
    }


def _run(case: Path, shuffle: Optional[random.Random] = None) -> dict[str, Any]:
    doc = yaml.safe_load(case.read_text())
    previous = _compile(doc["before"], None).registry if "before" in doc else None
    return _render(_compile(doc, previous, shuffle))


@pytest.mark.parametrize("case", sorted(CASES.glob("*.in.yaml")), ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_golden(case: Path) -> None:
    out = case.with_name(case.name.replace(".in.yaml", ".out.yaml"))
    got = _run(case)
    if os.environ.get("UPDATE_GOLDEN"):
        out.write_text(yaml.safe_dump(got, sort_keys=True, width=120))
    assert out.exists(), f"missing {out.name}: run with UPDATE_GOLDEN=1 and review it"
    assert got == yaml.safe_load(out.read_text())


@pytest.mark.parametrize("case", sorted(CASES.glob("*.in.yaml")), ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_input_order_does_not_matter(case: Path) -> None:
    assert _run(case, shuffle=random.Random(7)) == _run(case)


def test_cases_exist() -> None:
    assert len(list(CASES.glob("*.in.yaml"))) >= 6


@pytest.mark.parametrize("case", sorted(CASES.glob("*.in.yaml")), ids=lambda p: p.name.removesuffix(".in.yaml"))
def test_a_cache_changes_nothing(case: Path) -> None:
    doc = yaml.safe_load(case.read_text())
    previous = _compile(doc["before"], None).registry if "before" in doc else None
    endpoints = [EndpointObject(_meta(e["metadata"]), e.get("spec", {})) for e in doc.get("endpoints", [])]
    configmaps = [ConfigMapObject(_meta(c["metadata"]), (c.get("data") or {}).get("config.yaml"))
                  for c in doc.get("configmaps", [])]
    defaults = defaults_from_values(doc.get("defaults"))
    cache = CompileCache()
    allow = doc.get("allowLinkLocal", False)
    plain = _render(compile_registry(endpoints, configmaps, defaults, previous, allow_link_local=allow))
    for _ in range(3):  # cold, then warm twice
        assert _render(compile_registry(endpoints, configmaps, defaults, previous, cache, allow)) == plain


def test_the_cache_follows_generations_and_forgets_deleted_endpoints() -> None:
    def ep(generation: int, url: str) -> EndpointObject:
        return EndpointObject(ObjectMeta("default", "a", "uid-a", generation, "2026-01-01T00:00:00Z"), {"url": url})
    cache = CompileCache()
    first = compile_registry([ep(1, "http://one.svc")], [], defaults_from_values(None), None, cache)
    assert first.registry.routes["a"].url == "http://one.svc" and list(cache.routes) == [("uid-a", 1, "default", "a")]
    second = compile_registry([ep(2, "http://two.svc")], [], defaults_from_values(None), None, cache)
    assert second.registry.routes["a"].url == "http://two.svc" and list(cache.routes) == [("uid-a", 2, "default", "a")]
    assert second.registry.revision != first.registry.revision
    compile_registry([], [], defaults_from_values(None), None, cache)
    assert cache.routes == {} and cache.documents == {}
