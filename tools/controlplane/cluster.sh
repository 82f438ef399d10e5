#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, the way envtest runs one:
# etcd + kube-apiserver (+ kube-controller-manager when built), no kubelet,
# no containers. Binaries come from ./build.sh (in .cluster/bin).
#
#   cluster.sh up     start on free 127.0.0.1 ports, wait for /readyz
#   cluster.sh down   stop what `up` started (by PID) and delete etcd's data
#   cluster.sh env    print `export KUBECONFIG=... PATH=...` (eval it)
#   cluster.sh status exit 0 if the apiserver answers /readyz
#   cluster.sh apiserver-kill   SIGKILL kube-apiserver (an outage; etcd keeps the data)
#   cluster.sh apiserver-start  start it again with the same flags, wait for /readyz
#
# env: CLUSTER_DIR        state dir (default <repo>/.cluster); `up` writes
#                         $CLUSTER_DIR/kubeconfig and $CLUSTER_DIR/run/*
#      CONTROLPLANE_BIN   binaries (default <repo>/.cluster/bin)
#      WITH_KCM=0|1       start kube-controller-manager (default: 1 if built)
#      CLUSTER_OWNER_PID  stop the plane automatically when this PID exits
#                         (the pytest fixture sets it, so even a SIGKILLed
#                         test run leaves no etcd/apiserver behind)
#      READY_TIMEOUT      seconds to wait for readiness (default 60)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${CONTROLPLANE_BIN:-$ROOT/.cluster/bin}"
# Resolved: `alive` compares it with /proc/PID/exe, which is always the real path
# (with a symlinked bin dir, as in a git worktree, `down` stopped nothing).
BIN="$(cd "$BIN" 2>/dev/null && pwd -P || echo "$BIN")"
DIR="${CLUSTER_DIR:-$ROOT/.cluster}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
RUN="$DIR/run"   # everything of one running plane: pids, pki, etcd data, logs
KUBECONFIG_OUT="$DIR/kubeconfig"
READY_TIMEOUT="${READY_TIMEOUT:-60}"

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# True if pid file $1 names a live process started from our $BIN (guards
# against signalling an unrelated process that reused a stale PID).
alive() {
  local pidfile="$RUN/$1.pid" pid exe
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  # The watchdog is a bash subshell, not one of our binaries.
  [[ "$1" == watchdog || "$exe" == "$BIN/"* ]]
}

# stop <name...>: SIGTERM all at once (each takes 1-3 s to shut down
# gracefully; in parallel that's the time of the slowest, not the sum), wait
# up to 10 s, then SIGKILL whatever is left. Only PIDs that `alive` confirms.
stop() {
  local name pids=() pid i
  for name in "$@"; do
    if alive "$name"; then
      pid="$(cat "$RUN/$name.pid")"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < 200; i++)); do
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && break
      pid=""
    done
    [[ -z "${pid:-}" ]] && break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 10 s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in "$@"; do rm -f "$RUN/$name.pid"; done
}

down() {
  [[ -d "$RUN" ]] || { log "nothing running in $DIR"; return 0; }
  # The watchdog first, so it doesn't race us.
  stop watchdog
  stop kube-controller-manager kube-apiserver etcd
  # etcd's data is throwaway; logs and certs stay for post-mortems until next `up`.
  rm -rf "$RUN/etcd-data" "$KUBECONFIG_OUT"
  log "stopped"
}

# Three distinct free loopback ports, picked at random from 20000-31999: below
# the kernel's ephemeral range (32768+), so no port chosen by bind(0) -- an
# outgoing connection, another test's server -- can take them meanwhile; and
# not in use by anything now (ss lists every TCP socket). A tiny race with
# another starter remains; `up` then fails loudly, with the server's log.
free_ports() {
  local used ports=() p
  used=" $(ss -Htan | awk '{n = split($4, a, ":"); print a[n]}' | sort -u | tr '\n' ' ') "
  while ((${#ports[@]} < 3)); do
    p=$((20000 + RANDOM % 12000))
    [[ "$used" == *" $p "* || " ${ports[*]} " == *" $p "* ]] && continue
    ports+=("$p")
  done
  echo "${ports[*]}"
}

# wait_for <what> <pid-name> <command...>: poll every 50 ms; fail early if the
# process died (and show its log) instead of waiting for the timeout.
wait_for() {
  local what="$1" name="$2" deadline=$((SECONDS + READY_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      log "$name exited while waiting for $what; last log lines:"
      tail -n 30 "$RUN/$name.log" >&2 || true
      down
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${READY_TIMEOUT}s waiting for $what; last $name log lines:"
      tail -n 30 "$RUN/$name.log" >&2 || true
      down
      exit 1
    fi
    sleep 0.05
  done
}

# start <name> <args...>: run $BIN/<name> detached (own session, so a Ctrl-C
# in the caller's terminal doesn't hit it half-way; `down` stops it by PID).
start() {
  local name="$1" pid i
  shift
  # 8>&-: the server must not inherit (and so hold) our lock on $DIR/.lock.
  setsid "$BIN/$name" "$@" >"$RUN/$name.log" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "$pid" >"$RUN/$name.pid"
  # Until the exec has happened, /proc/$pid/exe still names bash or setsid and
  # `alive` would take the starting process for a dead one (seen as "exited
  # while waiting" with an empty log, and the server left running). Wait for
  # the exec, or for its death.
  for i in $(seq 1 250); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == "$BIN/"* ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.02
  done
}

write_kubeconfig() { # write_kubeconfig <file> <user> <token>
  local ca
  ca="$(base64 -w0 "$RUN/pki/apiserver.crt")"
  (
    umask 077 # holds a bearer token
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: orchestrator-test
  cluster:
    server: $SERVER
    certificate-authority-data: $ca
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2@orchestrator-test
  context:
    cluster: orchestrator-test
    user: $2
current-context: $2@orchestrator-test
EOF
  )
}

up() {
  local b
  for b in etcd kube-apiserver; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b missing: run tools/controlplane/build.sh (make cluster-build)"
  done
  if alive kube-apiserver || alive etcd; then
    die "already running in $DIR (cluster.sh down first)"
  fi
  local with_kcm="${WITH_KCM:-}"
  if [[ -z "$with_kcm" ]]; then
    if [[ -x "$BIN/kube-controller-manager" ]]; then with_kcm=1; else with_kcm=0; fi
  fi

  rm -rf "$RUN"
  mkdir -p "$RUN/pki" "$RUN/etcd-data"
  chmod 700 "$RUN/etcd-data" # etcd warns about anything wider
  # Any failure half-way must not leave etcd/apiserver running.
  trap 'log "up failed; stopping what was started"; down' ERR
  chmod 700 "$RUN"
  local t0=$SECONDS etcd_port peer_port api_port
  read -r etcd_port peer_port api_port < <(free_ports)
  local etcd_url="http://127.0.0.1:$etcd_port"
  SERVER="https://127.0.0.1:$api_port"

  # etcd: single member on loopback. --unsafe-no-fsync: the data is thrown
  # away anyway, and fsync dominates write latency on VM disks. A single
  # member still waits one election timeout (default 1 s) before it leads;
  # with no peers to lose, a short one is safe and saves ~0.5 s per start.
  start etcd \
    --name=controlplane \
    --data-dir="$RUN/etcd-data" \
    --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="controlplane=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true \
    --heartbeat-interval=10 --election-timeout=100 \
    --log-level=warn

  # Meanwhile, credentials. Service-account tokens (TokenRequest, `kubectl
  # create token`) are signed with this key (ES256) and verified with it.
  # EC P-256 rather than RSA: generated in milliseconds instead of ~0.5 s.
  openssl ecparam -name prime256v1 -genkey -noout -out "$RUN/pki/sa.key"
  # Static bearer tokens (random per start): CSV token,user,uid,"groups".
  # admin is in system:masters (bypasses RBAC); alice and bob have no grants
  # at all, so tests can bind exactly what they need to them.
  local admin_token kcm_token
  admin_token="$(openssl rand -hex 16)"
  kcm_token="$(openssl rand -hex 16)"
  (
    umask 077
    {
      echo "$admin_token,admin,uid-admin,\"system:masters\""
      echo "$kcm_token,system:kube-controller-manager,uid-kcm"
      echo "$(openssl rand -hex 16),alice,uid-alice,\"test:users\""
      echo "$(openssl rand -hex 16),bob,uid-bob,\"test:users\""
    } >"$RUN/pki/tokens.csv"
  )

  wait_for "etcd /health" etcd curl -fsS "$etcd_url/health"

  local apiserver_args=(
    --etcd-servers="$etcd_url"
    --bind-address=127.0.0.1 --secure-port="$api_port"
    # Nothing routes to it: the Service/Endpoints for "kubernetes" would need
    # a non-loopback address, so don't reconcile that endpoint at all.
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
    # No --tls-cert-file: the apiserver self-signs a cert for 127.0.0.1 and
    # localhost into --cert-dir (apiserver.crt, which clients then trust).
    --cert-dir="$RUN/pki"
    --token-auth-file="$RUN/pki/tokens.csv"
    --authorization-mode=Node,RBAC
    --service-account-issuer=https://kubernetes.default.svc
    --service-account-key-file="$RUN/pki/sa.key"
    --service-account-signing-key-file="$RUN/pki/sa.key"
    --service-cluster-ip-range=10.0.0.0/24
    --allow-privileged=true
  )
  if [[ "$with_kcm" != 1 ]]; then
    # Without KCM nobody creates the "default" ServiceAccount, and this
    # admission plugin would then reject every Pod (envtest does the same).
    apiserver_args+=(--disable-admission-plugins=ServiceAccount)
  fi
  start kube-apiserver "${apiserver_args[@]}"
  wait_for "apiserver certificate" kube-apiserver test -s "$RUN/pki/apiserver.crt"
  wait_for "apiserver /readyz" kube-apiserver \
    curl -fsS --cacert "$RUN/pki/apiserver.crt" -H "Authorization: Bearer $admin_token" "$SERVER/readyz"

  write_kubeconfig "$KUBECONFIG_OUT" admin "$admin_token"

  if [[ "$with_kcm" == 1 ]]; then
    # KCM brings garbage collection of owned objects, namespace deletion,
    # Deployment->ReplicaSet, default ServiceAccounts. It runs as
    # system:kube-controller-manager with one SA identity per controller
    # (as kubeadm configures it). --secure-port=0: no serving port to clash.
    write_kubeconfig "$RUN/kcm.kubeconfig" system:kube-controller-manager "$kcm_token"
    start kube-controller-manager \
      --kubeconfig="$RUN/kcm.kubeconfig" \
      --secure-port=0 \
      --leader-elect=false \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$RUN/pki/sa.key" \
      --root-ca-file="$RUN/pki/apiserver.crt"
    # Don't wait for it to finish syncing: nothing in `up` depends on it, and
    # the caller's first request usually comes later anyway.
  fi

  # A small env file so tools (testbed/controlplane.py, `env`) need
  # not parse flags back out of the process list.
  cat >"$RUN/env" <<EOF
SERVER=$SERVER
KUBECONFIG=$KUBECONFIG_OUT
BIN=$BIN
ETCD_URL=$etcd_url
WITH_KCM=$with_kcm
EOF

  if [[ -n "${CLUSTER_OWNER_PID:-}" ]]; then
    # Watchdog: when the owner dies (even by SIGKILL, when no finalizer runs),
    # bring the plane down. Detached, and its own PID is recorded for `down`.
    # In its own session (setsid), like the binaries: a signal to the owner's
    # process group (Ctrl-C, `timeout`) must not take the watchdog along with it.
    # fd 8 is closed so it doesn't hold `up`'s lock for its lifetime.
    setsid bash -c '
      while kill -0 "$1" 2>/dev/null; do sleep 1; done
      rm -f "$2/watchdog.pid" # `down` must not signal us, its parent
      CLUSTER_DIR="$3" "$4" down
    ' watchdog "$CLUSTER_OWNER_PID" "$RUN" "$DIR" "$HERE/cluster.sh" </dev/null >>"$RUN/watchdog.log" 2>&1 8>&- &
    echo $! >"$RUN/watchdog.pid"
  fi

  trap - ERR
  log "up in $((SECONDS - t0))s: $SERVER (kcm=$with_kcm), KUBECONFIG=$KUBECONFIG_OUT"
}

env_cmd() {
  [[ -f "$RUN/env" ]] || die "not running in $DIR (cluster.sh up first)"
  echo "export KUBECONFIG=$KUBECONFIG_OUT"
  echo "export PATH=$BIN:\$PATH"
}

status() {
  [[ -f "$RUN/env" ]] || die "not running in $DIR"
  SERVER="$(sed -n 's/^SERVER=//p' "$RUN/env")"
  "$BIN/kubectl" --kubeconfig="$KUBECONFIG_OUT" get --raw /readyz >/dev/null
  echo "ready: $SERVER"
}

# An API server outage, for tests of what clients do meanwhile. The flags are
# read back from the running process, so `up` need not know about this.
apiserver_kill() {
  alive kube-apiserver || die "kube-apiserver is not running in $DIR"
  local pid
  pid="$(cat "$RUN/kube-apiserver.pid")"
  cp "/proc/$pid/cmdline" "$RUN/kube-apiserver.cmdline"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null && [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]]; do
    sleep 0.02
  done
  rm -f "$RUN/kube-apiserver.pid"
  log "kube-apiserver killed"
}

apiserver_start() {
  alive kube-apiserver && die "kube-apiserver is already running in $DIR"
  [[ -f "$RUN/kube-apiserver.cmdline" ]] || die "no saved kube-apiserver flags (apiserver-kill first)"
  local args=() token
  mapfile -d '' -t args <"$RUN/kube-apiserver.cmdline"
  # The log of the first run stays; the restarted one appends.
  mv -f "$RUN/kube-apiserver.log" "$RUN/kube-apiserver.before-restart.log" 2>/dev/null || true
  start kube-apiserver "${args[@]:1}"
  SERVER="$(sed -n 's/^SERVER=//p' "$RUN/env")"
  token="$(awk -F, '$2 == "admin" {print $1}' "$RUN/pki/tokens.csv")"
  wait_for "apiserver /readyz" kube-apiserver \
    curl -fsS --cacert "$RUN/pki/apiserver.crt" -H "Authorization: Bearer $token" "$SERVER/readyz"
  log "kube-apiserver ready again: $SERVER"
}

# up and down of one CLUSTER_DIR never interleave (a `down` racing a
# half-done `up` would miss PIDs not yet written and orphan servers).
lock() {
  exec 8>"$DIR/.lock"
  flock 8
}

case "${1:-}" in
up) lock && up ;;
down) lock && down ;;
env) env_cmd ;;
status) status ;;
apiserver-kill) lock && apiserver_kill ;;
apiserver-start) lock && apiserver_start ;;
*)
  echo "usage: $0 up|down|env|status|apiserver-kill|apiserver-start" >&2
  exit 2
  ;;
esac
