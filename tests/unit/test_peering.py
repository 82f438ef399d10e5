"""Who else is alive in the peering object (operator/peering.py): pure."""

from __future__ import annotations

import datetime

from orchestrator.operator.peering import live_rivals

NOW = datetime.datetime(2026, 11, 30, 12, 0, 0, tzinfo=datetime.timezone.utc)


def seen(seconds_ago: float, priority: int = 0, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat()}


def test_a_live_peer_of_equal_or_higher_priority_is_a_rival() -> None:
    status = {"me": seen(1), "twin": seen(5), "boss": seen(5, priority=10), "junior": seen(5, priority=-1)}
    assert live_rivals(status, "me", 0, NOW) == ["boss", "twin"]


def test_expired_and_malformed_peers_are_ignored() -> None:
    status = {"gone": seen(61), "broken": {"priority": 0}, "junk": "x", "naive": {"lastseen": "2026-11-30T11:59:50"}}
    assert live_rivals(status, "me", 0, NOW) == ["naive"]
    assert live_rivals(None, "me", 0, NOW) == []
