# shellcheck shell=bash
# Helpers shared by the bench/*.sh scripts; sourced, not run:
#
#   BENCH_NAME=my-bench
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Defines functions and a few variables (ROOT, PIDS, WORK_DIRS, USED_PORTS_FILE) and nothing
# else: no traps, no processes, no files until a function is called.

# The repository (this file lives in bench/).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "$BENCH_NAME: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# --- armada binary ---------------------------------------------------------------------------

cargo_build_armada() {
  (cd "$ROOT" && cargo build --release --bin armada) || die "cannot build armada"
}

# use_armada_bin: sets ARMADA to $ARMADA_BIN if set, else builds the release binary (cargo
# builds only what changed) and uses it.
use_armada_bin() {
  if [ -n "${ARMADA_BIN:-}" ]; then
    ARMADA=$ARMADA_BIN
  else
    ARMADA=${CARGO_TARGET_DIR:-$ROOT/target}/release/armada
    log "building $ARMADA (release)"
    cargo_build_armada
  fi
  [ -x "$ARMADA" ] || die "no binary at $ARMADA"
}

# --- processes and clean-up ------------------------------------------------------------------

# The processes this script started and has not stopped yet, and its temporary directories:
# the exit trap stops exactly these PIDs and removes these directories.
PIDS=()
WORK_DIRS=()

stop_pid() { # pid: SIGTERM, up to 5 s, then SIGKILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  rm -f "$USED_PORTS_FILE"
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
    log "kept ${WORK_DIRS[*]}"
  else
    rm -rf "${WORK_DIRS[@]}"
  fi
}

# cleanup_on_exit DIR: DIR is removed on exit (unless KEEP_WORKDIR=1), after the processes in
# PIDS are stopped; installs the traps. More directories may be added to WORK_DIRS later.
cleanup_on_exit() {
  WORK_DIRS+=("$1")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

# forget PID...: no longer ours to stop (ended or stopped).
forget() {
  local pid kept=()
  for pid in "${PIDS[@]}"; do
    case " $* " in *" $pid "*) ;; *) kept+=("$pid") ;; esac
  done
  PIDS=("${kept[@]}")
}

# stop_pids PID...: stops them and forgets them.
stop_pids() {
  local pid
  for pid in "$@"; do
    stop_pid "$pid"
  done
  forget "$@"
}

# run_child COMMAND...: runs COMMAND in the background and waits for it. Bash runs a trap only
# once the foreground command has ended, so a long foreground run would delay the clean-up
# on Ctrl-C or SIGTERM; `wait` is interrupted at once, and the trap stops the child too.
run_child() {
  "$@" &
  local pid=$! status=0
  PIDS+=("$pid")
  wait "$pid" || status=$?
  forget "$pid"
  return "$status"
}

# The ports free_port handed out, one per line. A file, not a variable: `$(free_port)` runs in
# a subshell, whose variables die with it. Created at the first call, removed by cleanup.
USED_PORTS_FILE="${TMPDIR:-/tmp}/armada-bench-ports.$$"

# free_port: a random loopback port nothing answers on (a refused connection means free),
# never the same twice, below the kernel's ephemeral range: a port from that range could be
# taken by some process's outgoing connection (etcd's peers dialling each other) between
# this check and the server binding it.
free_port() {
  local port low=32768 _high
  if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r low _high </proc/sys/net/ipv4/ip_local_port_range
  fi
  [ "$low" -gt 12000 ] || low=32768
  for _ in $(seq 100); do
    port=$((10000 + RANDOM % (low - 10000)))
    grep -qx "$port" "$USED_PORTS_FILE" 2>/dev/null && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port" >>"$USED_PORTS_FILE"
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# wait_listen NAME PID LOG FILE FIELD: waits for a node's listen.json FILE to have FIELD and
# prints that address; fails, with the last lines of LOG, if PID exits or READY_SECONDS pass.
wait_listen() {
  local name=$1 pid=$2 logfile=$3 file=$4 field=$5
  local deadline=$((SECONDS + READY_SECONDS))
  until [ -s "$file" ] && jq -e ".$field" "$file" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up; last log lines:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name did not start within ${READY_SECONDS}s; last log lines:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  jq -r ".$field" "$file"
}

# --- armada clusters ------------------------------------------------------------------------

# start_armada_nodes BINARY COUNT DATA_PREFIX LOG_PREFIX: starts COUNT leader-cluster nodes on
# loopback (free ports), node i with data in DATA_PREFIX$i and output in LOG_PREFIX$i.log.
# Sets NODE_URLS (their API URLs) and NODE_PIDS, and adds the PIDs to PIDS. Does not wait.
start_armada_nodes() {
  local binary=$1 count=$2 data_prefix=$3 log_prefix=$4 i members="" url raft_ports=()
  NODE_URLS=()
  NODE_PIDS=()
  for i in $(seq 1 "$count"); do
    raft_ports+=("$(free_port)")
    members="$members${members:+,}$i=127.0.0.1:${raft_ports[$((i - 1))]}"
  done
  for i in $(seq 1 "$count"); do
    url="http://127.0.0.1:$(free_port)"
    NODE_URLS+=("$url")
    "$binary" leader --data-dir "$data_prefix$i" \
      --raft.node-id "$i" --raft.address "127.0.0.1:${raft_ports[$((i - 1))]}" \
      --raft.initial-members "$members" --api.address "$url" \
      --rest.address "http://127.0.0.1:$(free_port)" \
      --replication.address "http://127.0.0.1:$(free_port)" \
      >"$log_prefix$i.log" 2>&1 &
    NODE_PIDS+=("$!")
    PIDS+=("$!")
  done
}

# --- disk room -------------------------------------------------------------------------------

fs_type() { stat -f -c %T "$1"; } # dir

# room_check DIR NEED_KIB: succeeds if DIR has NEED_KIB free and, on tmpfs, NEED_KIB + 8 GiB of
# memory is available. Otherwise sets ROOM_SHORT (disk or memory) and ROOM_AVAIL_KIB (free
# KiB of that) and fails; the caller says what is short.
# shellcheck disable=SC2034 # ROOM_SHORT and ROOM_AVAIL_KIB are for the caller
room_check() {
  local dir=$1 need_kib=$2
  ROOM_SHORT=disk
  ROOM_AVAIL_KIB=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  [ "$ROOM_AVAIL_KIB" -ge "$need_kib" ] || return 1
  if [ "$(fs_type "$dir")" = tmpfs ]; then
    ROOM_SHORT=memory
    ROOM_AVAIL_KIB=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    [ "$ROOM_AVAIL_KIB" -ge $((need_kib + 8 * 1048576)) ] || return 1
  fi
  ROOM_SHORT=""
}

# --- time and report -------------------------------------------------------------------------

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

load_average() { cut -d' ' -f1-3 /proc/loadavg; } # 1, 5, 15 min

# report_machine LOAD_AT_START: the report's lines on the machine, its load and the binary.
report_machine() {
  echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -sr)"
  echo "- load average (1, 5, 15 min) at start: $1; at end: $(load_average)"
  echo "- armada: $("$ARMADA" version 2>/dev/null || echo unknown), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}
