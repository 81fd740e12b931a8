#!/usr/bin/env bash
# Instructions the gateway executes per proxied request, counted by
# valgrind's callgrind: a figure that does not move with the machine's load,
# for comparing builds or settings when the cores are busy (wall-clock
# ratios on a shared 2-core machine swing by 20% from run to run).
#
#   bench/instructions.sh [REQUESTS] [CASES]   # default 1000 "off log"
#   BINARY=/path/to/switchboard bench/instructions.sh
#   CLIENT=sdk MOCK_HEADERS=openai bench/instructions.sh 2000 off   # the headers OpenAI's SDK and API send
#
# Cases: off         [logging] requests = false, metrics off (/metrics closed, nothing counted)
#        log         the request log on (SQLite and its journal), metrics off
#        key         as log, through a virtual key with every limit checked
#                    (requests and tokens per minute, concurrency, a daily budget),
#                    the counters in memory
#        master-redis  as log, with the limits in Redis (127.0.0.1:6379); the master key
#        key-redis   as key, with the counters in Redis
#        log-pg      as log, the request log in PostgreSQL (127.0.0.1:5432, database
#                    `test`, a schema of its own dropped afterwards), with a journal
#                    as SQLite has
# Counts every thread of the gateway (the record writer's included) from
# after a warm-up until the requests are answered, and apart, what the
# SQLite writer's threads wrote with (which varies from run to run with the
# batches); the kernel's share (system calls) is not counted. Needs valgrind and what bench/run.sh
# installs (oha, the mock). Loopback only; stops by itself.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
REQUESTS="${1:-1000}"
CASES="${2:-off log}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$OHA" ] || { echo "oha not found ($OHA): run harness/install.sh tools first" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built: run harness/install.sh mock first" >&2; exit 2; }
BINARY="$(switchboard_binary "${BINARY:-}")"
OUT="$RESULTS/instructions-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
PORT=9100
# CLIENT=sdk: each request also carries the headers OpenAI's Python SDK
# sends (harness/common.sh sets CLIENT_HEADERS); the default is oha's few.
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
gateway_pid=""
SCHEMA="sb_instructions_$$"
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null || true
  stop_mock
  case " $CASES " in *" log-pg "*) psql -h 127.0.0.1 -U postgres test -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true ;; esac
}
trap cleanup EXIT
start_mock "" ""

for case in $CASES; do
  case "$case" in
    off) extra=$'[logging]\nrequests = false\n[metrics]\nenabled = false' ;;
    log|key) extra=$'[metrics]\nenabled = false' ;;
    master-redis|key-redis)
      extra="redis_url = \"redis://127.0.0.1:6379\"
redis_prefix = \"sb-instructions-$$:\"
[metrics]
enabled = false" ;;
    log-pg)
      psql -h 127.0.0.1 -U postgres test -qc "CREATE SCHEMA $SCHEMA" >/dev/null ||
        { echo "log-pg needs PostgreSQL at 127.0.0.1:5432 (database test) and psql" >&2; exit 2; }
      extra=$'[metrics]\nenabled = false' ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  if [ "$case" = log-pg ]; then
    storage_url="$(pg_schema_url "$SCHEMA")"
  else
    storage_url="sqlite://$OUT/$case/records.db"
  fi
  dir="$OUT/$case"; mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
master_key = "sk-bench-1234"
[storage]
url = "$storage_url"
journal_dir = "$OUT/$case/journal"
$extra
$(mock_model_toml)
TOML
  SWITCHBOARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$BINARY" serve --config "$dir/config.toml" >"$dir/gateway.log" 2>&1 &
  gateway_pid=$!
  wait_http "http://127.0.0.1:$PORT/health" 120 || { echo "the gateway did not start: $dir/gateway.log" >&2; exit 1; }
  key=sk-bench-1234
  if [ "$case" = key ] || [ "$case" = key-redis ]; then
    # Limits high enough never to refuse: every request pays for the checks.
    key="$(bench_virtual_key "http://127.0.0.1:$PORT" "sk-bench-1234")"
  fi
  load() { "$OHA" --no-tui -m POST -T application/json -d "$BODY" -H "Authorization: Bearer $key" \
    ${CLIENT_HEADERS[@]+"${CLIENT_HEADERS[@]}"} -n "$1" -c 8 "http://127.0.0.1:$PORT/v1/chat/completions"; }
  load 300 >/dev/null                      # warm-up: pools, caches, first batches
  callgrind_control -z "$gateway_pid" >/dev/null
  load "$REQUESTS" >"$dir/oha.txt"
  sleep 0.5                                # the record writer's batch in flight
  callgrind_control -d "$gateway_pid" >/dev/null
  kill -TERM "$gateway_pid"; wait "$gateway_pid" || true; gateway_pid=""
  answered=$(grep -oE '\[200\] [0-9]+' "$dir/oha.txt" | awk '{print $2}')
  total=$(awk '/^totals:/{print $2; exit}' "$dir/callgrind.out.1")
  # The SQLite writer's share (its threads' batches and checkpoints,
  # inclusive; both functions are kept out of line for this): it moves
  # with how the records fell into batches, by several hundred
  # instructions a request from run to run of one build, so builds are
  # compared on the rest, the request path and the recorder's hand-off.
  written=$( { callgrind_annotate --threshold=100 --auto=no --inclusive=yes "$dir/callgrind.out.1" 2>/dev/null || true; } |
    awk '/(sqlite_writer::work|sqlite_writer::Checkpointer::run) \[/ { gsub(",", "", $1); sum += $1 } END { print sum + 0 }')
  if [ "$case" != off ] && [ "$case" != log-pg ] && [ "$written" = 0 ]; then
    echo "warning: $case: no SQLite writer's work found in the profile (callgrind_annotate failed, or sqlite_writer::work was inlined); the second figure is the total" >&2
  fi
  echo "$case: $((total / REQUESTS)) instructions per request, $(((total - written) / REQUESTS)) without the SQLite writer's $((written / REQUESTS)) ($answered of $REQUESTS answered 200)" | tee -a "$OUT/summary.txt"
done
echo "results: $OUT"
