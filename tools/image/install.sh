#!/usr/bin/env bash
# Install the container tools the image build and tests/image need, from
# Debian's archive: podman + buildah (build and run OCI images without a
# daemon), runc (the OCI runtime), mmdebstrap (builds the Debian base rootfs).
# A no-op when they are all present. Needs root (apt-get) the first time.
set -euo pipefail
exec "$(dirname "$0")/../apt-install.sh" tools/image/install.sh podman buildah runc mmdebstrap
