//! Workloads beyond the matrix, each generic over `GlobalAlloc` (except
//! rust-collections, which runs std collections on the process's global
//! allocator, chosen per child process by `HZ_BENCH_GLOBAL`). Each returns
//! wall time of its measured phase, the allocator operations it made
//! (0 when not counted) and the process's peak RSS.
//! `c/bench_workloads.c` has the same programs in C for LD_PRELOAD runs;
//! cxx-collections, rust-collections' twin in C++ containers, exists only
//! there (`c/bench_cxx.cc`), so [`run`] does not know it.

use crate::matrix::self_maxrss_kib;
use crate::rng::XorShift;
use crate::runner::WorkResult;
use crate::spsc::{Entry, Spsc};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Workload names, in report order.
pub const WORKLOADS: [&str; 10] = [
    "larson",
    "pipeline",
    "xmalloc",
    "cache-scratch",
    "cache-thrash",
    "realloc",
    "realloc-medium",
    "large",
    "rust-collections",
    "cxx-collections",
];

/// A workload that runs only in-process (std collections on the global
/// allocator): rust-collections.
pub fn in_process_only(name: &str) -> bool {
    name == "rust-collections"
}

/// A workload that runs only under `LD_PRELOAD`, as a C++ program
/// (`c/bench_cxx.cc`): cxx-collections.
pub fn is_cxx(name: &str) -> bool {
    name == "cxx-collections"
}

/// One line on what a workload does (the tables' group description).
pub fn describe(name: &str) -> &'static str {
    match name {
        "larson" => "server sim: threads replace random blocks 16..1000 B, then hand them to the next generation of threads",
        "pipeline" => "T-stage pipeline: each stage frees the block it got and passes on a new one 16..4096 B",
        "xmalloc" => "T-1 producers allocate 16..512 B, one consumer frees everything",
        "cache-scratch" => "each thread frees a block handed over by main, then alloc 8 B/write 100x/free (passive false sharing)",
        "cache-thrash" => "each thread alloc 8 B/write 100x/free (active false sharing)",
        "realloc" => "each thread grows a buffer 16 B → 16 MiB by ×1.5 steps with realloc, touching every new page",
        "realloc-medium" => "each thread grows a buffer 16 B → 32 KiB by ×1.5 steps with realloc, writing every new byte, 4000 times",
        "large" => "each thread allocates or frees, at random, one of 16 slots of 128 KiB..1 MiB blocks, writing their first and last byte",
        "rust-collections" => "HashMap<String,Vec<u64>>, BTreeMap<u64,String>, String building, dropped, per thread",
        "cxx-collections" => "C++: unordered_map<string,vector<uint64_t>>, map<uint64_t,string>, string building, dropped, per thread (LD_PRELOAD only)",
        _ => "",
    }
}

const ALIGN: usize = 8;

#[inline(always)]
fn lay(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two, sizes are far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

#[inline(always)]
fn alloc<A: GlobalAlloc>(a: &A, size: usize) -> *mut u8 {
    // SAFETY: size > 0.
    let p = unsafe { a.alloc(lay(size)) };
    if p.is_null() {
        std::process::abort();
    }
    // SAFETY: p is a fresh block of `size` >= 1 bytes.
    unsafe { p.write(size as u8) };
    p
}

/// # Safety
/// `p` is a live block of `a` allocated with `size`.
#[inline(always)]
unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, size: usize) {
    // SAFETY: forwarded contract.
    unsafe { a.dealloc(p, lay(size)) }
}

/// Blocks moved between threads.
struct Chunk(Vec<Entry>);
// SAFETY: a chunk's blocks are owned by whichever thread holds the chunk.
unsafe impl Send for Chunk {}

/// Runs workload `name`; None when the name is unknown.
pub fn run<A: GlobalAlloc + Sync>(
    a: &A,
    name: &str,
    threads: usize,
    scale: f64,
) -> Option<WorkResult> {
    let t = threads.max(1);
    let n = |base: f64| ((base * scale) as u64).max(1);
    let start = Instant::now();
    let ops = match name {
        "larson" => larson(a, t, n(5.0) as usize, n(100_000.0)),
        "pipeline" => pipeline(a, t.max(2), n(200_000.0)),
        "xmalloc" => xmalloc(a, t.max(2), n(400_000.0)),
        "cache-scratch" => cache(a, t, n(20_000.0), true),
        "cache-thrash" => cache(a, t, n(20_000.0), false),
        "realloc" => realloc(a, t, n(8.0), 16 << 20, false),
        "realloc-medium" => realloc(a, t, n(4000.0), 32 << 10, true),
        "large" => large(a, t, n(50_000.0)),
        "rust-collections" => rust_collections(t, n(20_000.0) as usize),
        _ => return None,
    };
    let ns = start.elapsed().as_nanos() as u64;
    Some(WorkResult {
        ns,
        ops,
        maxrss_kib: self_maxrss_kib(),
    })
}

/// Larson-like server: each "generation" of T threads works on the slot
/// chunks the previous generation left (so blocks are freed by a different,
/// newer thread than the one that made them; thread churn included).
fn larson<A: GlobalAlloc + Sync>(a: &A, t: usize, rounds: usize, per_round: u64) -> u64 {
    const SLOTS: usize = 1000;
    let mut chunks: Vec<Chunk> = (0..t)
        .map(|_| {
            Chunk(vec![
                Entry {
                    ptr: std::ptr::null_mut(),
                    size: 0
                };
                SLOTS
            ])
        })
        .collect();
    let mut ops = 0;
    for round in 0..rounds {
        chunks.rotate_left(1);
        let results: Vec<(Chunk, u64)> = std::thread::scope(|s| {
            let hs: Vec<_> = chunks
                .drain(..)
                .enumerate()
                .map(|(i, mut c)| {
                    s.spawn(move || {
                        crate::machine::pin_next_if_requested();
                        let mut rng = XorShift::for_thread(round as u64 + 7, i);
                        let mut ops = 0;
                        for _ in 0..per_round {
                            let k = rng.below(SLOTS as u64) as usize;
                            let e = &mut c.0[k];
                            if !e.ptr.is_null() {
                                // SAFETY: the slot holds a live block of `a` of e.size.
                                unsafe { free(a, e.ptr, e.size) };
                                ops += 1;
                            }
                            let size = 16 + rng.below(985) as usize;
                            *e = Entry {
                                ptr: alloc(a, size),
                                size,
                            };
                            ops += 1;
                        }
                        (c, ops)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("larson thread"))
                .collect()
        });
        for (c, o) in results {
            chunks.push(c);
            ops += o;
        }
    }
    for c in &chunks {
        for e in c.0.iter().filter(|e| !e.ptr.is_null()) {
            // SAFETY: live block of `a` of e.size.
            unsafe { free(a, e.ptr, e.size) };
        }
    }
    ops
}

fn push_wait(r: &Spsc, e: Entry) {
    while !r.push(e) {
        std::thread::yield_now();
    }
}

fn pop_wait(r: &Spsc) -> Entry {
    loop {
        if let Some(e) = r.pop() {
            return e;
        }
        std::thread::yield_now();
    }
}

/// A T-stage pipeline; stage 0 allocates, stages 1..T-1 free what they get
/// and pass on a new block, the last stage frees. A null entry ends the run.
fn pipeline<A: GlobalAlloc + Sync>(a: &A, t: usize, n: u64) -> u64 {
    let rings: Vec<Spsc> = (0..t - 1).map(|_| Spsc::new(1024)).collect();
    let end = || Entry {
        ptr: std::ptr::null_mut(),
        size: 0,
    };
    std::thread::scope(|s| {
        let rings = &rings;
        s.spawn(move || {
            crate::machine::pin_next_if_requested();
            let mut rng = XorShift::for_thread(11, 0);
            for _ in 0..n {
                let size = 16 + rng.below(4081) as usize;
                push_wait(
                    &rings[0],
                    Entry {
                        ptr: alloc(a, size),
                        size,
                    },
                );
            }
            push_wait(&rings[0], end());
        });
        for stage in 1..t {
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                let mut rng = XorShift::for_thread(11, stage);
                loop {
                    let e = pop_wait(&rings[stage - 1]);
                    let last = stage == t - 1;
                    if e.ptr.is_null() {
                        if !last {
                            push_wait(&rings[stage], end());
                        }
                        return;
                    }
                    // SAFETY: e came through the ring: a live block of `a`, now ours.
                    let first = unsafe { e.ptr.read() };
                    // SAFETY: as above.
                    unsafe { free(a, e.ptr, e.size) };
                    if !last {
                        let size = 16 + rng.below(4081) as usize;
                        let p = alloc(a, size);
                        // SAFETY: fresh block of size >= 16.
                        unsafe { p.add(1).write(first) };
                        push_wait(&rings[stage], Entry { ptr: p, size });
                    }
                }
            });
        }
    });
    2 * n * (t as u64 - 1)
}

/// T-1 producers, one consumer that frees everything (xmalloc-like).
fn xmalloc<A: GlobalAlloc + Sync>(a: &A, t: usize, n: u64) -> u64 {
    let producers = t - 1;
    let per = n / producers as u64;
    let rings: Vec<Spsc> = (0..producers).map(|_| Spsc::new(4096)).collect();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (rings, done) = (&rings, &done);
        for (i, ring) in rings.iter().enumerate() {
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                let mut rng = XorShift::for_thread(13, i);
                for _ in 0..per {
                    let size = 16 + rng.below(497) as usize;
                    push_wait(
                        ring,
                        Entry {
                            ptr: alloc(a, size),
                            size,
                        },
                    );
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        s.spawn(move || {
            crate::machine::pin_next_if_requested();
            loop {
                let all = done.load(Ordering::Acquire) == producers;
                let mut got = 0;
                for r in rings {
                    // SAFETY: each entry is a live block of `a` handed to this thread.
                    got += r.drain(|e| unsafe { free(a, e.ptr, e.size) });
                }
                if all && got == 0 {
                    return;
                }
                if got == 0 {
                    std::thread::yield_now();
                }
            }
        });
    });
    2 * per * producers as u64
}

/// Hoard's cache-scratch (`handoff`) and cache-thrash: each thread
/// allocates 8 bytes, writes them 100 times, frees, `iters` times.
fn cache<A: GlobalAlloc + Sync>(a: &A, t: usize, iters: u64, handoff: bool) -> u64 {
    const SIZE: usize = 8;
    const WRITES: usize = 100;
    let first: Vec<usize> = (0..t)
        .map(|_| if handoff { alloc(a, SIZE) as usize } else { 0 })
        .collect();
    std::thread::scope(|s| {
        for &p in &first {
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                if p != 0 {
                    // SAFETY: main allocated it with SIZE and handed it over.
                    unsafe { free(a, p as *mut u8, SIZE) };
                }
                for _ in 0..iters {
                    let q = alloc(a, SIZE);
                    for w in 0..WRITES {
                        for b in 0..SIZE {
                            // SAFETY: q is a live block of SIZE bytes.
                            unsafe { q.add(b).write_volatile(w as u8) };
                        }
                    }
                    // SAFETY: live block of SIZE bytes.
                    unsafe { free(a, q, SIZE) };
                }
            });
        }
    });
    2 * iters * t as u64 + if handoff { 2 * t as u64 } else { 0 }
}

/// Large blocks on every thread: `iters` times, a random one of 16 slots
/// is freed if full, else filled with a block of 128 KiB..1 MiB whose first
/// and last byte are written. Blocks above the small classes, so every
/// operation is a page run (kept runs, or the page allocator's lock).
fn large<A: GlobalAlloc + Sync>(a: &A, t: usize, iters: u64) -> u64 {
    const SLOTS: usize = 16;
    const MIN: usize = 128 << 10;
    const MAX: usize = 1 << 20;
    std::thread::scope(|s| {
        for id in 0..t {
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                let mut rng = XorShift::for_thread(17, id);
                let mut slots = [(std::ptr::null_mut::<u8>(), 0usize); SLOTS];
                for _ in 0..iters {
                    let k = rng.below(SLOTS as u64) as usize;
                    let (p, size) = slots[k];
                    if p.is_null() {
                        let size = MIN + rng.below((MAX - MIN) as u64) as usize;
                        let p = alloc(a, size);
                        // SAFETY: p is a live block of `size` bytes.
                        unsafe { p.add(size - 1).write(k as u8) };
                        slots[k] = (p, size);
                    } else {
                        // SAFETY: p is a live block of `size` bytes.
                        unsafe { free(a, p, size) };
                        slots[k] = (std::ptr::null_mut(), 0);
                    }
                }
                for (p, size) in slots {
                    if !p.is_null() {
                        // SAFETY: as above.
                        unsafe { free(a, p, size) };
                    }
                }
            });
        }
    });
    iters * t as u64
}

/// Each thread grows a buffer from 16 B to `max` by ×1.5 steps, `rounds`
/// times: writing one byte per 4 KiB page of each new range (realloc, to
/// 16 MiB) or every new byte (`dense`: realloc-medium, to 32 KiB, the
/// sizes where a program's strings and arrays mostly stop, where the small
/// classes copy at each step unless the allocator grows the block in
/// place: E155, M92).
fn realloc<A: GlobalAlloc + Sync>(a: &A, t: usize, rounds: u64, max: usize, dense: bool) -> u64 {
    let ops = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..t {
            let ops = &ops;
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                let mut n = 0;
                for r in 0..rounds {
                    let mut size = 16;
                    let mut p = alloc(a, size);
                    if dense {
                        // SAFETY: p has size bytes.
                        unsafe { p.write_bytes(1, size) };
                    }
                    n += 1;
                    while size < max {
                        let new = (size + size / 2 + 16).min(max);
                        // SAFETY: p is a live block of `a` with lay(size).
                        p = unsafe { a.realloc(p, lay(size), new) };
                        if p.is_null() {
                            std::process::abort();
                        }
                        if dense {
                            // SAFETY: [size, new) lies inside the block.
                            unsafe { p.add(size).write_bytes(r as u8, new - size) };
                        } else {
                            let mut off = size;
                            while off < new {
                                // SAFETY: off < new, inside the block.
                                unsafe { p.add(off).write(1) };
                                off += 4096;
                            }
                        }
                        // The compiler may not drop the buffer and its
                        // writes (with System it did: glibc's calls are
                        // known to it).
                        p = std::hint::black_box(p);
                        size = new;
                        n += 1;
                    }
                    // SAFETY: live block of `size`.
                    unsafe { free(a, p, size) };
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    ops.load(Ordering::Relaxed) as u64
}

/// A Rust program's allocation pattern on the global allocator.
fn rust_collections(t: usize, n: usize) -> u64 {
    use std::collections::{BTreeMap, HashMap};
    std::thread::scope(|s| {
        for id in 0..t {
            s.spawn(move || {
                crate::machine::pin_next_if_requested();
                for round in 0..3 {
                    let mut h: HashMap<String, Vec<u64>> = HashMap::new();
                    for i in 0..n {
                        h.insert(format!("key-{id}-{i}"), (0..(i % 16) as u64).collect());
                    }
                    let mut b: BTreeMap<u64, String> = BTreeMap::new();
                    for (i, (k, v)) in h.iter().enumerate() {
                        if i % 2 == 0 {
                            b.insert(i as u64 ^ v.len() as u64, k.clone());
                        }
                    }
                    let mut text = String::new();
                    for (k, v) in b.iter().take(n / 4) {
                        text.push_str(v);
                        text.push_str(&k.to_string());
                    }
                    std::hint::black_box((&h, &b, &text, round));
                }
            });
        }
    });
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_runs_small_with_system() {
        for w in WORKLOADS.into_iter().filter(|w| !is_cxx(w)) {
            let r = run(&std::alloc::System, w, 3, 0.01).expect("known workload");
            assert!(r.ns > 0 && r.maxrss_kib > 0, "{w}");
        }
        assert!(run(&std::alloc::System, "nope", 2, 1.0).is_none());
        assert!(run(&std::alloc::System, "cxx-collections", 2, 1.0).is_none());
    }

    /// The C++ program runs its workload and reports as the C ones do.
    #[test]
    fn cxx_collections_runs_as_a_cxx_program() {
        let out = std::process::Command::new(crate::runner::C_CXX)
            .args(["cxx-collections", "2", "0.05"])
            .env_remove("LD_PRELOAD")
            .output()
            .expect("run bench_cxx");
        assert!(out.status.success(), "{out:?}");
        let w = crate::runner::parse_work_line(&String::from_utf8_lossy(&out.stdout))
            .expect("an HZB_WORK line");
        assert!(w.ns > 0 && w.maxrss_kib > 0, "{w:?}");
        let bad = std::process::Command::new(crate::runner::C_CXX)
            .args(["nope", "1", "1"])
            .output()
            .expect("run bench_cxx");
        assert_eq!(bad.status.code(), Some(2));
    }
}
