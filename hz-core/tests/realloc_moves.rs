//! `realloc` moves big blocks with `mremap`. The range a block leaves must
//! never be unmapped, not even for a moment: another thread's `mmap` could
//! be placed in the hole and then be overwritten when hz maps the range
//! again. (Seen in hz-bench's realloc workload: glibc put a new thread's
//! stack there, and the thread died in `__ctype_init`.)
//!
//! One thread grows blocks by `realloc` so that they move (a block taken
//! right after each one stops growth in place); another keeps asking `mmap`
//! for 64 KiB at the address being moved out of (a hint, not `MAP_FIXED`:
//! the kernel honours it only if the range is unmapped). The hint must
//! never be honoured. With the old `mremap` + re-`mmap` it was, and the
//! process died of SIGSEGV in 2 of 3 runs (the mapping placed in the hole
//! was replaced, then unmapped from under hz). The test binary's own
//! allocator is the system one; only the blocks under test come from hz.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// The range the mover is moving a block out of (0: none).
static MOVING: AtomicUsize = AtomicUsize::new(0);

/// Asks the kernel for 64 KiB at the range being moved out of. Outside a
/// hole the hint is taken elsewhere and the mapping dropped; placed in the
/// range, it is filled, the other thread may run, and it is checked.
/// Returns (placed in the range, bytes of it that lost what was written).
fn map_at_moving_range() -> (bool, usize) {
    let hint = MOVING.load(Relaxed);
    if hint == 0 {
        std::thread::yield_now();
        return (false, 0);
    }
    const LEN: usize = 64 << 10;
    // SAFETY: a private anonymous mapping, placed where the kernel likes
    // (without MAP_FIXED the hint cannot replace anything).
    unsafe {
        let p = libc::mmap(
            hint as *mut libc::c_void,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let placed = p as usize == hint;
        let mut lost = 0;
        if placed {
            let b = p as *mut u8;
            std::ptr::write_bytes(b, 0x5a, LEN);
            libc::sched_yield();
            lost = (0..LEN)
                .filter(|&i| b.add(i).read_volatile() != 0x5a)
                .count();
        }
        libc::munmap(p, LEN);
        (placed, lost)
    }
}

#[test]
fn realloc_moves_never_unmap_the_old_range() {
    let stop = Arc::new(AtomicBool::new(false));
    let mapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut placed, mut lost) = (0, 0);
            while !stop.load(Relaxed) {
                let (p, l) = map_at_moving_range();
                placed += p as usize;
                lost += l;
            }
            (placed, lost)
        })
    };
    let mut moves = 0;
    for round in 0..4000 {
        let mut size = MIB + 4096 * (round % 7);
        let mut p = hz_core::malloc(size);
        assert!(!p.is_null());
        // SAFETY: p has `size` bytes.
        unsafe { std::ptr::write_bytes(p, 0x77, size) };
        let mut blockers = Vec::new();
        while size < 12 * MIB {
            // A block right after p's run, so the next growth cannot happen
            // in place.
            blockers.push(hz_core::malloc(200 << 10));
            let next = size * 2;
            MOVING.store(p as usize, Relaxed);
            // SAFETY: p is live with `size` bytes written.
            let q = unsafe { hz_core::realloc(p, next) };
            MOVING.store(0, Relaxed);
            assert!(!q.is_null());
            if q != p {
                moves += 1;
            }
            // SAFETY: q has `next` bytes; the first `size` were written.
            unsafe {
                assert_eq!(*q, 0x77, "realloc lost the block's first byte");
                assert_eq!(*q.add(size - 1), 0x77, "realloc lost the block's last byte");
                std::ptr::write_bytes(q.add(size), 0x77, next - size);
            }
            p = q;
            size = next;
        }
        // SAFETY: live blocks of hz.
        unsafe {
            hz_core::free(p);
            for b in blockers {
                hz_core::free(b);
            }
        }
    }
    stop.store(true, Relaxed);
    let (placed, lost) = mapper.join().unwrap();
    // Moves split the arena's mapping; the pieces must merge back (or the
    // process would run into vm.max_map_count).
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count();
    println!("{maps} mappings in the process after the moves");
    assert!(
        maps < 1000,
        "{maps} mappings: moves fragment the address space"
    );
    println!("{moves} moves by realloc; another thread's mmap placed inside a range being moved out of: {placed} times");
    assert!(
        moves > 150,
        "only {moves} moves: the test did not exercise mremap"
    );
    assert_eq!(
        lost, 0,
        "{lost} bytes of another thread's mapping were overwritten while realloc moved a block"
    );
    assert_eq!(
        placed, 0,
        "another thread's mmap was placed inside a range realloc was moving a block out of: the range was unmapped for a moment"
    );
}

/// Moves 8 MiB of a reservation committed by `mprotect` (as hz's arena is)
/// with `MREMAP_DONTUNMAP`, writes the source again and purges it: whether
/// it then reads zero, as Linux documents (qemu-user 7.2 keeps the bytes:
/// docs/RELIABILITY.md §7).
fn source_purges_after_dontunmap() -> bool {
    const LEN: usize = 8 * MIB;
    // SAFETY: a private reservation of the test's own; every access stays
    // in its committed part, and it is unmapped at the end.
    unsafe {
        let res = libc::mmap(
            std::ptr::null_mut(),
            4 * LEN,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        assert_ne!(res, libc::MAP_FAILED);
        let src = (res as *mut u8).add(LEN);
        let dst = src.add(2 * LEN);
        for r in [src, dst] {
            assert_eq!(
                libc::mprotect(r.cast(), LEN, libc::PROT_READ | libc::PROT_WRITE),
                0
            );
        }
        std::ptr::write_bytes(src, 0x41, LEN);
        let moved = libc::mremap(
            src.cast(),
            LEN,
            LEN,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
            dst as *mut libc::c_void,
        ) == dst as *mut libc::c_void;
        let sound = moved && *dst.add(LEN - 1) == 0x41 && {
            std::ptr::write_bytes(src, 0x42, LEN);
            libc::madvise(src.cast(), LEN, libc::MADV_DONTNEED) == 0
                && *src.add(LEN / 2) == 0
                && *src.add(100) == 0
        };
        libc::munmap(res, 4 * LEN);
        sound
    }
}

/// hz moves a big block's pages only where the kernel honours
/// `MREMAP_DONTUNMAP` (`os::dontunmap_sound`, probed on one page): its
/// answer must be what a move of 8 MiB the way hz's arena is mapped shows.
/// Natively both say yes; under qemu-user 7.2 (`scripts/cross.sh`) both
/// say no, and `realloc` copies.
#[test]
fn the_dontunmap_probe_agrees_with_a_move_of_8_mib() {
    let observed = source_purges_after_dontunmap();
    println!("MREMAP_DONTUNMAP sources purge as documented: {observed}");
    assert_eq!(hz_core::os::dontunmap_sound(), observed);
}
