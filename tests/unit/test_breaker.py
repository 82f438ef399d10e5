"""The circuit breaker state machine, on a fake clock."""

from __future__ import annotations

import pytest

from orchestrator.core.breaker import Admission, CircuitBreaker, State
from orchestrator.core.model import BreakerSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock, threshold=3, reset=10.0, half_open=2):
    moves: list[tuple[State, State]] = []
    breaker = CircuitBreaker(
        BreakerSettings(failure_threshold=threshold, reset_timeout_seconds=reset, half_open_max_calls=half_open),
        clock=clock, on_transition=lambda old, new: moves.append((old, new)),
    )
    return breaker, moves


def fail(breaker, times=1):
    for _ in range(times):
        adm = breaker.acquire()
        assert adm is not Admission.REJECTED
        breaker.release(adm, False)


def trip(breaker, clock):
    fail(breaker, breaker.settings.failure_threshold)
    assert breaker.state is State.OPEN


def test_closed_admits_and_opens_after_threshold_consecutive_failures(clock):
    breaker, moves = make(clock, threshold=3)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 2
    fail(breaker)
    assert breaker.state is State.OPEN
    assert moves == [(State.CLOSED, State.OPEN)]


def test_success_resets_the_consecutive_count(clock):
    breaker, moves = make(clock, threshold=3)
    fail(breaker, 2)
    adm = breaker.acquire()
    breaker.release(adm, True)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    assert moves == []


def test_open_rejects_and_reports_retry_after(clock):
    breaker, _ = make(clock, reset=10.0)
    trip(breaker, clock)
    assert breaker.acquire() is Admission.REJECTED
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.advance(4)
    assert breaker.acquire() is Admission.REJECTED
    assert breaker.retry_after() == pytest.approx(6.0)
    assert breaker.total_rejected == 2
    assert breaker.current_state() is State.OPEN


def test_open_moves_to_half_open_after_reset_timeout(clock):
    breaker, moves = make(clock, reset=10.0)
    trip(breaker, clock)
    clock.advance(10.0)
    assert breaker.current_state() is State.HALF_OPEN  # what a caller would meet
    assert breaker.acquire() is Admission.TRIAL
    assert breaker.state is State.HALF_OPEN
    assert moves == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_half_open_admits_at_most_max_concurrent_trials(clock):
    breaker, _ = make(clock, half_open=2)
    trip(breaker, clock)
    clock.advance(60)
    first, second = breaker.acquire(), breaker.acquire()
    assert (first, second) == (Admission.TRIAL, Admission.TRIAL)
    assert breaker.acquire() is Admission.REJECTED
    assert breaker.trials_in_flight == 2
    assert breaker.retry_after() == 0.0
    # A trial that ends without a verdict (caller went away) frees its slot.
    breaker.release(first, None)
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire() is Admission.TRIAL


def test_half_open_success_closes(clock):
    breaker, moves = make(clock)
    trip(breaker, clock)
    clock.advance(60)
    adm = breaker.acquire()
    breaker.release(adm, True)
    assert breaker.state is State.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.trials_in_flight == 0
    assert moves[-1] == (State.HALF_OPEN, State.CLOSED)
    assert breaker.acquire() is Admission.NORMAL


def test_half_open_failure_reopens_with_a_fresh_timeout(clock):
    breaker, moves = make(clock, reset=10.0)
    trip(breaker, clock)
    clock.advance(15)
    adm = breaker.acquire()
    breaker.release(adm, False)
    assert breaker.state is State.OPEN
    assert moves[-1] == (State.HALF_OPEN, State.OPEN)
    assert breaker.retry_after() == pytest.approx(10.0)
    assert breaker.acquire() is Admission.REJECTED


def test_a_late_normal_call_does_not_decide_half_open(clock):
    breaker, _ = make(clock, threshold=1)
    slow = breaker.acquire()            # admitted while Closed
    fail(breaker)                       # another call trips it
    clock.advance(60)
    trial = breaker.acquire()
    assert trial is Admission.TRIAL
    breaker.release(slow, True)         # the old call's success is not a trial result
    assert breaker.state is State.HALF_OPEN
    breaker.release(trial, True)
    assert breaker.state is State.CLOSED


def test_no_verdict_counts_nothing(clock):
    breaker, _ = make(clock, threshold=1)
    adm = breaker.acquire()
    breaker.release(adm, None)
    assert breaker.state is State.CLOSED
    assert breaker.total_failures == 0


def test_snapshot_shape(clock):
    breaker, _ = make(clock)
    trip(breaker, clock)
    snap = breaker.snapshot()
    assert snap["state"] == "Open"
    assert snap["total_failures"] == 3
    assert snap["retry_after_seconds"] == 10.0
