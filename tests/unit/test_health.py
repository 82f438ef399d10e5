"""Health thresholds and the probe schedule, on fake time with a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from orchestrator.core.health import Health, HealthTracker, ProbeScheduler


# -- HealthTracker -------------------------------------------------------------

def test_tracker_starts_unknown_and_needs_healthy_threshold_successes():
    t = HealthTracker(healthy_threshold=2, unhealthy_threshold=3)
    assert t.state is Health.UNKNOWN
    assert t.record(True, at=1) is Health.UNKNOWN
    assert t.record(True, at=2) is Health.HEALTHY
    assert t.total_checks == 2


def test_tracker_needs_unhealthy_threshold_consecutive_failures():
    t = HealthTracker(healthy_threshold=1, unhealthy_threshold=3)
    t.record(True, at=0)
    assert t.record(False, at=1, error="HTTP 500") is Health.HEALTHY
    assert t.record(False, at=2, error="HTTP 500") is Health.HEALTHY
    assert t.record(True, at=3) is Health.HEALTHY  # the streak is broken
    for i in range(2):
        assert t.record(False, at=4 + i, error="boom") is Health.HEALTHY
    assert t.record(False, at=6, error="boom") is Health.UNHEALTHY
    assert t.last_error == "boom"
    assert t.failures == 3 and t.successes == 0


def test_tracker_recovers_after_healthy_threshold():
    t = HealthTracker(healthy_threshold=2, unhealthy_threshold=1)
    assert t.record(False, at=0, error="x") is Health.UNHEALTHY
    assert t.record(True, at=1, latency_ms=3.5) is Health.UNHEALTHY
    assert t.last_error is None and t.last_latency_ms == 3.5
    assert t.record(True, at=2) is Health.HEALTHY


# -- ProbeScheduler --------------------------------------------------------------

def run(scheduler: ProbeScheduler, start: float, end: float, step: float) -> list[tuple[float, str]]:
    """Advance fake time in `step`s; return (time, target) for every probe fired."""
    fired = []
    now = start
    while now < end:
        for target in scheduler.pop_due(now):
            fired.append((now, target))
        now = round(now + step, 6)
    return fired


def test_one_schedule_per_target():
    s = ProbeScheduler(random.Random(1))
    targets = {f"http://b{i}/health": 10.0 for i in range(50)}
    s.set_targets(targets, now=0)
    s.set_targets(dict(targets), now=0.5)  # same again: no second schedule
    assert len(s) == 50
    counts = Counter(t for _, t in run(s, 0, 30, 0.05))
    # Three intervals: each target fires about 3 times, never twice as often.
    assert set(counts) == set(targets)
    assert all(2 <= c <= 4 for c in counts.values()), counts


def test_ten_thousand_targets_do_not_fire_in_bursts():
    s = ProbeScheduler(random.Random(42))
    n, interval = 10_000, 30.0
    s.set_targets({f"http://b{i}:80/health": interval for i in range(n)}, now=0)
    fired = run(s, 0, 3 * interval, 0.05)
    windows = Counter(int(at * 10) for at, _ in fired)  # 100 ms windows
    mean = n / (interval * 10)  # ≈ 33 per window
    assert max(windows.values()) < 3 * mean, max(windows.values())
    # The first round covers every target once, spread over the whole interval.
    first = [at for at, _ in fired if at < interval]
    assert len(first) == pytest.approx(n, rel=0.02)
    assert max(Counter(int(at) for at in first).values()) < 2 * n / interval


def test_removed_targets_stop_and_added_ones_start():
    s = ProbeScheduler(random.Random(3))
    s.set_targets({"a": 1.0, "b": 1.0}, now=0)
    assert {t for _, t in run(s, 0, 2, 0.01)} == {"a", "b"}
    s.set_targets({"b": 1.0, "c": 1.0}, now=2)
    later = {t for _, t in run(s, 2, 6, 0.01)}
    assert later == {"b", "c"}
    assert s.targets() == {"b", "c"}
    s.set_targets({}, now=6)
    assert run(s, 6, 10, 0.01) == []
    assert s.next_due() is None


def test_interval_change_replaces_the_old_schedule():
    s = ProbeScheduler(random.Random(5), jitter=0.0)
    s.set_targets({"a": 10.0}, now=0)
    run(s, 0, 10, 0.01)
    s.set_targets({"a": 1.0}, now=10)
    fired = [at for at, _ in run(s, 10, 20, 0.01)]
    assert 9 <= len(fired) <= 11, fired  # every second, and no leftover 10 s slot on top
    gaps = [b - a for a, b in zip(fired, fired[1:])]
    assert all(g == pytest.approx(1.0, abs=0.02) for g in gaps)


def test_jitter_stays_within_bounds():
    s = ProbeScheduler(random.Random(9), jitter=0.1)
    s.set_targets({"a": 10.0}, now=0)
    fired = [at for at, _ in run(s, 0, 200, 0.01)]
    gaps = [b - a for a, b in zip(fired, fired[1:])]
    assert gaps and all(8.9 <= g <= 11.1 for g in gaps), gaps


def test_next_due_tells_the_loop_how_long_to_sleep():
    s = ProbeScheduler(random.Random(0))
    assert s.next_due() is None
    s.set_targets({"a": 5.0}, now=100)
    due = s.next_due()
    assert due is not None and 100 <= due <= 105
    assert s.pop_due(due - 0.001) == []
    assert s.pop_due(due) == ["a"]
    assert s.next_due() > due
