#!/usr/bin/env bash
# loom model checking of hz's concurrent protocols (hz-core/src/loom_models.rs
# and the loom tests in hz-core/src/inbox.rs). Under --cfg loom only sync.rs,
# inbox.rs and loom_models.rs are compiled; a separate target dir keeps the
# --cfg loom build from invalidating the normal one. Takes seconds (each
# model runs with a preemption bound of 2 or 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
RUSTFLAGS="--cfg loom" cargo test -p hz-core --lib --release loom "$@"
