#!/usr/bin/env bash
# frugal against its PyTorch peers on one machine with an NVIDIA GPU (docs/benchmarks.md),
# alternating the two sides run by run so that both see the same machine state:
#   (a) the MNIST MLP (configs/mnist-mlp.toml) at batch 128 and 1024: samples/s, accuracy,
#       peak device memory, against bench/peers/mnist_mlp_torch.py;
#   (b) one training step of the particle network (hidden 128, 3 layers, k 20, batch 2) at
#       5,000 and 25,000 particles in f32 and bf16, against bench/peers/gns_torch.py;
#   (c) the memory point: the largest particle count within 12 GB with the memory
#       techniques off and on, and the peak at 50,000 particles against PyTorch's in f32.
# Prints a table of ratios with the GPU, driver and date; every run's JSON goes, one line
# each, to OUT_DIR/bench-gpu-STAMP.jsonl (its stdout and stderr to OUT_DIR/bench-gpu-STAMP/).
# A run that fails or times out prints its error line and the rest go on. No run starts
# past BENCH_GPU_BUDGET_S and each run's timeout is cut to what is left of it, so the whole
# stays within about 8 minutes however slow a side turns out.
#
# Usage: scripts/bench-gpu.sh [--dry-run]      (--dry-run: print the commands, run nothing)
# Environment (relative paths are from the repository root):
#   FRUGAL               the frugal binary, built with a GPU backend and without `autotune`,
#                        which re-tunes in every process (docs/gpu.md) (target/release/frugal)
#   MNIST                the folder with the four MNIST IDX files (data/mnist)
#   OUT_DIR              where results go (bench-gpu-results)
#   PYTHON               the interpreter with PyTorch for the peers (python3)
#   MNIST_EPOCHS_128     epochs at batch 128 (6, the configuration's)
#   MNIST_EPOCHS_1024    epochs at batch 1024 (2)
#   BENCH_GPU_BUDGET_S   seconds after which no further run starts; each run's timeout is
#                        cut to what is left (480)
#   FRUGAL_BENCH_DEVICE  cuda, or cpu to try this script without a GPU: tiny sizes on the CPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

dry_run=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry_run=1 ;;
        -h | --help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

FRUGAL=${FRUGAL:-target/release/frugal}
MNIST=${MNIST:-data/mnist}
OUT_DIR=${OUT_DIR:-bench-gpu-results}
PYTHON=${PYTHON:-python3}
device=${FRUGAL_BENCH_DEVICE:-cuda}
budget_s=${BENCH_GPU_BUDGET_S:-480}

case $device in
    cuda)
        frugal_device=gpu
        mnist_epochs_128=${MNIST_EPOCHS_128:-6}
        mnist_epochs_1024=${MNIST_EPOCHS_1024:-2}
        gnn_particles=(5000 25000)
        gnn_frugal_steps=10
        gnn_peer_steps=(--steps 20 --warmup 3)
        mem_budget=12GB
        mem_particles=5000,25000,50000
        mem_peer_particles=50000
        # Seconds each run may take: MNIST frugal, MNIST peer, GNN frugal, GNN peer, memory
        # frugal, memory peer. frugal's first GPU steps include compiling its kernels.
        t_mnist=(150 60) t_gnn=(90 60) t_mem=(180 90)
        ;;
    cpu)
        # Sizes that finish on two cores: a check of this script, not a measurement.
        frugal_device=cpu
        mnist_epochs_128=${MNIST_EPOCHS_128:-1}
        mnist_epochs_1024=${MNIST_EPOCHS_1024:-1}
        gnn_particles=(300 600)
        gnn_frugal_steps=2
        gnn_peer_steps=(--steps 2 --warmup 1)
        mem_budget=1GB
        mem_particles=300,600,1000
        mem_peer_particles=1000
        t_mnist=(300 300) t_gnn=(120 120) t_mem=(300 120)
        ;;
    *) echo "FRUGAL_BENCH_DEVICE must be cuda or cpu, not $device" >&2; exit 2 ;;
esac

stamp=$(date -u +%Y%m%d-%H%M%S)
results=$OUT_DIR/bench-gpu-$stamp.jsonl
raw=$OUT_DIR/bench-gpu-$stamp
deadline=$(($(date +%s) + budget_s))

if ((!dry_run)); then
    mkdir -p "$raw" || exit 1
    : >"$results" || exit 1
    [[ -x $FRUGAL ]] || echo "warning: FRUGAL=$FRUGAL is not an executable; its runs will fail" >&2
    [[ -e $MNIST/train-images-idx3-ubyte.gz || -e $MNIST/train-images-idx3-ubyte ]] ||
        echo "warning: no MNIST IDX files in MNIST=$MNIST; the MNIST runs will fail" >&2
fi

# One JSON line per run: the command's JSON output (pretty or not), or its error.
record() { # LABEL SIDE RC WALL_S LIMIT_S OUT ERR CMD...
    "$PYTHON" - "$@" >>"$results" <<'PY'
import json, shlex, sys
label, side, rc, wall, limit, out, err, *cmd = sys.argv[1:]
rc, text = int(rc), open(out, errors="replace").read()
try:
    result = json.loads(text)
except ValueError:
    # A line of its own, after whatever else the command printed.
    result = None
    for line in reversed(text.splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
if not isinstance(result, dict):
    result = None
error = None
if rc in (124, 137):
    error = f"timed out after {limit} s"
elif result is not None and result.get("error"):
    error = str(result["error"])
elif rc != 0 or result is None:
    lines = [l for l in (open(err, errors="replace").read() + "\n" + text).splitlines() if l.strip()]
    error = next((l.strip() for l in reversed(lines) if "rror" in l), lines[-1].strip() if lines else "")
    error = f"exit {rc}: {error}" if rc else f"no JSON in the output ({error})"
print(json.dumps({"label": label, "side": side, "rc": rc, "wall_s": round(float(wall), 2),
                  "timeout_s": int(limit), "cmd": shlex.join(cmd), "error": error, "result": result}))
PY
}

run() { # LABEL SIDE TIMEOUT_S CMD...
    local label=$1 side=$2 limit=$3
    shift 3
    if ((dry_run)); then
        local shown=() a
        for a in "$@"; do
            [[ $a =~ ^[A-Za-z0-9_./=:,+-]+$ ]] && shown+=("$a") || shown+=("$(printf '%q' "$a")")
        done
        printf '%-22s %-7s timeout %4ss  %s\n' "$label" "$side" "$limit" "${shown[*]}"
        return
    fi
    local left=$((deadline - $(date +%s)))
    if ((left < 20)); then
        printf '%-22s %-7s skipped: the %s s budget is spent\n' "$label" "$side" "$budget_s"
        "$PYTHON" -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "side": sys.argv[2], "error": "skipped: time budget spent", "result": None}))' \
            "$label" "$side" >>"$results"
        return
    fi
    ((limit > left)) && limit=$left
    printf '%-22s %-7s ' "$label" "$side"
    local out=$raw/$label.$side.out err=$raw/$label.$side.err began ended rc
    began=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$err" </dev/null
    rc=$?
    ended=$(date +%s.%N)
    local wall
    wall=$(awk -v a="$began" -v b="$ended" 'BEGIN { printf "%.2f", b - a }')
    record "$label" "$side" "$rc" "$wall" "$limit" "$out" "$err" "$@"
    tail -n 1 "$results" | "$PYTHON" -c '
import json, sys
r = json.loads(sys.stdin.read())
print("%7.1f s  %s" % (r["wall_s"], "ok" if r["error"] is None else "FAILED: " + r["error"]))'
}

# The machine, first: the table is read against it.
gpu_info=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
gpu_info=${gpu_info:-"no nvidia-smi answer"}
frugal_version=$("$FRUGAL" --version 2>/dev/null || echo "not runnable")
torch_info=$("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available" if torch.cuda.is_available() else "unavailable")' 2>/dev/null ||
    echo "PyTorch not importable")
today=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "bench-gpu $today  device $device  GPU: $gpu_info"
echo "frugal: $frugal_version ($FRUGAL)  PyTorch: $torch_info"
if ((!dry_run)); then
    "$PYTHON" -c 'import json,sys; print(json.dumps(dict(zip(["label", "date", "device", "gpu", "frugal", "torch", "host"], sys.argv[1:]))))' \
        machine "$today" "$device" "$gpu_info" "$frugal_version" "$torch_info" "$(uname -srm)" >>"$results"
fi

# (a) MNIST MLP.
for batch in 128 1024; do
    epochs=$mnist_epochs_128
    ((batch == 1024)) && epochs=$mnist_epochs_1024
    run "mnist-b$batch" frugal "${t_mnist[0]}" env FRUGAL_MNIST_DIR="$MNIST" "$FRUGAL" train configs/mnist-mlp.toml \
        --set compute.device="$frugal_device" --set compute.batch_size="$batch" --set train.epochs="$epochs" \
        --set output_dir="$raw/mnist-b$batch" --json
    # The imported dataset and the weights are 60 MB a run; the metrics and curves stay.
    ((dry_run)) || rm -rf "$raw/mnist-b$batch/data" "$raw/mnist-b$batch/checkpoint.bin" "$raw/mnist-b$batch/model.bpk"
    run "mnist-b$batch" pytorch "${t_mnist[1]}" "$PYTHON" bench/peers/mnist_mlp_torch.py --mnist "$MNIST" \
        --device "$device" --batch "$batch" --epochs "$epochs"
done

# (b) One step of the particle network, techniques off, in each precision.
for n in "${gnn_particles[@]}"; do
    for precision in f32 bf16; do
        run "gnn-$n-$precision" frugal "${t_gnn[0]}" "$FRUGAL" nbody scale --device "$frugal_device" --only off \
            --precision "$precision" --particles "$n" --batch 2 --steps "$gnn_frugal_steps" \
            --out "$raw/gnn-$n-$precision" --json
        run "gnn-$n-$precision" pytorch "${t_gnn[1]}" "$PYTHON" bench/peers/gns_torch.py --device "$device" \
            --particles "$n" --hidden 128 --layers 3 --k 20 --batch 2 --precision "$precision" "${gnn_peer_steps[@]}"
    done
done

# (c) The memory point.
run memory frugal "${t_mem[0]}" "$FRUGAL" nbody scale --device "$frugal_device" --budget "$mem_budget" \
    --particles "$mem_particles" --out "$raw/memory" --json
run memory pytorch "${t_mem[1]}" "$PYTHON" bench/peers/gns_torch.py --device "$device" \
    --particles "$mem_peer_particles" --precision f32 "${gnn_peer_steps[@]}"

((dry_run)) && exit 0

echo
"$PYTHON" - "$results" "$mem_budget" <<'PY'
import json, sys
path, budget = sys.argv[1:3]
runs = {}
machine = {}
for line in open(path):
    r = json.loads(line)
    if r["label"] == "machine":
        machine = r
    else:
        runs[(r["label"], r["side"])] = r


def res(label, side):
    r = runs.get((label, side))
    return (r or {}).get("result") if r and r.get("error") is None else None


def why(label, side):
    r = runs.get((label, side))
    return "not run" if r is None else (r.get("error") or "")


def num(v, fmt):
    return "-" if v is None else format(v, fmt)


def ratio(a, b):
    return a / b if a is not None and b else None


def mib(b):
    return None if b is None else b / 2**20


def point(result, particles, techniques="off"):
    """The nbody scale point for `particles` and `techniques`, or None."""
    for p in (result or {}).get("points", []):
        if p.get("particles") == particles and p.get("techniques") == techniques:
            return p
    return None


failed = []
print(f"GPU {machine.get('gpu', '?')}   {machine.get('date', '?')}")
print(f"frugal {machine.get('frugal', '?')}   PyTorch {machine.get('torch', '?')}")
print()
print("MNIST MLP (784-512-256-10), frugal train vs PyTorch, same schedule")
print(f"{'batch':>6} {'steps':>11} {'frugal s/s':>11} {'torch s/s':>11} {'frugal/torch':>12}"
      f" {'acc frugal':>10} {'acc torch':>9} {'dev MiB frugal':>14} {'dev MiB torch':>13}")
for label in sorted({l for l, _ in runs if l.startswith("mnist-b")}, key=lambda l: int(l[7:])):
    f, p = res(label, "frugal"), res(label, "pytorch")
    for side, r in (("frugal", f), ("pytorch", p)):
        if r is None:
            failed.append((label, side))
    fs, ps = (f or {}).get("samples_per_s"), (p or {}).get("samples_per_s")
    steps = f"{num((f or {}).get('steps'), 'd')}/{num((p or {}).get('steps'), 'd')}"
    print(f"{label[7:]:>6} {steps:>11} {num(fs, ',.0f'):>11} {num(ps, ',.0f'):>11}"
          f" {num(ratio(fs, ps), '.2f'):>12} {num((f or {}).get('test_accuracy'), '.4f'):>10}"
          f" {num((p or {}).get('test_accuracy'), '.4f'):>9} {num(mib((f or {}).get('peak_device_bytes')), ',.0f'):>14}"
          f" {num(mib((p or {}).get('peak_device_bytes')), ',.0f'):>13}")
print("  (steps: frugal's/PyTorch's optimizer steps; device MiB: each side's allocator peak)")
print()
print("Particle network, one training step (hidden 128, 3 layers, k 20, batch 2, techniques off)")
print(f"{'particles':>9} {'precision':>9} {'frugal ms':>10} {'torch ms':>9} {'torch/frugal':>12}"
      f" {'dev MiB frugal':>14} {'dev MiB torch':>13} {'torch kNN ms':>12}")
speed = {}
gnn = sorted({l for l, _ in runs if l.startswith("gnn-")}, key=lambda l: (int(l.split("-")[1]), l.split("-")[2] != "f32"))
for label in gnn:
    _, n, precision = label.split("-")
    n = int(n)
    f, p = res(label, "frugal"), res(label, "pytorch")
    for side, r in (("frugal", f), ("pytorch", p)):
        if r is None:
            failed.append((label, side))
    fp = point(f, n)
    if f is not None and fp is None:
        failed.append((label, "frugal"))
    fms = fp["step_seconds"] * 1e3 if fp and fp.get("step_seconds") is not None else None
    pms = (p or {}).get("step_ms_median")
    speed[(n, precision)] = (fms, pms)
    print(f"{n:>9} {precision:>9} {num(fms, ',.1f'):>10} {num(pms, ',.1f'):>9} {num(ratio(pms, fms), '.2f'):>12}"
          f" {num(mib((fp or {}).get('peak_device_bytes')), ',.0f'):>14}"
          f" {num(mib((p or {}).get('peak_device_bytes')), ',.0f'):>13} {num((p or {}).get('graph_ms_median'), ',.1f'):>12}")
for n in sorted({n for n, _ in speed}):
    (f32f, f32p), (bf16f, bf16p) = speed.get((n, "f32"), (None, None)), speed.get((n, "bf16"), (None, None))
    print(f"  bf16 speed-up over f32 at {n}: frugal {num(ratio(f32f, bf16f), '.2f')}×, PyTorch {num(ratio(f32p, bf16p), '.2f')}×")
print("  (the PyTorch step includes rebuilding its kNN graphs and features on the GPU; the kNN")
print("   search alone is the last column. torch/frugal > 1: frugal's step is the faster)")
print()
f, p = res("memory", "frugal"), res("memory", "pytorch")
for side, r in (("frugal", f), ("pytorch", p)):
    if r is None:
        failed.append(("memory", side))
print(f"Memory within {budget}: frugal's largest particle count "
      f"off {num((f or {}).get('max_particles_off'), 'd')}, on {num((f or {}).get('max_particles_on'), 'd')}"
      f" ({num((f or {}).get('ratio'), '.1f')}×)")
pn = (p or {}).get("particles")
if f:
    print(f"{'particles':>9} {'techniques':>10} {'how':>9} {'dev MiB frugal':>14} {'heap MiB frugal':>15} {'s/step':>7}")
    for q in f.get("points", []):
        print(f"{q.get('particles', '?'):>9} {q.get('techniques', '?'):>10} {q.get('how', '?'):>9}"
              f" {num(mib(q.get('peak_device_bytes')), ',.0f'):>14} {num(mib(q.get('peak_bytes')), ',.0f'):>15}"
              f" {num(q.get('step_seconds'), '.2f'):>7}")
if pn is not None:
    pd = p.get("peak_device_bytes")
    off, on = point(f, pn, "off"), point(f, pn, "on")
    print(f"  PyTorch at {pn} (f32, all kept, batch 2): {num(mib(pd), ',.0f')} MiB;"
          f" PyTorch/frugal off {num(ratio(pd, (off or {}).get('peak_device_bytes')), '.2f')},"
          f" PyTorch/frugal on {num(ratio(pd, (on or {}).get('peak_device_bytes')), '.2f')}")
if failed:
    print()
    print("runs without a result:")
    for label, side in dict.fromkeys(failed):
        print(f"  {label} {side}: {why(label, side) or 'no usable JSON (missing keys)'}")
PY
echo
echo "raw JSON: $results"
