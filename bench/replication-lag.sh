#!/usr/bin/env bash
# Replication lag and bootstrap speed of follower clusters (issue #4), on loopback, and print a
# Markdown report.
#
# 1. Lag: a 1-node leader cluster and a follower cluster of FOLLOWER_SIZES nodes (one at a
#    time); `armada bench --workload replication-lag` offers each of RATES writes/s to the
#    leader (open loop) and probes follower node 1 every millisecond: time from the leader's
#    answer to the write becoming visible on the follower.
# 2. Bootstrap: a fresh 1-node leader gets ~BOOTSTRAP_MIB MiB written into table `bootstrap`
#    (BOOTSTRAP_VALUE_SIZE values, each key once), then a fresh 1-node follower starts; the
#    time from its start until it serves the leader's revision of the table, and its content
#    hash (`Cluster.Status` content_hash) equals the leader's, gives MB/s of logical data
#    (keys + values; MB = 10^6 bytes). The follower's peak RSS (VmHWM) is reported too.
#
# Servers bind port 0 (their addresses are read from <data-dir>/listen.json) except the Raft
# addresses of multi-node clusters, which must be known in advance. Data lives in a temporary
# directory. The script stops exactly the processes it started (by PID, trap on exit) and
# removes the directory.
#
# Usage: bench/replication-lag.sh
# Environment (all optional):
#   ARMADA_BIN            armada binary (default: build ${CARGO_TARGET_DIR:-target}/release/armada)
#   RATES                 offered writes/s, space separated (default "1000 10000")
#   FOLLOWER_SIZES        follower cluster sizes, space separated (default "1 3")
#   RUN_SECONDS           measured seconds per lag run (default 20)
#   WARMUP                unrecorded warm-up per lag run (default 5s)
#   KEYS KEY_SIZE VALUE_SIZE CONNECTIONS   lag workload (default 10000 16 256 4)
#   BOOTSTRAP_MIB         data written before the bootstrap (default 1024)
#   BOOTSTRAP_VALUE_SIZE  value size of those writes (default 1048576)
#   BOOTSTRAP_DIR         where the bootstrap's leader and follower keep their data (default:
#                         the temporary directory); e.g. /dev/shm when the disk is short. The
#                         script refuses to start the bootstrap without 8x BOOTSTRAP_MIB
#                         free there (and, on tmpfs, that much memory + 8 GiB).
#   SKIP_LAG=1 / SKIP_BOOTSTRAP=1   skip a part
#   READY_SECONDS         how long a server may take to start (default 60)
#   BOOTSTRAP_TIMEOUT     seconds the bootstrap may take (default 1800)
#   RESULTS               also write the Markdown report to this file
#   KEEP_WORKDIR=1        keep the temporary directory (logs, JSON results)
set -euo pipefail

BENCH_NAME=replication-lag
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RATES=${RATES:-1000 10000}
FOLLOWER_SIZES=${FOLLOWER_SIZES:-1 3}
RUN_SECONDS=${RUN_SECONDS:-20}
WARMUP=${WARMUP:-5s}
KEYS=${KEYS:-10000}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-256}
CONNECTIONS=${CONNECTIONS:-4}
BOOTSTRAP_MIB=${BOOTSTRAP_MIB:-1024}
BOOTSTRAP_VALUE_SIZE=${BOOTSTRAP_VALUE_SIZE:-1048576}
READY_SECONDS=${READY_SECONDS:-60}
BOOTSTRAP_TIMEOUT=${BOOTSTRAP_TIMEOUT:-1800}
LAG_TABLE=bench
BOOTSTRAP_TABLE=bootstrap
PROBE_KEY=armada-bench-bootstrap-probe

command -v jq >/dev/null || die "jq is needed"
LOAD_AT_START=$(load_average)

use_armada_bin

# --- processes -----------------------------------------------------------------------------

WORK=$(mktemp -d -t armada-lag-XXXXXX)
# Where node data directories go (the bootstrap may move it, see BOOTSTRAP_DIR).
NODE_BASE=$WORK
cleanup_on_exit "$WORK"

# start_node SUBCOMMAND NAME ARGS...: starts a node with its data in $NODE_BASE/NAME and its
# log in $WORK/NAME.log; sets STARTED_PID.
start_node() {
  local subcommand=$1 name=$2
  shift 2
  mkdir -p "$NODE_BASE/$name"
  "$ARMADA" "$subcommand" --data-dir "$NODE_BASE/$name" \
    --api.address http://127.0.0.1:0 --rest.address http://127.0.0.1:0 \
    --replication.address http://127.0.0.1:0 --log-level info "$@" \
    >"$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# listen_address NAME PID FIELD: waits for the node's listen.json, prints the FIELD address.
listen_address() {
  wait_listen "$1" "$2" "$WORK/$1.log" "$NODE_BASE/$1/listen.json" "$3"
}

# start_cluster SUBCOMMAND PREFIX SIZE ARGS...: SIZE nodes PREFIX1..; sets CLUSTER_PIDS and
# CLUSTER_APIS (the API address of each node), and CLUSTER_REPLICATION (node 1's).
start_cluster() {
  local subcommand=$1 prefix=$2 size=$3 i members="" ports=()
  shift 3
  CLUSTER_PIDS=()
  CLUSTER_APIS=()
  for i in $(seq 1 "$size"); do
    if [ "$size" = 1 ]; then ports+=(0); else ports+=("$(free_port)"); fi
    members="$members${members:+,}$i=127.0.0.1:${ports[$((i - 1))]}"
  done
  for i in $(seq 1 "$size"); do
    local node_args=(--raft.node-id "$i" --raft.address "127.0.0.1:${ports[$((i - 1))]}")
    [ "$size" = 1 ] || node_args+=(--raft.initial-members "$members")
    start_node "$subcommand" "$prefix$i" "${node_args[@]}" "$@"
    CLUSTER_PIDS+=("$STARTED_PID")
  done
  for i in $(seq 1 "$size"); do
    CLUSTER_APIS+=("$(listen_address "$prefix$i" "${CLUSTER_PIDS[$((i - 1))]}" api)")
  done
  CLUSTER_REPLICATION=$(listen_address "${prefix}1" "${CLUSTER_PIDS[0]}" replication)
  log "$subcommand cluster $prefix ($size nodes) serving at ${CLUSTER_APIS[*]}"
}

# header_revision ADDRESS TABLE: the revision a serializable read of the table answers with.
header_revision() {
  "$ARMADA" kv get "$2" "$PROBE_KEY" --address "$1" --timeout 5s --json 2>/dev/null |
    jq -r '.header.revision // empty'
}

# table_field ADDRESS TABLE FIELD: a field of the table in `armada status --json`.
table_field() {
  "$ARMADA" status --address "$1" --timeout 120s --json 2>/dev/null |
    jq -r --arg table "$2" ".tables[\$table].$3 // empty"
}

# --- lag -----------------------------------------------------------------------------------

LAG_ROWS=()
run_lag() {
  local leader_pids leader_api leader_replication size rate out
  start_cluster leader lag-leader 1
  leader_pids=("${CLUSTER_PIDS[@]}")
  leader_api=${CLUSTER_APIS[0]}
  leader_replication=$CLUSTER_REPLICATION
  for size in $FOLLOWER_SIZES; do
    start_cluster follower "lag-follower$size-" "$size" \
      --replication.leader-address "$leader_replication" \
      --replication.reconcile-interval 1s
    for rate in $RATES; do
      out="$WORK/lag-f$size-r$rate.json"
      log "lag: follower of $size node(s), $rate writes/s for ${RUN_SECONDS}s after $WARMUP"
      if ! run_child timeout --kill-after=5 $((RUN_SECONDS + 300)) "$ARMADA" bench \
        --workload replication-lag --endpoints "$leader_api" --follower "${CLUSTER_APIS[0]}" \
        --table "$LAG_TABLE" --rate "$rate" --duration "${RUN_SECONDS}s" --warmup "$WARMUP" \
        --keys "$KEYS" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE" \
        --clients "$CONNECTIONS" --connections "$CONNECTIONS" --json \
        >"$out" 2>"$out.log"; then
        log "lag run failed: $(tail -n 3 "$out.log")"
        : >"$out"
      fi
      LAG_ROWS+=("$(lag_row "$size" "$rate" "$out")")
    done
    stop_pids "${CLUSTER_PIDS[@]}"
  done
  stop_pids "${leader_pids[@]}"
}

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

lag_row() { # size rate json
  local size=$1 rate=$2 file=$3
  if [ ! -s "$file" ]; then
    echo "| $size | $rate | failed | | | | | | | | |"
    return
  fi
  local lag=.lag.latency_us
  printf '| %s | %s | %.0f%s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$size" "$rate" "$(jq -r .achieved_rate "$file")" \
    "$([ "$(jq -r .rate_shortfall "$file")" = true ] && echo ' (short)')" \
    "$(jq -r .lag.count "$file")" \
    "$(ms "$(jq -r $lag.p50 "$file")")" "$(ms "$(jq -r $lag.p90 "$file")")" \
    "$(ms "$(jq -r $lag.p99 "$file")")" "$(ms "$(jq -r $lag.p999 "$file")")" \
    "$(ms "$(jq -r $lag.max "$file")")" \
    "$(ms "$(jq -r .writes.latency_us.p99 "$file")")" \
    "$(jq -r '"\(.lag.clamped_to_zero)/\(.lag.not_observed)/\(.errors)"' "$file")"
}

# --- bootstrap -----------------------------------------------------------------------------

# check_room DIR: dies unless DIR has room for the bootstrap. Measured at 1 GiB: the leader
# holds ~2x the logical size (latest + history; ~4x with the default log retention), the
# follower ~4.5x at its peak (spool, Raft log, latest + history); 8x leaves a margin.
check_room() {
  local dir=$1 need_kib=$((BOOTSTRAP_MIB * 8 * 1024))
  room_check "$dir" "$need_kib" && return
  case $ROOM_SHORT in
    disk) die "bootstrap of ${BOOTSTRAP_MIB} MiB needs ~$((need_kib / 1048576)) GiB in $dir, only $((ROOM_AVAIL_KIB / 1048576)) GiB free (set BOOTSTRAP_DIR or BOOTSTRAP_MIB)" ;;
    *) die "bootstrap on tmpfs needs ~$((need_kib / 1048576)) GiB of memory + 8 GiB to spare, only $((ROOM_AVAIL_KIB / 1048576)) GiB available" ;;
  esac
}

BOOTSTRAP_LINES=()
run_bootstrap() {
  local keys=$((BOOTSTRAP_MIB * 1048576 / BOOTSTRAP_VALUE_SIZE))
  local logical=$((keys * (KEY_SIZE + BOOTSTRAP_VALUE_SIZE)))
  if [ -n "${BOOTSTRAP_DIR:-}" ]; then
    NODE_BASE=$(mktemp -d -p "$BOOTSTRAP_DIR" armada-lag-boot-XXXXXX)
    WORK_DIRS+=("$NODE_BASE")
  fi
  check_room "$NODE_BASE"
  local storage
  storage="$NODE_BASE ($(fs_type "$NODE_BASE"))"
  local leader_pids leader_api leader_replication started written revision hash
  # The leader keeps 100 entries after each snapshot instead of 5,000: its disk holds the
  # table once more instead of twice. The follower's bootstrap reads the state machine, not
  # the log, so this changes only the leader's footprint.
  start_cluster leader boot-leader 1 --raft.snapshot-entries 100 --raft.compaction-overhead 100
  leader_pids=("${CLUSTER_PIDS[@]}")
  leader_api=${CLUSTER_APIS[0]}
  leader_replication=$CLUSTER_REPLICATION
  log "bootstrap: writing $keys keys of $BOOTSTRAP_VALUE_SIZE B into $BOOTSTRAP_TABLE"
  started=$(now)
  # The range workload's prefill writes every key once; the one measured read is a formality.
  # Random values: a repeated byte would compress to nothing in the snapshot stream.
  run_child "$ARMADA" bench --endpoints "$leader_api" --table "$BOOTSTRAP_TABLE" --workload range \
    --keys "$keys" --key-size "$KEY_SIZE" --value-size "$BOOTSTRAP_VALUE_SIZE" --random-values \
    --clients 4 --connections 2 --total 1 --warmup 0s --timeout 60s --json \
    >"$WORK/bootstrap-write.json" 2>"$WORK/bootstrap-write.log" ||
    die "writing the bootstrap table failed: $(tail -n 3 "$WORK/bootstrap-write.log")"
  written=$(elapsed "$started" "$(now)")
  revision=$(header_revision "$leader_api" "$BOOTSTRAP_TABLE")
  hash=$(table_field "$leader_api" "$BOOTSTRAP_TABLE" content_hash)
  if [ -z "$revision" ] || [ -z "$hash" ]; then die "cannot read the leader's revision and hash"; fi
  local leader_db leader_log
  leader_db=$(table_field "$leader_api" "$BOOTSTRAP_TABLE" db_size)
  leader_log=$(table_field "$leader_api" "$BOOTSTRAP_TABLE" log_size)
  log "bootstrap: leader at revision $revision, hash $hash; starting a fresh follower"

  local follower_pid follower_api at_revision="" at_hash="" follower_revision follower_hash
  started=$(now)
  start_cluster follower boot-follower 1 --replication.leader-address "$leader_replication" \
    --replication.reconcile-interval 1s
  follower_pid=${CLUSTER_PIDS[0]}
  follower_api=${CLUSTER_APIS[0]}
  local deadline=$((SECONDS + BOOTSTRAP_TIMEOUT))
  # Cheap revision probes first (Status hashes the whole table on every call), then the
  # hash comparison once the follower serves the leader's revision.
  while [ -z "$at_hash" ]; do
    kill -0 "$follower_pid" 2>/dev/null || die "the follower exited: $(tail -n 5 "$WORK/boot-follower1.log")"
    [ "$SECONDS" -lt "$deadline" ] || die "the follower did not catch up in ${BOOTSTRAP_TIMEOUT}s"
    follower_revision=$(header_revision "$follower_api" "$BOOTSTRAP_TABLE" || true)
    if [ -n "$follower_revision" ] && [ "$follower_revision" -ge "$revision" ]; then
      [ -n "$at_revision" ] || at_revision=$(elapsed "$started" "$(now)")
      follower_hash=$(table_field "$follower_api" "$BOOTSTRAP_TABLE" content_hash || true)
      if [ "$follower_hash" = "$hash" ]; then
        at_hash=$(elapsed "$started" "$(now)")
        break
      fi
      log "bootstrap: follower at revision $follower_revision but hash $follower_hash"
    fi
    sleep 0.1
  done
  local peak_rss_kib
  peak_rss_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$follower_pid/status")
  # The follower's own account: snapshot stream bytes (compressed dump) and install time.
  local follower_line stream_bytes install_seconds
  follower_line=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/boot-follower1.log" |
    grep -m1 "bootstrapped the table" || true)
  stream_bytes=$(echo "$follower_line" | grep -o 'bytes=[0-9]*' | cut -d= -f2)
  install_seconds=$(echo "$follower_line" | grep -o 'seconds=[0-9.]*' | cut -d= -f2)
  stop_pids "${CLUSTER_PIDS[@]}"

  local mb_per_s
  mb_per_s=$(awk -v bytes="$logical" -v s="$at_revision" 'BEGIN { printf "%.1f", bytes / 1e6 / s }')
  BOOTSTRAP_LINES+=(
    "- data directories of the bootstrap's leader and follower: $storage"
    "- table: $keys keys × ($KEY_SIZE B key + $BOOTSTRAP_VALUE_SIZE B value) = $logical B logical ($(awk -v b="$logical" 'BEGIN { printf "%.1f", b / 1048576 }') MiB); leader revision $revision; leader db size $leader_db B, log size $leader_log B"
    "- writing it on the leader (4 clients): ${written} s ($(awk -v b="$logical" -v s="$written" 'BEGIN { printf "%.1f", b / 1e6 / s }') MB/s)"
    "- fresh 1-node follower, from process start until it served revision $revision: **${at_revision} s → ${mb_per_s} MB/s**; content hash equal to the leader's at ${at_hash} s (includes one Status call, which hashes the table)"
    "- follower peak RSS (VmHWM) during the bootstrap: $((peak_rss_kib / 1024)) MiB"
    "- follower's log: snapshot stream of ${stream_bytes:-?} B received and installed in $(printf '%.2f' "${install_seconds:-0}") s (from the start of Snapshot.Stream to the end of the staged load)"
  )
  stop_pids "${leader_pids[@]}"
}

# --- run and report ------------------------------------------------------------------------

[ "${SKIP_LAG:-0}" = 1 ] || run_lag
[ "${SKIP_BOOTSTRAP:-0}" = 1 ] || run_bootstrap

{
  echo "## Replication lag and bootstrap, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  report_machine "$LOAD_AT_START"
  if [ "${SKIP_LAG:-0}" != 1 ]; then
    echo "- lag runs: ${RUN_SECONDS}s measured after ${WARMUP} warm-up; keys $KEYS x ${KEY_SIZE} B, values ${VALUE_SIZE} B; $CONNECTIONS connections; follower node 1 probed every 1 ms"
    echo
    echo "| follower nodes | offered w/s | achieved w/s | writes | lag p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | put p99 ms | clamped/unseen/errors |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${LAG_ROWS[@]}"
  fi
  if [ "${SKIP_BOOTSTRAP:-0}" != 1 ]; then
    echo
    echo "Bootstrap:"
    echo
    printf '%s\n' "${BOOTSTRAP_LINES[@]}"
  fi
} | tee "${RESULTS:-/dev/null}"
