//! A block of another thread's heap, freed into a bin that its thread has
//! not allocated from yet, goes home instead of into the bin
//! (`heap::free_to_closed_bin`): the thread's next `malloc` of that class
//! must not hand the very same block back, or a thread that frees a block
//! it was handed and then works on blocks of its own keeps writing into a
//! cache line the allocating thread's other blocks share (passive false
//! sharing, Hoard's cache-scratch). The thread's own blocks are still
//! reused at once (in the default build, once the next `free` has pushed
//! them: E108's pending block), and a thread that only frees a class (a
//! consumer) takes other heaps' blocks into its bin again after half a bin
//! of them.
//!
//! One test in its own binary: the threads it starts get fresh heaps.

const SIZE: usize = 40;

#[test]
fn a_handed_over_block_is_not_reused_by_a_fresh_bin() {
    // Neighbours of one class, all allocated here (the main thread's heap).
    let blocks: Vec<usize> = (0..8).map(|_| hz_core::malloc(SIZE) as usize).collect();
    assert!(blocks.iter().all(|&p| p != 0));
    let handed = blocks[3];
    let (first, next) = std::thread::spawn(move || {
        // SAFETY: a live block of hz, handed over to this thread.
        unsafe { hz_core::free(handed as *mut u8) };
        let q = hz_core::malloc(SIZE) as usize;
        // SAFETY: q is live; freeing it must make it the next block out
        // (or the one after, with a free between them: E108).
        unsafe { hz_core::free(q as *mut u8) };
        let r = hz_core::malloc(SIZE) as usize;
        // SAFETY: r is live.
        unsafe { hz_core::free(r as *mut u8) };
        let s = hz_core::malloc(SIZE) as usize;
        // SAFETY: s is live.
        unsafe { hz_core::free(s as *mut u8) };
        (q, [r, s])
    })
    .join()
    .unwrap();
    assert_ne!(first, 0);
    assert_ne!(
        first, handed,
        "the block another thread allocated came straight back out"
    );
    assert!(
        !blocks.contains(&first) && !next.iter().any(|p| blocks.contains(p)),
        "the thread was given one of the other thread's blocks"
    );
    #[cfg(feature = "secure")]
    assert_eq!(
        next[0], first,
        "the thread's own block was not reused at once"
    );
    #[cfg(not(feature = "secure"))]
    assert_eq!(
        next[1], first,
        "the thread's own block was not reused once the next free pushed it"
    );

    // A thread that only frees the class: the first half bin of foreign
    // blocks goes home, then the bin takes them (a later malloc reuses one).
    let many: Vec<usize> = (0..600).map(|_| hz_core::malloc(SIZE) as usize).collect();
    let reused = std::thread::spawn(move || {
        for &p in &many {
            // SAFETY: live blocks of hz, handed over to this thread.
            unsafe { hz_core::free(p as *mut u8) };
        }
        let q = hz_core::malloc(SIZE) as usize;
        // SAFETY: q is live.
        unsafe { hz_core::free(q as *mut u8) };
        many.contains(&q)
    })
    .join()
    .unwrap();
    assert!(
        reused,
        "a consumer's bin never opened to the blocks it was handed"
    );
    for &p in blocks.iter().filter(|&&p| p != handed) {
        // SAFETY: the remaining live blocks of this thread.
        unsafe { hz_core::free(p as *mut u8) };
    }
}
