"""Joining a backend's base URL with the caller's path, safely.

The scheme and host always come from the backend URL. The caller's path is
split into segments; empty segments (`//`) are dropped, `.` and `..` (also
percent-encoded) are resolved but may never climb above the backend's base
path, and any character that could change how the URL parses is
percent-encoded. Encoded slashes stay encoded inside their segment.
"""

from __future__ import annotations

import ipaddress
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


LINK_LOCAL_HINT = ("link-local addresses (169.254.0.0/16, fe80::/10) host cloud metadata services and are "
                   "refused as backends unless the gateway's operator allows them (--allow-link-local / "
                   "ORCHESTRATOR_ALLOW_LINK_LOCAL, Helm value proxy.allowLinkLocal)")


def is_link_local(host: str) -> bool:
    """True for a literal address in 169.254.0.0/16 or fe80::/10 (also IPv4-mapped)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_link_local or (mapped is not None and mapped.is_link_local))


class UnsafePath(ValueError):
    """The path would leave the backend's base path."""


def split_base(url: str) -> tuple[str, str]:
    """Split a backend URL into its origin ("http://host:port") and base path (no trailing '/')."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin, parts.path.rstrip("/")


# Decoding rounds checked for a hidden dot segment or control character: a
# backend (or a framework in front of it) that decodes twice must not find one.
_DECODE_ROUNDS = 3
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decoded_forms(segment: str) -> list[str]:
    """The segment as the backend might read it after one, two, ... decodings."""
    forms = []
    current = segment
    for _ in range(_DECODE_ROUNDS):
        if "%" not in current:
            break
        current = unquote(current)
        forms.append(current)
    return forms


def _dot_kind(segment: str) -> str:
    """'.' or '..' when the segment reads as a dot segment, ignoring `;params`
    (Tomcat, Jetty and Spring read `..;x` as `..`), else ''."""
    head = segment.split(";", 1)[0]
    return head if head in (".", "..") else ""


def safe_join(base_path: str, raw_path: str) -> str:
    """Return base_path + the caller's path, normalised and confined.

    `raw_path` is the part after `/orchestrator/{name}`, still percent-encoded.
    The result starts with '/' (or is exactly base_path + '/' for an empty path).
    Refused (UnsafePath): climbing above the base path, dot segments with
    parameters, and dot segments or control characters hidden by encoding.
    """
    if _plain_path(raw_path):
        return base_path + "/" + raw_path
    kept: list[str] = []
    for segment in raw_path.replace("\\", "/").split("/"):
        if not segment:
            continue
        forms = _decoded_forms(segment)
        once = forms[0] if forms else segment
        if once in (".", ".."):
            if once == "..":
                if not kept:
                    raise UnsafePath("the path climbs above the backend's base path")
                kept.pop()
            continue
        for form in (segment, *forms):
            if _CONTROL.search(form):
                raise UnsafePath("the path holds an encoded control character")
            if any(_dot_kind(part) for part in form.replace("\\", "/").split("/")):
                # "..;x", "%252e%252e", "..%2F..": a backend that strips
                # parameters or decodes again would climb; refuse rather than
                # guess how the backend reads it.
                raise UnsafePath("the path holds a disguised '..' or '.' segment")
        kept.append(_STRAY_PERCENT.sub("%25", quote(segment, safe=_SEGMENT_SAFE)))
    trailing = "/" if raw_path.endswith("/") and kept else ""
    return base_path + "/" + "/".join(kept) + trailing


def _plain_path(raw_path: str) -> bool:
    """True if `safe_join` would return the path unchanged (after the base and one '/')."""
    if not _PLAIN(raw_path) or raw_path.startswith("/") or "//" in raw_path:
        return False
    if "." in raw_path:
        for segment in raw_path.split("/"):
            if _dot_kind(segment):
                return False
    return True


def upstream_url(origin: str, base_path: str, raw_path: str, query: str) -> str:
    url = origin + safe_join(base_path, raw_path)
    if query:
        url += "?" + query
    return url
