#!/usr/bin/env bash
# The benchmark command (README): on a fresh Debian machine installs the rival
# allocators that are missing (mimalloc, jemalloc, tcmalloc) and a C compiler,
# builds the release libhz.so, and runs the T/R matrix:
#
#   scripts/bench.sh                      # quick matrix (< 3 min on 2 cores)
#   scripts/bench.sh --full               # T=1,2,4,8,16 × R=0,50,90 × 3 lanes
#   scripts/bench.sh --threads 4,16 --remote 90 --lanes main --reps 5
#   BENCH=all scripts/bench.sh            # matrix, then the workloads
#   BENCH=programs scripts/bench.sh       # python3, sqlite3, perl, gcc, redis
#                                         # under each allocator (installs them)
#
# Arguments go to `cargo run --release -p hz-bench -- matrix`; see --help.
# Results: tables on stdout, CSV/JSON/markdown/SVG in bench-out/ (--out DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/common.sh
. scripts/common.sh

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# The newest Debian package whose name matches REGEX (names change between
# releases: libmimalloc2.0 on bookworm), else FALLBACK.
pkg_named() {
    local found
    found=$(apt-cache search --names-only "$1" 2>/dev/null | awk '{print $1}' | grep -v -- '-dev$\|-dbg$' | sort -V | tail -n1)
    echo "${found:-$2}"
}

have_lib() { compgen -G "/usr/lib/*-linux-gnu/$1" >/dev/null || compgen -G "/usr/lib/$1" >/dev/null; }

install_rivals() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "note: no apt-get; rivals that are not installed are skipped" >&2
        return 0
    fi
    local need=0
    have_lib 'libmimalloc.so*' || need=1
    have_lib 'libjemalloc.so.2' || need=1
    have_lib 'libtcmalloc*.so.4' || need=1
    command -v cc >/dev/null 2>&1 || need=1
    command -v c++ >/dev/null 2>&1 || need=1
    [ "$need" -eq 1 ] || return 0
    echo "installing the rival allocators (apt-get) ..." >&2
    as_root apt-get update -qq || true
    local pkgs=() p
    have_lib 'libmimalloc.so*' || pkgs+=("$(pkg_named '^libmimalloc[0-9][0-9.]*$' libmimalloc2.0)")
    have_lib 'libjemalloc.so.2' || pkgs+=("$(pkg_named '^libjemalloc[0-9]+$' libjemalloc2)")
    have_lib 'libtcmalloc*.so.4' || pkgs+=("$(pkg_named '^libtcmalloc-minimal[0-9]+$' libtcmalloc-minimal4)")
    command -v cc >/dev/null 2>&1 || pkgs+=(gcc libc6-dev)
    # hz-bench's C++ workload (cxx-collections) needs a C++ compiler too.
    command -v c++ >/dev/null 2>&1 || pkgs+=(g++)
    for p in "${pkgs[@]}"; do
        installed "$p" && continue
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" ||
            echo "warning: could not install $p (that rival is skipped)" >&2
    done
}

# The real programs of `hz-bench programs` (only for that benchmark).
install_programs() {
    command -v apt-get >/dev/null 2>&1 || return 0
    local pkgs=() p
    for p in python3 sqlite3 perl gcc redis-server redis-tools; do
        installed "$p" || pkgs+=("$p")
    done
    [ ${#pkgs[@]} -gt 0 ] || return 0
    echo "installing ${pkgs[*]} (apt-get) ..." >&2
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" ||
        echo "warning: could not install ${pkgs[*]} (missing programs are skipped)" >&2
}

install_rivals
[ "${BENCH:-matrix}" != programs ] || install_programs
echo "building libhz.so (cargo build --release -p hz-ffi) ..." >&2
cargo build --release -q -p hz-ffi
exec cargo run --release -q -p hz-bench -- "${BENCH:-matrix}" "$@"
