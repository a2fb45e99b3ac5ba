//! Single-thread malloc+free pairs, 16..1008 bytes, hz vs the mimalloc crate
//! vs System, side by side in one process, interleaved, 3 repetitions.
//! 64 blocks stay live (a ring of slots), so every free is of a block
//! allocated 64 pairs earlier.
//!
//! `cargo run --release -p hz-bench --example pairs [PAIRS]`
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, n: usize) -> u64 {
    let mut sum = 0u64;
    let mut ptrs = [std::ptr::null_mut::<u8>(); 64];
    let size_of = |i: usize| 16 + ((i * 7) % 63) * 16;
    for i in 0..n {
        let slot = i & 63;
        // SAFETY: sizes are non-zero with alignment 8; each freed pointer was
        // allocated by `a` with the layout recomputed here.
        unsafe {
            if !ptrs[slot].is_null() {
                a.dealloc(
                    ptrs[slot],
                    Layout::from_size_align_unchecked(size_of(i - 64), 8),
                );
            }
            let p = a.alloc(Layout::from_size_align_unchecked(size_of(i), 8));
            assert!(!p.is_null());
            *p = i as u8;
            sum += p as u64 & 0xff;
            ptrs[slot] = p;
        }
    }
    for (slot, &p) in ptrs.iter().enumerate() {
        if !p.is_null() {
            let i = (n - 64..n).find(|i| i & 63 == slot).unwrap();
            // SAFETY: as above.
            unsafe { a.dealloc(p, Layout::from_size_align_unchecked(size_of(i), 8)) };
        }
    }
    sum
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("PAIRS"))
        .unwrap_or(20_000_000);
    for rep in 0..3 {
        for name in ["hz", "mimalloc", "system"] {
            let t = Instant::now();
            let s = match name {
                "hz" => pairs(&hz_core::HzAlloc, n),
                "mimalloc" => pairs(&mimalloc::MiMalloc, n),
                _ => pairs(&System, n),
            };
            let dt = t.elapsed().as_secs_f64();
            println!(
                "rep {rep} {name:9} {:6.2} ns per malloc+free pair (checksum {s})",
                dt * 1e9 / n as f64
            );
        }
    }
}
