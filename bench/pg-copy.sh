#!/usr/bin/env bash
# What PostgreSQL's own CPU costs per request record, written as the gateway
# writes them: batches of 1,000 rows, each one `COPY … FROM STDIN` in the
# text format inside its own transaction, into `requests` as the migrations
# make it, and into variants of it. Counts the CPU time of the server process
# that runs the `COPY` (read from /proc around the batches) and of the
# server's other processes (WAL writer, checkpointer; a `CHECKPOINT` ends each
# case), so the figure is the server's whole cost, not the gateway's.
#
#   bench/pg-copy.sh [BATCHES] [ROUNDS]   # default 100 batches (100,000 rows), 2 rounds
#
# Cases, alternating by round:
#   migrated      the schema the migrations make
#   with-pkey     the same with the primary key on `id` of migrations 1–11
#   no-index      no index at all on `requests`: the floor
# Rows are those of a master-key request (no key, no team, an id the gateway
# made); KEYED=1 gives every row a key, which adds the key index's insert.
# Needs PostgreSQL at 127.0.0.1:5432 (database `test`), psql and python3, on
# this machine (the server's processes are read in /proc). Each case runs in
# a schema of its own, dropped afterwards.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
BATCHES="${1:-100}"
ROUNDS="${2:-2}"
KEYED="${KEYED:-0}"
OUT="$BENCH/results/pg-copy-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
PSQL=(psql -h 127.0.0.1 -U postgres -X -q test)
export PGOPTIONS="-c client_min_messages=warning"
"${PSQL[@]}" -c "SELECT 1" >/dev/null || { echo "needs PostgreSQL at 127.0.0.1:5432 (database test)" >&2; exit 2; }
SCHEMAS=()
cleanup() { for schema in "${SCHEMAS[@]}"; do "${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT

# The batches, as psql reads them: a COPY's rows follow it, ended by `\.`.
python3 - "$BATCHES" "$KEYED" >"$OUT/batches.sql" <<'PY'
import random, sys
batches, keyed = int(sys.argv[1]), sys.argv[2] == "1"
columns = ("request_id, started_at_ms, endpoint, model, deployment, stream, status, outcome, "
           "error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, "
           "reasoning_tokens, attempts, served_model, key_id, team_id, end_user, cost_nanos, "
           "cache_write_tokens, cache_hit, metadata, attempt_details, timed_id")
random.seed(7)
started = 1_764_500_000_000
key = "key_0123456789abcdef" if keyed else "\\N"
out = sys.stdout
for _ in range(batches):
    out.write(f"BEGIN;\nCOPY requests ({columns}) FROM STDIN;\n")
    for _ in range(1000):
        started += 1
        request_id = "req_%012x%020x" % (started, random.getrandbits(80))
        out.write(f"{request_id}\t{started}\tchat_completions\tbench-model\tmock\tf\t200\tsuccess\t\\N\t3\t\\N"
                  f"\t12\t16\t\\N\t\\N\t1\tbench-model\t{key}\t\\N\t\\N\t4200\t\\N\tf\t\\N\t\\N\tt\n")
    out.write("\\.\nCOMMIT;\n")
PY

# CPU ticks of every PostgreSQL process but the one given.
others() {
  local total=0 pid ticks
  for pid in $(pgrep -f '^postgres' || true); do
    [ "$pid" = "${1:-}" ] && continue
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + ticks))
  done
  echo "$total"
}

variant_sql() {
  case "$1" in
    migrated) echo "" ;;
    with-pkey) echo "ALTER TABLE requests ADD PRIMARY KEY (id);" ;;
    no-index) echo "DROP INDEX requests_log_order, requests_request_id, requests_key, requests_team;" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
  esac
}

hz=$(getconf CLK_TCK)
rows=$((BATCHES * 1000))
echo "| round | case | server process ms | other processes ms | µs per record |" >"$OUT/summary.md"
echo "|---|---|---|---|---|" >>"$OUT/summary.md"
for round in $(seq 1 "$ROUNDS"); do
  for case in ${CASES:-migrated with-pkey no-index}; do
    schema="sb_pg_copy_$$_${case//-/_}"
    SCHEMAS+=("$schema")
    "${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null
    (echo "SET search_path = $schema;"; cat "$ROOT"/crates/store/migrations/postgres/*.sql; variant_sql "$case") |
      "${PSQL[@]}" -v ON_ERROR_STOP=1 >/dev/null
    "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
    sleep 1
    before=$(others)
    # The session notes its own process's ticks before and after the batches.
    ticks=$( (echo "SET search_path = $schema;"
              echo 'SELECT pg_backend_pid() AS pid \gset'
              echo '\setenv SB_PID :pid'
              echo "\\! echo pid \$SB_PID; awk '{print \"start\", \$14 + \$15}' /proc/\$SB_PID/stat"
              cat "$OUT/batches.sql"
              echo "\\! awk '{print \"end\", \$14 + \$15}' /proc/\$SB_PID/stat") |
      "${PSQL[@]}" -v ON_ERROR_STOP=1 | awk '/^pid/{p=$2} /^start/{s=$2} /^end/{e=$2} END{print p, e - s}')
    read -r pid own <<<"$ticks"
    "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
    after=$(others "$pid")
    own_ms=$((own * 1000 / hz)); other_ms=$(((after - before) * 1000 / hz))
    per=$(python3 -c "print(f'{($own_ms + $other_ms) * 1000 / $rows:.2f}')")
    echo "| $round | $case | $own_ms | $other_ms | $per |" | tee -a "$OUT/summary.md"
    "${PSQL[@]}" -c "DROP SCHEMA $schema CASCADE" >/dev/null
  done
done
echo "results: $OUT"
