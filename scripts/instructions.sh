#!/usr/bin/env bash
# Instructions per single-thread malloc+free pair, counted by callgrind
# (exact and repeatable, unlike time on a shared machine): issue 7's fourth
# target, "at most mimalloc's". Sizes 16..1024 B cycling, one live block per
# size kept, 100 000 warm-up pairs; each probe runs N = 1 000 000 and
# 2 000 000 pairs and the difference of the two counts / 1 000 000 is the
# cost of one loop iteration, process start and exit cancelled out.
#
#   scripts/instructions.sh            # table on stdout
#   scripts/instructions.sh --secure   # and the hardened builds' table (hz-core
#                                      # and the mimalloc crate with `secure`,
#                                      # libhz-secure.so), about 30 s more
#
# In-process (hz-bench/examples/probe.rs): hz through `GlobalAlloc`
# (HzAlloc) and through hz_core::malloc/free, the mimalloc crate through
# `GlobalAlloc` and through mi_malloc/mi_free, and Rust's System (glibc).
# Under LD_PRELOAD (hz-bench/c/pairs.c, malloc/free through the PLT):
# libhz.so, and Debian's mimalloc, jemalloc and tcmalloc where installed
# (scripts/bench.sh installs them), and glibc; and the same probe in C++
# (hz-bench/c/bench_cxx.cc `pairs`: operator new and sized operator delete)
# under the same libraries, for the C++ operators they export (libhz.so's
# since E139; glibc's row is libstdc++'s operators). The figures include the
# loop's own instructions (size arithmetic, the write, the loop counter; in
# C also the two PLT stubs), the same for every allocator of a group, so
# rows compare within a group. Takes about 15 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secure=0
case "${1:-}" in
    --secure) secure=1 ;;
    "") ;;
    *) echo "usage: scripts/instructions.sh [--secure]" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$PWD/target}"
"${CARGO:-cargo}" build --release -q -p hz-ffi -p hz-bench --example probe
probe="$target/release/examples/probe"
pairs="$("$probe" --c-pairs)"
cxx_pairs="$("$probe" --cxx-pairs)"
hz="$target/release/libhz.so"
lib=/usr/lib/x86_64-linux-gnu
[ -d "$lib" ] || lib=/usr/lib/aarch64-linux-gnu

# Instructions callgrind counted for one run of "$@" (LD_PRELOAD from env).
count() {
    local out
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null) || {
        echo "callgrind failed for: $*" >&2
        return 1
    }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out" | tail -1
}
# Instructions per iteration: (count at 2 M − count at 1 M) / 1 M.
per_pair() {
    local a b
    a=$(count "$@" 1000000) && b=$(count "$@" 2000000) || return 1
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'
}

echo "| group | allocator | instructions per malloc+free iteration | ÷ mimalloc |"
echo "|---|---|--:|--:|"
declare -A ir
for m in hz hz-c mimalloc mi-c system; do
    ir[$m]=$(per_pair "$probe" "$m")
done
row() { awk -v g="$1" -v n="$2" -v x="$3" -v m="$4" \
    'BEGIN { printf "| %s | %s | %s | %.2f |\n", g, n, x, x / m }'; }
row in-process "hz_core::HzAlloc (GlobalAlloc)" "${ir[hz]}" "${ir[mimalloc]}"
row in-process "mimalloc::MiMalloc (GlobalAlloc)" "${ir[mimalloc]}" "${ir[mimalloc]}"
row in-process "hz_core::malloc / free" "${ir[hz-c]}" "${ir[mi-c]}"
row in-process "mi_malloc / mi_free" "${ir[mi-c]}" "${ir[mi-c]}"
row in-process "std::alloc::System" "${ir[system]}" "${ir[mimalloc]}"
# Each library measured once: the table's rows, the mimalloc row's figure
# as the divisor, and libhz.so's again in the hardened table.
# The libraries installed here, in table order.
libs=()
for l in "$hz" "$lib/libmimalloc.so.2" "$lib/libjemalloc.so.2" "$lib/libtcmalloc_minimal.so.4" glibc; do
    [ "$l" = glibc ] || [ -e "$l" ] && libs+=("$l")
done
# measure ARRAY PROG [ARG]: ARRAY[lib] = per_pair of PROG under each library.
measure() {
    local -n into=$1
    local l
    shift
    for l in "${libs[@]}"; do
        if [ "$l" = glibc ]; then
            into[$l]=$(per_pair "$@")
        else
            into[$l]=$(LD_PRELOAD="$l" per_pair "$@")
        fi
    done
}
# rows GROUP ARRAY GLIBC-NAME: one row per library, ÷ the mimalloc row.
rows() {
    local -n of=$2
    local m="${of[$lib/libmimalloc.so.2]:-}" l name
    for l in "${libs[@]}"; do
        name="$(basename "$l")"
        [ "$l" = glibc ] && name="$3"
        if [ -n "$m" ]; then
            row "$1" "$name" "${of[$l]}" "$m"
        else
            echo "| $1 | $name | ${of[$l]} | — |"
        fi
    done
}
declare -A ld cx
measure ld "$pairs"
rows LD_PRELOAD ld glibc
# The C++ probe under the same libraries.
measure cx "$cxx_pairs" pairs
rows "C++ new/delete, LD_PRELOAD" cx "glibc (libstdc++'s operators)"

[ "$secure" -eq 1 ] || exit 0

# The hardened builds: the same probes, hz-core and the mimalloc crate with
# their `secure` features (one binary, its own target dir, as hz-bench
# secure does), and libhz-secure.so under LD_PRELOAD.
"${CARGO:-cargo}" build --release -q -p hz-bench --features secure --example probe \
    --target-dir "$target/bench-secure"
scripts/build-secure.sh -q >/dev/null
sprobe="$target/bench-secure/release/examples/probe"
declare -A sir
for m in hz hz-c mimalloc mi-c; do
    sir[$m]=$(per_pair "$sprobe" "$m")
done
sir[ld]=$(LD_PRELOAD="$target/release/libhz-secure.so" per_pair "$pairs")
echo
echo "| hardened build | default | secure | secure ÷ default |"
echo "|---|--:|--:|--:|"
srow() { awk -v n="$1" -v d="$2" -v x="$3" \
    'BEGIN { printf "| %s | %s | %s | %.2f |\n", n, d, x, x / d }'; }
srow "hz_core::HzAlloc (GlobalAlloc)" "${ir[hz]}" "${sir[hz]}"
srow "hz_core::malloc / free" "${ir[hz-c]}" "${sir[hz-c]}"
srow "libhz.so / libhz-secure.so (LD_PRELOAD)" "${ld[$hz]}" "${sir[ld]}"
srow "mimalloc::MiMalloc (GlobalAlloc)" "${ir[mimalloc]}" "${sir[mimalloc]}"
srow "mi_malloc / mi_free" "${ir[mi-c]}" "${sir[mi-c]}"
