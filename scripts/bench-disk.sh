#!/usr/bin/env bash
# Checks `frugal probe --disk-bench` against dd on a file of the same size on the same
# filesystem, in one run:
#   dd cold   — buffered dd after dropping the file from the page cache (the same method);
#   dd direct — dd with O_DIRECT, 8 MiB requests, one at a time (no kernel readahead);
#   dd warm   — dd from the page cache: far above the cold figures if the cache was bypassed.
# Usage: scripts/bench-disk.sh [DIR] [SIZE_MIB]
set -euo pipefail
dir=${1:-.}
mib=${2:-2048}
frugal=${FRUGAL:-target/release/frugal}
[[ -x $frugal ]] || cargo build --release -q -p frugal-cli

file=$(mktemp "$dir/.bench-disk-dd.XXXXXX")
trap 'rm -f "$file"' EXIT
head -c $((mib << 20)) /dev/urandom >"$file"
sync "$file"

drop() { python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$file"; }
# dd prints "... copied, SECONDS s, RATE UNIT"; recompute GB/s from bytes and seconds.
rate() { dd if="$file" of=/dev/null bs=8M "$@" 2>&1 | awk '/copied/ {printf "%.3f", $1 / $(NF-3) / 1e9}'; }

frugal_gbps=$("$frugal" probe --json --path "$dir" --disk-bench --disk-bench-size "${mib}MiB" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["disk"]["bench"]["read_gbps"])')
drop
cold=$(rate)
direct=$(rate iflag=direct)
rate >/dev/null
warm=$(rate)
python3 - "$mib" "$frugal_gbps" "$cold" "$direct" "$warm" <<'PY'
import sys
mib, f, cold, direct, warm = sys.argv[1], *map(float, sys.argv[2:])
print(f"{mib} MiB: frugal {f:.2f} GB/s | dd cold {cold:.2f} (ratio {f/cold:.2f}) | "
      f"dd O_DIRECT {direct:.2f} | dd warm {warm:.2f}")
PY
