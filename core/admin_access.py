"""Who may use which path on which listener: the admin API's trust model.

The data plane (`/orchestrator/...`) and the probes are for every caller. The
admin API can re-point a route (and with it callers' `Authorization`
headers) anywhere, so it is an operator's tool: in standalone mode only
loopback callers and holders of the admin token get it; in cluster mode it
lives on its own port that the traffic Service does not expose. Pure logic:
the proxy's Gateway asks `decide` once per request.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Optional

from orchestrator.core.failures import Failure

PROBES = frozenset({"/readyz", "/livez"})
# Open on a standalone traffic port too: the seed's own liveness call, which
# tells no more than the probes do.
PUBLIC = PROBES | {"/health"}


class Role(enum.Enum):
    """What one listener serves."""

    ALL = "all"  # data plane + probes + admin API (standalone, one port)
    TRAFFIC = "traffic"  # data plane + probes only
    ADMIN = "admin"  # admin API, /metrics, probes


@dataclass(frozen=True)
class Policy:
    role: Role
    # None: the admin API is open to any caller that reaches this listener (a
    # cluster-mode admin port, protected by not being in the Service).
    loopback_or_token: bool = True
    token: Optional[str] = None
    # False: loopback callers need the token too (a host shared with other users).
    trust_loopback: bool = True


@dataclass(frozen=True)
class Denied:
    failure: Failure
    detail: str


HINT = ("the admin API answers loopback callers only; to use it from elsewhere start the proxy with "
        "--admin-token (env ORCHESTRATOR_ADMIN_TOKEN) and send 'Authorization: Bearer <token>', "
        "or serve it on its own listener with --admin-host/--admin-port")


def is_loopback(client_host: Optional[str]) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms; a Unix socket (no address) counts as local."""
    if not client_host:
        return True
    try:
        ip = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def bearer_matches(authorization: Optional[bytes], token: str) -> bool:
    if not authorization:
        return False
    scheme, _, credential = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credential.strip(), token.encode())


def decide(policy: Policy, path: str, client_host: Optional[str], authorization: Optional[bytes]) -> Optional[Denied]:
    """None when the request may go on; else why not. `path` is not under /orchestrator/."""
    if path in PROBES:
        return None
    if policy.role is Role.TRAFFIC:
        if path in PUBLIC and policy.loopback_or_token:  # standalone: /health stays public
            return None
        return Denied(Failure.NOT_ON_THIS_PORT,
                      "this port serves /orchestrator/{name}/... and the probes; the admin API is on the admin port")
    if policy.role is Role.ALL and path in PUBLIC:
        return None
    if not policy.loopback_or_token or (policy.trust_loopback and is_loopback(client_host)):
        return None
    if policy.token is None:
        return Denied(Failure.ADMIN_FORBIDDEN, HINT)
    if authorization is None:
        return Denied(Failure.ADMIN_UNAUTHENTICATED, "the admin API needs 'Authorization: Bearer <admin token>'")
    if not bearer_matches(authorization, policy.token):
        return Denied(Failure.ADMIN_FORBIDDEN, "the admin token is not valid")
    return None


def listener_policies(cluster_mode: bool, separate_admin: bool, token: Optional[str],
                      trust_loopback: bool = True) -> list[Policy]:
    """The policy of each listener: [ALL], or [TRAFFIC, ADMIN] with a separate admin port.

    Only a cluster-mode admin port is left open: the traffic Service does not
    expose it (and the chart's NetworkPolicy limits it), so Prometheus scrapes
    /metrics there without a token. Everywhere else, a cluster proxy serving its
    admin API on the traffic port included, the loopback-or-token rule applies:
    the registry lists every backend URL, which is not for every caller.
    """
    guarded = not (cluster_mode and separate_admin)
    if separate_admin:
        return [Policy(Role.TRAFFIC, guarded, token, trust_loopback), Policy(Role.ADMIN, guarded, token, trust_loopback)]
    return [Policy(Role.ALL, guarded, token, trust_loopback)]
