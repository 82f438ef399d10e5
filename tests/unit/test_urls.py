"""Joining a backend's base path with the caller's path: never above the base."""

from __future__ import annotations

import itertools
import random
from urllib.parse import unquote

import pytest

from orchestrator.core.urls import UnsafePath, safe_join, split_base, upstream_url

JOIN_CASES = [
    ("a/b", "/api/a/b"),
    ("", "/api/"),
    ("a/", "/api/a/"),                       # trailing slash kept
    ("a//b", "/api/a/b"),                    # no double slashes
    ("a///", "/api/a/"),
    ("//evil.com/x", "/api/evil.com/x"),     # never a new authority
    ("@evil.com/x", "/api/@evil.com/x"),
    ("http://evil/x", "/api/http:/evil/x"),
    ("a/./b", "/api/a/b"),
    ("a/../b", "/api/b"),
    ("a/b/../../c", "/api/c"),
    ("a/%2e%2e/b", "/api/b"),
    ("a/%2E/b", "/api/a/b"),
    ("a\\b", "/api/a/b"),                    # backslashes are separators
    ("a%2Fb", "/api/a%2Fb"),                 # an encoded slash stays inside its segment
    ("a%20b", "/api/a%20b"),
    ("a b", "/api/a%20b"),
    ("a#b", "/api/a%23b"),
    ("a?b", "/api/a%3Fb"),
    ("users/42:edit;v=1", "/api/users/42:edit;v=1"),
    ("~me/x-y_z.json", "/api/~me/x-y_z.json"),
    ("100%", "/api/100%25"),                 # a stray '%' is encoded, valid escapes kept
    ("%zz/%41%", "/api/%25zz/%41%25"),
]

UNSAFE = [
    "..",
    "../x",
    "a/../../x",
    "%2e%2e/x",
    "%2E%2E/x",
    ".%2e/x",
    "%2e./x",
    "..%2fx",
    "..%2Fetc%2Fpasswd",
    "a/..%2f..%2fx",
    "..\\x",
    "a\\..\\..\\x",
    "..%5cx",
    "./../x",
]


@pytest.mark.parametrize("raw, expected", JOIN_CASES)
def test_safe_join(raw, expected):
    assert safe_join("/api", raw) == expected


@pytest.mark.parametrize("raw", UNSAFE)
def test_never_above_the_base(raw):
    with pytest.raises(UnsafePath):
        safe_join("/api", raw)


def test_empty_base_path():
    assert safe_join("", "") == "/"
    assert safe_join("", "x/y") == "/x/y"
    assert safe_join("", "//evil/x") == "/evil/x"
    with pytest.raises(UnsafePath):
        safe_join("", "../x")


@pytest.mark.parametrize("url, origin, base", [
    ("http://h:8080/api/", "http://h:8080", "/api"),
    ("http://h/api/v1", "http://h", "/api/v1"),
    ("https://h", "https://h", ""),
    ("https://h/", "https://h", ""),
])
def test_split_base(url, origin, base):
    assert split_base(url) == (origin, base)


def test_upstream_url_keeps_origin_base_and_query():
    assert upstream_url("http://b:81", "/api", "x/y", "q=1&r=%2F") == "http://b:81/api/x/y?q=1&r=%2F"
    assert upstream_url("http://b:81", "/api", "", "") == "http://b:81/api/"
    assert upstream_url("http://b:81", "", "//evil.com/p", "") == "http://b:81/evil.com/p"
    with pytest.raises(UnsafePath):
        upstream_url("http://b:81", "/api", "../../admin", "")


def test_random_paths_stay_under_the_base():
    tokens = ["..", ".", "", "%2e%2e", "%2E.", "a", "b%2F..", "\\", "..\\", "%2f", "@h", "http:", "x y", "%5c.."]
    rng = random.Random(7)
    for _ in range(3000):
        raw = "/".join(rng.choice(tokens) for _ in range(rng.randint(0, 6)))
        try:
            joined = safe_join("/base", raw)
        except UnsafePath:
            continue
        assert joined.startswith("/base/"), (raw, joined)
        assert "//" not in joined, (raw, joined)
        segments = joined.split("/")
        assert not any(unquote(s).replace("\\", "/").strip("/") in ("..",) or ".." in unquote(s).replace("\\", "/").split("/")
                       for s in segments), (raw, joined)
