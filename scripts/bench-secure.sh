#!/usr/bin/env bash
# The hardened-mode benchmark (docs/SECURE.md): hz vs hz-secure and mimalloc
# vs mimalloc-secure on the quick matrix (T=1,4,16 × R=0,90 × lanes guard,
# main), in-process and under LD_PRELOAD, in one table with the ratios
# hardened ÷ default per cell and their geometric mean and worst cell.
#
#   scripts/bench-secure.sh                 # quick subset, 3 repetitions
#   scripts/bench-secure.sh --reps 5 --threads 4 --remote 90
#   scripts/bench-secure.sh --modes preload
#
# It builds (when missing or stale) libhz.so, libhz-secure.so
# (scripts/build-secure.sh) and a second hz-bench with `--features secure`
# in ${CARGO_TARGET_DIR:-target}/bench-secure, then runs
# `cargo run --release -p hz-bench -- secure "$@"`; see --help for the flags.
# Results: the table on stdout, secure.{md,csv,json} in bench-out/ (--out DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${CARGO:-cargo}" run --release -q -p hz-bench -- secure "$@"
