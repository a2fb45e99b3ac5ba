//! Large blocks of 2 MiB and more that `realloc` grows into come from
//! arenas of their own, advised for transparent huge pages
//! (`arena::Zone::Huge`): each such block starts on a 2 MiB boundary, its
//! mapping carries the advice (`hg` in the VMA's flags in /proc/self/smaps),
//! the mappings of smaller blocks and of blocks `malloc` hands out directly
//! do not (E70), `HZ_THP=0` turns the zone off, blocks keep their contents when `realloc` moves them
//! into, inside and out of the zone, and freeing such a block leaves none
//! of its 2 MiB extents resident once purged (a huge page makes all of an
//! extent resident when one byte of it is touched).
//!
//! Each test runs in a child process, so that no other test's blocks share
//! the mappings it inspects. Secure builds have no huge zone (their guard
//! pages would split the huge pages): there, large blocks must not be
//! advised.

#[path = "reliability/child.rs"]
mod child;

#[cfg(not(feature = "secure"))]
use child::resident_pages;
use child::MIB;

const MARKER: &str = "HZ_HUGE_ZONE_CHILD";

fn advised_huge(p: *mut u8) -> bool {
    child::vm_flags(p).iter().any(|f| f == "hg")
}

/// Writes a byte in every 4 KiB of the first `n` bytes.
fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in (0..n).step_by(4096) {
        // SAFETY: i < n, inside the block.
        unsafe { *p.add(i) = seed.wrapping_add((i >> 12) as u8) };
    }
}

/// Checks what [`fill`] wrote in the first `n` bytes (every 4 KiB).
fn check(p: *mut u8, n: usize, seed: u8, what: &str) {
    for i in (0..n).step_by(4096) {
        // SAFETY: i < n, inside the block.
        let got = unsafe { *p.add(i) };
        assert_eq!(got, seed.wrapping_add((i >> 12) as u8), "{what}: byte {i}");
    }
}

#[test]
#[cfg(not(feature = "secure"))]
fn large_blocks_come_from_the_huge_zone() {
    if !child::in_child(
        MARKER,
        "large_blocks_come_from_the_huge_zone",
        &[],
        &["HZ_THP"],
    ) {
        return;
    }
    let small = hz_core::malloc(1000);
    let medium = hz_core::malloc(MIB);
    let sizes = [2 * MIB, 3 * MIB + 5, 17 * MIB];
    // Handed out by malloc: 4 KiB pages, like every smaller block.
    let plain: Vec<*mut u8> = sizes.iter().map(|&n| hz_core::malloc(n)).collect();
    for &p in &plain {
        assert!(
            !p.is_null() && !advised_huge(p),
            "a block from malloc is advised for huge pages"
        );
    }
    // Grown by realloc from a large block: the huge zone.
    let big: Vec<*mut u8> = sizes.iter().map(|&n| grown_to(n)).collect();
    assert!(!small.is_null() && !medium.is_null());
    assert!(
        !advised_huge(small),
        "a small block's span is advised for huge pages"
    );
    assert!(
        !advised_huge(medium),
        "a 1 MiB block is advised for huge pages"
    );
    for &p in &big {
        assert!(!p.is_null());
        assert_eq!(p as usize % (2 * MIB), 0, "{p:?} not on a 2 MiB boundary");
        assert!(
            advised_huge(p),
            "a large block's mapping lacks huge-page advice"
        );
    }
    // SAFETY: live blocks of hz.
    unsafe {
        hz_core::free(small);
        hz_core::free(medium);
        for p in big.into_iter().chain(plain) {
            hz_core::free(p);
        }
    }
}

/// A block of `n` bytes (2 MiB or more) that `realloc` grew from a 1 MiB
/// block: it moves, into the huge zone when that is on.
#[cfg(not(feature = "secure"))]
fn grown_to(n: usize) -> *mut u8 {
    let p = hz_core::malloc(MIB);
    assert!(!p.is_null());
    // SAFETY: p is a live block of hz.
    let q = unsafe { hz_core::realloc(p, n) };
    assert!(!q.is_null());
    q
}

#[test]
fn no_huge_zone_with_thp_off() {
    if !child::in_child(MARKER, "no_huge_zone_with_thp_off", &[("HZ_THP", "0")], &[]) {
        return;
    }
    no_huge_advice();
}

#[test]
#[cfg(feature = "secure")]
fn no_huge_zone_in_secure_builds() {
    if !child::in_child(MARKER, "no_huge_zone_in_secure_builds", &[], &["HZ_THP"]) {
        return;
    }
    no_huge_advice();
}

fn no_huge_advice() {
    let p = hz_core::malloc(3 * MIB);
    assert!(!p.is_null());
    assert!(!advised_huge(p), "a 3 MiB block is advised for huge pages");
    // SAFETY: a live block of hz.
    unsafe { hz_core::free(p) };
}

/// Grows a block by `realloc` from 64 KiB to 40 MiB (×1.7, a block taken
/// after each so that most steps move), then shrinks it back, checking its
/// contents at every step.
#[test]
fn realloc_keeps_contents_across_zones() {
    if !child::in_child(
        MARKER,
        "realloc_keeps_contents_across_zones",
        &[],
        &["HZ_THP"],
    ) {
        return;
    }
    for round in 0..20u8 {
        let mut n = 64 << 10;
        let mut p = hz_core::malloc(n);
        fill(p, n, round);
        let mut blockers = Vec::new();
        while n < 40 * MIB {
            blockers.push(hz_core::malloc(100 << 10));
            let next = n * 17 / 10;
            // SAFETY: p is live with n bytes.
            p = unsafe { hz_core::realloc(p, next) };
            assert!(!p.is_null());
            check(p, n, round, "after growth");
            fill(p, next, round);
            n = next;
        }
        while n > 64 << 10 {
            let next = n / 3;
            // SAFETY: as above.
            p = unsafe { hz_core::realloc(p, next) };
            assert!(!p.is_null());
            check(p, next, round, "after shrinking");
            n = next;
        }
        // SAFETY: live blocks of hz.
        unsafe {
            hz_core::free(p);
            for b in blockers {
                hz_core::free(b);
            }
        }
    }
}

/// A block of 3 MiB + 64 KiB touched throughout spans two extents; if the
/// kernel backed them with huge pages, all 4 MiB became resident. Freed and
/// purged, none of it may stay resident.
#[test]
#[cfg(not(feature = "secure"))]
fn freed_extents_are_purged_whole() {
    if !child::in_child(MARKER, "freed_extents_are_purged_whole", &[], &["HZ_THP"]) {
        return;
    }
    for _ in 0..10 {
        let n = 3 * MIB + (64 << 10);
        let p = grown_to(n);
        // SAFETY: p has n bytes.
        unsafe { std::ptr::write_bytes(p, 0x5a, n) };
        let before = resident_pages(p, 4 * MIB);
        assert!(before >= n / 4096, "{before} pages resident after writing");
        // SAFETY: a live block of hz.
        unsafe { hz_core::free(p) };
        hz_core::collect();
        let after = resident_pages(p, 4 * MIB);
        assert_eq!(
            after, 0,
            "{after} of {before} pages still resident after purging"
        );
    }
}

/// Free pages of the huge zone's blocks count against their own cap
/// (`HZ_PURGE_MAX_DIRTY_LARGE_MB`), not the spans' (`HZ_PURGE_MAX_DIRTY_MB`):
/// with caps of 8 and 40 MiB and purging by age held off, 24 MiB of freed
/// large blocks stay resident. So do 80 MiB of them while they are within
/// the last second's peak of big blocks in use (E71: the program may take
/// them again); once the peak has aged out (two windows of 1 s), the next
/// free purges them until at most the cap is left (whole free runs: the
/// 20 blocks freed side by side are one).
#[test]
#[cfg(not(feature = "secure"))]
fn large_blocks_have_their_own_dirty_cap() {
    if !child::in_child(
        MARKER,
        "large_blocks_have_their_own_dirty_cap",
        &[
            ("HZ_PURGE_MAX_DIRTY_MB", "8"),
            ("HZ_PURGE_MAX_DIRTY_LARGE_MB", "40"),
            ("HZ_PURGE_DELAY_MS", "1000000"),
        ],
        &["HZ_THP"],
    ) {
        return;
    }
    let dirty = || {
        let s = hz_core::stats();
        (s.resident - s.in_use) as usize
    };
    let cycle = |blocks: usize| {
        let v: Vec<*mut u8> = (0..blocks)
            .map(|_| {
                let p = grown_to(4 * MIB);
                // SAFETY: p has 4 MiB.
                unsafe { std::ptr::write_bytes(p, 0x3c, 4 * MIB) };
                p
            })
            .collect();
        for p in v {
            // SAFETY: a live block of hz.
            unsafe { hz_core::free(p) };
        }
    };
    cycle(6);
    let d = dirty();
    assert!(
        d >= 24 * MIB,
        "{:.1} MiB dirty after freeing 24 MiB of large blocks (cap 40 MiB)",
        child::mib(d)
    );
    cycle(20);
    let d = dirty();
    assert!(
        d >= 80 * MIB,
        "{:.1} MiB dirty right after freeing 80 MiB of large blocks (within their peak)",
        child::mib(d)
    );
    let purged = hz_core::stats().purged_bytes;
    std::thread::sleep(std::time::Duration::from_millis(2100));
    cycle(1);
    let d = dirty();
    assert!(
        d <= 40 * MIB && hz_core::stats().purged_bytes - purged >= 40 << 20,
        "{:.1} MiB dirty after freeing 80 MiB of large blocks and 2 s (cap 40 MiB)",
        child::mib(d)
    );
}

/// [`child::in_child`] for the placement tests of growing blocks: huge
/// pages as by default, freed pages kept resident (no purge by age), so
/// that the freed runs they place blocks on stay the newest dirty ones.
#[cfg(not(feature = "secure"))]
fn in_child_keeping_freed_pages(test: &str) -> bool {
    child::in_child(
        MARKER,
        test,
        &[("HZ_PURGE_DELAY_MS", "1000000")],
        &["HZ_THP"],
    )
}

/// Frees live blocks of hz on a thread of its own (which notes none of
/// them as the place for the caller's next growing block, E153).
#[cfg(not(feature = "secure"))]
fn free_elsewhere(blocks: &[*mut u8]) {
    let addrs: Vec<usize> = blocks.iter().map(|&p| p as usize).collect();
    std::thread::spawn(move || {
        for p in addrs {
            // SAFETY: live blocks of hz, handed over.
            unsafe { hz_core::free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
}

/// Two resident free runs in the huge zone, of a block grown to 8 MiB and
/// one grown to 24 MiB (12 and 36 MiB with the headroom `realloc` gives),
/// each kept apart from the next run by a block in use; the 8 MiB one
/// freed by this thread when `own`, else both by another thread. Then a
/// block grown to 3 MiB, which must land at `expect(short, long)` and grow
/// there in place to `to` bytes, keeping its contents.
#[cfg(not(feature = "secure"))]
fn growing_block_lands(own: bool, expect: fn(*mut u8, *mut u8) -> *mut u8, to: usize) {
    let short = grown_to(8 * MIB);
    let apart = grown_to(2 * MIB);
    let long = grown_to(24 * MIB);
    let after = grown_to(2 * MIB);
    fill(short, 8 * MIB, 1);
    fill(long, 24 * MIB, 2);
    if own {
        // SAFETY: a live block of hz.
        unsafe { hz_core::free(short) };
        free_elsewhere(&[long]);
    } else {
        free_elsewhere(&[long, short]);
    }
    let p = grown_to(3 * MIB);
    assert_eq!(
        p,
        expect(short, long),
        "a growing block of 3 MiB (the 8 MiB block's run is at {short:?}, the 24 MiB one's at {long:?})"
    );
    fill(p, 3 * MIB, 3);
    // SAFETY: p is live with 3 MiB.
    let q = unsafe { hz_core::realloc(p, to) };
    assert_eq!(q, p, "grown from 3 MiB to {to} bytes, the block moved");
    check(q, 3 * MIB, 3, "after growing in place");
    // SAFETY: live blocks of hz.
    unsafe {
        hz_core::free(q);
        hz_core::free(apart);
        hz_core::free(after);
    }
}

/// A block that `realloc` moves to grow takes the longest of the newest
/// freed runs whose pages are still resident, not the shortest that fits
/// (E152): it then goes on growing in place over the rest of that run.
/// With both runs freed by another thread, a block grown past 2 MiB lands
/// where the 24 MiB block was and grows to 16 MiB without moving. Taking
/// the shortest run that fits, it went where the 8 MiB block was and
/// moved again to grow.
#[test]
#[cfg(not(feature = "secure"))]
fn a_growing_block_takes_the_longest_resident_run() {
    if !in_child_keeping_freed_pages("a_growing_block_takes_the_longest_resident_run") {
        return;
    }
    growing_block_lands(false, |_, long| long, 16 * MIB);
}

/// A thread's next block that `realloc` moves to grow goes where the last
/// big block the thread freed was, while those pages are free and
/// resident (E153): threads that grow buffers in turn each reuse their
/// own pages instead of taking the longest run, which another thread's
/// growing block may be about to need. This thread frees the 8 MiB block,
/// another thread the 24 MiB one; this thread's next block grown past
/// 2 MiB lands on its own block's run and grows to 8 MiB there in place.
/// (By E152 alone it went to the other thread's longer run.)
#[test]
#[cfg(not(feature = "secure"))]
fn a_growing_block_goes_where_its_threads_last_big_block_was() {
    if !in_child_keeping_freed_pages("a_growing_block_goes_where_its_threads_last_big_block_was") {
        return;
    }
    growing_block_lands(true, |short, _| short, 8 * MIB);
}
