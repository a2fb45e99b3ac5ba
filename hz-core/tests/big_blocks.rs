//! Blocks of 2 MiB and more from `malloc` (the page allocator's normal
//! zone, E70) that a program frees and takes again at other lengths: their
//! free runs stay resident while the big blocks in use are below their
//! recent peak (E71), instead of being purged by the 32 MiB dirty cap and
//! faulted in again; what the program wrote is intact throughout.
//!
//! Runs in a child process with purging by age held off, so that only the
//! dirty cap purges and no other test's blocks count against it.
#![cfg(not(feature = "secure"))]

#[path = "reliability/child.rs"]
mod child;

use child::{Rng, MIB};

const MARKER: &str = "HZ_BIG_BLOCKS_CHILD";

/// Twelve slots, each freed or filled with a block of 2–8 MiB written
/// whole, at random: about 30 MiB in use, 5 MiB freed per free. Before
/// E71, about 40% of the bytes freed were purged (the fragments that fit
/// no next block pass the 32 MiB cap within a few frees).
#[test]
fn cycled_big_blocks_stay_resident() {
    if !child::in_child(
        MARKER,
        "cycled_big_blocks_stay_resident",
        &[("HZ_PURGE_DELAY_MS", "1000000")],
        &[
            "HZ_PURGE_MAX_DIRTY_MB",
            "HZ_PURGE_MAX_DIRTY_LARGE_MB",
            "HZ_THP",
        ],
    ) {
        return;
    }
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut slot: [(usize, usize); 12] = [(0, 0); 12];
    let before = hz_core::stats().purged_bytes;
    let mut freed = 0;
    for _ in 0..400 {
        let k = rng.below(12) as usize;
        let (p, n) = slot[k];
        if p != 0 {
            // SAFETY: a live block of n bytes, written with k + 1.
            unsafe {
                let b = core::slice::from_raw_parts(p as *const u8, n);
                assert!(
                    b[0] == k as u8 + 1 && b[n / 2] == k as u8 + 1 && b[n - 1] == k as u8 + 1,
                    "block {k} lost what was written"
                );
                hz_core::free(p as *mut u8);
            }
            freed += n;
            slot[k] = (0, 0);
        } else {
            let n = 2 * MIB + rng.below(6 * MIB as u64) as usize;
            let p = hz_core::malloc(n);
            assert!(!p.is_null());
            // SAFETY: p has n bytes.
            unsafe { core::ptr::write_bytes(p, k as u8 + 1, n) };
            slot[k] = (p as usize, n);
        }
    }
    let purged = (hz_core::stats().purged_bytes - before) as usize;
    assert!(
        freed >= 400 * MIB,
        "only {} MiB freed: the pattern changed",
        freed / MIB
    );
    assert!(
        purged <= freed / 20,
        "{} MiB purged of {} MiB freed while cycling big blocks within their peak",
        purged / MIB,
        freed / MIB
    );
    for (p, _) in slot {
        // SAFETY: null or a live block.
        unsafe { hz_core::free(p as *mut u8) };
    }
}
