"""A real Kubernetes control plane (etcd + kube-apiserver [+ kube-controller-manager])
for tests and local use, driven from Python.

This is a thin wrapper: tools/controlplane/build.sh builds the binaries (cached
by a stamp) and tools/controlplane/cluster.sh starts/stops them. There is one
implementation of "how to run the control plane" -- the shell script -- and
this module only adds the Python-side conveniences (kubectl/helm runners, an
ApiClient, kubeconfigs for service accounts and static users).

    from testbed.controlplane import ControlPlane

    with ControlPlane() as cp:
        cp.kubectl("get", "namespaces")
        v1 = kubernetes.client.CoreV1Api(cp.api_client())

Only the standard library is needed at import time; `api_client()` imports
the `kubernetes` package lazily.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = REPO_ROOT / "tools" / "controlplane"
BUILD_SCRIPT = TOOLS_DIR / "build.sh"
CLUSTER_SCRIPT = TOOLS_DIR / "cluster.sh"
DEFAULT_BIN_DIR = REPO_ROOT / ".cluster" / "bin"


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stderr/stdout,
    so a failing kubectl/helm call explains itself in a test report."""

    def __str__(self) -> str:
        cmd = " ".join(map(str, self.cmd)) if isinstance(self.cmd, (list, tuple)) else self.cmd
        parts = [f"command {cmd!r} exited with {self.returncode}"]
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr.rstrip()}")
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout.rstrip()}")
        return "\n".join(parts)


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv],
        input=input,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def build(bin_dir: Path = DEFAULT_BIN_DIR) -> None:
    """Build the binaries if tools/controlplane changed (otherwise a no-op).

    A cold build takes a long time (see docs/control-plane.md); its output is
    streamed to our stderr so a waiting test run shows progress.
    """
    env = {**os.environ, "CONTROLPLANE_BIN": str(bin_dir)}
    subprocess.run([str(BUILD_SCRIPT)], check=True, env=env, stdout=2)


class ControlPlane:
    """One running etcd + kube-apiserver (+ KCM) on free loopback ports.

    Args:
        cluster_dir: state directory (kubeconfigs, certs, logs, etcd data).
            Default: a fresh temporary dir under <repo>/.cluster/, removed
            again by stop() unless `keep_dir` is set.
        bin_dir: where build.sh puts the binaries.
        with_kcm: start kube-controller-manager (default: if it was built).
        build: run build.sh first (cached: cheap when nothing changed).
    """

    def __init__(
        self,
        cluster_dir: str | os.PathLike[str] | None = None,
        *,
        bin_dir: str | os.PathLike[str] = DEFAULT_BIN_DIR,
        with_kcm: bool | None = None,
        build: bool = True,
        keep_dir: bool = False,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self._with_kcm = with_kcm
        self._build = build
        self._own_dir = cluster_dir is None
        self._keep_dir = keep_dir
        self._cluster_dir = Path(cluster_dir) if cluster_dir is not None else None
        self._started = False
        self._info: dict[str, str] = {}
        self._api_clients: list[Any] = []

    # -- lifecycle ---------------------------------------------------------

    @property
    def cluster_dir(self) -> Path:
        if self._cluster_dir is None:
            raise RuntimeError("control plane not started")
        return self._cluster_dir

    def _script_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "CLUSTER_DIR": str(self.cluster_dir),
            "CONTROLPLANE_BIN": str(self.bin_dir),
        }
        if self._with_kcm is not None:
            env["WITH_KCM"] = "1" if self._with_kcm else "0"
        return env

    def start(self) -> "ControlPlane":
        if self._started:
            return self
        if self._build:
            build(self.bin_dir)
        if self._cluster_dir is None:
            base = REPO_ROOT / ".cluster"
            base.mkdir(parents=True, exist_ok=True)
            self._cluster_dir = Path(tempfile.mkdtemp(prefix="cp-", dir=base))
        # Registered before starting: whatever happens next (a failed start,
        # a Ctrl-C, an exception in a test), interpreter exit stops the plane.
        atexit.register(self.stop)
        env = self._script_env()
        # The script's watchdog stops the plane if this process dies without
        # running any finalizer (SIGKILL, a crashed interpreter).
        env["CLUSTER_OWNER_PID"] = str(os.getpid())
        self._started = True
        _run([CLUSTER_SCRIPT, "up"], env=env, timeout=180)
        self._info = dict(
            line.split("=", 1)
            for line in (self.cluster_dir / "run" / "env").read_text().splitlines()
            if "=" in line
        )
        return self

    def stop(self) -> None:
        """Stop every process start() launched (by PID); idempotent."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        for client in self._api_clients:
            try:
                client.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                pass
        self._api_clients.clear()
        try:
            _run([CLUSTER_SCRIPT, "down"], env=self._script_env(), timeout=60)
        finally:
            if self._own_dir and not self._keep_dir:
                shutil.rmtree(self.cluster_dir, ignore_errors=True)

    def kill_apiserver(self) -> None:
        """An outage: SIGKILL kube-apiserver (etcd and everything else keep running)."""
        _run([CLUSTER_SCRIPT, "apiserver-kill"], env=self._script_env(), timeout=60)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again after `kill_apiserver` (same flags, port and
        certificates) and wait until it answers /readyz."""
        _run([CLUSTER_SCRIPT, "apiserver-start"], env=self._script_env(), timeout=180)

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- facts -------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user `admin`, group system:masters)."""
        return Path(self._info["KUBECONFIG"])

    @property
    def server(self) -> str:
        """API server URL, e.g. https://127.0.0.1:40123."""
        return self._info["SERVER"]

    @property
    def with_kcm(self) -> bool:
        """Whether kube-controller-manager runs (GC, namespace deletion, ...)."""
        return self._info.get("WITH_KCM") == "1"

    @property
    def ca_file(self) -> Path:
        return self.cluster_dir / "run" / "pki" / "apiserver.crt"

    def env(self, kubeconfig: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """Environment for running kubectl/helm/any client against this plane:
        KUBECONFIG set, .cluster/bin first on PATH, helm's state kept inside
        the cluster dir (never in ~/.config/helm)."""
        helm_home = self.cluster_dir / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    # -- clients -----------------------------------------------------------

    def kubectl(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        input: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl (admin unless `kubeconfig` is given).
        Raises CommandError (with stderr) on failure when `check`."""
        return _run(
            [self.bin_dir / "kubectl", *args],
            check=check,
            input=input,
            env=self.env(kubeconfig),
            timeout=timeout,
        )

    def helm(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        input: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        timeout: float | None = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm v3 against this plane. Never use `--wait` on charts with
        Pods: there is no scheduler or kubelet, so they never become ready."""
        return _run(
            [self.bin_dir / "helm", *args],
            check=check,
            input=input,
            env=self.env(kubeconfig),
            timeout=timeout,
        )

    def api_client(self, kubeconfig: str | os.PathLike[str] | None = None) -> Any:
        """A `kubernetes.client.ApiClient` (admin unless `kubeconfig` given).
        Closed by stop()."""
        from kubernetes import config  # lazy: only callers of this need it

        client = config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))
        self._api_clients.append(client)
        return client

    # -- identities --------------------------------------------------------

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.parent.mkdir(parents=True, exist_ok=True)
        # JSON is YAML; no yaml dependency needed. 0600: it holds a token.
        import json

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "orchestrator-test",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": f"{user}@orchestrator-test",
                    "context": {"cluster": "orchestrator-test", "user": user},
                }
            ],
            "current-context": f"{user}@orchestrator-test",
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        return path

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, duration: str = "1h"
    ) -> Path:
        """Kubeconfig that acts as ServiceAccount `namespace/name` (which must
        exist). The token comes from the TokenRequest API (`kubectl create
        token`), so requests are authorized by RBAC exactly as in a cluster."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = self.cluster_dir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        return self._write_kubeconfig(path, f"system:serviceaccount:{namespace}:{name}", token)

    def user_kubeconfig(self, user: str) -> Path:
        """Kubeconfig for a static-token user: `admin` (system:masters), or
        `alice`/`bob` (group `test:users`, no permissions until bound)."""
        tokens = self.cluster_dir / "run" / "pki" / "tokens.csv"
        for line in tokens.read_text().splitlines():
            token, name, *_ = line.split(",")
            if name == user:
                path = self.cluster_dir / "kubeconfigs" / f"user-{user}.kubeconfig"
                return self._write_kubeconfig(path, user, token)
        raise KeyError(f"no static user {user!r} in {tokens}")
