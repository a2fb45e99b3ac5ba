//! Spans of the classes above 2 KiB (except the aligned twins of 4–32 KiB,
//! which serve over-aligned requests) start their blocks at a per-span
//! colour (a multiple of 64 bytes below 4 KiB) in the default build, so
//! that the first lines of their blocks do not all fall into the same
//! cache sets (E56, E76). Their blocks are then only 64-byte aligned, so
//! requests aligned to more must still get aligned blocks (from an aligned
//! twin or as page runs).

/// Allocates `count` blocks of `size` bytes and asserts that they start
/// on cache lines at `min` or more distinct offsets modulo `modulus`.
#[cfg(not(feature = "secure"))]
fn assert_spread(size: usize, count: usize, modulus: usize, min: usize) {
    let blocks: Vec<*mut u8> = (0..count).map(|_| hz_core::malloc(size)).collect();
    let mut offsets: Vec<usize> = blocks.iter().map(|&p| p as usize % modulus).collect();
    for &o in &offsets {
        assert_eq!(
            o % 64,
            0,
            "a block of {size} B not on a cache-line boundary"
        );
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert!(
        offsets.len() >= min,
        "{count} blocks of {size} B start at only {} offsets modulo {modulus}: {offsets:?}",
        offsets.len()
    );
    for p in blocks {
        // SAFETY: live blocks of hz.
        unsafe { hz_core::free(p) };
    }
}

/// Blocks of 100 000 bytes from many spans start at many different
/// offsets within a 4 KiB page (without colours: all at offset 0).
#[test]
#[cfg(not(feature = "secure"))]
fn big_blocks_start_at_many_colours() {
    assert_spread(100_000, 256, 4096, 8);
}

/// Blocks of the coloured classes from 2 KiB to 32 KiB, from many spans,
/// start at many offsets modulo the class's power-of-two factor (without
/// colours: 2500 B blocks (class 2560 = 5 * 512, 25 a span) all at
/// multiples of 512; 4000, 20 000 and 30 000 B blocks (classes 4096,
/// 5 * 4096 and 32 768) all at multiples of 4096).
#[test]
#[cfg(not(feature = "secure"))]
fn mid_blocks_start_at_many_colours() {
    assert_spread(2500, 25 * 64, 512, 4);
    assert_spread(4000, 15 * 64, 4096, 4);
    assert_spread(20_000, 9 * 64, 4096, 4);
    assert_spread(30_000, 9 * 64, 4096, 4);
}

/// Every alignment up to a page is honoured for sizes around and above
/// 32 KiB, by `malloc_aligned`, `calloc_aligned` and `realloc_aligned`,
/// and the whole block is usable.
#[test]
fn aligned_requests_of_big_sizes_are_aligned() {
    let mut live = Vec::new();
    for round in 0..4 {
        for size in [
            2500,
            3000,
            20_000,
            24_576,
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

/// Requests of 2–32 KiB aligned to more than 64 bytes get a block of the
/// power of two at or above them from its aligned twin (uncoloured spans),
/// in the default build: `usable_size` is that power of two (a page run's
/// would be the size asked), and the blocks are aligned. (The secure build
/// does not colour: the first class that is a multiple of the alignment.)
#[test]
#[cfg(not(feature = "secure"))]
fn over_aligned_mid_requests_get_power_of_two_blocks() {
    for (size, align, want) in [
        (2049usize, 128usize, 4096usize),
        (2500, 4096, 4096),
        (4000, 256, 4096),
        (4096, 4096, 4096),
        (5000, 1024, 8192),
        (20_000, 128, 32_768),
        (32_768, 32_768, 32_768),
    ] {
        let p = hz_core::malloc_aligned(size, align);
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "size {size} align {align}");
        // SAFETY: p is a live block of hz.
        let usable = unsafe { hz_core::usable_size(p) };
        assert_eq!(usable, want, "size {size} align {align}");
        // SAFETY: p has `want` usable bytes.
        unsafe { std::ptr::write_bytes(p, 0x5a, want) };
        // SAFETY: live block of hz.
        unsafe { hz_core::free(p) };
    }
}
