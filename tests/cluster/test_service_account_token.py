"""Both client stacks against the real API server with a service-account
token file that changes under them (orchestrator/serviceaccount.py):

- the official client (orchestrator.kube.in_cluster_client) and kopf's
  (operator/credentials.py's aiohttp middleware) retry a 401 once with the file's
  new token, even when the change is invisible to stat();
- a revoked token with nothing new in the file fails with one log line for
  the state, not one per call.

Tokens come from the TokenRequest API, bound to Pod objects: deleting the Pod
revokes its token (after the API server's 10 s authentication cache).
The whole kubelet-style path, in containers, is tests/image/test_incluster.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.kube import in_cluster_client
from orchestrator.operator.credentials import bearer_token
from orchestrator.serviceaccount import ServiceAccount, TokenFile
from testbed.harness import wait_until

NAMESPACE = "sa-token"


def bound_token(cp: Any, pod: str) -> str:
    uid = json.loads(cp.kubectl("get", "pod", pod, "-n", NAMESPACE, "-o", "json").stdout)["metadata"]["uid"]
    return cp.kubectl("create", "token", "client", "-n", NAMESPACE, "--bound-object-kind", "Pod",
                      "--bound-object-name", pod, "--bound-object-uid", uid, "--duration=1h").stdout.strip()


def refused(cp: Any, token: str) -> bool:
    tls = ssl.create_default_context(cafile=str(cp.ca_file))
    return httpx.get(f"{cp.server}/api", headers={"Authorization": f"Bearer {token}"}, verify=tls).status_code == 401


def revoke(cp: Any, pod: str, token: str) -> None:
    cp.kubectl("delete", "pod", pod, "-n", NAMESPACE, "--grace-period=0", "--force", "--wait=true")
    wait_until(lambda: refused(cp, token), timeout=20, interval=0.5, message=f"the token of {pod} is refused")


def replace_unseen(path: Path, text: str) -> None:
    """New content with the same inode, size and mtime: no stat() sees it."""
    before = path.stat()
    with open(path, "r+") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture
def tokens(control_plane: Any, tmp_path: Path) -> dict[str, str]:
    cp = control_plane
    cp.kubectl("create", "namespace", NAMESPACE, check=False)
    cp.kubectl("create", "serviceaccount", "client", "-n", NAMESPACE, check=False)
    out = {}
    for pod in ("holder-a", "holder-b"):
        cp.kubectl("delete", "pod", pod, "-n", NAMESPACE, "--ignore-not-found", "--grace-period=0", "--force")
        cp.kubectl("run", pod, "-n", NAMESPACE, "--image=none", "--restart=Never",
                   "--overrides", json.dumps({"spec": {"serviceAccountName": "client"}}))
        out[pod] = bound_token(cp, pod)
    # Padded with newlines (stripped when read) to one size, so a swap can keep the stat.
    width = max(len(t) for t in out.values()) + 1
    return {pod: t + "\n" * (width - len(t)) for pod, t in out.items()}


def account(cp: Any, token_path: Path) -> ServiceAccount:
    return ServiceAccount(server=cp.server, ca_path=cp.ca_file, namespace=NAMESPACE, token_path=token_path)


def test_official_client_retries_a_401_with_the_new_token(
        control_plane: Any, tokens: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text(tokens["holder-a"])
    api = in_cluster_client(account(control_plane, path))
    versions = client.CoreApi(api).get_api_versions
    assert versions().versions == ["v1"]

    replace_unseen(path, tokens["holder-b"])
    revoke(control_plane, "holder-a", tokens["holder-a"].strip())
    caplog.set_level(logging.INFO, logger="orchestrator.serviceaccount")
    assert versions().versions == ["v1"]  # a 401, the file re-read, one retry
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "kubernetes client: the API server refused the service-account token (401 Unauthorized)",
        "kubernetes client: the API server accepts the service-account token again"]

    caplog.clear()
    revoke(control_plane, "holder-b", tokens["holder-b"].strip())
    for _ in range(5):
        with pytest.raises(ApiException) as failure:
            versions()
        assert failure.value.status == 401
    assert len(caplog.records) == 1 and "refused" in caplog.records[0].getMessage()
    api.close()


def test_kopf_session_retries_a_401_with_the_new_token(
        control_plane: Any, tokens: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    path.write_text(tokens["holder-a"])
    token = TokenFile(path, "kopf")

    async def statuses(count: int) -> list[int]:
        tls = ssl.create_default_context(cafile=str(control_plane.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls),
                                         middlewares=(bearer_token(token),)) as session:
            answers = []
            for _ in range(count):
                async with session.get(f"{control_plane.server}/api") as response:
                    answers.append(response.status)
            return answers

    assert asyncio.run(statuses(1)) == [200]
    replace_unseen(path, tokens["holder-b"])
    revoke(control_plane, "holder-a", tokens["holder-a"].strip())
    caplog.set_level(logging.INFO, logger="orchestrator.serviceaccount")
    assert asyncio.run(statuses(3)) == [200, 200, 200]
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]

    caplog.clear()
    revoke(control_plane, "holder-b", tokens["holder-b"].strip())
    assert asyncio.run(statuses(5)) == [401] * 5  # kopf then invalidates the session and logs in again
    assert len(caplog.records) == 1 and "kopf: the API server refused" in caplog.records[0].getMessage()
