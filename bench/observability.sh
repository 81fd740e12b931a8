#!/usr/bin/env bash
# What observability costs: throughput and latency through Switchboard with
# everything off, with the request log on, with the request log, metrics
# and OTLP tracing on, and for a response-cache hit. Cases alternate, each
# round running every case once, at concurrency 64 (throughput, p99) and 1
# (added latency), against the bench mock upstream.
#
#   bench/observability.sh [ROUNDS]     # default 2; ~2 minutes; loopback only
#   DURATION=2 bench/observability.sh 1 # a quick check that it runs
#   BINARY=/path/to/switchboard CASES="off log" bench/observability.sh 3
#
# The cases (records in SQLite, one fresh database file per run):
#   off      [logging] requests = false, [metrics] enabled = false, no
#            [telemetry]. `metrics.enabled = false` closes GET /metrics and
#            counts nothing but the requests in flight.
#   log      the request log on (the default): every request recorded.
#   all      the request log, GET /metrics (scraped once a second, as
#            Prometheus would, only slower) and OTLP traces for every request,
#            posted to the mock's /v1/traces, which reads and drops them
#            (checks.txt says how many spans the exporter had to drop).
#   cache    the request log and [cache] on; the request (temperature 0) is
#            sent once before the load, so every measured request is a hit.
#
# Needs what bench/run.sh installs (oha, the mock): run that once first.
# Results: bench/results/observability-*/summary.md, with oha's JSON.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
ROUNDS="${1:-2}"
DURATION="${DURATION:-10}"
CASES="${CASES:-off log all cache}"

[ -x "$OHA" ] || { echo "oha not found ($OHA): run bench/run.sh or harness/install.sh tools first" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built ($MOCK_BIN): run harness/install.sh mock first" >&2; exit 2; }
BINARY="$(switchboard_binary "${BINARY:-}")"
OUT="$RESULTS/observability-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN"
export SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MASTER=sk-bench-1234
GATEWAY=http://127.0.0.1:9000

gateway_pid=""
scraper_pid=""
cleanup() {
  [ -n "$scraper_pid" ] && kill "$scraper_pid" 2>/dev/null || true
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  stop_mock
}
trap cleanup EXIT
start_mock "" ""

config() { # case -> config file
  local case="$1" extra=""
  case "$case" in
    off) extra='[logging]
requests = false
[metrics]
enabled = false' ;;
    log) extra='[metrics]
enabled = false' ;;
    all) extra="[telemetry]
otlp_endpoint = \"http://127.0.0.1:$MOCK_PORT\"
service_name = \"switchboard-bench\"" ;;
    cache) extra='[metrics]
enabled = false
[cache]
enabled = true' ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  cat >"$RUN/observability-$case.toml" <<TOML
[server]
listen = "127.0.0.1:9000"
master_key = "$MASTER"
[storage]
url = "sqlite://$RUN/observability-$case.db"
$extra
$(mock_model_toml)
TOML
  echo "$RUN/observability-$case.toml"
}

run_case() { # case, round
  local case="$1" round="$2"
  rm -rf "$RUN/observability-$case.db"* "$RUN/observability-$case.db.journal"
  nohup "$BINARY" serve --config "$(config "$case")" >"$LOGS/observability-$case.log" 2>&1 &
  gateway_pid=$!
  wait_http "$GATEWAY/health" 30 || { echo "the gateway did not start: $LOGS/observability-$case.log" >&2; exit 1; }
  if [ "$case" = cache ]; then
    curl -s -o /dev/null -H "Authorization: Bearer $MASTER" -H 'Content-Type: application/json' \
      -d "$BODY" "$GATEWAY/v1/chat/completions"
  fi
  if [ "$case" = all ]; then
    (while sleep 1; do curl -s -o /dev/null -H "Authorization: Bearer $MASTER" "$GATEWAY/metrics"; done) &
    scraper_pid=$!
  fi
  for concurrency in 64 1; do
    "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer $MASTER" -t 30s -z "${DURATION}s" -c "$concurrency" \
      "$GATEWAY/v1/chat/completions" >"$OUT/$case-r$round-c$concurrency.json" 2>/dev/null || true
  done
  if [ -n "$scraper_pid" ]; then kill "$scraper_pid" 2>/dev/null || true; scraper_pid=""; fi
  if [ "$case" = all ]; then
    # Spans the exporter could not queue would make tracing look cheaper.
    curl -s -H "Authorization: Bearer $MASTER" "$GATEWAY/metrics" \
      | grep -E '^switchboard_spans_dropped_total' | sed "s/^/all round $round: /" >>"$OUT/checks.txt" || true
  fi
  stop_tree "$gateway_pid"; gateway_pid=""
  # What the case really did, from the gateway's side (written at shutdown).
  python3 - "$RUN/observability-$case.db" "$case" "$round" >>"$OUT/checks.txt" 2>&1 <<'PY' || true
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("select count(*), coalesce(sum(cache_hit), 0) from requests").fetchone()
print(f"{sys.argv[2]} round {sys.argv[3]}: {rows[0]} records, {rows[1]} of them cache hits")
PY
}

for round in $(seq 1 "$ROUNDS"); do
  for case in $CASES; do run_case "$case" "$round"; done
done

python3 - "$OUT" "$ROUNDS" "$DURATION" $CASES <<'PY'
import json, os, statistics, sys
out, rounds, duration, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def runs(case, c):
    result = []
    for r in range(1, rounds + 1):
        path = os.path.join(out, f"{case}-r{r}-c{c}.json")
        try:
            d = json.load(open(path))
        except (OSError, ValueError):
            continue
        codes = d.get("statusCodeDistribution", {})
        total = sum(codes.values()) or 1
        p = d.get("latencyPercentiles", {})
        result.append((d["summary"]["requestsPerSec"], (p.get("p50") or 0) * 1000,
                       (p.get("p99") or 0) * 1000, codes.get("200", 0) / total))
    return result
def median(values):
    values = list(values)
    return statistics.median(values) if values else float("nan")
base = "off" if "off" in cases else cases[0]
base64 = median(r[0] for r in runs(base, 64))
base1 = median(r[1] for r in runs(base, 1))
rows = [f"{rounds} round(s) of {duration} s per case and concurrency; medians over rounds; baseline `{base}`.", "",
        "| case | c64 req/s | vs off | c64 p99 ms | c1 p50 ms | c1 p50 added over off | 200s |",
        "|---|---|---|---|---|---|---|"]
for case in cases:
    c64, c1 = runs(case, 64), runs(case, 1)
    rps = median(r[0] for r in c64)
    p99 = median(r[2] for r in c64)
    p50 = median(r[1] for r in c1)
    ok = min((r[3] for r in c64 + c1), default=float("nan"))
    rows.append(f"| {case} | {rps:.0f} | {rps / base64:.2f} | {p99:.2f} | {p50:.3f} | {p50 - base1:+.3f} ms | {ok:.2%} |")
rows += ["", "off: no request log, no metrics (/metrics closed, nothing counted), no tracing. log: the request log in SQLite.",
         "all: request log, /metrics scraped every second, OTLP traces of every request. cache: request log, every request a cache hit."]
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo
cat "$OUT/checks.txt"
echo "results: $OUT"
