"""Which headers cross the proxy, and what it adds.

End-to-end headers (Authorization, X-API-Key, Cookie, traceparent, ...) pass
untouched: the proxy authenticates nobody. Hop-by-hop headers (RFC 9110
§7.6.1, plus any named in `Connection`) stop here. Headers arrive and leave
as ASGI-style (bytes, bytes) pairs with lower-case names.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable, Optional

HeaderList = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Set by the proxy itself (Host comes from the backend URL).
_REWRITTEN = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Every name the single pass below does not copy through as-is.
_NOT_COPIED = HOP_BY_HOP | _REWRITTEN | {b"x-request-id"}


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def request_headers(
    headers: HeaderList,
    client_ip: str,
    scheme: str,
    request_id: bytes,
) -> HeaderList:
    """Headers to send upstream for one request."""
    out: HeaderList = []
    forwarded_for: Optional[bytes] = None
    host = b""
    for name, value in headers:
        if name in _NOT_COPIED:
            if name == b"connection":
                # Rare: it may name more headers to drop, which can affect every
                # rule below; take the general path.
                return _request_headers_general(headers, client_ip, scheme, request_id)
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif name == b"host":
                host = value
            continue
        out.append((name, value))
    return _add_forwarding(out, forwarded_for, host, client_ip, scheme, request_id)


def _request_headers_general(headers: HeaderList, client_ip: str, scheme: str, request_id: bytes) -> HeaderList:
    extra = _connection_tokens(headers)
    out: HeaderList = []
    forwarded_for: Optional[bytes] = None
    host = b""
    for name, value in headers:
        if name in HOP_BY_HOP or name in extra:
            continue
        if name in _REWRITTEN:
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif name == b"host":
                host = value
            continue
        if name == b"x-request-id":
            continue
        out.append((name, value))
    return _add_forwarding(out, forwarded_for, host, client_ip, scheme, request_id)


def _add_forwarding(out: HeaderList, forwarded_for: Optional[bytes], host: bytes, client_ip: str, scheme: str,
                    request_id: bytes) -> HeaderList:
    client = client_ip.encode()
    out.append((b"x-forwarded-for", forwarded_for + b", " + client if forwarded_for else client))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-request-id", request_id))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> HeaderList:
    """Headers to send back to the caller from the backend's response."""
    headers = list(headers)
    drop = HOP_BY_HOP
    for name, _ in headers:
        if name == b"connection":
            extra = _connection_tokens(headers)
            if not extra <= HOP_BY_HOP:  # usually just "keep-alive" or "close"
                drop = HOP_BY_HOP | extra
            break
    return [(n, v) for n, v in headers if n not in drop]


class RequestIds:
    """New request ids: a random prefix and a counter, 32 hex digits. Unique like
    uuid4 (64 random bits per instance, never repeating within one) at a
    fraction of its cost. The proxy's forwarder owns one."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode()
        self._counter = itertools.count(1)

    def new(self) -> bytes:
        return b"%s%016x" % (self._prefix, next(self._counter))


def request_id_of(headers: HeaderList, ids: RequestIds) -> bytes:
    """The caller's X-Request-ID if it is sane, otherwise a new one."""
    for name, value in headers:
        if name == b"x-request-id" and 0 < len(value) <= 200 and value.isascii():
            return value
    return ids.new()
