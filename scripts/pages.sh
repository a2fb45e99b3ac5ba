#!/usr/bin/env bash
# hz on kernels with 16 and 64 KiB pages (arm64, ppc64), emulated on this
# one: tests/c/libpageshim.c, preloaded, makes getauxval/sysconf report the
# larger page, aligns anonymous mappings to it, refuses a munmap, mprotect,
# madvise, mincore or mremap at an address not aligned to it, and rounds
# their lengths up to whole pages (so a 4 KiB purge discards a whole page,
# as the real kernel would). hz-core's whole test suite runs under it at
# each size, and the end-to-end C programs under libhz.so
# (tests/pages.rs, part of `cargo test`). Excluded at 64 KiB: two tests
# whose sparse write patterns are sized for 4 KiB pages (one byte a MiB;
# under the emulation the kernel still faults 4 KiB, while hz's density
# test reads whole 64 KiB pages, so it reads them dense, as it would on a
# real 64 KiB kernel, where each byte makes its whole page resident).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

shim_dir="${CARGO_TARGET_DIR:-$PWD/target}/pageshim"
mkdir -p "$shim_dir"
shim="$shim_dir/libpageshim.so"
cc -O2 -shared -fPIC -Wall -Wextra -Werror -o "$shim" tests/c/libpageshim.c

# hz-core's test binaries as `cargo test --workspace --release` builds them
# (scripts/test.sh has just run it, so nothing is compiled here): `cargo
# test -p hz-core` would build hz-core and its dependencies once more, with
# the feature set of that package alone (about 100 s on a fresh CI machine).
mapfile -t tests < <(cargo test --workspace --release --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and "/hz-core#" in m["package_id"] and m["profile"]["test"]):
        print(m["executable"])
')
[ ${#tests[@]} -gt 3 ] || { echo "pages.sh: hz-core's test binaries not found" >&2; exit 1; }

for page in 16384 65536; do
    printf '\n=== hz-core tests under %d-byte pages (tests/c/libpageshim.c) ===\n' "$page"
    skip=()
    if [ "$page" -gt 16384 ]; then
        skip=(--skip sparse_big_blocks_are_purged --skip calloc_clears_only_the_pages_a_run_may_hold)
    fi
    for t in "${tests[@]}"; do
        echo "     Running $(basename "$t") under $page-byte pages"
        # As cargo runs them: from the package's directory.
        (cd hz-core && env HZ_SHIM_PAGE=$page LD_PRELOAD="$shim" "$t" "${skip[@]}")
    done
done
