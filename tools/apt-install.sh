#!/usr/bin/env bash
# Install Debian packages whose commands are missing, from Debian's archive; a
# no-op when every command is present. Needs root (apt-get) the first time.
# Usage: tools/apt-install.sh CALLER PACKAGE...  (each package provides the
# command of its own name). Shared by tools/image/install.sh and tools/lb/install.sh.
set -euo pipefail

caller=$1
shift
packages=("$@")
missing=()
for tool in "${packages[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "$caller: missing ${missing[*]}; run as root or install: apt-get install ${packages[*]}" >&2
  exit 1
fi
echo "$caller: installing ${packages[*]} from Debian's archive" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run on the machine may hold the lock for a while: wait, do not fail.
apt_opts=(-q -o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update >/dev/null
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${packages[@]}" >/dev/null
