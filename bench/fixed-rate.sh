#!/usr/bin/env bash
# p50/p99/p99.9 at a fixed rate (oha -q RATE --latency-correction, 256
# connections), layout `pinned` (the proxy alone on core 1; oha and the mock
# on core 0), ROUNDS rounds of: the mock directly, then nginx and Switchboard
# (as bench/switchboard.toml, or CONFIG=), each measured twice right after it
# starts: `cold` (its first load) and `warm` (a second oha process, so new
# client connections, on the same proxy).
#
#   flock /tmp/bench.lock bench/fixed-rate.sh [BINARY]   (default: builds target/release/switchboard)
#   RATE=2000 ROUNDS=2 DURATION=8 bench/fixed-rate.sh    # the defaults
#   SPIN=1 bench/fixed-rate.sh B      # a nice-19 busy loop keeps core 1 awake meanwhile
#
# Before each round, the freeze probe (bench/freezes.sh) spins 3 s on both
# cores: how much of the time each core stopped running it, and for how
# long at most, is what a proxy's tail at this rate cannot go below.
#
# Needs nginx, oha and the mock (harness/install.sh tools, harness/install.sh
# mock). Loopback only; stops by itself. Results: bench/results/rate-*/summary.md.
# The bench scripts share bench/run and their ports: run one at a time (flock).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
NGINX_PORT=18080
source "$BENCH/harness/peers.sh"
RATE="${RATE:-2000}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8}"
CONFIG="$(realpath "${CONFIG:-$BENCH/switchboard.toml}")"
require_pinned_peers
BINARY="$(switchboard_binary "${1:-}")"
OUT="$RESULTS/rate-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
export SWITCHBOARD_BENCH_DB="$RUN/rate.db" SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
printf 'binary %s\nconfig %s\nrate %s\nspin %s\n' "$BINARY" "$CONFIG" "$RATE" "${SPIN:-}" >"$OUT/setup.txt"

proxy_pid="" spinner=""
cleanup() {
  if [ -n "$proxy_pid" ]; then stop_tree "$proxy_pid"; fi
  if [ -n "$spinner" ]; then kill "$spinner" 2>/dev/null || true; fi
  peer_stop nginx
  stop_mock
}
trap cleanup EXIT

load() { # name, url
  taskset -c 0 "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
    -H "Authorization: Bearer sk-bench-1234" -t 30s -z "${DURATION}s" -c 256 -q "$RATE" \
    --latency-correction "$2" >"$OUT/$1.json" 2>/dev/null || true
}

start_mock 0 1
if [ "${SPIN:-}" = 1 ]; then
  taskset -c 1 nice -n 19 sh -c 'while :; do :; done' &
  spinner=$!
fi
for round in $(seq "$ROUNDS"); do
  log "round $round"
  "$BENCH/freezes.sh" 3 0.2 >"$OUT/freezes-r$round.txt"
  load "direct-r$round" "$MOCK_URL/chat/completions"
  peer_start nginx 1 1
  for phase in cold warm; do load "nginx-$phase-r$round" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions"; done
  peer_stop nginx
  rm -rf "$RUN"/rate.db*
  start_pinned_switchboard "$CONFIG" "$LOGS/rate-switchboard.log"
  for phase in cold warm; do load "switchboard-$phase-r$round" "http://127.0.0.1:9000/v1/chat/completions"; done
  stop_tree "$proxy_pid"; proxy_pid=""
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = ["| round | contender | p50 ms | p99 ms | p99.9 ms | req/s | not 200 |", "|---|---|---|---|---|---|---|"]
for r in range(1, rounds + 1):
    for name in ("direct", "nginx-cold", "nginx-warm", "switchboard-cold", "switchboard-warm"):
        try:
            d = json.load(open(os.path.join(out, f"{name}-r{r}.json")))
        except (OSError, ValueError):
            rows.append(f"| {r} | {name} | – | – | – | – | no result |")
            continue
        p = d.get("latencyPercentiles", {})
        codes = d.get("statusCodeDistribution", {})
        # oha cuts the requests still in flight when the time is up: not failures
        errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
        bad = sum(v for k, v in codes.items() if k != "200") + sum(errors.values())
        ms = lambda q: "–" if p.get(q) is None else f"{p[q] * 1000:.2f}"
        rows.append(f"| {r} | {name} | {ms('p50')} | {ms('p99')} | {ms('p99.9')} | "
                    f"{d['summary']['requestsPerSec']:.0f} | {bad} |")
rows.append("")
rows.append("Freezes (bench/freezes.sh's probe, 3 s on each core before the round; gaps over 0.2 ms):")
rows.append("")
for r in range(1, rounds + 1):
    try:
        lines = open(os.path.join(out, f"freezes-r{r}.txt")).read().split("\n")
    except OSError:
        lines = ["no result"]
    rows.extend(f"- round {r}, {line}" for line in lines if line.strip())
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
