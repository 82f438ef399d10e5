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

from kubernetes import client
from kubernetes.client.exceptions import ApiException

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
    def __init__(self, api: client.ApiClient, name: str, identity: str, priority: int = 0,
                 namespace: Optional[str] = None) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.name = name
        self.identity = identity
        self.priority = priority
        self.namespace = namespace  # None: ClusterKopfPeering
        self.rivals: list[str] = []
        self.checked = False  # read at least once

    def check(self) -> list[str]:
        """Blocking: read the peering object; returns (and remembers) the live rivals."""
        obj: dict[str, Any]  # the client's methods are typed as returning `object`
        try:
            if self.namespace is None:
                obj = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
                    "kopf.dev", "v1", "clusterkopfpeerings", self.name)
            else:
                obj = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                    "kopf.dev", "v1", self.namespace, "kopfpeerings", self.name)
        except ApiException as exc:
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
