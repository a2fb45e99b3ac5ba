//! Long-running workloads whose memory must stay bounded:
//!
//! * `producer_consumer`: one thread allocates (mostly small blocks, some
//!   medium, a few large), another frees everything it receives through a
//!   channel — every free is remote. RSS must stay flat: after a warm-up,
//!   no sample may exceed the warm-up peak by more than a margin.
//! * `thread_churn`: short-lived threads (up to 6 at a time) allocate,
//!   free some of their blocks, pass the rest to a long-lived thread and
//!   exit while it still frees them (into their abandoned heaps, which the
//!   next threads adopt). RSS stays bounded and heaps are reused: the
//!   number of heaps ever created stays near the number of threads alive
//!   at once, not the number of threads started (`thread_churn_reuses_heaps`).
//!
//! Every block carries a pattern checked before it is freed. Each test runs
//! in a child process (`current_exe() <name> --exact`, `HZ_LR_CHILD=<name>`)
//! so RSS (`/proc/self/statm`) is the workload's alone.
//!
//! CI runs each for ~12 s, one after another (`HZ_LR_SECS=4` in
//! `scripts/test.sh`'s reruns under other builds and page sizes). Soak:
//! `HZ_SOAK_SECS=3600
//! cargo test -p hz-core --release --test long_running -- --nocapture`
//! runs each for that many seconds (for hours, e.g. `HZ_SOAK_SECS=28800`
//! under `nohup`), printing an RSS line every few seconds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "reliability/child.rs"]
mod child;
use child::{mib, rss, Rng, MIB};

const CHILD: &str = "HZ_LR_CHILD";

/// The children run one at a time. Each is a CPU-bound workload whose RSS
/// depends on the freeing thread keeping up; three at once on a 2-core
/// machine starved one another (`thread_churn` once peaked at 224 MiB
/// after a 138 MiB warm-up in `scripts/test.sh`; alone it stays within
/// ±15 MiB of its warm-up).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn in_child(name: &str) -> bool {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    child::in_child(CHILD, name, &[], &[])
}
const CI_SECS: u64 = 12;

fn secs() -> u64 {
    ["HZ_SOAK_SECS", "HZ_LR_SECS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(CI_SECS)
}

/// Mostly small, some medium, a few large.
fn size(rng: &mut Rng) -> usize {
    match rng.below(1000) {
        0..=959 => 1 + rng.below(2048) as usize,
        960..=997 => 2048 + rng.below(126 << 10) as usize,
        _ => (256 << 10) + rng.below(768 << 10) as usize,
    }
}

/// A live block: its address, size and tag; the tag is written at both
/// ends (and in between for small blocks).
#[derive(Clone, Copy)]
struct Blk(usize, usize, u64);

fn alloc(rng: &mut Rng, tag: u64) -> Blk {
    let n = size(rng).max(16);
    let p = hz_core::malloc(n);
    assert!(!p.is_null(), "malloc({n}) failed");
    let b = Blk(p as usize, n, tag);
    // SAFETY: p has n >= 16 bytes, 16-aligned.
    unsafe {
        if n <= 256 {
            std::ptr::write_bytes(p, tag as u8, n);
        }
        *(p as *mut u64) = tag;
        *((p as usize + n - 8) as *mut [u8; 8]) = tag.to_le_bytes();
    }
    b
}

fn check_free(b: Blk) {
    let Blk(p, n, tag) = b;
    // SAFETY: a live block of n bytes that we own.
    unsafe {
        assert_eq!(*(p as *const u64), tag, "block {p:#x} head overwritten");
        assert_eq!(
            *((p + n - 8) as *const [u8; 8]),
            tag.to_le_bytes(),
            "block {p:#x} tail overwritten"
        );
        if n <= 256 {
            for i in 8..n - 8 {
                assert_eq!(*((p + i) as *const u8), tag as u8, "block {p:#x} byte {i}");
            }
        }
        hz_core::free(p as *mut u8);
    }
}

/// Samples RSS every 250 ms until `stop`; returns (warm-up peak, later
/// peak), the warm-up being the first `warm` seconds.
fn monitor(stop: &AtomicBool, warm: Duration, what: &str) -> (usize, usize) {
    let t0 = Instant::now();
    let (mut warm_peak, mut peak, mut last_print) = (0, 0, Instant::now());
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let r = rss();
        if t0.elapsed() < warm {
            warm_peak = warm_peak.max(r);
        } else {
            peak = peak.max(r);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "{what}: {:>6.0} s  RSS {:.1} MiB (warm-up peak {:.1}, peak since {:.1}), {} heaps created",
                t0.elapsed().as_secs_f64(),
                mib(r),
                mib(warm_peak),
                mib(peak),
                hz_core::stats().heaps_created
            );
        }
    }
    (warm_peak, peak)
}

/// How far over the warm-up peak RSS may go later.
fn margin(warm_peak: usize) -> usize {
    (16 * MIB).max(warm_peak / 4)
}

#[test]
fn producer_consumer() {
    if !in_child("producer_consumer") {
        return;
    }
    let dur = Duration::from_secs(secs());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Blk>(4096);
    let s2 = stop.clone();
    let producer = std::thread::spawn(move || {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut n = 0u64;
        while !s2.load(Relaxed) {
            for _ in 0..1024 {
                n += 1;
                tx.send(alloc(&mut rng, n)).unwrap();
            }
        }
        n
    });
    let consumer = std::thread::spawn(move || {
        let mut n = 0u64;
        for b in rx {
            check_free(b);
            n += 1;
        }
        n
    });
    let s3 = stop.clone();
    let mon = std::thread::spawn(move || monitor(&s3, dur / 4, "producer/consumer"));
    std::thread::sleep(dur);
    stop.store(true, Relaxed);
    let made = producer.join().unwrap();
    let freed = consumer.join().unwrap();
    let (warm, peak) = mon.join().unwrap();
    assert_eq!(made, freed);
    let s = hz_core::stats();
    println!(
        "producer/consumer: {made} blocks in {dur:?}; RSS warm-up peak {:.1} MiB, later peak {:.1} MiB; \
         {} remote frees sent, {} received",
        mib(warm),
        mib(peak),
        s.remote_frees_sent,
        s.remote_frees_received
    );
    assert!(made > 100_000, "the workload hardly ran");
    assert!(
        peak <= warm + margin(warm),
        "RSS grew from {:.1} MiB (warm-up) to {:.1} MiB",
        mib(warm),
        mib(peak)
    );
}

struct Churn {
    started: u64,
    freed: u64,
    warm: usize,
    peak: usize,
    heaps: u64,
}

fn churn(dur: Duration) -> Churn {
    let stop = Arc::new(AtomicBool::new(false));
    // The long-lived thread frees what exited threads left behind.
    let (tx, rx) = mpsc::channel::<Vec<Blk>>();
    let freer = std::thread::spawn(move || {
        let mut n = 0u64;
        for v in rx {
            for b in v {
                check_free(b);
                n += 1;
            }
        }
        n
    });
    let s3 = stop.clone();
    let mon = std::thread::spawn(move || monitor(&s3, dur / 3, "thread churn"));
    let t0 = Instant::now();
    let mut live: VecDeque<std::thread::JoinHandle<()>> = VecDeque::new();
    let mut started = 0u64;
    while t0.elapsed() < dur {
        if live.len() == 6 {
            live.pop_front().unwrap().join().unwrap();
        }
        started += 1;
        let tx = tx.clone();
        let seed = started;
        live.push_back(std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut mine: Vec<Blk> = (0..3000).map(|i| alloc(&mut rng, seed << 20 | i)).collect();
            // Free a third here, in random order; hand the rest over.
            for _ in 0..1000 {
                let i = rng.below(mine.len() as u64) as usize;
                check_free(mine.swap_remove(i));
            }
            tx.send(mine).unwrap();
        }));
    }
    for h in live {
        h.join().unwrap();
    }
    drop(tx);
    let freed = freer.join().unwrap();
    stop.store(true, Relaxed);
    let (warm, peak) = mon.join().unwrap();
    let heaps = hz_core::stats().heaps_created;
    println!(
        "thread churn: {started} threads in {dur:?}, {freed} blocks freed by the long-lived \
         thread; {heaps} heaps created; RSS warm-up peak {:.1} MiB, later peak {:.1} MiB",
        mib(warm),
        mib(peak)
    );
    assert_eq!(freed, started * 2000);
    assert!(started >= 50, "the workload hardly ran");
    Churn {
        started,
        freed,
        warm,
        peak,
        heaps,
    }
}

#[test]
fn thread_churn() {
    if !in_child("thread_churn") {
        return;
    }
    let c = churn(Duration::from_secs(secs()));
    assert!(c.freed > 0);
    // Bounded rather than flat: ~6 threads' worth of blocks come and go.
    assert!(
        c.peak <= c.warm + (32 * MIB).max(c.warm / 2),
        "RSS grew from {:.1} MiB (warm-up) to {:.1} MiB",
        mib(c.warm),
        mib(c.peak)
    );
}

/// Heaps of exited threads are adopted: the number created stays near the
/// number of threads alive at once (6 workers, +1 finishing, the freer).
#[test]
fn thread_churn_reuses_heaps() {
    if !in_child("thread_churn_reuses_heaps") {
        return;
    }
    let c = churn(Duration::from_secs(secs().min(8)));
    assert!(
        c.heaps <= 12,
        "{} heaps created for {} threads (at most 8 alive at once)",
        c.heaps,
        c.started
    );
}
