#!/usr/bin/env bash
# The chaos suite's long mode (tests/chaos.rs): 32 writers and 8 clients on two `serve` processes
# under each fault in turn, writing for KAVACH_CHAOS_SECONDS per fault (default here 60; the CI
# run uses 6), then the table of counts per fault.
#
# Usage: scripts/chaos.sh [seconds-per-fault]
#        KAVACH_CHAOS_SEED=<n> scripts/chaos.sh   # replay a run's random choices
set -euo pipefail
cd "$(dirname "$0")/.."

export KAVACH_CHAOS_SECONDS="${1:-${KAVACH_CHAOS_SECONDS:-60}}"
exec cargo test --test chaos -- --nocapture
