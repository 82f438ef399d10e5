"""The operator's liveness rule and its digest of kopf's retry errors (operator/probes.py, freshness.Contact)."""

from __future__ import annotations

import logging

from orchestrator.operator.freshness import Contact
from orchestrator.operator.probes import KopfRetryFilter, alive


def test_liveness_fails_only_after_the_watches_are_cut_off_longer_than_the_bound() -> None:
    contact = Contact()
    assert alive(contact, 1000.0, bound=60)  # idle but connected: alive
    assert contact.lost(1000.0, "connection refused")
    assert not contact.lost(1001.0, "connection refused")  # not news: no second log line
    assert alive(contact, 1060.0, bound=60)
    assert not alive(contact, 1060.5, bound=60)
    assert contact.event(1061.0) == 61.0  # a watch delivered: back, and how long it was away
    assert alive(contact, 1061.0, bound=60) and contact.up_since == 1061.0 and contact.outages == 1


def test_an_event_during_a_failing_spell_resets_the_silence() -> None:
    contact = Contact()
    contact.lost(0.0, "x")
    contact.last_event = 50.0  # delivered while our own calls were failing
    assert contact.silent_for(100.0) == 50.0


def record(name: str, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, None)


def test_kopf_retry_errors_become_one_call_and_are_dropped() -> None:
    seen: list[str] = []
    f = KopfRetryFilter(seen.append)
    attempt = ("Request attempt #3/9 failed; will retry: GET https://127.0.0.1:6443/api/v1/configmaps?watch=true"
               " -> ClientConnectorError('Connection refused')")
    assert f.filter(record("kopf._cogs.clients.watching", attempt)) is False
    assert seen == ["ClientConnectorError('Connection refused')"]
    assert f.filter(record("kopf._core.reactor.running", "Unexpected error")) is True  # the unexpected stays
    assert f.filter(record("orchestrator.operator", "Request attempt #1 failed")) is True  # not kopf's


def test_errors_that_did_get_an_answer_are_one_line_per_quiet_period(caplog) -> None:
    seen: list[str] = []
    now = [0.0]
    f = KopfRetryFilter(seen.append, quiet=30, clock=lambda: now[0])
    busy = "Request attempt #1/9 failed; will retry: GET /apis/x -> APITooManyRequestsError('storage is (re)initializing')"
    with caplog.at_level(logging.WARNING, logger="orchestrator.operator"):
        for t in (0.0, 1.0, 29.0, 31.0):
            now[0] = t
            assert f.filter(record("kopf._cogs.clients.watching", busy)) is False
    assert seen == []  # it answered: not an outage
    assert [r.getMessage().startswith("API server answered with an error") for r in caplog.records] == [True, True]
