#!/usr/bin/env bash
# A/B two armada binaries by running a cluster of each at the same time, on the same machine,
# under the same load, and comparing throughput and the servers' CPU per operation.
#
# On a shared machine whose speed drifts by tens of percent within minutes, runs one after the
# other (even interleaved) need many rounds to show a 5 % change. Two clusters running side by
# side see the same noise: an A/A run agrees to ~1 %. Each round starts both clusters fresh,
# warms both up, then loads both at once; per round it prints each side's operations per
# second, p99 and server CPU per operation (user + system time of the cluster's processes over
# the measured run, in microseconds), and the B/A ratios; at the end, their medians.
#
# Read CPU per operation first: the two clusters compete for the same cores, so a side that
# needs less CPU per operation leaves CPU to the other and its throughput ratio understates
# the gain. A change that only moves latency (batching, waiting) shows in throughput and p99.
#
# Usage: bench/ab-side-by-side.sh BINARY_A BINARY_B
# Environment (all optional):
#   NODES           members of each cluster (default 3)
#   ROUNDS          rounds (default 4)
#   RUN_SECONDS     measured seconds per round (default 10)
#   WARMUP_SECONDS  load before measuring, per round (default 3)
#   WORKLOAD        put, range, range-linearizable or mixed (default put; the read workloads
#                   fill the keys first, during the warm-up)
#   CLIENTS CONNECTIONS KEYS KEY_SIZE VALUE_SIZE   bench parameters (64 4 10000 16 256)
#   READY_SECONDS   how long a cluster may take to become ready (default 60)
#   KEEP_WORKDIR=1  keep the temporary directory (logs, JSON results)
# The load generator is BINARY_A's `armada bench` for both sides.
set -euo pipefail

BENCH_NAME=ab-side-by-side
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# = 2 ] || die "usage: bench/ab-side-by-side.sh BINARY_A BINARY_B"
BIN_A=$1
BIN_B=$2
[ -x "$BIN_A" ] || die "no binary at $BIN_A"
[ -x "$BIN_B" ] || die "no binary at $BIN_B"
NODES=${NODES:-3}
ROUNDS=${ROUNDS:-4}
RUN_SECONDS=${RUN_SECONDS:-10}
WARMUP_SECONDS=${WARMUP_SECONDS:-3}
WORKLOAD=${WORKLOAD:-put}
CLIENTS=${CLIENTS:-64}
CONNECTIONS=${CONNECTIONS:-4}
KEYS=${KEYS:-10000}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-256}
READY_SECONDS=${READY_SECONDS:-60}
TICKS=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/armada-ab.XXXXXX")
cleanup_on_exit "$WORK"
command -v jq >/dev/null || die "jq is needed (apt-get install -y jq)"

# start_cluster SIDE BINARY: starts NODES fresh nodes; sets URLS_<SIDE> and SERVER_PIDS_<SIDE>.
start_cluster() {
  local side=$1 binary=$2
  start_armada_nodes "$binary" "$NODES" "$WORK/$side/node" "$WORK/$side-node"
  local urls=("${NODE_URLS[@]}") pids=("${NODE_PIDS[@]}")
  printf -v "URLS_$side" '%s' "$(IFS=,; echo "${urls[*]}")"
  printf -v "SERVER_PIDS_$side" '%s' "${pids[*]}"
  local deadline=$((SECONDS + READY_SECONDS))
  until "$BIN_A" table create bench --address "${urls[0]}" --timeout 2s >/dev/null 2>&1 \
    || "$BIN_A" table list --address "${urls[0]}" --timeout 2s 2>/dev/null | grep -qw bench; do
    local pid
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "cluster $side: a node exited; see $WORK/$side-node*.log"
    done
    [ "$SECONDS" -lt "$deadline" ] || die "cluster $side not ready after ${READY_SECONDS}s"
    sleep 0.3
  done
}

# cpu_ticks PID...: user + system clock ticks of the processes so far.
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# load SIDE SECONDS OUT [EXTRA...]: runs the bench against cluster SIDE.
load() {
  local side=$1 seconds=$2 out=$3 urls_var="URLS_$1"
  shift 3
  timeout --kill-after=5 $((seconds + 120)) "$BIN_A" bench --target armada \
    --endpoints "${!urls_var}" --table bench --workload "$WORKLOAD" --clients "$CLIENTS" \
    --connections "$CONNECTIONS" --keys "$KEYS" --key-size "$KEY_SIZE" \
    --value-size "$VALUE_SIZE" --duration "${seconds}s" --warmup 0s --json "$@" \
    >"$out" 2>"$out.log" || : >"$out"
}

field() { # file jq-expression -> the value, or nothing
  if [ -s "$1" ]; then jq -r "$2 // empty" "$1" || true; fi
}
median() {
  printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{ v[++n] = $1 } END {
    if (n == 0) exit
    if (n % 2) printf "%s", v[(n + 1) / 2]; else printf "%s", (v[n / 2] + v[n / 2 + 1]) / 2
  }'
}
div() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { if (a != "" && b > 0) printf f, a / b }'; }

echo "| round | A ops/s | B ops/s | B/A ops | A p99 ms | B p99 ms | A CPU µs/op | B CPU µs/op | B/A CPU |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
ops_ratios=()
cpu_ratios=()
for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/A" "$WORK/B"
  log "round $round: starting both clusters"
  start_cluster A "$BIN_A"
  start_cluster B "$BIN_B"
  prefill=(--no-prefill)
  [ "$WORKLOAD" = put ] || prefill=()
  # `wait` with PIDs: a bare `wait` would also wait for the servers.
  load A "$WARMUP_SECONDS" "$WORK/warm-A.json" "${prefill[@]}" &
  load_a=$!
  load B "$WARMUP_SECONDS" "$WORK/warm-B.json" "${prefill[@]}" &
  wait "$load_a" "$!"
  read -ra pids_a <<<"$SERVER_PIDS_A"
  read -ra pids_b <<<"$SERVER_PIDS_B"
  cpu_a=$(cpu_ticks "${pids_a[@]}")
  cpu_b=$(cpu_ticks "${pids_b[@]}")
  log "round $round: loading both for ${RUN_SECONDS}s"
  load A "$RUN_SECONDS" "$WORK/r$round-A.json" --no-prefill &
  load_a=$!
  load B "$RUN_SECONDS" "$WORK/r$round-B.json" --no-prefill &
  wait "$load_a" "$!"
  cpu_a=$(($(cpu_ticks "${pids_a[@]}") - cpu_a))
  cpu_b=$(($(cpu_ticks "${pids_b[@]}") - cpu_b))
  count_a=$(field "$WORK/r$round-A.json" .total.count)
  count_b=$(field "$WORK/r$round-B.json" .total.count)
  ops_a=$(field "$WORK/r$round-A.json" .total.ops_per_s)
  ops_b=$(field "$WORK/r$round-B.json" .total.ops_per_s)
  p99_a=$(div "$(field "$WORK/r$round-A.json" .total.latency_us.p99)" 1000 %.2f)
  p99_b=$(div "$(field "$WORK/r$round-B.json" .total.latency_us.p99)" 1000 %.2f)
  us_a=$(div "$((cpu_a * 1000000 / TICKS))" "${count_a:-0}" %.0f)
  us_b=$(div "$((cpu_b * 1000000 / TICKS))" "${count_b:-0}" %.0f)
  ops_ratio=$(div "$ops_b" "$ops_a" %.3f)
  cpu_ratio=$(div "$us_b" "$us_a" %.3f)
  ops_ratios+=("$ops_ratio")
  cpu_ratios+=("$cpu_ratio")
  printf '| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s |\n' "$round" "${ops_a:-0}" \
    "${ops_b:-0}" "${ops_ratio:-n/a}" "${p99_a:-n/a}" "${p99_b:-n/a}" "${us_a:-n/a}" \
    "${us_b:-n/a}" "${cpu_ratio:-n/a}"
  read -ra all <<<"$SERVER_PIDS_A $SERVER_PIDS_B"
  stop_pids "${all[@]}"
done
echo
echo "median B/A: ops/s $(median "${ops_ratios[@]}"), server CPU per op $(median "${cpu_ratios[@]}")"
echo "(A = $BIN_A, B = $BIN_B; $NODES nodes each; $WORKLOAD, $CLIENTS clients, ${RUN_SECONDS}s per round; $(nproc) cores)"
