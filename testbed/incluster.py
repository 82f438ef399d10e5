"""The chart's Pods as containers with a kubelet's identity (used by
tests/image/test_incluster.py and bench/bench_image.py).

`InCluster` installs the chart with `helm install` on a control plane without
kube-controller-manager (the Deployments create no Pods: this plays the
kubelet for the ones it creates), then runs the operator and 3 proxies from
the image with exactly the container spec the chart rendered and the identity
a kubelet gives: a token bound to the Pod object, `ca.crt` and `namespace` in
/var/run/secrets/kubernetes.io/serviceaccount/, KUBERNETES_SERVICE_HOST/PORT
pointing at the API server. No kubeconfig anywhere.

Host networking (see podman.py): each proxy's spec is the chart rendered with
its own `proxy.port` and `proxy.adminPort`; `install()` checks that the ports are all that differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from testbed.controlplane import ControlPlane
from testbed.kubelet import Kubelet, ServiceAccountVolume
from testbed.podman import ROOT, Container, Podman, pod_args, pod_flags
from testbed.stack import Stack
from testbed.harness import free_port

CHART = ROOT / "charts" / "orchestrator"
RELEASE = "orchestrator"
NAMESPACE = "orchestrator-system"
REPLICAS = 3


@dataclass
class Running:
    """One Pod: its object, service-account volume, container and port."""

    name: str
    pod: dict[str, Any]
    spec: dict[str, Any]  # the container spec, as the chart rendered it
    volume: ServiceAccountVolume
    container: Container
    port: int
    flags: list[str]
    probe: str  # the probe that says it is up: readiness if it has one, else liveness
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
    """The proxy containers with one port moved (the traffic or the admin one: args and containerPort)."""
    moved = json.loads(json.dumps(containers))
    flags = {f"--port={old}": f"--port={new}", f"--admin-port={old}": f"--admin-port={new}"}
    for container in moved:
        container["args"] = [flags.get(a, a) for a in container["args"]]
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

    def values(self, proxy_port: int, admin_port: int, health_port: int) -> list[str]:
        return ["--set", f"image.repository={self.image.rsplit(':', 1)[0]}",
                "--set", f"image.tag={self.image.rsplit(':', 1)[1]}",
                "--set", "image.pullPolicy=Never",
                "--set", f"proxy.replicas={REPLICAS}",
                "--set", f"proxy.port={proxy_port}",
                "--set", f"proxy.adminPort={admin_port}",
                "--set", f"operator.healthPort={health_port}",
                # Faster heartbeats than the defaults, so the test sees several in seconds.
                "--set", "proxy.reportIntervalSeconds=2",
                "--set", "operator.reportStaleSeconds=10"]

    def install(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """helm install; returns the operator's pod template and one proxy
        template per replica (the installed one, then re-renders with other ports)."""
        # Host networking: each replica needs ports of its own, traffic and admin.
        ports = [(free_port(), free_port()) for _ in range(REPLICAS)]
        health_port = free_port()
        self.cp.kubectl("create", "namespace", NAMESPACE)
        self.cp.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, *self.values(*ports[0], health_port))
        installed = self.cp.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "json").stdout
        items = json.loads(installed)["items"]
        operator = next(d for d in items if d["metadata"]["name"] == f"{RELEASE}-operator")["spec"]["template"]
        proxy = next(d for d in items if d["metadata"]["name"] == f"{RELEASE}-proxy")["spec"]["template"]
        templates = [proxy]
        def render(port: int, admin: int) -> list[dict[str, Any]]:
            text = self.cp.helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", "1.34.0",
                                *self.values(port, admin, health_port), "-s", "templates/proxy-deployment.yaml").stdout
            return template_of(text, "Deployment", "-proxy")["spec"]["containers"]

        def moved(containers: list[dict[str, Any]], old: tuple[int, int], new: tuple[int, int]) -> list[dict[str, Any]]:
            return with_port(with_port(containers, old[0], new[0]), old[1], new[1])
        first = render(*ports[0])
        for pair in ports[1:]:
            # The chart with other ports differs in the ports only; the installed
            # spec (with the API server's defaults) is moved the same way.
            assert moved(render(*pair), pair, ports[0]) == first
            containers = moved(proxy["spec"]["containers"], ports[0], pair)
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
        probe = "readinessProbe" if "readinessProbe" in spec else "livenessProbe"
        return Running(name, pod, spec, volume, container, port, flags, probe, started=container.started_at())

    def wait_up(self, running: Running) -> None:
        running.ready = running.container.wait_http(probe_url(running.spec, running.probe))

    def restart(self, running: Running) -> None:
        """A new container for the same Pod (what a kubelet does after a crash)."""
        running.container = self.podman.start(running.name, self.image, running.flags, pod_args(running.spec))
        running.started = running.container.started_at()
        self.wait_up(running)

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
        for running in self.all():
            self.wait_up(running)
        self.stack.operator, self.stack.proxies = self.operator, self.proxies  # type: ignore[assignment]

    def stop(self) -> None:
        self.podman.remove_all()

    def all(self) -> list[Running]:
        assert self.operator is not None
        return [self.operator, *self.proxies]

    def logs(self) -> str:
        return "\n----\n".join(f"{r.name}:\n{r.log()[-3000:]}" for r in self.all())
