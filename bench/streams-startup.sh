#!/usr/bin/env bash
# The figures bench/run.sh does not take, for every peer side by side:
# start-up time (launch to the first answer from its health URL), streamed
# time to first byte and to last byte with STREAMS concurrent streams
# (default 256; the mock waits 2 ms between its 23 events), resident
# memory idle, at its peak under those streams and per open stream, and
# what each takes on disk. Memory per open stream is given two ways:
# (peak - idle) / STREAMS, and what the second half of the streams adds,
# (peak - peak with STREAMS/2) / (STREAMS/2), the load with half of them run
# first: the second leaves out what any load costs once (caches filled,
# pools and queues grown), which the first spreads over the streams.
#
#   bench/streams-startup.sh [STREAMS]                 (default 256)
#   PEERS="nginx switchboard" bench/streams-startup.sh   # a subset
#   BINARY=path/to/switchboard bench/streams-startup.sh  # a given build
#
# Nothing pinned (layout `shared`); LiteLLM with one worker per core.
# Needs what bench/run.sh installs (PEERS="... litellm portkey ..."). Loopback
# only; stops by itself (about 30 s per peer, LiteLLM's start longer).
# Results: bench/results/streams-*/summary.md. Run it alone (flock /tmp/bench.lock).
set -euo pipefail
BENCH="$(cd "$(dirname "$0")" && pwd)"
export ANCHORS="$BENCH"
source "$BENCH/harness/peers.sh"
STREAMS="${1:-256}"
HALF=$((STREAMS / 2))
PEERS="${PEERS:-direct nginx litellm portkey switchboard}"
DURATION="${DURATION:-8s}"
BINARY="$(switchboard_binary "${BINARY:-}")"
OUT="$RESULTS/streams-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT" "$RUN" "$LOGS"
export SWITCHBOARD_BENCH_DB="$RUN/streams.db" SWITCHBOARD_LOG=warn
sb_pid=""
cleanup() {
  [ -n "$sb_pid" ] && stop_tree "$sb_pid"
  for p in $PEERS; do [ "$p" = switchboard ] || peer_stop "$p" 2>/dev/null || true; done
  stop_mock
}
trap cleanup EXIT

health_of() {
  case "$1" in
    nginx) echo "http://127.0.0.1:$NGINX_PORT/health" ;;
    litellm) echo "http://127.0.0.1:$LITELLM_PORT/health/liveliness" ;;
    portkey) echo "http://127.0.0.1:$PORTKEY_PORT/" ;;
    switchboard) echo "http://127.0.0.1:9000/health" ;;
  esac
}

# Milliseconds from now until URL answers (any HTTP status), polled every 10 ms.
until_answers() {
  local url="$1" start now
  start=$(date +%s%N)
  while ! curl -s -o /dev/null -m 1 "$url"; do
    now=$(date +%s%N)
    [ $(((now - start) / 1000000)) -lt 240000 ] || { echo "-1"; return; }
    sleep 0.01
  done
  now=$(date +%s%N)
  echo $(((now - start) / 1000000))
}

footprint() {
  case "$1" in
    direct) du -sk "$MOCK_BIN" | awk '{print $1}' ;;
    nginx) du -skL "$(command -v nginx)" | awk '{print $1}' ;;
    litellm) du -sk "$LITELLM_VENV" | awk '{print $1}' ;;
    portkey) du -sk "$PORTKEY_DIR/node_modules" | awk '{print $1}' ;;
    switchboard) du -sk "$BINARY" | awk '{print $1}' ;;
  esac
}

for peer in $PEERS; do
  log "$peer"
  start_mock "" "" >/dev/null
  if [ "$peer" = direct ]; then
    # the mock itself: no start-up of a gateway to time
    startup='"–"'
    pid="$(cat "$RUN/mock.pid")"
  else
    if [ "$peer" = switchboard ]; then
      rm -rf "$RUN"/streams.db*
      t0=$(date +%s%N)
      "$BINARY" serve --config "$BENCH/switchboard.toml" >"$LOGS/streams-switchboard.log" 2>&1 &
      sb_pid=$!
      until_answers "$(health_of switchboard)" >/dev/null
      startup=$((($(date +%s%N) - t0) / 1000000))
      pid="$sb_pid"
    else
      until_answers "$(health_of "$peer")" >"$RUN/startup-$peer.txt" &
      poller=$!
      peer_start "$peer" "" >/dev/null
      wait "$poller"
      startup="$(cat "$RUN/startup-$peer.txt")"
      pid="$(peer_pid "$peer")"
    fi
  fi
  if [ "$peer" = switchboard ]; then
    read -r url model key headers <<<"http://127.0.0.1:9000/v1 bench-model sk-bench-1234 -"
  else
    read -r url model key headers <<<"$(peer_env "$peer")"
  fi
  hdr=(-H "Authorization: Bearer $key")
  if [ "$headers" != "-" ]; then
    while IFS= read -r line; do [ -n "$line" ] && hdr+=(-H "$line"); done <"$headers"
  fi
  # warm-up: a few streams, so pools and buffers exist
  "$SSE_BENCH" --url "$url/chat/completions" --model "$model" -c 4 -z 2s "${hdr[@]}" >/dev/null 2>&1 || true
  sleep 1
  idle=$(rss_kb "$pid")
  # half the streams first, then all of them: the peaks' difference is what
  # the second half of the streams adds, without the fixed costs that any
  # load brings (caches filled, pools grown, the request log's batches)
  peak=$idle
  for n in "$HALF" "$STREAMS"; do
    "$SSE_BENCH" --url "$url/chat/completions" --model "$model" -c "$n" -z "$DURATION" "${hdr[@]}" \
      --json-out "$OUT/$peer-c$n.json" >/dev/null 2>"$OUT/$peer-c$n.err" &
    load=$!
    while kill -0 "$load" 2>/dev/null; do
      now=$(rss_kb "$pid"); [ "$now" -gt "$peak" ] && peak=$now
      sleep 0.1
    done
    wait "$load" || true
    [ "$n" = "$HALF" ] && peak_half=$peak
  done
  mv "$OUT/$peer-c$STREAMS.json" "$OUT/$peer.json" 2>/dev/null || true
  printf '{"startup_ms": %s, "idle_kb": %s, "peak_half_kb": %s, "peak_kb": %s, "disk_kb": %s}\n' \
    "$startup" "$idle" "$peak_half" "$peak" "$(footprint "$peer")" >"$OUT/$peer.meta.json"
  if [ "$peer" = switchboard ]; then stop_tree "$sb_pid"; sb_pid=""; else peer_stop "$peer"; fi
  stop_mock
done

python3 - "$OUT" "$STREAMS" $PEERS <<'PY'
import json, os, sys
out, streams, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [f"| peer | start-up ms | streams/s | TTFB p50 / p99 ms | first token p50 / p99 ms | total p50 / p99 ms | failed | idle / peak RSS MiB | per open stream KiB (over idle) | per open stream KiB (second half) | on disk MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
for peer in peers:
    try:
        d = json.load(open(os.path.join(out, f"{peer}.json")))
        m = json.load(open(os.path.join(out, f"{peer}.meta.json")))
    except (OSError, ValueError):
        rows.append(f"| {peer} | no result | | | | | | | | | |")
        continue
    per = (m["peak_kb"] - m["idle_kb"]) / streams
    half = streams // 2
    marginal = (m["peak_kb"] - m["peak_half_kb"]) / (streams - half)
    rows.append(f"| {peer} | {m['startup_ms']} | {d['rps']:.0f} | {d['ttfb_ms']['p50']:.2f} / {d['ttfb_ms']['p99']:.2f} | "
                f"{d.get('ttft_ms', {}).get('p50', float('nan')):.2f} / {d.get('ttft_ms', {}).get('p99', float('nan')):.2f} | "
                f"{d['total_ms']['p50']:.2f} / {d['total_ms']['p99']:.2f} | {d['errors']} of {d['ok'] + d['errors']} | "
                f"{m['idle_kb'] / 1024:.1f} / {m['peak_kb'] / 1024:.1f} | {per:.0f} | {marginal:.0f} | {m['disk_kb'] / 1024:.1f} |")
text = f"{streams} concurrent streams\n\n" + "\n".join(rows)
open(os.path.join(out, "summary.md"), "w").write(text + "\n")
print(text)
PY
echo "results: $OUT"
