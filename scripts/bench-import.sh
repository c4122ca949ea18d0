#!/usr/bin/env bash
# Column-major import benchmark (docs/benchmarks.md): seed 001's layout, a features ×
# samples f32 `.bin` (what `images.T.astype(np.float32).tofile()` writes) with int32
# labels, imported by `frugal data import raw`, against the same array as a Fortran-order
# `.npy` and as a C-order `.npy` (`frugal data import npy`), at two sizes, page cache
# dropped before each import. Prints time, GB/s and peak RSS, and checks that the raw and
# Fortran imports wrote identical shards.
# Usage: scripts/bench-import.sh DIR [SMALL_GB BIG_GB]   (needs python3 with numpy)
set -euo pipefail
dir=${1:?usage: scripts/bench-import.sh DIR [SMALL_GB BIG_GB]}
small=${2:-0.1}
big=${3:-1}
cd "$(dirname "$0")/.."
cargo build --release -q -p frugal-cli
frugal=$PWD/target/release/frugal
mkdir -p "$dir"

make_files() { # NAME GB: images.bin, fortran.npy, c.npy, labels.bin of ~GB of images
    python3 - "$dir/$1" "$2" <<'PY'
import os, shutil, sys
import numpy as np
out, gb = sys.argv[1], float(sys.argv[2])
features = 3072
n = int(gb * 1e9) // (features * 4)
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1)
step = 4096
# Column-major: element (sample i, feature f) at f*n + i.
cm = np.lib.format.open_memmap  # only for the .npy files below
binary = np.memmap(f"{out}/images.bin", dtype="<f4", mode="w+", shape=(features, n))
c = cm(f"{out}/c.npy", mode="w+", dtype="<f4", shape=(n, features))
for i in range(0, n, step):
    j = min(n, i + step)
    block = rng.standard_normal((j - i, features), dtype=np.float32)
    binary[:, i:j] = block.T
    c[i:j] = block
binary.flush(); c.flush()
del binary, c
with open(f"{out}/fortran.npy", "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": True, "shape": (n, features)})
    with open(f"{out}/images.bin", "rb") as src:
        shutil.copyfileobj(src, f, 16 << 20)
labels = (np.arange(n) % 10).astype("<i4")
labels.tofile(f"{out}/labels.bin")
np.save(f"{out}/labels.npy", labels)
print(f"{n} samples x {features} f32: {n * features * 4 / 1e9:.2f} GB")
PY
}

drop_cache() { # FILE...: evict from the page cache (no root needed)
    python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}

run() { # LABEL OUT ARGS...: one cold import under /usr/bin/time
    local label=$1 out=$2 log
    shift 2
    rm -rf "$out"
    drop_cache "${inputs[@]}"
    log=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$log" "$frugal" data import "$@" --out "$out" >/dev/null
    read -r secs kib <"$log"
    rm -f "$log"
    python3 -c "import sys; s, k, b = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); print(f'{sys.argv[4]:>22}: {s:6.1f} s, {b / s / 1e9:.2f} GB/s, peak RSS {k / 1024:.0f} MiB')" \
        "$secs" "$kib" "$(stat -c %s "$d/images.bin")" "$label"
}

echo "# $(date -u +%F) $(uname -r) $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1048576 " GiB"}')"
for size in "$small" "$big"; do
    d=$dir/in-$size
    make_files "in-$size" "$size"
    inputs=("$d/images.bin" "$d/fortran.npy" "$d/c.npy" "$d/labels.bin" "$d/labels.npy")
    run "raw column-major .bin" "$d/raw" raw --column "x=$d/images.bin:f32:3072:column-major" --column "y=$d/labels.bin:i32"
    run "Fortran-order .npy" "$d/fortran" npy --column "x=$d/fortran.npy" --column "y=$d/labels.npy"
    run "C-order .npy" "$d/c" npy --column "x=$d/c.npy" --column "y=$d/labels.npy"
    if cmp -s <(cat "$d"/raw/*.safetensors) <(cat "$d"/fortran/*.safetensors); then
        echo "raw and Fortran-order shards identical"
    else
        echo "raw and Fortran-order shards DIFFER" && exit 1
    fi
    rm -rf "$d"
done
