#!/usr/bin/env bash
# A profile-guided release build of the gateway (PGO): an instrumented
# release build serves a training load, the profile it writes at exit is
# merged, and the release build is made again with it, so that the
# compiler lays out and inlines the code the requests run as they run it.
#
#   bench/pgo.sh           # prints the path of the built binary
#   TRAIN=8 bench/pgo.sh   # seconds of each training load (default 4)
#
# The training load, against the bench's mock OpenAI upstream (loopback
# only; stops by itself): chat completions through the master key and
# through a virtual key with every limit checked, whole and streamed, the
# same through Anthropic's Messages API (translated to the upstream's
# dialect and back), refusals (an unknown model, a bad key, a malformed
# body), and the admin and metrics endpoints. Every request is recorded
# (SQLite, with the write-ahead journal), as in production. Paths it does
# not run are built as in an ordinary release build, only not laid out
# for speed.
#
# Needs llvm-profdata of the LLVM that rustc is built with (rustc -vV names
# it; `bench/harness/install.sh pgo` installs Debian's), oha and the mock
# (harness/install.sh tools, harness/install.sh mock). Builds go to
# target/pgo-generate and target/pgo (or under CARGO_TARGET_DIR).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
TRAIN="${TRAIN:-4}"
[[ "$TRAIN" =~ ^[0-9]+$ ]] || { echo "TRAIN must be whole seconds" >&2; exit 2; }

major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
PROFDATA="${PROFDATA:-}"
if [ -z "$PROFDATA" ]; then
  for candidate in "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata"; do
    if command -v "$candidate" >/dev/null; then PROFDATA="$(command -v "$candidate")"; break; fi
  done
fi
[ -n "$PROFDATA" ] || {
  echo "llvm-profdata for LLVM $major is needed (rustc's LLVM): run bench/harness/install.sh pgo, or set PROFDATA" >&2
  exit 2
}
[ -x "$OHA" ] || { echo "oha not found ($OHA): run harness/install.sh tools" >&2; exit 2; }
[ -x "$MOCK_BIN" ] || { echo "the mock is not built ($MOCK_BIN): run harness/install.sh mock" >&2; exit 2; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
DATA="$TARGET/pgo-data"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-pgo.XXXXXX")"
PORT=9400
MASTER="sk-pgo-master-1234"
gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  stop_mock
  rm -rf "$WORK"
}
trap cleanup EXIT

rm -rf "$DATA"
mkdir -p "$DATA"
log "instrumented build (target $TARGET/pgo-generate)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DATA" \
  cargo build --release -p switchboard-cli --target-dir "$TARGET/pgo-generate" >&2)

cat >"$WORK/config.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
master_key = "$MASTER"
[storage]
url = "sqlite://$WORK/records.db"
journal_dir = "$WORK/journal"
$(mock_model_toml)
TOML

start_mock "" ""
SWITCHBOARD_LOG=warn "$TARGET/pgo-generate/release/switchboard" serve --config "$WORK/config.toml" \
  >"$WORK/gateway.log" 2>&1 &
gateway_pid=$!
wait_http "http://127.0.0.1:$PORT/health" 60 || { echo "the instrumented gateway did not start: $WORK/gateway.log" >&2; cat "$WORK/gateway.log" >&2; exit 1; }
key="$(curl -s -H "Authorization: Bearer $MASTER" "http://127.0.0.1:$PORT/admin/keys" \
  -d '{"name":"pgo","rpm":100000000,"tpm":1000000000,"max_concurrent":100000,"budget_usd":1000000,"budget_period":"daily"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"

CHAT='{"model":"bench-model","temperature":0,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say something short."}],"max_tokens":16}'
STREAM='{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MESSAGES='{"model":"bench-model","max_tokens":16,"system":"Be brief.","messages":[{"role":"user","content":"Say something short."}]}'
MESSAGES_STREAM='{"model":"bench-model","max_tokens":16,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Say something short."}]}]}'
# One training load: path, body, key, concurrency.
train() {
  local path="$1" body="$2" secret="$3" concurrency="$4" out
  out="$("$OHA" --no-tui -m POST -T application/json -d "$body" -H "Authorization: Bearer $secret" \
    -H "anthropic-version: 2023-06-01" -z "${TRAIN}s" -c "$concurrency" "http://127.0.0.1:$PORT$path" 2>&1)" || true
  grep -q '\[200\]' <<<"$out" || { echo "training load $path answered no 200:" >&2; echo "$out" | tail -20 >&2; exit 1; }
}
log "training: $TRAIN s per load"
train /v1/chat/completions "$CHAT" "$MASTER" 64
train /v1/chat/completions "$CHAT" "$key" 64
train /v1/chat/completions "$STREAM" "$key" 16
train /v1/chat/completions "$CHAT" "$MASTER" 1
train /v1/messages "$MESSAGES" "$key" 16
train /v1/messages "$MESSAGES_STREAM" "$MASTER" 16
# Refusals, in each dialect, and the operators' endpoints.
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
# The profile is written when the process exits: a clean stop.
kill -TERM "$gateway_pid"
wait "$gateway_pid" || true
gateway_pid=""
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "the instrumented gateway wrote no profile in $DATA" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

log "optimised build (target $TARGET/pgo)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$DATA/merged.profdata" \
  cargo build --release -p switchboard-cli --target-dir "$TARGET/pgo" >&2)
echo "$TARGET/pgo/release/switchboard"
