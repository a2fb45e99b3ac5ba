#!/usr/bin/env bash
# Builds the hardened allocator for C programs: libhz.so with hz-core's
# `secure` feature (double free, interior/foreign pointer and realloc-of-freed
# aborts naming the pointer, checked free-list links, guard pages, shuffled
# carving; HZ_SECURE_FILL=1 fills freed blocks with 0xdf), installed as
#   ${CARGO_TARGET_DIR:-target}/release/libhz-secure.so
# next to the default libhz.so. It builds in its own target dir
# (.../secure) so it never replaces or invalidates the default build.
# Use: LD_PRELOAD=target/release/libhz-secure.so ./program
# Extra arguments go to cargo build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
"${CARGO:-cargo}" build --release -p hz-ffi --features secure \
    --target-dir "$target/secure" "$@"
mkdir -p "$target/release"
dest="$target/release/libhz-secure.so"
# Copy, then rename: a program being started with LD_PRELOAD=$dest never
# sees a half-written file.
tmp="$dest.tmp.$$"
cp "$target/secure/release/libhz.so" "$tmp"
mv -f "$tmp" "$dest"
echo "built $dest"
