//! The benchmark's own accounting, checked on tiny runs with System and
//! mimalloc (and hz): op counts, remote %, fallback %, and agreement between
//! the Rust (in-process) and C (LD_PRELOAD) versions of the matrix.

use hz_bench::allocs::Preload;
use hz_bench::matrix::{run_ring, Counts, RingConfig, RingResult};
use hz_bench::runner::{run_cell, Runner};
use std::alloc::GlobalAlloc;

fn cfg(threads: usize, remote_pct: u32, ring_cap: usize) -> RingConfig {
    RingConfig {
        threads,
        remote_pct,
        min: 16,
        max: 2048,
        iters_per_thread: 20_000,
        ws: 400,
        ring_cap,
        seed: 1,
        pin: false,
    }
}

/// The decisions of a run: its counts without the backlog, which depends on
/// how the threads were scheduled.
fn decisions(c: &Counts) -> Counts {
    Counts { backlog: 0, ..*c }
}

/// Identities every run must satisfy, whatever the scheduling.
fn check_identities(c: &Counts, cfg: &RingConfig) {
    let t = cfg.threads as u64;
    // Every loop iteration is exactly one alloc or one free decision.
    assert_eq!(
        c.allocs + c.local_frees + c.remote_sent,
        t * cfg.iters_per_thread,
        "{c:?}"
    );
    // Every remote free sent is received and freed once.
    assert_eq!(c.remote_sent, c.remote_recv, "{c:?}");
    // Every block allocated is freed exactly once (loop, ring or cleanup).
    assert_eq!(
        c.allocs,
        c.local_frees + c.remote_sent + c.cleanup_frees,
        "{c:?}"
    );
    // Ops: allocs + local frees + a remote free counted when sent and when freed.
    assert_eq!(c.ops(), c.allocs + c.local_frees + 2 * c.remote_sent);
    assert!(c.fallbacks <= c.local_frees);
    // The backlog counts blocks received: at most all of them, and at least
    // one drain's worth when any arrived.
    assert!(c.backlog <= c.remote_recv, "{c:?}");
    assert_eq!(c.backlog == 0, c.remote_recv == 0, "{c:?}");
    // Percentages as documented.
    let frees = (c.local_frees + c.remote_sent) as f64;
    assert!((c.remote_pct() - 100.0 * c.remote_sent as f64 / frees).abs() < 1e-9);
    let attempted = c.remote_sent + c.fallbacks;
    let want_fb = if attempted == 0 {
        0.0
    } else {
        100.0 * c.fallbacks as f64 / attempted as f64
    };
    assert!((c.fallback_pct() - want_fb).abs() < 1e-9);
    // Remote frees attempted (sent or fallen back) are R% of frees, within noise.
    let r = if cfg.threads > 1 {
        cfg.remote_pct as f64
    } else {
        0.0
    };
    let attempted_pct = 100.0 * attempted as f64 / frees;
    assert!(
        (attempted_pct - r).abs() < 2.0,
        "asked R={r}, attempted {attempted_pct:.2}% ({c:?})"
    );
}

fn run_checked<A: GlobalAlloc + Sync>(a: &A, cfg: &RingConfig) -> RingResult {
    let r = run_ring(a, cfg);
    check_identities(&r.counts, cfg);
    assert!(r.elapsed.as_nanos() > 0 && r.mops() > 0.0);
    r
}

#[test]
fn accounting_with_system_and_mimalloc() {
    for (t, r) in [(1, 0), (1, 90), (2, 0), (2, 50), (3, 90)] {
        let c = cfg(t, r, 1 << 14);
        let s = run_checked(&std::alloc::System, &c);
        let m = run_checked(&mimalloc::MiMalloc, &c);
        // A big ring never overflows here: remote % is then R itself.
        if s.counts.fallbacks == 0 && m.counts.fallbacks == 0 {
            assert_eq!(
                decisions(&s.counts),
                decisions(&m.counts),
                "same seed, no fallback: same decisions"
            );
            if t > 1 {
                assert!(
                    (s.counts.remote_pct() - r as f64).abs() < 2.0,
                    "{:?}",
                    s.counts
                );
            }
        }
        if t == 1 {
            assert_eq!(s.counts.remote_sent, 0, "one thread: no remote frees");
        }
    }
}

#[test]
fn tiny_ring_falls_back_and_counts_it() {
    // Two-entry rings and every free remote: some sends find the ring full.
    let c = cfg(4, 100, 2);
    let r = run_checked(&std::alloc::System, &c);
    // With R=100 every local free is a fallback.
    assert_eq!(r.counts.fallbacks, r.counts.local_frees);
}

#[test]
fn accounting_with_hz() {
    run_checked(&hz_core::HzAlloc, &cfg(2, 90, 1 << 14));
}

/// The C program with no LD_PRELOAD.
fn glibc() -> Runner {
    Runner::Preload(Preload {
        name: "glibc",
        lib: None,
        origin: String::new(),
    })
}

#[test]
fn c_program_agrees_with_rust() {
    let c = cfg(2, 50, 1 << 14);
    let glibc = glibc();
    let (from_c, rss) = run_cell(&glibc, &c).expect("C benchmark runs");
    check_identities(&from_c.counts, &c);
    assert!(rss > 0);
    let from_rust = run_ring(&std::alloc::System, &c);
    if from_c.counts.fallbacks == 0 && from_rust.counts.fallbacks == 0 {
        assert_eq!(
            decisions(&from_c.counts),
            decisions(&from_rust.counts),
            "same generator, same decisions"
        );
    }
}

#[test]
fn pinned_runs_keep_the_accounting_in_rust_and_in_c() {
    let c = RingConfig {
        pin: true,
        ..cfg(4, 90, 1 << 14)
    };
    run_checked(&hz_core::HzAlloc, &c);
    let glibc = glibc();
    let (from_c, _) = run_cell(&glibc, &c).expect("pinned C benchmark runs");
    check_identities(&from_c.counts, &c);
}
