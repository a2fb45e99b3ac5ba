//! Memory return: after a program frees what it allocated, RSS comes back
//! down — on hz's own slow paths (purging free pages older than
//! `HZ_PURGE_DELAY_MS`, and at once above `HZ_PURGE_MAX_DIRTY_MB`), and
//! immediately with `hz_core::collect()`.
//!
//! Each test re-executes this binary as a child (`current_exe() <name>
//! --exact --nocapture`, `HZ_MR_CHILD=<name>`) with `HZ_PURGE_DELAY_MS=50`,
//! so RSS (from `/proc/self/statm`) belongs to a fresh process whose only
//! big user is hz. The test binary's own allocator is the system one.
//!
//! hz has no background thread: pages are purged only when some thread
//! enters a slow path. So the checks are:
//! * right after the last free: at most the dirty caps (32 MiB, and 64 MiB
//!   for the huge zone) plus a little (empty spans kept, thread caches) is
//!   still resident, and the blocks of 2 MiB and more freed below their
//!   peak of the last second (E71: a program that frees big blocks often
//!   takes others soon; every rival keeps them too);
//! * with the program still doing a little allocation work (a few slow
//!   paths every 10 ms, no `collect`): back near the baseline within ~1 s;
//! * `collect()`: back near the baseline at once.
//!
//! "Near" is 24 MiB over the baseline: blocks cached in the thread's bins
//! keep their spans (~28 MiB here right after 512 MiB of mixed sizes, with
//! bins of at least 16 blocks) until the bin GC has halved the idle bins a
//! few times (100 ms periods; ~4 MiB over the baseline after ~1 s) or
//! `collect()` empties them; the free pages themselves must all be purged.

use std::time::{Duration, Instant};

#[path = "reliability/child.rs"]
mod child;
use child::{mib, rss, Rng, MIB};

const CHILD: &str = "HZ_MR_CHILD";

fn in_child(name: &str) -> bool {
    child::in_child(
        CHILD,
        name,
        &[("HZ_PURGE_DELAY_MS", "50")],
        &["HZ_PURGE_MAX_DIRTY_MB", "HZ_PURGE_MAX_DIRTY_LARGE_MB"],
    )
}

/// ~`total` bytes in mixed sizes: half small blocks (16 B .. 32 KiB), half
/// large runs (64 KiB .. 8 MiB); every page touched. Returns the blocks and
/// the bytes of those of 2 MiB or more.
fn allocate_mixed(total: usize, rng: &mut Rng) -> (Vec<usize>, usize) {
    let mut v = Vec::with_capacity(200_000);
    let (mut small, mut large, mut big) = (0, 0, 0);
    while small < total / 2 || large < total / 2 {
        let n = if small < total / 2 && (large >= total / 2 || rng.below(2) == 0) {
            let n = 16 + rng.below(32 << 10) as usize;
            small += n;
            n
        } else {
            let n = (64 << 10) + rng.below(8 << 20) as usize;
            large += n;
            if n >= 2 * MIB {
                big += n;
            }
            n
        };
        let p = hz_core::malloc(n);
        assert!(!p.is_null());
        // SAFETY: p has n bytes.
        unsafe { std::ptr::write_bytes(p, 0xa5, n) };
        v.push(p as usize);
    }
    (v, big)
}

fn free_shuffled(mut v: Vec<usize>, rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    for p in v {
        // SAFETY: live blocks of hz.
        unsafe { hz_core::free(p as *mut u8) };
    }
}

/// A little allocation work: slow paths that may purge.
fn some_work() {
    let big = hz_core::malloc(MIB);
    let mut small = [std::ptr::null_mut(); 64];
    for (i, s) in small.iter_mut().enumerate() {
        *s = hz_core::malloc(16 + i * 48);
    }
    // SAFETY: live blocks of hz.
    unsafe {
        hz_core::free(big);
        for s in small {
            hz_core::free(s);
        }
    }
}

/// Free pages hz has not purged yet.
fn dirty() -> usize {
    let s = hz_core::stats();
    (s.resident - s.in_use) as usize
}

/// Polls RSS while doing `some_work` every 10 ms until it is within
/// `slack` of `base` and (nearly) every free page has been purged; returns
/// the time it took, or None after `limit`.
fn wait_for_rss(base: usize, slack: usize, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        some_work();
        if rss() <= base + slack && dirty() <= 4 * MIB {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

const TOTAL: usize = 512 * MIB;
/// Dirty caps (`HZ_PURGE_MAX_DIRTY_MB`, `HZ_PURGE_MAX_DIRTY_LARGE_MB`
/// defaults) + empty spans kept + caches; blocks of 2 MiB and more freed
/// below their peak of the last second come on top (E71).
const AFTER_FREE_SLACK: usize = 32 * MIB + 64 * MIB + 24 * MIB;
/// "Near the baseline".
const NEAR: usize = 24 * MIB;

fn report(what: &str, base: usize) {
    let r = rss();
    let s = hz_core::stats();
    println!(
        "{what}: RSS {:.1} MiB ({:+.1} MiB over baseline); hz: {:.1} MiB in use, {:.1} MiB free but resident",
        mib(r),
        mib(r) - mib(base),
        mib(s.in_use as usize),
        mib((s.resident - s.in_use) as usize),
    );
}

#[test]
fn memory_returns_without_collect() {
    if !in_child("memory_returns_without_collect") {
        return;
    }
    let mut rng = Rng(0x9e3779b97f4a7c15);
    some_work();
    let base = rss();
    report("baseline", base);
    let (v, big) = allocate_mixed(TOTAL, &mut rng);
    report("after allocating and touching 512 MiB", base);
    assert!(
        rss() >= base + TOTAL * 3 / 4,
        "the blocks were not resident"
    );
    free_shuffled(v, &mut rng);
    report("right after freeing everything", base);
    assert!(
        rss() <= base + AFTER_FREE_SLACK + big,
        "{:.1} MiB still resident right after freeing (dirty caps 32 + 64 MiB, {:.1} MiB of big blocks)",
        mib(rss() - base),
        mib(big)
    );
    match wait_for_rss(base, NEAR, Duration::from_millis(1500)) {
        Some(t) => println!("back within {} MiB of the baseline after {t:?}", NEAR / MIB),
        None => panic!(
            "RSS still {:.1} MiB over the baseline 1.5 s after freeing, without collect: {}",
            {
                report("at the end", base);
                hz_core::write_stats(1);
                ""
            },
            mib(rss() - base)
        ),
    }
    report("final", base);
}

#[test]
fn memory_returns_with_collect() {
    if !in_child("memory_returns_with_collect") {
        return;
    }
    let mut rng = Rng(0x2545f4914f6cdd1d);
    some_work();
    let base = rss();
    report("baseline", base);
    let (v, _) = allocate_mixed(TOTAL, &mut rng);
    report("after allocating and touching 512 MiB", base);
    free_shuffled(v, &mut rng);
    hz_core::collect();
    report("right after free + collect", base);
    assert!(
        rss() <= base + NEAR,
        "{:.1} MiB still resident right after collect",
        mib(rss() - base)
    );
}

/// The blocks are allocated on one thread, which exits (its heap is
/// abandoned), and freed on another: they travel back through the
/// abandoned heap's inbox; without collect the memory still comes back.
#[test]
fn memory_returns_after_cross_thread_free() {
    if !in_child("memory_returns_after_cross_thread_free") {
        return;
    }
    some_work();
    let base = rss();
    report("baseline", base);
    let (v, _) = std::thread::spawn(|| allocate_mixed(TOTAL / 2, &mut Rng(0x1234_5678_9abc_def1)))
        .join()
        .unwrap();
    report("after another thread allocated 256 MiB and exited", base);
    free_shuffled(v, &mut Rng(77));
    report("right after freeing them here", base);
    match wait_for_rss(base, NEAR, Duration::from_millis(1500)) {
        Some(t) => println!("back within {} MiB of the baseline after {t:?}", NEAR / MIB),
        None => panic!(
            "RSS still {:.1} MiB over the baseline 1.5 s after freeing blocks of an exited thread, without collect",
            mib(rss() - base)
        ),
    }
    hz_core::collect();
    report("after collect", base);
    assert!(rss() <= base + NEAR);
}

/// The bin GC: blocks of the big classes left in a thread's bins go back
/// to their spans on their own (a few 100 ms GC periods), while the thread
/// only does unrelated work (`some_work` uses none of these classes).
#[test]
fn idle_bins_shrink_without_collect() {
    if !in_child("idle_bins_shrink_without_collect") {
        return;
    }
    some_work();
    // Classes of 40..128 KiB: 16 blocks each fill their bins.
    let sizes = [40 << 10, 48 << 10, 64 << 10, 96 << 10, 128 << 10];
    let cached = || -> u64 {
        let s = hz_core::stats();
        sizes
            .iter()
            .map(|&n| {
                let c = s.classes.iter().position(|k| k.size as usize == n).unwrap();
                s.classes[c].blocks * n as u64
            })
            .sum()
    };
    let mut v = Vec::new();
    for &n in &sizes {
        for _ in 0..16 {
            let p = hz_core::malloc(n);
            assert!(!p.is_null());
            v.push(p);
        }
    }
    for p in v {
        // SAFETY: live blocks of hz.
        unsafe { hz_core::free(p) };
    }
    let before = cached();
    println!(
        "freed, still out of their spans: {:.1} MiB",
        mib(before as usize)
    );
    assert!(before > 0, "the freed blocks were not cached");
    let t0 = Instant::now();
    while cached() != 0 {
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:.1} MiB still cached in bins 1.5 s after the last free",
            mib(cached() as usize)
        );
        some_work();
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("bins emptied by the GC after {:?}", t0.elapsed());
}

/// A freed run that coalesces with purged (clean) neighbours counts toward
/// the dirty cap, and is purged, only for the pages that may be resident
/// (its dirty hull, E20). Before, the whole coalesced run counted: here 40
/// MiB, over the 32 MiB cap, so the 8 MiB just freed were purged at once.
#[test]
fn dirty_total_counts_only_pages_that_were_used() {
    if !in_child("dirty_total_counts_only_pages_that_were_used") {
        return;
    }
    hz_core::collect();
    let a = hz_core::malloc(32 * MIB);
    let b = hz_core::malloc(8 * MIB);
    assert!(!a.is_null() && !b.is_null());
    // In a fresh process both come from the arena's never-used top, b
    // right after a (secure builds: after a's guard, in the same page).
    assert!(
        b as usize >= a as usize + 32 * MIB && b as usize <= a as usize + 32 * MIB + (64 << 10),
        "a {a:p} and b {b:p} are not neighbours"
    );
    // SAFETY: a and b are live blocks of hz of these sizes.
    unsafe {
        std::ptr::write_bytes(a, 1, 32 * MIB);
        std::ptr::write_bytes(b, 2, 8 * MIB);
        hz_core::free(a);
    }
    hz_core::collect();
    let (d0, p0) = (dirty(), hz_core::stats().purged_bytes);
    // SAFETY: b is live.
    unsafe { hz_core::free(b) };
    let d = dirty() - d0;
    println!(
        "b freed beside a's purged run: {:.2} MiB counted dirty",
        mib(d)
    );
    assert!(
        (8 * MIB..=9 * MIB).contains(&d),
        "{:.2} MiB counted dirty after freeing 8 MiB beside 32 MiB of purged pages",
        mib(d)
    );
    hz_core::collect();
    let purged = (hz_core::stats().purged_bytes - p0) as usize;
    println!("collect purged {:.2} MiB", mib(purged));
    assert!(
        (8 * MIB..=10 * MIB).contains(&purged),
        "collect purged {:.2} MiB: more than the freed block's pages",
        mib(purged)
    );
}

/// Large runs reused while their pages are resident (the newest dirty runs
/// are taken first, E21) are zeroed by `calloc`, whether they were freed
/// whole, grown in place by `realloc`, or left behind by a move.
#[test]
fn calloc_of_reused_dirty_runs_is_zero() {
    if !in_child("calloc_of_reused_dirty_runs_is_zero") {
        return;
    }
    let check_zero = |p: *mut u8, n: usize| {
        assert!(!p.is_null());
        // SAFETY: p has n bytes.
        let s = unsafe { std::slice::from_raw_parts(p, n) };
        if let Some(i) = s.iter().position(|&x| x != 0) {
            panic!(
                "calloc'd block {p:p} of {n} bytes has byte {i} = {:#x}",
                s[i]
            );
        }
    };
    for round in 0..6 {
        let n = (5 << 20) + round * 77_777;
        let p = hz_core::malloc(6 * MIB);
        // SAFETY: p has 6 MiB.
        unsafe {
            std::ptr::write_bytes(p, 0xab, 6 * MIB);
            hz_core::free(p);
        }
        let q = hz_core::calloc(n);
        check_zero(q, n);
        // Growth by realloc: in place, and moved once the neighbour is taken.
        let mut r = hz_core::malloc(100 << 10);
        let mut size = 100 << 10;
        // SAFETY: r has `size` bytes.
        unsafe { std::ptr::write_bytes(r, 0xcd, size) };
        let blocker = hz_core::malloc(MIB);
        while size < 12 * MIB {
            let next = size + size / 2;
            // SAFETY: r is live with `size` bytes written.
            r = unsafe { hz_core::realloc(r, next) };
            assert!(!r.is_null());
            // SAFETY: r has `next` bytes; the first `size` were written.
            unsafe {
                assert_eq!(*r.add(size - 1), 0xcd, "realloc lost the block's contents");
                std::ptr::write_bytes(r.add(size), 0xcd, next - size);
            }
            size = next;
        }
        // SAFETY: live blocks of hz.
        unsafe {
            hz_core::free(r);
            hz_core::free(blocker);
            hz_core::free(q);
        }
        for n in [12 * MIB, 3 * MIB + 5, 700 << 10] {
            let z = hz_core::calloc(n);
            check_zero(z, n);
            // SAFETY: z has n bytes.
            unsafe {
                std::ptr::write_bytes(z, 0xef, n);
                hz_core::free(z);
            }
        }
    }
}

/// Resident 4 KiB pages of the 64 KiB page holding `p` (`mincore`).
fn resident_pages_of_page(p: *mut u8) -> usize {
    let page = (p as usize & !0xffff) as *mut libc::c_void;
    let mut v = [0u8; 16];
    // SAFETY: the 64 KiB page is mapped (hz's arena); v has one byte per
    // 4 KiB page of it.
    let r = unsafe { libc::mincore(page, 64 << 10, v.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore");
    v.iter().filter(|&&b| b & 1 != 0).count()
}

/// A refill carves half a bin of blocks at once (32 blocks of 1 KiB, half
/// of a fresh 64 KiB span) without touching them. When the bin gives them
/// back unused (here `collect()`, as the bin GC and an overflow do), they
/// must stay untouched: the span takes them back by lowering its carving
/// point, not by writing free-list links into them (which made their pages
/// resident: 8 of the span's 16 pages instead of 1). The secure build
/// writes a marker into every carved block, so it is not checked there.
#[cfg(not(feature = "secure"))]
#[test]
fn blocks_given_back_unused_stay_untouched() {
    if !in_child("blocks_given_back_unused_stay_untouched") {
        return;
    }
    let a = hz_core::malloc(1024);
    assert!(!a.is_null());
    // SAFETY: a is a live 1 KiB block.
    unsafe { std::ptr::write_bytes(a, 7, 1024) };
    let before = resident_pages_of_page(a);
    hz_core::collect();
    let after = resident_pages_of_page(a);
    println!("span pages resident: {before} before giving the bin back, {after} after");
    assert!(
        after <= before.max(1) + 1,
        "giving back {} unused blocks made {after} of 16 pages resident (was {before})",
        31
    );
    // The span still hands out blocks (from the lowered carving point).
    let b = hz_core::malloc(1024);
    assert!(!b.is_null() && b != a);
    // SAFETY: both live.
    unsafe {
        std::ptr::write_bytes(b, 9, 1024);
        assert_eq!(*a, 7);
        hz_core::free(a);
        hz_core::free(b);
    }
}

/// The secure build writes a free marker into every block it carves into a
/// bin, so a refill faults in the pages of every block it carves. It carves
/// at most a 4 KiB page's worth (at least 8 blocks: `secure::carve_limit`)
/// instead of half a bin: the first 1 KiB `malloc` of a fresh span makes
/// 2 of its 16 pages resident (8 blocks), not 8 (32 blocks, as before).
#[cfg(feature = "secure")]
#[test]
fn secure_refill_touches_few_pages() {
    if !in_child("secure_refill_touches_few_pages") {
        return;
    }
    let a = hz_core::malloc(1024);
    assert!(!a.is_null());
    let resident = resident_pages_of_page(a);
    println!("span pages resident after the first refill: {resident}");
    assert!(
        (1..=3).contains(&resident),
        "the first refill of a 1 KiB class made {resident} of 16 pages resident"
    );
    // Every carved block is still marked and checked: the blocks come out
    // distinct, and a second refill carves further.
    let mut v = vec![a];
    for _ in 0..20 {
        let p = hz_core::malloc(1024);
        assert!(!p.is_null() && !v.contains(&p));
        v.push(p);
    }
    for p in v {
        // SAFETY: each p is a live block of hz.
        unsafe { hz_core::free(p) };
    }
}

/// Purge back-off (E81): pages purged and soon taken again (a footprint
/// that swings) hold purging back for a while — free runs then wait far
/// longer than `HZ_PURGE_DELAY_MS` and the normal zone's dirty cap is 8
/// times `HZ_PURGE_MAX_DIRTY_MB` — and once the swinging stops, purging is
/// back to the plain delay and cap within a few seconds.
#[test]
fn purge_backs_off_while_purged_pages_come_back() {
    if !in_child("purge_backs_off_while_purged_pages_come_back") {
        return;
    }
    const BLOCK: usize = 30_000;
    const N: usize = 64 * MIB / BLOCK;
    let fill = |tag: u8| -> Vec<usize> {
        (0..N)
            .map(|_| {
                let p = hz_core::malloc(BLOCK);
                assert!(!p.is_null());
                // SAFETY: a live block of BLOCK bytes.
                unsafe { std::ptr::write_bytes(p, tag, BLOCK) };
                p as usize
            })
            .collect()
    };
    let drop_all = |v: Vec<usize>, tag: u8| {
        for p in v {
            // SAFETY: live blocks of fill(); the program's bytes intact.
            unsafe {
                assert_eq!(*(p as *const u8).add(BLOCK - 1), tag);
                hz_core::free(p as *mut u8);
            }
        }
    };
    // 64 MiB of spans, freed and purged (collect purges everything) ...
    drop_all(fill(1), 1);
    hz_core::collect();
    assert!(
        dirty() <= 4 * MIB,
        "collect left {:.1} MiB dirty",
        mib(dirty())
    );
    // ... and taken again at once: 64 MiB of purged pages faulted back in.
    let v = fill(2);
    drop_all(v, 2);
    let kept = |when: &str| {
        let d = dirty();
        println!("{when}: {:.1} MiB dirty", mib(d));
        assert!(
            d >= 48 * MIB,
            "{when}: {:.1} MiB dirty, purged at the plain delay or cap (32 MiB) despite the churn",
            mib(d)
        );
    };
    kept("right after the second free");
    // Past the plain delay (50 ms), with slow paths running: still there.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        some_work();
        std::thread::sleep(Duration::from_millis(10));
    }
    kept("300 ms later");
    // No more churn: back to the plain delay once the back-off lapses.
    let limit = Duration::from_secs(6);
    while dirty() > 4 * MIB {
        assert!(
            t0.elapsed() < limit,
            "{:.1} MiB still dirty {:?} after the last free",
            mib(dirty()),
            t0.elapsed()
        );
        some_work();
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("purged {:?} after the last free", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_millis(900));
}
