#!/usr/bin/env bash
# Build the image's base: Debian bookworm (minbase) with Python 3.11, the same
# Debian and Python as python:3.11-slim-bookworm, from Debian's archive with
# mmdebstrap, imported as localhost/orchestrator-base:<hash>. The hash covers
# this script (suite, mirrors, packages, options), so an unchanged script
# reuses the imported image (~30 s otherwise). Prints the image reference.
#
#   tools/image/base.sh            # -> localhost/orchestrator-base:3f2a...
set -euo pipefail
source "$(dirname "$0")/lib.sh"
engine="$(pick_engine)"

suite=bookworm
mirrors=(
  "deb http://deb.debian.org/debian $suite main"
  "deb http://deb.debian.org/debian $suite-updates main"
  "deb http://deb.debian.org/debian-security $suite-security main"
)
# python3-venv + python3-pip: the Dockerfile's build stage makes a virtualenv;
# passwd: groupadd/useradd for the non-root user; ca-certificates: https to
# backends.
packages=python3,python3-venv,python3-pip,python-is-python3,passwd,ca-certificates
# What a container never reads: documentation, man pages, translations.
dpkg_opts=(
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
)

hash="$(sha256sum "$0" | cut -c1-16)"
ref="localhost/orchestrator-base:$hash"
if "$engine" image inspect "$ref" >/dev/null 2>&1; then
  echo "$ref"
  exit 0
fi

command -v mmdebstrap >/dev/null 2>&1 || {
  echo "tools/image/base.sh: mmdebstrap not found (tools/image/install.sh installs it)" >&2
  exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "tools/image/base.sh: building $ref with mmdebstrap ($suite, $packages)" >&2
# The merged-usr hook lays out /usr itself: without it apt satisfies that
# with the usrmerge package, which brings 47 MB of perl into the image.
mmdebstrap --quiet --variant=minbase --include="$packages" "${dpkg_opts[@]}" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  "$suite" "$work/rootfs.tar" "${mirrors[@]}" >&2
# The same environment python:3.11-slim sets: a PATH (the Dockerfile extends
# it) and a UTF-8 locale that needs no locale files.
"$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$work/rootfs.tar" "$ref" >/dev/null
echo "$ref"
