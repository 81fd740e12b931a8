#!/usr/bin/env bash
# p50/p99/p99.9 at a fixed rate (oha -q RATE --latency-correction, 256
# connections), layout `pinned` (the proxy alone on core 1; oha and the mock
# on core 0), ROUNDS rounds of: the mock directly, then nginx and Switchboard
# (as bench/switchboard.toml, or CONFIG=), each measured twice right after it
# starts: `cold` (its first load) and `warm` (a second oha process, so new
# client connections, on the same proxy).
#
# Each load is DURATION seconds, and its latencies (of the answers that
# were 200s) are given twice: over the whole load, and over the requests
# sent after its first WARMUP seconds and before its last tenth of a
# second (`steady`), read from oha's per-request output: when each request
# was sent, and its latency counted from when it was due. oha opens its 256
# connections at once and every request due meanwhile counts from when it
# was due, so at high rates a whole load's p99 is set by its first tenth of
# a second. A load `holds` the rate when the 200s to requests sent in its
# steady part number at least 99.5% of the requests due in that time.
# oha's rows hold only requests that were answered: `unanswered` is what
# the load was due to send and got no answer for (a failed connection, a
# reset, a timeout, or still in flight at the end), and oha's messages are
# kept beside the summary (`<load>.err`) when it wrote any.
#
#   flock /tmp/bench.lock bench/fixed-rate.sh [BINARY]   (default: builds target/release/switchboard)
#   flock /tmp/bench.lock bench/fixed-rate.sh BEFORE AFTER   # builds side by side: each measured cold and
#       # warm in every round, after nginx, their order turned round each round (`switchboard-1`, `-2`, …)
#   RATE=2000 ROUNDS=2 DURATION=8 WARMUP=1 bench/fixed-rate.sh    # the defaults
#   SPIN=1 bench/fixed-rate.sh B      # a nice-19 busy loop keeps core 1 awake meanwhile
#
# Each load also notes which of the machine's TCP counters moved
# (`<load>.net`, the summary's `net` column: retransmissions, listen-queue
# drops), and for Switchboard's loads the CPU each of its threads used
# (`<load>.threads`; the serving thread is named after the executable).
#
# Before each round, the freeze probe (bench/freezes.sh) spins 3 s on both
# cores: how much of the time each core stopped running it, and for how
# long at most, is what a proxy's tail at this rate cannot go below.
#
# Needs nginx, oha and the mock (harness/install.sh tools, harness/install.sh
# mock). Loopback only; stops by itself. Results: bench/results/rate-*/summary.md.
# The bench scripts share bench/run and their ports: run one at a time (flock).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
NGINX_PORT=18080
source "$BENCH/harness/peers.sh"
RATE="${RATE:-2000}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-1}"
[[ "$DURATION" =~ ^[0-9]+$ && "$WARMUP" =~ ^[0-9]+$ && "$WARMUP" -lt "$DURATION" ]] ||
  { echo "DURATION and WARMUP are whole seconds, WARMUP less than DURATION" >&2; exit 2; }
CONFIG="$(realpath "${CONFIG:-$BENCH/switchboard.toml}")"
require_pinned_peers
BINARIES=()
if [ $# -gt 1 ]; then
  for build in "$@"; do BINARIES+=("$(realpath "$build")"); done
else
  BINARIES=("$(switchboard_binary "${1:-}")")
fi
OUT="$RESULTS/rate-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
export SWITCHBOARD_BENCH_DB="$RUN/rate.db" SWITCHBOARD_LOG=warn
BODY='{"model":"bench-model","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}'
# The name of build $1 (an index into BINARIES) in the results.
contender() { if [ "${#BINARIES[@]}" -gt 1 ]; then echo "switchboard-$(($1 + 1))"; else echo switchboard; fi; }
{ for index in "${!BINARIES[@]}"; do printf '%s %s\n' "$(contender "$index")" "${BINARIES[$index]}"; done
  printf 'config %s\nrate %s\nduration %s\nwarmup %s\nspin %s\n' \
    "$CONFIG" "$RATE" "$DURATION" "$WARMUP" "${SPIN:-}"; } >"$OUT/setup.txt"

proxy_pid="" spinner=""
cleanup() {
  if [ -n "$proxy_pid" ]; then stop_tree "$proxy_pid"; fi
  if [ -n "$spinner" ]; then kill "$spinner" 2>/dev/null || true; fi
  peer_stop nginx
  stop_mock
}
trap cleanup EXIT

# The machine's TCP and packet-queue counters that can explain a stall of a
# retransmission timeout (200 ms at least; 1 s for a SYN): segments sent again, SYNs and
# segments dropped (accept queue full, socket backlog full), packets dropped
# by a core's input queue (loopback's too). Machine-wide: "name value" lines.
net_counters() {
  awk '/^Tcp: [0-9]/ { for (i = 2; i <= NF; i++) tcp[i] = $i }
       /^Tcp: [A-Z]/ { for (i = 2; i <= NF; i++) tname[i] = $i }
       /^TcpExt: [0-9]/ { for (i = 2; i <= NF; i++) ext[i] = $i }
       /^TcpExt: [A-Z]/ { for (i = 2; i <= NF; i++) ename[i] = $i }
       END {
         for (i in tname) if (tname[i] == "RetransSegs") print "retransmitted", tcp[i]
         for (i in ename) if (ename[i] ~ /^(ListenOverflows|ListenDrops|TCPBacklogDrop|TCPTimeouts)$/) print ename[i], ext[i]
       }' /proc/net/snmp /proc/net/netstat 2>/dev/null || true
  local dropped=0 hex
  if [ -r /proc/net/softnet_stat ]; then
    while read -r _ hex _; do dropped=$((dropped + 16#$hex)); done </proc/net/softnet_stat
  fi
  echo "queue_dropped $dropped"
}

# The CPU time (user + system, in clock ticks) each thread of process $1
# has used, as "name ticks" lines, threads of one name summed.
thread_ticks() {
  local task
  for task in /proc/"$1"/task/*; do
    # the name may hold spaces; the counts follow its closing parenthesis
    printf '%s %s\n' "$(tr ' ' _ <"$task/comm")" "$(sed 's/.*) //' "$task/stat" | awk '{ print $12 + $13 }')"
  done 2>/dev/null | awk '{ ticks[$1] += $2 } END { for (name in ticks) print name, ticks[name] }'
}

# One load of DURATION seconds at RATE through $2, summarised into $OUT/$1.json
# (the per-request rows are read, then dropped: 13 MB a load at 20,000/s),
# with what net_counters moved by meanwhile in $OUT/$1.net, and, given the
# proxy's pid ($3), the CPU each of its threads used during the load in
# $OUT/$1.threads ("name ms", read 1 s after the load, for the work it left).
load() { # name, url[, pid]
  net_counters >"$OUT/$1.net-before"
  [ -z "${3:-}" ] || thread_ticks "$3" >"$OUT/$1.threads-before"
  taskset -c 0 "$OHA" --no-tui --output-format csv -m POST -T application/json -d "$BODY" \
    -H "Authorization: Bearer sk-bench-1234" -t 30s -z "${DURATION}s" -c 256 -q "$RATE" \
    --latency-correction "$2" >"$OUT/$1.csv" 2>"$OUT/$1.err" || true
  net_counters | awk 'NR == FNR { before[$1] = $2; next } { printf "%s %d\n", $1, $2 - before[$1] }' \
    "$OUT/$1.net-before" - >"$OUT/$1.net" && rm -f "$OUT/$1.net-before"
  if [ -n "${3:-}" ]; then
    sleep 1
    thread_ticks "$3" | awk -v hz="$(getconf CLK_TCK)" 'NR == FNR { before[$1] = $2; next }
      $2 > before[$1] { printf "%s %d\n", $1, ($2 - before[$1]) * 1000 / hz }' "$OUT/$1.threads-before" - |
      sort -k2,2nr >"$OUT/$1.threads" && rm -f "$OUT/$1.threads-before"
  fi
  [ -s "$OUT/$1.err" ] || rm -f "$OUT/$1.err"
  python3 - "$OUT/$1.csv" "$RATE" "$DURATION" "$WARMUP" >"$OUT/$1.json" <<'PY' && rm -f "$OUT/$1.csv" || true
import json, sys
path, rate, duration, warmup = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = []
with open(path) as f:
    header = f.readline().strip().split(",")
    if header[:1] != ["request-start"]:
        sys.exit(1)
    start, took, status = (header.index(n) for n in ("request-start", "request-duration", "status"))
    for line in f:
        cells = line.split(",")
        rows.append((float(cells[start]), float(cells[took]), int(cells[status])))
def figures(part, seconds):
    ok = sorted(t for _, t, code in part if code == 200)
    pick = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] if ok else None
    due = rate * seconds
    return {"p50": pick(0.50), "p99": pick(0.99), "p99.9": pick(0.999),
            "answered_per_sec": len(ok) / seconds, "not_200": len(part) - len(ok),
            "unanswered": max(0, round(due) - len(part)),
            "answered_share": len(ok) / due if due else None}
# the last tenth of a second is left out of the count: oha cuts what is in flight at its deadline
steady = [r for r in rows if warmup <= r[0] < duration - 0.1]
json.dump({"whole": figures(rows, duration), "steady": figures(steady, duration - 0.1 - warmup)}, sys.stdout)
PY
}

start_mock 0 1
if [ "${SPIN:-}" = 1 ]; then
  taskset -c 1 nice -n 19 sh -c 'while :; do :; done' &
  spinner=$!
fi
for round in $(seq "$ROUNDS"); do
  log "round $round"
  "$BENCH/freezes.sh" 3 0.2 >"$OUT/freezes-r$round.txt"
  load "direct-r$round" "$MOCK_URL/chat/completions"
  peer_start nginx 1 1
  for phase in cold warm; do load "nginx-$phase-r$round" "http://127.0.0.1:$NGINX_PORT/v1/chat/completions"; done
  peer_stop nginx
  order=("${!BINARIES[@]}")
  [ $((round % 2)) -eq 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
  for index in "${order[@]}"; do
    BINARY="${BINARIES[$index]}"
    name="$(contender "$index")"
    rm -rf "$RUN"/rate.db*
    start_pinned_switchboard "$CONFIG" "$LOGS/rate-$name.log"
    for phase in cold warm; do load "$name-$phase-r$round" "http://127.0.0.1:9000/v1/chat/completions" "$proxy_pid"; done
    stop_tree "$proxy_pid"; proxy_pid=""
  done
done

python3 - "$OUT" "$ROUNDS" "$WARMUP" $(for index in "${!BINARIES[@]}"; do contender "$index"; done) <<'PY'
import json, math, os, sys
out, rounds, warmup, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [f"Latencies of the 200s, over the whole load, then `steady` (requests sent after its first {warmup} s, before its last 0.1 s);",
        "p99 above direct: the same round's direct p99, same part. A load holds the rate when the 200s to requests sent in its",
        "steady part number 99.5% of the requests due in that time. Unanswered: due over the whole load, no answer (failed or cut at the end).",
        "",
        "Net: what the machine's TCP counters moved by during the load, where not 0 (`net_counters`: retransmitted segments,",
        "the listen queue's overflows and drops, segments dropped for a full socket backlog, retransmission timeouts, and packets",
        "dropped by a core's input queue; machine-wide); a stall of 200 ms or more in a load where they moved may be a retransmission's,",
        "in one where none moved it is not.",
        "",
        "| round | contender | p50 ms | p99 ms | p99.9 ms | p99 above direct | steady p50 | steady p99 | steady p99.9 | steady p99 above direct | steady 200s/s | holds | not 200 | unanswered | net |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
def net(name):
    try:
        pairs = [line.split() for line in open(os.path.join(out, f"{name}.net"))]
    except OSError:
        return "–"
    moved = [f"{k} {v}" for k, v in pairs if v != "0"]
    return ", ".join(moved) if moved else "0"
ms = lambda v: "–" if v is None else f"{v * 1000:.2f}"
for r in range(1, rounds + 1):
    direct = None
    for name in ["direct", "nginx-cold", "nginx-warm"] + [f"{b}-{p}" for b in builds for p in ("cold", "warm")]:
        try:
            d = json.load(open(os.path.join(out, f"{name}-r{r}.json")))
        except (OSError, ValueError):
            rows.append(f"| {r} | {name} | " + "– | " * 11 + "no result | – |")
            continue
        if name == "direct":
            direct = d
        w, s = d["whole"], d["steady"]
        above = lambda part: "–" if direct is None or d[part]["p99"] is None or direct[part]["p99"] is None \
            else f"{(d[part]['p99'] - direct[part]['p99']) * 1000:+.2f}"
        share = s["answered_share"]
        # rounded down, so that a share under the line never reads as on it
        holds = "–" if share is None else ("yes" if share >= 0.995 else f"no ({math.floor(share * 1000) / 10:.1f}%)")
        rows.append(f"| {r} | {name} | {ms(w['p50'])} | {ms(w['p99'])} | {ms(w['p99.9'])} | {above('whole')} | "
                    f"{ms(s['p50'])} | {ms(s['p99'])} | {ms(s['p99.9'])} | {above('steady')} | "
                    f"{s['answered_per_sec']:.0f} | {holds} | {w['not_200']} | {w['unanswered']} | {net(f'{name}-r{r}')} |")
rows.append("")
rows.append("Freezes (bench/freezes.sh's probe, 3 s on each core before the round; gaps over 0.2 ms):")
rows.append("")
for r in range(1, rounds + 1):
    try:
        lines = open(os.path.join(out, f"freezes-r{r}.txt")).read().split("\n")
    except OSError:
        lines = ["no result"]
    rows.extend(f"- round {r}, {line}" for line in lines if line.strip())
rows.append("")
rows.append("CPU of Switchboard's threads during each load, ms (user + system, read 1 s after the load):")
rows.append("")
for r in range(1, rounds + 1):
    for name in [f"{b}-{p}" for b in builds for p in ("cold", "warm")]:
        try:
            pairs = [line.split() for line in open(os.path.join(out, f"{name}-r{r}.threads"))]
        except OSError:
            continue
        rows.append(f"- round {r}, {name}: " + ", ".join(f"{k} {v}" for k, v in pairs))
text = "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
