"""Active health checking as plain logic: thresholds and a probe schedule.

`HealthTracker` turns probe results into Healthy/Unhealthy with hysteresis.
`ProbeScheduler` decides *when* each distinct target is probed: one schedule
per target URL however many routes share it, a random first offset and
per-round jitter so thousands of targets never fire in bursts. The I/O (the
actual HTTP probe) lives in the proxy; here time is a number passed in.
"""

from __future__ import annotations

import enum
import heapq
import random
from dataclasses import dataclass, field
from typing import Optional


class Health(str, enum.Enum):
    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    DISABLED = "Disabled"


class HealthTracker:
    """Consecutive-result thresholds: `healthy_threshold` successes in a row
    make a target Healthy, `unhealthy_threshold` failures in a row Unhealthy."""

    __slots__ = ("healthy_threshold", "unhealthy_threshold", "state", "successes", "failures",
                 "last_checked_at", "last_error", "last_latency_ms", "total_checks")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.state = Health.UNKNOWN
        self.successes = 0
        self.failures = 0
        self.last_checked_at: Optional[float] = None
        self.last_error: Optional[str] = None
        self.last_latency_ms: Optional[float] = None
        self.total_checks = 0

    def record(self, ok: bool, at: float, latency_ms: Optional[float] = None, error: Optional[str] = None) -> Health:
        self.total_checks += 1
        self.last_checked_at = at
        self.last_latency_ms = latency_ms
        if ok:
            self.successes += 1
            self.failures = 0
            self.last_error = None
            if self.successes >= self.healthy_threshold:
                self.state = Health.HEALTHY
        else:
            self.failures += 1
            self.successes = 0
            self.last_error = error
            if self.failures >= self.unhealthy_threshold:
                self.state = Health.UNHEALTHY
        return self.state


@dataclass(order=True)
class _Slot:
    due: float
    target: str = field(compare=False)
    generation: int = field(compare=False)


class ProbeScheduler:
    """A heap of due times, one entry per target.

    `jitter` is the fraction of the interval by which each round may move
    (0.1 = ±10 %), so targets that started together drift apart.
    """

    def __init__(self, rng: Optional[random.Random] = None, jitter: float = 0.1) -> None:
        self._rng = rng or random.Random()
        self._jitter = jitter
        self._heap: list[_Slot] = []
        self._intervals: dict[str, float] = {}
        self._generation: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._intervals)

    def targets(self) -> set[str]:
        return set(self._intervals)

    def set_targets(self, intervals: dict[str, float], now: float) -> None:
        """Make the schedule cover exactly these targets (target → interval)."""
        for target in list(self._intervals):
            if target not in intervals:
                del self._intervals[target]
                self._generation[target] = self._generation.get(target, 0) + 1  # orphan heap slots
        for target, interval in intervals.items():
            old = self._intervals.get(target)
            if old == interval:
                continue
            self._intervals[target] = interval
            gen = self._generation.get(target, 0) + 1
            self._generation[target] = gen
            # A new target's first probe lands anywhere in its first interval.
            heapq.heappush(self._heap, _Slot(now + self._rng.uniform(0, interval), target, gen))

    def pop_due(self, now: float) -> list[str]:
        """Targets whose probe is due, each rescheduled one (jittered) interval later."""
        due = []
        while self._heap and self._heap[0].due <= now:
            slot = heapq.heappop(self._heap)
            if self._generation.get(slot.target) != slot.generation or slot.target not in self._intervals:
                continue
            due.append(slot.target)
            interval = self._intervals[slot.target]
            spread = interval * self._jitter
            next_due = max(now, slot.due + interval + self._rng.uniform(-spread, spread))
            heapq.heappush(self._heap, _Slot(next_due, slot.target, slot.generation))
        return due

    def next_due(self) -> Optional[float]:
        while self._heap and (
            self._heap[0].target not in self._intervals
            or self._generation.get(self._heap[0].target) != self._heap[0].generation
        ):
            heapq.heappop(self._heap)
        return self._heap[0].due if self._heap else None
