#!/usr/bin/env bash
# Build the control-plane binaries from this Go module into .cluster/bin/:
#   etcd, kube-apiserver, kubectl, kube-controller-manager (same k8s release),
#   and helm (its own module graph, via go install).
#
# Rebuilds only when the inputs change: the stamp holds a hash of go.mod,
# go.sum, cmd/etcd/main.go and this script (helm's version lives here too).
# GOFLAGS/GOCACHE/GOMODCACHE are left at their defaults on purpose, so the
# shared Go build cache makes rebuilds take seconds; a cold build still works
# from scratch (it only needs the Go module proxy).
#
# env: CONTROLPLANE_BIN  output dir (default <repo>/.cluster/bin)
#      WITH_KCM=0        skip kube-controller-manager
#      FORCE=1           ignore the stamp
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${CONTROLPLANE_BIN:-$ROOT/.cluster/bin}"
WITH_KCM="${WITH_KCM:-1}"
# helm v3.19 is built against client-go 0.34, the same minor as the apiserver.
HELM_VERSION="v3.19.5"

# Go is not always on PATH (e.g. a non-login shell); fall back to the usual spot.
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { echo "build.sh: Go >= 1.24 is required (not found)" >&2; exit 1; }
export PATH="$(dirname "$GO"):$PATH"

cd "$HERE"
hash="$(cat go.mod go.sum cmd/etcd/main.go build.sh | sha256sum | cut -c1-16)-kcm${WITH_KCM}"
stamp="$BIN/.stamp"
mkdir -p "$BIN"
# One build at a time: a second caller (another test run, `make cluster-up`)
# waits for the first and then finds the stamp fresh, instead of starting a
# second multi-GB compile on a 2-core machine.
exec 9>"$BIN/.lock"
if ! flock -n 9; then
  echo "build.sh: another build is running; waiting for it" >&2
  flock 9
fi
if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
  echo "control-plane binaries up to date in $BIN"
  exit 0
fi

K8S="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)" # e.g. v1.34.4
minor="${K8S#v1.}"; minor="${minor%%.*}"
# Use the release's own commit time as build date: reproducible, and honest.
build_date="$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"

# Without these, every component reports v0.0.0-master: `kubectl version`,
# /version and helm's .Capabilities.KubeVersion (chart kubeVersion checks) need
# the real one. client-go keeps its own copy of the version vars.
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$K8S -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done

# Static binaries, like upstream's release builds; no C toolchain needed.
export CGO_ENABLED=0
rm -f "$stamp"

# `nice` so a build never starves other work on a small machine. Each step is
# timed (wall seconds, peak RSS) because the figures go into docs/control-plane.md.
step() { # step <name> <command...>
  local name="$1"; shift
  echo "==> $name"
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f "==> $name: %e s wall, %M KB peak RSS" nice -n 10 "$@"
  else
    nice -n 10 "$@"
  fi
}
gobuild() { # gobuild <output name> <package>
  step "$1" go build -trimpath -ldflags "$ld" -o "$BIN/$1" "$2"
}

gobuild etcd ./cmd/etcd
gobuild kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
gobuild kubectl k8s.io/kubernetes/cmd/kubectl
if [[ "$WITH_KCM" == 1 ]]; then
  gobuild kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
fi

# helm: `go install pkg@version` ignores this go.mod, so helm's own k8s/cel-go
# requirements never leak into the apiserver's module graph (and vice versa).
GOBIN="$BIN" step helm go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

echo "$hash" >"$stamp"
echo "control-plane binaries ($K8S, helm $HELM_VERSION) in $BIN:"
ls -l "$BIN"
