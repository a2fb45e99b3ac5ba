#!/usr/bin/env bash
# The one test command (README and CI): installs what the tests need on a
# fresh Debian machine (only what is missing), then runs formatting, lints
# (default and `secure` features), the libhz.so build (both TLS variants)
# and libhz-secure.so, the whole test suite in release mode (the end-to-end
# tests include tests/secure.rs, under libhz-secure.so), hz-core's tests with
# `--features secure`, and the loom model checks (scripts/loom.sh). Run from
# anywhere; it works in the repository root. Prints the time it took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Each step says when it starts (seconds since the script began), so a slow
# CI run shows which step took the time.
step() { printf '\n=== [%dm%02ds] %s ===\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# Debian packages: the programs the end-to-end tests run under libhz.so,
# the C/C++ toolchain for the test programs, and the benchmark rivals.
packages=(
    gcc g++ make pkg-config python3 perl git sqlite3 redis-server redis-tools
    nodejs xz-utils zstd
    valgrind libmimalloc-dev libjemalloc-dev libgoogle-perftools-dev
)

# shellcheck source=scripts/common.sh
. scripts/common.sh

apt_install() {
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"; then
        echo "warning: could not install $* (tests needing them are skipped)" >&2
    fi
}

install_missing() {
    command -v apt-get >/dev/null 2>&1 || {
        echo "warning: no apt-get; not installing test dependencies" >&2
        return 0
    }
    local missing=() pkg
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    local updated=0
    if [ ${#missing[@]} -gt 0 ]; then
        step "apt-get install ${missing[*]}"
        as_root apt-get update -qq && updated=1
        apt_install "${missing[@]}"
    fi
    # python3's own test suite (tests/programs.rs runs a slice of it).
    if command -v python3 >/dev/null 2>&1 &&
        ! python3 -c 'import test.libregrtest' >/dev/null 2>&1; then
        local suite
        suite="libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite"
        [ $updated -eq 1 ] || as_root apt-get update -qq || true
        if apt-cache show "$suite" >/dev/null 2>&1; then
            step "apt-get install $suite"
            apt_install "$suite"
        fi
    fi
}

install_missing

step "rust components"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
rustc --version
cargo --version

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# hz-core's hardened build has code of its own (cfg(feature = "secure")).
step "cargo clippy -p hz-core --all-targets --features secure -- -D warnings"
cargo clippy -p hz-core --all-targets --features secure -- -D warnings

# The thread_local! fallback must build and pass the allocator tests too.
# It goes into its own target dir so it never replaces target/release/libhz.so.
step "libhz.so with dynamic TLS (fallback feature)"
dyn_target="${CARGO_TARGET_DIR:-$PWD/target}/dynamic-tls"
cargo build --release -p hz-ffi --no-default-features --features dynamic-tls \
    --target-dir "$dyn_target"
HZ_LIB="$dyn_target/release/libhz.so" cargo test --release -p hz-e2e --test api --test threads

step "cargo build --release -p hz-ffi"
cargo build --release -p hz-ffi

# The hardened libhz-secure.so (its own target dir): tests/secure.rs runs
# heap misuse and the API/thread tests under it.
step "scripts/build-secure.sh"
scripts/build-secure.sh

step "cargo test --workspace --release"
cargo test --workspace --release

# The floor allocator of scripts/bench-floor.sh (M24 in docs/PERFORMANCE.md):
# it must build without warnings and run the ring benchmark with threads and
# remote frees, every block sent freed by its receiver.
step "floor allocator (hz-bench/c/floor_alloc.c) under the ring benchmark"
floor=$(scripts/bench-floor.sh --build-only)
bm=$(ls "${CARGO_TARGET_DIR:-target}"/release/build/hz-bench-*/out/bench_matrix | head -n1)
out=$(LD_PRELOAD="$floor" "$bm" 4 90 16 131072 20000 400 20000 1)
echo "$out"
if ! [[ $out =~ sent=([0-9]+)\ recv=([0-9]+) ]] || [ "${BASH_REMATCH[1]}" != "${BASH_REMATCH[2]}" ] ||
    [ "${BASH_REMATCH[1]}" -eq 0 ]; then
    echo "floor allocator: the ring benchmark did not run through" >&2
    exit 1
fi

# (The long-running RSS tests, 12 s each in the run above, run 4 s each
# in this and the other reruns of hz-core's suite.)
step "cargo test -p hz-core --release --features secure"
HZ_LR_SECS=4 cargo test -p hz-core --release --features secure

# loom model checking of the concurrent protocols (its own target dir).
if [ -f scripts/loom.sh ]; then
    step "scripts/loom.sh"
    bash scripts/loom.sh
fi

# Kernels with 16 and 64 KiB pages, emulated (tests/c/libpageshim.c).
step "scripts/pages.sh"
HZ_LR_SECS=4 bash scripts/pages.sh

# aarch64: the cross-built library and tests under qemu-user (installs the
# cross toolchain, qemu-user and rustup's aarch64 library; says so and
# skips where it cannot).
step "scripts/cross.sh"
bash scripts/cross.sh

step "all tests passed ($(( SECONDS / 60 ))m $(( SECONDS % 60 ))s)"
