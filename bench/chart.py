#!/usr/bin/env python3
"""Latency against load, one line per peer, as an SVG (no dependencies).

    bench/chart.py SESSION_DIR CONFIG OUT.svg

Reads SESSION_DIR/CONFIG/<peer>/round<N>/{c1,r500,r2000,c64}.json (oha's
JSON, as bench/run.sh leaves them), averages the rounds, and plots for each
peer its p50 and p99 latency at the load it achieved in each run: closed
loop at concurrency 1, open loop at 500 and 2,000 requests/s, closed loop
at concurrency 64. Both axes are logarithmic.
"""

import json
import math
import os
import sys

TESTS = ["c1", "r500", "r2000", "c64"]
COLOURS = {
    "direct": "#777777",
    "nginx": "#2b8a3e",
    "switchboard": "#1c7ed6",
    "litellm": "#e8590c",
    "portkey": "#9c36b5",
}


def stats(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    summary, percentiles = data["summary"], data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution") or {}
    duration = summary.get("total") or 1
    return {
        "rps": codes.get("200", 0) / duration,
        "p50": (percentiles.get("p50") or float("nan")) * 1000,
        "p99": (percentiles.get("p99") or float("nan")) * 1000,
    }


def points(peer_dir):
    rounds = [os.path.join(peer_dir, name) for name in sorted(os.listdir(peer_dir)) if name.startswith("round")]
    found = []
    for test in TESTS:
        runs = [s for s in (stats(os.path.join(r, test + ".json")) for r in rounds) if s and s["rps"] > 0]
        if runs:
            found.append({key: sum(run[key] for run in runs) / len(runs) for key in ("rps", "p50", "p99")})
    return sorted(found, key=lambda point: point["rps"])


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    session, config, out = sys.argv[1:]
    base = os.path.join(session, config)
    peers = {peer: points(os.path.join(base, peer)) for peer in sorted(os.listdir(base))}
    peers = {peer: found for peer, found in peers.items() if found}
    every = [point for found in peers.values() for point in found]
    if not every:
        sys.exit(f"no results under {base}")
    x_low, x_high = math.log10(min(p["rps"] for p in every) / 1.5), math.log10(max(p["rps"] for p in every) * 1.5)
    latencies = [p[key] for p in every for key in ("p50", "p99") if p[key] > 0]
    y_low, y_high = math.log10(min(latencies) / 1.5), math.log10(max(latencies) * 1.5)
    width, height, left, right, top, bottom = 760, 480, 70, 150, 40, 50

    def x(value):
        return left + (math.log10(value) - x_low) / (x_high - x_low) * (width - left - right)

    def y(value):
        return height - bottom - (math.log10(value) - y_low) / (y_high - y_low) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">Latency against load ({config}; solid p99, dashed p50; log scales)</text>',
    ]
    for exponent in range(math.floor(x_low), math.ceil(x_high) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if x_low <= math.log10(value) <= x_high:
                parts.append(f'<line x1="{x(value):.1f}" y1="{top}" x2="{x(value):.1f}" y2="{height - bottom}" stroke="#eee"/>')
                parts.append(f'<text x="{x(value):.1f}" y="{height - bottom + 16}" text-anchor="middle">{value:g}</text>')
    for exponent in range(math.floor(y_low), math.ceil(y_high) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if y_low <= math.log10(value) <= y_high:
                parts.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{width - right}" y2="{y(value):.1f}" stroke="#eee"/>')
                parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">requests per second achieved</text>')
    parts.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 {(top + height - bottom) / 2})" text-anchor="middle">latency, ms</text>')
    for index, (peer, found) in enumerate(peers.items()):
        colour = COLOURS.get(peer, "#000000")
        for key, dash in (("p99", ""), ("p50", ' stroke-dasharray="4 3"')):
            line = " ".join(f"{x(p['rps']):.1f},{y(p[key]):.1f}" for p in found if p[key] > 0)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for point in found:
            parts.append(f'<circle cx="{x(point["rps"]):.1f}" cy="{y(point["p99"]):.1f}" r="3" fill="{colour}"/>')
        legend_y = top + 10 + index * 20
        parts.append(f'<line x1="{width - right + 15}" y1="{legend_y}" x2="{width - right + 40}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{width - right + 46}" y="{legend_y + 4}">{peer}</text>')
    parts.append("</svg>")
    with open(out, "w") as handle:
        handle.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
