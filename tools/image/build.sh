#!/usr/bin/env bash
# Build the project's image from its Dockerfile with podman or docker
# (`make image`). Prints the image reference.
#
#   tools/image/build.sh                    # -> localhost/orchestrator:dev
#   IMAGE=registry.example.com/platform/orchestrator:0.1.0 tools/image/build.sh
#
# The base: $PYTHON_IMAGE when set; else, where mmdebstrap is installed, the
# Debian base tools/image/base.sh builds from Debian's archive (no image
# registry needed); else the Dockerfile's default, python:3.11-slim-bookworm.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/image/lib.sh
engine="$(pick_engine)"
image="${IMAGE:-localhost/orchestrator:dev}"

args=(build --tag "$image" --file Dockerfile)
if [[ -n "${PYTHON_IMAGE:-}" ]]; then
  args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
elif command -v mmdebstrap >/dev/null 2>&1; then
  args+=(--build-arg "PYTHON_IMAGE=$(tools/image/base.sh)")
fi
if [[ "$engine" == podman ]]; then
  # chroot isolation: RUN steps need no network namespace or cgroup of their
  # own, which works on hosts (and in CI containers) where runc cannot make one.
  args+=(--isolation chroot --network host)
  # pip in the build stage trusts what this machine trusts (a company proxy's
  # CA, say); read-only and only during RUN steps: never part of a layer.
  bundle=/etc/ssl/certs/ca-certificates.crt
  [[ -f "$bundle" ]] && args+=(--volume "$bundle:$bundle:ro")
fi
echo "tools/image/build.sh: $engine ${args[*]} ." >&2
"$engine" "${args[@]}" . >&2
echo "$image"
