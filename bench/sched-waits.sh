#!/usr/bin/env bash
# What holds Switchboard's serving thread off its core at a fixed rate:
# layout `pinned` (the gateway alone on core 1; oha and the mock on core
# 0), `perf sched` on core 1 during a load of RATE requests/s, then, for
# each time the serving thread was woken and waited more than 0.2 ms to
# run, what ran on core 1 just before it. Repeatable where p99 is not: a
# host that stops both cores now and then moves p99 from run to run, but
# not what the gateway's own threads make its serving thread wait for.
#
#   flock /tmp/bench.lock bench/sched-waits.sh BINARY [BINARY...]   # alternating, ROUNDS each
#   RATE=10000 ROUNDS=2 DURATION=8 CONFIG=bench/switchboard.toml   # the defaults
#
# Needs perf (Debian's linux-perf), oha and the mock (harness/install.sh
# tools, harness/install.sh mock). Loopback only; stops by itself.
# Results: bench/results/sched-*/summary.md.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/peers.sh"
RATE="${RATE:-10000}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8}"
CONFIG="$(realpath "${CONFIG:-$BENCH/switchboard.toml}")"
[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
OUT="$RESULTS/sched-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
export SWITCHBOARD_BENCH_DB="$RUN/sched.db" SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
printf 'binaries %s\nconfig %s\nrate %s\n' "$*" "$CONFIG" "$RATE" >"$OUT/setup.txt"

proxy_pid="" perf_pid=""
cleanup() {
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; fi
  if [ -n "$proxy_pid" ]; then stop_tree "$proxy_pid"; fi
  stop_mock
}
trap cleanup EXIT

start_mock 0 1
for round in $(seq "$ROUNDS"); do
  index=0
  for BINARY in "$@"; do
    index=$((index + 1))
    name="b$index-r$round"
    log "round $round, $BINARY"
    rm -rf "$RUN"/sched.db*
    start_pinned_switchboard "$CONFIG" "$LOGS/sched-switchboard.log"
    # a first load, so that the figures are of a warm gateway
    taskset -c 0 "$OHA" --no-tui -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer sk-bench-1234" -z 3s -c 256 -q "$RATE" --latency-correction \
      http://127.0.0.1:9000/v1/chat/completions >/dev/null 2>&1 || true
    taskset -c 0 perf sched record -a -o "$OUT/$name.data" >/dev/null 2>"$OUT/$name.perf.err" &
    perf_pid=$!
    sleep 0.5
    taskset -c 0 "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -H "Authorization: Bearer sk-bench-1234" -t 30s -z "${DURATION}s" -c 256 -q "$RATE" \
      --latency-correction http://127.0.0.1:9000/v1/chat/completions >"$OUT/$name.json" 2>/dev/null || true
    kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true; perf_pid=""
    perf sched timehist -i "$OUT/$name.data" -C 1 >"$OUT/$name.timehist" 2>/dev/null || true
    rm -f "$OUT/$name.data"
    echo "$proxy_pid" >"$OUT/$name.pid"
    stop_tree "$proxy_pid"; proxy_pid=""
  done
done

python3 - "$OUT" "$ROUNDS" "$#" <<'PY'
import collections, json, os, sys
out, rounds, builds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
setup = open(os.path.join(out, "setup.txt")).read().split("\n")[0].split()[1:]
rows = ["| build | round | req/s | p99 ms | serving thread's waits over 0.2 ms | waited in all ms | longest ms | what ran before the longest waits (times, ms) |",
        "|---|---|---|---|---|---|---|---|"]
for r in range(1, rounds + 1):
    for b in range(1, builds + 1):
        name = f"b{b}-r{r}"
        try:
            pid = open(os.path.join(out, name + ".pid")).read().strip()
            lines = open(os.path.join(out, name + ".timehist")).read().splitlines()
            d = json.load(open(os.path.join(out, name + ".json")))
        except (OSError, ValueError):
            rows.append(f"| {setup[b-1]} | {r} | – | – | no result | | | |"); continue
        if not any(len(l.split()) >= 6 and l.split()[1].startswith("[") for l in lines):
            rows.append(f"| {setup[b-1]} | {r} | – | – | no result (perf recorded nothing: see {name}.perf.err) | | | |"); continue
        prev = None
        waits, total, longest = 0, 0.0, 0.0
        by = collections.defaultdict(lambda: [0, 0.0])
        for line in lines:
            f = line.split()
            if len(f) < 6 or not f[1].startswith("["):
                continue
            task = f[2]
            try:
                delay = float(f[-2])
            except ValueError:
                continue
            # the serving thread: the process's main thread, which timehist
            # names `comm[pid]` (other threads are `comm[tid/pid]`)
            if task.endswith(f"[{pid}/{pid}]") or task.endswith(f"[{pid}]"):
                if delay > 0.2:
                    waits += 1; total += delay; longest = max(longest, delay)
                    who = (prev or "?").rsplit("[", 1)[0]
                    by[who][0] += 1; by[who][1] += delay
            prev = task
        top = ", ".join(f"{k} ({n}, {t:.1f})" for k, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:4])
        p99 = d.get("latencyPercentiles", {}).get("p99") or 0
        rows.append(f"| {setup[b-1]} | {r} | {d['summary']['requestsPerSec']:.0f} | {p99*1000:.2f} | {waits} | {total:.1f} | {longest:.2f} | {top} |")
text = "\n".join(rows) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
print("results:", out)
PY
