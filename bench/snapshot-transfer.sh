#!/usr/bin/env bash
# Raft snapshot transfer to a replica that fell behind or was replaced (issue #3), on
# loopback, and print a Markdown report.
#
# For each variant in WIPE: a fresh 3-node leader cluster (`armada leader` x3) gets table
# `snap`; node 3 is killed (SIGKILL); SIZE_MIB MiB of VALUE_KIB KiB incompressible values
# (distinct keys, each written once) go into the table through nodes 1 and 2, enough entries
# that the table's Raft leader snapshots and purges its log past node 3's position (checked:
# the leader's first log index must be above node 3's applied index, else the run stops).
# WIPE=1 then empties node 3's data directory (a replaced replica). Node 3 restarts and the
# script measures, until node 3's applied index of the table reaches the leader's:
#
# - catch-up time from node 3's process start, and MB/s of logical data (keys + values,
#   MB = 10^6 bytes) over it;
# - peak RSS of the receiver (node 3: VmHWM of its new process) and of the sender (the table's
#   Raft leader: its VmHWM is reset just before node 3 starts, so the peak is that of the
#   transfer, not of the writes), plus their RSS before and after and the highest RSS sampled
#   every SAMPLE_SECONDS (a cross-check of VmHWM);
# - that node 3 installed a snapshot (its log), and that the table's content hash and applied
#   index in `armada status --json` are equal on all three nodes at the end.
#
# Progress is polled on node 3's /metrics (armada_raft_applied_index), not with `armada
# status`: Status hashes every table on every call, which would read the table being
# installed over and over.
#
# Raft addresses are free ports picked in advance (initial members must be known); the other
# addresses bind port 0 and are read from <data-dir>/listen.json. Data lives in a temporary
# directory under WORK_BASE. The script stops exactly the processes it started (by PID, trap
# on exit) and removes the directory.
#
# Usage: bench/snapshot-transfer.sh
# Environment (all optional):
#   ARMADA_BIN           armada binary (default: build ${CARGO_TARGET_DIR:-target}/release/armada)
#   SIZE_MIB             logical size of the values written (default 1024)
#   VALUE_KIB            value size in KiB (default 1024; at most 2048, the value limit)
#   KEY_SIZE             key size in bytes (default 16)
#   WIPE                 variants, space separated: 0 = node 3 keeps its data (fell behind),
#                        1 = node 3's data directory is emptied (replaced) (default "0")
#   SNAPSHOT_ENTRIES     --raft.snapshot-entries of every node (default 100)
#   COMPACTION_OVERHEAD  --raft.compaction-overhead of every node (default 100)
#   WORK_BASE            where the temporary directory goes (default ${TMPDIR:-/tmp}); the
#                        script refuses to start without ROOM_FACTOR x SIZE_MIB free there
#   ROOM_FACTOR          (default 12. Measured at 1 GiB: nodes 1 and 2 end with 2.6-3.0 GiB
#                        each (latest + history, journal, Raft log), node 3 with 2 GiB plus a
#                        spool of up to 1 GiB while it installs: ~9 GiB; the rest is margin)
#   SAMPLE_SECONDS       RSS sampling interval (default 0.2)
#   READY_SECONDS        how long a server may take to start (default 60)
#   CATCHUP_TIMEOUT      seconds node 3 may take to catch up (default 1800)
#   RESULTS              also write the Markdown report to this file
#   KEEP_WORKDIR=1       keep the temporary directory (logs, JSON)
set -euo pipefail

BENCH_NAME=snapshot-transfer
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
VALUE_KIB=${VALUE_KIB:-1024}
KEY_SIZE=${KEY_SIZE:-16}
WIPE=${WIPE:-0}
SNAPSHOT_ENTRIES=${SNAPSHOT_ENTRIES:-100}
COMPACTION_OVERHEAD=${COMPACTION_OVERHEAD:-100}
WORK_BASE=${WORK_BASE:-${TMPDIR:-/tmp}}
ROOM_FACTOR=${ROOM_FACTOR:-12}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-0.2}
READY_SECONDS=${READY_SECONDS:-60}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-1800}
TABLE=snap

command -v jq >/dev/null || die "jq is needed"
command -v curl >/dev/null || die "curl is needed"
if [ "$VALUE_KIB" -lt 1 ] || [ "$VALUE_KIB" -gt 2048 ]; then die "VALUE_KIB must be 1..2048"; fi
for variant in $WIPE; do
  case $variant in 0 | 1) ;; *) die "WIPE must be 0 and/or 1, not $variant" ;; esac
done
LOAD_AT_START=$(load_average)
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Room first: the disk may be shared, and a full disk hurts everyone on it.
mkdir -p "$WORK_BASE"
NEED_KIB=$((SIZE_MIB * ROOM_FACTOR * 1024))
if ! room_check "$WORK_BASE" "$NEED_KIB"; then
  case $ROOM_SHORT in
    disk) die "${SIZE_MIB} MiB needs ~$((NEED_KIB / 1024)) MiB free in $WORK_BASE, only $((ROOM_AVAIL_KIB / 1024)) MiB (set WORK_BASE or SIZE_MIB)" ;;
    *) die "on tmpfs ${SIZE_MIB} MiB needs ~$((NEED_KIB / 1024)) MiB of memory + 8 GiB to spare" ;;
  esac
fi

use_armada_bin

# --- processes -----------------------------------------------------------------------------

WORK=$(mktemp -d -p "$WORK_BASE" armada-snap-XXXXXX)
cleanup_on_exit "$WORK"

# Node I's data directory, log (appended to across restarts), Raft port and PID.
node_dir() { echo "$WORK/node$1"; }
node_log() { echo "$WORK/node$1-wipe$VARIANT.log"; }
RAFT_PORTS=()
NODE_PIDS=()
MEMBERS=""
VARIANT=""

# start_node I: starts node I of the cluster; sets NODE_PIDS[I].
start_node() {
  local i=$1
  mkdir -p "$(node_dir "$i")"
  rm -f "$(node_dir "$i")/listen.json"
  "$ARMADA" leader --data-dir "$(node_dir "$i")" \
    --raft.node-id "$i" --raft.address "127.0.0.1:${RAFT_PORTS[$i]}" \
    --raft.initial-members "$MEMBERS" \
    --raft.snapshot-entries "$SNAPSHOT_ENTRIES" \
    --raft.compaction-overhead "$COMPACTION_OVERHEAD" \
    --api.address http://127.0.0.1:0 --rest.address http://127.0.0.1:0 \
    --replication.address http://127.0.0.1:0 --log-level info \
    >>"$(node_log "$i")" 2>&1 &
  NODE_PIDS[i]=$!
  PIDS+=("${NODE_PIDS[$i]}")
}

# listen_address I FIELD: waits for node I's listen.json, prints the FIELD address.
listen_address() {
  wait_listen "node $1" "${NODE_PIDS[$1]}" "$(node_log "$1")" "$(node_dir "$1")/listen.json" "$2"
}

# stop_node I: stops node I (SIGTERM, then SIGKILL) and forgets it.
stop_node() { stop_pids "${NODE_PIDS[$1]}"; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# status ADDRESS: `armada status --json` of the node at ADDRESS.
status() {
  "$ARMADA" status --address "$1" --timeout 300s --json 2>/dev/null
}

# table_field JSON FIELD: a field of the table in a status document.
table_field() {
  jq -r --arg table "$TABLE" ".tables[\$table].$2 // empty" <<<"$1"
}

# applied_index REST: node's applied index of the table from /metrics (empty if unknown).
applied_index() {
  curl -sf --max-time 5 "$1/metrics" 2>/dev/null |
    awk -v t="table=\"$TABLE\"" '/^armada_raft_applied_index\{/ && index($0, t) { printf "%d\n", $NF; exit }'
}

# proc_kib PID FIELD: VmRSS / VmHWM of a process in KiB (empty once it is gone).
proc_kib() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true
}

# sample_rss OUT PID...: until stopped, writes "pid max_rss_kib" lines for each PID into OUT.
sample_rss() {
  local out=$1 pid rss
  shift
  declare -A peak=()
  for pid in "$@"; do peak[$pid]=0; done
  while :; do
    for pid in "$@"; do
      rss=$(proc_kib "$pid" VmRSS)
      if [ -n "$rss" ] && [ "$rss" -gt "${peak[$pid]}" ]; then peak[$pid]=$rss; fi
    done
    for pid in "$@"; do echo "$pid ${peak[$pid]}"; done >"$out.tmp"
    mv "$out.tmp" "$out"
    sleep "$SAMPLE_SECONDS"
  done
}

# --- one variant ---------------------------------------------------------------------------

ROWS=()
NOTES=()
run_variant() {
  local wipe=$1 i
  VARIANT=$wipe
  local keys=$((SIZE_MIB * 1024 / VALUE_KIB))
  local value_bytes=$((VALUE_KIB * 1024))
  local logical=$((keys * (KEY_SIZE + value_bytes)))
  RAFT_PORTS=("")
  NODE_PIDS=("")
  MEMBERS=""
  for i in 1 2 3; do
    RAFT_PORTS+=("$(free_port)")
    MEMBERS="$MEMBERS${MEMBERS:+,}$i=127.0.0.1:${RAFT_PORTS[$i]}"
  done
  for i in 1 2 3; do start_node "$i"; done
  local apis=("") rests=("")
  for i in 1 2 3; do
    apis+=("$(listen_address "$i" api)")
    rests+=("$(listen_address "$i" rest)")
  done
  log "WIPE=$wipe: cluster serving at ${apis[*]:1}"

  "$ARMADA" table create "$TABLE" --address "${apis[1]}" --timeout 30s >/dev/null ||
    die "cannot create table $TABLE"
  # Node 3 must run the table's group (and have applied its creation) before it goes away.
  local deadline=$((SECONDS + READY_SECONDS)) node3_applied=""
  until [ -n "$node3_applied" ] && [ "$node3_applied" -gt 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "node 3 does not run table $TABLE"
    sleep 0.2
    node3_applied=$(applied_index "${rests[3]}")
  done
  log "node 3 runs $TABLE at applied index $node3_applied; killing it (SIGKILL)"
  kill -KILL "${NODE_PIDS[3]}"
  wait "${NODE_PIDS[3]}" 2>/dev/null || true
  forget "${NODE_PIDS[3]}"
  # If node 3 led the catalog or the table, calls forwarded to it time out until nodes 1 and
  # 2 notice (the QUIC idle timeout, 10 s) and elect another leader: wait until a catalog
  # write (the create the bench issues) and a table write both work again.
  deadline=$((SECONDS + READY_SECONDS))
  local answer
  while :; do
    answer=$("$ARMADA" table create "$TABLE" --address "${apis[1]}" --timeout 5s 2>&1 || true)
    if [[ $answer == *AlreadyExists* ]] &&
      "$ARMADA" kv put "$TABLE" armada-snapshot-probe x --address "${apis[2]}" --timeout 5s \
        >/dev/null 2>&1; then
      break
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "nodes 1 and 2 do not serve writes without node 3: $answer"
    sleep 0.5
  done

  log "writing $keys keys of $value_bytes B (${SIZE_MIB} MiB) through nodes 1 and 2"
  local started written
  started=$(now)
  # The range workload's prefill writes every key once; the one measured read is a formality.
  # Random values: a repeated byte would compress to nothing in the snapshot stream.
  run_child "$ARMADA" bench --endpoints "${apis[1]},${apis[2]}" --table "$TABLE" \
    --workload range --keys "$keys" --key-size "$KEY_SIZE" --value-size "$value_bytes" \
    --random-values --clients 4 --connections 2 --total 1 --warmup 0s --timeout 60s --json \
    >"$WORK/write-$wipe.json" 2>"$WORK/write-$wipe.log" ||
    die "writing the table failed: $(tail -n 3 "$WORK/write-$wipe.log")"
  written=$(elapsed "$started" "$(now)")

  # The table's Raft leader is the sender. Status hashes the table: done before the
  # sender's peak RSS is reset.
  local before leader leader_index first_index leader_api
  before=$(status "${apis[1]}") || die "status of node 1 failed"
  leader=$(table_field "$before" leader)
  case $leader in 1 | 2) ;; *) die "table $TABLE has no leader on node 1 or 2 (leader '$leader')" ;; esac
  leader_api=${apis[$leader]}
  # The leader purges its log after a snapshot only while no replication to node 3 is in
  # flight; until nodes 1 and 2 have given up on node 3's connection that takes a while.
  deadline=$((SECONDS + 120))
  while :; do
    before=$(status "$leader_api") || die "status of node $leader failed"
    leader_index=$(table_field "$before" raft_applied_index)
    first_index=$(table_field "$before" first_log_index)
    [ "$first_index" -le $((node3_applied + 1)) ] || break
    [ "$SECONDS" -lt "$deadline" ] ||
      die "the leader's log still starts at $first_index (node 3 is at $node3_applied): no snapshot would be needed; lower SNAPSHOT_ENTRIES / COMPACTION_OVERHEAD or write more"
    sleep 2
  done
  log "leader node $leader: applied index $leader_index, first log index $first_index, log $(table_field "$before" log_size) B, db $(table_field "$before" db_size) B"

  if [ "$wipe" = 1 ]; then
    log "emptying node 3's data directory"
    rm -rf "$(node_dir 3)"
  fi
  local sender_pid=${NODE_PIDS[$leader]} sender_rss_before sender_hwm_before
  sender_hwm_before=$(proc_kib "$sender_pid" VmHWM)
  # Resets the sender's VmHWM to its current RSS (proc(5), clear_refs).
  echo 5 >"/proc/$sender_pid/clear_refs" || die "cannot reset VmHWM of PID $sender_pid"
  sender_rss_before=$(proc_kib "$sender_pid" VmRSS)

  local log_lines_before
  log_lines_before=$(wc -l <"$(node_log 3)")
  log "restarting node 3"
  started=$(now)
  start_node 3
  local receiver_pid=${NODE_PIDS[3]}
  sample_rss "$WORK/rss-$wipe" "$sender_pid" "$receiver_pid" &
  local sampler=$!
  PIDS+=("$sampler")
  local receiver_rest receiver_rss_start
  receiver_rest=$(listen_address 3 rest) || die "node 3 did not come back"
  rests[3]=$receiver_rest
  apis[3]=$(listen_address 3 api) # port 0: new addresses
  receiver_rss_start=$(proc_kib "$receiver_pid" VmRSS)
  local caught_up="" applied deadline=$((SECONDS + CATCHUP_TIMEOUT)) next_log=$((SECONDS + 10))
  while [ -z "$caught_up" ]; do
    kill -0 "$receiver_pid" 2>/dev/null || die "node 3 exited: $(tail -n 5 "$(node_log 3)")"
    [ "$SECONDS" -lt "$deadline" ] || die "node 3 did not catch up in ${CATCHUP_TIMEOUT}s"
    applied=$(applied_index "$receiver_rest")
    if [ -n "$applied" ] && [ "$applied" -ge "$leader_index" ]; then
      caught_up=$(elapsed "$started" "$(now)")
      break
    fi
    if [ "$SECONDS" -ge "$next_log" ]; then
      log "node 3 at applied index ${applied:-?} of $leader_index; RSS $(kib_to_mib "$(proc_kib "$receiver_pid" VmRSS)") MiB"
      next_log=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  local receiver_hwm sender_hwm receiver_rss_after sender_rss_after
  receiver_hwm=$(proc_kib "$receiver_pid" VmHWM)
  sender_hwm=$(proc_kib "$sender_pid" VmHWM)
  receiver_rss_after=$(proc_kib "$receiver_pid" VmRSS)
  sender_rss_after=$(proc_kib "$sender_pid" VmRSS)
  sleep "$SAMPLE_SECONDS"
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  forget "$sampler"
  local sender_sampled receiver_sampled
  sender_sampled=$(awk -v p="$sender_pid" '$1 == p { print $2 }' "$WORK/rss-$wipe")
  receiver_sampled=$(awk -v p="$receiver_pid" '$1 == p { print $2 }' "$WORK/rss-$wipe")
  log "node 3 caught up in ${caught_up}s; checking contents on all nodes"

  # Equal applied index and content hash everywhere (Status hashes: after the measurement).
  local hashes=() indexes=() json
  for i in 1 2 3; do
    json=$(status "${apis[$i]}") || die "status of node $i failed"
    hashes+=("$(table_field "$json" content_hash)")
    indexes+=("$(table_field "$json" raft_applied_index)")
  done
  local equal=yes
  if [ -z "${hashes[0]}" ] || [ "${hashes[0]}" != "${hashes[1]}" ] || [ "${hashes[0]}" != "${hashes[2]}" ] ||
    [ "${indexes[0]}" != "${indexes[1]}" ] || [ "${indexes[0]}" != "${indexes[2]}" ]; then
    equal="**NO** (hashes ${hashes[*]}, applied ${indexes[*]})"
  fi
  local installs leader_now
  installs=$(tail -n +"$((log_lines_before + 1))" "$(node_log 3)" | sed 's/\x1b\[[0-9;]*m//g' |
    grep -c "installed a snapshot" || true)
  leader_now=$(table_field "$(status "${apis[1]}")" leader)
  local disk=""
  for i in 1 2 3; do
    disk="$disk${disk:+, }node $i $(kib_to_mib "$(du -sk "$(node_dir "$i")" | awk '{ print $1 }')")"
  done

  for i in 1 2 3; do stop_node "$i"; done
  local mb_per_s
  mb_per_s=$(awk -v b="$logical" -v s="$caught_up" 'BEGIN { printf "%.1f", b / 1e6 / s }')
  ROWS+=("$(printf '| %s | %s | %s × %s KiB | %s | **%s** | %s | %s → **%s** (sampled %s) → %s | %s → **%s** (sampled %s) → %s | %s | %s |' \
    "$([ "$wipe" = 1 ] && echo "replaced (wiped)" || echo "fell behind")" \
    "$SIZE_MIB" "$keys" "$VALUE_KIB" "$written" "$caught_up" "$mb_per_s" \
    "$(kib_to_mib "$receiver_rss_start")" "$(kib_to_mib "$receiver_hwm")" \
    "$(kib_to_mib "$receiver_sampled")" "$(kib_to_mib "$receiver_rss_after")" \
    "$(kib_to_mib "$sender_rss_before")" "$(kib_to_mib "$sender_hwm")" \
    "$(kib_to_mib "$sender_sampled")" "$(kib_to_mib "$sender_rss_after")" \
    "$installs" "$equal")")
  NOTES+=("- WIPE=$wipe: table leader (sender) node $leader (node $leader_now at the end); leader applied index $leader_index, first log index $first_index, node 3 was at $node3_applied; sender VmHWM before the reset $(kib_to_mib "$sender_hwm_before") MiB (the writes); disk at the end (MiB): $disk; content hash ${hashes[0]:0:16}…")
  rm -rf "$(node_dir 1)" "$(node_dir 2)" "$(node_dir 3)"
}

for variant in $WIPE; do
  run_variant "$variant"
done

{
  echo "### Snapshot transfer, $STARTED_AT"
  echo
  report_machine "$LOAD_AT_START"
  echo "- 3-node leader cluster on loopback, data in $WORK_BASE ($(fs_type "$WORK_BASE")); --raft.snapshot-entries $SNAPSHOT_ENTRIES --raft.compaction-overhead $COMPACTION_OVERHEAD; keys $KEY_SIZE B, incompressible values"
  echo
  echo "| node 3 | MiB | keys × value | write s | catch-up s | MB/s | receiver RSS MiB: start → peak (VmHWM) → end | sender RSS MiB: before → peak (VmHWM) → end | snapshots installed | hashes equal |"
  echo "|---|---:|---:|---:|---:|---:|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  printf '%s\n' "${NOTES[@]}"
} | tee "${RESULTS:-/dev/null}"
