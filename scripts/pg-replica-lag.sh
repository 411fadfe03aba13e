#!/usr/bin/env bash
# PostgreSQL 15's replica lag as the peer of logdb's (issue 6): a primary and an asynchronous
# streaming standby on loopback, pgbench's TPC-B-like load with N clients on the primary, and
# the standby's replay_lag from pg_stat_replication sampled every 50 ms (PostgreSQL reports it
# only while WAL flows). One JSON line with p50/p99.
#
# usage: scripts/pg-replica-lag.sh [--scale 10] [--seconds 20] [--clients 16]
set -euo pipefail
scale=10 seconds=20 clients=16
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    *) echo "pg-replica-lag.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo '{"peer":"postgresql","skipped":"no PostgreSQL server found"}'; exit 0; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/pg-lag.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
primary="$work/primary" standby="$work/standby" p1=$(free_port) p2=$(free_port)
cleanup() {
  as_pg "$bindir/pg_ctl" -D "$standby" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$bindir/pg_ctl" -D "$primary" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
as_pg "$bindir/initdb" -D "$primary" -A trust -U postgres >/dev/null
cat >>"$primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $p1
unix_socket_directories = '$work'
wal_level = replica
max_wal_senders = 4
CONF
echo "host replication postgres 127.0.0.1/32 trust" >>"$primary/pg_hba.conf"
as_pg "$bindir/pg_ctl" -D "$primary" -l "$work/primary.log" -w start >/dev/null
as_pg "$bindir/pgbench" -h 127.0.0.1 -p "$p1" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
as_pg "$bindir/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres -D "$standby" -R -X stream -c fast >/dev/null
printf "port = %s\nunix_socket_directories = '%s'\n" "$p2" "$work" >>"$standby/postgresql.conf"
as_pg "$bindir/pg_ctl" -D "$standby" -l "$work/standby.log" -w start >/dev/null
q() { as_pg psql -h 127.0.0.1 -p "$p1" -U postgres -d postgres -qAtc "$1"; }
for _ in $(seq 100); do [ "$(q "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 1 ] && break; sleep 0.1; done

samples="$work/lag.txt"
as_pg "$bindir/pgbench" -h 127.0.0.1 -p "$p1" -U postgres -n -b tpcb-like -c "$clients" -j 2 -T "$seconds" postgres >"$work/pgbench.out" 2>&1 &
bench=$!
while kill -0 "$bench" 2>/dev/null; do
  q "SELECT extract(epoch FROM replay_lag) * 1000 FROM pg_stat_replication WHERE replay_lag IS NOT NULL" >>"$samples" || true
  sleep 0.05
done
wait "$bench"
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out" | tail -1)
python3 - "$samples" "$clients" "$seconds" "${tps:-0}" <<'PY'
import json, sys
vals = sorted(float(v) for v in open(sys.argv[1]).read().split() if v.strip())
def pct(p):
    return round(vals[min(len(vals) - 1, int(p * (len(vals) - 1) + 0.5))], 2) if vals else None
print(json.dumps({"bench": "replica_lag", "system": "postgresql-async-standby", "clients": int(sys.argv[2]),
                  "seconds": int(sys.argv[3]), "primary_tps": float(sys.argv[4]), "samples": len(vals),
                  "lag_p50_ms": pct(0.5), "lag_p99_ms": pct(0.99)}))
PY
