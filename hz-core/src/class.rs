//! Size classes.
//!
//! Owns: the class table, the size → class map, each class's span length
//! and thread-cache capacity. Pure data and arithmetic; touches nothing else.
//!
//! Classes (index 0 means "not a small block"):
//! * 1..=8: 16, 32, …, 128 — exact 16-byte steps;
//! * 9..=16: four per power of two, `2^b + k·2^(b-2)` for k = 1..4, from
//!   160 up to 512;
//! * 17..=36: five per power of two from 512 B to 8 KiB: `2^b · 9/8` (576,
//!   1152, 2304, 4608: E97), then `2^b + k·2^(b-2)` for k = 1..4 — so a
//!   power of two plus a small header (a 4 KiB page and its bookkeeping,
//!   1 KiB and a length), the commonest shape of a real program's larger
//!   requests, wastes at most 11% there instead of up to 20%;
//! * 37..=52: four per power of two from 8 KiB up to 131072 (128 KiB).
//!   Worst-case internal waste above 128 bytes is just under 20%;
//! * 53..=56: *aligned twins* of 4, 8, 16 and 32 KiB, whose spans are not
//!   coloured, for requests of 2–32 KiB aligned to more than 64 bytes
//!   (the default build colours every other class above 2 KiB, [`coloured`]).
//!
//! Every class size is a multiple of 16, and each power of two is a class,
//! which is how over-aligned small requests are served (see [`class_for`]).
//! A class's blocks are carved from a span of `span_pages` 64 KiB pages
//! holding at least 8 blocks (4 above 32 KiB).

use crate::PAGE_SIZE;

/// Classes a size maps to ([`class_of`]): sizes increase with the index.
pub const SIZED_CLASSES: usize = 53;
/// The first aligned twin: class `TWIN_FIRST + k` holds blocks of
/// `4096 << k` bytes (k = 0..4) from uncoloured spans.
pub const TWIN_FIRST: usize = SIZED_CLASSES;
pub const NUM_CLASSES: usize = TWIN_FIRST + 4;
/// Largest size served by size classes; larger blocks are page runs.
pub const SMALL_MAX: usize = 128 << 10;

const fn gen_sizes() -> [u32; NUM_CLASSES] {
    let mut s = [0u32; NUM_CLASSES];
    let mut i = 1;
    while i <= 8 {
        s[i] = 16 * i as u32;
        i += 1;
    }
    let mut b = 7;
    while i < SIZED_CLASSES {
        let base = 1u32 << b;
        let step = base >> 2;
        if b >= 9 && b <= 12 {
            // 2^b · 9/8: a power of two plus a header (E97).
            s[i] = base + (base >> 3);
            i += 1;
        }
        let mut k = 1;
        while k <= 4 {
            s[i] = base + k * step;
            i += 1;
            k += 1;
        }
        b += 1;
    }
    while i < NUM_CLASSES {
        s[i] = 4096 << (i - TWIN_FIRST);
        i += 1;
    }
    s
}

/// Block size of each class.
pub static CLASS_SIZE: [u32; NUM_CLASSES] = SIZES;
/// The same table for `const fn`s, which cannot read a `static`.
const SIZES: [u32; NUM_CLASSES] = gen_sizes();

/// Sizes up to this many bytes index the class table in 16-byte steps,
/// larger ones up to [`SMALL_MAX`] in 256-byte steps (every class size
/// above it is a multiple of 256; 2304 is the one that is not a multiple
/// of 512). One table for both, and the step chosen by a conditional move:
/// with a branch (E12, E13), a program whose sizes straddle 2 KiB (16..4096
/// B uniform) mispredicted it on about every other call and ran 1.5-2x
/// slower than with its sizes on one side (E109 in docs/PERFORMANCE.md).
const TABLE_MAX: usize = 2048;
const FINE_LEN: usize = TABLE_MAX / 16 + 1;
const STEP_LEN: usize = (SMALL_MAX - TABLE_MAX) / 256;
const TABLE_LEN: usize = FINE_LEN + STEP_LEN;

/// The class table: entry `(size + 15) / 16` for sizes up to
/// [`TABLE_MAX`], then entry `FINE_LEN + (size - TABLE_MAX - 1) / 256`.
const fn gen_class_table() -> [u8; TABLE_LEN] {
    let sizes = gen_sizes();
    let mut t = [0u8; TABLE_LEN];
    let mut i = 0;
    while i < FINE_LEN {
        let size = if i == 0 { 1 } else { i * 16 };
        let mut c = 1;
        while (sizes[c] as usize) < size {
            c += 1;
        }
        assert!(c < NUM_CLASSES);
        t[i] = c as u8;
        i += 1;
    }
    let mut k = 0;
    while k < STEP_LEN {
        let top = TABLE_MAX + 256 * (k + 1);
        let mut c = 1;
        while (sizes[c] as usize) < top {
            c += 1;
        }
        // Every size of the step fits the class, and none fits the one below.
        assert!(c < NUM_CLASSES && sizes[c - 1] as usize <= top - 256);
        t[FINE_LEN + k] = c as u8;
        k += 1;
    }
    t
}
static CLASS_TABLE: [u8; TABLE_LEN] = gen_class_table();

/// Class for a request of `size` bytes with 16-byte alignment; 0 if larger
/// than [`SMALL_MAX`].
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size > SMALL_MAX {
        return 0;
    }
    let fine = (size + 15) >> 4;
    let step = FINE_LEN + (size.wrapping_sub(TABLE_MAX + 1) >> 8);
    let i = core::hint::select_unpredictable(size <= TABLE_MAX, fine, step);
    // SAFETY: size <= SMALL_MAX, so i < FINE_LEN for sizes up to TABLE_MAX
    // and FINE_LEN + (SMALL_MAX - TABLE_MAX - 1) / 256 < TABLE_LEN above.
    let c = unsafe { *CLASS_TABLE.get_unchecked(i) as usize };
    // SAFETY: the table holds classes only (its generator asserts
    // 1 <= c < NUM_CLASSES at compile time). Said here so that the
    // compiler drops the "is it 0" and bounds tests its users would make.
    unsafe { core::hint::assert_unchecked(c != 0 && c < NUM_CLASSES) };
    c
}

/// Class for `size` bytes aligned to `align` (a power of two), or 0 when
/// the request must be served as a page run. A pure function of its
/// arguments: `dealloc` recomputes it from the `Layout`.
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> usize {
    if align <= 16 {
        return class_of(size);
    }
    class_for_aligned(size, align)
}

#[inline]
fn class_for_aligned(size: usize, align: usize) -> usize {
    if align > PAGE_SIZE {
        return 0;
    }
    let c = class_of(if size < align { align } else { size });
    // Span bases are page-aligned, so a class whose size is a multiple of
    // `align` yields aligned blocks: the first such class from `c` up, or
    // the aligned twin that serves it, by table (a loop up the classes
    // mispredicted its exit about once a call at random sizes, E110; the
    // twin's test and arithmetic after the table cost 14 instructions).
    // SAFETY: 32 <= align <= PAGE_SIZE here, so the row is below
    // ALIGN_ROWS; c < NUM_CLASSES.
    let c = unsafe {
        *ALIGN_UP
            .get_unchecked(align.trailing_zeros() as usize - 5)
            .get_unchecked(c) as usize
    };
    // SAFETY: the table's generator asserts every entry < NUM_CLASSES;
    // said so that callers indexing the bins drop their bounds test.
    unsafe { core::hint::assert_unchecked(c < NUM_CLASSES) };
    c
}

/// Rows of [`ALIGN_UP`]: alignments 32, 64, ..., [`PAGE_SIZE`].
const ALIGN_ROWS: usize = PAGE_SIZE.trailing_zeros() as usize - 4;

/// `ALIGN_UP[k][c]`: the first sized class from `c` up whose size is a
/// multiple of `32 << k` — in the default build, above 64-byte alignment,
/// the aligned twin that serves it if it is coloured (0 above 32 KiB) —
/// or 0 when none is (`c` = 0 gives 0).
const fn gen_align_up() -> [[u8; NUM_CLASSES]; ALIGN_ROWS] {
    let sizes = gen_sizes();
    let mut t = [[0u8; NUM_CLASSES]; ALIGN_ROWS];
    let mut k = 0;
    while k < ALIGN_ROWS {
        let align = 32usize << k;
        let mut c = 1;
        while c < NUM_CLASSES {
            let mut d = c;
            while d < SIZED_CLASSES && !(sizes[d] as usize).is_multiple_of(align) {
                d += 1;
            }
            let mut r = if d < SIZED_CLASSES { d } else { 0 };
            // Coloured classes' blocks are only 64-byte aligned (default
            // build): up to 32 KiB the aligned twin of the power of two at
            // or above the class serves instead, above that a page run.
            if r != 0 && !cfg!(feature = "secure") && align > 64 && coloured(r) {
                let size = sizes[r] as usize;
                r = if size > 32 << 10 {
                    0
                } else {
                    TWIN_FIRST + (size.next_power_of_two().trailing_zeros() - 12) as usize
                };
            }
            assert!(r < NUM_CLASSES);
            t[k][c] = r as u8;
            c += 1;
        }
        k += 1;
    }
    t
}
static ALIGN_UP: [[u8; NUM_CLASSES]; ALIGN_ROWS] = gen_align_up();

/// `FIT[c]`: the request sizes of class `c` at the default alignment,
/// `[lo, lo + span]`, as `[lo, span]` (`class_of(size) == c` exactly when
/// `size - lo <= span`, unsigned). Values of a tag's 6-bit class field
/// that no size maps to (0, the aligned twins and the values past the
/// last class) get `[u32::MAX, 0]`: only a size of exactly
/// `u32::MAX` fits them (only a corrupted tag names such a class, and the
/// secure free's boundary test, whose divisor table has 0 there, rejects
/// every pointer of one).
static FIT: [[u32; 2]; 64] = {
    let sizes = gen_sizes();
    let mut t = [[u32::MAX, 0u32]; 64];
    let mut c = 1;
    while c < SIZED_CLASSES {
        let lo = if c == 1 { 0 } else { sizes[c - 1] + 1 };
        t[c] = [lo, sizes[c] - lo];
        c += 1;
    }
    t
};

/// True when a block of class `c` is what a request of `size` bytes
/// aligned to `align` gets: `class_for(size, align) == c`, in one table
/// lookup for the default alignment (the secure `dealloc` checks the
/// `Layout` against the page tag with it).
#[inline(always)]
pub fn fits_class(size: usize, align: usize, c: usize) -> bool {
    if align > 16 {
        return class_for(size, align) == c;
    }
    let [lo, span] = FIT[c & 63];
    (size as u64).wrapping_sub(lo as u64) <= span as u64
}

/// True when the spans of class `c` start their blocks at a per-span
/// offset ("colour", a multiple of 64 bytes up to [`COLOR_SPAN`]) in the
/// default build: the classes above 2 KiB except the aligned twins.
/// Their sizes are multiples of 512 B or more, so from a 64 KiB-aligned
/// span the first lines of all their blocks would fall into 1 to 8 of
/// the L1's 64 sets and evict each other (E56 above 32 KiB; E76 and E77
/// below, where 92% of a program's first stores to fresh blocks of
/// 16..32768 B missed L1). Their blocks are then only 64-byte aligned:
/// requests aligned to more go to an aligned twin or a page run
/// ([`class_for`]).
pub const fn coloured(c: usize) -> bool {
    c < SIZED_CLASSES && SIZES[c] > 2048
}
/// The most bytes a colour moves a span's first block by.
pub const COLOR_SPAN: usize = 4096;

/// Bytes at the end of class `c`'s span set aside for its colour:
/// [`COLOR_SPAN`] for the coloured classes whose spans would otherwise
/// have no slack to colour in (the powers of two, whose blocks fill their
/// spans, and the classes above 32 KiB); the other coloured classes use
/// the slack their spans have anyway (1–12 KiB, 0 for 24 KiB).
const fn color_reserve(c: usize) -> usize {
    let size = SIZES[c] as usize;
    if coloured(c) && (size > 32 << 10 || size.is_power_of_two()) {
        COLOR_SPAN
    } else {
        0
    }
}

/// Blocks of class `c` in a span of `pages` pages, its colour's room kept.
const fn blocks_in(pages: usize, c: usize) -> usize {
    (pages * PAGE_SIZE - color_reserve(c)) / SIZES[c] as usize
}

const fn gen_span_pages() -> [u32; NUM_CLASSES] {
    let sizes = gen_sizes();
    let mut p = [0u32; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let s = sizes[c] as usize;
        let min_blocks = if s <= 32 << 10 { 8 } else { 4 };
        let mut pages = 1;
        loop {
            let bytes = pages * PAGE_SIZE;
            let n = blocks_in(pages, c);
            let waste = bytes - n * s;
            if n >= min_blocks && waste * 8 <= bytes {
                break;
            }
            pages += 1;
        }
        p[c] = pages as u32;
        c += 1;
    }
    p
}
/// Pages per span of each class.
pub static SPAN_PAGES: [u32; NUM_CLASSES] = gen_span_pages();

const fn gen_span_blocks() -> [u32; NUM_CLASSES] {
    let pages = gen_span_pages();
    let mut n = [0u32; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        n[c] = blocks_in(pages[c] as usize, c) as u32;
        c += 1;
    }
    n
}
/// Blocks per span of each class (default build; the secure build gives
/// the span's last 4 KiB to a guard page and does not colour).
pub static SPAN_BLOCKS: [u32; NUM_CLASSES] = gen_span_blocks();

/// Blocks a span of class `c` holds in this build (the secure build's
/// spans end in a guard page).
pub fn span_blocks(c: usize) -> usize {
    #[cfg(not(feature = "secure"))]
    {
        SPAN_BLOCKS[c] as usize
    }
    #[cfg(feature = "secure")]
    {
        (SPAN_PAGES[c] as usize * crate::PAGE_SIZE - crate::secure::GUARD) / CLASS_SIZE[c] as usize
    }
}

const fn gen_bin_cap() -> [u32; NUM_CLASSES] {
    let sizes = gen_sizes();
    let mut cap = [0u32; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let mut n = (64 << 10) / sizes[c];
        if n > BIN_CAP_MAX {
            n = BIN_CAP_MAX;
        }
        if n < 16 {
            n = 16;
        }
        cap[c] = n;
        c += 1;
    }
    cap
}
/// The most blocks a bin holds: 240, not 256, so that the heap, with the
/// bins and spill arrays of E97's four classes, stays within its 64 KiB
/// page (a bin of 16-byte blocks holds 3.75 KiB).
const BIN_CAP_MAX: u32 = 240;

/// Thread-cache (bin) capacity of each class, in blocks: about 64 KiB of
/// blocks, between 16 and [`BIN_CAP_MAX`]. Bins of the classes above 4 KiB hold more
/// than 64 KiB (up to 2 MiB at 128 KiB); the bin GC (`heap::gc`) shrinks
/// bins that are not being used, so what they pin does not stay.
pub static BIN_CAP: [u32; NUM_CLASSES] = gen_bin_cap();

const fn sum(a: &[u32; NUM_CLASSES]) -> usize {
    let mut t = 0;
    let mut i = 0;
    while i < NUM_CLASSES {
        t += a[i] as usize;
        i += 1;
    }
    t
}
/// Total bin slots in a heap.
pub const BIN_SLOTS: usize = sum(&gen_bin_cap());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shape() {
        assert_eq!(CLASS_SIZE[1], 16);
        assert_eq!(CLASS_SIZE[8], 128);
        assert_eq!(CLASS_SIZE[9], 160);
        assert_eq!(CLASS_SIZE[12], 256);
        assert_eq!(CLASS_SIZE[SIZED_CLASSES - 1] as usize, SMALL_MAX);
        for c in 1..SIZED_CLASSES {
            assert_eq!(CLASS_SIZE[c] % 16, 0);
            if c > 1 {
                assert!(CLASS_SIZE[c] > CLASS_SIZE[c - 1]);
            }
        }
        // The aligned twins: 4, 8, 16, 32 KiB, each the size of a sized
        // class, uncoloured where that class is coloured.
        for k in 0..4 {
            let t = TWIN_FIRST + k;
            assert_eq!(CLASS_SIZE[t] as usize, 4096 << k);
            let c = class_of(4096 << k);
            assert_eq!(CLASS_SIZE[c], CLASS_SIZE[t]);
            assert!(coloured(c) && !coloured(t));
        }
        assert_eq!(NUM_CLASSES, TWIN_FIRST + 4);
    }

    #[test]
    fn every_size_maps_to_smallest_fitting_class() {
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            assert!((1..SIZED_CLASSES).contains(&c), "size {size}");
            assert!(CLASS_SIZE[c] as usize >= size.max(1), "size {size}");
            if c > 1 {
                assert!(
                    (CLASS_SIZE[c - 1] as usize) < size,
                    "size {size} not smallest"
                );
            }
            if size > 128 {
                let waste = CLASS_SIZE[c] as usize - size;
                assert!(
                    waste * 4 < CLASS_SIZE[c] as usize,
                    "waste over 25% at {size}"
                );
            }
        }
        assert_eq!(class_of(SMALL_MAX + 1), 0);
        assert_eq!(class_of(usize::MAX), 0);
    }

    /// A power of two from 512 B to 4 KiB plus a header of up to an eighth
    /// of it (E97: sqlite's 4 KiB pages with their 8–272 bytes of
    /// bookkeeping, 1 KiB buffers with a length) wastes less than a ninth.
    #[test]
    fn power_of_two_plus_a_header_wastes_little() {
        for b in 9..=12 {
            let p = 1usize << b;
            for h in [8, 16, 64, 272.min(p / 8), p / 8] {
                let size = p + h;
                // The 9/8 class, so the waste is (p/8 - h) / (9p/8) < 1/9.
                assert_eq!(
                    CLASS_SIZE[class_of(size)] as usize,
                    p + p / 8,
                    "size {size}"
                );
            }
            // Just past 9/8 the next class, 5/4, takes over.
            assert_eq!(CLASS_SIZE[class_of(p + p / 8 + 1)] as usize, p + p / 4);
        }
    }

    #[test]
    fn fits_class_is_class_for() {
        let sizes = (0..=SMALL_MAX + 64).chain([
            SMALL_MAX << 1,
            u32::MAX as usize,
            u32::MAX as usize + 17,
            usize::MAX,
        ]);
        for size in sizes {
            for c in 0..64 {
                for align in [1, 16] {
                    if (c == 0 || c >= SIZED_CLASSES) && size == u32::MAX as usize {
                        continue;
                    }
                    assert_eq!(
                        fits_class(size, align, c),
                        c != 0 && class_for(size, align) == c,
                        "size {size} align {align} class {c}"
                    );
                }
            }
        }
        for (size, align) in [(100, 64), (4096, 4096), (5000, 1024), (3, 32)] {
            for c in 0..64 {
                assert_eq!(
                    fits_class(size, align, c),
                    c != 0 && class_for(size, align) == c
                );
            }
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        let mut align = 32;
        while align <= PAGE_SIZE {
            for size in [
                0, 1, 17, 100, 1000, 2500, 5000, 20000, 32768, 70000, SMALL_MAX,
            ] {
                let c = class_for(size, align);
                if c != 0 {
                    assert_eq!(CLASS_SIZE[c] as usize % align, 0);
                    assert!(CLASS_SIZE[c] as usize >= size);
                    // Blocks of coloured spans are only 64-byte aligned.
                    let colour = !cfg!(feature = "secure") && coloured(c);
                    assert!(
                        align <= 64 || !colour,
                        "size {size} align {align}: class {c}"
                    );
                }
                // Up to 32 KiB and a page's alignment, a class serves it
                // (the next uncoloured power of two at worst).
                if size <= 32 << 10 && align <= 32 << 10 {
                    assert_ne!(c, 0, "size {size} align {align}");
                }
            }
            align *= 2;
        }
        assert_eq!(class_for(16, 2 * PAGE_SIZE), 0);
    }

    /// Up to 64-byte alignment (which every span colour keeps), the class
    /// of an aligned request is the smallest whose size fits it and is a
    /// multiple of the alignment, for every size.
    #[test]
    fn aligned_class_is_the_smallest_that_fits() {
        for align in [32usize, 64] {
            let mut want = 1;
            for size in 0..=SMALL_MAX {
                while want < SIZED_CLASSES
                    && ((CLASS_SIZE[want] as usize) < size
                        || !(CLASS_SIZE[want] as usize).is_multiple_of(align))
                {
                    want += 1;
                }
                assert_eq!(class_for(size, align), want, "size {size} align {align}");
            }
        }
    }

    #[test]
    fn spans_hold_enough_blocks_with_little_waste() {
        for c in 1..NUM_CLASSES {
            let bytes = SPAN_PAGES[c] as usize * PAGE_SIZE;
            let n = SPAN_BLOCKS[c] as usize;
            assert!(n >= 4);
            assert!(n * CLASS_SIZE[c] as usize + color_reserve(c) <= bytes);
            assert!((bytes - n * CLASS_SIZE[c] as usize) * 8 <= bytes);
            assert!(BIN_CAP[c] >= 16 && BIN_CAP[c] <= BIN_CAP_MAX);
        }
    }
}
