#!/usr/bin/env bash
# The writer's figures (issue 3) and their peers in one run: logdb on six storage nodes and stock
# SQLite (logdb-compute-bench), then PostgreSQL 15 single and with a synchronous standby
# (../shared/bench/pg-peer.sh), same TPC-B-like load, scale 10, 1 and 16 clients. JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
seconds=${SECONDS_PER_RUN:-15}
cargo build --release -q -p logdb-storage -p logdb-compute
"$target/release/logdb-compute-bench" --scale 10 --seconds "$seconds" --clients 1,16
peer=../shared/bench/pg-peer.sh
if [ -x "$(command -v pgbench)" ] && [ -f "$peer" ]; then
  bash "$peer" --scale 10 --seconds "$seconds" --clients "1 16" --sync-standby
else
  echo '{"peer":"postgresql","skipped":"pgbench or ../shared/bench/pg-peer.sh not found"}'
fi
