"""kopf's login: the Pod's service account in a cluster, else a kubeconfig.

Not kopf's own `login_with_service_account`, for two reasons:
- it connects to https://kubernetes.default.svc whatever
  KUBERNETES_SERVICE_HOST/PORT say (where that name does not resolve, every
  watch fails while the operator looks alive); this uses the variables, as
  the official client and client-go do;
- it reads the token once, so after the kubelet rotates it kopf holds the
  old one until a 401 (and a revoked one keeps failing until then). Here
  every request carries the token file's current content, re-read when the
  file changes and once more on a 401, before kopf sees the failure.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any, Awaitable, Callable, Optional

import aiohttp
import kopf

from orchestrator.serviceaccount import IdentityError, ServiceAccount, TokenFile


async def login(settings: kopf.OperatorSettings, **kwargs: Any) -> Optional[kopf.ConnectionInfo | kopf.AiohttpSession]:
    # The same order as orchestrator.kube.api_client: an explicit kubeconfig
    # (--kubeconfig is exported as KUBECONFIG) wins over the Pod's identity.
    if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return await asyncio.to_thread(kopf.login_with_kubeconfig, settings=settings, **kwargs)
    try:
        account = await asyncio.to_thread(ServiceAccount.from_environment)
        token = account.token_file("kopf")
        await asyncio.to_thread(token.token)  # unreadable: fail now, with the reason
        tls = await asyncio.to_thread(ssl.create_default_context, cafile=str(account.ca_path))
    except (IdentityError, ssl.SSLError) as exc:
        raise kopf.PermanentError(str(exc)) from None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=tls),
        middlewares=(bearer_token(token),),
        trust_env=settings.networking.trust_env,
    )
    return kopf.AiohttpSession(server=account.server, default_namespace=account.namespace,
                               aiohttp_session=session)


Handler = Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]]


def bearer_token(token: TokenFile) -> Callable[[aiohttp.ClientRequest, Handler], Awaitable[aiohttp.ClientResponse]]:
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
            return response  # kopf invalidates the session and logs in again
        response.release()
        request.headers["Authorization"] = await asyncio.to_thread(token.header)
        return await handler(request)

    return middleware
