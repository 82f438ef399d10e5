"""Which headers cross the proxy, and what it adds.

End-to-end headers (Authorization, X-API-Key, Cookie, traceparent, ...) pass
untouched: the proxy authenticates nobody. Hop-by-hop headers (RFC 9110
§7.6.1, plus any named in `Connection`) stop here. Headers arrive and leave
as ASGI-style (bytes, bytes) pairs with lower-case names.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Iterable, Optional

from orchestrator.core.failures import Failure

HeaderList = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Set by the proxy itself: Host comes from the backend URL, the message framing
# (Content-Length or chunked) from what the proxy actually forwards.
_REWRITTEN = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"content-length"})
# Every name the single pass below does not copy through as-is.
_NOT_COPIED = HOP_BY_HOP | _REWRITTEN | {b"x-request-id"}
# A `Connection` option naming one of these would strip the framing or routing
# of the message at the next hop: the classic request-smuggling lever. `te` is
# included because the only legitimate use, `TE: trailers`, asks for trailers,
# which this proxy does not relay.
_FORBIDDEN_OPTIONS = frozenset({b"content-length", b"transfer-encoding", b"host", b"te"})
# RFC 9112 §3.2 / RFC 3986 §3.2.2: reg-name, IPv4 or IP-literal, optional port.
_VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?").fullmatch
_LENGTH = re.compile(rb"[0-9]{1,18}").fullmatch

CHUNKED = -1
"""`request_body_length` for a chunked request body."""


class Refused(ValueError):
    """The request cannot be forwarded safely; `failure` says which answer the caller gets."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def check_host(hosts: list[bytes], http_version: str) -> None:
    """RFC 9112 §3.2: exactly one valid Host in HTTP/1.1 (at most one in 1.0), else 400."""
    if len(hosts) > 1:
        raise Refused(Failure.BAD_REQUEST, "the request has more than one Host header")
    if not hosts:
        if http_version == "1.0":
            return
        raise Refused(Failure.BAD_REQUEST, "an HTTP/1.1 request needs a Host header")
    if not _VALID_HOST(hosts[0]):
        raise Refused(Failure.BAD_REQUEST, "the Host header is not a valid host[:port]")


def request_body_length(length: Optional[bytes], codings: Optional[bytes], http_version: str) -> int:
    """The body the request declares: 0 (none), a byte count, or CHUNKED (RFC 9112 §6)."""
    if codings is not None:
        if http_version == "1.0":
            raise Refused(Failure.BAD_REQUEST, "an HTTP/1.0 request cannot use Transfer-Encoding")
        if length is not None:
            raise Refused(Failure.BAD_REQUEST, "the request has both Content-Length and Transfer-Encoding")
        names = [c.strip().lower() for c in codings.split(b",")]
        if names[-1] != b"chunked":
            raise Refused(Failure.BAD_REQUEST, "chunked must be the final transfer coding of a request")
        if len(names) > 1:
            raise Refused(Failure.UNSUPPORTED_CODING,
                          f"transfer coding {names[0].decode('latin-1')!r} is not supported; only chunked is")
        return CHUNKED
    if length is None:
        return 0
    if not _LENGTH(length):
        raise Refused(Failure.BAD_REQUEST, "the Content-Length header is not a number")
    return int(length)


def request_headers(
    headers: HeaderList,
    client_ip: str,
    scheme: str,
    request_id: bytes,
    http_version: str = "1.1",
) -> tuple[HeaderList, int]:
    """Headers to send upstream for one request, and the body length it declares.

    Raises `Refused` when the request's framing or Host is in doubt. The
    returned headers carry no framing of their own: the upstream client adds it.
    """
    out: HeaderList = []
    forwarded_for: Optional[bytes] = None
    hosts: list[bytes] = []
    length: Optional[bytes] = None
    codings: Optional[bytes] = None
    options: Optional[frozenset[bytes]] = None
    for name, value in headers:
        if name in _NOT_COPIED:
            if name == b"host":
                hosts.append(value)
            elif name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif name == b"content-length":
                if length is not None and length != value:
                    raise Refused(Failure.BAD_REQUEST, "the request has conflicting Content-Length headers")
                length = value
            elif name == b"transfer-encoding":
                codings = value if codings is None else codings + b", " + value
            elif name == b"connection":
                options = _connection_tokens(headers)
            continue
        out.append((name, value))
    check_host(hosts, http_version)
    body_length = request_body_length(length, codings, http_version)
    if options:
        named = options & _FORBIDDEN_OPTIONS
        if named:
            raise Refused(Failure.BAD_REQUEST,
                          f"the Connection header may not name {b', '.join(sorted(named)).decode('latin-1')}")
        out = [(n, v) for n, v in out if n not in options]
        if b"x-forwarded-for" in options:
            forwarded_for = None  # the caller asked for its chain to stop here
    return _add_forwarding(out, forwarded_for, hosts[0] if hosts else b"", client_ip, scheme, request_id), body_length


def _add_forwarding(out: HeaderList, forwarded_for: Optional[bytes], host: bytes, client_ip: str, scheme: str,
                    request_id: bytes) -> HeaderList:
    client = client_ip.encode()
    out.append((b"x-forwarded-for", forwarded_for + b", " + client if forwarded_for else client))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-request-id", request_id))
    return out


_NO_BODY_STATUS = frozenset({204, 304})


def response_headers(headers: Iterable[tuple[bytes, bytes]], status: int, length: Optional[int]) -> HeaderList:
    """Headers to send back to the caller from the backend's response.

    Framing is the proxy's own here too: the backend's Content-Length headers
    are replaced by the one length the upstream parser read (none for 204 and
    304, whose bodies are empty by definition, RFC 9110 §8.6).
    """
    headers = list(headers)
    drop = HOP_BY_HOP | {b"content-length"}
    for name, _ in headers:
        if name == b"connection":
            drop = drop | _connection_tokens(headers)
            break
    out = [(n, v) for n, v in headers if n not in drop]
    if length is not None and status not in _NO_BODY_STATUS:
        out.append((b"content-length", b"%d" % length))
    return out


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
