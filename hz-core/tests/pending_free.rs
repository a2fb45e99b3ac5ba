//! E108: `free` (C's, and `hz_core::free`) keeps the block it is given as
//! its thread's pending block and pushes the one pending before it into
//! that block's bin. What a program can observe of it: a freed block is
//! reused once the next `free` has pushed it; the pending block goes back
//! with its heap's caches when its thread exits (and so `collect()`
//! returns everything); and a block of another thread that was pending
//! while its bin was closed still goes home when the bin opens, so the
//! closed-bin rule (`closed_bins.rs`, E47) holds.
//!
//! One test in its own binary: it compares the process's statistics, and
//! the threads it starts get fresh heaps.
#![cfg(not(feature = "secure"))]

const SIZE: usize = 48;
const OTHER: usize = 112;

#[test]
fn pending_blocks_are_pushed_by_the_next_free_and_flushed_with_their_heap() {
    // 1. Reuse after the next free, in a fresh thread.
    std::thread::spawn(|| {
        let a = hz_core::malloc(SIZE);
        let b = hz_core::malloc(SIZE);
        assert!(!a.is_null() && !b.is_null());
        // SAFETY: a and b are live blocks of hz.
        unsafe { hz_core::free(a) };
        let c = hz_core::malloc(SIZE);
        assert_ne!(c, a, "a pending block was handed out");
        // SAFETY: b is live; its free pushes a into the bin.
        unsafe { hz_core::free(b) };
        let d = hz_core::malloc(SIZE);
        assert_eq!(d, a, "the next free did not push the pending block");
        // SAFETY: c and d are live.
        unsafe {
            hz_core::free(c);
            hz_core::free(d);
        }
    })
    .join()
    .unwrap();

    // 2. A pending foreign block whose bin was closed goes home when the
    //    bin opens: the thread never hands it out.
    let handed = hz_core::malloc(OTHER) as usize;
    assert_ne!(handed, 0);
    let seen = std::thread::spawn(move || {
        // A pending block of another class first, so that the handed
        // block's free takes the fast path and waits as the pending one.
        let a = hz_core::malloc(SIZE);
        // SAFETY: a is live.
        unsafe { hz_core::free(a) };
        // SAFETY: a live block of hz, handed over to this thread, whose bin
        // of its class is closed here (no malloc of it yet).
        unsafe { hz_core::free(handed as *mut u8) };
        let mut out = Vec::new();
        for _ in 0..4 {
            let p = hz_core::malloc(OTHER);
            out.push(p as usize);
            // SAFETY: p is live.
            unsafe { hz_core::free(p) };
        }
        out
    })
    .join()
    .unwrap();
    assert!(
        !seen.contains(&handed),
        "a block another thread allocated, freed here while its bin was closed, was handed out"
    );

    // 3. The pending block of an exiting thread goes back with its caches.
    hz_core::collect();
    let before = hz_core::stats().allocated;
    std::thread::spawn(|| {
        let v: Vec<usize> = (0..3000).map(|_| hz_core::malloc(SIZE) as usize).collect();
        for &p in &v {
            // SAFETY: live blocks of hz; the last stays pending.
            unsafe { hz_core::free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
    hz_core::collect();
    assert_eq!(
        hz_core::stats().allocated,
        before,
        "blocks stayed allocated after their thread exited and collect() ran"
    );
}
