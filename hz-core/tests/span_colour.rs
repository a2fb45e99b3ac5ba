//! Spans of the classes above 32 KiB start their blocks at a per-span
//! colour (a multiple of 64 bytes below 4 KiB) in the default build, so
//! that the first lines of big blocks do not all fall into the same cache
//! sets (E56). Their blocks are then only 64-byte aligned, so requests
//! aligned to more must still get aligned blocks (served as page runs).

/// Blocks of 100 000 bytes from many spans start at many different
/// offsets within a 4 KiB page (without colours: all at offset 0).
#[test]
#[cfg(not(feature = "secure"))]
fn big_blocks_start_at_many_colours() {
    let blocks: Vec<*mut u8> = (0..256).map(|_| hz_core::malloc(100_000)).collect();
    let mut offsets: Vec<usize> = blocks.iter().map(|&p| p as usize % 4096).collect();
    for &o in &offsets {
        assert_eq!(o % 64, 0, "a block not on a cache-line boundary");
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert!(
        offsets.len() >= 8,
        "256 blocks of 100 000 B start at only {} offsets within a page: {offsets:?}",
        offsets.len()
    );
    for p in blocks {
        // SAFETY: live blocks of hz.
        unsafe { hz_core::free(p) };
    }
}

/// Every alignment up to a page is honoured for sizes around and above
/// 32 KiB, by `malloc_aligned`, `calloc_aligned` and `realloc_aligned`,
/// and the whole block is usable.
#[test]
fn aligned_requests_of_big_sizes_are_aligned() {
    let mut live = Vec::new();
    for round in 0..4 {
        for size in [
            32 << 10,
            (32 << 10) + 1,
            40_000,
            50_000,
            65_536,
            100_000,
            131_072,
        ] {
            for align in [16usize, 64, 128, 256, 1024, 4096, 65_536] {
                let p = if round % 2 == 0 {
                    hz_core::malloc_aligned(size, align)
                } else {
                    hz_core::calloc_aligned(size, align)
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "size {size} align {align}: {p:?}");
                // SAFETY: p has `size` bytes.
                unsafe { std::ptr::write_bytes(p, 0x6b, size) };
                // SAFETY: p is live, allocated with `align`.
                let q = unsafe { hz_core::realloc_aligned(p, size + 5000, align) };
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                // SAFETY: q has size + 5000 bytes, the first `size` kept.
                unsafe {
                    assert_eq!(*q.add(size - 1), 0x6b);
                    std::ptr::write_bytes(q, 0x6c, size + 5000);
                }
                live.push(q);
            }
        }
        if round % 2 == 1 {
            for p in live.drain(..) {
                // SAFETY: live blocks of hz.
                unsafe { hz_core::free(p) };
            }
        }
    }
}
