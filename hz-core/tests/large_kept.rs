//! Kept large runs (default build): a run below 2 MiB that did not come
//! from the thread's own segments (large_segments.rs: they serve such
//! blocks first, so each test here fills its thread's segments before it
//! starts) is kept whole when the program frees it, in one slot per length
//! shared by all threads, for the next large block of about its length
//! (`arena::kept_take`), taken without the page lock. What must hold: the run is reused (same address);
//! a second free of the block is ignored, as for a run returned to the
//! page allocator, and never hands one run out twice; `calloc` from a kept
//! run that its last owner wrote returns zeros; a run up to a quarter
//! longer than asked serves a request, with the request's usable size; the
//! pages a kept run's owners wrote are purged once the run goes back (at
//! `collect()`, or on its own after a GC period in which no kept run was
//! taken); a run kept by a thread that exited serves other threads; and
//! the large blocks of threads without a heap are counted in `stats()`.
//!
//! Each test runs in a child process, so that no other test's blocks land
//! in the kept runs or the pages it inspects. The secure build keeps no
//! run (each large block there has a guard page and its own checks).
#![cfg(not(feature = "secure"))]

#[path = "reliability/child.rs"]
mod child;

use child::{free, frees_are_ignored, resident_pages, served_once, write_all};

const MARKER: &str = "HZ_LARGE_KEPT_CHILD";

/// Fills the calling thread's segments (8 of 64 pages, each holding two
/// blocks of the longest length they serve, 31 pages), so that its next
/// blocks of 3 or more pages take the kept runs and the page allocator.
/// Returns the fillers, for [`free_all`].
fn fill_segments() -> Vec<usize> {
    (0..16)
        .map(|_| {
            let p = hz_core::malloc(31 * (64 << 10));
            assert!(!p.is_null());
            p as usize
        })
        .collect()
}

fn free_all(v: Vec<usize>) {
    for p in v {
        // SAFETY: live blocks of hz, each freed once.
        unsafe { hz_core::free(p as *mut u8) };
    }
}

/// The address of a block of `n` bytes that a new thread (its segments
/// filled) allocates, fills with `v` and frees, so that its run is kept;
/// the thread then exits.
fn kept_by_another_thread(n: usize, v: u8) -> usize {
    std::thread::spawn(move || {
        let fill = fill_segments();
        let p = hz_core::malloc(n);
        write_all(p, n, v);
        // SAFETY: p is a live block of hz.
        unsafe { hz_core::free(p) };
        free_all(fill);
        p as usize
    })
    .join()
    .unwrap()
}

#[test]
fn a_freed_large_run_serves_the_next_block_and_a_double_free_is_ignored() {
    if !child::in_child(
        MARKER,
        "a_freed_large_run_serves_the_next_block_and_a_double_free_is_ignored",
        &[],
        &[],
    ) {
        return;
    }
    let fill = fill_segments();
    let n = 1200 << 10;
    // A run kept by one thread serves another's next block (a segment's
    // would not: it goes back to its own heap).
    let p = kept_by_another_thread(n, 0xab) as *mut u8;
    let q = hz_core::malloc(n);
    assert_eq!(q, p, "a run kept by another thread did not serve this one");
    free(q);
    // The second free is the misuse under test (its tags say "free").
    frees_are_ignored(&[p], "a second free of a kept large block");
    let (a, b) = served_once(p, n, "the freed run");
    // SAFETY: a is a live block of hz.
    assert_eq!(unsafe { hz_core::usable_size(a) }, 1216 << 10);
    // SAFETY: live blocks of hz.
    unsafe {
        hz_core::free(a);
        hz_core::free(b);
    }
    free_all(fill);
}

#[test]
fn calloc_from_a_kept_run_is_zeroed_and_a_longer_run_gives_the_asked_size() {
    if !child::in_child(
        MARKER,
        "calloc_from_a_kept_run_is_zeroed_and_a_longer_run_gives_the_asked_size",
        &[],
        &[],
    ) {
        return;
    }
    let fill = fill_segments();
    // 20 pages of 64 KiB, written whole, then kept; `g`, live to the end,
    // keeps the run from merging with the runs after it when they go back.
    let n = 20 * (64 << 10);
    let p = hz_core::malloc(n);
    let g = hz_core::malloc(1200 << 10);
    write_all(p, n, 0xff);
    // SAFETY: live block of hz.
    unsafe { hz_core::free(p) };
    // 17 pages asked: the 20-page run is within a quarter more.
    let m = 17 * (64 << 10);
    let q = hz_core::calloc(m);
    assert_eq!(q, p, "a run a quarter longer did not serve the request");
    // SAFETY: q is a live block of hz.
    assert_eq!(unsafe { hz_core::usable_size(q) }, m);
    // SAFETY: q is a live block of m bytes.
    let s = unsafe { core::slice::from_raw_parts(q, m) };
    assert!(
        s.iter().all(|&b| b == 0),
        "calloc from a kept run is not zeroed"
    );
    // SAFETY: live block of hz.
    unsafe { hz_core::free(q) };
    // A 26-page request is more than a quarter over: a fresh run.
    let r = hz_core::malloc(26 * (64 << 10));
    assert_ne!(r, p, "a run shorter than asked was handed out");
    // SAFETY: live block of hz.
    unsafe { hz_core::free(r) };
    // Every page the first owner wrote goes back when the runs do: the
    // dirty hull covers all 20, not the 17 the second owner asked for.
    hz_core::collect();
    assert_eq!(
        resident_pages(p, n),
        0,
        "pages of a kept run stayed resident after collect()"
    );
    // SAFETY: live block of hz.
    unsafe { hz_core::free(g) };
    free_all(fill);
}

#[test]
fn kept_runs_go_back_when_idle_and_serve_other_threads() {
    if !child::in_child(
        MARKER,
        "kept_runs_go_back_when_idle_and_serve_other_threads",
        &[],
        &[],
    ) {
        return;
    }
    let fill = fill_segments();
    let n = 20 * (64 << 10);
    let p = hz_core::malloc(n);
    write_all(p, n, 1);
    // SAFETY: live block of hz.
    unsafe { hz_core::free(p) };
    assert_eq!(
        resident_pages(p, n),
        n / 4096,
        "the kept run was purged at once"
    );
    // Small blocks only, for a few GC periods: the run goes back to the
    // page allocator and is purged after the delay.
    child::wait_until_purged_by_small_work(p, n, "a kept run");
    // The run a thread kept before it exited serves this thread's next
    // block of that length, and goes back at collect().
    let q = kept_by_another_thread(n, 2);
    let again = hz_core::malloc(n);
    assert_eq!(
        again as usize, q,
        "a run kept by an exited thread does not serve the next block"
    );
    // SAFETY: live block of hz.
    unsafe { hz_core::free(again) };
    hz_core::collect();
    assert_eq!(
        resident_pages(q as *mut u8, n),
        0,
        "a kept run stayed resident after collect()"
    );
    free_all(fill);
}

/// Threads that allocate only large blocks of 2 MiB and more never claim a heap; their
/// counts go to per-thread shards (E62). `stats()` must still report every
/// live large block and its bytes, also when one thread frees the blocks
/// another allocated (one shard then counts "negative" blocks).
#[test]
fn large_blocks_of_threads_without_a_heap_are_counted() {
    if !child::in_child(
        MARKER,
        "large_blocks_of_threads_without_a_heap_are_counted",
        &[],
        &[],
    ) {
        return;
    }
    let before = hz_core::stats();
    let n = 2 << 20;
    // Each thread allocates 3 blocks and hands their addresses back.
    let blocks: Vec<usize> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        let p = hz_core::malloc(n);
                        assert!(!p.is_null());
                        p as usize
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let during = hz_core::stats();
    assert_eq!(
        during.large_blocks.wrapping_sub(before.large_blocks),
        12,
        "live large blocks of heapless threads are not counted"
    );
    let grown = during.allocated.wrapping_sub(before.allocated);
    assert!(
        grown >= 12 * n as u64 && grown < 12 * (n as u64 + (128 << 10)),
        "allocated grew by {grown} for 12 blocks of {n} B"
    );
    // Freed by two other threads, none of which allocated them.
    let (a, b) = blocks.split_at(6);
    std::thread::scope(|s| {
        for part in [a, b] {
            s.spawn(move || {
                for &p in part {
                    // SAFETY: each block is live and freed once.
                    unsafe { hz_core::free(p as *mut u8) };
                }
            });
        }
    });
    let after = hz_core::stats();
    assert_eq!(
        after.large_blocks, before.large_blocks,
        "large blocks freed on other threads still counted"
    );
    assert_eq!(after.allocated, before.allocated);
}

/// A large block that `realloc` resizes in place is counted in `stats()`
/// at its new length, also when another thread frees it: a block of the
/// thread's segment grown over the free units behind it (E98) and a run of
/// the huge zone grown over the run behind it, each counted in the heap
/// of the thread that resized it (M88) and uncounted, whole, by the
/// thread that frees it.
#[test]
fn large_blocks_resized_in_place_are_counted_at_their_new_length() {
    if !child::in_child(
        MARKER,
        "large_blocks_resized_in_place_are_counted_at_their_new_length",
        &[],
        &[],
    ) {
        return;
    }
    let before = hz_core::stats();
    let (seg, big) = std::thread::spawn(|| {
        let p = hz_core::malloc(200 << 10);
        let q = hz_core::malloc(16 << 20);
        assert!(!p.is_null() && !q.is_null());
        // SAFETY: p and q are live blocks of hz.
        let (p2, q2) = unsafe {
            (
                hz_core::realloc(p, 600 << 10),
                hz_core::realloc(q, 24 << 20),
            )
        };
        assert_eq!(p2, p, "a segment block with free units behind it moved");
        assert_eq!(q2, q, "a huge run with free pages behind it moved");
        (p as usize, q as usize)
    })
    .join()
    .unwrap();
    let during = hz_core::stats();
    let grown = during.allocated.wrapping_sub(before.allocated);
    let least = (600u64 << 10) + (24 << 20);
    // Each grew with half as much again as room, in whole units or extents.
    assert!(
        grown >= least && grown < least / 2 * 3 + (4 << 20),
        "allocated grew by {grown} for blocks resized to {least} B in all"
    );
    std::thread::spawn(move || {
        // SAFETY: both blocks are live and freed once.
        unsafe {
            hz_core::free(seg as *mut u8);
            hz_core::free(big as *mut u8);
        }
    })
    .join()
    .unwrap();
    assert_eq!(hz_core::stats().allocated, before.allocated);
}
