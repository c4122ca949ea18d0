#!/usr/bin/env bash
# Dataset write and read benchmarks (docs/benchmarks.md):
#   - `frugal data gen synthetic` write rate against dd writing the same bytes;
#   - `frugal data bench` one epoch against a raw sequential read of the same files,
#     cold (page cache dropped) and warm, with peak RSS;
#   - the same on a dataset of BIG_GB (default 30) GB, generated here and deleted after.
# Usage: scripts/bench-store.sh DIR [BIG_GB]
set -euo pipefail
dir=${1:?usage: scripts/bench-store.sh DIR [BIG_GB]}
big_gb=${2:-30}
cd "$(dirname "$0")/.."
cargo build --release -q -p frugal-cli
frugal=$PWD/target/release/frugal
mkdir -p "$dir"
sample_bytes=$((3072 * 4 + 8))
fmt=$(mktemp)
trap 'rm -f "$fmt"' EXIT
cat >"$fmt" <<'PY'
import json, sys
d = json.load(sys.stdin)
if sys.argv[1] == "gen":
    print(f"gen  {d['bytes'] / 1e9:.2f} GB in {d['seconds']:.1f} s: {d['write_gbps']:.3f} GB/s")
else:
    temp = "cold" if d["cold"] else "warm"
    print(f"bench {d['order']:>10} {temp}: read {d['read_gbps']:.2f} GB/s, raw {d['raw_gbps']:.2f} GB/s,"
          f" ratio {d['ratio']:.3f}, {d['samples_per_s']:.0f} samples/s, peak RSS {d['peak_rss_bytes'] / 2**20:.0f} MiB")
PY

gen() { # NAME GB
    local out=$dir/$1 samples=$(($2 * 1000000000 / sample_bytes))
    rm -rf "$out"
    "$frugal" data gen synthetic --samples "$samples" --features 3072 --classes 10 --out "$out" --json | python3 "$fmt" gen
    local bytes
    bytes=$(python3 -c 'import json, sys; print(sum(s["bytes"] for s in json.load(open(sys.argv[1]))["shards"]))' "$out/manifest.json")
    # dd writes the same bytes as 64 MiB files, each synced, like the shards.
    local files=$(((bytes + 67108863) / 67108864)) start end
    start=$(date +%s.%N)
    for i in $(seq 1 "$files"); do
        dd if=/dev/zero of="$dir/dd.$i" bs=64M count=1 conv=fsync status=none
    done
    end=$(date +%s.%N)
    rm -f "$dir"/dd.*
    python3 -c "b=$files*67108864; t=$end-$start; print(f'dd   {b/1e9:.2f} GB in {t:.1f} s: {b/t/1e9:.3f} GB/s')"
}

bench() { # NAME ORDER [--cold]
    "$frugal" data bench "$dir/$1" --order "$2" ${3:-} --json | python3 "$fmt" bench
}

echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
echo "## 1 GB"
gen small 1
for order in window sequential shard; do
    for run in 1 2 3; do bench small "$order" --cold; done
    for run in 1 2 3; do bench small "$order"; done
done
echo "## ${big_gb} GB"
gen big "$big_gb"
for run in 1 2; do bench big window --cold; done
rm -rf "$dir/big"
