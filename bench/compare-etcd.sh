#!/usr/bin/env bash
# Compare a single-node Armada with a single-node etcd on this machine, same client, same
# workloads (`armada bench`), and print a Markdown table.
#
# Both servers listen on loopback only, keep their data in a temporary directory and fsync as
# they do by default. The script kills exactly the processes it started (trap on exit).
#
# Usage: bench/compare-etcd.sh
# Environment (all optional):
#   ARMADA_BIN      armada binary (default: ${CARGO_TARGET_DIR:-target}/release/armada, built
#                   with `cargo build --release --bin armada` if missing)
#   RUN_SECONDS     measured seconds per run (default 10)
#   WARMUP          unrecorded warm-up per run (default 1s)
#   READY_SECONDS   how long a server may take to become ready (default 60)
#   KEYS KEY_SIZE VALUE_SIZE CONNECTIONS READ_RATIO   bench parameters (10000 16 256 4 0.9)
#   RESULTS         also write the Markdown table to this file
#   KEEP_WORKDIR=1  keep the temporary directory (logs, JSON results)
#   NODES           members of each cluster, 1 or 3 (default 1); clients use every member
#   ROUNDS          runs of each workload per system (default 1). With more, the runs
#                   alternate (Armada first in odd rounds, etcd first in even ones), the table
#                   shows medians and the ratio is the median of the rounds' ratios, listed in
#                   the last column: on a shared, noisy machine one pair of runs can be off by
#                   tens of percent
set -euo pipefail

BENCH_NAME=compare-etcd
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ARMADA=${ARMADA_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/armada}
RUN_SECONDS=${RUN_SECONDS:-10}
WARMUP=${WARMUP:-1s}
READY_SECONDS=${READY_SECONDS:-60}
KEYS=${KEYS:-10000}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-256}
CONNECTIONS=${CONNECTIONS:-4}
READ_RATIO=${READ_RATIO:-0.9}
NODES=${NODES:-1}
ROUNDS=${ROUNDS:-1}

# name workload clients
MATRIX=(
  "put put 1"
  "put put 16"
  "put put 64"
  "range range 16"
  "range range 64"
  "range-linearizable range-linearizable 16"
  "range-linearizable range-linearizable 64"
  "mixed mixed 64"
)

# --- prerequisites -------------------------------------------------------------------------

install_etcd() {
  command -v etcd >/dev/null && return
  command -v apt-get >/dev/null || die "etcd is missing and apt-get is not available"
  [ "$(id -u)" = 0 ] || die "etcd is missing: run 'apt-get install -y etcd-server' as root"
  log "installing etcd-server"
  apt-get update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >/dev/null
  # The Debian package may start a system-wide etcd on 127.0.0.1:2379; we use our own ports,
  # so it does not matter here, and we do not stop a service we did not start.
  command -v etcd >/dev/null || die "etcd-server installed but no etcd binary found"
}

build_armada() {
  [ -x "$ARMADA" ] && return
  log "building $ARMADA"
  cargo_build_armada
  [ -x "$ARMADA" ] || die "no binary at $ARMADA (set ARMADA_BIN)"
}

json_field() { # file jq-expression
  if command -v jq >/dev/null; then
    jq -r "$2 // empty" "$1"
  else
    python3 - "$1" "$2" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1]))
for part in sys.argv[2].lstrip(".").split("."):
    value = value.get(part) if isinstance(value, dict) else None
print("" if value is None else value)
EOF
  fi
}

install_etcd
build_armada
command -v jq >/dev/null || command -v python3 >/dev/null || die "jq or python3 is needed"

# --- processes -----------------------------------------------------------------------------

WORK=$(mktemp -d -t armada-compare-XXXXXX)
cleanup_on_exit "$WORK"

# wait_ready NAME PID LOG COMMAND...: until COMMAND succeeds, the process dies, or the deadline.
wait_ready() {
  local name=$1 pid=$2 logfile=$3
  shift 3
  local deadline=$((SECONDS + READY_SECONDS))
  while ! "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up; last log lines:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name not ready after ${READY_SECONDS}s; last log lines:"
      tail -n 20 "$logfile" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  log "$name ready"
}

# NODES members of each system, all on loopback; clients spread over every member.
ETCD_URLS=()
ETCD_CLUSTER=""
ETCD_PEERS=()
for i in $(seq 1 "$NODES"); do
  ETCD_URLS+=("http://127.0.0.1:$(free_port)")
  ETCD_PEERS+=("http://127.0.0.1:$(free_port)")
  ETCD_CLUSTER="$ETCD_CLUSTER${ETCD_CLUSTER:+,}etcd$i=${ETCD_PEERS[$((i - 1))]}"
done
ETCD_PIDS=()
for i in $(seq 1 "$NODES"); do
  etcd --name "etcd$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "${ETCD_URLS[$((i - 1))]}" --advertise-client-urls "${ETCD_URLS[$((i - 1))]}" \
    --listen-peer-urls "${ETCD_PEERS[$((i - 1))]}" \
    --initial-advertise-peer-urls "${ETCD_PEERS[$((i - 1))]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
    >"$WORK/etcd$i.log" 2>&1 &
  ETCD_PIDS+=("$!")
  PIDS+=("$!")
done
ETCD_PID=${ETCD_PIDS[0]}
ETCD_URL=$(IFS=,; echo "${ETCD_URLS[*]}")

start_armada_nodes "$ARMADA" "$NODES" "$WORK/armada" "$WORK/armada"
ARMADA_URLS=("${NODE_URLS[@]}")
ARMADA_PID=${NODE_PIDS[0]}
ARMADA_URL=$(IFS=,; echo "${ARMADA_URLS[*]}")

etcd_ok=1
armada_ok=1
wait_ready etcd "$ETCD_PID" "$WORK/etcd1.log" \
  "$ARMADA" bench --target etcd --endpoints "$ETCD_URL" --total 1 --warmup 0s \
  --clients 1 --connections 1 --no-prefill --timeout 2s || etcd_ok=0
wait_ready armada "$ARMADA_PID" "$WORK/armada1.log" \
  "$ARMADA" table list --address "${ARMADA_URLS[0]}" --timeout 2s || armada_ok=0
[ "$etcd_ok" = 1 ] || [ "$armada_ok" = 1 ] || die "neither server became ready"

# --- runs ----------------------------------------------------------------------------------

# run_bench TARGET URL NAME WORKLOAD CLIENTS PREFILL -> path of the JSON result (empty file on
# failure).
run_bench() {
  local target=$1 url=$2 name=$3 workload=$4 clients=$5 prefill=$6 round=${7:-1}
  local out="$WORK/$target-$name-$clients-r$round.json"
  local connections=$((clients < CONNECTIONS ? clients : CONNECTIONS))
  local extra=()
  [ "$prefill" = 1 ] || extra+=(--no-prefill)
  [ "$target" = armada ] && extra+=(--table bench)
  log "$target $name, $clients clients"
  if ! timeout --kill-after=5 $((RUN_SECONDS + 120)) "$ARMADA" bench --target "$target" \
    --endpoints "$url" --workload "$workload" --clients "$clients" \
    --connections "$connections" --keys "$KEYS" --key-size "$KEY_SIZE" \
    --value-size "$VALUE_SIZE" --read-ratio "$READ_RATIO" \
    --duration "${RUN_SECONDS}s" --warmup "$WARMUP" --json "${extra[@]}" \
    >"$out" 2>"$out.log"; then
    log "$target $name $clients failed: $(tail -n 1 "$out.log")"
    : >"$out"
  fi
  echo "$out"
}

metric() { # file expression
  if [ -s "$1" ]; then json_field "$1" "$2" || true; fi
}

count_or_na() { printf "%s" "${1:-n/a}"; }
fmt_ops() { [ -n "$1" ] && printf "%.0f" "$1" || printf "n/a"; }
fmt_ms() { [ -n "$1" ] && awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }' || printf "n/a"; }
median() { # numbers (empty ones ignored) -> their median, or nothing
  printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{ v[++n] = $1 } END {
    if (n == 0) exit
    if (n % 2) printf "%s", v[(n + 1) / 2]; else printf "%s", (v[n / 2] + v[n / 2 + 1]) / 2
  }'
}
sum_errors() { # counts (empty ones ignored) -> their sum, or nothing
  printf '%s\n' "$@" | awk 'NF { s += $1; n++ } END { if (n) printf "%d", s }'
}
ratio() {
  if [ -n "$1" ] && [ -n "$2" ]; then
    awk -v a="$1" -v e="$2" 'BEGIN { if (e > 0) printf "%.2f", a / e; else printf "n/a" }'
  else
    printf "n/a"
  fi
}

ROWS=()
prefilled_armada=0
prefilled_etcd=0
for entry in "${MATRIX[@]}"; do
  read -r name workload clients <<<"$entry"
  a_ops=() e_ops=() a_p50=() e_p50=() a_p99=() e_p99=() a_err=() e_err=() ratios=()
  for round in $(seq 1 "$ROUNDS"); do
    armada_json=""
    etcd_json=""
    prefill_armada=0
    prefill_etcd=0
    if [ "$workload" != put ]; then
      [ "$prefilled_armada" = 1 ] || prefill_armada=1
      [ "$prefilled_etcd" = 1 ] || prefill_etcd=1
    fi
    for target in $( ((round % 2)) && echo "armada etcd" || echo "etcd armada"); do
      if [ "$target" = armada ] && [ "$armada_ok" = 1 ]; then
        armada_json=$(run_bench armada "$ARMADA_URL" "$name" "$workload" "$clients" "$prefill_armada" "$round")
        [ "$prefill_armada" = 1 ] && [ -s "$armada_json" ] && prefilled_armada=1
      fi
      if [ "$target" = etcd ] && [ "$etcd_ok" = 1 ]; then
        etcd_json=$(run_bench etcd "$ETCD_URL" "$name" "$workload" "$clients" "$prefill_etcd" "$round")
        [ "$prefill_etcd" = 1 ] && [ -s "$etcd_json" ] && prefilled_etcd=1
      fi
    done
    a=$(metric "$armada_json" .total.ops_per_s)
    e=$(metric "$etcd_json" .total.ops_per_s)
    a_ops+=("$a")
    e_ops+=("$e")
    ratios+=("$(ratio "$a" "$e")")
    a_p50+=("$(metric "$armada_json" .total.latency_us.p50)")
    e_p50+=("$(metric "$etcd_json" .total.latency_us.p50)")
    a_p99+=("$(metric "$armada_json" .total.latency_us.p99)")
    e_p99+=("$(metric "$etcd_json" .total.latency_us.p99)")
    a_err+=("$(metric "$armada_json" .errors)")
    e_err+=("$(metric "$etcd_json" .errors)")
  done
  numeric_ratios=()
  for r in "${ratios[@]}"; do [ "$r" = n/a ] || numeric_ratios+=("$r"); done
  median_ratio=$(median "${numeric_ratios[@]}")
  row="| $name | $clients | $(fmt_ops "$(median "${a_ops[@]}")") | $(fmt_ops "$(median "${e_ops[@]}")") \
| ${median_ratio:-n/a} \
| $(fmt_ms "$(median "${a_p50[@]}")") | $(fmt_ms "$(median "${e_p50[@]}")") \
| $(fmt_ms "$(median "${a_p99[@]}")") | $(fmt_ms "$(median "${e_p99[@]}")") \
| $(count_or_na "$(sum_errors "${a_err[@]}")")/$(count_or_na "$(sum_errors "${e_err[@]}")") |"
  [ "$ROUNDS" -gt 1 ] && row+=" ${ratios[*]} |"
  ROWS+=("$row")
done

# --- report --------------------------------------------------------------------------------

{
  echo "## Armada vs etcd, $NODES node(s) each, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- machine: $(nproc) cores, $(uname -sr)"
  echo "- armada: $("$ARMADA" version 2>/dev/null || echo unknown)$([ "$armada_ok" = 1 ] || echo ' (did not start)')"
  echo "- etcd: $(etcd --version 2>/dev/null | head -n 1)$([ "$etcd_ok" = 1 ] || echo ' (did not start)')"
  echo "- each run: ${RUN_SECONDS}s measured after ${WARMUP} warm-up; keys $KEYS x ${KEY_SIZE} B," \
    "values ${VALUE_SIZE} B; up to $CONNECTIONS connections; mixed = ${READ_RATIO} reads"
  if [ "$ROUNDS" -gt 1 ]; then
    echo "- $ROUNDS rounds per workload, alternating which system runs first; medians; ratio = median of the rounds' ratios"
    echo
    echo "| workload | clients | Armada ops/s | etcd ops/s | Armada/etcd | Armada p50 ms | etcd p50 ms | Armada p99 ms | etcd p99 ms | errors A/e | ratio per round |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  else
    echo
    echo "| workload | clients | Armada ops/s | etcd ops/s | Armada/etcd | Armada p50 ms | etcd p50 ms | Armada p99 ms | etcd p99 ms | errors A/e |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  fi
  printf '%s\n' "${ROWS[@]}"
} | tee "${RESULTS:-/dev/null}"
