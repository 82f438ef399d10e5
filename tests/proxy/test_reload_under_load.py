"""Standalone reloads under steady traffic (issue 11, item 5).

Keep-alive callers send GETs and POSTs (unique ids, counted by the backend)
on a route the edits never touch, while config.yaml is edited and reloaded
with `POST /config/reload`: other routes come and go and change, and every
third edit is invalid. Zero failed calls, no POST lost or duplicated; an
invalid file changes nothing (same revision, same routes).
"""

from __future__ import annotations

import httpx
import pytest

from testbed.harness import config_yaml, endpoint
from testbed.traffic import Callers

pytestmark = pytest.mark.timeout(120)


def test_reloads_under_traffic_fail_no_call_and_an_invalid_file_changes_nothing(start_proxy, backend) -> None:
    steady = endpoint("steady", f"{backend.url}/steady", health_check_path="/health/steady")

    def config(i: int) -> str:
        others = [endpoint(f"other{j}", f"{backend.url}/o{j}", timeout=5 + i % 3) for j in range(i % 4)]
        return config_yaml([steady, *others], health={"interval": 0.2})

    proxy = start_proxy(config(0))
    admin = proxy.client()
    callers = Callers(proxy.url, "/orchestrator/steady", callers=3).start()
    refused = applied = 0
    try:
        callers.wait_calls(50)
        for i in range(1, 31):
            if i % 3 == 0:
                before = admin.get("/config/endpoints").json()
                revision = admin.get("/registry/stats").json()["registry_revision"]
                # Valid YAML, invalid content: it would drop "steady" and add a bad route.
                proxy.write_config(config_yaml([endpoint("other0", f"{backend.url}/o0"),
                                                endpoint("bad", "ftp://files.example/x")]))
                r = admin.post("/config/reload")
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_config", r.text
                assert admin.get("/registry/stats").json()["registry_revision"] == revision
                assert admin.get("/config/endpoints").json() == before
                refused += 1
            else:
                proxy.write_config(config(i))
                assert admin.post("/config/reload").status_code == 200
                applied += 1
            callers.wait_calls(10)  # traffic flows between edits
    finally:
        callers.stop()
    figures = callers.figures(httpx.get(f"{backend.url}/_control/calls", timeout=10).json()["ids"])
    print(f"\nreloads under traffic: {applied} applied, {refused} refused; {figures.line()}")
    assert figures.failures == [], figures.failures[:10]
    assert figures.lost == [] and figures.duplicated == []
    assert figures.posts > 100 and refused == 10
