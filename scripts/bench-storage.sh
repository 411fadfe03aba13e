#!/usr/bin/env bash
# Issue 17's figures in one run, JSON lines: a whole `logdb up` volume (1 h retention) under a
# 10-minute TPC-B-like load at 16 clients — storage bytes per transaction per node beside the redo
# a segment receives, storage-node CPU per 1,000 transactions, RSS at start and end, commits/s at
# 1 and 16 clients (logdb-space-bench) — then PostgreSQL 15 under the same load (the peer, when
# ../shared/bench/pg-peer.sh is there), then ReadPage latency by delta-chain depth and for a page
# whose history is scattered over the log (logdb-storage-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q
"$target/release/logdb-space-bench" --seconds "${SECONDS_PER_RUN:-600}" --clients 16 --retention 1h
peer=../shared/bench/pg-peer.sh
if [ -x "$(command -v pgbench)" ] && [ -f "$peer" ]; then
  bash "$peer" --scale 10 --seconds 20 --clients "1 16"
else
  echo '{"peer":"postgresql","skipped":"pgbench or ../shared/bench/pg-peer.sh not found"}'
fi
"$target/release/logdb-storage-bench" --seconds 2
