#!/usr/bin/env bash
# A profile-guided release build of the gateway (PGO): an instrumented
# release build serves a training load, the profile it writes at exit is
# merged, and the release build is made again with it, so that the
# compiler lays out and inlines the code the requests run as they run it.
#
#   bench/pgo.sh                  # prints the path of the built binary
#   TRAIN=8 bench/pgo.sh          # seconds of each training load (default 4)
#   PGO_REBUILD=1 bench/pgo.sh    # build and train again even if nothing changed
#
# The build is kept: a later run prints its path at once unless a file of
# the workspace (crates/, Cargo.toml, Cargo.lock) or this script is newer.
#
# The training load, against the bench's mock OpenAI upstream on a port of
# its own (loopback only; stops by itself), in three passes, so that each
# runtime and store the benchmarks and deployments use is profiled:
#   1. the default runtime (a worker per CPU), SQLite: chat completions
#      through the master key (concurrency 64 and 1) and through a virtual
#      key with every limit checked (whole, and streamed), the same through
#      Anthropic's Messages API (translated to the upstream's dialect and
#      back, whole and streamed), then refusals (an unknown model, a wrong
#      key, a malformed body) and the metrics, model list and request-log
#      endpoints;
#   2. one thread (tokio's current-thread runtime, what a gateway pinned to
#      one CPU runs), SQLite: master key and virtual key, whole and streamed;
#   3. when PostgreSQL (127.0.0.1:5432, database `test`, a schema of its own
#      dropped afterwards) and Redis (127.0.0.1:6379, keys under a prefix of
#      their own) answer, one thread, the request log in PostgreSQL and the
#      limits in Redis: the same loads as pass 2.
# Every request is recorded (with the write-ahead journal), as in
# production. Code that no pass runs (other providers' dialects, say) is
# treated by the compiler as rarely run: kept smaller, not laid out for
# speed.
#
# Needs llvm-profdata of the LLVM that rustc is built with (rustc -vV names
# it): rustup's llvm-tools component, or Debian's (`bench/harness/install.sh
# pgo`); PROFDATA= names another. Also oha and the mock (harness/install.sh
# tools, harness/install.sh mock). Builds go to target/pgo-generate and
# target/pgo (or under CARGO_TARGET_DIR), for the host's target triple, so
# that build scripts and procedural macros are built without instruments.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
TRAIN="${TRAIN:-4}"
[[ "$TRAIN" =~ ^[0-9]+$ ]] || { echo "TRAIN must be whole seconds" >&2; exit 2; }
[ -z "${CARGO_ENCODED_RUSTFLAGS:-}" ] ||
  { echo "CARGO_ENCODED_RUSTFLAGS is set: it would override the profile flags (use RUSTFLAGS)" >&2; exit 2; }

HOST="$(rustc -vV | sed -n 's/^host: //p')"
major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$HOST" ] && [ -n "$major" ] || { echo "cannot read rustc's host and LLVM version from rustc -vV" >&2; exit 2; }
TARGET="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")"
DATA="$TARGET/pgo-data"
BIN="$TARGET/pgo/$HOST/release/switchboard"

if [ "${PGO_REBUILD:-}" != 1 ] && [ -x "$BIN" ] && [ -f "$DATA/merged.profdata" ] &&
   [ -z "$(find "$ROOT/crates" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$BENCH/pgo.sh" -newer "$BIN" -print -quit)" ]; then
  echo "$BIN"
  exit 0
fi

PROFDATA="${PROFDATA:-}"
if [ -z "$PROFDATA" ]; then
  for candidate in "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata" \
                   "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata"; do
    if command -v "$candidate" >/dev/null; then PROFDATA="$(command -v "$candidate")"; break; fi
  done
fi
[ -n "$PROFDATA" ] || {
  echo "llvm-profdata for LLVM $major is needed (rustc's LLVM): run bench/harness/install.sh pgo, or set PROFDATA" >&2
  exit 2
}

# A run directory, logs and a mock port of its own, so that a benchmark's
# mock and pid files are left alone.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-pgo.XXXXXX")"
export ANCHORS="$BENCH" RUN="$WORK/run" LOGS="$WORK/logs" RESULTS="$WORK/results" MOCK_PORT=18400
source "$BENCH/harness/common.sh"
[ -x "$OHA" ] || { echo "oha not found ($OHA): run harness/install.sh tools" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built ($MOCK_BIN): run harness/install.sh mock" >&2; exit 2; }

PORT=9400
MASTER="sk-pgo-master-1234"
SCHEMA="sb_pgo_$$"
PREFIX="sb-pgo-$$:"
gateway_pid="" schema_made=""
cleanup() {
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  stop_mock
  if [ -n "$schema_made" ]; then
    psql -h 127.0.0.1 -U postgres test -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    if command -v redis-cli >/dev/null; then
      redis-cli -h 127.0.0.1 --scan --pattern "$PREFIX*" 2>/dev/null | xargs -r redis-cli -h 127.0.0.1 del >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

rm -rf "$DATA"
mkdir -p "$DATA"
log "instrumented build (target $TARGET/pgo-generate)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DATA" \
  cargo build --release -p switchboard-cli --target "$HOST" --target-dir "$TARGET/pgo-generate" >&2)
INSTRUMENTED="$TARGET/pgo-generate/$HOST/release/switchboard"

CHAT='{"model":"bench-model","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say something short."}],"max_tokens":16}'
STREAM='{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MESSAGES='{"model":"bench-model","max_tokens":16,"system":"Be brief.","messages":[{"role":"user","content":"Say something short."}]}'
MESSAGES_STREAM='{"model":"bench-model","max_tokens":16,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Say something short."}]}]}'

# Starts the instrumented gateway with the [server] lines $1 and the
# [storage] lines $2 (its profile: $DATA/gateway-PID.profraw), and makes a
# virtual key with every limit (set high enough never to refuse): $key.
start_gateway() {
  cat >"$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
master_key = "$MASTER"
$1
[storage]
$2
$(mock_model_toml)
TOML
  LLVM_PROFILE_FILE="$DATA/gateway-%p.profraw" SWITCHBOARD_LOG=warn \
    "$INSTRUMENTED" serve --config "$WORK/config.toml" >"$WORK/gateway.log" 2>&1 &
  gateway_pid=$!
  if ! wait_http "http://127.0.0.1:$PORT/health" 60 || ! kill -0 "$gateway_pid" 2>/dev/null; then
    echo "the instrumented gateway did not start (or port $PORT is taken):" >&2
    cat "$WORK/gateway.log" >&2
    exit 1
  fi
  key="$(bench_virtual_key "http://127.0.0.1:$PORT" "$MASTER")"
}

# Stops it cleanly (SIGTERM: the profile is written as the process exits).
stop_gateway() {
  kill -TERM "$gateway_pid"
  for _ in $(seq 300); do kill -0 "$gateway_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$gateway_pid" 2>/dev/null; then
    echo "the instrumented gateway did not stop within 30 s of SIGTERM" >&2
    exit 1
  fi
  wait "$gateway_pid" || true
  gateway_pid=""
}

# One training load: path, body, key, concurrency. Every answer must be a 200.
train() {
  local path="$1" body="$2" secret="$3" concurrency="$4" out statuses
  out="$("$OHA" --no-tui -m POST -T application/json -d "$body" -H "Authorization: Bearer $secret" \
    -H "anthropic-version: 2023-06-01" -z "${TRAIN}s" -c "$concurrency" "http://127.0.0.1:$PORT$path" 2>&1)" || true
  statuses="$(grep -E '^ *\[[0-9]{3}\] [0-9]+ responses' <<<"$out" | grep -oE '\[[0-9]{3}\]' | sort -u | tr '\n' ' ' || true)"
  if [ "$statuses" != "[200] " ]; then
    echo "training load $path answered ${statuses:-nothing}, not only 200:" >&2
    echo "$out" | tail -20 >&2
    exit 1
  fi
}

start_mock "" ""

log "training pass 1: the default runtime, SQLite ($TRAIN s per load)"
start_gateway "" "url = \"sqlite://$WORK/records.db\"
journal_dir = \"$WORK/journal\""
train /v1/chat/completions "$CHAT" "$MASTER" 64
train /v1/chat/completions "$CHAT" "$key" 64
train /v1/chat/completions "$STREAM" "$key" 16
train /v1/chat/completions "$CHAT" "$MASTER" 1
train /v1/messages "$MESSAGES" "$key" 16
train /v1/messages "$MESSAGES_STREAM" "$MASTER" 16
# Refusals and the operators' endpoints.
for _ in $(seq 50); do
  curl -s -o /dev/null -H "Authorization: Bearer $MASTER" -H 'content-type: application/json' \
    -d '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$PORT/v1/chat/completions"
  curl -s -o /dev/null -H "Authorization: Bearer sk-wrong" -H 'content-type: application/json' \
    -d "$CHAT" "http://127.0.0.1:$PORT/v1/chat/completions"
  curl -s -o /dev/null -H "x-api-key: $MASTER" -H 'content-type: application/json' \
    -d '{"model":"bench-model","messages":' "http://127.0.0.1:$PORT/v1/messages"
  curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics"
  curl -s -o /dev/null -H "Authorization: Bearer $MASTER" "http://127.0.0.1:$PORT/v1/models"
  curl -s -o /dev/null -H "Authorization: Bearer $MASTER" "http://127.0.0.1:$PORT/admin/logs?limit=20"
done
stop_gateway

# The loads of passes 2 and 3.
train_one_thread() {
  train /v1/chat/completions "$CHAT" "$MASTER" 64
  train /v1/chat/completions "$CHAT" "$key" 64
  train /v1/chat/completions "$STREAM" "$key" 16
}

log "training pass 2: one thread, SQLite"
rm -rf "$WORK/records.db"* "$WORK/journal"
start_gateway "worker_threads = 1" "url = \"sqlite://$WORK/records.db\"
journal_dir = \"$WORK/journal\""
train_one_thread
stop_gateway

if pg_schema_and_redis "$SCHEMA"; then
  schema_made=1
  log "training pass 3: one thread, PostgreSQL and Redis"
  rm -rf "$WORK/journal"
  start_gateway "worker_threads = 1" "url = \"$(pg_schema_url "$SCHEMA")\"
redis_url = \"redis://127.0.0.1:6379\"
redis_prefix = \"$PREFIX\"
journal_dir = \"$WORK/journal\""
  train_one_thread
  stop_gateway
else
  log "PostgreSQL or Redis unavailable: training pass 3 left out"
fi

ls "$DATA"/gateway-*.profraw >/dev/null 2>&1 || { echo "the instrumented gateway wrote no profile in $DATA" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/gateway-*.profraw >&2

log "optimised build (target $TARGET/pgo)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$DATA/merged.profdata" \
  cargo build --release -p switchboard-cli --target "$HOST" --target-dir "$TARGET/pgo" >&2)
echo "$BIN"
