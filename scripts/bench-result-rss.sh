#!/usr/bin/env bash
# What a large result costs the writer in memory: a `logdb up --insecure` volume with a 100 MB
# table, then the peak RSS the writer adds while psql reads all of it — twice as one statement
# (streamed to the client as it is read), twice as part of a two-statement string (gathered
# whole first). The first read also fills the pages' caches; the ones after it show the
# result's own cost. Prints one JSON line per query. Builds debug binaries unless LOGDB_BIN_DIR
# names a directory that has them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${LOGDB_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
[ -n "${LOGDB_BIN_DIR:-}" ] || cargo build -q -p logdb-operator --bin logdb -p logdb-compute -p logdb-storage
dir=$(mktemp -d)
trap '"$bin/logdb" down --data-dir "$dir/data" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin/logdb" up --data-dir "$dir/data" --port 0 --insecure --bin-dir "$bin" >"$dir/up.log" 2>&1 &
for _ in $(seq 600); do grep -q '^ready:' "$dir/up.log" && break; sleep 0.1; done
grep -q '^ready:' "$dir/up.log" || { cat "$dir/up.log" >&2; exit 1; }
url=$(sed -n "s/^ready: psql '\(.*\)'$/\1/p" "$dir/up.log")
psql "$url" -q -c "CREATE TABLE big (k INTEGER PRIMARY KEY, v TEXT)" \
  -c "INSERT INTO big SELECT value, printf('%01000d', value) FROM (WITH RECURSIVE c(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM c WHERE value < 100000) SELECT value FROM c)"
pid=$(pgrep -f "logdb-compute.*--writer-id compute-0" | head -1)
for q in "SELECT * FROM big" "SELECT * FROM big" "SELECT * FROM big; SELECT 1" "SELECT * FROM big; SELECT 1"; do
  echo 5 >"/proc/$pid/clear_refs"
  before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  bytes=$(psql "$url" -q -At -c "$q" | wc -c)
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  echo "{\"bench\":\"result_rss\",\"query\":\"$q\",\"result_bytes\":$bytes,\"writer_rss_before_kb\":$before,\"writer_peak_rss_kb\":$peak,\"added_kb\":$((peak - before))}"
done
