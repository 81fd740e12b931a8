#!/usr/bin/env bash
# Two builds of the gateway on the same load, alternating, for a change's
# before and after: each round runs the mock directly, then A and B (B
# first in even rounds), at concurrency 64 (throughput, p99) and 1 (added
# latency over the direct run of the same round), against the bench mock
# upstream, with the `off` configuration of observability.sh (no request
# log, no metrics, no tracing), so that what differs is the request path;
# FULL=1 turns the request log (SQLite) and metrics on, as run.sh has them.
#
#   flock /tmp/bench.lock bench/ab.sh BINARY_A BINARY_B [ROUNDS]   # default 3
#   DURATION=2 bench/ab.sh A B 1                                   # a quick check
#   PINNED=1 bench/ab.sh A B 6        # the gateway alone on core 1; mock and oha on core 0
#   FULL=1 PINNED=1 bench/ab.sh A B 6 # the same with every request recorded, metrics on
#
# Needs oha and the mock (harness/install.sh tools, harness/install.sh mock;
# OHA= and MOCK_BIN= may point at builds elsewhere). Loopback only.
# Results: bench/results/ab-*/summary.md, with oha's JSON.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
[ $# -ge 2 ] || { sed -n 2,17p "$0" >&2; exit 2; }
A="$(realpath "$1")"
B="$(realpath "$2")"
ROUNDS="${3:-3}"
DURATION="${DURATION:-10}"
# PINNED=1: layout `pinned` of run.sh (the gateway alone on core 1, the mock
# and the load generator on core 0); unset: nothing pinned.
if [ "${PINNED:-}" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "PINNED=1 needs 2 cores" >&2; exit 2; }
  LOAD_CPUS=0 GATEWAY_CPUS=1
else
  LOAD_CPUS="" GATEWAY_CPUS=""
fi
[ -x "$A" ] && [ -x "$B" ] || { echo "both binaries must exist and be executable" >&2; exit 2; }
[ -x "$OHA" ] || { echo "oha not found ($OHA): run harness/install.sh tools" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built ($MOCK_BIN): run harness/install.sh mock" >&2; exit 2; }
OUT="$RESULTS/ab-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN"
export SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MASTER=sk-bench-1234
GATEWAY=http://127.0.0.1:9000
printf 'A %s\nB %s\nPINNED=%s\nFULL=%s\n' "$A" "$B" "${PINNED:-}" "${FULL:-}" >"$OUT/binaries.txt"

gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  stop_mock
}
trap cleanup EXIT
start_mock "$LOAD_CPUS" ""

cat >"$RUN/ab.toml" <<TOML
[server]
listen = "127.0.0.1:9000"
master_key = "$MASTER"
[storage]
url = "sqlite://$RUN/ab.db"
$(if [ "${FULL:-}" != 1 ]; then printf '[logging]\nrequests = false\n[metrics]\nenabled = false\n'; fi)
$(mock_model_toml unpriced)
TOML

load() { # name, url, concurrency, round
  $(pin_prefix "$LOAD_CPUS") "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
    -H "Authorization: Bearer $MASTER" -t 30s -z "${DURATION}s" -c "$3" \
    "$2" >"$OUT/$1-r$4-c$3.json" 2>/dev/null || true
}

run_side() { # side, binary, round
  rm -rf "$RUN/ab.db"*
  nohup $(pin_prefix "$GATEWAY_CPUS") "$2" serve --config "$RUN/ab.toml" >"$LOGS/ab-$1.log" 2>&1 &
  gateway_pid=$!
  wait_http "$GATEWAY/health" 30 || { echo "gateway $1 did not start: $LOGS/ab-$1.log" >&2; exit 1; }
  for concurrency in 64 1; do load "$1" "$GATEWAY/v1/chat/completions" "$concurrency" "$3"; done
  stop_tree "$gateway_pid"; gateway_pid=""
  # what the request log holds once the gateway has stopped (it drains)
  if [ "${FULL:-}" = 1 ]; then
    python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM requests").fetchone()[0])' \
      "$RUN/ab.db" >"$OUT/$1-r$3-records.txt" || echo "the request log of $1, round $3, could not be read" >&2
  fi
}

for round in $(seq 1 "$ROUNDS"); do
  log "round $round"
  load direct "$MOCK_URL/chat/completions" 1 "$round"
  if [ $((round % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for side in $order; do
    if [ "$side" = a ]; then run_side a "$A" "$round"; else run_side b "$B" "$round"; fi
  done
done

python3 - "$OUT" "$ROUNDS" "$DURATION" <<'PY'
import json, os, statistics, sys
out, rounds, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def run(name, c, r):
    try:
        d = json.load(open(os.path.join(out, f"{name}-r{r}-c{c}.json")))
    except (OSError, ValueError):
        return None
    codes = d.get("statusCodeDistribution", {})
    p = d.get("latencyPercentiles", {})
    return {"rps": d["summary"]["requestsPerSec"], "p50": (p.get("p50") or 0) * 1000,
            "answered": codes.get("200", 0),
            "p99": (p.get("p99") or 0) * 1000, "ok": codes.get("200", 0) / (sum(codes.values()) or 1)}
rows = [f"{rounds} round(s) of {duration} s per side and concurrency, alternating; medians over rounds.", "",
        "| round | A c64 req/s | B c64 req/s | B/A | A c1 added p50 ms | B c1 added p50 ms | B/A |",
        "|---|---|---|---|---|---|---|"]
ratios_rps, ratios_added, per_side = [], [], {"a": [], "b": []}
for r in range(1, rounds + 1):
    direct = run("direct", 1, r)
    a64, b64, a1, b1 = run("a", 64, r), run("b", 64, r), run("a", 1, r), run("b", 1, r)
    if None in (direct, a64, b64, a1, b1):
        continue
    added_a, added_b = a1["p50"] - direct["p50"], b1["p50"] - direct["p50"]
    ratios_rps.append(b64["rps"] / a64["rps"])
    ratios_added.append(added_b / added_a if added_a > 0 else float("nan"))
    for side, c64, added, c1 in (("a", a64, added_a, a1), ("b", b64, added_b, b1)):
        per_side[side].append((c64["rps"], c64["p99"], added, min(c64["ok"], c1["ok"])))
    rows.append(f"| {r} | {a64['rps']:.0f} | {b64['rps']:.0f} | {ratios_rps[-1]:.3f} | "
                f"{added_a:.3f} | {added_b:.3f} | {ratios_added[-1]:.3f} |")
med = lambda values: statistics.median(values) if values else float("nan")
rows += ["", "| side | c64 req/s | c64 p99 ms | c1 added p50 ms | 200s |", "|---|---|---|---|---|"]
for side in ("a", "b"):
    s = per_side[side]
    rows.append(f"| {side.upper()} | {med([x[0] for x in s]):.0f} | {med([x[1] for x in s]):.2f} | "
                f"{med([x[2] for x in s]):.3f} | {min([x[3] for x in s], default=float('nan')):.2%} |")
rows += ["", f"B/A, median of the rounds' ratios: c64 req/s **{med(ratios_rps):.3f}**, "
             f"c1 added p50 latency **{med(ratios_added):.3f}**."]
recorded = []
for r in range(1, rounds + 1):
    for side in ("a", "b"):
        try:
            kept = int(open(os.path.join(out, f"{side}-r{r}-records.txt")).read())
        except (OSError, ValueError):
            continue
        answered = [run(side, c, r) for c in (64, 1)]
        if None in answered:
            continue
        answered = sum(x["answered"] for x in answered)
        recorded.append(f"{side.upper()} round {r}: {kept} of {answered}")
if recorded:
    rows += ["", "Requests recorded, of those answered 200: " + "; ".join(recorded) + "."]
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
