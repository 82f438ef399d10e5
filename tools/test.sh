#!/usr/bin/env bash
# The project's test command (README "Quick start"): installs what the tests
# need, builds the local Kubernetes control plane if it changed (cached), and
# runs the static checks (tools/check.sh: mypy, import-linter) and then every
# tier: unit, proxy (real processes), cluster (real kube-apiserver),
# image (the Dockerfile built and run with podman, installed from Debian's archive);
# the rollout tests put HAProxy (also from Debian's archive) in front of the proxies.
# Extra arguments go to pytest, e.g. `tools/test.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
tools/controlplane/build.sh
# podman, buildah, runc, mmdebstrap (a no-op when present). Without them the
# image tier is skipped, and says so in the summary: make that loud here too.
if ! tools/image/install.sh; then
  if [[ "${CI:-}" == true ]]; then
    echo "tools/test.sh: cannot install the container tools: CI must run the image tier" >&2
    exit 1
  fi
  echo "tools/test.sh: WARNING: cannot install the container tools: the image tier (tests/image) will be SKIPPED" >&2
fi

# HAProxy, the load balancer in front of the proxies in tests/cluster/test_rollout.py.
if ! tools/lb/install.sh; then
  if [[ "${CI:-}" == true ]]; then
    echo "tools/test.sh: cannot install haproxy: CI must run the rollout tests" >&2
    exit 1
  fi
  echo "tools/test.sh: WARNING: cannot install haproxy: tests/cluster/test_rollout.py will be SKIPPED" >&2
fi

# Types and layer contracts first: a failure here fails the run (set -e).
tools/check.sh
set +e
python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "tools/test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
