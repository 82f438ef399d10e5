"""The chart's Pods as containers with a kubelet's identity (testbed/incluster.py):
the seed scenario through them, the probes, and token rotation and revocation
without a restart. Start-to-ready times are measured by bench/bench_image.py.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Iterator

import httpx
import pytest
import yaml

from testbed.controlplane import ControlPlane
from testbed.incluster import NAMESPACE, REPLICAS, InCluster, probe_url
from testbed.podman import Podman
from testbed.stack import Stack, endpoint_manifest
from testbed.harness import Backend, start_backend, stop, wait_until

FAST_HEALTH = {"path": "/health", "intervalSeconds": 1}


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = start_backend()
    yield b
    stop(b.proc)


@pytest.fixture(scope="module")
def cluster(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InCluster]:
    podman = Podman()  # its own: the per-test `containers` cleanup must not stop these
    cp = ControlPlane(with_kcm=False)
    try:
        cp.start()
        env = InCluster(cp, podman, image, tmp_path_factory.mktemp("incluster"))
        env.start()
        yield env
    finally:
        podman.remove_all()
        cp.stop()


def test_probes_answer_as_the_chart_expects(cluster: InCluster) -> None:
    for running in cluster.all():
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in running.spec:
                url = probe_url(running.spec, probe)
                assert httpx.get(url, timeout=running.spec[probe]["timeoutSeconds"]).status_code == 200, url


def test_identity_is_the_kubelets_and_nothing_else(cluster: InCluster) -> None:
    for running in cluster.all():
        box = running.container
        listing = box.exec("ls", "/var/run/secrets/kubernetes.io/serviceaccount").split()
        assert {"token", "ca.crt", "namespace"} <= set(listing)
        env = box.exec("env")
        assert "KUBECONFIG" not in env and f"KUBERNETES_SERVICE_HOST={cluster.kubelet.service_host}" in env
        # kopf's own service-account login would dial this name: here it does not resolve.
        resolves = box.exec("python", "-c", "import socket\ntry:\n socket.getaddrinfo('kubernetes.default.svc', 443)"
                                            "\n print('yes')\nexcept OSError:\n print('no')").strip()
        assert resolves == "no"
        assert box.exec("id", "-u").strip() == "10001"
        assert box.diff() == []


def apply_seed(stack: Stack, backend: Backend) -> None:
    stack.apply(endpoint_manifest("payment-service", f"{backend.url}/payments", routeName="payment_service",
                                  methods=["GET", "POST"], authType="bearer", healthCheck=FAST_HEALTH))
    stack.apply(endpoint_manifest("users", f"{backend.url}/users", methods=["GET"], timeoutSeconds=5,
                                  healthCheck=FAST_HEALTH))
    stack.apply({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "legacy-routes", "namespace": "default",
                              "labels": {"orchestrator.dev/registry-source": "true"}},
                 "data": {"config.yaml": yaml.safe_dump({"endpoints": [
                     {"url": f"{backend.url}/legacy", "name": "legacy_api", "methods": ["GET"]}]})}})


def test_seed_scenario_through_the_containers(cluster: InCluster, backend: Backend) -> None:
    stack = cluster.stack
    apply_seed(stack, backend)
    auth = {"Authorization": "Bearer seed-token"}
    for path in ("/orchestrator/payment_service/charges?limit=2", "/orchestrator/users/42",
                 "/orchestrator/legacy_api/items"):
        for answer in stack.wait_all(path, lambda r: r.status_code == 200, timeout=30, headers=auth):
            assert ["Authorization", "Bearer seed-token"] in answer.json()["headers"]
    posted = [httpx.post(f"{p.url}/orchestrator/payment_service/charges", json={"amount": 1}, headers=auth)
              for p in cluster.proxies]
    assert [r.json()["method"] for r in posted] == ["POST"] * REPLICAS
    for name in ("payment-service", "users"):
        obj = stack.wait_for(name, timeout=30, health="Healthy",
                             check=lambda o: stack.condition(o, "Ready").get("status") == "True")
        assert stack.condition(obj, "Programmed")["message"] == f"loaded on {REPLICAS} of {REPLICAS} proxy replicas"


def heartbeats(cp: ControlPlane) -> dict[str, float]:
    out = cp.kubectl("get", "configmaps", "-n", NAMESPACE, "-l", "orchestrator.dev/report", "-o", "json").stdout
    return {c["metadata"]["name"]: float(c["data"]["heartbeat"]) for c in json.loads(out)["items"]}


def rejected(cp: ControlPlane, token: str) -> bool:
    tls = ssl.create_default_context(cafile=str(cp.ca_file))
    answer = httpx.get(f"{cp.server}/api", headers={"Authorization": f"Bearer {token}"}, verify=tls)
    return answer.status_code == 401


def test_token_rotation_and_revocation_without_restart(cluster: InCluster, backend: Backend) -> None:
    stack, kubelet, cp = cluster.stack, cluster.kubelet, cluster.cp
    apply_seed(stack, backend)
    stack.wait_all("/orchestrator/users/1", lambda r: r.status_code == 200, timeout=30)
    logs_before = {r.name: len(r.log()) for r in cluster.all()}

    # The kubelet writes a new token; the one it replaces is revoked at once
    # by deleting the Pod object it was bound to.
    old_tokens = {}
    for running in cluster.all():
        old_tokens[running.name] = running.volume.read("token")
        successor = kubelet.create_pod(NAMESPACE, f"{running.name}-next", {"metadata": {}, "spec": running.pod["spec"]})
        kubelet.rotate(running.volume, kubelet.bound_token(successor))
    for running in cluster.all():
        kubelet.delete_pod(NAMESPACE, running.pod["metadata"]["name"])
    rotated_at = time.time()
    # The API server caches a token's successful authentication for up to
    # 10 s: from then on, the old tokens are refused.
    wait_until(lambda: all(rejected(cp, token) for token in old_tokens.values()), timeout=15, interval=0.5,
               message="the old tokens are refused")

    # Without a restart: a new Endpoint routes on every proxy within 10 s ...
    stack.apply(endpoint_manifest("after-rotation", f"{backend.url}/after", healthCheck=FAST_HEALTH))
    stack.wait_all("/orchestrator/after-rotation/x", lambda r: r.status_code == 200, timeout=10)
    # ... its status is written (the operator's official client) ...
    obj = stack.wait_for("after-rotation", timeout=20,
                         check=lambda o: stack.condition(o, "Ready").get("status") == "True")
    assert stack.condition(obj, "Programmed")["message"] == f"loaded on {REPLICAS} of {REPLICAS} proxy replicas"
    # ... every proxy's report heartbeat moves past the revocation ...
    wait_until(lambda: len(beats := heartbeats(cp)) == REPLICAS and min(beats.values()) > rotated_at + 1,
               timeout=20, interval=0.5, message="report heartbeats after the rotation")
    # ... and nothing looped on 401: no traceback, at most one line per client saying it was refused.
    for running in cluster.all():
        assert running.container.running()
        after = running.log()[logs_before[running.name]:]
        assert "Traceback" not in after, f"{running.name}:\n{after}"
        refusals = after.count("refused the service-account token")
        assert refusals <= 2, f"{running.name}:\n{after}"  # kopf's and the official client's, at most once each
