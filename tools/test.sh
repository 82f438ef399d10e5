#!/usr/bin/env bash
# The project's test command (README "Quick start"): installs what the tests
# need, builds the local Kubernetes control plane if it changed (cached), and
# runs every tier: unit, proxy (real processes), cluster (real kube-apiserver).
# Extra arguments go to pytest, e.g. `tools/test.sh tests/unit -q`.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -e ".[test]"
tools/controlplane/build.sh

set +e
python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "tools/test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
