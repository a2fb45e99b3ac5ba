#!/usr/bin/env bash
# The floor of the LD_PRELOAD matrix: runs the T/R matrix with
# hz-bench/c/floor_alloc.c (a do-almost-nothing thread-safe malloc, see its
# header) in hz's place, interleaved with the rival allocators, so that the
# "hz ÷ fastest rival" column reads "floor ÷ fastest rival": how close to the
# fastest rival any allocator reached through the PLT can get in each cell,
# given the program's own work (docs/PERFORMANCE.md M24). In this run's
# tables "hz" is the floor library; the header names its path.
#
#   scripts/bench-floor.sh --full --reps 5 --out bench-out/floor
#   scripts/bench-floor.sh --threads 2 --remote 50,90 --reps 9
#
#   scripts/bench-floor.sh --build-only   # just build it; prints its path
#
# Arguments go to `hz-bench matrix --modes preload`; run scripts/bench.sh
# once first on a fresh machine (it installs the rivals).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target/floor"
lib="$(cd "$target/floor" && pwd)/libfloor.so"
"${CC:-cc}" -O2 -Wall -Wextra -Werror -fno-builtin -fPIC -shared -ftls-model=initial-exec \
    -o "$lib" hz-bench/c/floor_alloc.c
if [ "${1:-}" = "--build-only" ]; then
    echo "$lib"
    exit 0
fi
HZ_LIB="$lib" exec "${CARGO:-cargo}" run --release -q -p hz-bench -- matrix \
    --modes preload --allocators hz,mimalloc,jemalloc,tcmalloc,glibc "$@"
