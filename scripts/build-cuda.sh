#!/usr/bin/env bash
# Builds `frugal` with the CUDA backend from package registries alone.
#
#   scripts/build-cuda.sh [CARGO BUILD ARGS...]   e.g. --features hdf5; release unless
#                                                 --release/--profile is given
#   scripts/build-cuda.sh --check [FEATURE ARGS...]
#                                                 resolve the same build without compiling
#                                                 and fail if a crate in it downloads at
#                                                 build time (CI runs this; offline once
#                                                 `cargo fetch` has run)
#
# Environment:
#   CUDARC_CUDA_VERSION  CUDA API the binary binds, no newer than the run machine's driver
#                        supports (nvidia-smi's "CUDA Version"): 13000 (the default) for
#                        13.0, driver 580 and later; 12080 for 12.8, driver 570; ...
#   CARGO_TARGET_DIR     where to build; default target/cuda, so the CPU build in target/
#                        keeps its own binary
#
# burn's `cuda` feature reaches cubecl-cuda, which always depends on cubecl-llvm, whose
# build script (tracel-llvm-bundler) downloads LLVM; no feature turns that off. cubecl-cuda
# can instead compile kernels as CUDA C++ through NVRTC at run time, so this builds against
# the exact cubecl-cuda that Cargo.lock pins, taken from the registry's .crate file (checked
# against the lockfile's checksum) and patched by scripts/cuda/cubecl-cuda-VERSION.patch to
# drop the LLVM backend. cudarc then opens libcuda and libnvrtc at run time.
#
# A [patch] rewrites the lockfile of the workspace it applies to, and the repository's
# Cargo.lock must stay as CI's --locked builds expect. Saving and restoring it around the
# build would still leave it rewritten for as long as the build runs, for any other cargo
# or editor working in this checkout, and for good if the script is killed. So cargo runs
# in a shadow workspace instead: a copy of Cargo.toml and Cargo.lock beside links to the
# rest of the checkout. Its lockfile starts from the repository's on every run, so every
# other crate stays at its locked version, which is checked below; the repository's
# Cargo.lock is never written.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
die() {
    printf 'build-cuda: %s\n' "$*" >&2
    exit 1
}
say() { printf '== %s\n' "$*" >&2; }

check_only=0
if [[ ${1-} == --check ]]; then
    check_only=1
    shift
fi

# cudarc accepts MAJOR0MINOR0 for the versions it knows and panics on anything else; the
# shape is checked here so a typo fails before anything is built.
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
[[ $CUDARC_CUDA_VERSION =~ ^1[0-9]0[0-9]0$ ]] ||
    die "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION: expected MAJOR0MINOR0, e.g. 13000 for CUDA 13.0"

for tool in cargo rustc patch tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

target_dir=${CARGO_TARGET_DIR:-$repo/target/cuda}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd -P)
export CARGO_TARGET_DIR=$target_dir
work=$target_dir/cuda-workspace
ws=$work/ws
mkdir -p "$ws"

# Two runs at once would extract over each other and share the shadow lockfile.
if command -v flock >/dev/null; then
    exec 9>"$work/.lock"
    flock 9
fi

# Every [[package]] of a lockfile as "name version source checksum", "-" where absent.
lock_packages() {
    awk '
        function flush() { if (n != "") print n, v, (s == "" ? "-" : s), (c == "" ? "-" : c); n = v = s = c = "" }
        /^\[\[package\]\]$/ { flush(); next }
        /^\[/               { flush(); next }
        /^name = /     { n = $3; gsub(/"/, "", n) }
        /^version = /  { v = $3; gsub(/"/, "", v) }
        /^source = /   { s = $3; gsub(/"/, "", s) }
        /^checksum = / { c = $3; gsub(/"/, "", c) }
        END { flush() }
    ' "$1"
}

lock=$repo/Cargo.lock

mapfile -t pinned < <(lock_packages "$lock" | awk '$1 == "cubecl-cuda"')
((${#pinned[@]} > 0)) || die "Cargo.lock has no cubecl-cuda: does frugal-cli's cuda feature still reach burn/cuda?"
((${#pinned[@]} == 1)) || die "Cargo.lock has ${#pinned[@]} versions of cubecl-cuda; the patch is for one"
read -r _ version source checksum <<<"${pinned[0]}"
[[ $source == registry+https://github.com/rust-lang/crates.io-index ]] ||
    die "Cargo.lock takes cubecl-cuda $version from $source, not crates.io"

patch_file=$repo/scripts/cuda/cubecl-cuda-$version.patch
if [[ ! -f $patch_file ]]; then
    written_for=$(cd "$repo/scripts/cuda" && ls cubecl-cuda-*.patch 2>/dev/null |
        sed 's/^cubecl-cuda-//; s/\.patch$//' | paste -sd ' ' || true)
    die "Cargo.lock pins cubecl-cuda $version, but scripts/cuda/ has a patch for ${written_for:-no version} only.
Port the patch to $version (remove cubecl-llvm from cubecl-cuda $version, diff against the
registry's source) and save it as scripts/cuda/cubecl-cuda-$version.patch."
fi

cargo_home=${CARGO_HOME:-$HOME/.cargo}
crate_file=
find_crate() {
    local f
    for f in "$cargo_home"/registry/cache/*/"cubecl-cuda-$version.crate"; do
        [[ -f $f ]] || continue
        if [[ $(sha256sum <"$f") == "$checksum  -" ]]; then
            crate_file=$f
            return 0
        fi
    done
    return 1
}
# Everything the lockfile names, so the shadow build below can run offline; cargo only
# goes to the network when something is missing.
if ! (cd "$repo" && cargo fetch --locked --offline --quiet) 2>/dev/null; then
    say "cargo fetch"
    (cd "$repo" && cargo fetch --locked) || die "cargo fetch failed"
fi
find_crate || die "no cubecl-cuda-$version.crate with the checksum in Cargo.lock under $cargo_home/registry/cache"

# Re-extracted only when the crate or the patch changes: cargo tracks a path dependency by
# its files' times, and a fresh copy would rebuild everything above it.
src=$work/cubecl-cuda-$version
stamp_file=$work/cubecl-cuda-$version.stamp
stamp="$checksum $(sha256sum <"$patch_file" | cut -d' ' -f1)"
if [[ ! -d $src || ! -f $stamp_file || $(<"$stamp_file") != "$stamp" ]]; then
    say "cubecl-cuda $version from $crate_file, patched with ${patch_file#"$repo"/}"
    extract=$(mktemp -d "$work/extract.XXXXXX")
    trap 'rm -rf "$extract"' EXIT
    tar -xzf "$crate_file" -C "$extract"
    patch -d "$extract/cubecl-cuda-$version" -p1 --forward --batch --no-backup-if-mismatch --silent \
        <"$patch_file" || die "${patch_file#"$repo"/} does not apply to the registry's cubecl-cuda $version"
    rm -rf "$src" "$stamp_file"
    mv "$extract/cubecl-cuda-$version" "$src"
    printf '%s\n' "$stamp" >"$stamp_file"
fi
[[ $src != *\'* ]] || die "the build directory $src contains a quote, which cargo's --config cannot carry"

# The shadow workspace: links are remade on every run so that entries added to or removed
# from the checkout are followed; .git is left out, as is whatever holds this build.
find "$ws" -mindepth 1 -maxdepth 1 -type l -delete
shopt -s nullglob dotglob
for entry in "$repo"/*; do
    name=${entry##*/}
    case $name in
    .git | target | Cargo.toml | Cargo.lock) continue ;;
    esac
    [[ $work == "$entry" || $work == "$entry"/* ]] && continue
    ln -s "$entry" "$ws/$name"
done
shopt -u nullglob dotglob
cmp -s "$repo/Cargo.toml" "$ws/Cargo.toml" || cp "$repo/Cargo.toml" "$ws/Cargo.toml"
cp "$lock" "$ws/Cargo.lock"

cargo_patched() {
    (cd "$ws" && cargo --offline --config "patch.crates-io.cubecl-cuda.path='$src'" "$@")
}

# The feature arguments are what decide the dependency graph; the check takes only those.
features=(--features frugal-cli/cuda)
build_args=()
other_args=()
profile_given=0
while (($#)); do
    case $1 in
    --features | -F)
        (($# >= 2)) || die "$1 needs a value"
        features+=("$1" "$2")
        build_args+=("$1" "$2")
        shift
        ;;
    --features=* | -F?* | --all-features | --no-default-features)
        features+=("$1")
        build_args+=("$1")
        ;;
    *)
        case $1 in --release | -r | --profile | --profile=*) profile_given=1 ;; esac
        build_args+=("$1")
        other_args+=("$1")
        ;;
    esac
    shift
done
((check_only && ${#other_args[@]})) && die "--check takes feature arguments only, not: ${other_args[*]}"

host=$(rustc -vV | sed -n 's/^host: //p')
say "resolving frugal-cli ${features[*]} for $host with the patched cubecl-cuda"
tree=$(cargo_patched tree --quiet -p frugal-cli "${features[@]}" --target "$host" -e normal,build \
    --prefix none --format '{p}') || die "cargo tree failed"
mapfile -t packages < <(awk '{ print $1 "@" substr($2, 2) }' <<<"$tree" | sort -u)

# Crates whose builds download, or need what no registry carries: the LLVM of cubecl-cuda's
# other backend (bundled by tracel-llvm-bundler, or a system one for llvm-sys), and other
# prebuilt libraries that build scripts fetch.
downloaders=(tracel-llvm-bundler cubecl-llvm pliron-llvm llvm-sys ort-sys onnxruntime-sys
    torch-sys tensorflow-sys openblas-build intel-mkl-src skia-bindings v8)
# Network clients: linked into a build script or run as a proc macro, any of them can download.
net_clients=(ureq reqwest curl curl-sys attohttpc minreq isahc hyper ocipkg)

failures=()
for p in "${packages[@]}"; do
    name=${p%@*}
    for d in "${downloaders[@]}"; do
        [[ $name == "$d" ]] && failures+=("$p: its build downloads or needs a library from outside the registries")
    done
    for c in "${net_clients[@]}"; do
        [[ $name == "$c" ]] || continue
        users=$(cargo_patched tree --quiet -i "$p" -p frugal-cli "${features[@]}" --target "$host" \
            -e normal,build --charset ascii | head -n 12) || true
        if grep -q -e '\[build-dependencies\]' -e '(proc-macro)' <<<"$users"; then
            failures+=("$p: a network client that runs at build time:"$'\n'"$users")
        fi
    done
done

patched_line=$(grep -m1 '^cubecl-cuda v' <<<"$tree" || true)
[[ $patched_line == *"($src)"* ]] ||
    failures+=("the build does not use the patched cubecl-cuda (${patched_line:-none in the tree})")

# The shadow lockfile may differ only in where cubecl-cuda comes from: a crate added or moved
# to another version would not be what Cargo.lock pins.
locked_set=$(lock_packages "$lock" | awk '{ print $1 "@" $2 }' | sort -u)
shadow_set=$(lock_packages "$ws/Cargo.lock" | awk '{ print $1 "@" $2 }' | sort -u)
added=$(comm -13 <(printf '%s\n' "$locked_set") <(printf '%s\n' "$shadow_set"))
[[ -z $added ]] || failures+=("crates not in Cargo.lock at these versions: $(paste -sd ' ' <<<"$added")")

printf '%s\n' "$patched_line"
printf '%s crates in the build (normal and build dependencies, %s)\n' "${#packages[@]}" "$host"
if ((${#failures[@]})); then
    printf 'FAIL: %s\n' "${failures[@]}" >&2
    exit 1
fi
printf 'ok: no crate in the build downloads at build time; every crate is at its Cargo.lock version\n'
((check_only)) && exit 0

build=(build -p frugal-cli --bin frugal --features frugal-cli/cuda "${build_args[@]}")
((profile_given)) || build+=(--release)
say "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION cargo ${build[*]}"
cargo_patched "${build[@]}"
if ((profile_given)); then
    say "built under $target_dir"
else
    say "built $target_dir/release/frugal"
fi
