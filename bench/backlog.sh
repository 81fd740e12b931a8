#!/usr/bin/env bash
# The request log's backlog under a load that saturates the gateway's core:
# how many records wait to be written, how much memory the gateway holds
# meanwhile, and how long after the load the last of them reaches the
# database. Builds alternate, each round starting each afresh on an empty
# SQLite file, pinned alone on core 1 (the mock and the load generator on
# core 0), as `bench/switchboard.toml` configures it (master key, every
# request recorded, metrics on), under DURATION seconds at concurrency 64.
# During the load the gateway's `switchboard_record_backlog` (records
# queued or spilled, not yet taken by the writer), its
# `switchboard_record_queue_bytes` (the memory of the records not yet
# committed, the batch being written included) and its resident memory are
# read every 100 ms; after it, the queue's bytes are read until they are 0
# (the last batch committed). Without BURSTS, each round then checks that
# every request answered 200 was written (`switchboard_records_written_total`).
#
#   flock /tmp/bench.lock bench/backlog.sh BEFORE AFTER [ROUNDS]   # default 3 rounds, ~1 minute each
#   DURATION=20 flock /tmp/bench.lock bench/backlog.sh BEFORE AFTER 2
#   RATE=10000 flock /tmp/bench.lock bench/backlog.sh BEFORE AFTER   # an open loop at a fixed rate instead
#   BURSTS=1 RATE=2000 DURATION=30 flock /tmp/bench.lock bench/backlog.sh BEFORE AFTER   # and bursts of 64 connections, 1 s in 3
#
# A rate just under what the gateway serves at concurrency 64 keeps its core
# nearly full, with moments to spare now and then: the load where the
# background writer thread begins batches it cannot finish at once.
#
# Needs what bench/run.sh installs (oha, the mock). Loopback only; stops by
# itself. Results: bench/results/backlog-*/summary.md.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
[ $# -ge 2 ] || { echo "usage: bench/backlog.sh BEFORE AFTER [ROUNDS]" >&2; exit 2; }
BUILDS=("$(realpath "$1")" "$(realpath "$2")")
ROUNDS="${3:-3}"
DURATION="${DURATION:-10}"
RATE="${RATE:-}"
[ -z "$RATE" ] || [[ "$RATE" =~ ^[0-9]+$ ]] || { echo "RATE must be requests a second" >&2; exit 2; }
[ -x "$OHA" ] || { echo "oha not found ($OHA): run harness/install.sh tools" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built ($MOCK_BIN): run harness/install.sh mock" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (load on core 0, gateway on core 1)" >&2; exit 2; }
OUT="$RESULTS/backlog-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
export SWITCHBOARD_LOG=warn SWITCHBOARD_BENCH_DB="$RUN/backlog.db"
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
proxy_pid="" load="" bursts=""
cleanup() {
  for pid in $load $bursts; do kill "$pid" 2>/dev/null || true; done
  [ -n "$proxy_pid" ] && stop_tree "$proxy_pid"
  stop_mock
}
trap cleanup EXIT
start_mock 0 1

# The value of metric $1 on the gateway (0 when absent).
metric() {
  { curl -s http://127.0.0.1:9000/metrics || true; } |
    awk -v name="$1" '$1 == name {print int($2); found=1} END {if (!found) print 0}'
}

echo "load: ${RATE:+$RATE requests a second, }64 connections, ${DURATION} s" >"$OUT/summary.md"
echo >>"$OUT/summary.md"
echo "| round | build | req/s | answered 200 | written | backlog max | uncommitted max MiB | RSS idle / max MiB | last commit after the load, ms |" >>"$OUT/summary.md"
echo "|---|---|---|---|---|---|---|---|---|" >>"$OUT/summary.md"
for round in $(seq "$ROUNDS"); do
  order=(0 1)
  [ $((round % 2)) -eq 0 ] && order=(1 0)
  for which in "${order[@]}"; do
    BINARY="${BUILDS[$which]}"
    name=$([ "$which" = 0 ] && echo before || echo after)
    rm -rf "$SWITCHBOARD_BENCH_DB" "$SWITCHBOARD_BENCH_DB"-* "$SWITCHBOARD_BENCH_DB.journal"
    start_pinned_switchboard "$BENCH/switchboard.toml" "$LOGS/backlog-$name.log"
    idle=$(rss_kb "$proxy_pid")
    samples="$OUT/r$round-$name.samples"
    : >"$samples"
    taskset -c 0 "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer sk-bench-1234" -z "${DURATION}s" -c 64 ${RATE:+-q "$RATE"} \
      http://127.0.0.1:9000/v1/chat/completions >"$OUT/r$round-$name.json" 2>/dev/null &
    load=$!
    if [ -n "${BURSTS:-}" ]; then
      # Bursts of concurrency 64 over the steady load, 1 s in every 3.
      ( for _ in $(seq $((DURATION / 3))); do
          sleep 2
          taskset -c 0 "$OHA" --no-tui -m POST -T application/json -d "$BODY" \
            -H "Authorization: Bearer sk-bench-1234" -z 1s -c 64 \
            http://127.0.0.1:9000/v1/chat/completions >/dev/null 2>&1 || true
        done ) &
      bursts=$!
    fi
    while kill -0 "$load" 2>/dev/null; do
      echo "$(metric switchboard_record_backlog) $(metric switchboard_record_queue_bytes) $(rss_kb "$proxy_pid")" >>"$samples"
      sleep 0.1
    done
    wait "$load" || true
    [ -z "${BURSTS:-}" ] || wait "$bursts" || true
    load="" bursts=""
    ended=$(date +%s%N)
    drained=""
    for _ in $(seq 600); do
      if [ "$(metric switchboard_record_queue_bytes)" = 0 ]; then
        drained=$((($(date +%s%N) - ended) / 1000000))
        break
      fi
      sleep 0.05
    done
    written=$(metric switchboard_records_written_total)
    read -r rps answered < <(python3 - "$OUT/r$round-$name.json" <<'PY' || echo "0 0"
import json, sys
try:
    summary = json.load(open(sys.argv[1]))
    print(int(summary["summary"]["requestsPerSec"]), summary.get("statusCodeDistribution", {}).get("200", 0))
except (OSError, ValueError, KeyError):
    print(0, 0)
PY
)
    read -r backlog_max queue_max rss_max < <(awk '{if ($1 > b) b = $1; if ($2 > q) q = $2; if ($3 > r) r = $3} END {print b + 0, q + 0, r + 0}' "$samples")
    if [ -z "${BURSTS:-}" ] && [ "$written" -lt "$answered" ]; then
      written="$written (MISSING $((answered - written)))"
    fi
    stop_tree "$proxy_pid"; proxy_pid=""
    awk -v round="$round" -v name="$name" -v rps="$rps" -v answered="$answered" -v written="$written" \
      -v backlog="$backlog_max" -v queue="$queue_max" -v idle="$idle" -v peak="$rss_max" -v drained="${drained:-not in 30 s}" \
      'BEGIN {printf "| %s | %s | %s | %s | %s | %s | %.1f | %.1f / %.1f | %s |\n", round, name, rps, answered, written, backlog, queue / 1048576, idle / 1024, peak / 1024, drained}' |
      tee -a "$OUT/summary.md"
  done
done
echo "before: ${BUILDS[0]}" >>"$OUT/summary.md"
echo "after: ${BUILDS[1]}" >>"$OUT/summary.md"
echo "results: $OUT"
