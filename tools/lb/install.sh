#!/usr/bin/env bash
# Install HAProxy from Debian's archive: the load balancer that stands in for
# kube-proxy in tests/cluster/test_rollout.py (rollouts under traffic).
# A no-op when it is present. Needs root (apt-get) the first time.
set -euo pipefail
exec "$(dirname "$0")/../apt-install.sh" tools/lb/install.sh haproxy
