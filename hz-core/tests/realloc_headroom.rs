//! C's `realloc` (`hz_core::realloc`) gives a small block that must move to
//! grow at least a quarter more room than it had, and keeps a small block
//! in place while the new size uses at least 3/4 of it (E112 in
//! docs/PERFORMANCE.md); `realloc_aligned` and `GlobalAlloc::realloc`,
//! whose `dealloc` takes the class from the `Layout` below 8 KiB, give
//! exactly the request's class there; `GlobalAlloc::realloc` makes a
//! growing buffer large from 8 KiB as C's `realloc` does (E157); C's
//! `realloc` does so from 256 bytes while the thread's growing buffers
//! are transient (E160).

use std::alloc::{GlobalAlloc, Layout};

use hz_core::class::{class_of, CLASS_SIZE};
use hz_core::HzAlloc;

#[cfg(not(feature = "secure"))]
#[path = "reliability/child.rs"]
mod child;

/// Tells a child process (running one test) from the parent.
#[cfg(not(feature = "secure"))]
const CHILD: &str = "HZ_REALLOC_CHILD";

/// The tests of large blocks that grow in place run in a fresh process:
/// a thread may take over the heap an exited thread of another test left,
/// with that test's segments and cached blocks (until E159 it also took
/// over the thread's record of writing its large blocks densely, E128,
/// under which no buffer turns large before 32 KiB: E155).
#[cfg(not(feature = "secure"))]
fn in_child(name: &str) -> bool {
    child::in_child(CHILD, name, &[], &[])
}

/// [`child::on_own_thread_in_child`] with this file's marker.
#[cfg(not(feature = "secure"))]
fn on_own_thread_in_child(name: &str, f: impl FnOnce() + Send + 'static) {
    child::on_own_thread_in_child(CHILD, name, f)
}

fn class_size(n: usize) -> usize {
    CLASS_SIZE[class_of(n)] as usize
}

/// An arena page: a large block starts on one and spans whole ones.
#[cfg(not(feature = "secure"))]
const PAGE: usize = 64 << 10;

/// Whether `q` is a large block (page-aligned, whole pages long).
///
/// # Safety
/// `q` is a live block of hz.
#[cfg(not(feature = "secure"))]
unsafe fn is_large(q: *mut u8) -> bool {
    // SAFETY: caller's contract.
    let n = unsafe { hz_core::usable_size(q) };
    n.is_multiple_of(PAGE) && (q as usize).is_multiple_of(PAGE)
}

#[test]
fn a_buffer_grown_16_bytes_at_a_time_moves_less_than_once_per_class() {
    let mut p: *mut u8 = std::ptr::null_mut();
    let mut moves = 0;
    let mut classes = 0;
    let mut last_class = 0;
    let mut n = 16;
    while n <= 4096 {
        // SAFETY: p is null or our live block of n - 16 bytes.
        let q = unsafe { hz_core::realloc(p, n) };
        assert!(!q.is_null());
        // SAFETY: q is live with at least n bytes; its first n - 16 bytes
        // were written below on earlier rounds and must have moved with it.
        unsafe {
            for i in 0..n - 16 {
                assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} of {n}");
            }
            for i in n - 16..n {
                *q.add(i) = (i % 251) as u8;
            }
            assert!(hz_core::usable_size(q) >= n);
        }
        if !p.is_null() && q != p {
            moves += 1;
        }
        if class_of(n) != last_class {
            classes += 1;
            last_class = class_of(n);
        }
        p = q;
        n += 16;
    }
    // Without headroom the block moves at every change of class.
    assert!(
        moves * 4 < (classes - 1) * 3,
        "{moves} moves for {classes} classes"
    );
    // SAFETY: p is our live block.
    unsafe { hz_core::free(p) };
}

#[test]
fn growth_gets_a_quarter_more_room_and_shrinks_of_a_quarter_stay() {
    let p = hz_core::malloc(1000);
    assert!(!p.is_null());
    assert_eq!(class_size(1000), 1024);
    // SAFETY: p is our live block of 1000 bytes.
    unsafe {
        p.write_bytes(0x5a, 1000);
        // 800 uses more than 3/4 of 1024: in place.
        assert_eq!(hz_core::realloc(p, 800), p);
        assert_eq!(hz_core::usable_size(p), 1024);
        // 1030 needs a bigger block: at least 1024 + 256.
        let q = hz_core::realloc(p, 1030);
        assert!(!q.is_null() && q != p);
        assert_eq!(hz_core::usable_size(q), class_size(1280));
        assert!(hz_core::usable_size(q) > class_size(1030));
        for i in 0..800 {
            assert_eq!(*q.add(i), 0x5a);
        }
        // 900 uses less than 3/4 of 1280: it moves to its own class.
        let r = hz_core::realloc(q, 900);
        assert!(!r.is_null() && r != q);
        assert_eq!(hz_core::usable_size(r), class_size(900));
        for i in 0..900 {
            assert_eq!(*r.add(i), 0x5a);
        }
        hz_core::free(r);
    }
}

#[test]
fn realloc_aligned_and_global_alloc_give_the_requests_class() {
    let l = Layout::from_size_align(1000, 16).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { HzAlloc.alloc(l) };
    assert!(!p.is_null());
    // SAFETY: p was allocated with layout l; the new block with the layout
    // of 1030 bytes, which dealloc is given.
    unsafe {
        let q = HzAlloc.realloc(p, l, 1030);
        assert!(!q.is_null());
        assert_eq!(hz_core::usable_size(q), class_size(1030));
        HzAlloc.dealloc(q, Layout::from_size_align(1030, 16).unwrap());
    }
    let p = hz_core::malloc(1000);
    // SAFETY: p is our live 16-aligned block.
    unsafe {
        let q = hz_core::realloc_aligned(p, 1030, 16);
        assert!(!q.is_null());
        assert_eq!(hz_core::usable_size(q), class_size(1030));
        // A size in a smaller class moves (no in-place rule here).
        let r = hz_core::realloc_aligned(q, 800, 16);
        assert!(!r.is_null());
        assert_eq!(hz_core::usable_size(r), class_size(800));
        hz_core::free(r);
    }
}

/// C's `realloc` grows a small block past 32 KiB into a large block (whole
/// 64 KiB pages) with room after it, and keeps it large above 32 KiB, so a
/// buffer doubled to 1 MiB grows in place once it is large; shrunk to 32
/// KiB or less it is a small block again (E119). Default build only (the
/// secure build resizes no large block in place).
#[cfg(not(feature = "secure"))]
#[test]
fn a_buffer_doubled_past_32_kib_becomes_large_and_grows_in_place() {
    if !in_child("a_buffer_doubled_past_32_kib_becomes_large_and_grows_in_place") {
        return;
    }
    // On a thread of its own: its segments hold nothing else.
    std::thread::spawn(|| {
        let mut p = hz_core::malloc(4096);
        let mut n = 4096;
        let mut moves_when_large = 0;
        // SAFETY: p is our live block of n bytes throughout; q the block
        // realloc returned, of at least 2n bytes.
        unsafe {
            p.write_bytes(1, n);
            while n < 1 << 20 {
                let q = hz_core::realloc(p, 2 * n);
                assert!(!q.is_null());
                for i in (0..n).step_by(997) {
                    assert_eq!(*q.add(i), 1, "byte {i} of {n}");
                }
                q.add(n).write_bytes(1, n);
                let usable = hz_core::usable_size(q);
                // Large past 32 KiB, or from 8 KiB on when the buffer grows
                // again after a move (E155): whole pages, exactly the pages
                // asked for.
                if 2 * n > 32 << 10 || n >= 8 << 10 {
                    assert_eq!(q as usize % PAGE, 0, "{} bytes not a page run", 2 * n);
                    assert_eq!(usable, (2 * n).next_multiple_of(PAGE));
                    if n >= 16 << 10 && q != p {
                        moves_when_large += 1;
                    }
                } else {
                    assert_eq!(usable, class_size(2 * n));
                }
                p = q;
                n *= 2;
            }
            assert_eq!(
                moves_when_large, 0,
                "a large buffer moved while the pages after it were free"
            );
            // Down to 40 000 bytes it stays large (its tail goes back);
            // down to 20 000 it becomes a small block.
            let q = hz_core::realloc(p, 40_000);
            assert_eq!(q, p);
            assert_eq!(hz_core::usable_size(q), PAGE);
            let r = hz_core::realloc(q, 20_000);
            assert!(!r.is_null() && r != q);
            assert_eq!(hz_core::usable_size(r), class_size(20_000));
            for i in (0..20_000).step_by(97) {
                assert_eq!(*r.add(i), 1);
            }
            hz_core::free(r);
        }
    })
    .join()
    .unwrap();
    // realloc_aligned keeps its classes.
    let p = hz_core::malloc(30_000);
    // SAFETY: p is our live 16-aligned block.
    unsafe {
        let q = hz_core::realloc_aligned(p, 40_000, 16);
        assert!(!q.is_null());
        assert_eq!(hz_core::usable_size(q), class_size(40_000));
        hz_core::free(q);
    }
}

/// Grows `p` (a live block of `n` bytes, or null) by half at each step to
/// at least `to` bytes, checking the bytes written so far at each step and
/// writing the new ones; returns the block, its size and each step's
/// (size asked, block returned).
///
/// # Safety
/// `p` is null or a live block of hz of `n` bytes, each `(i % 251)`.
#[cfg(not(feature = "secure"))]
unsafe fn grow_by_half(
    mut p: *mut u8,
    mut n: usize,
    to: usize,
) -> (*mut u8, usize, Vec<(usize, *mut u8)>) {
    let mut steps = Vec::new();
    while n < to {
        let m = (n + n / 2).max(16);
        // SAFETY: forwarded contract; q has at least m bytes.
        unsafe {
            let q = hz_core::realloc(p, m);
            assert!(!q.is_null());
            for i in (0..n).step_by(61) {
                assert_eq!(
                    *q.add(i),
                    (i % 251) as u8,
                    "byte {i} of {n} after a step to {m}"
                );
            }
            for i in n..m {
                *q.add(i) = (i % 251) as u8;
            }
            steps.push((m, q));
            p = q;
        }
        n = m;
    }
    (p, n, steps)
}

/// C's `realloc` makes a buffer large once it grows again after a move
/// with at least 8 KiB (E155): it then grows in place in whole 64 KiB
/// pages instead of moving at every class up to 32 KiB; shrunk to fit, it
/// goes back to a small class. On a thread of its own: its segments hold
/// nothing else. The thread first keeps a buffer it grew, so that its
/// buffers are not taken for transient ones (E160).
#[cfg(not(feature = "secure"))]
#[test]
fn a_buffer_grown_again_after_a_move_turns_large_from_8_kib() {
    on_own_thread_in_child(
        "a_buffer_grown_again_after_a_move_turns_large_from_8_kib",
        || {
            // SAFETY: the blocks are ours and live until freed.
            unsafe {
                let (kept, _, _) = grow_by_half(std::ptr::null_mut(), 0, 2000);
                let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 200 << 10);
                let first_large = steps
                    .iter()
                    .position(|&(_, q)| is_large(q))
                    .expect("the buffer never became large");
                let (m, q) = steps[first_large];
                let before = hz_core::usable_size(steps[first_large - 1].1);
                assert!(
                    before >= 8 << 10 && m <= 16 << 10,
                    "the buffer became large at {m} bytes, from a block of {before}"
                );
                // From there it grows in place (the pages after it are free).
                for &(m2, q2) in &steps[first_large..] {
                    assert_eq!(q2, q, "the large buffer moved when grown to {m2}");
                }
                // Shrunk to fit below 32 KiB, it moves back to a small class.
                hz_core::free(p);
                let (p, n, _) = grow_by_half(std::ptr::null_mut(), 0, 20_000);
                assert!(
                    hz_core::usable_size(p).is_multiple_of(PAGE),
                    "{n} bytes not large"
                );
                let r = hz_core::realloc(p, 18_000);
                assert!(!r.is_null() && r != p);
                assert_eq!(hz_core::usable_size(r), class_size(18_000));
                for i in (0..18_000).step_by(7) {
                    assert_eq!(*r.add(i), (i % 251) as u8);
                }
                hz_core::free(r);
                hz_core::free(kept);
            }
        },
    );
}

/// The size at which the buffer of `steps` (from [`grow_by_half`]) first
/// became large, if it did, after which it must not have moved.
///
/// # Safety
/// The last step's block is live. (The earlier ones a move freed are
/// asked too: `usable_size` reads only hz's page tags and metas, which
/// stay mapped, never the block, as the E155 test before it does.)
#[cfg(not(feature = "secure"))]
unsafe fn large_from(steps: &[(usize, *mut u8)]) -> Option<usize> {
    // SAFETY: caller's contract; see above for the freed steps.
    let first = steps.iter().position(|&(_, q)| unsafe { is_large(q) })?;
    let (m, q) = steps[first];
    for &(m2, q2) in &steps[first..] {
        assert_eq!(q2, q, "the large buffer moved when grown from {m} to {m2}");
    }
    Some(m)
}

/// A thread whose growing buffers are transient (each freed before the
/// next grows) has them made large from 256 bytes, and grown in place from
/// there, as glibc grows a buffer at the top of its arena (E160); once it
/// keeps one, the next buffers keep E155's rule (their classes below 8
/// KiB), but for one probe in 256 streaks of a block of at least 1 KiB,
/// which finds the buffers transient again after four probes freed in a
/// row. A new thread starts as one whose buffers are transient.
#[cfg(not(feature = "secure"))]
#[test]
fn a_thread_that_frees_its_growing_buffers_grows_them_in_place_from_256_bytes() {
    let name = "a_thread_that_frees_its_growing_buffers_grows_them_in_place_from_256_bytes";
    on_own_thread_in_child(name, || {
        // SAFETY: the blocks are ours and live until freed; each buffer's
        // steps end with its live block.
        unsafe {
            for round in 0..8 {
                let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 32 << 10);
                let at = large_from(&steps).expect("the buffer never became large");
                assert!(
                    at <= 1024,
                    "round {round}: the buffer became large at {at} bytes"
                );
                hz_core::free(p);
            }
            // Kept: the first buffer still turns large early, and it makes
            // the next ones keep their classes below 8 KiB.
            let (k1, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 3000);
            assert!(
                large_from(&steps).is_some(),
                "the first kept buffer stayed small"
            );
            let mut kept = vec![k1];
            for i in 0..20 {
                let (k, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 3000);
                assert_eq!(large_from(&steps), None, "kept buffer {i} turned large");
                kept.push(k);
            }
            for k in kept {
                hz_core::free(k);
            }
            // Transient again: the probes find it out. Buffer `i` turned
            // large below 8 KiB or not.
            let mut large = Vec::new();
            for _ in 0..3000 {
                let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 3000);
                large.push(large_from(&steps).is_some());
                hz_core::free(p);
            }
            let on = (0..large.len() - 16)
                .find(|&i| large[i..i + 16].iter().all(|&l| l))
                .expect("the buffers were not found transient again");
            let probes = large[..on].iter().filter(|&&l| l).count();
            assert!(
                (3..=4).contains(&probes) && on >= 100,
                "{probes} probes among the {on} buffers before every buffer turned large"
            );
        }
    });
}

/// A thread's growing buffer is made large below 8 KiB only while the last
/// one made large grew to three times its size before it was freed
/// (E160): a buffer that stops just after it would be made large saves a
/// class move or two, less than a large block costs. Buffers that stop at
/// 450 bytes stay in their classes after the first; one that grows on is
/// made large at 8 KiB (E155), after which the next is made large early.
#[cfg(not(feature = "secure"))]
#[test]
fn a_thread_whose_buffers_stop_short_keeps_them_in_their_classes() {
    let name = "a_thread_whose_buffers_stop_short_keeps_them_in_their_classes";
    on_own_thread_in_child(name, || {
        // SAFETY: the blocks are ours and live until freed; each buffer's
        // steps end with its live block.
        unsafe {
            let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 450);
            assert!(
                large_from(&steps).is_some(),
                "a new thread's buffer stayed small"
            );
            hz_core::free(p);
            for i in 0..20 {
                let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 450);
                assert_eq!(large_from(&steps), None, "short buffer {i} turned large");
                hz_core::free(p);
            }
            let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 32 << 10);
            let at = large_from(&steps).expect("the long buffer never became large");
            assert!(
                at > 8 << 10,
                "after short buffers, a long one became large at {at} bytes"
            );
            hz_core::free(p);
            let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 32 << 10);
            let at = large_from(&steps).expect("the next long buffer never became large");
            assert!(
                at <= 1024,
                "the next long buffer became large at {at} bytes"
            );
            hz_core::free(p);
        }
    });
}

/// A thread that takes over an exited thread's heap starts from a new
/// heap's record of how it writes large blocks (E128): the exited thread
/// wrote three densely, so its own growing buffer stayed in the small
/// classes up to 32 KiB (its segments take huge pages, which E155 does not
/// spend on a buffer), yet the next thread's buffer, on the same heap,
/// turns large from 8 KiB as on a new heap.
#[cfg(not(feature = "secure"))]
#[test]
fn a_heap_taken_over_forgets_its_former_threads_dense_writes() {
    if !in_child("a_heap_taken_over_forgets_its_former_threads_dense_writes") {
        return;
    }
    // SAFETY: every q passed is a live block of hz.
    let large = |q: *mut u8| unsafe { is_large(q) };
    let first = std::thread::spawn(move || {
        // SAFETY: the blocks are ours and live until freed.
        unsafe {
            let bs: Vec<*mut u8> = (0..3).map(|_| hz_core::malloc(512 << 10)).collect();
            for &b in &bs {
                assert!(!b.is_null());
                std::ptr::write_bytes(b, 1, 512 << 10);
            }
            for b in bs {
                hz_core::free(b);
            }
            let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 24 << 10);
            assert!(
                steps.iter().all(|&(m, q)| m > 32 << 10 || !large(q)),
                "a dense writer's buffer turned large below 32 KiB"
            );
            hz_core::free(p);
        }
        hz_core::stats().heaps_created
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        // SAFETY: the blocks are ours and live until freed.
        unsafe {
            let (p, _, steps) = grow_by_half(std::ptr::null_mut(), 0, 40 << 10);
            assert_eq!(
                hz_core::stats().heaps_created,
                first,
                "the second thread took a new heap, not the first one's"
            );
            let (m, _) = *steps
                .iter()
                .find(|&&(_, q)| large(q))
                .expect("the buffer never became large");
            assert!(m <= 16 << 10, "the buffer became large at {m} bytes");
            hz_core::free(p);
        }
    })
    .join()
    .unwrap();
}

/// Two buffers grown by turns are no streak: each stays in the small
/// classes up to 32 KiB (a growing move of one breaks the other's), and a
/// block `malloc` gave is not made large by its first growing move.
#[cfg(not(feature = "secure"))]
#[test]
fn buffers_grown_by_turns_stay_small_up_to_32_kib() {
    std::thread::spawn(|| {
        // SAFETY: the blocks are ours and live until freed.
        unsafe {
            let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
            let (mut na, mut nb) = (0, 0);
            while na < 30_000 {
                (a, na, _) = grow_by_half(a, na, na + 1);
                (b, nb, _) = grow_by_half(b, nb, nb + 1);
                for (p, n) in [(a, na), (b, nb)] {
                    assert!(
                        n > 32 << 10 || hz_core::usable_size(p) < 64 << 10,
                        "a buffer grown by turns became large at {n} bytes"
                    );
                }
            }
            hz_core::free(a);
            hz_core::free(b);
            let p = hz_core::malloc(12_000);
            p.write_bytes(3, 12_000);
            let q = hz_core::realloc(p, 18_000);
            assert!(
                hz_core::usable_size(q) < 64 << 10,
                "a first growing move made a block large"
            );
            hz_core::free(q);
        }
    })
    .join()
    .unwrap();
}

/// `GlobalAlloc::realloc` grows a buffer as `Vec` does (doubling, exact
/// layouts) in exact classes below 8 KiB, makes it large when it grows
/// again after a move with at least 8 KiB, and grows it in place from
/// there (E157); `dealloc` with a layout of 8 KiB or more frees a block
/// made large as a large block (the tag, not the layout, says what it
/// is), and one shrunk below 8 KiB is exactly its layout's class again.
#[cfg(not(feature = "secure"))]
#[test]
fn global_realloc_makes_a_doubling_buffer_large_from_8_kib() {
    if !in_child("global_realloc_makes_a_doubling_buffer_large_from_8_kib") {
        return;
    }
    let layout = |n| Layout::from_size_align(n, 8).unwrap();
    // On a thread of its own: its segments hold nothing else.
    std::thread::spawn(move || {
        // SAFETY: p is our live block of layout(n) throughout, its bytes
        // (i % 251); q the block realloc returned, of at least 2n bytes.
        unsafe {
            let mut n = 1024;
            let mut p = HzAlloc.alloc(layout(n));
            assert!(!p.is_null());
            for i in 0..n {
                *p.add(i) = (i % 251) as u8;
            }
            let mut large_at = None;
            while n < 512 << 10 {
                let q = HzAlloc.realloc(p, layout(n), 2 * n);
                assert!(!q.is_null());
                for i in (0..n).step_by(61) {
                    assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} of {n}");
                }
                for i in n..2 * n {
                    *q.add(i) = (i % 251) as u8;
                }
                let usable = hz_core::usable_size(q);
                let large = is_large(q);
                if 2 * n < 8 << 10 {
                    assert_eq!(usable, class_size(2 * n), "{} bytes", 2 * n);
                } else if large {
                    if let Some(m) = large_at {
                        assert_eq!(
                            q,
                            p,
                            "the large buffer moved from {n} to {} bytes ({m})",
                            2 * n
                        );
                    } else {
                        large_at = Some(2 * n);
                    }
                } else {
                    assert!(large_at.is_none(), "{} bytes small again", 2 * n);
                }
                p = q;
                n *= 2;
            }
            assert_eq!(
                large_at,
                Some(16 << 10),
                "the buffer moved from 8 to 16 KiB after its move to 8 KiB"
            );
            // Shrunk below 8 KiB: exactly its class, freed by its layout.
            let r = HzAlloc.realloc(p, layout(n), 5000);
            assert!(!r.is_null() && r != p);
            assert_eq!(hz_core::usable_size(r), class_size(5000));
            for i in (0..5000).step_by(7) {
                assert_eq!(*r.add(i), (i % 251) as u8);
            }
            HzAlloc.dealloc(r, layout(5000));
            // Made large at 16 KiB and freed with that layout: a large
            // block's free (had dealloc trusted the layout, the next block
            // of the class would be this page run).
            let mut p = HzAlloc.alloc(layout(4096));
            let mut n = 4096;
            while n < 16 << 10 {
                p = HzAlloc.realloc(p, layout(n), 2 * n);
                assert!(!p.is_null());
                n *= 2;
            }
            assert_eq!(hz_core::usable_size(p), PAGE, "16 KiB not large");
            HzAlloc.dealloc(p, layout(n));
            for _ in 0..4 {
                let q = HzAlloc.alloc(layout(n));
                assert_eq!(hz_core::usable_size(q), class_size(n));
                HzAlloc.dealloc(q, layout(n));
            }
        }
    })
    .join()
    .unwrap();
}
