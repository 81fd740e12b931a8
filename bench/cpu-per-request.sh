#!/usr/bin/env bash
# CPU time per request, user and system, of nginx and of Switchboard (as
# bench/switchboard.toml: master key, every request recorded to SQLite,
# metrics), each alone on core 1 while oha (concurrency 64) and the mock
# share core 0, alternating, ROUNDS rounds. Read from /proc/PID/task/*/stat
# (the whole process: every thread, those that ended included) over the
# middle DURATION-6 seconds of each run, timed as it is read; the requests
# in that window are estimated from the run's average rate. Also prints how busy the
# proxy's core was: a proxy whose core is not full is held back by the
# load generator and the mock, not by its own work.
#
#   flock /tmp/bench.lock bench/cpu-per-request.sh [BINARY]   (default: builds target/release/switchboard)
#   ROUNDS=3 DURATION=14 bench/cpu-per-request.sh     # the defaults: 2, 12
#
# The bench scripts share bench/run and their ports: run one at a time (flock).
#
# Needs nginx, oha and the mock (harness/install.sh tools, harness/install.sh
# mock). Loopback only; stops by itself. Results: bench/results/cpu-*/summary.md.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
NGINX_PORT=18080
source "$BENCH/harness/peers.sh"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-12}"
[ "$DURATION" -ge 8 ] || { echo "DURATION must be at least 8 seconds" >&2; exit 2; }
require_pinned_peers
BINARY="$(switchboard_binary "${1:-}")"
OUT="$RESULTS/cpu-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
printf 'binary %s\nrounds %s\nduration %s\n' "$BINARY" "$ROUNDS" "$DURATION" >"$OUT/setup.txt"
export SWITCHBOARD_BENCH_DB="$RUN/cpu.db" SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
TICKS="$(getconf CLK_TCK)"
WINDOW=$((DURATION - 6))

proxy_pid="" load_pid=""
cleanup() {
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
  if [ -n "$proxy_pid" ]; then stop_tree "$proxy_pid"; fi
  peer_stop nginx
  stop_mock
}
trap cleanup EXIT

# User and system ticks of the given processes: utime and stime of
# /proc/PID/stat, which count the threads that have ended too. Its fields
# are read after the command name's closing parenthesis (the name may hold
# spaces); utime and stime are the 12th and 13th from there.
ticks() {
  local user=0 system=0 line rest fields
  for pid in "$@"; do
    line="$(cat "/proc/$pid/stat" 2>/dev/null)" || { echo "process $pid is gone" >&2; return 1; }
    rest="${line##*) }"
    read -r -a fields <<<"$rest"
    user=$((user + fields[11])); system=$((system + fields[12]))
  done
  echo "$user $system"
}

# name, round, url, pids: one run at c64; the CPU window is seconds 3 to DURATION-3
measure() {
  local name="$1" round="$2" url="$3" t0 t1 u0 s0 u1 s1; shift 3
  taskset -c 0 "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
    -H "Authorization: Bearer sk-bench-1234" -t 30s -z "${DURATION}s" -c 64 "$url" \
    >"$OUT/$name-r$round.json" 2>/dev/null &
  load_pid=$!
  sleep 3
  t0="$EPOCHREALTIME"; read -r u0 s0 <<<"$(ticks "$@")"
  sleep "$WINDOW"
  t1="$EPOCHREALTIME"; read -r u1 s1 <<<"$(ticks "$@")"
  wait "$load_pid" || true
  load_pid=""
  echo "$name $round $((u1 - u0)) $((s1 - s0)) $t0 $t1" >>"$OUT/ticks.txt"
}

start_mock 0 1
for round in $(seq "$ROUNDS"); do
  log "round $round"
  order="nginx switchboard"
  [ $((round % 2)) -eq 0 ] && order="switchboard nginx"
  for peer in $order; do
    if [ "$peer" = nginx ]; then
      peer_start nginx 1 1
      master="$(cat "$RUN/nginx.root.pid")"
      worker="$(pgrep -P "$master" || true)"
      [ -n "$worker" ] || { echo "no nginx worker found under $master" >&2; exit 1; }
      measure nginx "$round" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" "$master" $worker
      peer_stop nginx
    else
      rm -rf "$RUN"/cpu.db*
      start_pinned_switchboard "$BENCH/switchboard.toml" "$LOGS/cpu-switchboard.log"
      measure switchboard "$round" "http://127.0.0.1:9000/v1/chat/completions" "$proxy_pid"
      stop_tree "$proxy_pid"; proxy_pid=""
    fi
  done
done

python3 - "$OUT" "$TICKS" <<'PY'
import json, os, sys
out, ticks = sys.argv[1], int(sys.argv[2])
rows = ["| round | proxy | req/s | core busy | user µs/request | system µs/request | total µs/request |",
        "|---|---|---|---|---|---|---|"]
for line in open(os.path.join(out, "ticks.txt")):
    name, rnd, user, system, t0, t1 = line.split()
    window = float(t1) - float(t0)
    run = json.load(open(os.path.join(out, f"{name}-r{rnd}.json")))
    rps = run["summary"]["requestsPerSec"]
    codes = run.get("statusCodeDistribution", {})
    # oha cuts the requests still in flight when the time is up: not failures
    errors = {k: v for k, v in run.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    if set(codes) != {"200"} or errors:
        sys.exit(f"{name} round {rnd}: not every request answered 200: {codes} {errors}")
    requests = rps * window
    user_s, system_s = int(user) / ticks, int(system) / ticks
    rows.append(f"| {rnd} | {name} | {rps:.0f} | {100 * (user_s + system_s) / window:.0f}% | "
                f"{1e6 * user_s / requests:.1f} | {1e6 * system_s / requests:.1f} | "
                f"{1e6 * (user_s + system_s) / requests:.1f} |")
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
