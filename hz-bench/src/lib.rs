//! hz-bench: the T/R matrix and the workloads that compare hz with mimalloc,
//! jemalloc, tcmalloc and glibc, in-process (generic over `GlobalAlloc`) and
//! under LD_PRELOAD (C programs in `c/`). See docs/BENCHMARKS.md.
//!
//! Layers: `rng` and `spsc` (the benchmark's own machinery, which never calls
//! the allocator under test), `matrix` and `workloads` (the measured code),
//! `allocs` and `runner` (who runs a measurement, in a child process so peak
//! RSS is per cell), `report` and `chart` (medians, ratios, tables, SVG),
//! `suite` (command line and run plan), `machine` (what the header says),
//! `programs` (real programs under LD_PRELOAD), `floor` (a measuring-stick
//! global allocator for the in-process workloads),
//! `secure` (hardened builds against default builds, two binaries).

pub mod allocs;
pub mod chart;
pub mod floor;
pub mod machine;
pub mod matrix;
pub mod programs;
pub mod report;
pub mod rng;
pub mod runner;
pub mod secure;
pub mod spsc;
pub mod suite;
pub mod workloads;
