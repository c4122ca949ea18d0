#!/usr/bin/env bash
# GA quality per evaluation against DEAP (docs/benchmarks.md), in one run: frugal-evolve's
# `quality` example and bench/peers/deap_evolve.py on the same problems, populations,
# generations and seeds; prints each side's median over the seeds and their ratio.
# Needs DEAP: python3 -m pip install deap==1.4.4
# Usage: scripts/bench-evolve.sh [OUT_DIR]   (keeps both JSON reports there)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cargo run --release -q -p frugal-evolve --example quality >"$out/frugal-evolve.json"
python3 bench/peers/deap_evolve.py >"$out/deap.json"
python3 - "$out/frugal-evolve.json" "$out/deap.json" <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{ours['implementation']} vs {peer['implementation']}, seeds {ours['seeds'][0]}..{ours['seeds'][-1]}")
print(f"{'problem':28} {'metric':13} {'evals':>6} {'frugal':>10} {'deap':>10} {'quality':>8} {'s/run':>6} {'deap s/run':>10}")
for name, o in ours["problems"].items():
    p = peer["problems"].get(name)
    hv = o["metric"] == "hypervolume"
    fmt = (lambda v: f"{v:.4f}") if hv else (lambda v: f"{v:.3g}")
    if p is None:
        print(f"{name:28} {o['metric']:13} {o['evaluations']:>6} {fmt(o['median']):>10} {'(none)':>10}")
        continue
    assert p["evaluations"] == o["evaluations"], (name, p["evaluations"], o["evaluations"])
    # quality > 1: frugal-evolve better (higher hypervolume, lower best value).
    q = o["median"] / p["median"] if hv else p["median"] / max(o["median"], 1e-300)
    print(f"{name:28} {o['metric']:13} {o['evaluations']:>6} {fmt(o['median']):>10} {fmt(p['median']):>10}"
          f" {q:>8.3f} {o['seconds_per_run']:>6.3f} {p['seconds_per_run']:>10.3f}")
PY
echo "reports: $out"
