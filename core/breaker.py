"""Circuit breaker: an explicit state machine with an injected clock.

    Closed --(failure_threshold consecutive failures)--> Open
    Open --(reset_timeout elapsed, on the next call)--> HalfOpen
    HalfOpen --(a trial call succeeds)--> Closed
    HalfOpen --(a trial call fails)--> Open

In HalfOpen at most `half_open_max_calls` trial calls run at once; the rest
are rejected as if Open. The clock is a parameter so tests run on fake time,
and every transition is passed to `on_transition` (metrics, reports, logs).
"""

from __future__ import annotations

import enum
import time
from typing import Callable, Optional

from orchestrator.core.model import BreakerSettings


class State(str, enum.Enum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


class Admission(enum.Enum):
    REJECTED = 0
    NORMAL = 1
    TRIAL = 2  # a HalfOpen probe call: its outcome decides the next state


Clock = Callable[[], float]
TransitionHook = Callable[[State, State], None]


class CircuitBreaker:
    __slots__ = (
        "settings", "_clock", "_on_transition", "state", "consecutive_failures",
        "opened_at", "trials_in_flight", "total_calls", "total_failures",
        "total_rejected", "last_failure_at", "last_transition_at",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Clock = time.monotonic,
        on_transition: Optional[TransitionHook] = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.trials_in_flight = 0
        self.total_calls = 0
        self.total_failures = 0
        self.total_rejected = 0
        self.last_failure_at: Optional[float] = None
        self.last_transition_at: Optional[float] = None

    def acquire(self) -> Admission:
        """Ask to make one call. Every admitted call must be `release`d."""
        if self.state is State.CLOSED:
            self.total_calls += 1
            return Admission.NORMAL
        if self.state is State.OPEN:
            if self._clock() - self.opened_at < self.settings.reset_timeout_seconds:
                self.total_rejected += 1
                return Admission.REJECTED
            self._move(State.HALF_OPEN)
        if self.trials_in_flight >= self.settings.half_open_max_calls:
            self.total_rejected += 1
            return Admission.REJECTED
        self.trials_in_flight += 1
        self.total_calls += 1
        return Admission.TRIAL

    def release(self, admission: Admission, success: Optional[bool]) -> None:
        """Report the outcome of an admitted call; None means "no verdict"
        (the caller went away before the backend answered)."""
        if admission is Admission.TRIAL:
            self.trials_in_flight -= 1
        if success is None:
            return
        if success:
            self.consecutive_failures = 0
            if admission is Admission.TRIAL and self.state is State.HALF_OPEN:
                self._move(State.CLOSED)
            return
        self.total_failures += 1
        self.last_failure_at = self._clock()
        if admission is Admission.TRIAL and self.state is State.HALF_OPEN:
            self._open()
            return
        if self.state is State.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.settings.failure_threshold:
                self._open()

    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it would now)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self.settings.reset_timeout_seconds - (self._clock() - self.opened_at))

    def current_state(self) -> State:
        """The state as a caller would meet it now (Open past its timeout reads HalfOpen)."""
        if self.state is State.OPEN and self.retry_after() == 0.0:
            return State.HALF_OPEN
        return self.state

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.current_state().value,
            "consecutive_failures": self.consecutive_failures,
            "failure_threshold": self.settings.failure_threshold,
            "reset_timeout": self.settings.reset_timeout_seconds,
            "half_open_max_calls": self.settings.half_open_max_calls,
            "trials_in_flight": self.trials_in_flight,
            "total_calls": self.total_calls,
            "total_failures": self.total_failures,
            "total_rejected": self.total_rejected,
            "retry_after_seconds": round(self.retry_after(), 3),
        }

    def _open(self) -> None:
        self.opened_at = self._clock()
        self._move(State.OPEN)

    def _move(self, new: State) -> None:
        old, self.state = self.state, new
        self.last_transition_at = self._clock()
        if new is State.CLOSED:
            self.consecutive_failures = 0
        if self._on_transition is not None and old is not new:
            self._on_transition(old, new)
