#!/usr/bin/env bash
# Seed 001's table (docs/benchmarks.md): training time per epoch against dataset size, for
# 3,072-feature samples (CIFAR-10's size) of the synthetic teacher task, streamed from
# disk. For each size: one epoch of configs/classifier-synthetic.toml's MLP (hidden
# 256, 128; 10 classes), its dataset generated first (not timed). Prints samples, dataset
# GB, seconds of training, samples/s and the training's peak RSS, then the least-squares
# slope (seconds per million samples) and the 10M-sample epoch it predicts.
# Usage: scripts/bench-epoch-scaling.sh DIR [SAMPLES...]   (default 50000 100000 500000 1000000)
set -euo pipefail
dir=${1:?usage: scripts/bench-epoch-scaling.sh DIR [SAMPLES...]}
shift
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(50000 100000 500000 1000000)
cd "$(dirname "$0")/.."
cargo build --release -q -p frugal-cli
frugal=$PWD/target/release/frugal
mkdir -p "$dir"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT

echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
printf '| samples | dataset | seconds | samples/s | peak RSS |\n|---|---|---|---|---|\n'
for n in "${sizes[@]}"; do
    out=$dir/n$n
    rm -rf "$out"
    "$frugal" train configs/classifier-synthetic.toml \
        --set output_dir="$out" --set data.samples="$n" --set data.test_samples=10000 \
        --set data.features=3072 --set data.teacher_hidden=64 --set model.classes=10 \
        --set 'model.hidden=[256, 128]' --set train.epochs=1 --set train.warmup_steps=0 \
        --set train.checkpoint_every=0 --json >"$out.json"
    python3 - "$out.json" "$out/data/synthetic-train" "$n" "$rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = json.load(open(f"{sys.argv[2]}/manifest.json"))
gb = sum(s["bytes"] for s in m["shards"]) / 1e9
n, t = int(sys.argv[3]), r["train_seconds"]
print(f"| {n:,} | {gb:.2f} GB | {t:.1f} | {r['samples_per_s']:,.0f} | {r['peak_rss_bytes'] / 2**20:.0f} MiB |")
open(sys.argv[4], "a").write(f"{n} {t}\n")
PY
    rm -rf "$out/data"
done
python3 - "$rows" <<'PY'
import sys
pts = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
n = len(pts)
mx = sum(p[0] for p in pts) / n
my = sum(p[1] for p in pts) / n
slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
icpt = my - slope * mx
worst = max(abs(y - (icpt + slope * x)) / y for x, y in pts)
print(f"slope {slope * 1e6:.1f} s per million samples, intercept {icpt:.1f} s, "
      f"largest deviation from the line {worst * 100:.1f} %; "
      f"10,000,000 samples (123 GB): {icpt + slope * 1e7:.0f} s an epoch")
PY
