#!/usr/bin/env bash
# Operator rollouts, frugal against its PyTorch peer (bench/peers/operator_torch.py) on
# the same machine in the same run: `frugal bench` over precision × batch, then the peer
# on the same operator (architecture, dt, grid, steps, recording) for every row that ran.
# Prints the frugal table, the peer's rows and the throughput ratio frugal / PyTorch.
# Usage: scripts/bench-operator.sh CONFIG OUT_DIR
#   env: PRECISIONS (f32,bf16), BATCHES (1,2,4), REPEATS (3), DEVICE (cpu), STEPS (the
#        config's), THREADS (all cores), PYTHON (python3 with torch), FRUGAL (a built
#        binary; default: build target/release/frugal)
set -euo pipefail
config=${1:?usage: scripts/bench-operator.sh CONFIG OUT_DIR}
out=${2:?usage: scripts/bench-operator.sh CONFIG OUT_DIR}
precisions=${PRECISIONS:-f32,bf16}
batches=${BATCHES:-1,2,4}
repeats=${REPEATS:-3}
device=${DEVICE:-cpu}
python=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}
cd "$(dirname "$0")/.."
if [ -z "${FRUGAL:-}" ]; then
    cargo build --release -q -p frugal-cli
    FRUGAL=$PWD/target/release/frugal
fi
mkdir -p "$out"
steps=()
[ -n "${STEPS:-}" ] && steps=(--steps "$STEPS")
echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
"$FRUGAL" bench "$config" --set compute.threads="$threads" \
    --matrix precision="$precisions" --matrix batch="$batches" --matrix device="$device" \
    --repeats "$repeats" "${steps[@]}" --out "$out" >"$out/frugal.txt"
cat "$out/frugal.txt"
torch_device=$device
[ "$device" = gpu ] && torch_device=cuda
: >"$out/torch.jsonl"
# One peer run per frugal row that ran, with the bench's operator and settings.
"$python" - "$out/bench.json" "$config" <<'PY' >"$out/peer-args.txt"
import json, sys
r = json.load(open(sys.argv[1]))
a = r["architecture"]
import tomllib
c = tomllib.load(open(sys.argv[2], "rb"))
ro = c["rollout"]
for row in r["rows"]:
    if row["status"] != "ok":
        continue
    cfg = row["config"]
    print(" ".join(str(x) for x in [
        "--layers", a["layers"], "--channels", a["channels"], "--kernel", a["kernel"],
        "--norm", a["norm"], "--activation", a["activation"], "--residual", int(a["residual"]),
        "--dt", a["dt"], "--height", ro.get("height", 128), "--width", ro.get("width", 128),
        "--fields", ro.get("fields", 3), "--steps", r["steps"],
        "--record-every", ro.get("record_every", 10), "--storage", ro.get("storage", "f16"),
        "--batch", cfg["batch"], "--precision", cfg["precision"], "--repeats", r["repeats"]]))
PY
while read -r line; do
    # shellcheck disable=SC2086
    "$python" bench/peers/operator_torch.py $line --device "$torch_device" --threads "$threads" \
        >>"$out/torch.jsonl" || echo '{"error": "failed"}' >>"$out/torch.jsonl"
done <"$out/peer-args.txt"
"$python" - "$out/bench.json" "$out/torch.jsonl" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["status"] == "ok"]
peers = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
print()
print("| configuration | frugal (steps/s) | PyTorch (steps/s) | frugal / PyTorch | PyTorch time (s) |")
print("|---|---|---|---|---|")
for r, p in zip(rows, peers):
    c = r["config"]
    name = f'{c["precision"]} batch={c["batch"]} {c["device"]}'
    if "throughput" not in p:
        print(f'| {name} | {r["throughput"]:.1f} | {p.get("error")} | - | - |')
        continue
    print(f'| {name} | {r["throughput"]:.1f} | {p["throughput"]:.1f} | {r["throughput"] / p["throughput"]:.2f}× | {p["time_mean_s"]:.3f} ± {p["time_sd_s"]:.3f} |')
print(f'PyTorch {peers[0].get("torch") if peers else "?"}, {peers[0].get("threads") if peers else "?"} threads')
PY
