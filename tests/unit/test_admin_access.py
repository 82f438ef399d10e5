"""core/admin_access.py: who may use which path on which listener."""

from __future__ import annotations

import pytest

from orchestrator.core.admin_access import Role, decide, listener_policies
from orchestrator.core.failures import Failure

REMOTE, LOCAL = "10.1.2.3", "127.0.0.1"


@pytest.mark.parametrize("cluster_mode", [False, True])
def test_one_port_keeps_the_admin_api_to_loopback_or_the_token(cluster_mode: bool) -> None:
    [policy] = listener_policies(cluster_mode, separate_admin=False, token="t")
    assert policy.role is Role.ALL
    assert decide(policy, "/registry/endpoints", LOCAL, None) is None
    assert decide(policy, "/registry/endpoints", REMOTE, None).failure is Failure.ADMIN_UNAUTHENTICATED
    assert decide(policy, "/registry/endpoints", REMOTE, b"Bearer t") is None
    assert decide(policy, "/readyz", REMOTE, None) is None


def test_without_a_token_a_remote_caller_gets_the_hint() -> None:
    [policy] = listener_policies(True, separate_admin=False, token=None)
    denied = decide(policy, "/metrics", REMOTE, None)
    assert denied is not None and denied.failure is Failure.ADMIN_FORBIDDEN and "--admin-port" in denied.detail


def test_a_cluster_admin_port_is_open_and_the_traffic_port_has_no_admin_api() -> None:
    traffic, admin = listener_policies(True, separate_admin=True, token=None)
    assert decide(admin, "/metrics", REMOTE, None) is None
    assert decide(traffic, "/registry/endpoints", LOCAL, None).failure is Failure.NOT_ON_THIS_PORT
    assert decide(traffic, "/livez", REMOTE, None) is None


def test_a_standalone_admin_port_still_needs_loopback_or_the_token() -> None:
    traffic, admin = listener_policies(False, separate_admin=True, token="t", trust_loopback=False)
    assert decide(admin, "/config/status", LOCAL, None).failure is Failure.ADMIN_UNAUTHENTICATED
    assert decide(admin, "/config/status", LOCAL, b"Bearer t") is None
    assert decide(traffic, "/health", REMOTE, None) is None  # the seed's liveness call stays public
