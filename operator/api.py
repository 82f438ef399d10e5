"""The operator's calls to the API server, on the same stack as kopf's
watches (aiohttp, `operator/credentials.py`): JSON in, JSON out, one
`ApiError` for every answer that is not a success.

No retries inside a call and no sleeping on `Retry-After`: a kube-apiserver
that is starting answers 503 with "Retry-After: 5", and the reconcile loop
retries on its own schedule instead of being held that long.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Mapping, Optional
from urllib.parse import quote

import aiohttp

from orchestrator.operator.credentials import Credentials

MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500  # items per page of a list: the whole answer is never held at once at 10,000 objects


class ApiError(Exception):
    """The API server answered, and not with a success."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status = status
        self.reason = reason
        self.message = message


def is_outage(exc: BaseException) -> bool:
    """The API server is away or overloaded (worth a retry), as opposed to a refusal."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
                            ConnectionError, TimeoutError))


def no_answer(exc: BaseException) -> bool:
    """The API server did not answer at all (as opposed to answering 429/5xx while it starts)."""
    return is_outage(exc) and not isinstance(exc, ApiError)


def core_path(namespace: Optional[str], resource: str, name: Optional[str] = None) -> str:
    """None: every namespace (a list across the cluster)."""
    path = "/api/v1" if namespace is None else f"/api/v1/namespaces/{quote(namespace, safe='')}"
    path += f"/{resource}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def group_path(group: str, version: str, plural: str, namespace: Optional[str] = None,
               name: Optional[str] = None, subresource: Optional[str] = None) -> str:
    path = f"/apis/{group}/{version}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class KubeApi:
    def __init__(self, credentials: Credentials, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = _limit(timeout)
        self._session: Optional[aiohttp.ClientSession] = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = self.credentials.session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, params: Optional[Mapping[str, str]] = None,
                      content_type: str = "application/json", timeout: Optional[float] = None) -> Any:
        """One call; the decoded JSON answer, or ApiError."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        limit = self.timeout if timeout is None else _limit(timeout)
        async with self._open().request(method, self.credentials.server + path, data=data, params=params,
                                        headers=headers, timeout=limit, allow_redirects=False) as response:
            raw = await response.read()
            if response.status >= 300:
                raise _error(response.status, response.reason or "", raw)
            return json.loads(raw) if raw else None

    async def get(self, path: str, timeout: Optional[float] = None) -> Any:
        return await self.request("GET", path, timeout=timeout)

    async def list(self, path: str, label_selector: Optional[str] = None,
                   timeout: Optional[float] = None) -> list[dict[str, Any]]:
        """Every item, a page at a time; restarted once if the continue token expired (410)."""
        for attempt in (1, 2):
            items: list[dict[str, Any]] = []
            params = {"limit": str(LIST_PAGE)}
            if label_selector:
                params["labelSelector"] = label_selector
            try:
                while True:
                    page = await self.request("GET", path, params=params, timeout=timeout)
                    items.extend(page.get("items") or [])
                    token = (page.get("metadata") or {}).get("continue")
                    if not token:
                        return items
                    params["continue"] = token
            except ApiError as exc:
                if exc.status != 410 or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body)

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body, content_type=MERGE_PATCH)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)


def _limit(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds, connect=min(10.0, seconds))


def _error(status: int, reason: str, raw: bytes) -> ApiError:
    # The API server explains itself in a Status object; anything else is shown as it came.
    message = raw[:300].decode("utf-8", "replace")
    try:
        answer = json.loads(raw)
        if isinstance(answer, dict) and answer.get("kind") == "Status":
            message = str(answer.get("message") or "")
            reason = str(answer.get("reason") or reason)
    except ValueError:
        pass
    return ApiError(status, reason, message)
