"""Which headers cross the proxy and what it adds."""

from __future__ import annotations

import pytest

from orchestrator.core.failures import Failure
from orchestrator.core.headers import (CHUNKED, HOP_BY_HOP, Refused, RequestIds, request_headers, request_id_of,
                                       response_headers)


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
    out, _ = request_headers(INCOMING, "10.0.0.9", "http", b"rid")
    for hop in HOP_BY_HOP:
        assert hop not in names(out)
    assert b"x-secret-hop" not in names(out)
    assert b"host" not in names(out)  # the client library sets the backend's Host


def test_end_to_end_headers_kept_untouched_and_in_order():
    out, _ = request_headers(INCOMING, "10.0.0.9", "http", b"rid")
    assert get(out, b"authorization") == [b"Bearer abc.def"]
    assert get(out, b"x-api-key") == [b"k-123"]
    assert get(out, b"cookie") == [b"session=1; theme=dark"]
    assert get(out, b"traceparent") == [b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    assert get(out, b"accept") == [b"application/json"]
    assert get(out, b"x-custom") == [b"1", b"2"]


def test_forwarded_headers_added():
    out, _ = request_headers(INCOMING, "10.0.0.9", "https", b"rid")
    assert get(out, b"x-forwarded-for") == [b"10.0.0.9"]
    assert get(out, b"x-forwarded-proto") == [b"https"]
    assert get(out, b"x-forwarded-host") == [b"gateway.example:8000"]


def test_forwarded_for_is_appended_to_an_existing_chain():
    incoming = [(b"host", b"gw"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
                (b"x-forwarded-proto", b"spoof")]
    out, _ = request_headers(incoming, "3.3.3.3", "http", b"rid")
    assert get(out, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3"]
    assert get(out, b"x-forwarded-proto") == [b"http"]
    assert get(out, b"x-forwarded-host") == [b"gw"]


def test_request_id_kept_or_created():
    ids = RequestIds()
    assert request_id_of([(b"x-request-id", b"abc-1")], ids) == b"abc-1"
    created = request_id_of([], ids)
    assert len(created) == 32 and created != request_id_of([], ids)
    assert created[:16] != request_id_of([], RequestIds())[:16]  # each owner draws its own prefix
    assert request_id_of([(b"x-request-id", b"")], ids) != b""
    assert request_id_of([(b"x-request-id", b"x" * 500)], ids) != b"x" * 500
    out, _ = request_headers([(b"host", b"gw"), (b"x-request-id", b"old"), (b"x-request-id", b"old2")],
                             "1.2.3.4", "http", b"new")
    assert get(out, b"x-request-id") == [b"new"]  # exactly one, the one we chose


def test_response_headers_drop_hop_by_hop():
    out = response_headers([
        (b"content-type", b"text/plain"), (b"connection", b"close, x-internal"), (b"x-internal", b"1"),
        (b"transfer-encoding", b"chunked"), (b"keep-alive", b"timeout=5"), (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"), (b"www-authenticate", b"Bearer"),
    ], 200, None)
    assert out == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                   (b"www-authenticate", b"Bearer")]


# -- framing and Host: refused, never guessed at ------------------------------------------

def refusal(headers, version="1.1"):
    with pytest.raises(Refused) as err:
        request_headers(headers, "1.2.3.4", "http", b"rid", version)
    return err.value.failure, err.value.detail


@pytest.mark.parametrize("option", [b"content-length", b"Transfer-Encoding", b"host", b"TE", b"keep-alive, host"])
def test_connection_may_not_name_framing_or_routing_headers(option):
    failure, detail = refusal([(b"host", b"gw"), (b"connection", option), (b"content-length", b"5")])
    assert failure is Failure.BAD_REQUEST and "Connection" in detail


def test_framing_is_never_copied_from_the_caller():
    out, length = request_headers([(b"host", b"gw"), (b"content-length", b"12")], "1.2.3.4", "http", b"r")
    assert length == 12 and b"content-length" not in names(out)
    out, length = request_headers([(b"host", b"gw"), (b"transfer-encoding", b"Chunked")], "1.2.3.4", "http", b"r")
    assert length == CHUNKED and b"transfer-encoding" not in names(out)
    out, length = request_headers([(b"host", b"gw")], "1.2.3.4", "http", b"r")
    assert length == 0


@pytest.mark.parametrize("headers, failure", [
    ([(b"transfer-encoding", b"gzip, chunked")], Failure.UNSUPPORTED_CODING),
    ([(b"transfer-encoding", b"gzip"), (b"transfer-encoding", b"chunked")], Failure.UNSUPPORTED_CODING),
    ([(b"transfer-encoding", b"xchunked")], Failure.BAD_REQUEST),
    ([(b"transfer-encoding", b"chunked, gzip")], Failure.BAD_REQUEST),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")], Failure.BAD_REQUEST),
    ([(b"content-length", b"3"), (b"content-length", b"4")], Failure.BAD_REQUEST),
    ([(b"content-length", b"+3")], Failure.BAD_REQUEST),
    ([(b"content-length", b"3, 3")], Failure.BAD_REQUEST),
])
def test_doubtful_body_framing_is_refused(headers, failure):
    assert refusal([(b"host", b"gw"), *headers])[0] is failure


def test_transfer_encoding_in_http_1_0_is_refused():
    assert refusal([(b"transfer-encoding", b"chunked")], "1.0")[0] is Failure.BAD_REQUEST


@pytest.mark.parametrize("hosts", [[], [b"a", b"a"], [b"a", b"b"], [b"bad host"], [b"a/b"], [b"a@b"], [b""],
                                   [b"a:99999x"]])
def test_missing_repeated_or_malformed_host_is_refused(hosts):
    failure, detail = refusal([(b"host", h) for h in hosts])
    assert failure is Failure.BAD_REQUEST and "Host" in detail


@pytest.mark.parametrize("host", [b"gw", b"gw:8000", b"10.0.0.1:80", b"[::1]:8000", b"svc.ns.svc.cluster.local"])
def test_valid_hosts_pass(host):
    request_headers([(b"host", host)], "1.2.3.4", "http", b"r")


def test_http_1_0_may_omit_host():
    assert request_headers([], "1.2.3.4", "http", b"r", "1.0")[1] == 0


def test_connection_named_forwarded_for_drops_the_callers_chain_only():
    out, _ = request_headers([(b"host", b"gw"), (b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"6.6.6.6")],
                             "1.2.3.4", "http", b"r")
    assert get(out, b"x-forwarded-for") == [b"1.2.3.4"]


@pytest.mark.parametrize("status, length, expected", [
    (200, 5, [b"5"]), (204, 5, []), (304, 120, []), (200, None, []), (404, 0, [b"0"]),
])
def test_response_length_is_the_parsed_one(status, length, expected):
    out = response_headers([(b"content-length", b"999"), (b"content-length", b"999"), (b"x", b"1")], status, length)
    assert get(out, b"content-length") == expected and get(out, b"x") == [b"1"]
