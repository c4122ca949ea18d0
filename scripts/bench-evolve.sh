#!/usr/bin/env bash
# GA quality per evaluation against DEAP (docs/benchmarks.md), in one run: frugal-evolve's
# `quality` example and bench/peers/deap_evolve.py on the same problems, populations,
# generations and seeds; prints each side's median and mean over the seeds and the ratio
# of the means. Needs DEAP: python3 -m pip install deap==1.4.4
# Usage: scripts/bench-evolve.sh [SEEDS [OUT_DIR]]   (seeds 1..SEEDS, 100 by default, about 6 min; the
# JSON reports stay in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
cargo run --release -q -p frugal-evolve --example quality "$seeds" >"$out/frugal-evolve.json"
python3 bench/peers/deap_evolve.py "$seeds" >"$out/deap.json"
python3 - "$out/frugal-evolve.json" "$out/deap.json" <<'PY'
import json, sys
ours, peer = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{ours['implementation']} vs {peer['implementation']}, seeds {ours['seeds'][0]}..{ours['seeds'][-1]}")
print(f"{'problem':28} {'metric':13} {'evals':>6} {'median':>19} {'mean':>19} {'quality':>8} {'s/run':>13}")
print(f"{'':28} {'':13} {'':6} {'frugal':>9} {'deap':>9} {'frugal':>9} {'deap':>9} {'':8} {'frugal':>6} {'deap':>6}")
for name, o in ours["problems"].items():
    p = peer["problems"].get(name)
    hv = o["metric"] == "hypervolume"
    fmt = (lambda v: f"{v:.4f}") if hv else (lambda v: f"{v:.3g}")
    if p is None:
        print(f"{name:28} {o['metric']:13} {o['evaluations']:>6} {fmt(o['median']):>9} {'-':>9}"
              f" {fmt(o['mean']):>9} {'-':>9} {'-':>8} {o['seconds_per_run']:>6.3f} {'-':>6}")
        continue
    assert p["evaluations"] == o["evaluations"], (name, p["evaluations"], o["evaluations"])
    # quality > 1: frugal-evolve better on average (higher hypervolume, lower best value).
    q = o["mean"] / p["mean"] if hv else p["mean"] / max(o["mean"], 1e-300)
    print(f"{name:28} {o['metric']:13} {o['evaluations']:>6} {fmt(o['median']):>9} {fmt(p['median']):>9}"
          f" {fmt(o['mean']):>9} {fmt(p['mean']):>9} {q:>8.3f} {o['seconds_per_run']:>6.3f} {p['seconds_per_run']:>6.3f}")
PY
echo "reports: $out"
