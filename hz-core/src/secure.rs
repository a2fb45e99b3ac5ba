//! Hardened mode (cargo feature `secure`): turns heap misuse into a clean
//! abort with one line naming the pointer and the check that failed.
//!
//! Owns: the per-process secret, the free marker, link encoding, the block
//! boundary test, guard pages, randomised carving and the free fill.
//! May touch: `arena` (tags, span metas), `os`.
//!
//! * **Free marker** (in band, checked against a secret): word 0 of every
//!   block in a thread cache holds [`mark`]`(p, class)`, the link encoding
//!   of the class number, so one decode of word 0 tells "free, cached",
//!   "free, end of a list", "free, linked" and "live" apart. `free` aborts
//!   on a block that already decodes as free (double free); `malloc` clears
//!   the marker of the block it hands out (and, with `HZ_SECURE_FILL=1`,
//!   first checks it: a write after free is caught).
//! * **Pointer validation** on free: the page tag must say "small block" or
//!   "large block"; a small pointer must sit on a block boundary of its span
//!   ([`on_boundary`]: one multiplication), a large one at its run's start;
//!   a small block must lie below its span's carving point (every page of
//!   a span has a copy of it in a per-arena table, so the check needs no
//!   walk to the span's head).
//! * **Encoded links**: the link words a free block carries (span free list,
//!   batch chain, next batch, carried blocks and their count) are stored
//!   XOR-ed with the secret and the slot address; every decoded link is
//!   checked (a block of the span's carved part, or a small block of hz) or
//!   the process aborts ("corrupted free-list link").
//! * **Guard pages**: the last 4 KiB of every span and large run is a guard
//!   (`MADV_GUARD_INSTALL`, or `PROT_NONE`), so a linear overflow off the
//!   end of a span or a large block faults. Guards stay when a run is freed.
//! * **Randomised carving**: each batch of blocks a refill puts in a thread
//!   cache is shuffled (Fisher–Yates), so heap layout is not predictable.
//! * **Use-after-free mode** (`HZ_SECURE_FILL=1`): freed blocks are
//!   overwritten with 0xdf (after word 0), so use-after-free reads see
//!   garbage, and a block's marker is checked when it is handed out again,
//!   so a write after free into its first word aborts.

use crate::arena;
use crate::class::CLASS_SIZE;
use crate::os;
use crate::sync::{AtomicUsize, Ordering::*};

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

/// The next block on span `m`'s free list after `b`: the decoded link must
/// lie on a block of the span's carved part (or be null), or the process
/// aborts (a heap overflow clobbered it).
///
/// # Safety
/// `b` is a block on `m`'s free list; `m` is a span the caller holds.
#[inline(always)]
pub unsafe fn next_in_span(b: *mut u8, m: *mut arena::PageMeta) -> *mut u8 {
    // SAFETY: b is a free block (16 bytes at least); m is a live span.
    unsafe {
        let n = decode_word((b as *const usize).read(), b);
        let base = (*m).addr;
        let off = n.wrapping_sub(base);
        if n != 0
            && (off >= (*m).bump.load(Relaxed) as usize - base
                || !multiple_of_class(off, (*m).class as usize & 63))
        {
            fatal_ptr(
                "corrupted free-list link (heap overflow into a free block?) at",
                b,
            );
        }
        n as *mut u8
    }
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

/// The free marker of small block `p` of class `c`: what word 0 of a free
/// block in a thread cache (bin, spill array, carried by a carrier) holds.
/// It is the link encoding of the value `c` (never a valid pointer), so one
/// decode of word 0 tells "free, cached" (`c`), "free, end of a list" (0),
/// "free, linked" (a block of the same class) and "live" (anything else).
#[inline(always)]
pub fn mark(p: *mut u8, c: usize) -> usize {
    encode(c as *mut u8, p)
}

/// `DIV[c] = floor((2^64 - 1) / size) + 1` for every class `c` (0 for the
/// values of a tag's 6-bit class field that name no class, so they never
/// pass). For `off < 2^32`, `size` divides `off` exactly when
/// `off * DIV[c] (mod 2^64) < DIV[c]` (Lemire, Kaser & Kurz, "Faster
/// remainder by direct computation", 2019): one multiplication, no division.
/// 0 for the aligned twins (`class::TWIN_FIRST`..): this build never
/// carves them, so a tag naming one is corrupt and no pointer passes.
static DIV: [u64; 64] = {
    let mut t = [0u64; 64];
    let mut c = 1;
    while c < crate::class::SIZED_CLASSES {
        t[c] = u64::MAX / CLASS_SIZE[c] as u64 + 1;
        c += 1;
    }
    t
};

/// True when `off` (below 2 MiB) is a multiple of class `c`'s size.
#[inline(always)]
fn multiple_of_class(off: usize, c: usize) -> bool {
    let d = DIV[c & 63];
    (off as u64).wrapping_mul(d) < d && off < 1 << 21
}

/// The boundary key of a small span of class `c` whose blocks start at
/// `base`: `base × DIV[c]` (mod 2^64), written beside every page's tag
/// (`arena::set_tags`). For `p` in the span, `p × DIV[c] − key` is
/// `(p − base) × DIV[c]`, so [`on_boundary_key`] needs neither the page's
/// offset in its span nor the span's address (E94). Any value for classes
/// that are not small: [`on_boundary_key`] is only asked for small tags.
#[inline(always)]
pub fn boundary_key(base: usize, c: usize) -> u64 {
    (base as u64).wrapping_mul(DIV[c & 63])
}

/// The divisor of class `c` for [`on_boundary_key`] (`DIV[c]`), written
/// beside every page's tag with the key, so that `free` reads it from the
/// tag's line instead of a table of its own.
#[inline(always)]
pub fn divisor(c: usize) -> u64 {
    DIV[c & 63]
}

/// [`on_boundary`] through the span's boundary key `k` and its class's
/// divisor `d` (the page's third and fourth tag words, [`boundary_key`],
/// [`divisor`]): the same answer, with one multiplication and a
/// subtraction (the offset in the span below 2 MiB keeps it exact).
#[inline(always)]
pub fn on_boundary_key(p: usize, d: u64, k: u64) -> bool {
    (p as u64).wrapping_mul(d).wrapping_sub(k) < d
}

/// True when `p` (tag `t`, a small-block tag) sits on a block boundary
/// of its span. A span starts on a page boundary and is at most 2 MiB
/// (`SPAN_PAGES` ≤ 32, checked at compile time), so the offset in the span
/// comes from the tag alone and stays in the exact range of [`DIV`].
#[inline(always)]
pub fn on_boundary(p: usize, t: u64) -> bool {
    let off = (p & (crate::PAGE_SIZE - 1)) + (arena::tag_offset(t) << crate::PAGE_SHIFT);
    let d = DIV[arena::tag_class(t)];
    (off as u64).wrapping_mul(d) < d
}

const _: () = {
    let mut c = 1;
    while c < crate::class::NUM_CLASSES {
        assert!(crate::class::SPAN_PAGES[c] as usize * crate::PAGE_SIZE <= 1 << 21);
        c += 1;
    }
};

/// Word 0 of block `p`, decoded as a link.
#[inline(always)]
fn word0(p: *mut u8) -> usize {
    // SAFETY: p is a block of hz (its tag says so), at least 16 bytes.
    decode_word(unsafe { (p as *const usize).read_volatile() }, p)
}

/// True when small block `p` of class `c` is free (see [`mark`]): word 0
/// decodes to the marker, to the end of a list, or to a block of the same
/// class and owner (a link). A live block passes for free only if the
/// program stored, by chance, a word that decodes so with the secret key:
/// 2 values in 2^64 for the first two cases; for the third, a value that
/// lands on a span of this class and owner in a 2^47 address space.
fn looks_free(p: *mut u8, c: usize, t: u64) -> bool {
    let v = word0(p);
    v >> 47 == 0 && looks_free_slow(v, c, t)
}

#[cold]
#[inline(never)]
pub fn looks_free_slow(v: usize, c: usize, t: u64) -> bool {
    if v == c || v == 0 {
        return true;
    }
    if v & 15 != 0 {
        return false;
    }
    let (tv, _) = arena::lookup(v);
    arena::tag_class(tv) == c && arena::tag_owner(tv) == arena::tag_owner(t)
}

/// A small block `p` of class `c` leaves a thread cache for the program:
/// its free marker is cleared, and `p` is returned. With `HZ_SECURE_FILL=1` (the use-after-free
/// mode) word 0 must still hold the marker, else the block was written
/// after it was freed. That check is not on by default: the block was
/// often freed on another core, and reading it before handing it out
/// waits for its cache line (a quarter of the time of the remote cells),
/// where the program's own first store does not.
#[inline(always)]
pub fn on_alloc(p: *mut u8, c: usize) -> *mut u8 {
    if fill_mode() {
        // Out of line: only this branch saves a register around a call,
        // the fast path keeps nothing.
        return on_alloc_filled(p, c);
    }
    clear_marker(p);
    p
}

/// [`on_alloc`] with `HZ_SECURE_FILL=1`: block `p` of class `c`, about to
/// be handed out, must still carry its free marker.
#[cold]
#[inline(never)]
fn on_alloc_filled(p: *mut u8, c: usize) -> *mut u8 {
    // SAFETY: p came out of a bin of class c: a block of at least 16 bytes.
    if unsafe { (p as *const usize).read_volatile() } != mark(p, c) {
        bad_pop(p);
    }
    clear_marker(p);
    p
}

/// [`on_alloc`] on the fast path of `malloc`, which the fill mode never
/// takes (`heap::Heap::decoy`): the marker is cleared, no test of the mode.
#[inline(always)]
pub fn on_alloc_fast(p: *mut u8) -> *mut u8 {
    clear_marker(p);
    p
}

#[inline(always)]
fn clear_marker(p: *mut u8) {
    // Volatile: compilers treat a block's contents as dead when it is
    // freed and may drop the program's stores before a free (fat LTO
    // inlines this into Rust callers), so the marker must be cleared by a
    // store that cannot be removed — else a live block whose stores were
    // dropped would still carry the marker when freed.
    // SAFETY: p came out of a bin of class c: a block of at least 16 bytes.
    unsafe { (p as *mut usize).write_volatile(0) };
}

#[cold]
#[inline(never)]
fn bad_pop(p: *mut u8) -> ! {
    fatal_ptr(
        "free block modified after free (use after free, or thread cache corrupted) at",
        p,
    )
}

/// `KEY ^ rotl(p, 23)`: the mask that [`mark`] and link encoding use for
/// word 0 of block `p`.
#[inline(always)]
pub fn mask0(p: *mut u8) -> usize {
    KEY.load(Relaxed) ^ (p as usize).rotate_left(23)
}

#[cold]
#[inline(never)]
pub fn never_carved(p: *mut u8) -> ! {
    fatal_ptr("free of a pointer hz never handed out (not yet carved)", p)
}

#[cold]
#[inline(never)]
pub fn interior(p: *mut u8) -> ! {
    fatal_ptr("free of an interior pointer", p)
}

#[cold]
#[inline(never)]
pub fn double_free(p: *mut u8) -> ! {
    fatal_ptr("double free (block already free)", p)
}

#[cold]
#[inline(never)]
pub fn fill(p: *mut u8, c: usize) {
    // Word 0 already holds the free marker: the fill starts after it.
    // SAFETY: the block is ours again and CLASS_SIZE[c] (>= 16) bytes long.
    unsafe { core::ptr::write_bytes(p.add(8), 0xdf, CLASS_SIZE[c & 63] as usize - 8) };
}

/// True when small block `p` (tag `t`) is currently handed out.
pub fn is_live(p: *mut u8, t: u64) -> bool {
    on_boundary(p as usize, t) && !looks_free(p, arena::tag_class(t), t)
}

/// The most fresh blocks of `size` bytes one refill carves from spans: a
/// 4 KiB page's worth, and at least 8. Every block carved into a bin gets a
/// free marker, a write that faults its page in; the default build carves
/// half a bin (up to 128 blocks) and leaves the ones the program never
/// takes untouched (`heap::span_push` un-carves them), which the secure
/// build cannot do, as it marks them. Carving less per refill keeps the
/// pages it touches to about the ones the program uses: peak RSS of the
/// quick matrix's R=0 cells came down to the default build's (guard T=16:
/// 16.4 → 12.0 MiB; default 11.8), with the same checks.
#[inline]
pub const fn carve_limit(size: usize) -> usize {
    let per_page = 4096 / size;
    if per_page > 8 {
        per_page
    } else {
        8
    }
}

/// Shuffles the blocks a refill just put in a bin (Fisher–Yates), so the
/// order in which a span's blocks are handed out is not predictable.
///
/// # Safety
/// `s` points at `n` initialised slots.
pub unsafe fn shuffle(rng: &mut u64, s: *mut *mut u8, n: usize) {
    for i in (1..n).rev() {
        let j = (((next_rand(rng) >> 32) * (i as u64 + 1)) >> 32) as usize;
        // SAFETY: i, j < n.
        unsafe { core::ptr::swap(s.add(i), s.add(j)) };
    }
}

/// Prepares a run fresh from the page allocator: lifts the guards that
/// earlier runs left inside it and, when `guard` is set, puts one in its
/// last 4 KiB (unless one is already there: a span carved again where a
/// span of the same length was). Guards are not lifted when a run is freed,
/// so reusing a run costs no system call; only runs that are cut
/// differently pay one `mprotect` per moved guard. If the kernel refuses
/// the guard (map-count limit), the run goes without one.
///
/// # Safety
/// `run` was just taken from the page allocator, `pages` long.
pub unsafe fn take_run(run: &arena::Run, pages: usize, guard: bool) {
    for i in 0..pages {
        // SAFETY: the run's metas are consecutive and ours.
        let m = unsafe { &mut *run.meta.add(i) };
        let want = guard && i == pages - 1;
        if (m.guarded != 0) != want {
            // SAFETY: page i of the run is ours.
            let g = unsafe { run.addr.add(((i + 1) << crate::PAGE_SHIFT) - GUARD) };
            if want {
                // SAFETY: as above; the run's last GUARD bytes hold no data.
                m.guarded = unsafe { os::guard_install(g, GUARD) };
            } else {
                // SAFETY: as above.
                if !unsafe { os::guard_remove(g, GUARD, m.guarded) } {
                    fatal_ptr("could not lift a guard page at", g);
                }
                m.guarded = 0;
            }
        }
    }
}

/// Span `m` (class `c`) has been carved up to `p`: every page of the span
/// records it in the word beside its tag (`arena::carved_word`), which a
/// free reads for the page it lands on, from the line holding the tag (no
/// walk to the span's head, and no read of a meta line the owner keeps
/// writing).
///
/// # Safety
/// `m` heads a span of class `c` that the caller owns.
pub unsafe fn set_carved(m: *mut arena::PageMeta, c: usize, p: *mut u8) {
    let (idx, a) = arena::page_of(m);
    for i in 0..crate::class::SPAN_PAGES[c] as usize {
        // SAFETY: pages of the caller's span; only the owner writes them.
        unsafe { (*arena::carved_word(a, idx + i)).store(p as usize, Relaxed) };
    }
}

/// True with `HZ_SECURE_FILL=1` (read once, before the first heap).
#[inline(always)]
pub fn fill_mode() -> bool {
    crate::config::CONFIG.secure_fill.load(Relaxed) != 0
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
    use super::{boundary_key, divisor, multiple_of_class, on_boundary, on_boundary_key, DIV};
    use crate::arena::{make_tag, KIND_SMALL};
    use crate::class::{CLASS_SIZE, SIZED_CLASSES, SPAN_PAGES};
    use crate::{PAGE_SHIFT, PAGE_SIZE};

    #[test]
    fn divisibility_test_is_exact_over_every_span() {
        for c in 1..SIZED_CLASSES {
            let size = CLASS_SIZE[c] as usize;
            let span = SPAN_PAGES[c] as usize * PAGE_SIZE;
            // Every byte offset of the first 64 KiB and of the span's last
            // 64 KiB, and every 8th offset between.
            let mut off = 0;
            while off < span {
                assert_eq!(
                    multiple_of_class(off, c),
                    off % size == 0,
                    "class {c} offset {off}"
                );
                off += if off < PAGE_SIZE || off + PAGE_SIZE >= span {
                    1
                } else {
                    8
                };
            }
            // Through the tag (page offset plus the page's offset in its
            // span), and through the span's boundary key (E94), for spans
            // at page-aligned addresses of every kind of low bits.
            for base in [1usize << 40, 0x7f3a_9c51_0000, 0x5555_5555_0000] {
                let key = boundary_key(base, c);
                for page in 0..SPAN_PAGES[c] as usize {
                    let t = make_tag(c, KIND_SMALL, 7, page);
                    for within in [0, 8, 16, size % PAGE_SIZE, PAGE_SIZE - 16] {
                        let off = (page << PAGE_SHIFT) + within;
                        let p = base + off;
                        let want = off.is_multiple_of(size);
                        assert_eq!(on_boundary(p, t), want, "class {c} off {off}");
                        assert_eq!(
                            on_boundary_key(p, divisor(c), key),
                            want,
                            "key: class {c} off {off}"
                        );
                    }
                }
                // Every block start of the span's first page passes, and
                // the byte after each fails.
                let mut off = 0;
                while off < PAGE_SIZE {
                    assert!(on_boundary_key(base + off, divisor(c), key));
                    assert!(!on_boundary_key(base + off + 1, divisor(c), key));
                    off += size;
                }
            }
        }
        // Tag class values that name no class of this build (the aligned
        // twins are not carved here) never pass.
        for c in SIZED_CLASSES..64 {
            assert_eq!(DIV[c], 0);
            assert!(!multiple_of_class(0, c));
        }
    }
}
