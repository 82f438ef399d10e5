"""Joining a backend's base URL with the caller's path, safely.

The scheme and host always come from the backend URL. The caller's path is
split into segments; empty segments (`//`) are dropped, `.` and `..` (also
percent-encoded) are resolved but may never climb above the backend's base
path, and any character that could change how the URL parses is
percent-encoded. Encoded slashes stay encoded inside their segment.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

# Characters allowed as-is in a path segment (RFC 3986 pchar, plus '%' so
# existing escapes pass through untouched).
_SEGMENT_SAFE = "!$&'()*+,;=:@%-._~"
# A '%' that does not start a valid escape is itself encoded, so the backend
# gets a well-formed URL that decodes to exactly what the caller sent.
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# The common case: only characters `quote` keeps as they are, no '%' (escapes),
# no '\\' (a separator). Such a path needs no work unless it has an empty or
# dot segment, which `_plain_path` also checks.
_PLAIN = re.compile(r"[A-Za-z0-9!$&'()*+,;=:@\-_~./]*").fullmatch


class UnsafePath(ValueError):
    """The path would leave the backend's base path."""


def split_base(url: str) -> tuple[str, str]:
    """Split a backend URL into its origin ("http://host:port") and base path (no trailing '/')."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin, parts.path.rstrip("/")


def _is_dot(segment: str, dots: str) -> bool:
    return segment == dots or unquote(segment) == dots


def safe_join(base_path: str, raw_path: str) -> str:
    """Return base_path + the caller's path, normalised and confined.

    `raw_path` is the part after `/orchestrator/{name}`, still percent-encoded.
    The result starts with '/' (or is exactly base_path + '/' for an empty path).
    """
    if _plain_path(raw_path):
        return base_path + "/" + raw_path
    kept: list[str] = []
    for segment in raw_path.replace("\\", "/").split("/"):
        if not segment or _is_dot(segment, "."):
            continue
        if _is_dot(segment, ".."):
            if not kept:
                raise UnsafePath("the path climbs above the backend's base path")
            kept.pop()
            continue
        if ".." in unquote(segment).replace("\\", "/").split("/"):
            # "..%2F.." is one segment to us, but a backend that decodes %2F
            # would climb: refuse rather than guess how the backend reads it.
            raise UnsafePath("the path holds an encoded '../'")
        kept.append(_STRAY_PERCENT.sub("%25", quote(segment, safe=_SEGMENT_SAFE)))
    trailing = "/" if raw_path.endswith("/") and kept else ""
    return base_path + "/" + "/".join(kept) + trailing


def _plain_path(raw_path: str) -> bool:
    """True if `safe_join` would return the path unchanged (after the base and one '/')."""
    if not _PLAIN(raw_path) or raw_path.startswith("/") or "//" in raw_path:
        return False
    if "." in raw_path:
        padded = "/" + raw_path + "/"
        if "/./" in padded or "/../" in padded:
            return False
    return True


def upstream_url(origin: str, base_path: str, raw_path: str, query: str) -> str:
    url = origin + safe_join(base_path, raw_path)
    if query:
        url += "?" + query
    return url
