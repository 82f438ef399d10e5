"""Where the API server is and who the operator is to it: the Pod's service
account in a cluster, else a kubeconfig. One aiohttp session recipe for
kopf's watches and the operator's own calls (`operator/api.py`): one client
stack, one TLS and authentication code path.

Not kopf's own login functions, because:
- `login_with_service_account` connects to https://kubernetes.default.svc
  whatever KUBERNETES_SERVICE_HOST/PORT say (where that name does not
  resolve, every watch fails while the operator looks alive), and reads the
  token once: after the kubelet rotates it kopf holds the old one until a
  401. Here every request carries the token file's current content, re-read
  when the file changes and once more on a 401.
- `login_with_kubeconfig` reads only $KUBECONFIG and does not resolve
  relative file paths; this reads the file `--kubeconfig` names.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional

import aiohttp
import yaml

from orchestrator.serviceaccount import IdentityError, ServiceAccount, TokenFile


class CredentialsError(Exception):
    """The kubeconfig or the Pod's identity cannot be used (a message, not a traceback)."""


Handler = Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]
Middleware = Callable[[aiohttp.ClientRequest, Handler], Awaitable[aiohttp.ClientResponse]]


@dataclass
class Credentials:
    server: str  # https://host:port, no trailing slash
    tls: ssl.SSLContext
    headers: dict[str, str] = field(default_factory=dict)  # a static Authorization, if any
    middlewares: tuple[Middleware, ...] = ()  # a token file read on every request, if any
    namespace: Optional[str] = None  # the context's (or the Pod's) namespace

    def session(self) -> aiohttp.ClientSession:
        """A new session (kopf closes the one it was given when it logs in again)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.tls),
            headers=self.headers, middlewares=self.middlewares,
            # No proxy from the environment: the API server is reached directly,
            # as the official client does for in-cluster configs.
            trust_env=False,
        )


def locate(kubeconfig: Optional[str]) -> Credentials:
    """The same order as orchestrator.kube.api_client: an explicit kubeconfig
    wins over the Pod's identity; without either, $KUBECONFIG or ~/.kube/config.

    Blocking (reads files): call it before the event loop runs or in a thread."""
    if kubeconfig:
        return from_kubeconfig(Path(kubeconfig))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            return from_service_account(ServiceAccount.from_environment())
        except (IdentityError, ssl.SSLError) as exc:
            raise CredentialsError(str(exc)) from None
    env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return from_kubeconfig(Path(env[0]) if env else Path.home() / ".kube" / "config")


def from_service_account(account: ServiceAccount) -> Credentials:
    token = account.token_file("operator")
    token.token()  # unreadable: fail now, with the reason
    tls = ssl.create_default_context(cafile=str(account.ca_path))
    return Credentials(account.server.rstrip("/"), tls, middlewares=(bearer_token(token),),
                       namespace=account.namespace)


def bearer_token(token: TokenFile) -> Middleware:
    """An aiohttp client middleware: the current token on every request; on a
    401, one retry if the file holds a newer token than the one sent (safe
    for writes: the API server authenticates before it does anything)."""

    async def middleware(request: aiohttp.ClientRequest, handler: Handler) -> aiohttp.ClientResponse:
        sent = await asyncio.to_thread(token.header)  # a stat, and a read when it changed: off the loop
        request.headers["Authorization"] = sent
        response = await handler(request)
        if response.status != 401:
            token.accepted()
            return response
        if not await asyncio.to_thread(token.refused, sent):
            return response  # the caller sees the 401 (kopf logs in again)
        response.release()
        request.headers["Authorization"] = await asyncio.to_thread(token.header)
        return await handler(request)

    return middleware


def from_kubeconfig(path: Path) -> Credentials:
    """The current context of one kubeconfig file: server, CA, and a token,
    a token file, a client certificate or a username and password."""
    try:
        return _from_kubeconfig(path)
    except (OSError, ssl.SSLError, ValueError) as exc:  # an unreadable file, a bad PEM or base64
        raise CredentialsError(f"kubeconfig {path}: {exc}") from None


def _from_kubeconfig(path: Path) -> Credentials:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CredentialsError(f"cannot read kubeconfig {path}: {exc}") from None
    if not isinstance(config, Mapping):
        raise CredentialsError(f"kubeconfig {path} is not a mapping")
    base = path.parent

    def named(section: str, name: Any) -> Mapping[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, Mapping) and item.get("name") == name:
                inner = item.get(section[:-1])  # clusters -> cluster, users -> user, contexts -> context
                return inner if isinstance(inner, Mapping) else {}
        raise CredentialsError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    current = config.get("current-context")
    if not current:
        raise CredentialsError(f"kubeconfig {path} sets no current-context")
    context = named("contexts", current)
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user")) if context.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise CredentialsError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise CredentialsError(f"kubeconfig {path}: user {context.get('user')!r} uses an exec or auth-provider "
                               "plugin, which the operator does not run; give it a token or a client certificate")

    tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    ca = _pem(cluster, "certificate-authority", base)
    if ca is not None:
        tls.load_verify_locations(cadata=ca.decode("ascii"))
    if cluster.get("tls-server-name"):
        raise CredentialsError(f"kubeconfig {path}: tls-server-name is not supported")
    cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
    if cert is not None and key is not None:
        _load_cert_chain(tls, cert, key)

    headers: dict[str, str] = {}
    middlewares: tuple[Middleware, ...] = ()
    if user.get("token"):
        headers["Authorization"] = f"Bearer {user['token']}"
    elif user.get("tokenFile"):
        token = TokenFile(_resolve(str(user["tokenFile"]), base), "operator")
        token.token()
        middlewares = (bearer_token(token),)
    elif user.get("username") is not None:
        pair = f"{user['username']}:{user.get('password') or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return Credentials(server, tls, headers, middlewares, context.get("namespace"))


def _resolve(name: str, base: Path) -> Path:
    """kubeconfig file references are relative to the kubeconfig's own folder."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _pem(section: Mapping[str, Any], key: str, base: Path) -> Optional[bytes]:
    if section.get(f"{key}-data"):
        return base64.b64decode(section[f"{key}-data"])
    if section.get(key):
        return _resolve(str(section[key]), base).read_bytes()
    return None


def _load_cert_chain(tls: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl loads a client certificate only from files: write both to a private
    # temporary folder, load, and remove it at once.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        tls.load_cert_chain(str(cert_path), str(key_path))
