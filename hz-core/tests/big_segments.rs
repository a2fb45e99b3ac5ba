//! Blocks of 2-8 MiB from the thread's own big segments (default build,
//! E74): 32 MiB segments cut into 512 KiB units. What must hold: a block
//! its thread frees serves that thread's next block of that length or
//! shorter (same place), not another thread's; `usable_size` is the
//! pages asked, not the rounded units; `calloc` of units an earlier block
//! wrote returns zeros; blocks another thread frees go back to the owner's
//! segment and serve its next blocks without new pages; a block shrunk by
//! `realloc` keeps whole units and gives the rest back; free units are
//! purged at `collect()` and by the thread's own work; a thread's big
//! segments go back after it exits (kept for the next thread until a
//! reclaim), and the next thread reuses them without faults; blocks that `realloc` grows into do
//! not come from big segments (they go to the huge zone).
//!
//! Each test runs in a child process, so that no other test's blocks share
//! its segments.
#![cfg(not(feature = "secure"))]

#[path = "reliability/child.rs"]
mod child;

use child::{all_are, free, frees_are_ignored, resident_pages, write_all, MIB};

const MARKER: &str = "HZ_BIG_SEGMENTS_CHILD";
const PAGE: usize = 64 << 10;
/// A big segment's unit.
const UNIT: usize = 512 << 10;

#[test]
fn a_freed_big_block_serves_its_threads_next_block_and_not_another_threads() {
    if !child::in_child(
        MARKER,
        "a_freed_big_block_serves_its_threads_next_block_and_not_another_threads",
        &[],
        &[],
    ) {
        return;
    }
    let n = 5 * MIB;
    let p = hz_core::malloc(n);
    let keep = hz_core::malloc(2 * MIB + 1);
    assert!(!p.is_null() && !keep.is_null());
    assert_eq!(p as usize % PAGE, 0, "a big block is not page-aligned");
    // SAFETY: keep is a live block of hz.
    let usable = unsafe { hz_core::usable_size(keep) };
    assert_eq!(usable, 33 * PAGE, "usable size is not the pages asked for");
    write_all(p, n, 0xab);
    write_all(keep, 2 * MIB + 1, 0x5a);
    free(p);
    frees_are_ignored(&[p], "a second free of a big segment block");
    let other = std::thread::spawn(move || {
        let q = hz_core::malloc(n);
        free(q);
        q as usize
    })
    .join()
    .unwrap();
    assert_ne!(
        other, p as usize,
        "another thread got this thread's freed big block"
    );
    // The thread's next, shorter block takes the freed place, zeroed by
    // calloc although the earlier block wrote it.
    let q = hz_core::calloc(3 * MIB);
    assert_eq!(
        q, p,
        "the freed place did not serve the thread's next block"
    );
    assert!(
        all_are(q, 3 * MIB, 0),
        "calloc of written units is not zeroed"
    );
    // The other 2 MiB of the freed place serve a block of 2 MiB, once.
    let r = hz_core::malloc(2 * MIB);
    assert_eq!(
        r as usize,
        q as usize + 3 * MIB,
        "the rest of the freed place was lost"
    );
    let r2 = hz_core::malloc(2 * MIB);
    assert!(
        (r2 as usize) < q as usize || r2 as usize >= r as usize + 2 * MIB,
        "one place handed out twice"
    );
    assert!(
        all_are(keep, 2 * MIB + 1, 0x5a),
        "a live block was overwritten"
    );
    for b in [q, r, r2, keep] {
        free(b);
    }
}

#[test]
fn big_blocks_freed_by_another_thread_serve_the_owners_next_blocks() {
    if !child::in_child(
        MARKER,
        "big_blocks_freed_by_another_thread_serve_the_owners_next_blocks",
        &[],
        &[],
    ) {
        return;
    }
    // Seven blocks of 4 MiB and one that stays: one segment of 32 MiB.
    let n = 4 * MIB;
    let blocks: Vec<usize> = (0..7).map(|_| hz_core::malloc(n) as usize).collect();
    let stay = hz_core::malloc(n);
    let lo = *blocks.iter().min().unwrap();
    assert!(
        blocks.iter().all(|&p| p < lo + 32 * MIB) && (stay as usize) < lo + 32 * MIB,
        "eight blocks of 4 MiB are not one segment"
    );
    for (i, &p) in blocks.iter().enumerate() {
        write_all(p as *mut u8, n, i as u8);
    }
    // The owner's next seven blocks take the places another thread freed,
    // without taking pages from the page allocator.
    child::remote_frees_serve_the_owner(&blocks, n);
    free(stay);
}

#[test]
fn realloc_shrinking_a_big_block_keeps_whole_units() {
    if !child::in_child(
        MARKER,
        "realloc_shrinking_a_big_block_keeps_whole_units",
        &[],
        &[],
    ) {
        return;
    }
    let p = hz_core::malloc(8 * MIB);
    write_all(p, 8 * MIB, 7);
    // SAFETY: p is a live block of hz.
    let q = unsafe { hz_core::realloc(p, MIB + 100) };
    assert_eq!(q, p, "shrinking moved the block");
    // SAFETY: q is a live block of hz.
    assert_eq!(unsafe { hz_core::usable_size(q) }, 17 * PAGE);
    assert!(all_are(q, MIB + 100, 7), "shrinking lost the contents");
    // Three units stay the block's (1.5 MiB); the rest serves the next one.
    let r = hz_core::malloc(6 * MIB);
    assert_eq!(
        r as usize,
        q as usize + 3 * UNIT,
        "the shrunk block's tail did not serve the next block"
    );
    // The block grows back into its own units in place.
    // SAFETY: q is a live block of hz.
    let q2 = unsafe { hz_core::realloc(q, 3 * UNIT) };
    assert_eq!(q2, q, "growing within the block's units moved it");
    assert!(all_are(q2, MIB + 100, 7), "growing lost the contents");
    // Grown past them, it moves (to the huge zone: not a big segment's
    // block, whose free would go back to the segment).
    // SAFETY: q2 is a live block of hz.
    let g = unsafe { hz_core::realloc(q2, 3 * MIB) };
    assert!(
        !g.is_null() && g != q2,
        "growing past the units did not move"
    );
    assert!(all_are(g, MIB + 100, 7), "moving lost the contents");
    // Its units and the next block's, freed, serve a 4 MiB block.
    free(r);
    let s = hz_core::malloc(4 * MIB);
    assert_eq!(
        s, q,
        "the moved block's units did not go back to the segment"
    );
    for b in [g, s] {
        free(b);
    }
}

#[test]
fn free_units_of_big_segments_go_back_to_the_kernel() {
    if !child::in_child(
        MARKER,
        "free_units_of_big_segments_go_back_to_the_kernel",
        &[],
        &[],
    ) {
        return;
    }
    let n = 3 * MIB;
    let keep = hz_core::malloc(2 * MIB);
    // At collect().
    let p = hz_core::malloc(n);
    write_all(p, n, 1);
    free(p);
    assert_eq!(
        resident_pages(p, n),
        n / 4096,
        "a freed big block was purged at once"
    );
    hz_core::collect();
    assert_eq!(
        resident_pages(p, n),
        0,
        "free units stayed resident after collect()"
    );
    // Without collect: the thread's small-block work runs its GC.
    let p = hz_core::malloc(n);
    write_all(p, n, 2);
    free(p);
    child::wait_until_purged_by_small_work(p, n, "free units of a big segment");
    free(keep);
}

#[test]
fn a_threads_big_segments_go_back_after_it_exits() {
    if !child::in_child(
        MARKER,
        "a_threads_big_segments_go_back_after_it_exits",
        &[],
        &[],
    ) {
        return;
    }
    let base = hz_core::stats().in_use;
    let (p, n) = std::thread::spawn(|| {
        let n = 6 * MIB;
        let bs: Vec<*mut u8> = (0..12).map(|_| hz_core::malloc(n)).collect();
        for &b in &bs {
            write_all(b, n, 3);
        }
        let first = bs[0] as usize;
        bs.into_iter().for_each(free);
        (first, n)
    })
    .join()
    .unwrap();
    // The exited thread's heap keeps the pages its blocks freed last for
    // the next thread to adopt it (E101); with none, the reclaim that any
    // thread's slow paths run every 100 ms purges and releases them.
    child::wait_until_purged_by_small_work(p as *mut u8, n, "an exited thread's big block");
    assert!(
        hz_core::stats().in_use < base + 8 * MIB as u64,
        "the exited thread's big segments are still in use: {} MiB over the start",
        (hz_core::stats().in_use - base) >> 20
    );
}

#[test]
fn the_next_thread_reuses_an_exited_threads_segments_without_faults() {
    if !child::in_child(
        MARKER,
        "the_next_thread_reuses_an_exited_threads_segments_without_faults",
        &[],
        &[],
    ) {
        return;
    }
    // A thread per task, each writing and freeing large blocks: the next
    // thread adopts the exited one's heap, and its blocks are the same
    // places, still resident (before E101 the exit purged them, and every
    // thread faulted its blocks in again).
    for n in [MIB, 6 * MIB] {
        let spawn = move || {
            std::thread::spawn(move || {
                let p = hz_core::malloc(n);
                let resident = resident_pages(p, n);
                write_all(p, n, 4);
                free(p);
                (p as usize, resident)
            })
            .join()
            .unwrap()
        };
        let (p, _) = spawn();
        let (q, resident) = spawn();
        assert_eq!(
            q, p,
            "{n} B: the next thread's block is not the exited thread's"
        );
        assert_eq!(
            resident,
            n / 4096,
            "{n} B: the exited thread's pages were purged before the next thread took them"
        );
    }
}

#[test]
fn what_exited_threads_keep_is_capped() {
    if !child::in_child(
        MARKER,
        "what_exited_threads_keep_is_capped",
        &[("HZ_PURGE_MAX_DIRTY_MB", "8")],
        &[],
    ) {
        return;
    }
    // An exiting thread keeps its segments' free pages for the next
    // thread only within the dirty cap, over all exited threads (E101):
    // threads that exit and are not replaced leave at most that much
    // resident while no thread calls the allocator. Here 24 MiB against
    // a cap of 8: purged at the exit, with no call after it.
    let spawn = |k: usize| {
        std::thread::spawn(move || {
            let n = 6 * MIB;
            let bs: Vec<*mut u8> = (0..k).map(|_| hz_core::malloc(n)).collect();
            for &b in &bs {
                write_all(b, n, 5);
            }
            let first = bs[0] as usize;
            bs.into_iter().for_each(free);
            first
        })
        .join()
        .unwrap()
    };
    let p = spawn(4);
    assert_eq!(
        resident_pages(p as *mut u8, 6 * MIB),
        0,
        "an exited thread kept 24 MiB over a cap of 8"
    );
    // One block of 6 MiB fits under the cap: kept.
    let q = spawn(1);
    assert_eq!(
        resident_pages(q as *mut u8, 6 * MIB),
        6 * MIB / 4096,
        "an exited thread's 6 MiB under a cap of 8 was not kept"
    );
}

/// Three blocks of `n` bytes from the calling thread, written, freed by
/// another thread (kept for any thread, E104); with a block that stays so
/// that the segment does.
fn freed_by_another_thread(n: usize, k: usize) -> (Vec<usize>, *mut u8) {
    let stay = hz_core::malloc(2 * MIB);
    let bs: Vec<usize> = (0..k).map(|_| hz_core::malloc(n) as usize).collect();
    for &b in &bs {
        write_all(b as *mut u8, n, 0x77);
    }
    let freed = bs.clone();
    std::thread::spawn(move || freed.into_iter().for_each(|b| free(b as *mut u8)))
        .join()
        .unwrap();
    (bs, stay)
}

#[test]
fn a_big_block_another_thread_freed_serves_a_third_threads_block() {
    if !child::in_child(
        MARKER,
        "a_big_block_another_thread_freed_serves_a_third_threads_block",
        &[],
        &[],
    ) {
        return;
    }
    // Before E104 the block went back to its owner's segment only, and a
    // third thread faulted fresh units of its own in.
    let n = 3 * MIB;
    let (bs, stay) = freed_by_another_thread(n, 1);
    let p = bs[0];
    let foreign = hz_core::stats().foreign_frees;
    std::thread::spawn(move || free(p as *mut u8))
        .join()
        .unwrap();
    assert_eq!(
        hz_core::stats().foreign_frees,
        foreign + 1,
        "a second free of a kept big block is not ignored and counted"
    );
    let (q, resident, zero) = std::thread::spawn(move || {
        let q = hz_core::calloc(n);
        let resident = resident_pages(q, n);
        let zero = all_are(q, n, 0);
        free(q);
        (q as usize, resident, zero)
    })
    .join()
    .unwrap();
    assert_eq!(q, p, "a third thread did not get the freed big block");
    assert_eq!(
        resident,
        n / 4096,
        "the kept block's pages were not resident"
    );
    assert!(zero, "calloc of a kept block is not zeroed");
    // Freed again by the third thread, it serves its owner too.
    assert_eq!(
        hz_core::malloc(n) as usize,
        p,
        "the owner did not get its block back"
    );
    free(p as *mut u8);
    free(stay);
}

#[test]
fn kept_big_blocks_are_capped_and_go_back_to_their_segments() {
    if !child::in_child(
        MARKER,
        "kept_big_blocks_are_capped_and_go_back_to_their_segments",
        &[("HZ_PURGE_MAX_DIRTY_MB", "4")],
        &[],
    ) {
        return;
    }
    // Kept blocks are at most twice the dirty cap: here 8 MiB, two blocks
    // of 3 MiB (six units of 512 KiB each); the third went to its segment.
    let n = 3 * MIB;
    let (bs, stay) = freed_by_another_thread(n, 3);
    let got = std::thread::spawn(move || {
        let got: Vec<usize> = (0..3).map(|_| hz_core::malloc(n) as usize).collect();
        got.iter().for_each(|&b| free(b as *mut u8));
        got
    })
    .join()
    .unwrap();
    assert_eq!(
        got[..2],
        bs[..2],
        "a third thread did not get the two kept blocks"
    );
    assert_ne!(got[2], bs[2], "more than the cap was kept");
    // What the third thread freed is kept again; collect() gives it back to
    // the segments and purges it.
    hz_core::collect();
    for &b in &bs {
        assert_eq!(
            resident_pages(b as *mut u8, n),
            0,
            "a kept block stayed resident after collect()"
        );
    }
    let again: Vec<usize> = (0..3).map(|_| hz_core::malloc(n) as usize).collect();
    assert_eq!(
        again, bs,
        "blocks kept at collect() did not go back to their segment"
    );
    again.into_iter().for_each(|b| free(b as *mut u8));
    free(stay);
}

#[test]
fn kept_big_blocks_no_thread_takes_are_purged_by_small_work() {
    if !child::in_child(
        MARKER,
        "kept_big_blocks_no_thread_takes_are_purged_by_small_work",
        &[],
        &[],
    ) {
        return;
    }
    // A kept block of a length no thread asks for goes back to its segment
    // after a GC period, and its owner's GC purges it.
    let n = 5 * MIB;
    let (bs, stay) = freed_by_another_thread(n, 1);
    assert_eq!(
        resident_pages(bs[0] as *mut u8, n),
        n / 4096,
        "a kept block was purged at once"
    );
    child::wait_until_purged_by_small_work(bs[0] as *mut u8, n, "a kept big block");
    free(stay);
}

#[test]
fn a_producers_kept_blocks_serve_its_blocks_of_other_lengths() {
    if !child::in_child(
        MARKER,
        "a_producers_kept_blocks_serve_its_blocks_of_other_lengths",
        &[],
        &[],
    ) {
        return;
    }
    // A consumer frees a producer's 5 MiB block: kept for a block of its
    // length. The producer's next block is 3 MiB: no kept block of that
    // length, so its own kept blocks come home first and the 3 MiB take
    // the freed place, resident (with E104 alone they stayed kept and the
    // producer faulted fresh units in: a pipeline of 2–8 MiB blocks peaked
    // at 3.7× the RSS).
    let (bs, stay) = freed_by_another_thread(5 * MIB, 1);
    let n = 3 * MIB;
    let q = hz_core::malloc(n);
    assert_eq!(
        q as usize, bs[0],
        "the producer did not reuse its freed block's place"
    );
    assert_eq!(
        resident_pages(q, n),
        n / 4096,
        "the reused place was not resident"
    );
    free(q);
    free(stay);
}
