"""kopf's login: the operator's own credentials (operator/credentials.py), so
kopf's watches and the operator's calls share one client stack."""

from __future__ import annotations

from typing import Any

import kopf

from orchestrator.operator.credentials import Credentials


def login_handler(credentials: Credentials) -> Any:
    """A kopf login handler that hands kopf a fresh session each time it logs in
    (kopf closes the session it held when the API server refuses it)."""

    async def login(**_: Any) -> kopf.AiohttpSession:
        return kopf.AiohttpSession(server=credentials.server, default_namespace=credentials.namespace,
                                   aiohttp_session=credentials.session())

    return login
