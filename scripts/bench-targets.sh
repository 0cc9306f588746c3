#!/usr/bin/env bash
# Measures the targets of issue 6 with the load generator, RUNS times each (default 3), and prints
# the median of every figure per target. Every run spawns its own temporary PostgreSQL and
# `kavach-stream serve` on 127.0.0.1, is bounded in time, and stops by itself.
#
#   cargo build --release --example loadgen && cargo build --release
#   scripts/bench-targets.sh                       # every target
#   scripts/bench-targets.sh fanout100 catchup     # some of them
#   RUNS=5 OUT=target/bench/mine.jsonl scripts/bench-targets.sh fanout1000
#   SERVERS="/tmp/before /tmp/after" scripts/bench-targets.sh idle19k   # two builds, alternating
#
# Targets: fanout100 fanout1000 fanout2000 idle19k emit sqlpath catchup connect
# (pgbench comparisons: scripts/bench-pgbench.sh; Nchan side by side: scripts/bench-vs-nchan.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
OUT=${OUT:-target/bench/targets.jsonl}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
mkdir -p "$(dirname "$OUT")"
ulimit -n 20000

run() { # label, loadgen arguments...
  local label=$1
  shift
  for i in $(seq 1 "$RUNS"); do
    for server in ${SERVERS:-default}; do
      local named=$label server_args=()
      if [ "$server" != default ]; then
        named="$label@$(basename "$server")"
        server_args=(--server-bin "$server")
      fi
      echo "== $named run $i/$RUNS" >&2
      "$LOADGEN" --json --label "$named" "${server_args[@]}" "$@" | tee -a "$OUT" || echo "   (run failed: exit $?)" >&2
    done
  done
}

target() {
  case $1 in
    # Four staggered writers at 25 events/s each: one awaited publish at a time cannot hold
    # 100/s once the box is saturated, and the target is the delivery, not one round trip.
    fanout100) run fanout100 -n 100 --rate 100 --writers 4 --duration 20 ;;
    fanout1000) run fanout1000 -n 1000 --rate 100 --writers 4 --duration 20 ;;
    fanout2000) run fanout2000 -n 2000 --rate 100 --writers 4 --duration 60 ;;
    # 19,000 connections, each receiving 1 event/s; RSS per connection from before/after connect.
    idle19k) run idle19k -n 19000 --rate 1 --duration 20 --sources 16 --connect-concurrency 500 --drain 20 ;;
    # emit path: 50,000 events/s stored and delivered to 10 clients.
    emit) run emit50k -n 10 --rate 50000 --writers 4 --write-path emit --duration 10 --drain 30 ;;
    # SQL path: 8 writers doing autocommit single-row INSERTs as fast as they can, 10 clients.
    sqlpath) run sql8 -n 10 --rate 40000 --writers 8 --write-path sql --duration 10 --drain 30 ;;
    catchup) run catchup100k --mode catchup --catchup-events 100000 -n 1 ;;
    connect) run connect1000 --mode connect -n 5000 --connect-rate 1000 --sources 8 ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

if [ $# -eq 0 ]; then
  set -- fanout100 fanout1000 fanout2000 idle19k emit sqlpath catchup connect
fi
for name in "$@"; do
  target "$name"
done
python3 scripts/bench-median.py "$OUT"
