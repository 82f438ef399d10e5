"""The operator's one Kubernetes client: credentials from a kubeconfig
(operator/credentials.py) and the JSON calls (operator/api.py), against a
real HTTP server on 127.0.0.1. The cluster tier runs the same client against
a real kube-apiserver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from orchestrator.operator.api import ApiError, KubeApi, core_path, group_path, is_outage, no_answer
from orchestrator.operator.credentials import Credentials, CredentialsError, from_kubeconfig


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None,
               current: str = "ctx") -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}],
    }))
    return path


def test_a_token_kubeconfig_gives_server_header_and_namespace(tmp_path: Path) -> None:
    creds = from_kubeconfig(kubeconfig(tmp_path, {"token": "abc"}))
    assert (creds.server, creds.headers, creds.namespace) == ("https://127.0.0.1:6443", {"Authorization": "Bearer abc"},
                                                              "team-a")
    assert creds.tls.verify_mode == ssl.CERT_REQUIRED


def test_file_references_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    (tmp_path / "ca.pem").write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())  # any PEM bundle
    creds = from_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "tok"}, {"server": "https://h:1",
                                                                        "certificate-authority": "ca.pem"}))
    assert creds.headers == {} and len(creds.middlewares) == 1  # the token is read per request
    assert creds.tls.cert_store_stats()["x509_ca"] > 0


def test_a_client_certificate_is_loaded_and_a_wrong_key_is_one_line(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=admin", "-days", "1", "-keyout", str(tmp_path / "k.pem"), "-out",
                    str(tmp_path / "c.pem")], check=True, capture_output=True)
    data = {"client-certificate-data": base64.b64encode((tmp_path / "c.pem").read_bytes()).decode(),
            "client-key-data": base64.b64encode((tmp_path / "k.pem").read_bytes()).decode()}
    assert from_kubeconfig(kubeconfig(tmp_path, data)).headers == {}
    data["client-key-data"] = base64.b64encode(b"not a key").decode()
    with pytest.raises(CredentialsError, match="kubeconfig .*"):
        from_kubeconfig(kubeconfig(tmp_path, data))


@pytest.mark.parametrize("user, current, message", [
    ({"exec": {"command": "aws"}}, "ctx", "exec or auth-provider plugin"),
    ({"token": "t"}, "elsewhere", "no context named 'elsewhere'"),
    ({"token": "t"}, "", "sets no current-context"),
], ids=["exec-plugin", "unknown-context", "no-context"])
def test_unusable_kubeconfigs_are_one_clear_line(tmp_path: Path, user: dict, current: str, message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        from_kubeconfig(kubeconfig(tmp_path, user, current=current))


def test_a_missing_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="cannot read kubeconfig"):
        from_kubeconfig(tmp_path / "absent")


def test_paths_quote_names() -> None:
    assert core_path("ns", "configmaps", "a/b") == "/api/v1/namespaces/ns/configmaps/a%2Fb"
    assert core_path(None, "configmaps") == "/api/v1/configmaps"  # across every namespace
    assert group_path("g", "v1", "things", "ns", "n", "status") == "/apis/g/v1/namespaces/ns/things/n/status"
    assert group_path("g", "v1", "things") == "/apis/g/v1/things"


# -- KubeApi against a real server ------------------------------------------------------

class FakeApiServer:
    """An HTTP server that lists 7 items in pages, can expire a continue token
    once, answers Status errors, and records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], str, bytes]] = []
        self.expire_once = False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.path, dict(request.query), request.content_type, body))
        if request.path == "/api/v1/namespaces/ns/configmaps":
            limit, start = int(request.query["limit"]), int(request.query.get("continue") or 0)
            if start and self.expire_once:
                self.expire_once = False
                return web.json_response({"kind": "Status", "reason": "Expired", "message": "too old"}, status=410)
            items = [{"metadata": {"name": f"cm{i}"}} for i in range(start, min(start + limit, 7))]
            more = str(start + limit) if start + limit < 7 else ""
            return web.json_response({"items": items, "metadata": {"continue": more}})
        if request.path.endswith("/busy"):
            return web.Response(status=503, text="starting", headers={"Retry-After": "5"})
        if request.path.endswith("/status"):
            return web.json_response(json.loads(body))
        return web.json_response({"kind": "Status", "reason": "NotFound", "message": 'configmaps "x" not found'},
                                 status=404)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[FakeApiServer, KubeApi]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = KubeApi(Credentials(f"http://127.0.0.1:{port}", ssl.create_default_context()))
    try:
        yield fake, api
    finally:
        await api.close()
        await runner.cleanup()


def test_a_list_is_read_page_by_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.operator.api.LIST_PAGE", 3)

    async def scenario() -> None:
        async with serving() as (fake, api):
            items = await api.list(core_path("ns", "configmaps"), label_selector="a=b")
            assert [i["metadata"]["name"] for i in items] == [f"cm{i}" for i in range(7)]
            assert [q.get("continue") for _, _, q, _, _ in fake.seen] == [None, "3", "6"]
            assert all(q["labelSelector"] == "a=b" and q["limit"] == "3" for _, _, q, _, _ in fake.seen)

    asyncio.run(scenario())


def test_an_expired_continue_token_restarts_the_list_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.operator.api.LIST_PAGE", 3)

    async def scenario() -> None:
        async with serving() as (fake, api):
            fake.expire_once = True
            items = await api.list(core_path("ns", "configmaps"))
            assert len(items) == 7  # no page twice, none missing
            assert [q.get("continue") for _, _, q, _, _ in fake.seen] == [None, "3", None, "3", "6"]

    asyncio.run(scenario())


def test_errors_carry_the_api_servers_reason_and_message() -> None:
    async def scenario() -> None:
        async with serving() as (_, api):
            with pytest.raises(ApiError) as caught:
                await api.get(core_path("ns", "configmaps", "x"))
            assert (caught.value.status, caught.value.reason, caught.value.message) == (
                404, "NotFound", 'configmaps "x" not found')
            assert not is_outage(caught.value)
            with pytest.raises(ApiError) as busy:
                await api.get("/busy")  # answered at once: Retry-After is the loop's business, not the call's
            assert is_outage(busy.value) and not no_answer(busy.value)

    asyncio.run(scenario())


def test_a_status_merge_patch_says_so() -> None:
    async def scenario() -> None:
        async with serving() as (fake, api):
            answer = await api.merge_patch(group_path("g", "v1", "things", "ns", "n", "status"), {"status": {"a": 1}})
            assert answer == {"status": {"a": 1}}
            assert fake.seen[-1][:4] == ("PATCH", "/apis/g/v1/namespaces/ns/things/n/status", {},
                                         "application/merge-patch+json")

    asyncio.run(scenario())


def test_nobody_listening_is_no_answer() -> None:
    async def scenario() -> BaseException:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, never listening: refused
            api = KubeApi(Credentials(f"http://127.0.0.1:{port}", ssl.create_default_context()), timeout=2)
            try:
                await api.get("/api/v1/namespaces/ns/configmaps/x")
            except Exception as exc:
                return exc
            finally:
                await api.close()
        raise AssertionError("a refused connection answered")

    failure = asyncio.run(scenario())
    assert no_answer(failure), repr(failure)
