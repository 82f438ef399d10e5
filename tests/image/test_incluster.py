"""The chart's Pods as containers with a kubelet's identity.

The chart is installed with `helm install` on a control plane of its own (no
kube-controller-manager: the Deployments create no Pods, the test plays the
kubelet for the ones it creates). The operator and 3 proxies run from the
image with exactly the container spec the chart rendered, and the identity a
kubelet gives: a token bound to the Pod object, `ca.crt` and `namespace` in
/var/run/secrets/kubernetes.io/serviceaccount/, KUBERNETES_SERVICE_HOST/PORT
pointing at the API server. No kubeconfig anywhere.

Host networking (see podman.py): each proxy's spec is the chart rendered with
its own `proxy.port`; the test checks that the port is all that differs.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import pytest
import yaml

from controlplane import ControlPlane
from kubelet import Kubelet, ServiceAccountVolume
from podman import ROOT, Container, Podman, pod_args, pod_flags
from stack import Stack, endpoint_manifest
from support.harness import Backend, free_port, start_backend, stop, wait_until

CHART = ROOT / "charts" / "orchestrator"
RELEASE = "orchestrator"
NAMESPACE = "orchestrator-system"
REPLICAS = 3
FAST_HEALTH = {"path": "/health", "intervalSeconds": 1}


@dataclass
class Running:
    """One Pod: its object, service-account volume, container and port."""

    name: str
    pod: dict[str, Any]
    spec: dict[str, Any]  # the container spec, as the chart rendered it
    volume: ServiceAccountVolume
    container: Container
    port: int
    started: float = 0.0
    ready: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.container.logs()


def template_of(text: str, kind: str, component: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] == kind and doc["metadata"]["name"].endswith(component):
            return doc["spec"]["template"]
    raise KeyError(component)


def with_port(containers: list[dict[str, Any]], old: int, new: int) -> list[dict[str, Any]]:
    """The proxy containers with their port moved (args and containerPort)."""
    moved = json.loads(json.dumps(containers))
    for container in moved:
        container["args"] = [f"--port={new}" if a == f"--port={old}" else a for a in container["args"]]
        for port in container["ports"]:
            if port["containerPort"] == old:
                port["containerPort"] = new
    return moved


def probe_url(spec: dict[str, Any], probe: str) -> str:
    get = spec[probe]["httpGet"]
    port = next(p["containerPort"] for p in spec["ports"] if p["name"] == get["port"])
    return f"http://127.0.0.1:{port}{get['path']}"


class InCluster:
    def __init__(self, cp: ControlPlane, podman: Podman, image: str, workdir: Path) -> None:
        self.cp, self.podman, self.image, self.workdir = cp, podman, image, workdir
        self.kubelet = Kubelet(cp, workdir)
        self.operator: Optional[Running] = None
        self.proxies: list[Running] = []
        # The project's cluster-test helpers (apply, wait_for, wait_all) over these containers.
        self.stack = Stack(cp, workdir, replicas=REPLICAS, namespace=NAMESPACE, registry=f"{RELEASE}-registry")

    def values(self, proxy_port: int, health_port: int) -> list[str]:
        return ["--set", f"image.repository={self.image.rsplit(':', 1)[0]}",
                "--set", f"image.tag={self.image.rsplit(':', 1)[1]}",
                "--set", "image.pullPolicy=Never",
                "--set", f"proxy.replicas={REPLICAS}",
                "--set", f"proxy.port={proxy_port}",
                "--set", f"operator.healthPort={health_port}",
                # Faster heartbeats than the defaults, so the test sees several in seconds.
                "--set", "proxy.reportIntervalSeconds=2",
                "--set", "operator.reportStaleSeconds=10"]

    def install(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """helm install; returns the operator's pod template and one proxy
        template per replica (the installed one, then re-renders with other ports)."""
        ports = [free_port() for _ in range(REPLICAS)]
        health_port = free_port()
        self.cp.kubectl("create", "namespace", NAMESPACE)
        self.cp.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, *self.values(ports[0], health_port))
        installed = self.cp.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "json").stdout
        items = json.loads(installed)["items"]
        operator = next(d for d in items if d["metadata"]["name"] == f"{RELEASE}-operator")["spec"]["template"]
        proxy = next(d for d in items if d["metadata"]["name"] == f"{RELEASE}-proxy")["spec"]["template"]
        templates = [proxy]
        def render(port: int) -> list[dict[str, Any]]:
            text = self.cp.helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.34.0",
                                *self.values(port, health_port), "-s", "templates/proxy-deployment.yaml").stdout
            return template_of(text, "Deployment", "-proxy")["spec"]["containers"]
        first = render(ports[0])
        for port in ports[1:]:
            # The chart with another proxy.port differs in the port only; the
            # installed spec (with the API server's defaults) is moved the same way.
            assert with_port(render(port), port, ports[0]) == first
            containers = with_port(proxy["spec"]["containers"], ports[0], port)
            templates.append({**proxy, "spec": {**proxy["spec"], "containers": containers}})
        return operator, templates

    def run_pod(self, name: str, template: dict[str, Any], **volumes: Path) -> Running:
        pod = self.kubelet.create_pod(NAMESPACE, name, template)
        volume = self.kubelet.mount_for(pod, self.kubelet.bound_token(pod))
        spec = template["spec"]["containers"][0]
        assert spec["image"] == self.image
        flags = pod_flags(spec, template["spec"], self.kubelet.identity(pod, volume, **volumes))
        container = self.podman.start(name, self.image, flags, pod_args(spec))
        port = spec["ports"][0]["containerPort"]
        return Running(name, pod, spec, volume, container, port, started=container.started_at())

    def start(self) -> None:
        operator_template, proxy_templates = self.install()
        defaults = self.workdir / "defaults"  # the kubelet's configMap volume
        defaults.mkdir()
        data = json.loads(self.cp.kubectl("get", "configmap", f"{RELEASE}-defaults", "-n", NAMESPACE,
                                          "-o", "json").stdout)["data"]
        for key, value in data.items():
            (defaults / key).write_text(value)
        self.operator = self.run_pod(f"{RELEASE}-operator-0", operator_template, defaults=defaults)
        self.proxies = [self.run_pod(f"{RELEASE}-proxy-{i}", t) for i, t in enumerate(proxy_templates)]
        self.operator.ready = self.operator.container.wait_http(probe_url(self.operator.spec, "livenessProbe"))
        for proxy in self.proxies:
            proxy.ready = proxy.container.wait_http(probe_url(proxy.spec, "readinessProbe"))
        self.stack.operator, self.stack.proxies = self.operator, self.proxies  # type: ignore[assignment]

    def all(self) -> list[Running]:
        assert self.operator is not None
        return [self.operator, *self.proxies]

    def logs(self) -> str:
        return "\n----\n".join(f"{r.name}:\n{r.log()[-3000:]}" for r in self.all())


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


def test_start_to_ready(cluster: InCluster, record_property: Any) -> None:
    """Container start (the runtime's StartedAt) to the probe first answering 200."""
    for running in cluster.all():
        seconds = running.ready - running.started
        record_property(f"{running.name}_start_to_ready_s", round(seconds, 2))
        print(f"{running.name}: start to ready {seconds:.2f} s")
        assert seconds > 0


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
