"""What a kubelet does for a Pod, done by hand against the test API server:
the Pod object, a service-account token bound to a Pod (TokenRequest API),
the /var/run/secrets/kubernetes.io/serviceaccount/ directory with `token`,
`ca.crt` and `namespace` laid out as the kubelet's atomic writer does
(`..data` -> a timestamped directory, files as symlinks through it), and
rotating the token in place.

The test control plane has no scheduler and no kubelet: the Pods stay
Pending, and podman runs their containers (testbed/podman.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.podman import PodIdentity


@dataclass
class ServiceAccountVolume:
    """A host directory laid out like the kubelet's projected service-account volume."""

    directory: Path

    def write(self, files: dict[str, str]) -> None:
        """Atomically replace the whole content: a new timestamped directory,
        then the `..data` symlink swapped to it (what the kubelet does)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        target = self.directory / stamp
        target.mkdir(mode=0o755)
        for name, text in files.items():
            (target / name).write_text(text)
            (target / name).chmod(0o644)  # the projected volume's default mode
        link = self.directory / "..data_tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(stamp)
        old = os.readlink(self.directory / "..data") if (self.directory / "..data").is_symlink() else None
        os.replace(link, self.directory / "..data")
        for name in files:
            entry = self.directory / name
            if not entry.is_symlink():
                entry.symlink_to(f"..data/{name}")
        if old is not None:
            for stale in (self.directory / old).iterdir():
                stale.unlink()
            (self.directory / old).rmdir()

    def read(self, name: str) -> str:
        return (self.directory / name).read_text()


class Kubelet:
    """Pods, bound tokens and service-account volumes on a ControlPlane."""

    def __init__(self, cp: Any, workdir: Path) -> None:
        self.cp = cp
        self.workdir = workdir
        host, port = cp.server.removeprefix("https://").rsplit(":", 1)
        self.service_host, self.service_port = host, port

    def create_pod(self, namespace: str, name: str, template: dict[str, Any]) -> dict[str, Any]:
        """A Pod object from a Deployment's pod template (it stays Pending)."""
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace,
                            "labels": template["metadata"].get("labels", {}),
                            "annotations": template["metadata"].get("annotations", {})},
               "spec": template["spec"]}
        out = self.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod))
        return json.loads(out.stdout)

    def delete_pod(self, namespace: str, name: str) -> None:
        # No kubelet confirms the shutdown: remove the object at once.
        self.cp.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force", "--wait=true")

    def bound_token(self, pod: dict[str, Any], duration: str = "1h") -> str:
        """A token for the Pod's service account, bound to the Pod: it stops
        being valid the moment that Pod object is deleted."""
        meta = pod["metadata"]
        return self.cp.kubectl(
            "create", "token", pod["spec"]["serviceAccountName"], "-n", meta["namespace"],
            "--bound-object-kind", "Pod", "--bound-object-name", meta["name"],
            "--bound-object-uid", meta["uid"], f"--duration={duration}").stdout.strip()

    def mount_for(self, pod: dict[str, Any], token: str) -> ServiceAccountVolume:
        meta = pod["metadata"]
        volume = ServiceAccountVolume(self.workdir / "pods" / meta["name"] / "serviceaccount")
        volume.write({"token": token, "ca.crt": self.cp.ca_file.read_text(), "namespace": meta["namespace"]})
        return volume

    def rotate(self, volume: ServiceAccountVolume, token: str) -> None:
        volume.write({"token": token, "ca.crt": volume.read("ca.crt"), "namespace": volume.read("namespace")})

    def identity(self, pod: dict[str, Any], volume: ServiceAccountVolume, **extra_volumes: Path) -> PodIdentity:
        meta = pod["metadata"]
        return PodIdentity(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                           service_account_dir=volume.directory, service_host=self.service_host,
                           service_port=self.service_port, extra_volumes=dict(extra_volumes))
