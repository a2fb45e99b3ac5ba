//! Hardened mode (cargo feature `secure`): turns heap misuse into a clean
//! abort with one line naming the pointer and the check that failed.
//!
//! Owns: the per-process secret, the allocation bitmaps' protocol, link
//! encoding, guard pages, randomised carving and the free fill.
//! May touch: `arena` (tags, bitmaps), `os`.
//!
//! * **Allocation bitmap** (out of band, one bit per block of every small
//!   span, in a per-arena region): set by an atomic OR when a block is handed
//!   to the program, cleared by an atomic AND when it is freed. A free whose
//!   bit is already clear is a double free (or a free of a block never
//!   handed out); `realloc` checks the bit too.
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
use crate::sync::{AtomicU64, AtomicUsize, Ordering::*};

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

/// The bitmap word and bit of small block `p` (tag `t`, arena `a`), or None
/// when `p` is not at a block boundary.
fn bit_of(p: usize, t: u64, a: usize) -> Option<(&'static AtomicU64, u64)> {
    let slot = &arena::ARENAS[a];
    let base = slot.base.load(Relaxed);
    let head = ((p - base) >> crate::PAGE_SHIFT) - arena::tag_offset(t);
    let off = p - base - (head << crate::PAGE_SHIFT);
    let size = CLASS_SIZE[arena::tag_class(t)] as usize;
    if !off.is_multiple_of(size) {
        return None;
    }
    let i = off / size;
    let words = slot.bitmaps.load(Relaxed);
    // SAFETY: each head page owns BITMAP_WORDS words; i < 4096 blocks.
    let w = unsafe { &*words.add(head * arena::BITMAP_WORDS + i / 64) };
    Some((w, 1u64 << (i % 64)))
}

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
    match bit_of(p as usize, t, a) {
        Some((w, m)) => {
            if w.fetch_or(m, AcqRel) & m != 0 {
                fatal_ptr("block handed out twice (free list corrupted)", p);
            }
        }
        None => fatal_ptr("thread cache holds a misaligned block (corruption)", p),
    }
}

/// Validates a free of small block `p` (tag `t`) and marks it free; returns
/// its class.
#[inline]
pub fn on_free_small(p: *mut u8, t: u64, a: usize) -> usize {
    let c = arena::tag_class(t);
    match bit_of(p as usize, t, a) {
        None => fatal_ptr("free of an interior pointer", p),
        Some((w, m)) => {
            if w.fetch_and(!m, AcqRel) & m == 0 {
                fatal_ptr("double free (block already free)", p);
            }
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
    match bit_of(p as usize, t, a) {
        None => false,
        Some((w, m)) => w.load(Acquire) & m != 0,
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
