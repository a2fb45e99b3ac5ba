//! `Floor`: about the least a Rust global allocator can do per call, as a
//! measuring stick for the in-process workloads (docs/PERFORMANCE.md M37), the
//! in-process twin of `c/floor_alloc.c` (M24). It is not an allocator to use:
//! memory never goes back to the system, a freed block joins the freeing
//! thread's list whoever allocated it (no owner, no remote queue, no bound),
//! and blocks aligned to more than 16 bytes are never reused.
//!
//! - Classes: 16, 32, 48, 64 bytes, then four per doubling up to 256 MiB; the
//!   class comes from the `Layout`, so `dealloc` reads no metadata.
//! - Per thread and class a LIFO stack of pointers (up to 64 Ki of them;
//!   a block freed onto a full stack is dropped), so that `dealloc` touches
//!   neither the block nor any metadata, in a const-initialised
//!   `thread_local!`; the stacks live in one `MAP_NORESERVE` mapping per
//!   thread, made at its first `dealloc` (and never unmapped).
//! - Fresh blocks by bump pointer from a per-thread chunk per class (64 KiB,
//!   or the block's size rounded up to 64 KiB), so a class's blocks sit
//!   together as in any size-segregated allocator; one atomic add takes a
//!   chunk from a `MAP_NORESERVE` reservation shared by every class and
//!   thread, so chunks fill the address space densely (as mimalloc's pages
//!   fill its arenas). With `HZ_FLOOR_THP=1` the reservation is advised
//!   `MADV_HUGEPAGE`, so the floor can be read with and without transparent
//!   huge pages. Blocks aligned to more than 16 bytes have a chunk of their
//!   own kind.
//!
//! Chosen for a workload child by `HZ_BENCH_GLOBAL=floor` (through
//! [`crate::allocs::Switch`]), or by `__workload floor ...` for the workloads
//! that take the allocator as a parameter.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Classes 0..=3 are 16..64 bytes; then four per doubling from 64 B to 256 MiB.
const NCLASS: usize = 4 + 4 * 22;
/// Largest size served from a class; bigger requests are mapped on their own.
const MAX_CLASS_SIZE: usize = 256 << 20;
const CHUNK: usize = 64 << 10;
const HUGE: usize = 2 << 20;
const RESERVE: usize = 1 << 40;

static BASE: AtomicPtr<u8> = AtomicPtr::new(null_mut());
/// Bytes of the reservation handed out as chunks.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Bytes reserved (`RESERVE`, or less where the system refused it): the
/// least any racing first call mapped, so never more than the winner's.
static LEN: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Pointers a class's stack holds.
const STACK: usize = 64 << 10;

struct Local {
    /// `NCLASS` stacks of `STACK` pointers each; null until the first dealloc.
    stacks: *mut *mut u8,
    top: [u32; NCLASS],
    /// Bump range per class (then one for aligned blocks).
    cur: [usize; NCLASS + 1],
    lim: [usize; NCLASS + 1],
}

thread_local! {
    static LOCAL: UnsafeCell<Local> = const {
        UnsafeCell::new(Local {
            stacks: null_mut(),
            top: [0; NCLASS],
            cur: [0; NCLASS + 1],
            lim: [0; NCLASS + 1],
        })
    };
}

/// The class serving `n` bytes (`1 <= n <= MAX_CLASS_SIZE`).
#[inline]
fn class_of(n: usize) -> usize {
    if n <= 64 {
        return if n <= 16 { 0 } else { n.div_ceil(16) - 1 };
    }
    let s = n - 1;
    let e = (usize::BITS - 1 - s.leading_zeros()) as usize; // 6.. for n > 64
    4 + (e - 6) * 4 + ((s >> (e - 2)) & 3)
}

/// The size of class `c` (at least 16, a multiple of 16).
#[inline]
fn class_size(c: usize) -> usize {
    if c < 4 {
        return (c + 1) << 4;
    }
    let e = (c - 4) / 4 + 6;
    (4 + ((c - 4) & 3) + 1) << (e - 2)
}

/// The reservation's base, mapped at the first call; null if no mapping of
/// at least 1 GiB could be made (valgrind, for one, refuses 1 TiB).
fn base() -> *mut u8 {
    let b = BASE.load(Ordering::Acquire);
    if !b.is_null() {
        return b;
    }
    let mut len = RESERVE;
    let m = loop {
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks; MAP_NORESERVE so it commits nothing until written.
        let m = unsafe {
            libc::mmap(
                null_mut(),
                len + HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if m != libc::MAP_FAILED {
            break m;
        }
        if len <= 1 << 30 {
            return null_mut();
        }
        len /= 2;
    };
    let aligned = (m as usize).next_multiple_of(HUGE) as *mut u8;
    // SAFETY: getenv with a NUL-terminated name; it does not allocate.
    let thp = unsafe {
        let v = libc::getenv(c"HZ_FLOOR_THP".as_ptr());
        !v.is_null() && *v == b'1' as libc::c_char
    };
    if thp {
        // SAFETY: advising a range of the mapping made above.
        unsafe { libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE) };
    }
    // The length is published before the base (the base's Release orders
    // it). Racing first calls may map different lengths (one may find less
    // address space left); keeping the least keeps any carving inside the
    // winner's mapping.
    LEN.fetch_min(len, Ordering::Relaxed);
    match BASE.compare_exchange(null_mut(), aligned, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => aligned,
        Err(winner) => {
            // SAFETY: unmapping this call's own mapping, which nobody else saw.
            unsafe { libc::munmap(m, len + HUGE) };
            winner
        }
    }
}

/// `n` bytes aligned to `align` (at most 2 MiB) from the thread's chunk for
/// class `r` (`NCLASS`: aligned blocks).
fn carve(l: &mut Local, r: usize, n: usize, align: usize) -> *mut u8 {
    let mut start = l.cur[r].next_multiple_of(align);
    if l.cur[r] == 0 || start + n > l.lim[r] {
        let want = (n + align).next_multiple_of(CHUNK);
        let off = NEXT.fetch_add(want, Ordering::Relaxed);
        let b = base();
        if b.is_null() || off + want > LEN.load(Ordering::Relaxed) {
            return null_mut();
        }
        l.cur[r] = b as usize + off;
        l.lim[r] = l.cur[r] + want;
        start = l.cur[r].next_multiple_of(align);
    }
    l.cur[r] = start + n;
    start as *mut u8
}

/// The measuring-stick allocator; see the module documentation.
pub struct Floor;

// SAFETY: alloc returns blocks of at least `size` bytes at the requested
// alignment, from memory nobody else holds (carved once, or taken off a stack
// it was put on by dealloc); dealloc puts a block on a stack only under the
// class its layout names, which is the class alloc carved it for.
unsafe impl GlobalAlloc for Floor {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = l.size().max(1);
        if n > MAX_CLASS_SIZE || l.align() > HUGE {
            return big_alloc(n, l.align());
        }
        LOCAL.with(|cell| {
            // SAFETY: the thread's own state; GlobalAlloc calls do not nest
            // within one thread, so no other reference to it is live.
            let local = unsafe { &mut *cell.get() };
            if l.align() > 16 {
                return carve(local, NCLASS, n, l.align());
            }
            let c = class_of(n);
            let t = local.top[c] as usize;
            if t != 0 {
                local.top[c] = (t - 1) as u32;
                // SAFETY: top[c] > 0 only once the stacks exist; entry
                // c * STACK + t - 1 was written by dealloc.
                return unsafe { *local.stacks.add(c * STACK + t - 1) };
            }
            carve(local, c, class_size(c), 16)
        })
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let n = l.size().max(1);
        if n > MAX_CLASS_SIZE || l.align() > HUGE {
            // SAFETY: p is the mapping big_alloc made for this layout.
            unsafe { big_free(p, n, l.align()) };
            return;
        }
        if l.align() > 16 {
            return; // never reused
        }
        LOCAL.with(|cell| {
            // SAFETY: as in alloc.
            let local = unsafe { &mut *cell.get() };
            if local.stacks.is_null() {
                local.stacks = map_stacks();
                if local.stacks.is_null() {
                    return; // no room for stacks: the block is dropped
                }
            }
            let c = class_of(n);
            let t = local.top[c] as usize;
            if t < STACK {
                // SAFETY: entry c * STACK + t lies inside the stacks' mapping.
                unsafe { *local.stacks.add(c * STACK + t) = p };
                local.top[c] = (t + 1) as u32;
            }
        })
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let (old, new1) = (l.size().max(1), new.max(1));
        if l.align() <= 16
            && old <= MAX_CLASS_SIZE
            && new1 <= MAX_CLASS_SIZE
            && class_of(old) == class_of(new1)
        {
            return p;
        }
        // SAFETY: the caller guarantees new is a valid size for l's alignment.
        let nl = unsafe { Layout::from_size_align_unchecked(new, l.align()) };
        // SAFETY: forwarded contract.
        let q = unsafe { self.alloc(nl) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes and are
            // distinct; p is given up only after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                self.dealloc(p, l);
            }
        }
        q
    }
}

/// One thread's stacks: `NCLASS * STACK` pointers, committed as written.
#[cold]
fn map_stacks() -> *mut *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel picks.
    let m = unsafe {
        libc::mmap(
            null_mut(),
            NCLASS * STACK * size_of::<usize>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        null_mut()
    } else {
        m.cast()
    }
}

fn big_alloc(n: usize, align: usize) -> *mut u8 {
    let len = n + align + 16;
    // SAFETY: an anonymous private mapping at an address the kernel picks.
    let m = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        return null_mut();
    }
    // The block starts at the first aligned address past the mapping's start;
    // the offset is recomputed in big_free from the same layout, so it is
    // kept in the word just below the block (the alignment leaves room).
    let start = (m as usize + 16).next_multiple_of(align.max(16));
    // SAFETY: start - 8 lies inside the mapping (start >= m + 16).
    unsafe { *((start - 8) as *mut usize) = m as usize };
    start as *mut u8
}

/// # Safety
/// `p` came from `big_alloc(n, align)`.
unsafe fn big_free(p: *mut u8, n: usize, align: usize) {
    // SAFETY: big_alloc stored the mapping's start just below the block.
    let m = unsafe { *((p as usize - 8) as *const usize) };
    // SAFETY: unmapping the whole mapping big_alloc made (same length).
    unsafe { libc::munmap(m as *mut libc::c_void, n + align + 16) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_size_in_order() {
        let mut prev = 0;
        for c in 0..NCLASS {
            let s = class_size(c);
            assert!(s > prev && s.is_multiple_of(16), "class {c} size {s}");
            assert_eq!(class_of(s), c, "size {s}");
            assert_eq!(class_of(prev + 1), c, "size {}", prev + 1);
            prev = s;
        }
        assert_eq!(prev, MAX_CLASS_SIZE);
    }

    #[test]
    fn blocks_keep_their_bytes_and_are_reused() {
        let a = Floor;
        let mut held = Vec::new();
        for i in 1..3000usize {
            let n = (i * 37) % 70_000 + 1;
            let align = if i % 97 == 0 { 256 } else { 8 };
            let l = Layout::from_size_align(n, align).unwrap();
            // SAFETY: a non-zero layout; the block is written within n bytes.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null() && (p as usize).is_multiple_of(align));
            // SAFETY: p holds n bytes.
            unsafe { std::ptr::write_bytes(p, i as u8, n) };
            held.push((p, l, i as u8));
        }
        for &(p, l, v) in &held {
            // SAFETY: p holds l.size() bytes written above.
            let s = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(s.iter().all(|&b| b == v));
        }
        let (p, l, _) = held.pop().unwrap();
        // SAFETY: p came from a.alloc(l) and is given up once.
        unsafe { a.dealloc(p, l) };
        // SAFETY: same layout; LIFO reuse returns the block just freed.
        let q = unsafe { a.alloc(l) };
        assert_eq!(p, q);
        // SAFETY: q holds l.size() bytes; grow it across classes and back.
        unsafe {
            std::ptr::write_bytes(q, 0x5a, l.size());
            let r = a.realloc(q, l, 200_000);
            assert!((0..l.size()).all(|i| *r.add(i) == 0x5a));
            let big = Layout::from_size_align(300 << 20, 64).unwrap();
            let b = a.alloc(big);
            assert!(!b.is_null() && (b as usize).is_multiple_of(64));
            *b.add((300 << 20) - 1) = 1;
            a.dealloc(b, big);
            a.dealloc(r, Layout::from_size_align(200_000, l.align()).unwrap());
        }
        for (p, l, _) in held {
            // SAFETY: each block is given up once.
            unsafe { a.dealloc(p, l) };
        }
    }
}
