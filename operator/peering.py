"""Stay frozen while another operator is alive (kopf peering, extended to our loop).

kopf pauses its own watch processing when it sees a peer of the same or a
higher priority, but the reconcile loop is ours: without this guard it would
go on writing from a frozen view (reports would look stale, statuses flip).
The peering object's status maps each operator's identity to its priority,
lifetime and last-seen time; kopf keeps ours fresh.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Mapping, Optional

from orchestrator.operator.api import ApiError, KubeApi, group_path

log = logging.getLogger(__name__)


def live_rivals(status: Optional[Mapping[str, Any]], me: str, my_priority: int,
                now: datetime.datetime) -> list[str]:
    """Identities of other operators, still alive, whose priority is not below ours."""
    rivals = []
    for identity, peer in (status or {}).items():
        if identity == me or not isinstance(peer, Mapping):
            continue
        try:
            seen = datetime.datetime.fromisoformat(str(peer["lastseen"]))
            lifetime = datetime.timedelta(seconds=int(peer.get("lifetime", 60)))
            priority = int(peer.get("priority", 0))
        except (KeyError, ValueError, TypeError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.timezone.utc)
        if seen + lifetime > now and priority >= my_priority:
            rivals.append(identity)
    return sorted(rivals)


class PeeringGuard:
    def __init__(self, api: KubeApi, name: str, identity: str, priority: int = 0,
                 namespace: Optional[str] = None) -> None:
        self.api = api
        self.name = name
        self.identity = identity
        self.priority = priority
        self.namespace = namespace  # None: ClusterKopfPeering
        self.rivals: list[str] = []
        self.checked = False  # read at least once

    async def check(self) -> list[str]:
        """Read the peering object; returns (and remembers) the live rivals."""
        if self.namespace is None:
            path = group_path("kopf.dev", "v1", "clusterkopfpeerings", name=self.name)
        else:
            path = group_path("kopf.dev", "v1", "kopfpeerings", self.namespace, self.name)
        try:
            obj = await self.api.get(path, timeout=10)
        except ApiError as exc:
            if exc.status == 404:  # no peering object: kopf runs standalone, so do we
                self.rivals, self.checked = [], True
                return self.rivals
            raise
        rivals = live_rivals(obj.get("status"), self.identity, self.priority, datetime.datetime.now(datetime.timezone.utc))
        if rivals != self.rivals:
            if rivals:
                log.warning("another operator is running (%s): pausing writes until it is gone", ", ".join(rivals))
            else:
                log.info("no other operator is running: resuming")
        self.rivals, self.checked = rivals, True
        return rivals
