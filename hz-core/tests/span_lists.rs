//! Blocks a thread cache gives back to their own spans (bin overflow) are
//! kept in each span's free list as a chain of carriers (`heap::span_free`;
//! the head block carries the addresses of up to `carrier_cap` more; 16-byte
//! blocks, and every class in the secure build, form a plain chain), and a
//! refill takes them back carrier by carrier (`heap::fill_from_spans`). Many
//! frees and reallocations of one class must still hand every block out
//! once: every live block keeps its own contents, and no address is live
//! twice.

use std::collections::HashSet;

fn fill(p: *mut u8, size: usize, tag: u32) {
    let b = tag.to_le_bytes();
    for i in 0..size {
        // SAFETY: p is a live block of at least `size` bytes.
        unsafe { *p.add(i) = b[i % 4] };
    }
}

fn intact(p: *mut u8, size: usize, tag: u32) -> bool {
    let b = tag.to_le_bytes();
    // SAFETY: p is a live block of at least `size` bytes.
    (0..size).all(|i| unsafe { *p.add(i) } == b[i % 4])
}

#[test]
fn span_free_lists_hand_each_block_out_once() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // 16 B (no carried blocks), 48 B (3 per carrier), 256 B, 1 KiB, 3 KiB.
    for size in [16usize, 48, 256, 1024, 3072] {
        let mut live: Vec<(*mut u8, u32)> = Vec::new();
        let mut tag = 1u32;
        for round in 0..4 {
            // Fill up: thousands of blocks, far more than a bin holds.
            while live.len() < 6000 {
                let p = hz_core::malloc(size);
                assert!(!p.is_null());
                fill(p, size, tag);
                live.push((p, tag));
                tag += 1;
            }
            // Give back two in three, scattered: the bin overflows again and
            // again, and most of them go back to their spans' carriers.
            let mut keep = Vec::new();
            for (p, t) in live.drain(..) {
                if next() % 3 == 0 {
                    keep.push((p, t));
                } else {
                    assert!(
                        intact(p, size, t),
                        "size {size} round {round}: block {p:p} overwritten"
                    );
                    // SAFETY: p is live, handed out above.
                    unsafe { hz_core::free(p) };
                }
            }
            live = keep;
            let set: HashSet<usize> = live.iter().map(|&(p, _)| p as usize).collect();
            assert_eq!(
                set.len(),
                live.len(),
                "size {size}: an address is live twice"
            );
        }
        for (p, t) in live {
            assert!(intact(p, size, t), "size {size}: block {p:p} overwritten");
            // SAFETY: p is live.
            unsafe { hz_core::free(p) };
        }
    }
}
