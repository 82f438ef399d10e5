# Shared by tools/image/*.sh (sourced): which container engine, and its settings.
# ENGINE=docker|podman overrides the choice; podman is preferred when both exist.

IMAGE_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$IMAGE_TOOLS_DIR/containers.conf}"

pick_engine() {
  if [[ -n "${ENGINE:-}" ]]; then
    echo "$ENGINE"
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  elif command -v docker >/dev/null 2>&1; then
    echo docker
  else
    echo "tools/image: neither podman nor docker found (tools/image/install.sh installs podman)" >&2
    return 1
  fi
}
