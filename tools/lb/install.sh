#!/usr/bin/env bash
# Install HAProxy from Debian's archive: the load balancer that stands in for
# kube-proxy in tests/cluster/test_rollout.py (rollouts under traffic).
# A no-op when it is present. Needs root (apt-get) the first time.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "tools/lb/install.sh: haproxy is missing; run as root or install it: apt-get install haproxy" >&2
  exit 1
fi
echo "tools/lb/install.sh: installing haproxy from Debian's archive" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run on the machine may hold the lock for a while: wait, do not fail.
apt_opts=(-q -o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update >/dev/null
apt-get "${apt_opts[@]}" install -y --no-install-recommends haproxy >/dev/null
