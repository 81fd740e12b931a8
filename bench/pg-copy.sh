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
#   text-files    (named in CASES only) the schema as migrated, each batch
#                 read by psql's `\copy` from a file in the text format
#   binary-files  the same in COPY's binary format (big-endian integers,
#                 one byte per boolean, texts as they are)
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
cleanup() {
  for schema in "${SCHEMAS[@]}"; do "${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$OUT/files"
}
trap cleanup EXIT

# The batches, as psql reads them: a COPY's rows follow it, ended by `\.`.
# Also each batch in a file of its own, in COPY's text and binary formats,
# and the scripts that load those files with psql's `\copy`.
mkdir -p "$OUT/files"
python3 - "$BATCHES" "$KEYED" "$OUT" <<'PY'
import random, struct, sys
batches, keyed, out_dir = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
columns = ("request_id, started_at_ms, endpoint, model, deployment, stream, status, outcome, "
           "error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, "
           "reasoning_tokens, attempts, served_model, key_id, team_id, end_user, cost_nanos, "
           "cache_write_tokens, cache_hit, metadata, attempt_details, timed_id")
random.seed(7)
started = 1_764_500_000_000
key = "key_0123456789abcdef" if keyed else None

def text(value):
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)

def binary(value):  # int32 length, then the type's binary form (-1: NULL)
    if value is None:
        return struct.pack(">i", -1)
    if isinstance(value, bool):
        data = b"\x01" if value else b"\x00"
    elif isinstance(value, int):
        data = struct.pack(">q", value)
    else:
        data = value.encode()
    return struct.pack(">i", len(data)) + data

inline = open(f"{out_dir}/batches.sql", "w")
scripts = {fmt: open(f"{out_dir}/batches-{fmt}-files.sql", "w") for fmt in ("text", "binary")}
for batch in range(batches):
    rows = []
    for _ in range(1000):
        started += 1
        request_id = "req_%012x%020x" % (started, random.getrandbits(80))
        rows.append([request_id, started, "chat_completions", "bench-model", "mock", False, 200,
                     "success", None, 3, None, 12, 16, None, None, 1, "bench-model", key, None,
                     None, 4200, None, False, None, None, True])
    lines = "".join("\t".join(text(value) for value in row) + "\n" for row in rows)
    inline.write(f"BEGIN;\nCOPY requests ({columns}) FROM STDIN;\n{lines}\\.\nCOMMIT;\n")
    with open(f"{out_dir}/files/b{batch}.txt", "w") as file:
        file.write(lines)
    with open(f"{out_dir}/files/b{batch}.bin", "wb") as file:
        file.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
        for row in rows:
            file.write(struct.pack(">h", len(row)) + b"".join(binary(value) for value in row))
        file.write(struct.pack(">h", -1))
    for fmt, script in scripts.items():
        options = " WITH (FORMAT binary)" if fmt == "binary" else ""
        ext = "bin" if fmt == "binary" else "txt"
        script.write(f"BEGIN;\n\\copy requests ({columns}) FROM '{out_dir}/files/b{batch}.{ext}'{options}\nCOMMIT;\n")
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
    text-files|binary-files) echo "" ;;
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
              case "$case" in
                text-files|binary-files) cat "$OUT/batches-${case%-files}-files.sql" ;;
                *) cat "$OUT/batches.sql" ;;
              esac
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
