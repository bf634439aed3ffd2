#!/usr/bin/env bash
# Backup and restore of one large table against a real single-node Armada: throughput of
# `armada restore` and `armada backup` (MB/s of .bak file) and the peak RSS (VmHWM) of the
# server and of each CLI run.
#
# It runs the #[ignore]d black-box test `large_table_round_trip_with_flat_memory` of
# tests/backup.rs in release mode: the test writes a Regatta-layout backup directory of
# incompressible 16 KiB values with its own (independent) dump encoder, restores it with the
# CLI, backs the table up again, checks every key and value, and prints the figures. The test
# starts and kills its own server; its files live in a temporary directory it removes.
#
# Usage: bench/backup-restore.sh
# Environment (all optional):
#   ARMADA_BACKUP_BENCH_MB   table size in MiB (default 500)
#   ARMADA_BENCH_DIR         where the temporary directory goes (default: $TMPDIR or /tmp);
#                            needs about 4 × the table size free (source, spool, Raft log,
#                            table, backup)
set -euo pipefail

BENCH_NAME=backup-restore
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
export ARMADA_BACKUP_BENCH_MB=${ARMADA_BACKUP_BENCH_MB:-500}

log "${ARMADA_BACKUP_BENCH_MB} MiB table, $(nproc) CPUs, $(uname -sr), $(date -u +%FT%TZ)"
cargo test --release --locked --test backup -- \
  --ignored --exact --nocapture large_table_round_trip_with_flat_memory
