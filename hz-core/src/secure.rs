//! Hardened mode (cargo feature `secure`): turns heap misuse into a clean
//! abort with one line naming the pointer and the check that failed.
//!
//! Owns: the per-process secret, the allocation-state protocol, link
//! encoding, guard pages, randomised carving and the free fill.
//! May touch: `arena` (tags, block-state bytes), `os`.
//!
//! * **Allocation state** (out of band, one byte per block of every small
//!   span, in a per-arena region): set when a block is handed to the
//!   program, cleared when it is freed, with plain (relaxed) loads and
//!   stores — no locked instruction on the fast path. A free whose byte is
//!   already clear is a double free (or a free of a block never handed out);
//!   `realloc` checks it too. Two threads freeing the same block at the very
//!   same moment may both pass; sequential double frees are always caught.
//! * **Pointer validation** on free: the page tag must say "small block" or
//!   "large block"; a small pointer must sit at a block boundary (else:
//!   interior pointer), a large one at its run's start.
//! * **Encoded links**: the two link words a free block carries (free list /
//!   batch chain, next batch) are stored XOR-ed with a per-process secret
//!   and the slot address; every decoded link must name a small block of hz,
//!   or the process aborts ("corrupted free-list link").
//! * **Guard pages**: the last 4 KiB of every span and large run is
//!   `PROT_NONE` (and the first page of each arena), so a linear overflow
//!   off the end of a span or a large block faults. If the kernel refuses
//!   (map-count limit), the run goes without a guard rather than failing.
//! * **Randomised carving**: a fresh span's blocks are threaded onto its free
//!   list in a random order (Fisher–Yates), so heap layout is not
//!   predictable.
//! * **Fill on free** (`HZ_SECURE_FILL=1`): freed blocks are overwritten with
//!   0xdf, so use-after-free reads see garbage instead of old data.

use crate::arena;
use crate::class::CLASS_SIZE;
use crate::os;
use crate::sync::{AtomicUsize, Ordering::*};
use core::sync::atomic::AtomicU8;

/// Bytes of guard at the end of every run.
pub const GUARD: usize = 4096;

static KEY: AtomicUsize = AtomicUsize::new(0x9e37_79b9_7f4a_7c15);

/// Draws the per-process secret (called once, before the first heap).
pub fn init() {
    let mut k: usize = 0;
    // SAFETY: getrandom writes at most size_of::<usize>() bytes into k.
    let n = unsafe {
        libc::getrandom(
            &mut k as *mut usize as *mut libc::c_void,
            core::mem::size_of::<usize>(),
            0,
        )
    };
    if n != core::mem::size_of::<usize>() as isize {
        k = os::now_ms() as usize ^ (&k as *const usize as usize).rotate_left(29);
    }
    KEY.store(k | 1, Relaxed);
}

/// A random-ish 64-bit seed for a heap's carving RNG.
pub fn seed(id: u32) -> u64 {
    (KEY.load(Relaxed) as u64 ^ ((id as u64) << 32) ^ os::now_ms())
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        | 1
}

#[inline(always)]
pub fn encode(p: *mut u8, slot: *mut u8) -> usize {
    p as usize ^ KEY.load(Relaxed) ^ (slot as usize).rotate_left(23)
}

#[inline(always)]
pub fn decode(v: usize, slot: *mut u8) -> *mut u8 {
    let p = (v ^ KEY.load(Relaxed) ^ (slot as usize).rotate_left(23)) as *mut u8;
    if !p.is_null() && arena::tag_class(arena::lookup(p as usize).0) == 0 {
        fatal_ptr(
            "corrupted free-list link (heap overflow into a free block?) at",
            slot,
        );
    }
    p
}

/// Decodes a plain word (a count), without the pointer check.
#[inline(always)]
pub fn decode_word(v: usize, slot: *mut u8) -> usize {
    v ^ KEY.load(Relaxed) ^ (slot as usize).rotate_left(23)
}

#[cold]
pub fn fatal_ptr(what: &str, p: *const u8) -> ! {
    let mut b = crate::stats::Buf::<160>::new();
    let _ = core::fmt::Write::write_fmt(&mut b, format_args!("{what} {p:p}"));
    // SAFETY: Buf holds only whole UTF-8 pieces written by fmt.
    os::fatal(unsafe { core::str::from_utf8_unchecked(b.as_bytes()) })
}

/// The state byte of small block `p` (tag `t`, arena `a`), or None
/// when `p` is not at a block boundary.
fn state_of(p: usize, t: u64, a: usize) -> Option<&'static AtomicU8> {
    let slot = &arena::ARENAS[a];
    let base = slot.base.load(Relaxed);
    let head = ((p - base) >> crate::PAGE_SHIFT) - arena::tag_offset(t);
    let off = p - base - (head << crate::PAGE_SHIFT);
    let c = arena::tag_class(t); // < 64
                                 // Block index by multiplication with a reciprocal (a division was the
                                 // largest cost of this mode): exact for offsets below 2 MiB.
    let i = ((off as u64 * RECIP[c]) >> 40) as usize;
    if SIZE[c] == 0 || i * SIZE[c] as usize != off || off >= 1 << 21 {
        return None;
    }
    let states = slot.bitmaps.load(Relaxed);
    // SAFETY: each head page owns STATE_BYTES bytes; i < 4096 blocks.
    Some(unsafe { &*states.add(head * arena::STATE_BYTES + i) })
}

/// Class sizes and their reciprocals `ceil(2^40 / size)`, over all 64 values
/// a tag's class field can take (0 past the last class). For `off < 2^21`
/// and sizes below 2^19, `(off * RECIP) >> 40 == off / size`.
static SIZE: [u32; 64] = {
    let mut t = [0u32; 64];
    let mut c = 1;
    while c < crate::class::NUM_CLASSES {
        t[c] = CLASS_SIZE[c];
        c += 1;
    }
    t
};
static RECIP: [u64; 64] = {
    let mut t = [0u64; 64];
    let mut c = 1;
    while c < crate::class::NUM_CLASSES {
        t[c] = (1u64 << 40).div_ceil(CLASS_SIZE[c] as u64);
        c += 1;
    }
    t
};

/// A small block of class `c` is being handed to the program.
#[inline]
pub fn on_alloc(p: *mut u8, c: usize) {
    let (t, a) = arena::lookup(p as usize);
    if arena::tag_class(t) != c {
        fatal_ptr(
            "thread cache returned a block of the wrong class (corruption)",
            p,
        );
    }
    match state_of(p as usize, t, a) {
        Some(st) => {
            // A byte per block: a plain load and store, no locked
            // instruction. (The program's own hand-off of the pointer
            // orders a free after the allocation it undoes.)
            if st.load(Relaxed) != 0 {
                fatal_ptr("block handed out twice (free list corrupted)", p);
            }
            st.store(1, Relaxed);
        }
        None => fatal_ptr("thread cache holds a misaligned block (corruption)", p),
    }
}

/// Validates a free of small block `p` (tag `t`) and marks it free; returns
/// its class.
#[inline]
pub fn on_free_small(p: *mut u8, t: u64, a: usize) -> usize {
    let c = arena::tag_class(t);
    match state_of(p as usize, t, a) {
        None => fatal_ptr("free of an interior pointer", p),
        Some(st) => {
            if st.load(Relaxed) == 0 {
                fatal_ptr("double free (block already free)", p);
            }
            st.store(0, Relaxed);
        }
    }
    if crate::config::CONFIG.secure_fill.load(Relaxed) != 0 {
        // SAFETY: the block is ours again and CLASS_SIZE[c] bytes long.
        unsafe { core::ptr::write_bytes(p, 0xdf, CLASS_SIZE[c] as usize) };
    }
    c
}

/// True when small block `p` is currently handed out.
pub fn is_live(p: *mut u8, t: u64, a: usize) -> bool {
    match state_of(p as usize, t, a) {
        None => false,
        Some(st) => st.load(Relaxed) != 0,
    }
}

/// Makes the last GUARD bytes of `[addr, addr+len)` inaccessible.
pub fn guard(addr: *mut u8, len: usize) {
    // SAFETY: the range is a run we own; its last GUARD bytes hold no data.
    unsafe { os::protect_none(addr.add(len - GUARD), GUARD) };
}

/// Undoes [`guard`] before the run goes back to the page allocator.
pub fn unguard(addr: *mut u8, len: usize) {
    // SAFETY: the range is a run we own.
    if !unsafe { os::protect_rw(addr.add(len - GUARD), GUARD) } {
        fatal_ptr("could not lift a guard page at", addr);
    }
}

/// xorshift64*.
pub fn next_rand(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::{RECIP, SIZE};
    use crate::class::{NUM_CLASSES, SPAN_PAGES};

    #[test]
    fn reciprocal_division_is_exact_over_every_span() {
        for c in 1..NUM_CLASSES {
            let size = SIZE[c] as u64;
            let span = SPAN_PAGES[c] as u64 * crate::PAGE_SIZE as u64;
            let mut off = 0;
            while off < span {
                assert_eq!((off * RECIP[c]) >> 40, off / size, "class {c} offset {off}");
                off += 16;
            }
        }
    }
}
