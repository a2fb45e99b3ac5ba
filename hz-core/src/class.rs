//! Size classes.
//!
//! Owns: the class table, the size → class map, each class's span length
//! and thread-cache capacity. Pure data and arithmetic; touches nothing else.
//!
//! Classes (index 0 means "not a small block"):
//! * 1..=8: 16, 32, …, 128 — exact 16-byte steps;
//! * 9..=48: four per power of two, `2^b + k·2^(b-2)` for k = 1..4, from
//!   160 up to 131072 (128 KiB). Worst-case internal waste above 128 bytes is
//!   just under 20%, about 10% on average.
//!
//! Every class size is a multiple of 16, and each power of two is a class,
//! which is how over-aligned small requests are served (see [`class_for`]).
//! A class's blocks are carved from a span of `span_pages` 64 KiB pages
//! holding at least 8 blocks (4 above 32 KiB).

use crate::PAGE_SIZE;

pub const NUM_CLASSES: usize = 49;
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
    while i < NUM_CLASSES {
        let base = 1u32 << b;
        let step = base >> 2;
        let mut k = 1;
        while k <= 4 {
            s[i] = base + k * step;
            i += 1;
            k += 1;
        }
        b += 1;
    }
    s
}

/// Block size of each class.
pub static CLASS_SIZE: [u32; NUM_CLASSES] = gen_sizes();

/// Requests up to this many bytes find their class in one table lookup.
/// 2 KiB: a program whose sizes straddle the cut-off pays a mispredicted
/// branch on about every call where they do (the guard lane, 16..2048 B
/// uniform, straddled 1 KiB half the time); above 2 KiB a second table
/// with 512-byte steps follows ([`STEP_TABLE`]).
const TABLE_MAX: usize = 2048;
const TABLE_LEN: usize = TABLE_MAX / 16 + 1;

const fn gen_small_table() -> [u8; TABLE_LEN] {
    // index (size + 15) / 16 for size <= TABLE_MAX
    let sizes = gen_sizes();
    let mut t = [0u8; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        let size = if i == 0 { 1 } else { i * 16 };
        let mut c = 1;
        while (sizes[c] as usize) < size {
            c += 1;
        }
        assert!(c < NUM_CLASSES);
        t[i] = c as u8;
        i += 1;
    }
    t
}
static SMALL_TABLE: [u8; TABLE_LEN] = gen_small_table();

/// Class for a request of `size` bytes with 16-byte alignment; 0 if larger
/// than [`SMALL_MAX`].
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    let c = if size <= TABLE_MAX {
        // SAFETY: (size + 15) >> 4 <= TABLE_MAX / 16 < TABLE_LEN.
        unsafe { *SMALL_TABLE.get_unchecked((size + 15) >> 4) as usize }
    } else if size <= SMALL_MAX {
        // SAFETY: TABLE_MAX < size <= SMALL_MAX, so the index is < STEP_LEN.
        unsafe { *STEP_TABLE.get_unchecked((size - TABLE_MAX - 1) >> 9) as usize }
    } else {
        return 0;
    };
    // SAFETY: both tables hold classes only (their generators assert
    // 1 <= c < NUM_CLASSES at compile time). Said here so that the
    // compiler drops the "is it 0" and bounds tests its users would make.
    unsafe { core::hint::assert_unchecked(c != 0 && c < NUM_CLASSES) };
    c
}

/// Above [`TABLE_MAX`] every class size is a multiple of 512, so sizes in
/// one 512-byte step share a class: a second table, one entry per step up
/// to [`SMALL_MAX`] (252 entries), replaces the `bsr` formula (E13 in
/// docs/PERFORMANCE.md).
const STEP_LEN: usize = (SMALL_MAX - TABLE_MAX) / 512;

const fn gen_step_table() -> [u16; STEP_LEN] {
    let sizes = gen_sizes();
    let mut t = [0u16; STEP_LEN];
    let mut k = 0;
    while k < STEP_LEN {
        let top = TABLE_MAX + 512 * (k + 1);
        let mut c = 1;
        while (sizes[c] as usize) < top {
            c += 1;
        }
        // Every size of the step fits the class, and none fits the one below.
        assert!(c < NUM_CLASSES && sizes[c - 1] as usize <= top - 512);
        t[k] = c as u16;
        k += 1;
    }
    t
}
/// `u16` entries, not `u8`: with two loads of the same shape the compiler
/// merges both lookups into one with a variable shift, which lengthens the
/// path of the sizes up to 2 KiB (measured: 43 → 49 instructions per
/// in-process pair).
static STEP_TABLE: [u16; STEP_LEN] = gen_step_table();

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
    let mut c = class_of(if size < align { align } else { size });
    // Span bases are page-aligned, so a class whose size is a multiple of
    // `align` yields aligned blocks, unless its spans are coloured (default
    // build: then its blocks are only 64-byte aligned). Powers of two up to
    // 32 KiB are uncoloured classes: below them this ends at a class.
    while c != 0 && !aligned_class(CLASS_SIZE[c] as usize, align) {
        c += 1;
        if c == NUM_CLASSES {
            return 0;
        }
    }
    c
}

/// True when every block of a class of `size` bytes is aligned to `align`.
#[inline]
const fn aligned_class(size: usize, align: usize) -> bool {
    size & (align - 1) == 0 && (cfg!(feature = "secure") || align <= 64 || !coloured(size))
}

/// `FIT[c]`: the request sizes of class `c` at the default alignment,
/// `[lo, lo + span]`, as `[lo, span]` (`class_of(size) == c` exactly when
/// `size - lo <= span`, unsigned). Values of a tag's 6-bit class field
/// that name no class (0 included) get `[u32::MAX, 0]`: only a size of exactly
/// `u32::MAX` fits them (only a corrupted tag names such a class, and the
/// secure free's boundary test, whose divisor table has 0 there, rejects
/// every pointer of one).
static FIT: [[u32; 2]; 64] = {
    let sizes = gen_sizes();
    let mut t = [[u32::MAX, 0u32]; 64];
    let mut c = 1;
    while c < NUM_CLASSES {
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

/// Spans of the classes above 32 KiB start their blocks at a per-span
/// offset ("colour", a multiple of 64 bytes up to [`COLOR_SPAN`]) in the
/// default build: otherwise every such block starts at a multiple of 8 KiB
/// or more from a 64 KiB-aligned span, so the first lines of all big
/// blocks fall into the same few cache sets and evict each other (E56).
/// Their blocks are then only 64-byte aligned: requests aligned to more
/// are served as page runs ([`class_for`]).
pub const COLOR_MIN_SIZE: usize = (32 << 10) + 1;
/// True when spans of blocks of `size` bytes start at a colour (default
/// build): the classes above 32 KiB (with room kept for it,
/// [`COLOR_MIN_SIZE`]) and the classes from 2 KiB to 32 KiB that are not
/// powers of two (in their span's natural slack, up to [`COLOR_SPAN`]).
/// Those are multiples of 512 B to 4 KiB from a 64 KiB-aligned span, so
/// without a colour their block starts crowd into a few L1 sets: 92% of a
/// program's first stores to fresh blocks missed L1 in the 16..32768 lane
/// (E76). Requests aligned to more than 64 bytes skip these classes.
pub const fn coloured(size: usize) -> bool {
    size >= COLOR_MIN_SIZE || (size > 2048 && !size.is_power_of_two())
}
/// Bytes at the end of a coloured class's span left for the colour.
pub const COLOR_SPAN: usize = 4096;

/// Bytes of a class's span set aside for its colour.
const fn color_reserve(size: usize) -> usize {
    if size >= COLOR_MIN_SIZE {
        COLOR_SPAN
    } else {
        0
    }
}

/// Blocks of `size` bytes in a span of `pages` pages, its colour's room
/// kept.
const fn blocks_in(pages: usize, size: usize) -> usize {
    (pages * PAGE_SIZE - color_reserve(size)) / size
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
            let n = blocks_in(pages, s);
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
    let sizes = gen_sizes();
    let pages = gen_span_pages();
    let mut n = [0u32; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        n[c] = blocks_in(pages[c] as usize, sizes[c] as usize) as u32;
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
        if n > 256 {
            n = 256;
        }
        if n < 16 {
            n = 16;
        }
        cap[c] = n;
        c += 1;
    }
    cap
}
/// Thread-cache (bin) capacity of each class, in blocks: about 64 KiB of
/// blocks, between 16 and 256. Bins of the classes above 4 KiB hold more
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
        assert_eq!(CLASS_SIZE[NUM_CLASSES - 1] as usize, SMALL_MAX);
        for c in 1..NUM_CLASSES {
            assert_eq!(CLASS_SIZE[c] % 16, 0);
            if c > 1 {
                assert!(CLASS_SIZE[c] > CLASS_SIZE[c - 1]);
            }
        }
    }

    #[test]
    fn every_size_maps_to_smallest_fitting_class() {
        for size in 0..=SMALL_MAX {
            let c = class_of(size);
            assert!((1..NUM_CLASSES).contains(&c), "size {size}");
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
                    if (c == 0 || c >= NUM_CLASSES) && size == u32::MAX as usize {
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
                    let colour = !cfg!(feature = "secure") && coloured(CLASS_SIZE[c] as usize);
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

    #[test]
    fn spans_hold_enough_blocks_with_little_waste() {
        for c in 1..NUM_CLASSES {
            let bytes = SPAN_PAGES[c] as usize * PAGE_SIZE;
            let n = SPAN_BLOCKS[c] as usize;
            assert!(n >= 4);
            assert!(n * CLASS_SIZE[c] as usize + color_reserve(CLASS_SIZE[c] as usize) <= bytes);
            assert!((bytes - n * CLASS_SIZE[c] as usize) * 8 <= bytes);
            assert!(BIN_CAP[c] >= 16 && BIN_CAP[c] <= 256);
        }
    }
}
