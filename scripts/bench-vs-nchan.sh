#!/usr/bin/env bash
# Side by side: nginx + Nchan (no database) and kavach-stream (PostgreSQL) under the same SSE load,
# measured in one run of this script. For each load (clients x events/s) it alternates Nchan and
# kavach-stream runs RUNS times (default 3), then prints the medians and the ratios.
#
#   apt-get install -y nginx libnginx-mod-nchan
#   cargo build --release --example loadgen && cargo build --release
#   scripts/bench-vs-nchan.sh                 # 100x100, 1000x100, 2000x100, 20 s each
#   LOADS="1000x100" DURATION=10 RUNS=1 scripts/bench-vs-nchan.sh
#
# nginx runs from its own temporary prefix on 127.0.0.1 and a free port, with 2 worker processes
# (kavach-stream's runtime also uses both cores), and is stopped at the end (also on Ctrl-C).
# Both servers get the same 100-byte message: Nchan publishes it as the whole message body;
# kavach-stream stores it as the event's `data` and sends it inside its JSON envelope.
# Latency `start` is from the publisher's write start (the definition of the issue's anchors);
# `commit` is from the publisher's acknowledgement (the Nchan POST response, kavach's commit).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
LOADS=${LOADS:-"100x100 1000x100 2000x100"}
DURATION=${DURATION:-20}
PAYLOAD=${PAYLOAD:-100}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
OUT=${OUT:-target/bench/vs-nchan.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
ulimit -n 20000

[ -f "$NCHAN_MODULE" ] || { echo "no $NCHAN_MODULE: apt-get install -y nginx libnginx-mod-nchan" >&2; exit 2; }
[ -x "$LOADGEN" ] || { echo "no $LOADGEN: cargo build --release --example loadgen" >&2; exit 2; }

prefix=$(mktemp -d /tmp/bench-nchan.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$prefix/logs" "$prefix/temp"

stop_nginx() {
  if [ -f "$prefix/nginx.pid" ]; then
    kill -QUIT "$(cat "$prefix/nginx.pid")" 2>/dev/null || true
    sleep 1
  fi
  rm -rf "$prefix"
}
trap stop_nginx EXIT

cat > "$prefix/nginx.conf" <<EOF
load_module $NCHAN_MODULE;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $prefix/temp/body;
  proxy_temp_path $prefix/temp/proxy;
  fastcgi_temp_path $prefix/temp/fastcgi;
  uwsgi_temp_path $prefix/temp/uwsgi;
  scgi_temp_path $prefix/temp/scgi;
  nchan_shared_memory_size 256M;
  server {
    listen 127.0.0.1:$port;
    location = /pub {
      nchan_publisher;
      nchan_channel_id \$arg_id;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }
    location ~ ^/sub/([\w-]+)$ {
      nchan_subscriber eventsource;
      nchan_channel_id \$1;
    }
  }
}
EOF
nginx -p "$prefix" -c "$prefix/nginx.conf"
sleep 0.5
master=$(cat "$prefix/nginx.pid")
workers=$(pgrep -P "$master" | tr '\n' ' ')
pid_args=(--server-pid "$master")
for pid in $workers; do pid_args+=(--server-pid "$pid"); done
echo "nginx + Nchan on 127.0.0.1:$port (master $master, workers $workers)" >&2

for load in $LOADS; do
  clients=${load%x*}
  rate=${load#*x}
  common=(-n "$clients" --rate "$rate" --writers 4 --duration "$DURATION" --payload-bytes "$PAYLOAD" --json)
  for i in $(seq 1 "$RUNS"); do
    echo "== $load run $i/$RUNS: nchan" >&2
    "$LOADGEN" "${common[@]}" --target nchan --url "http://127.0.0.1:$port" "${pid_args[@]}" \
      --label "nchan-$load" | tee -a "$OUT" || echo "   (nchan run failed: exit $?)" >&2
    echo "== $load run $i/$RUNS: kavach-stream" >&2
    "$LOADGEN" "${common[@]}" --label "kavach-$load" | tee -a "$OUT" \
      || echo "   (kavach run failed: exit $?)" >&2
  done
done

python3 scripts/bench-median.py "$OUT"
python3 - "$OUT" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        runs[r["label"]].append(r)
def med(label, key):
    values = [r[key] for r in runs.get(label, []) if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else float("nan")
keys = ["deliveries_per_s", "start_p50_ms", "start_p99_ms", "commit_p50_ms", "commit_p99_ms",
        "server_cpu_us_per_delivery", "rss_peak_mib"]
print("| load | server | " + " | ".join(keys) + " |")
print("|---|---|" + "---|" * len(keys))
loads = sorted({l.split("-", 1)[1] for l in runs}, key=lambda l: int(l.split("x")[0]))
for load in loads:
    for server in ("nchan", "kavach"):
        cells = [f"{med(f'{server}-{load}', k):g}" for k in keys]
        print(f"| {load} | {server} | " + " | ".join(cells) + " |")
    ratios = [med(f"kavach-{load}", k) / med(f"nchan-{load}", k) if med(f"nchan-{load}", k) else float("nan") for k in keys]
    print(f"| {load} | kavach/nchan | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
EOF
