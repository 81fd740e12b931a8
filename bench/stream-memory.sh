#!/usr/bin/env bash
# Resident memory per open stream: COUNT concurrent SSE streams through
# Switchboard, each held open about 2.3 s (the mock waits 100 ms between
# its 23 events), while the gateway's VmRSS is sampled every 100 ms.
# Prints idle and peak RSS and (peak - idle) / COUNT, twice: with the
# streams started together (so their openings, with each request's
# transient state, coincide) and spread evenly over a stream's life (the
# mix a gateway serving many clients holds).
#
#   bench/stream-memory.sh [COUNT]       (default 256; after bench/run.sh has built the mock)
#   BINARY=path/to/switchboard bench/stream-memory.sh 256   # a given build
#
# The figures are printed and saved in bench/results/stream-memory-*/summary.txt.
# Loopback only; stops by itself after about 15 s.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
COUNT="${1:-256}"
MOCK="$BENCH/mock/target/release/mock-openai"
SSE="$BENCH/mock/target/release/sse-bench"
BINARY="$(switchboard_binary "${BINARY:-}")"
mkdir -p "$BENCH/run"
OUT="$BENCH/results/stream-memory-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "binary: $BINARY" >"$OUT/summary.txt"
export SWITCHBOARD_BENCH_DB="$BENCH/run/stream-memory.db"
rm -rf "$SWITCHBOARD_BENCH_DB" "$SWITCHBOARD_BENCH_DB"-* "$SWITCHBOARD_BENCH_DB.journal"

MOCK_ADDR=127.0.0.1:18000 MOCK_CHUNK_DELAY_MS=100 "$MOCK" >"$BENCH/run/stream-memory-mock.log" 2>&1 &
mock_pid=$!
SWITCHBOARD_LOG=warn "$BINARY" serve --config "$BENCH/switchboard.toml" >"$BENCH/run/stream-memory-gateway.log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" "$mock_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:9000/health && break; sleep 0.2; done

stream() {
  "$SSE" --url http://127.0.0.1:9000/v1/chat/completions --model bench-model \
    -c "$1" -z "$2" --ramp "${3:-0}" -H "authorization: Bearer sk-bench-1234"
}
rss() { awk '/^VmRSS:/{print $2}' "/proc/$gateway_pid/status"; }

stream 4 3s >/dev/null   # warm-up: pools and buffers exist
sleep 1
idle=$(rss)
# spread: starts over 2.3 s, a stream's length (first: freed memory may stay
# resident); together: every stream starts at once
for layout in spread:2300 together:0; do
  stream "$COUNT" 8s "${layout#*:}" >"$BENCH/run/stream-memory-sse.json" &
  load=$!
  peak=0
  while kill -0 "$load" 2>/dev/null; do
    now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.1
  done
  wait "$load"
  {
    echo "${layout%%:*}: streams: $COUNT  idle RSS: ${idle} KiB  peak RSS: ${peak} KiB  per open stream: $(( (peak - idle) / COUNT )) KiB"
    echo "load generator: $(tail -1 "$BENCH/run/stream-memory-sse.json")"
  } | tee -a "$OUT/summary.txt"
  sleep 3
done
echo "results: $OUT"
