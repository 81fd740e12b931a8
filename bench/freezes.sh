#!/usr/bin/env bash
# How long each core of this machine stops running a busy program: a spinning
# probe (harness/freezes.c) pinned to every core at once counts the gaps
# longer than THRESHOLD_MS between its clock readings. On a virtual machine
# these are mostly the host running something else. A proxy on a core that
# stops 1% of the time for up to several ms cannot keep every request but
# the slowest 1% within 1 ms, whatever the proxy does.
#
#   bench/freezes.sh [SECONDS] [THRESHOLD_MS]     (default 10 s, 0.2 ms)
#
# Takes every core for SECONDS: run it alone (flock /tmp/bench.lock).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
SECONDS_="${1:-10}"
THRESHOLD="${2:-0.2}"
probe="$(freezes_probe)"
cores=$(nproc)
for core in $(seq 0 $((cores - 1))); do
  taskset -c "$core" "$probe" "$SECONDS_" "$THRESHOLD" >"$RUN/freezes-$core.txt" &
done
wait
for core in $(seq 0 $((cores - 1))); do
  echo "core $core: $(cat "$RUN/freezes-$core.txt")"
done
