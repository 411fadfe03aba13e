#!/usr/bin/env bash
# PostgreSQL 15's crash recovery as the peer of logdb's (issue 6): a throwaway cluster with
# checkpoints held off, N MB of WAL written after the last checkpoint, kill -9 of the postmaster,
# then the time until it accepts a connection again (WAL replay). One JSON line per size.
#
# usage: scripts/pg-crash-recovery.sh [sizes in MB, default "10 100 1000"]
set -euo pipefail
sizes=${*:-10 100 1000}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo '{"peer":"postgresql","skipped":"no PostgreSQL server found"}'; exit 0; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

work=$(mktemp -d /tmp/pg-crash.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
data="$work/data" port=$(free_port)
cleanup() { as_pg "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

as_pg "$bindir/initdb" -D "$data" -A trust -U postgres >/dev/null
cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
fsync = on
synchronous_commit = on
max_wal_size = 16GB
checkpoint_timeout = 1d
CONF
as_pg "$bindir/pg_ctl" -D "$data" -l "$work/pg.log" -w start >/dev/null
q() { as_pg psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAtc "$1"; }
q "CREATE TABLE blobs (id bigint PRIMARY KEY, b bytea)"
# Stored as written, uncompressed (like logdb's random blobs): the WAL carries every byte.
q "ALTER TABLE blobs ALTER COLUMN b SET STORAGE EXTERNAL"
next=1
for mb in $sizes; do
  q "CHECKPOINT" >/dev/null
  start=$(q "SELECT pg_current_wal_lsn()")
  while :; do
    done_mb=$(q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start') / 1048576")
    python3 -c "import sys; sys.exit(0 if $done_mb >= $mb else 1)" && break
    # About 1 MB of rows per transaction.
    q "INSERT INTO blobs SELECT g, decode(repeat(md5(random()::text), 125), 'hex') FROM generate_series($next, $((next + 499))) g" >/dev/null
    next=$((next + 500))
  done
  pid=$(head -1 "$data/postmaster.pid")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
  # Children of the killed postmaster exit on their own; wait for the shared memory to go.
  while pgrep -u postgres -f "postgres: .*$port" >/dev/null 2>&1; do sleep 0.01; done
  t0=$(now_ms)
  as_pg "$bindir/pg_ctl" -D "$data" -l "$work/pg.log" start >/dev/null 2>&1
  until q "SELECT 1" >/dev/null 2>&1; do sleep 0.01; done
  t1=$(now_ms)
  printf '{"bench":"crash_recovery","system":"postgresql","wal_since_checkpoint_mb":%s,"recovery_to_first_query_ms":%s}\n' \
    "$(python3 -c "print(round($done_mb))")" "$((t1 - t0))"
done
