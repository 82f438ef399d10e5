"""Which proxy replicas count as alive, judged only on what the operator knows: pure.

A replica proves it is alive by its report's heartbeat. Silence is evidence of
death only while the operator could have heard the heartbeat: while the API
server is away (for the operator, so for the replicas too: they cannot write
either) nothing is concluded, and after it returns every replica gets a full
stale horizon to write again. Before a pass drops a replica it re-lists the
reports, so a watch that is down or has just reconnected is never taken for
a dead replica.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from orchestrator.core.contract import Report

log = logging.getLogger(__name__)


@dataclass
class Contact:
    """The operator's link to the API server, as its own calls and watches saw it.
    Times are wall-clock seconds (they are compared with report heartbeats)."""

    up_since: float = float("-inf")  # start of the current period of contact
    down_since: Optional[float] = None
    reason: str = ""
    outages: int = 0  # how many times contact was lost (and the watches had to reconnect)
    last_event: float = float("-inf")  # the last time a watch delivered anything

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def lost(self, now: float, reason: str) -> bool:
        """Contact failed; True when this is news (the caller logs one line)."""
        if self.down_since is not None:
            return False
        self.down_since, self.reason = now, reason
        self.outages += 1
        return True

    def back(self, now: float) -> Optional[float]:
        """Contact works; returns how long it was lost when this is news, else None."""
        if self.down_since is None:
            return None
        gone = now - self.down_since
        self.down_since, self.reason, self.up_since = None, "", now
        return gone

    def event(self, now: float) -> Optional[float]:
        """A watch delivered an event: the API server answers."""
        self.last_event = now
        return self.back(now)

    def silent_for(self, now: float) -> float:
        """How long the watches have been cut off: down, and nothing delivered since."""
        if self.down_since is None:
            return 0.0
        return now - max(self.down_since, self.last_event)


@dataclass(frozen=True)
class Freshness:
    fresh: frozenset[str]  # report names that count
    verify: bool = False  # some replica looks stale: re-list the reports before concluding
    next_check: Optional[float] = None  # wall time when a fresh replica would turn stale


@dataclass
class FreshnessRule:
    horizon: float  # seconds without a heartbeat after which a replica no longer counts

    def judge(self, reports: Iterable[Report], names: Iterable[str], now: float, contact: Contact,
              previous: Optional[frozenset[str]], verified_at: float) -> Freshness:
        """`names[i]` is the report object's name for `reports[i]`; `previous` is the
        set concluded last time (None at start)."""
        if contact.down and previous is not None:
            return Freshness(previous)  # no news is not bad news
        fresh: set[str] = set()
        verify = False
        next_check: Optional[float] = None
        for name, report in zip(names, reports):
            # Silence counts only from when the replica could have written again, for
            # the replicas that counted when contact was lost: a replica that was
            # already dead then is not brought back by the outage.
            grace = contact.up_since if previous is None or name in previous else float("-inf")
            alive_at = max(report.heartbeat, grace)
            stale_at = alive_at + self.horizon
            if now < stale_at:
                fresh.add(name)
                next_check = stale_at if next_check is None else min(next_check, stale_at)
            elif previous is not None and name in previous and verified_at < stale_at:
                # It counted until now: only a listing made after it turned stale can drop it.
                fresh.add(name)
                verify = True
        return Freshness(frozenset(fresh), verify, next_check)
