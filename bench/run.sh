#!/usr/bin/env bash
# Measures what Switchboard adds over calling the mock upstream directly,
# side by side with an nginx reverse-proxy hop, in alternating rounds on
# loopback (see HARNESS.md and harness/README.md for each test).
#
#   bench/run.sh [ROUNDS]                       (default 2)
#   PEERS="direct nginx litellm portkey custom" bench/run.sh 1   # add the other gateways
#   CONFIGS=shared bench/run.sh 1                                # one CPU layout only
#   BINARY=/path/to/switchboard bench/run.sh 1                   # a given build (default: builds target/release)
#   PGO=1 bench/run.sh 1                                         # a profile-guided build (bench/pgo.sh)
#
# Results: bench/results/session-*/summary.md. Every server binds 127.0.0.1
# and every load run stops by itself after 10-15 s.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/common.sh"
ROUNDS="${1:-2}"
PEERS="${PEERS:-direct nginx custom}"

"$BENCH/harness/install.sh" tools
"$BENCH/harness/install.sh" mock
case "$PEERS" in *litellm*) "$BENCH/harness/install.sh" litellm ;; esac
case "$PEERS" in *portkey*) "$BENCH/harness/install.sh" portkey ;; esac
if [ "${PGO:-}" = 1 ] && [ -z "${BINARY:-}" ]; then "$BENCH/harness/install.sh" pgo; fi

BINARY="$(switchboard_binary "${BINARY:-}")"
mkdir -p "$BENCH/run"
export SWITCHBOARD_BENCH_DB="$BENCH/run/switchboard-bench.db"
rm -f "$SWITCHBOARD_BENCH_DB" "$SWITCHBOARD_BENCH_DB-wal" "$SWITCHBOARD_BENCH_DB-shm"
export SWITCHBOARD_LOG=warn

CUSTOM_URL=http://127.0.0.1:9000/v1 \
CUSTOM_MODEL=bench-model \
CUSTOM_API_KEY=sk-bench-1234 \
CUSTOM_CMD="$BINARY serve --config $BENCH/switchboard.toml" \
CUSTOM_LABEL=switchboard \
CUSTOM_HEALTH=http://127.0.0.1:9000/health \
PEERS="$PEERS" \
CONFIGS="${CONFIGS:-shared pinned}" \
  "$BENCH/harness/run-all.sh" "$ROUNDS"

latest="$(ls -td "$BENCH"/results/session-* | head -1)"
echo
cat "$latest/summary.md"
echo
echo "requests recorded by switchboard during the run: $(python3 - "$SWITCHBOARD_BENCH_DB" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("select count(*) from requests").fetchone()[0])
PY
)"
