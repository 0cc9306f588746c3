#!/usr/bin/env python3
"""Prints the median of every numeric field per label from the load generator's --json lines.

    python3 scripts/bench-median.py target/bench/targets.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys
from collections import defaultdict

KEYS = [
    "deliveries_per_s", "commit_p50_ms", "commit_p99_ms", "commit_p999_ms", "commit_max_ms",
    "start_p50_ms", "start_p99_ms", "start_p999_ms", "start_max_ms", "server_cpu_us_per_delivery",
    "db_cpu_us_per_delivery", "server_cpu_pct", "db_cpu_pct", "rss_peak_mib",
    "rss_kib_per_connection", "written", "written_per_s", "events_per_s", "connects_per_s", "connect_p50_ms",
    "connect_p99_ms", "connect_max_ms", "lost", "duplicated", "reordered", "client_errors",
]


def main(paths):
    runs = defaultdict(list)
    for path in paths:
        with open(path) as lines:
            for line in lines:
                line = line.strip()
                if line.startswith("{"):
                    record = json.loads(line)
                    runs[record["label"]].append(record)
    for label, records in runs.items():
        passed = sum(1 for r in records if r.get("passed"))
        medians = []
        for key in KEYS:
            values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
            if values:
                medians.append(f"{key}={statistics.median(values):g}")
        print(f"{label} runs={len(records)} passed={passed} " + " ".join(medians))


if __name__ == "__main__":
    main(sys.argv[1:])
