#!/usr/bin/env bash
# Issue 6's figures in one run, JSON lines: replica lag under a 16-client TPC-B-like load and
# failover time (logdb-volume-bench, on a whole `logdb up` volume) next to a PostgreSQL async
# standby's replay lag under the same load (scripts/pg-replica-lag.sh), writer crash recovery with
# 10/100/1000 MB of unmaterialized log (logdb-recovery-bench), and PostgreSQL 15's crash
# recovery after the same amount of WAL (scripts/pg-crash-recovery.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q
"$target/release/logdb-volume-bench" --scale "${SCALE:-10}" --seconds "${SECONDS_PER_RUN:-20}" --clients 16 --failovers 5
bash scripts/pg-replica-lag.sh --scale "${SCALE:-10}" --seconds "${SECONDS_PER_RUN:-20}" --clients 16
"$target/release/logdb-recovery-bench" --sizes-mb 10,100,1000
bash scripts/pg-crash-recovery.sh 10 100 1000
