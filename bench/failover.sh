#!/usr/bin/env bash
# Failover under load: one of two deployments fails half its requests.
# Measures, beside a run where both deployments are healthy (the simulated
# one with a failure rate of 0), the share of client requests that succeed
# and the latency percentiles at concurrency 64 and 1.
#
#   bench/failover.sh            # ~1 minute; loopback only; stops by itself
#
# Needs what bench/run.sh installs (oha, the mock): run that once first.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
DURATION="${DURATION:-10}"

BINARY="$(switchboard_binary "${BINARY:-}")"
OUT="$RESULTS/failover-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN"
export SWITCHBOARD_LOG=warn SWITCHBOARD_BENCH_DB="$RUN/failover.db"
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'

gateway_pid=""
cleanup() { [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"; stop_mock; }
trap cleanup EXIT
start_mock "" ""

run_case() { # label, failure rate, consecutive failures that open the circuit
  local label="$1" rate="$2" breaker="$3"
  rm -f "$SWITCHBOARD_BENCH_DB"*
  sed -e "s/failure_rate = 0.5/failure_rate = $rate/" \
      -e "s/circuit_breaker_failures = 5/circuit_breaker_failures = $breaker/" \
      "$BENCH/failover.toml" >"$RUN/failover-$label.toml"
  nohup "$BINARY" serve --config "$RUN/failover-$label.toml" >"$LOGS/failover-$label.log" 2>&1 &
  gateway_pid=$!
  wait_http "http://127.0.0.1:9000/health" 30
  for concurrency in 64 1; do
    "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer sk-bench-1234" -t 30s -z "${DURATION}s" -c "$concurrency" \
      http://127.0.0.1:9000/v1/chat/completions >"$OUT/$label-c$concurrency.json" 2>/dev/null || true
  done
  curl -s -H "Authorization: Bearer sk-bench-1234" http://127.0.0.1:9000/health/deployments >"$OUT/$label-health.json"
  stop_tree "$gateway_pid"; gateway_pid=""
}

run_case healthy 0 5
run_case flaky 0.5 5
# The same failures with the circuit breaker out of play: retries alone.
run_case flaky-no-breaker 0.5 1000000

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(label, c):
    d = json.load(open(os.path.join(out, f"{label}-c{c}.json")))
    codes = d.get("statusCodeDistribution", {})
    total = sum(codes.values()) or 1
    p = d["latencyPercentiles"]
    return codes.get("200", 0) / total, total, p["p50"] * 1000, p["p99"] * 1000, d["summary"]["requestsPerSec"]
rows = ["| case | concurrency | requests | client success | p50 ms | p99 ms | req/s |", "|---|---|---|---|---|---|---|"]
for label in ("healthy", "flaky", "flaky-no-breaker"):
    for c in (64, 1):
        ok, total, p50, p99, rps = load(label, c)
        rows.append(f"| {label} | {c} | {total} | {ok:.4%} | {p50:.2f} | {p99:.2f} | {rps:.0f} |")
for label in ("flaky", "flaky-no-breaker"):
    for c in (64, 1):
        added = load(label, c)[3] - load("healthy", c)[3]
        rows.append(f"\n{label}: p99 added over the healthy run at concurrency {c}: {added:.2f} ms")
    health = json.load(open(os.path.join(out, f"{label}-health.json")))
    for d in health["models"][0]["deployments"]:
        rows.append(f"\n{label}: `{d['name']}` after the run: {d['requests']} attempts, {d['failures']} failures, circuit {d['state']}")
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
