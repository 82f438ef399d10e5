#!/usr/bin/env bash
# Install the container tools the image build and tests/image need, from
# Debian's archive: podman + buildah (build and run OCI images without a
# daemon), runc (the OCI runtime), mmdebstrap (builds the Debian base rootfs).
# A no-op when they are all present. Needs root (apt-get) the first time.
set -euo pipefail

packages=(podman buildah runc mmdebstrap)
missing=()
for tool in podman buildah runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "tools/image/install.sh: missing ${missing[*]}; run as root or install: apt-get install ${packages[*]}" >&2
  exit 1
fi
echo "tools/image/install.sh: installing ${packages[*]} from Debian's archive" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run on the machine holds the lock for a while: wait, do not fail.
apt_opts=(-q -o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update >/dev/null
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${packages[@]}" >/dev/null
