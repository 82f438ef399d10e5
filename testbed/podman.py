"""Containers from the project's image, driven through podman.

`Podman` runs podman with the project's containers.conf (tools/image) and
removes every container it started. `pod_flags()` turns a Kubernetes
container spec -- as the Helm chart renders it -- into `podman run` flags the
way a kubelet would apply it: the securityContext (user, read-only root,
dropped capabilities, no privilege escalation), env with the downward-API
values of a given Pod, the volume mounts, and the memory limit.

Networking is the host's (`--network host`, like a hostNetwork Pod): the test
API server listens on 127.0.0.1 with a certificate for that address, and this
machine's bridge networking cannot reach it. Each container therefore needs
its own port; the tests render the chart with a free port per replica
(`proxy.port`, `operator.healthPort`), so every spec is still exactly one the
chart produces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import httpx

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "image"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodmanError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited with {self.returncode}:\n{self.stderr}{self.stdout}"


class Podman:
    def __init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(TOOLS / "containers.conf")}
        self.started: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise PodmanError(proc.returncode, ["podman", *args], proc.stdout, proc.stderr)
        return proc

    def build(self, image: str) -> str:
        """tools/image/build.sh (the base and the layers are cached). Returns the reference."""
        proc = subprocess.run([str(TOOLS / "build.sh")], capture_output=True, text=True, timeout=1800,
                              env={**self.env, "IMAGE": image})
        if proc.returncode != 0:
            raise PodmanError(proc.returncode, [str(TOOLS / "build.sh")], proc.stdout, proc.stderr)
        return proc.stdout.strip().splitlines()[-1]

    def start(self, name: str, image: str, flags: Sequence[str], args: Sequence[str] = ()) -> "Container":
        self("rm", "--force", "--ignore", name)
        self.started.append(name)
        self("run", "--detach", "--name", name, "--network", "host", *flags, image, *args)
        return Container(self, name)

    def remove_all(self) -> None:
        for name in self.started:
            self("rm", "--force", "--ignore", "--time", "2", name, check=False)
        self.started.clear()


@dataclass
class Container:
    podman: Podman
    name: str

    def logs(self) -> str:
        proc = self.podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        return self.podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def exec(self, *argv: str) -> str:
        return self.podman("exec", self.name, *argv).stdout

    def diff(self) -> list[str]:
        """Changes to the container's own root filesystem, except the mount
        points the runtime itself creates (and their parent directories)."""
        mounts = json.loads(self.podman("inspect", "--format", "{{json .Mounts}}", self.name).stdout or "[]")
        # /var/run is a symlink to /run in the image: podman diff names the real path.
        targets = [m["Destination"].replace("/var/run/", "/run/", 1) for m in mounts]
        targets += ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]  # the runtime's, as a kubelet's are
        changes = []
        for line in self.podman("diff", self.name).stdout.splitlines():
            path = line.split(" ", 1)[-1]
            if line.strip() and not any(t == path or t.startswith(path.rstrip("/") + "/") for t in targets):
                changes.append(line)
        return changes

    def started_at(self) -> float:
        """When the runtime started the process (epoch seconds)."""
        stamp = self.podman("inspect", "--format", "{{.State.StartedAt.Unix}}.{{.State.StartedAt.Nanosecond}}",
                            self.name).stdout.strip()
        seconds, nanos = stamp.split(".")
        return int(seconds) + int(nanos) / 1e9

    def wait_http(self, url: str, status: int = 200, timeout: float = 60) -> float:
        """Poll `url` until it answers `status` (what a kubelet probe does);
        returns the time it first did. Fails with the container's log."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container {self.name} exited:\n{self.logs()}")
            try:
                answer = httpx.get(url, timeout=2)
                if answer.status_code == status:
                    return time.time()
                last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer {status} within {timeout}s (last: {last}):\n{self.logs()}")


@dataclass
class PodIdentity:
    """What the downward API and the service-account volume give a container."""

    name: str
    namespace: str
    uid: str
    service_account_dir: Optional[Path] = None  # host dir mounted at SERVICE_ACCOUNT_MOUNT
    service_host: str = ""
    service_port: str = ""
    extra_volumes: dict[str, Path] = field(default_factory=dict)  # volume name -> host dir (configMap)


def pod_flags(container: Mapping[str, Any], pod_spec: Mapping[str, Any], pod: PodIdentity) -> list[str]:
    """`podman run` flags for one container of a rendered Pod template."""
    pod_security = pod_spec.get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    flags: list[str] = []

    user, group = security.get("runAsUser"), security.get("runAsGroup")
    if user is not None:
        flags += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if pod_security.get("fsGroup") is not None:  # the kubelet adds it as a supplementary group
        flags += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        # Only what the spec mounts is writable: not podman's default tmpfs on /tmp, /run, /var/tmp.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    for cap in (security.get("capabilities") or {}).get("drop", []):
        flags += ["--cap-drop", cap]
    for cap in (security.get("capabilities") or {}).get("add", []):
        flags += ["--cap-add", cap]
    # seccompProfile RuntimeDefault: podman applies its default profile unless told otherwise.

    memory = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if memory:
        flags += ["--memory", memory.replace("Mi", "m").replace("Gi", "g")]

    fields = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "metadata.uid": pod.uid}
    env = {}
    if pod.service_host:  # what the kubelet sets from the `kubernetes` Service
        env["KUBERNETES_SERVICE_HOST"] = pod.service_host
        env["KUBERNETES_SERVICE_PORT"] = pod.service_port
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    for key, value in env.items():
        flags += ["--env", f"{key}={value}"]

    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = (volume["emptyDir"].get("sizeLimit") or "64Mi").replace("Mi", "m")
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,nosuid,nodev,size={size},mode=1777"]
        else:
            source = pod.extra_volumes[mount["name"]]
            flags += ["--volume", f"{source}:{mount['mountPath']}:{'ro' if mount.get('readOnly') else 'rw'}"]
    automount = pod_spec.get("automountServiceAccountToken", True)
    if automount and pod.service_account_dir is not None:
        flags += ["--volume", f"{pod.service_account_dir}:{SERVICE_ACCOUNT_MOUNT}:ro"]

    if container.get("command"):
        flags += ["--entrypoint", container["command"][0]]  # further command words go before args
    return flags


def pod_args(container: Mapping[str, Any]) -> list[str]:
    return [*(container.get("command") or [])[1:], *(container.get("args") or [])]


def have_podman() -> bool:
    return shutil.which("podman") is not None
