"""Which headers cross the proxy and what it adds."""

from __future__ import annotations

from orchestrator.core.headers import HOP_BY_HOP, RequestIds, request_headers, request_id_of, response_headers


def names(headers):
    return [n for n, _ in headers]


def get(headers, name):
    return [v for n, v in headers if n == name]


INCOMING = [
    (b"host", b"gateway.example:8000"),
    (b"authorization", b"Bearer abc.def"),
    (b"x-api-key", b"k-123"),
    (b"cookie", b"session=1; theme=dark"),
    (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    (b"connection", b"keep-alive, X-Secret-Hop"),
    (b"keep-alive", b"timeout=5"),
    (b"x-secret-hop", b"drop me"),
    (b"te", b"trailers"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"proxy-authorization", b"Basic eHl6"),
    (b"proxy-connection", b"keep-alive"),
    (b"trailer", b"x-foo"),
    (b"accept", b"application/json"),
    (b"x-custom", b"1"),
    (b"x-custom", b"2"),
]


def test_hop_by_hop_dropped_including_those_named_in_connection():
    out = request_headers(INCOMING, "10.0.0.9", "http", b"rid")
    for hop in HOP_BY_HOP:
        assert hop not in names(out)
    assert b"x-secret-hop" not in names(out)
    assert b"host" not in names(out)  # the client library sets the backend's Host


def test_end_to_end_headers_kept_untouched_and_in_order():
    out = request_headers(INCOMING, "10.0.0.9", "http", b"rid")
    assert get(out, b"authorization") == [b"Bearer abc.def"]
    assert get(out, b"x-api-key") == [b"k-123"]
    assert get(out, b"cookie") == [b"session=1; theme=dark"]
    assert get(out, b"traceparent") == [b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    assert get(out, b"accept") == [b"application/json"]
    assert get(out, b"x-custom") == [b"1", b"2"]


def test_forwarded_headers_added():
    out = request_headers(INCOMING, "10.0.0.9", "https", b"rid")
    assert get(out, b"x-forwarded-for") == [b"10.0.0.9"]
    assert get(out, b"x-forwarded-proto") == [b"https"]
    assert get(out, b"x-forwarded-host") == [b"gateway.example:8000"]


def test_forwarded_for_is_appended_to_an_existing_chain():
    incoming = [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"), (b"x-forwarded-proto", b"spoof")]
    out = request_headers(incoming, "3.3.3.3", "http", b"rid")
    assert get(out, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3"]
    assert get(out, b"x-forwarded-proto") == [b"http"]
    assert get(out, b"x-forwarded-host") == []


def test_request_id_kept_or_created():
    ids = RequestIds()
    assert request_id_of([(b"x-request-id", b"abc-1")], ids) == b"abc-1"
    created = request_id_of([], ids)
    assert len(created) == 32 and created != request_id_of([], ids)
    assert created[:16] != request_id_of([], RequestIds())[:16]  # each owner draws its own prefix
    assert request_id_of([(b"x-request-id", b"")], ids) != b""
    assert request_id_of([(b"x-request-id", b"x" * 500)], ids) != b"x" * 500
    out = request_headers([(b"x-request-id", b"old"), (b"x-request-id", b"old2")], "1.2.3.4", "http", b"new")
    assert get(out, b"x-request-id") == [b"new"]  # exactly one, the one we chose


def test_response_headers_drop_hop_by_hop():
    out = response_headers([
        (b"content-type", b"text/plain"), (b"connection", b"close, x-internal"), (b"x-internal", b"1"),
        (b"transfer-encoding", b"chunked"), (b"keep-alive", b"timeout=5"), (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"), (b"www-authenticate", b"Bearer"),
    ])
    assert out == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                   (b"www-authenticate", b"Bearer")]
