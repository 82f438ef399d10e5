# Top-level tasks. Others add their targets here; the cluster-* targets drive
# the local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager,
# built from Go modules; see docs/control-plane.md).

.PHONY: cluster-build cluster-up cluster-down

# Build etcd/kube-apiserver/kubectl/kube-controller-manager/helm into .cluster/bin
# (a no-op when tools/controlplane is unchanged).
cluster-build:
	tools/controlplane/build.sh

# Start the control plane; then: eval "$$(tools/controlplane/cluster.sh env)"
cluster-up: cluster-build
	tools/controlplane/cluster.sh up

# Stop everything cluster-up started (by PID) and delete its etcd data.
cluster-down:
	tools/controlplane/cluster.sh down

.PHONY: dev test check run
# The whole product on the local control plane: operator, two proxies, a sample
# backend and examples/endpoints.yaml. Ctrl-C stops it.
dev: cluster-build
	python tools/dev.py

# Every test tier (unit, proxy, cluster); installs and builds what they need.
test:
	tools/test.sh

# Types (mypy) and layer contracts (import-linter) alone; tools/test.sh runs them first.
check:
	tools/check.sh

# The standalone proxy on config/config.yaml (created with a sample on first run).
run:
	python -m pip install --quiet -e . && python main.py

.PHONY: chart-crds chart-lint
# The chart ships copies of crds/ (the source of truth); tests/cluster/test_chart.py
# fails when they differ.
chart-crds:
	cp crds/*.yaml charts/orchestrator/crds/

# Lint the Helm chart (helm from .cluster/bin, built by cluster-build).
chart-lint: cluster-build
	.cluster/bin/helm lint --strict charts/orchestrator
	.cluster/bin/helm lint --strict charts/orchestrator -f tests/cluster/testdata/chart/all-features.yaml
	.cluster/bin/helm lint --strict charts/orchestrator -f tests/cluster/testdata/chart/namespaces.yaml

.PHONY: image
# The container image from the Dockerfile, with podman or docker (whichever is
# present; ENGINE=docker|podman chooses). IMAGE=registry/name:tag names it
# (default localhost/orchestrator:dev). See README "Building the image".
image:
	tools/image/build.sh
