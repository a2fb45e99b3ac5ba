//! A thread that frees other threads' blocks of a class it never allocates
//! (a consumer, a pipeline's last stage) holds at most half a bin of them
//! (`heap::free_only_cap`, E126): a bin that a `free` opened empties
//! whole when it overflows and the spill array is flushed behind it,
//! instead of keeping half a bin and a spill array from their owners.
//!
//! One test in its own binary: the counts it reads are process-wide.

use hz_core::class::{class_of, BIN_CAP};

const SIZE: usize = 40;
const N: usize = 2_000;

#[test]
fn a_free_only_thread_holds_at_most_half_a_bin() {
    let cap = BIN_CAP[class_of(SIZE)] as usize;
    let many: Vec<usize> = (0..N).map(|_| hz_core::malloc(SIZE) as usize).collect();
    assert!(many.iter().all(|&p| p != 0));
    let handed = many.clone();
    let mut most_held = 0;
    let held_at_end = std::thread::spawn(move || {
        let sent0 = hz_core::stats().remote_frees_sent;
        for (i, &p) in handed.iter().enumerate() {
            // SAFETY: live blocks of hz, handed over to this thread.
            unsafe { hz_core::free(p as *mut u8) };
            let held = i as u64 + 1 - (hz_core::stats().remote_frees_sent - sent0);
            most_held = most_held.max(held);
        }
        (most_held, handed.len())
    })
    .join()
    .unwrap();
    let (most_held, freed) = held_at_end;
    assert_eq!(freed, N);
    // Half a bin, and the block the next free pushes (E108's pending one).
    assert!(
        most_held as usize <= cap / 2 + 1,
        "a thread that only frees the class held {most_held} of its blocks (bin of {cap})"
    );
    assert!(
        most_held as usize >= cap / 4,
        "the thread sent every block home one by one ({most_held} held at most)"
    );

    // What it sent went where the owner can use it again.
    let again: Vec<usize> = (0..N).map(|_| hz_core::malloc(SIZE) as usize).collect();
    let back = again.iter().filter(|p| many.contains(p)).count();
    assert!(
        back >= N / 2,
        "only {back} of {N} blocks freed by the other thread came back"
    );
    for &p in &again {
        // SAFETY: live blocks of this thread.
        unsafe { hz_core::free(p as *mut u8) };
    }
}
