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
# `nginx` (in the default cases) is an nginx hop to the same mock, one
# worker, measured in the same rounds: every case is also compared with it.
# PINNED=1 puts the mock (one thread) and the load generator on core 0 and
# the proxy alone on core 1 (Switchboard then serves on one thread), the
# layout of issue #7's targets (PostgreSQL and Redis stay unpinned); by
# default nothing is pinned and nginx runs a worker per core.
# The summary also gives, for the c64 load, the CPU time per request (user
# and system, µs) of the proxy, of PostgreSQL (all its processes) and of
# Redis: where the database servers share the proxy's core, throughput is
# about one over their sum.
#
#   bench/keys.sh [ROUNDS]      # default 2; ~3 minutes; loopback only
#   BINARY=/path/to/switchboard CASES="master-pg-redis key-pg-redis" bench/keys.sh 1
#   PINNED=1 bench/keys.sh 3    # everything on, against nginx, in issue #7's layout
#   PGO=1 PINNED=1 bench/keys.sh 3   # the same with a profile-guided build (bench/pgo.sh)
#   WARMUP=3 PINNED=1 bench/keys.sh 3   # each case warmed at c16 for 3 s first, as run.sh does
#   CLIENT=sdk MOCK_HEADERS=openai PINNED=1 bench/keys.sh 3   # requests with the headers OpenAI's
#       Python SDK sends, answers with those OpenAI's API sends (harness/common.sh, the mock)
#
# Needs what bench/run.sh installs (oha, nginx, the mock): run that once first.
# The PostgreSQL case needs psql and a server at 127.0.0.1:5432 (database
# `test`), and Redis at 127.0.0.1:6379; it is left out without them. After
# each PostgreSQL case, its table is vacuumed and a checkpoint taken, so that
# the server's after-work does not run during the next cases.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
NGINX_PORT=18080
source "$BENCH/harness/peers.sh"
ROUNDS="${1:-2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-0}"

BINARY="$(switchboard_binary "${BINARY:-}")"
OUT="$RESULTS/keys-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN"
export SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
MASTER=sk-bench-1234

WANTED="${CASES:-nginx master key-sqlite master-pg-redis key-pg-redis}"
CASES="$(for c in nginx master key-sqlite; do case " $WANTED " in *" $c "*) printf '%s ' "$c";; esac; done)"
case " $CASES " in *" nginx "*)
  command -v nginx >/dev/null || { echo "nginx not found: run bench/harness/install.sh tools, or leave the nginx case out (CASES=…)" >&2; exit 2; } ;;
esac
SCHEMA="sb_bench_$$"
if [ "${WANTED#*pg-redis}" = "$WANTED" ]; then
  :
elif pg_schema_and_redis "$SCHEMA"; then
  CASES="$CASES$(for c in master-pg-redis key-pg-redis key-exact-pg-redis; do case " $WANTED " in *" $c "*) printf '%s ' "$c";; esac; done)"
else
  echo "PostgreSQL or Redis unavailable: the key-pg-redis case is left out"
fi

GW_CPU="" LOAD_CPU=""
if [ -n "${PINNED:-}" ]; then
  [ "$(nproc)" -ge 2 ] || { echo "PINNED needs 2 cores" >&2; exit 2; }
  GW_CPU=1 LOAD_CPU=0
fi
echo "layout: $([ -n "$GW_CPU" ] && echo "pinned (proxy on core 1, mock and load on core 0)" || echo shared)" >"$OUT/layout.txt"
echo "headers: requests $([ "${CLIENT:-}" = sdk ] && echo "with OpenAI's Python SDK's" || echo "with oha's few"), answers $([ "${MOCK_HEADERS:-}" = openai ] && echo "with OpenAI's" || echo "with the mock's three")" >>"$OUT/layout.txt"

gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && stop_tree "$gateway_pid"
  peer_stop nginx 2>/dev/null || true
  stop_mock
  psql -h 127.0.0.1 -U postgres test -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" 2>/dev/null || true
}
trap cleanup EXIT
if [ -n "$GW_CPU" ]; then start_mock "$LOAD_CPU" 1; else start_mock "" ""; fi

config() { # case -> config file
  local case="$1" storage
  case "$case" in
    *-pg-redis) storage="url = \"$(pg_schema_url "$SCHEMA")\"
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

# CPU time (clock ticks, user and system) of process $1 and its children,
# those still running and those it has reaped; 0 when there is none.
tree_ticks() {
  local total=0 pid fields
  [ -n "$1" ] || { echo 0; return; }
  for pid in "$1" $(pgrep -P "$1" || true); do
    # The fields after the command's name: utime, stime, cutime and cstime
    # are the 14th to 17th of the line, the 12th to 15th of these.
    fields="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null)" || continue
    read -r -a fields <<<"$fields"
    total=$((total + fields[11] + fields[12] + fields[13] + fields[14]))
  done
  echo "$total"
}
# The proxy's, PostgreSQL's and Redis's CPU ticks so far (the database
# servers are the machine's own: their oldest process and its children).
cpu_now() { # proxy pid
  echo "$(tree_ticks "$1") $(tree_ticks "$(pgrep -o -x postgres || true)") $(tree_ticks "$(pgrep -o -x redis-server || true)")"
}

load() { # case, round, url, key, proxy pid
  local concurrency before after
  if [ "$WARMUP" != 0 ]; then
    $(pin_prefix "$LOAD_CPU") "$OHA" --no-tui -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer $4" ${CLIENT_HEADERS[@]+"${CLIENT_HEADERS[@]}"} -z "${WARMUP}s" -c 16 "$3" >/dev/null 2>&1 || true
  fi
  for concurrency in 64 1; do
    before="$(cpu_now "$5")"
    $(pin_prefix "$LOAD_CPU") "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer $4" ${CLIENT_HEADERS[@]+"${CLIENT_HEADERS[@]}"} -t 30s -z "${DURATION}s" -c "$concurrency" \
      "$3" >"$OUT/$1-r$2-c$concurrency.json" 2>/dev/null || true
    if [ "$concurrency" = 64 ]; then
      after="$(cpu_now "$5")"
      echo "$before $after" >"$OUT/$1-r$2-c64-cpu.txt"
    fi
  done
}

run_case() { # case, round
  local case="$1" round="$2" key="$MASTER"
  if [ "$case" = nginx ]; then
    # One worker on the proxy's core when pinned; one per core otherwise,
    # as Switchboard then serves on every core.
    peer_start nginx "$GW_CPU" "$([ -n "$GW_CPU" ] && echo 1)"
    load nginx "$round" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$MASTER" "$(peer_pid nginx)"
    peer_stop nginx
    return
  fi
  rm -rf "$RUN/keys-$case.db"* "$RUN/keys-journal"
  nohup $(pin_prefix "$GW_CPU") "$BINARY" serve --config "$(config "$case")" >"$LOGS/keys-$case.log" 2>&1 &
  gateway_pid=$!
  wait_http "http://127.0.0.1:9000/health" 30
  if [ "${case#master}" = "$case" ]; then
    # Limits high enough never to refuse, so every request pays for the
    # checks and reservations and none is turned away.
    key="$(bench_virtual_key "http://127.0.0.1:9000" "$MASTER")"
  fi
  load "$case" "$round" http://127.0.0.1:9000/v1/chat/completions "$key" "$gateway_pid"
  stop_tree "$gateway_pid"; gateway_pid=""
  if [ "${case%-pg-redis}" != "$case" ]; then
    # PostgreSQL's after-work on the rows just written (autovacuum,
    # checkpoints) would otherwise run during the next cases, on the same
    # cores: done here, between cases.
    psql -h 127.0.0.1 -U postgres test -q -c "VACUUM ANALYZE $SCHEMA.requests" -c "CHECKPOINT" >/dev/null 2>&1 || true
  fi
}

# Cases alternate: their order is reversed on even rounds, so no case is
# always measured first (or right after the same neighbour).
for round in $(seq 1 "$ROUNDS"); do
  order="$CASES"
  [ $((round % 2)) -eq 0 ] && order="$(printf '%s\n' $CASES | tac | tr '\n' ' ')"
  for case in $order; do run_case "$case" "$round"; done
done

python3 - "$OUT" "$ROUNDS" "$(getconf CLK_TCK)" $CASES <<'PY'
import json, os, statistics, sys
out, rounds, tick, cases = sys.argv[1], int(sys.argv[2]), 1e6 / int(sys.argv[3]), sys.argv[4:]
def cpu(case):
    """Median CPU µs per request at c64: the proxy, PostgreSQL, Redis."""
    per = []
    for r in range(1, rounds + 1):
        d = json.load(open(os.path.join(out, f"{case}-r{r}-c64.json")))
        served = sum(d.get("statusCodeDistribution", {}).values())
        ticks = [int(x) for x in open(os.path.join(out, f"{case}-r{r}-c64-cpu.txt")).read().split()]
        if served and len(ticks) == 6:
            per.append([(ticks[3 + i] - ticks[i]) * tick / served for i in range(3)])
    return [statistics.median(p[i] for p in per) for i in range(3)] if per else None
def runs(case, c):
    result = []
    for r in range(1, rounds + 1):
        d = json.load(open(os.path.join(out, f"{case}-r{r}-c{c}.json")))
        codes = d.get("statusCodeDistribution", {})
        total = sum(codes.values()) or 1
        result.append((d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p50"] * 1000,
                       d["latencyPercentiles"]["p99"] * 1000, codes.get("200", 0) / total))
    return result
rows = ["| case | c64 req/s | vs its master-key baseline | vs nginx (by round) | c64 p99 ms | c1 p50 ms | c1 p50 added over the baseline | 200s | c64 CPU µs/request: proxy, PostgreSQL, Redis |",
        "|---|---|---|---|---|---|---|---|---|"]
nginx64 = [r[0] for r in runs("nginx", 64)] if "nginx" in cases else None
for case in cases:
    baseline = case if case == "nginx" else "master-pg-redis" if case.endswith("pg-redis") else "master"
    base = baseline in cases
    c64, c1 = runs(case, 64), runs(case, 1)
    rps = statistics.median(r[0] for r in c64)
    p99 = statistics.median(r[2] for r in c64)
    p50 = statistics.median(r[1] for r in c1)
    ok = min(r[3] for r in c64 + c1)
    vs_base = vs_added = "–"
    if base and case != baseline:
        vs_base = f"{rps / statistics.median(r[0] for r in runs(baseline, 64)):.2f}"
        vs_added = f"{p50 - statistics.median(r[1] for r in runs(baseline, 1)):+.3f} ms"
    vs_nginx = "–"
    if nginx64 and case != "nginx":
        by_round = [r[0] / n for r, n in zip(c64, nginx64)]
        vs_nginx = f"{statistics.median(by_round):.2f} ({', '.join(f'{x:.2f}' for x in by_round)})"
    used = cpu(case)
    used = "–" if used is None else ", ".join(f"{x:.1f}" for x in used)
    rows.append(f"| {case} | {rps:.0f} | {vs_base} | {vs_nginx} | {p99:.2f} | {p50:.3f} | {vs_added} | {ok:.2%} | {used} |")
text = "\n".join(rows)
layout = os.path.join(out, "layout.txt")
if os.path.exists(layout):
    text = open(layout).read().strip().replace("\n", "; ") + "\n\n" + text
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
