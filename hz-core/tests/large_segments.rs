//! Large blocks below 2 MiB from the thread's own segments (default
//! build, E67, E68). What must hold: a block its thread frees serves that
//! thread's next block of that length or shorter (same place), and not
//! another thread's (the segments are per heap); a second free is ignored
//! and counted; `calloc` of pages an earlier block wrote returns zeros;
//! blocks another thread frees go back to the owner's segment and serve its
//! next blocks; a block shrunk by `realloc` gives its tail back, and one
//! grown by `realloc` takes the free pages after it in place, on its owner's
//! thread (remote frees of those pages folded in first), and moves when they
//! are taken or another thread grows it; free pages are purged at
//! `collect()`, and without it after a few GC periods of the thread's work,
//! even when all that work is blocks its cache serves (E120).
//!
//! Each test runs in a child process, so that no other test's blocks share
//! its segments.
#![cfg(not(feature = "secure"))]

#[path = "reliability/child.rs"]
mod child;

use child::{all_are, free, frees_are_ignored, resident_pages, served_once, write_all, MIB};
use std::time::Duration;

const MARKER: &str = "HZ_LARGE_SEGMENTS_CHILD";
const PAGE: usize = 64 << 10;

/// Asserts that a new thread's block of `n` bytes is not `p`, which the
/// calling thread has just freed: it comes from the new thread's own
/// segments, not from a place shared by all threads.
fn another_thread_gets_another_block(p: *mut u8, n: usize) {
    let other = std::thread::spawn(move || {
        let q = hz_core::malloc(n);
        free(q);
        q as usize
    })
    .join()
    .unwrap();
    assert_ne!(
        other, p as usize,
        "another thread got this thread's freed block of {n} B"
    );
}

#[test]
fn a_freed_block_serves_its_threads_next_block_and_not_another_threads() {
    if !child::in_child(
        MARKER,
        "a_freed_block_serves_its_threads_next_block_and_not_another_threads",
        &[],
        &[],
    ) {
        return;
    }
    let n = 6 * PAGE;
    let p = hz_core::malloc(n);
    let keep = hz_core::malloc(n);
    write_all(p, n, 0xab);
    free(p);
    frees_are_ignored(&[p], "a second free of a segment block");
    // Another thread's block of that length comes from its own segment.
    another_thread_gets_another_block(p, n);
    // This thread's next block of 3 pages takes the freed place, zeroed by
    // calloc although the earlier block wrote it.
    let q = hz_core::calloc(3 * PAGE);
    assert_eq!(
        q, p,
        "the freed place did not serve the thread's next block"
    );
    // SAFETY: q is a live block of hz.
    assert_eq!(unsafe { hz_core::usable_size(q) }, 3 * PAGE);
    // SAFETY: q is a live block of 3 pages.
    let s = unsafe { core::slice::from_raw_parts(q, 3 * PAGE) };
    assert!(
        s.iter().all(|&b| b == 0),
        "calloc of written pages is not zeroed"
    );
    // The other three freed pages serve a block of three (blocks of two
    // pages and less are small blocks), once.
    let r = hz_core::malloc(3 * PAGE);
    // SAFETY: q and r are blocks of hz.
    assert_eq!(
        r as usize,
        q as usize + 3 * PAGE,
        "the rest of the freed place was lost"
    );
    let r2 = hz_core::malloc(3 * PAGE);
    assert!(
        (r2 as usize) < q as usize || r2 as usize >= r as usize + 3 * PAGE,
        "one place handed out twice"
    );
    for b in [q, r, r2, keep] {
        free(b);
    }
}

/// The longest blocks a segment serves, 31 pages (just under 2 MiB), are
/// per thread too (E68; before, they went through the shared kept runs).
#[test]
fn the_longest_blocks_below_2_mib_come_from_the_threads_segments() {
    if !child::in_child(
        MARKER,
        "the_longest_blocks_below_2_mib_come_from_the_threads_segments",
        &[],
        &[],
    ) {
        return;
    }
    let n = 31 * PAGE;
    let a = hz_core::malloc(n);
    write_all(a, n, 0xcd);
    free(a);
    another_thread_gets_another_block(a, n);
    let b = hz_core::malloc(n);
    assert_eq!(
        b, a,
        "the freed place did not serve the thread's next block"
    );
    free(b);
}

/// A segment that empties stays with its heap for the thread's next
/// blocks (E69), until a GC period finds it unused or `collect()` runs.
#[test]
fn emptied_segments_stay_with_their_heap_until_collect() {
    if !child::in_child(
        MARKER,
        "emptied_segments_stay_with_their_heap_until_collect",
        &[],
        &[],
    ) {
        return;
    }
    // Two blocks of 31 pages per segment of 64: two segments.
    let n = 31 * PAGE;
    let take = || (0..4).map(|_| hz_core::malloc(n)).collect::<Vec<_>>();
    take().into_iter().for_each(free);
    // Past the page allocator's purge delay (10 ms) and within the bin
    // GC's period (100 ms): a segment given back when it emptied would be
    // purged by the next call's tick, and the blocks would fault in again.
    std::thread::sleep(Duration::from_millis(20));
    let purges = hz_core::stats().purges;
    let again = take();
    assert_eq!(
        hz_core::stats().purges,
        purges,
        "an emptied segment went back to the page allocator and was purged"
    );
    let (in_use, resident) = (hz_core::stats().in_use, hz_core::stats().resident);
    again.into_iter().for_each(free);
    // Their pages are free (not in use) but resident until purged: what
    // `mallinfo`'s keepcost reports and `malloc_trim` gives back.
    assert!(
        hz_core::stats().in_use + 4 * n as u64 <= in_use,
        "the free pages of the emptied segments are counted in use"
    );
    assert_eq!(
        hz_core::stats().resident,
        resident,
        "the free pages of the emptied segments are not counted resident"
    );
    hz_core::collect();
    assert!(
        hz_core::stats().resident + 4 * n as u64 <= resident,
        "emptied segments stayed after collect()"
    );
}

#[test]
fn blocks_freed_by_another_thread_serve_the_owners_next_blocks() {
    if !child::in_child(
        MARKER,
        "blocks_freed_by_another_thread_serve_the_owners_next_blocks",
        &[],
        &[],
    ) {
        return;
    }
    // One segment, full: ten blocks of 6 pages and one of 4 that stays.
    let n = 6 * PAGE;
    let blocks: Vec<usize> = (0..10).map(|_| hz_core::malloc(n) as usize).collect();
    let stay = hz_core::malloc(4 * PAGE);
    let lo = *blocks.iter().min().unwrap();
    assert!(
        blocks.iter().all(|&p| p < lo + 64 * PAGE) && (stay as usize) < lo + 64 * PAGE,
        "the first 64 pages of blocks are not one segment"
    );
    // The owner's next ten blocks take the places another thread freed,
    // without taking pages from the page allocator.
    child::remote_frees_serve_the_owner(&blocks, n);
    free(stay);
}

#[test]
fn realloc_shrinking_a_block_gives_its_tail_back() {
    if !child::in_child(
        MARKER,
        "realloc_shrinking_a_block_gives_its_tail_back",
        &[],
        &[],
    ) {
        return;
    }
    let p = hz_core::malloc(15 * PAGE);
    write_all(p, 15 * PAGE, 7);
    // SAFETY: p is a live block of hz.
    let q = unsafe { hz_core::realloc(p, 4 * PAGE - 100) };
    assert_eq!(q, p, "shrinking moved the block");
    // SAFETY: q is a live block of hz.
    assert_eq!(unsafe { hz_core::usable_size(q) }, 4 * PAGE);
    // SAFETY: the first 4 pages are the block's.
    assert!(unsafe { core::slice::from_raw_parts(q, 4 * PAGE - 100) }
        .iter()
        .all(|&b| b == 7));
    let r = hz_core::malloc(11 * PAGE);
    assert_eq!(
        r as usize,
        q as usize + 4 * PAGE,
        "the shrunk block's tail did not serve the next block"
    );
    // A free of the old tail's address is ignored and counted.
    frees_are_ignored(&[q.wrapping_add(5 * PAGE)], "a free of the old tail");
    free(q);
    free(r);
}

#[test]
fn free_pages_of_segments_go_back_to_the_kernel() {
    if !child::in_child(
        MARKER,
        "free_pages_of_segments_go_back_to_the_kernel",
        &[],
        &[],
    ) {
        return;
    }
    // At collect().
    let n = MIB;
    let keep = hz_core::malloc(PAGE * 2);
    let p = hz_core::malloc(n);
    write_all(p, n, 1);
    free(p);
    assert_eq!(
        resident_pages(p, n),
        n / 4096,
        "a freed segment block was purged at once"
    );
    hz_core::collect();
    assert_eq!(
        resident_pages(p, n),
        0,
        "free segment pages stayed resident after collect()"
    );
    // Without collect: the thread's small-block work runs its GC.
    let p = hz_core::malloc(n);
    write_all(p, n, 2);
    free(p);
    child::wait_until_purged_by_small_work(p, n, "free segment pages");
    free(keep);
}

#[test]
fn realloc_growing_a_block_takes_the_free_pages_after_it() {
    if !child::in_child(
        MARKER,
        "realloc_growing_a_block_takes_the_free_pages_after_it",
        &[],
        &[],
    ) {
        return;
    }
    // A fresh segment: the block is its first, the pages after it free.
    let p = hz_core::malloc(3 * PAGE - 100);
    write_all(p, 3 * PAGE - 100, 3);
    let mut q = p;
    for (pages, v) in [(4, 4u8), (6, 6), (9, 9)] {
        let n = pages * PAGE - 100;
        // SAFETY: q is a live block of hz.
        let r = unsafe { hz_core::realloc(q, n) };
        assert_eq!(r, p, "growing to {pages} pages moved the block");
        // SAFETY: r is a live block of hz.
        assert_eq!(unsafe { hz_core::usable_size(r) }, pages * PAGE);
        let before = (pages * PAGE).min(3 * PAGE) - 100;
        assert!(all_are(r, before, 3), "lost bytes at {pages} pages");
        // SAFETY: r has n usable bytes; the first 3 pages keep the mark
        // written above, the rest is marked by size.
        unsafe { core::ptr::write_bytes(r.add(3 * PAGE), v, n - 3 * PAGE) };
        q = r;
    }
    assert!(all_are(q, 3 * PAGE - 100, 3));
    // SAFETY: q has 9 pages; the last three (less 100 bytes) hold 9s.
    let tail = unsafe { q.add(6 * PAGE) };
    assert!(all_are(tail, 3 * PAGE - 100, 9));
    // The pages it grew over are the block's: a free inside them is a
    // foreign free, ignored and counted.
    frees_are_ignored(&[q.wrapping_add(7 * PAGE)], "a free inside the grown block");
    free(q);
}

#[test]
fn realloc_growing_a_block_moves_when_the_next_pages_are_taken() {
    if !child::in_child(
        MARKER,
        "realloc_growing_a_block_moves_when_the_next_pages_are_taken",
        &[],
        &[],
    ) {
        return;
    }
    let n = 3 * PAGE;
    let p = hz_core::malloc(n);
    let next = hz_core::malloc(n);
    assert_eq!(
        next as usize,
        p as usize + n,
        "the second block is not the next pages"
    );
    write_all(p, n, 1);
    write_all(next, n, 2);
    // SAFETY: p is a live block of hz.
    let q = unsafe { hz_core::realloc(p, 5 * PAGE) };
    assert!(!q.is_null() && q != p, "grew over a live block");
    assert!(all_are(q, n, 1) && all_are(next, n, 2));
    let r = hz_core::malloc(n);
    assert_eq!(r, p, "the moved block's pages did not serve the next block");
    write_all(r, n, 3);
    // Another thread frees the next block: its pages wait in the segment's
    // remote set until the owner grows into them.
    let next_addr = next as usize;
    std::thread::spawn(move || free(next_addr as *mut u8))
        .join()
        .unwrap();
    // SAFETY: r is a live block of hz.
    let s = unsafe { hz_core::realloc(r, 5 * PAGE) };
    assert_eq!(s, r, "the pages another thread freed were not grown over");
    assert!(all_are(s, n, 3));
    free(q);
    free(s);
}

#[test]
fn realloc_on_another_thread_moves_a_block() {
    if !child::in_child(MARKER, "realloc_on_another_thread_moves_a_block", &[], &[]) {
        return;
    }
    // The segment's free pages are its owner's to hand out: another
    // thread's realloc moves the block (into its own segment) instead.
    let n = 3 * PAGE;
    let p = hz_core::malloc(n) as usize;
    write_all(p as *mut u8, n, 5);
    let q = std::thread::spawn(move || {
        // SAFETY: p is a live block of hz, given to this thread.
        let q = unsafe { hz_core::realloc(p as *mut u8, 5 * PAGE) };
        assert!(all_are(q, n, 5));
        q as usize
    })
    .join()
    .unwrap();
    assert_ne!(q, p, "another thread grew the block in its owner's segment");
    free(q as *mut u8);
}

#[test]
fn a_block_another_thread_freed_serves_before_fresh_pages() {
    if !child::in_child(
        MARKER,
        "a_block_another_thread_freed_serves_before_fresh_pages",
        &[],
        &[],
    ) {
        return;
    }
    // A producer's block, written and handed to a consumer that frees it:
    // the producer's next block of that length is the same place, whose
    // pages are resident, even though its segment still has never-used
    // room (E103: before, the remote free waited until no segment had
    // room, and the next block faulted fresh pages in).
    let n = 5 * PAGE;
    let keep = hz_core::malloc(3 * PAGE);
    let p = hz_core::malloc(n);
    write_all(p, n, 6);
    let addr = p as usize;
    std::thread::spawn(move || free(addr as *mut u8))
        .join()
        .unwrap();
    let q = hz_core::malloc(n);
    assert_eq!(
        q, p,
        "the producer's next block took fresh pages, not the freed block's"
    );
    assert_eq!(resident_pages(q, n), n / 4096);
    free(q);
    free(keep);
}

/// A block its thread frees waits whole for the thread's next block of its
/// length (E118): that block is it, a second free of it (or a free inside
/// it) is ignored and counted (it is handed out once), its pages count as
/// free meanwhile, and blocks of other lengths still get the places of the
/// blocks freed before them, each block intact.
#[test]
fn freed_blocks_wait_for_the_next_block_of_their_length_and_no_more() {
    if !child::in_child(
        MARKER,
        "freed_blocks_wait_for_the_next_block_of_their_length_and_no_more",
        &[],
        &[],
    ) {
        return;
    }
    let n = 4 * PAGE;
    let p = hz_core::malloc(n);
    write_all(p, n, 1);
    let in_use = hz_core::stats().in_use;
    free(p);
    assert!(
        hz_core::stats().in_use + n as u64 <= in_use,
        "a freed block waiting for the next one is counted in use"
    );
    frees_are_ignored(&[p], "a second free of a waiting block");
    let (q, r) = served_once(p, n, "the freed block");
    write_all(q, n, 2);
    write_all(r, n, 3);
    // Three lengths freed in turn (more than wait at once), then each
    // length again: every block is a place of its own, nothing overlaps.
    let lens = [2 * PAGE, 3 * PAGE, 5 * PAGE];
    let a: Vec<*mut u8> = lens.iter().map(|&l| hz_core::malloc(l)).collect();
    for (i, (&b, &l)) in a.iter().zip(&lens).enumerate() {
        write_all(b, l, 10 + i as u8);
    }
    a.iter().for_each(|&b| free(b));
    let b: Vec<*mut u8> = lens.iter().rev().map(|&l| hz_core::malloc(l)).collect();
    for (i, (&x, &l)) in b.iter().zip(lens.iter().rev()).enumerate() {
        assert!(!x.is_null());
        write_all(x, l, 20 + i as u8);
    }
    for (i, (&x, &l)) in b.iter().zip(lens.iter().rev()).enumerate() {
        assert!(all_are(x, l, 20 + i as u8), "block {i} was overwritten");
    }
    assert!(
        all_are(q, n, 2) && all_are(r, n, 3),
        "a live block was overwritten"
    );
    b.iter().for_each(|&x| free(x));
    free(q);
    free(r);
    // A block of a big segment (4 MiB) waits the same way; while it waits,
    // a free of its first page or of a page inside it is ignored and
    // counted (only its first page's tag is written when it is freed).
    let n = 4 * MIB;
    let p = hz_core::malloc(n);
    write_all(p, n, 7);
    free(p);
    frees_are_ignored(
        &[p, p.wrapping_add(3 * PAGE)],
        "a second free of a waiting big block, or one inside it,",
    );
    let (q, r) = served_once(p, n, "the freed big block");
    // SAFETY: q is live again: its size is its own.
    assert_eq!(unsafe { hz_core::usable_size(q) }, n);
    write_all(r, n, 8);
    assert!(all_are(q, n, 7), "the waiting block was overwritten");
    free(q);
    free(r);
}

/// The fast path of a large block (E120): a block waiting in the thread's
/// cache serves a `calloc` of its length, zeroed; and a thread whose
/// large blocks all come from that cache still runs its periodic work:
/// a block of another length that waits there goes back to its segment
/// at a GC and its pages are purged, with no call to `collect()`.
#[test]
fn cached_blocks_serve_calloc_zeroed_and_the_threads_gc_goes_on() {
    if !child::in_child(
        MARKER,
        "cached_blocks_serve_calloc_zeroed_and_the_threads_gc_goes_on",
        &[],
        &[],
    ) {
        return;
    }
    let n = 4 * PAGE;
    let p = hz_core::malloc(n);
    write_all(p, n, 5);
    free(p);
    let q = hz_core::calloc(n);
    assert_eq!(
        q, p,
        "the waiting block did not serve a calloc of its length"
    );
    assert!(all_are(q, n, 0), "calloc of a waiting block is not zeroed");
    // d, carved while q is live, then waits beside q; every block below
    // is q's length, served by the cache (q's place each time), so d waits
    // until a GC gives it back to its segment.
    let d = hz_core::malloc(MIB);
    write_all(d, MIB, 6);
    free(d);
    free(q);
    assert_eq!(resident_pages(d, MIB), MIB / 4096);
    child::wait_until_purged_by(d, MIB, "a waiting block", "cached blocks", || {
        for _ in 0..2000 {
            let b = hz_core::malloc(n);
            assert_eq!(b, q, "the cache did not serve a block of its length");
            free(b);
        }
    });
}
