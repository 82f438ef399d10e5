"""The product on the test control plane: the operator and N proxy replicas as
local processes with a kubeconfig, exactly as `make dev` runs them.

    stack = Stack(control_plane, replicas=2).start()
    stack.apply(endpoint_manifest(...)); stack.wait_for(ns, name, ready=True)
    stack.get_all("/orchestrator/x/y")  # one response per replica
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import yaml

from testbed.harness import free_port, stop, stop_proxy, wait_until

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"
NAMESPACE = "orchestrator-system"
REGISTRY = "orchestrator-registry"


def endpoint_manifest(name: str, url: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "orchestrator.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, **spec},
    }


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    cp: Any  # testbed.controlplane.ControlPlane
    workdir: Path
    replicas: int = 2
    operator_kubeconfig: Optional[Path] = None
    proxy_kubeconfig: Optional[Path] = None
    operator: Optional[Process] = None
    proxies: list[Process] = field(default_factory=list)
    # Where the registry and reports live, and the registry's name (a Helm release
    # installs them as "<release namespace>" and "<release>-registry").
    namespace: str = NAMESPACE
    registry: str = REGISTRY

    # -- lifecycle -------------------------------------------------------------
    def install_prerequisites(self) -> None:
        self.cp.kubectl("apply", "-f", str(ROOT / "crds"))
        self.cp.kubectl("wait", "--for=condition=Established", "crd/endpoints.orchestrator.dev", "--timeout=60s")
        self.cp.kubectl("create", "namespace", self.namespace, check=False)
        self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "orchestrator"}}))

    def start(self) -> "Stack":
        self.install_prerequisites()
        self.start_operator()
        for i in range(self.replicas):
            self.proxies.append(self._start_proxy(f"r{i}"))
        for proxy in self.proxies:
            wait_until(lambda p=proxy: self._ready(p), timeout=60, message=f"proxy {proxy.name} ready")
        return self

    def start_operator(self) -> Process:
        kubeconfig = self.operator_kubeconfig or self.cp.kubeconfig
        port = free_port()
        self.operator = self._spawn(
            "operator", ["operator", "--kubeconfig", str(kubeconfig), "--namespace", self.namespace,
                         "--registry", self.registry, "--health-port", str(port)],
            env={"ORCHESTRATOR_REPORT_STALE_SECONDS": "6"}, port=port)
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            stop(self.operator.proc)
            self.operator = None

    def _start_proxy(self, replica: str, *extra: str) -> Process:
        kubeconfig = self.proxy_kubeconfig or self.cp.kubeconfig
        port = free_port()
        return self._spawn(
            f"proxy-{replica}", ["proxy", "--kubeconfig", str(kubeconfig), "--namespace", self.namespace,
                                 "--registry", self.registry, "--host", "127.0.0.1", "--port", str(port), "--replica-id", replica,
                                 "--log-level", "info", *extra],
            env={"ORCHESTRATOR_REPORT_INTERVAL": "1"}, port=port)

    def add_proxy(self, replica: str, *extra: str) -> Process:
        """Start one more replica (extra proxy flags after the usual ones) and wait until it is Ready."""
        proxy = self._start_proxy(replica, *extra)
        self.proxies.append(proxy)
        wait_until(lambda: self._ready(proxy), timeout=60, message=f"proxy {replica} ready")
        return proxy

    def _spawn(self, name: str, args: list[str], env: dict[str, str], port: int) -> Process:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, str(MAIN), *args], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, cwd=self.workdir)
        return Process(name, proc, log_path, port)

    def _ready(self, proxy: Process) -> bool:
        if proxy.proc.poll() is not None:
            raise RuntimeError(f"{proxy.name} exited:\n{proxy.log()[-3000:]}")
        try:
            return httpx.get(f"{proxy.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proxy in self.proxies:
            stop_proxy(proxy.proc)
        self.proxies.clear()
        self.stop_operator()

    def logs(self) -> str:
        parts = [p.log()[-4000:] for p in ([self.operator] if self.operator else []) + self.proxies]
        return "\n----\n".join(parts)

    # -- Kubernetes ------------------------------------------------------------
    def apply(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess:
        return self.cp.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=check)

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        self.cp.kubectl("delete", kind, name, "-n", namespace, "--ignore-not-found", "--wait=false")

    def get(self, name: str, namespace: str = "default") -> dict[str, Any]:
        out = self.cp.kubectl("get", "endpoints.orchestrator.dev", name, "-n", namespace, "-o", "json")
        return json.loads(out.stdout)

    def condition(self, obj: dict[str, Any], ctype: str) -> dict[str, Any]:
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return c
        return {}

    def wait_for(self, name: str, namespace: str = "default", timeout: float = 20.0,
                 check: Optional[Callable[[dict[str, Any]], bool]] = None, **status: Any) -> dict[str, Any]:
        """Wait until `.status` has the given top-level values (and `check` holds)."""
        def probe() -> Optional[dict[str, Any]]:
            obj = self.get(name, namespace)
            st = obj.get("status", {})
            if all(st.get(k) == v for k, v in status.items()) and (check is None or check(obj)):
                return obj
            return None
        try:
            return wait_until(probe, timeout=timeout, interval=0.2, message=f"{namespace}/{name} status {status}")
        except AssertionError:
            raise AssertionError(f"{namespace}/{name} never reached {status}: {self.get(name, namespace).get('status')}"
                                 f"\n{self.logs()}") from None

    def events(self, namespace: str, name: str, kind: str = "Endpoint") -> list[dict[str, Any]]:
        out = self.cp.kubectl("get", "events", "-n", namespace, "-o", "json",
                              "--field-selector", f"involvedObject.kind={kind},involvedObject.name={name}")
        return json.loads(out.stdout)["items"]

    def wait_event(self, namespace: str, name: str, reason: str, kind: str = "Endpoint",
                   timeout: float = 20.0) -> dict[str, Any]:
        def probe() -> Optional[dict[str, Any]]:
            return next((e for e in self.events(namespace, name, kind) if e["reason"] == reason), None)
        return wait_until(probe, timeout=timeout, interval=0.3, message=f"event {reason} on {kind} {namespace}/{name}")

    # -- traffic -----------------------------------------------------------------
    def get_all(self, path: str, **kw: Any) -> list[httpx.Response]:
        return [httpx.get(f"{p.url}{path}", timeout=10, **kw) for p in self.proxies]

    def request_all(self, method: str, path: str, **kw: Any) -> list[httpx.Response]:
        return [httpx.request(method, f"{p.url}{path}", timeout=10, **kw) for p in self.proxies]

    def wait_all(self, path: str, predicate: Callable[[httpx.Response], bool], timeout: float = 20.0,
                 **kw: Any) -> list[httpx.Response]:
        def probe() -> Optional[list[httpx.Response]]:
            responses = self.get_all(path, **kw)
            return responses if all(predicate(r) for r in responses) else None
        try:
            return wait_until(probe, timeout=timeout, interval=0.1, message=f"all replicas on {path}")
        except AssertionError:
            got = [(r.status_code, r.text[:200]) for r in self.get_all(path, **kw)]
            raise AssertionError(f"replicas never agreed on {path}: {got}\n{self.logs()}") from None

