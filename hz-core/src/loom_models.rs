//! loom models of hz's concurrent protocols (built only with `--cfg loom`).
