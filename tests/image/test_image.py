"""The image itself: built from the Dockerfile by tools/image/build.sh, run
with the chart's securityContext and its /tmp emptyDir only.

The standalone walkthrough of the README runs inside the container against a
backend on this machine (host network), with the config file mounted
read-only the way a ConfigMap volume is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from testbed.podman import ROOT, Podman, pod_flags
from testbed.podman import PodIdentity
from testbed.harness import Backend, config_yaml, endpoint, free_port, header_values, start_backend, stop

VALUES = yaml.safe_load((ROOT / "charts" / "orchestrator" / "values.yaml").read_text())


def chart_like_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's securityContexts, /tmp emptyDir and memory limit (what
    charts/orchestrator renders for both Deployments), plus a config volume."""
    pod_spec = {
        "securityContext": VALUES["podSecurityContext"],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}, {"name": "config", "configMap": {}}],
    }
    container = {
        "securityContext": VALUES["securityContext"],
        "resources": VALUES["proxy"]["resources"],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "config", "mountPath": "/etc/orchestrator", "readOnly": True}],
    }
    return pod_spec, container


def test_tmp_volume_matches_the_chart() -> None:
    helpers = (ROOT / "charts" / "orchestrator" / "templates" / "_helpers.tpl").read_text()
    assert "- name: tmp\n  emptyDir:\n    sizeLimit: 64Mi" in helpers


def test_image_configuration(podman: Podman, image: str) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["orchestrator"]
    assert config["Cmd"] == ["--help"]
    assert config["User"] == "10001:10001"  # numeric: runAsNonRoot can verify it
    assert config["WorkingDir"] == "/tmp"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8080/tcp"}
    assert any(e.startswith("PATH=/opt/venv/bin:/usr/local/sbin:") for e in config["Env"])


@pytest.mark.parametrize("args, expect", [
    ([], "usage: orchestrator standalone"),  # the image's CMD is --help
    (["--help"], "usage: orchestrator standalone"),
    (["standalone", "--help"], "--config CONFIG"),
    (["proxy", "--help"], "--registry REGISTRY"),
    (["operator", "--help"], "--health-port HEALTH_PORT"),
], ids=["default", "help", "standalone", "proxy", "operator"])
def test_every_role_answers_help_under_the_chart_security_context(
        containers: Podman, image: str, tmp_path: Path, args: list[str], expect: str) -> None:
    pod_spec, container = chart_like_pod()
    flags = pod_flags(container, pod_spec, PodIdentity("help", "default", "uid", extra_volumes={"config": tmp_path}))
    out = containers("run", "--rm", "--network", "host", *flags, image, *args)
    assert expect in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_the_image_user_is_10001_without_a_security_context(podman: Podman, image: str) -> None:
    out = podman("run", "--rm", "--network", "host", "--entrypoint", "id", image).stdout
    assert out.startswith("uid=10001(orchestrator) gid=10001(orchestrator)"), out


LEAN_CHECK = r"""
import os, shutil, site, sys
packages = site.getsitepackages()[0]
found = {
    "compilers": [c for c in ("gcc", "cc", "g++", "make") if shutil.which(c)],
    "packaging tools": [p for p in ("pip", "setuptools", "wheel") if os.path.isdir(os.path.join(packages, p))],
    "build leftovers": [p for p in ("/src", "/wheels", "/root/.cache", "/tmp/pip") if os.path.exists(p)],
    "tests": [r for r, d, f in os.walk(packages) if os.path.basename(r) in ("tests", "test")],
    "project sources outside the venv": [p for p in ("/main.py", "/orchestrator", "/core", "/proxy") if os.path.exists(p)],
}
print(repr({k: v for k, v in found.items() if v}))
print(sys.version_info[:2])
"""


def test_the_application_layer_is_lean(podman: Podman, image: str) -> None:
    out = podman("run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c", LEAN_CHECK).stdout
    leftovers, version = out.splitlines()
    assert leftovers == "{}"
    assert version == "(3, 11)"  # the wheels in the venv are built for it


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = start_backend()
    yield b
    stop(b.proc)


def walkthrough(base: str, backend: Backend) -> list[tuple[str, str, int]]:
    """The README's standalone calls; returns (method, path, status) of each."""
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/", {}), ("GET", "/health", {}), ("GET", "/readyz", {}), ("GET", "/metrics", {}),
        ("GET", "/docs", {}), ("GET", "/openapi.json", {}),
        ("GET", "/config/status", {}), ("POST", "/config/reload", {}), ("GET", "/config/endpoints", {}),
        ("POST", "/config/validate?config_path=/etc/orchestrator/config.yaml", {}),
        ("GET", "/registry/endpoints?status=active&limit=10&offset=0", {}),
        ("GET", "/registry/endpoints/secure_api", {}),
        ("POST", "/registry/endpoints", {"json": {"config": {"url": f"{backend.url}/payments",
                                                              "name": "payment_service", "methods": ["GET", "POST"]}}}),
        ("GET", "/orchestrator/payment_service/charges", {"headers": {"Authorization": "Bearer seed"}}),
        ("PUT", "/registry/endpoints/payment_service/status?status=inactive", {}),
        ("DELETE", "/registry/endpoints/payment_service", {}),
        ("GET", "/registry/stats", {}), ("POST", "/registry/sync", {}),
        ("GET", "/health/status", {}), ("GET", "/health/endpoints", {}), ("GET", "/health/endpoints/secure_api", {}),
        ("POST", "/health/check/secure_api", {}), ("GET", "/health/unhealthy", {}), ("GET", "/health/summary", {}),
        ("GET", "/health/circuit-breakers", {}), ("GET", "/health/circuit-breakers/open", {}),
        ("GET", "/router/routes", {}), ("GET", "/router/test/secure_api", {}), ("POST", "/router/refresh", {}),
        ("GET", "/router/debug/secure_api/some/path", {}),
        ("GET", "/orchestrator/secure_api/users", {"headers": {"Authorization": "Bearer seed"}}),
        ("GET", "/orchestrator/api_service/data", {"headers": {"X-API-Key": "k"}}),
        ("GET", "/orchestrator/basic_auth_service/resource", {"auth": ("user", "password")}),
    ]
    done = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path, kw in calls:
            answer = client.request(method, path, **kw)
            done.append((method, path, answer.status_code))
            if path.startswith("/orchestrator/"):
                echo = answer.json()
                for name, value in kw.get("headers", {}).items():
                    assert header_values(echo, name) == [value], echo  # auth passes through untouched
    return done


def test_standalone_walkthrough_on_a_read_only_root(containers: Podman, image: str, tmp_path: Path,
                                                    backend: Backend) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.yaml").write_text(config_yaml(
        [endpoint(name, f"{backend.url}/{name}", health_check_path="/health")
         for name in ("secure_api", "api_service", "basic_auth_service")]))
    pod_spec, container = chart_like_pod()
    port = free_port()
    flags = pod_flags(container, pod_spec, PodIdentity("standalone", "default", "uid", extra_volumes={"config": config}))
    box = containers.start("orchestrator-test-standalone", image,
                           [*flags, "--env", "CONFIG_PATH=/etc/orchestrator/config.yaml"],
                           ["--host", "127.0.0.1", "--port", str(port)])
    box.wait_http(f"http://127.0.0.1:{port}/readyz")

    done = walkthrough(f"http://127.0.0.1:{port}", backend)
    failed = [call for call in done if not 200 <= call[2] < 300]
    assert failed == [], f"{failed}\n{box.logs()}"

    logs = box.logs()
    assert "Traceback" not in logs and "Read-only file system" not in logs, logs
    # Nothing reached the root filesystem (podman diff lists the container's
    # own layer; read-only refuses writes, this shows none were attempted to
    # succeed elsewhere), and only /tmp -- the chart's emptyDir -- is writable.
    assert box.diff() == []
    writable = box.exec("python", "-c",
                        "import os; print([p for p in ('/', '/opt/venv', '/etc', '/var', '/home', '/run', '/tmp') "
                        "if os.access(p, os.W_OK)])").strip()
    assert writable == "['/tmp']"


LOGIN = """
import asyncio
from orchestrator.operator.credentials import CredentialsError, locate
from orchestrator.operator.login import login_handler

async def main():
    info = await login_handler(locate(None))()
    await info.aiohttp_session.close()
    print(type(info).__name__, info.server, info.default_namespace)

try:
    asyncio.run(main())
except CredentialsError as exc:
    print("CredentialsError:", exc)
"""


@pytest.mark.parametrize("files, expect", [
    ({"token": "t", "ca.crt": "bundle", "namespace": "orchestrator-system"},
     "AiohttpSession https://[fd00::10]:6443 orchestrator-system"),
    ({"ca.crt": "bundle"},
     "CredentialsError: /var/run/secrets/kubernetes.io/serviceaccount/token does not exist: "
     "is the service-account token mounted (automountServiceAccountToken)?"),
], ids=["mounted", "no-token"])
def test_operator_login_follows_kubernetes_service_host_and_port(
        podman: Podman, image: str, tmp_path: Path, files: dict[str, str], expect: str) -> None:
    # kopf's own service-account login would answer https://kubernetes.default.svc here.
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()  # any valid PEM will do: nothing is dialled
    tmp_path.chmod(0o755)  # the projected volume is readable by the container's user
    for name, text in files.items():
        (tmp_path / name).write_text(bundle if text == "bundle" else text)
        (tmp_path / name).chmod(0o644 if name != "unreadable" else 0o600)
    out = podman("run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
                 "--volume", f"{tmp_path}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                 "--env", "KUBERNETES_SERVICE_HOST=fd00::10", "--env", "KUBERNETES_SERVICE_PORT=6443",
                 "--entrypoint", "python", image, "-c", LOGIN)
    assert out.stdout.strip() == expect, out.stdout + out.stderr
