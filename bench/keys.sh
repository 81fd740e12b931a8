#!/usr/bin/env bash
# What virtual keys cost: throughput and latency through Switchboard with
# the master key (no limits), with a virtual key whose rate limits,
# concurrency limit and budget are all checked and reserved (counters in
# memory, records in SQLite), and with the same key on PostgreSQL + Redis
# (counters in Redis, records in PostgreSQL; busy scopes served from leases,
# the default), each against the master key on the same storage. Cases
# alternate, each round running every case once, at concurrency 64 and 1.
# `key-exact-pg-redis` (named in CASES only) is key-pg-redis with
# `storage.redis_leases = false`: every request counted in Redis by itself.
#
#   bench/keys.sh [ROUNDS]      # default 2; ~2 minutes; loopback only
#   BINARY=/path/to/switchboard CASES="master-pg-redis key-pg-redis" bench/keys.sh 1
#
# Needs what bench/run.sh installs (oha, the mock): run that once first.
# The PostgreSQL case needs psql and a server at 127.0.0.1:5432 (database
# `test`), and Redis at 127.0.0.1:6379; it is left out without them.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
ROUNDS="${1:-2}"
DURATION="${DURATION:-10}"

if [ -z "${BINARY:-}" ]; then
  (cd "$ROOT" && cargo build --release -p switchboard-cli)
  BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard"
fi
OUT="$RESULTS/keys-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN"
export SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MASTER=sk-bench-1234

WANTED="${CASES:-master key-sqlite master-pg-redis key-pg-redis}"
CASES="$(for c in master key-sqlite; do case " $WANTED " in *" $c "*) printf '%s ' "$c";; esac; done)"
SCHEMA="sb_bench_$$"
if [ "${WANTED#*pg-redis}" = "$WANTED" ]; then
  :
elif command -v psql >/dev/null 2>&1 && psql -h 127.0.0.1 -U postgres test -qc "CREATE SCHEMA $SCHEMA" 2>/dev/null \
   && (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  CASES="$CASES$(for c in master-pg-redis key-pg-redis key-exact-pg-redis; do case " $WANTED " in *" $c "*) printf '%s ' "$c";; esac; done)"
else
  echo "PostgreSQL or Redis unavailable: the key-pg-redis case is left out"
fi

gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  stop_mock
  psql -h 127.0.0.1 -U postgres test -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" 2>/dev/null || true
}
trap cleanup EXIT
start_mock "" ""

config() { # case -> config file
  local case="$1" storage
  case "$case" in
    *-pg-redis) storage="url = \"postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$SCHEMA\"
redis_url = \"redis://127.0.0.1:6379\"
journal_dir = \"$RUN/keys-journal\"
redis_leases = $([ "$case" = key-exact-pg-redis ] && echo false || echo true)" ;;
    *) storage="url = \"sqlite://$RUN/keys-$case.db\"" ;;
  esac
  cat >"$RUN/keys-$case.toml" <<TOML
[server]
listen = "127.0.0.1:9000"
master_key = "$MASTER"
[storage]
$storage
$(mock_model_toml)
TOML
  echo "$RUN/keys-$case.toml"
}

run_case() { # case, round
  local case="$1" round="$2" key="$MASTER"
  rm -rf "$RUN/keys-$case.db"* "$RUN/keys-journal"
  nohup "$BINARY" serve --config "$(config "$case")" >"$LOGS/keys-$case.log" 2>&1 &
  gateway_pid=$!
  wait_http "http://127.0.0.1:9000/health" 30
  if [ "${case#master}" = "$case" ]; then
    # Limits high enough never to refuse, so every request pays for the
    # checks and reservations and none is turned away.
    key="$(curl -s -H "Authorization: Bearer $MASTER" http://127.0.0.1:9000/admin/keys \
      -d '{"name":"bench","rpm":100000000,"tpm":1000000000,"max_concurrent":100000,"budget_usd":1000000,"budget_period":"daily"}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
  fi
  for concurrency in 64 1; do
    "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer $key" -t 30s -z "${DURATION}s" -c "$concurrency" \
      http://127.0.0.1:9000/v1/chat/completions >"$OUT/$case-r$round-c$concurrency.json" 2>/dev/null || true
  done
  stop_tree "$gateway_pid"; gateway_pid=""
}

for round in $(seq 1 "$ROUNDS"); do
  for case in $CASES; do run_case "$case" "$round"; done
done

python3 - "$OUT" "$ROUNDS" $CASES <<'PY'
import json, os, statistics, sys
out, rounds, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def runs(case, c):
    result = []
    for r in range(1, rounds + 1):
        d = json.load(open(os.path.join(out, f"{case}-r{r}-c{c}.json")))
        codes = d.get("statusCodeDistribution", {})
        total = sum(codes.values()) or 1
        result.append((d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p50"] * 1000,
                       d["latencyPercentiles"]["p99"] * 1000, codes.get("200", 0) / total))
    return result
rows = ["| case | c64 req/s | vs its master-key baseline | c64 p99 ms | c1 p50 ms | c1 p50 added over the baseline | 200s |",
        "|---|---|---|---|---|---|---|"]
for case in cases:
    baseline = "master-pg-redis" if case.endswith("pg-redis") else "master"
    base64 = statistics.median(r[0] for r in runs(baseline, 64))
    base1 = statistics.median(r[1] for r in runs(baseline, 1))
    c64, c1 = runs(case, 64), runs(case, 1)
    rps = statistics.median(r[0] for r in c64)
    p99 = statistics.median(r[2] for r in c64)
    p50 = statistics.median(r[1] for r in c1)
    ok = min(r[3] for r in c64 + c1)
    rows.append(f"| {case} | {rps:.0f} | {rps / base64:.2f} | {p99:.2f} | {p50:.3f} | {p50 - base1:+.3f} ms | {ok:.2%} |")
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
