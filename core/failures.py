"""One table from each way a proxied call can fail to the answer the caller gets.

Every error the proxy itself produces is JSON of one shape:
    {"error": {"code": "...", "message": "...", "route": "...", "request_id": "..."}}
A backend's own 4xx/5xx responses are not in this table: they pass through.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Optional


class Failure(enum.Enum):
    UNKNOWN_ROUTE = "unknown_route"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BAD_PATH = "bad_path"
    DISABLED = "endpoint_disabled"
    BREAKER_OPEN = "circuit_open"
    CONNECT_ERROR = "upstream_unreachable"
    TIMEOUT = "upstream_timeout"
    PROTOCOL_ERROR = "upstream_protocol_error"
    BODY_TOO_LARGE = "request_body_error"
    HEADERS_TOO_LARGE = "request_headers_too_large"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED_CODING = "unsupported_transfer_coding"
    URI_TOO_LONG = "request_target_too_long"
    HEAD_TIMEOUT = "request_head_timeout"
    OVERLOADED = "too_many_connections"
    NOT_ON_THIS_PORT = "not_found"
    BODY_TOO_LARGE_ADMIN = "request_body_too_large"
    ADMIN_UNAUTHENTICATED = "admin_unauthenticated"
    ADMIN_FORBIDDEN = "admin_forbidden"


@dataclass(frozen=True)
class Answer:
    status: int
    message: str
    counts_against_breaker: bool  # does this outcome count as a backend failure?


TABLE: dict[Failure, Answer] = {
    Failure.UNKNOWN_ROUTE: Answer(404, "no endpoint is registered under this name", False),
    Failure.METHOD_NOT_ALLOWED: Answer(405, "this endpoint does not accept this method", False),
    Failure.BAD_PATH: Answer(400, "the request path is not allowed", False),
    Failure.DISABLED: Answer(503, "this endpoint is disabled", False),
    Failure.BREAKER_OPEN: Answer(503, "the circuit breaker for this endpoint is open", False),
    Failure.CONNECT_ERROR: Answer(502, "the backend could not be reached", True),
    Failure.TIMEOUT: Answer(504, "the backend did not answer in time", True),
    Failure.PROTOCOL_ERROR: Answer(502, "the backend sent an invalid response", True),
    Failure.BODY_TOO_LARGE: Answer(400, "the request body could not be read", False),
    Failure.HEADERS_TOO_LARGE: Answer(431, "the request headers are too large", False),
    # Framing the proxy cannot vouch for (RFC 9112 §6.1, §3.2): refused, never guessed at.
    Failure.BAD_REQUEST: Answer(400, "the request is malformed", False),
    Failure.UNSUPPORTED_CODING: Answer(501, "the request's transfer coding is not supported", False),
    Failure.URI_TOO_LONG: Answer(414, "the request target is too long", False),
    Failure.HEAD_TIMEOUT: Answer(408, "the request head did not arrive in time", False),
    Failure.OVERLOADED: Answer(503, "the proxy is at its connection limit; retry shortly", False),
    Failure.NOT_ON_THIS_PORT: Answer(404, "this port does not serve this path", False),
    Failure.BODY_TOO_LARGE_ADMIN: Answer(413, "the request body is too large", False),
    Failure.ADMIN_UNAUTHENTICATED: Answer(401, "the admin API needs a bearer token from this address", False),
    Failure.ADMIN_FORBIDDEN: Answer(403, "the admin API refused this caller", False),
}


def error_body(failure: Failure, route: str, request_id: str, detail: Optional[str] = None) -> bytes:
    answer = TABLE[failure]
    payload = {
        "error": {
            "code": failure.value,
            "status": answer.status,
            "message": detail or answer.message,
            "route": route,
            "request_id": request_id,
        }
    }
    return json.dumps(payload).encode()
