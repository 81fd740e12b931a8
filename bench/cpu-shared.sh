#!/usr/bin/env bash
# What bounds throughput in the shared layout (nothing pinned: the load
# generator, the mock and the proxy share every core): the CPU time
# (perf's task-clock) and context switches per request of each of the
# three, at concurrency 64, for nginx (a worker per core) and for
# Switchboard as bench/switchboard.toml (master key, every request recorded
# to SQLite, metrics), with VARIANTS of its serving threads: `default` (a
# thread per core, each with a runtime of its own: `server.scheduler =
# "per-thread"`), `stealing` (a thread per core sharing one work-stealing
# runtime: `scheduler = "work-stealing"`) and `one` (`server.worker_threads
# = 1`), alternating, ROUNDS rounds. When
# the cores are full, throughput is about their number over the three
# processes' CPU per request together.
#
#   flock /tmp/bench.lock bench/cpu-shared.sh [BINARY]   (default: builds target/release/switchboard)
#   ROUNDS=3 DURATION=10 bench/cpu-shared.sh             # the defaults: 2, 8
#   VARIANTS="default stealing" bench/cpu-shared.sh      # the default: "default stealing one"
#
# Each proxy is warmed at concurrency 16 for 3 s, then perf counts each
# process (every thread it has by then) over the DURATION seconds of the
# load. Needs perf (Debian's linux-perf), nginx, oha and the mock
# (harness/install.sh tools, harness/install.sh mock). Loopback only; stops
# by itself. Results: bench/results/cpu-shared-*/summary.md.
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
NGINX_PORT=18080
source "$BENCH/harness/peers.sh"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8}"
VARIANTS="${VARIANTS:-default stealing one}"
for variant in $VARIANTS; do
  case "$variant" in default|stealing|one) ;; *) echo "unknown variant $variant (default, stealing, one)" >&2; exit 2 ;; esac
done
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 2; }
perf stat -e task-clock true >/dev/null 2>&1 || { echo "perf stat cannot count here" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is needed: bench/harness/install.sh tools" >&2; exit 2; }
BINARY="$(switchboard_binary "${1:-}")"
OUT="$RESULTS/cpu-shared-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
printf 'binary %s\nrounds %s\nduration %s\n' "$BINARY" "$ROUNDS" "$DURATION" >"$OUT/setup.txt"
export SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'

proxy_pid=""
cleanup() {
  if [ -n "$proxy_pid" ]; then stop_tree "$proxy_pid"; fi
  peer_stop nginx 2>/dev/null || true
  stop_mock
}
trap cleanup EXIT

start_mock "" ""
mock_pid="$(cat "$RUN/mock.pid")"

# The gateway's configuration: bench/switchboard.toml, pointed at the mock,
# with `worker_threads = 1` added for the `one` variant.
config() { # variant
  local toml="$RUN/cpu-shared-$1.toml"
  sed "s#http://127.0.0.1:18000#http://127.0.0.1:$MOCK_PORT#" "$BENCH/switchboard.toml" >"$toml"
  case "$1" in
    one) sed -i 's/^\[server\]$/[server]\nworker_threads = 1/' "$toml" ;;
    stealing) sed -i 's/^\[server\]$/[server]\nscheduler = "work-stealing"/' "$toml" ;;
  esac
  echo "$toml"
}

measure() { # label, url, key, the proxy's pids (comma-separated)
  local label="$1" url="$2" key="$3" pids="$4" proxy_stat mock_stat
  "$OHA" --no-tui -m POST -T application/json -d "$BODY" -H "Authorization: Bearer $key" \
    -z 3s -c 16 "$url" >/dev/null 2>&1 || true
  perf stat -x, -e task-clock,context-switches -p "$pids" -o "$OUT/$label.proxy" -- sleep "$DURATION" &
  proxy_stat=$!
  perf stat -x, -e task-clock,context-switches -p "$mock_pid" -o "$OUT/$label.mock" -- sleep "$DURATION" &
  mock_stat=$!
  perf stat -x, -e task-clock,context-switches -o "$OUT/$label.load" -- \
    "$OHA" --no-tui --output-format json -m POST -T application/json -d "$BODY" \
    -H "Authorization: Bearer $key" -z "${DURATION}s" -c 64 "$url" >"$OUT/$label.json" 2>/dev/null || true
  wait "$proxy_stat" "$mock_stat" || true
  log "$label measured"
}

for round in $(seq 1 "$ROUNDS"); do
  peer_start nginx "" "" >/dev/null
  root="$(cat "$RUN/nginx.root.pid")"
  measure "nginx-r$round" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" sk-none \
    "$(echo "$root" $(pgrep -P "$root" || true) | tr ' ' ,)"
  peer_stop nginx
  for variant in $VARIANTS; do
    export SWITCHBOARD_BENCH_DB="$RUN/cpu-shared-$variant.db"
    rm -rf "$SWITCHBOARD_BENCH_DB" "$SWITCHBOARD_BENCH_DB"-*
    nohup "$BINARY" serve --config "$(config "$variant")" >"$LOGS/cpu-shared-$variant.log" 2>&1 &
    proxy_pid=$!
    wait_http http://127.0.0.1:9000/health 20 || { echo "the gateway did not start: $LOGS/cpu-shared-$variant.log" >&2; exit 1; }
    measure "switchboard-$variant-r$round" http://127.0.0.1:9000/v1/chat/completions sk-bench-1234 "$proxy_pid"
    stop_tree "$proxy_pid"
    proxy_pid=""
  done
done

python3 - "$OUT" "$DURATION" <<'PY'
import glob, json, os, statistics, sys
out, duration = sys.argv[1], float(sys.argv[2])

def counts(path):
    found = {}
    for line in open(path):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0][:1].isdigit():
            found[fields[2]] = float(fields[0])
    return found

rows = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    label = os.path.basename(path)[:-5]
    answered = json.load(open(path)).get("statusCodeDistribution", {})
    n = answered.get("200", 0)
    if n == 0 or len(answered) != 1:
        sys.exit(f"{label}: {answered or 'no answers'}: every request must be answered 200")
    parts = [counts(os.path.join(out, f"{label}.{part}")) for part in ("proxy", "mock", "load")]
    cpu = [p.get("task-clock", 0) * 1000 / n for p in parts]  # msec -> µs per request
    switches = [p.get("context-switches", 0) / n for p in parts]
    rows.setdefault(label.rsplit("-r", 1)[0], []).append((n / duration, cpu, switches))

lines = ["| proxy | req/s (÷ nginx) | CPU µs per request: proxy, mock, load generator (sum) | context switches per request: proxy, mock, load generator |",
         "|---|---|---|---|"]
base = statistics.median(r[0] for r in rows.get("nginx", [(float("nan"),)]))
for name in ["nginx"] + sorted(n for n in rows if n != "nginx"):
    runs = rows.get(name)
    if not runs:
        continue
    rate = statistics.median(r[0] for r in runs)
    cpu = [statistics.median(r[1][i] for r in runs) for i in range(3)]
    switches = [statistics.median(r[2][i] for r in runs) for i in range(3)]
    lines.append(f"| {name} | {rate:,.0f} ({rate / base:.2f}) | {', '.join(f'{c:.1f}' for c in cpu)} ({sum(cpu):.1f}) | "
                 f"{', '.join(f'{s:.2f}' for s in switches)} |")
text = "Shared layout, concurrency 64, medians of the rounds\n\n" + "\n".join(lines)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
