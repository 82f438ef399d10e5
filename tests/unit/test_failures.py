"""Every way a proxied call can fail has exactly one answer."""

import json

import pytest

from orchestrator.core.failures import TABLE, Failure, error_body


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_has_a_table_entry(failure):
    assert failure in TABLE, f"{failure} has no entry in failures.TABLE"
    answer = TABLE[failure]
    assert 400 <= answer.status < 600
    assert answer.message


def test_table_has_no_stray_entries():
    assert set(TABLE) == set(Failure)


def test_error_body_shape():
    body = json.loads(error_body(Failure.BREAKER_OPEN, "svc", "rid-1"))
    assert body == {"error": {"code": "circuit_open", "status": 503, "message": TABLE[Failure.BREAKER_OPEN].message,
                              "route": "svc", "request_id": "rid-1"}}
    assert json.loads(error_body(Failure.TIMEOUT, "svc", "r", "slow"))["error"]["message"] == "slow"


def test_only_backend_failures_count_against_the_breaker():
    counting = {f for f, a in TABLE.items() if a.counts_against_breaker}
    assert counting == {Failure.CONNECT_ERROR, Failure.TIMEOUT, Failure.PROTOCOL_ERROR}
