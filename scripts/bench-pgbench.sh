#!/usr/bin/env bash
# The SQL path's ceiling, measured with pgbench on a temporary cluster: commits/s of 8 clients doing
# single-row autocommit INSERTs into three identical tables, the only difference being triggers:
#   plain    no trigger
#   notify   a statement-level trigger that rings NOTIFY (NOTIFY's commit lock is the ceiling)
#   kavach   kavach_stream_events itself: the commit-time sequencer (which also rings NOTIFY)
# and the same with 100-row INSERTs. RUNS (default 3) runs of RUN_SECONDS (default 10) each, median.
#
#   cargo build --release          # for `kavach-stream migrate`
#   scripts/bench-pgbench.sh
#
# The cluster lives in a temporary directory, listens only on a Unix socket there, runs as the
# `postgres` user when we are root (PostgreSQL refuses root) and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${RUN_SECONDS:-10}
CLIENTS=${CLIENTS:-8}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
KAVACH=${KAVACH:-target/release/kavach-stream}
PAYLOAD='{"p": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'

dir=$(mktemp -d /tmp/bench-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

"${as_pg[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-k $dir -c listen_addresses= -c max_connections=100" start >/dev/null
psql=("$PG_BIN/psql" -h "$dir" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1)

"$KAVACH" migrate --database-url "host=$dir user=postgres dbname=postgres" >/dev/null 2>&1
"${psql[@]}" <<'SQL'
CREATE TABLE bench_plain (LIKE kavach_stream_events INCLUDING ALL);
CREATE TABLE bench_notify (LIKE kavach_stream_events INCLUDING ALL);
CREATE FUNCTION bench_ring() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_doorbell', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER bench_ring AFTER INSERT ON bench_notify
    FOR EACH STATEMENT EXECUTE FUNCTION bench_ring();
SQL

bench() { # table rows -> median rows/s
  local table=$1 rows=$2 script="$dir/$1-$2.sql" results=()
  if [ "$rows" = 1 ]; then
    echo "INSERT INTO $table (type, data) VALUES ('audit', '$PAYLOAD');" > "$script"
  else
    echo "INSERT INTO $table (type, data) SELECT 'audit', '$PAYLOAD' FROM generate_series(1, $rows);" > "$script"
  fi
  for _ in $(seq 1 "$RUNS"); do
    tps=$("$PG_BIN/pgbench" -h "$dir" -U postgres -n -M prepared -c "$CLIENTS" -j 2 \
      -T "$SECONDS_PER_RUN" -f "$script" postgres 2>/dev/null |
      sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    results+=("$tps")
  done
  python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[2:]]; m=statistics.median(v); print(f'{sys.argv[1]} commits/s median={m:.0f} rows/s={m*int(sys.argv[1].split(\"x\")[1]):.0f} runs={v}')" \
    "$table-x$rows" "${results[@]}"
}

echo "pgbench: $CLIENTS clients, $SECONDS_PER_RUN s per run, $RUNS runs, fsync on (default settings)"
for rows in 1 100; do
  for table in bench_plain bench_notify kavach_stream_events; do
    bench "$table" "$rows"
  done
done
