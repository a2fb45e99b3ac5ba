//! The shadow model shared by the differential test (`tests/differential.rs`)
//! and the fuzzer (`fuzz/fuzz_targets/ops.rs`, which includes this file by
//! path). It is not a test of its own: cargo only builds `tests/*.rs`.
//!
//! A [`Model`] holds the blocks one thread owns. Every block it allocates
//! is checked and recorded:
//! * alignment (16 for plain calls, the requested one otherwise);
//! * `usable_size` is exactly the class size (small) or the page-rounded
//!   size (large), and at least the request;
//! * calloc / alloc_zeroed memory reads as zero;
//! * its usable range `[p, p + usable)` overlaps no other live block's in
//!   the process ([`Extents`], shared by every thread's model);
//! * its whole usable range is filled with a pattern derived from the
//!   block's seed and the byte offset, and the pattern is verified before
//!   every free and realloc and on every hand-over between threads (in full
//!   up to [`FULL_CHECK`] bytes, sampled — both ends and one word per 4 KiB
//!   — above), and after realloc the common prefix must have survived.
//!
//! Violations panic with the model's `tag` (the seed to replay).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hz_core::class::{class_for, CLASS_SIZE, SMALL_MAX};
use hz_core::{HzAlloc, PAGE_SIZE};

/// Blocks up to this size are verified byte for byte.
pub const FULL_CHECK: usize = 16 << 10;
/// `hz_core::realloc` grows a small block past this into a large one (E119).
const GROW_LARGE_MIN: usize = 32 << 10;
/// ... and one of at least this many bytes into a large one when it is the
/// block the thread's last growing move returned (E155).
const GROW_STREAK_MIN: usize = 8 << 10;
/// ... and, C's `realloc`, one of at least this many bytes while the
/// thread's buffers made large are transient (E160).
const GROW_EARLY_MIN: usize = 256;

/// splitmix64: small, fast, and every seed gives a good stream.
#[derive(Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How a block was obtained, which decides how it may be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// The raw API: any raw free / realloc applies.
    Raw,
    /// `GlobalAlloc`: dealloc/realloc must be given the same layout.
    Global,
}

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub p: usize,
    pub size: usize,
    pub usable: usize,
    pub align: usize,
    pub seed: u64,
    pub how: How,
    /// A large block (a page run), whatever its size's class: C `realloc`
    /// keeps blocks above 32 KiB large (E119).
    pub large: bool,
}

/// Usable ranges of every live block, process-wide: start → end.
#[derive(Default)]
pub struct Extents(BTreeMap<usize, usize>);

impl Extents {
    fn insert(&mut self, start: usize, end: usize) -> Result<(), String> {
        if let Some((&s, &e)) = self.0.range(..end).next_back() {
            if e > start {
                return Err(format!(
                    "new block [{start:#x}, {end:#x}) overlaps live block [{s:#x}, {e:#x})"
                ));
            }
        }
        self.0.insert(start, end);
        Ok(())
    }
    fn remove(&mut self, start: usize) -> Result<(), String> {
        self.0
            .remove(&start)
            .map(|_| ())
            .ok_or_else(|| format!("block {start:#x} is not in the extent map"))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub type SharedExtents = Arc<Mutex<Extents>>;

pub fn new_extents() -> SharedExtents {
    Arc::new(Mutex::new(Extents::default()))
}

#[inline]
fn word(seed: u64, k: usize) -> u64 {
    seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Expected byte at offset `i` of a block with `seed`.
#[inline]
pub fn pattern_byte(seed: u64, i: usize) -> u8 {
    (word(seed, i / 8) >> ((i % 8) * 8)) as u8
}

/// Writes the pattern over `[from, to)` of block `p`.
///
/// # Safety
/// `[p + from, p + to)` is writable memory of a live block.
pub unsafe fn fill(p: usize, from: usize, to: usize, seed: u64) {
    let mut i = from;
    while i < to && i & 7 != 0 {
        // SAFETY: i < to, inside the block.
        unsafe { *((p + i) as *mut u8) = pattern_byte(seed, i) };
        i += 1;
    }
    while i + 8 <= to {
        // SAFETY: 8 bytes inside the block; p + i is 8-aligned (p is 16-aligned).
        unsafe { *((p + i) as *mut u64) = word(seed, i / 8).to_le() };
        i += 8;
    }
    while i < to {
        // SAFETY: i < to.
        unsafe { *((p + i) as *mut u8) = pattern_byte(seed, i) };
        i += 1;
    }
}

/// Offsets to verify in a block of `n` bytes: all of them up to
/// [`FULL_CHECK`], else both 4 KiB ends and one word per 4 KiB.
fn check_ranges(
    n: usize,
    mut f: impl FnMut(usize, usize) -> Result<(), String>,
) -> Result<(), String> {
    if n <= FULL_CHECK {
        return f(0, n);
    }
    f(0, 4096)?;
    let mut o = 4096;
    while o + 8 <= n - 4096 {
        f(o, o + 8)?;
        o += 4096;
    }
    f(n - 4096, n)
}

/// Verifies the pattern of `[0, n)` of block `p`.
///
/// # Safety
/// `[p, p + n)` is readable memory of a live block.
pub unsafe fn check(p: usize, n: usize, seed: u64) -> Result<(), String> {
    check_ranges(n, |a, b| {
        for i in a..b {
            // SAFETY: i < n.
            let v = unsafe { *((p + i) as *const u8) };
            if v != pattern_byte(seed, i) {
                return Err(format!(
                    "block {p:#x}: byte {i} of {n} is {v:#04x}, expected {:#04x} (contents overwritten)",
                    pattern_byte(seed, i)
                ));
            }
        }
        Ok(())
    })
}

/// Verifies that `[0, n)` of block `p` reads as zero.
///
/// # Safety
/// As [`check`].
pub unsafe fn check_zero(p: usize, n: usize) -> Result<(), String> {
    check_ranges(n, |a, b| {
        for i in a..b {
            // SAFETY: i < n.
            let v = unsafe { *((p + i) as *const u8) };
            if v != 0 {
                return Err(format!("zeroed block {p:#x}: byte {i} of {n} is {v:#04x}"));
            }
        }
        Ok(())
    })
}

/// The usable size hz promises for a request.
pub fn expected_usable(size: usize, align: usize) -> usize {
    let c = class_for(size, align.max(1));
    if c != 0 {
        CLASS_SIZE[c] as usize
    } else if cfg!(feature = "secure") {
        // The secure build keeps the last 4 KiB of a large run as a guard.
        (size.max(1) + 4096).next_multiple_of(PAGE_SIZE) - 4096
    } else {
        size.max(1).next_multiple_of(PAGE_SIZE)
    }
}

/// Allocation entry points.
#[derive(Clone, Copy, Debug)]
pub enum AllocApi {
    Malloc,
    Calloc,
    MallocAligned,
    CallocAligned,
    Global,
    GlobalZeroed,
}

/// Free entry points.
#[derive(Clone, Copy, Debug)]
pub enum FreeApi {
    Free,
    FreeSized,
    /// `GlobalAlloc::dealloc` for Global blocks, `free` otherwise.
    Dealloc,
}

/// Realloc entry points.
#[derive(Clone, Copy, Debug)]
pub enum ReallocApi {
    Realloc,
    ReallocAligned,
    /// `GlobalAlloc::realloc` for Global blocks, `realloc_aligned` otherwise.
    Global,
}

/// One thread's live blocks.
pub struct Model {
    pub live: Vec<Block>,
    pub extents: SharedExtents,
    /// Printed with every failure (the seed to replay).
    pub tag: String,
    pub ops: u64,
}

thread_local! {
    /// What hz's heap keeps of the thread's growing buffer (E155): the
    /// block C `realloc`'s last growing move of a small block returned, and
    /// the last size asked of it. Per thread, as hz's heap is: a thread
    /// that runs one model after another (the fuzz target's inputs) keeps
    /// one heap, whose record outlives each model; a new thread's heap
    /// starts without one (adopted heaps are reset, E159).
    static GROW: core::cell::Cell<(usize, usize)> = const { core::cell::Cell::new((0, 0)) };
}

impl Model {
    pub fn new(extents: SharedExtents, tag: String) -> Model {
        Model {
            live: Vec::new(),
            extents,
            tag,
            ops: 0,
        }
    }

    #[track_caller]
    fn fail(&self, what: String) -> ! {
        panic!("{}: after {} ops: {what}", self.tag, self.ops)
    }

    fn ok(&self, r: Result<(), String>) {
        if let Err(e) = r {
            self.fail(e)
        }
    }

    /// Records a fresh block: checks it, fills it, registers its extent.
    /// `also`: a usable size accepted besides the request's (0: none);
    /// `large`: the block is large whatever its size's class.
    fn adopt_new(
        &mut self,
        mut b: Block,
        zeroed: bool,
        keep_prefix: usize,
        resized: bool,
        also: usize,
        large: bool,
    ) {
        if b.p & (b.align.max(16) - 1) != 0 {
            self.fail(format!(
                "block {:#x} of {} bytes is not aligned to {}",
                b.p,
                b.size,
                b.align.max(16)
            ));
        }
        // A large block that realloc resized may keep headroom (growth in
        // place later, or the pages of a shrink that kept its tail): up to
        // twice its pages, never less than needed. (Also for a realloc to
        // 0 bytes, which keeps no prefix: a soak found hz keeping a 2-page
        // block's second page when an aligned realloc asked for 0 bytes.)
        let exp = if large {
            b.size.max(1).next_multiple_of(PAGE_SIZE)
        } else {
            expected_usable(b.size, b.align)
        };
        b.large = large || class_for(b.size, b.align.max(1)) == 0;
        let resized_large = resized && b.large;
        let usable_ok = if resized_large {
            b.usable >= exp && b.usable <= 2 * exp + PAGE_SIZE
        } else {
            b.usable == exp || b.usable == also
        };
        if b.usable < b.size || !usable_ok {
            self.fail(format!(
                "usable_size({:#x}) = {} for {} bytes aligned {} (expected {})",
                b.p, b.usable, b.size, b.align, exp
            ));
        }
        if !hz_core::owns(b.p as *const u8) {
            self.fail(format!("owns({:#x}) is false for a live block", b.p));
        }
        let r = self.extents.lock().unwrap().insert(b.p, b.p + b.usable);
        self.ok(r);
        if zeroed {
            // SAFETY: the block has `size` bytes.
            self.ok(unsafe { check_zero(b.p, b.size) });
        }
        // SAFETY: the whole usable range may be written.
        unsafe { fill(b.p, keep_prefix, b.usable, b.seed) };
        self.live.push(b);
    }

    /// Allocates a block; `align_log` is used by the aligned entry points.
    pub fn alloc(&mut self, api: AllocApi, size: usize, align_log: u32, seed: u64) {
        self.ops += 1;
        let align = 1usize << align_log;
        let (p, how, align, zeroed, size) = match api {
            AllocApi::Malloc => (hz_core::malloc(size), How::Raw, 16, false, size),
            AllocApi::Calloc => (hz_core::calloc(size), How::Raw, 16, true, size),
            AllocApi::MallocAligned => (
                hz_core::malloc_aligned(size, align),
                How::Raw,
                align,
                false,
                size,
            ),
            AllocApi::CallocAligned => (
                hz_core::calloc_aligned(size, align),
                How::Raw,
                align,
                true,
                size,
            ),
            AllocApi::Global | AllocApi::GlobalZeroed => {
                let size = size.max(1);
                let l = Layout::from_size_align(size, align).unwrap();
                let zero = matches!(api, AllocApi::GlobalZeroed);
                // SAFETY: non-zero size.
                let p = unsafe {
                    if zero {
                        HzAlloc.alloc_zeroed(l)
                    } else {
                        HzAlloc.alloc(l)
                    }
                };
                (p, How::Global, align, zero, size)
            }
        };
        if p.is_null() {
            self.fail(format!("{api:?}({size}, align {align}) returned null"));
        }
        // SAFETY: p is a live block of hz.
        let usable = unsafe { hz_core::usable_size(p) };
        self.adopt_new(
            Block {
                p: p as usize,
                size,
                usable,
                align,
                seed,
                how,
                large: false,
            },
            zeroed,
            0,
            false,
            0,
            false,
        );
    }

    /// Verifies block `i` (contents, usable size, ownership).
    pub fn check(&self, i: usize) {
        let b = self.live[i];
        // SAFETY: b is live and ours.
        self.ok(unsafe { check(b.p, b.usable, b.seed) });
        // SAFETY: as above.
        let u = unsafe { hz_core::usable_size(b.p as *const u8) };
        if u != b.usable {
            self.fail(format!(
                "usable_size({:#x}) changed from {} to {u}",
                b.p, b.usable
            ));
        }
    }

    /// Removes block `i` from the model (after verifying it) without
    /// freeing it: to hand it to another thread.
    pub fn take(&mut self, i: usize) -> Block {
        self.ops += 1;
        self.check(i);
        self.live.swap_remove(i)
    }

    /// Accepts a block another thread took: verifies it.
    pub fn give(&mut self, b: Block) {
        self.live.push(b);
        self.check(self.live.len() - 1);
    }

    fn unregister(&self, p: usize) {
        let r = self.extents.lock().unwrap().remove(p);
        self.ok(r);
    }

    pub fn free(&mut self, i: usize, api: FreeApi) {
        let b = self.take(i);
        self.unregister(b.p);
        let p = b.p as *mut u8;
        // SAFETY: b is a live block we own; the layout matches a Global one.
        unsafe {
            match (api, b.how) {
                (FreeApi::Dealloc, How::Global) => {
                    HzAlloc.dealloc(p, Layout::from_size_align(b.size, b.align).unwrap())
                }
                (FreeApi::FreeSized, _) => hz_core::free_sized(p, b.size),
                _ => hz_core::free(p),
            }
        }
    }

    pub fn realloc(&mut self, i: usize, api: ReallocApi, new_size: usize, align_log: u32) {
        let b = self.take(i);
        // Unregister first: hz may return the same address (in place).
        self.unregister(b.p);
        let p = b.p as *mut u8;
        let (q, how, align, new_size) = match (api, b.how) {
            (ReallocApi::Realloc, _) => (
                // SAFETY: live block of ours.
                unsafe { hz_core::realloc(p, new_size) },
                How::Raw,
                16,
                new_size,
            ),
            (ReallocApi::Global, How::Global) => {
                let n = new_size.max(1);
                let l = Layout::from_size_align(b.size, b.align).unwrap();
                // SAFETY: live block allocated with layout l; n > 0.
                (unsafe { HzAlloc.realloc(p, l, n) }, How::Global, b.align, n)
            }
            (ReallocApi::ReallocAligned, _) | (ReallocApi::Global, How::Raw) => {
                // The alignment must be the block's own (realloc_aligned's
                // contract), unless we pick a smaller one.
                let align = (1usize << align_log).min(b.align.max(16));
                (
                    // SAFETY: live block of ours, at least `align`-aligned.
                    unsafe { hz_core::realloc_aligned(p, new_size, align) },
                    How::Raw,
                    align,
                    new_size,
                )
            }
        };
        self.ops += 1;
        if q.is_null() {
            self.fail(format!(
                "{api:?}({:#x}: {} -> {new_size}, align {align}) returned null",
                b.p, b.size
            ));
        }
        // SAFETY: q is live.
        let usable = unsafe { hz_core::usable_size(q) };
        let nb = Block {
            p: q as usize,
            size: new_size,
            usable,
            align,
            seed: b.seed,
            how,
            large: false,
        };
        // The common prefix must have moved with the block.
        let keep = b.size.min(new_size);
        // SAFETY: q has at least new_size >= keep bytes.
        self.ok(unsafe { check(nb.p, keep, b.seed) });
        // hz_core::realloc (C's) keeps a small block in place when the new
        // size uses at least 3/4 of it, and gives a small block that moves
        // to grow at least 5/4 of its room (E112).
        let old_small = !b.large;
        let c_api = matches!(api, ReallocApi::Realloc) && !cfg!(feature = "secure");
        // `GlobalAlloc::realloc` of a block of 16-byte alignment grows as C
        // `realloc` does, without its headroom (E157).
        let promote = c_api
            || (matches!((api, b.how), (ReallocApi::Global, How::Global))
                && b.align <= 16
                && !cfg!(feature = "secure"));
        // It grows a small block past 32 KiB into a large one with room to
        // grow, and keeps a large block above 32 KiB large (E119).
        let mut c_large =
            promote && new_size > GROW_LARGE_MIN && (!old_small || new_size > b.usable);
        // The thread's growing buffer (E155): moved to grow again from at
        // least 8 KiB, it may become large (unless the thread's segments
        // take huge pages, which the model does not know: either is
        // accepted); C's from 256 bytes too, while the thread frees the
        // buffers it made large (E160: neither is that modelled); a large
        // one stays large while it grows.
        let (grow_last, grow_len) = GROW.get();
        let tracked = promote && b.p == grow_last;
        let streak_min = if c_api {
            GROW_EARLY_MIN
        } else {
            GROW_STREAK_MIN
        };
        if promote && old_small && new_size > b.usable && new_size <= GROW_LARGE_MIN {
            if tracked && b.usable >= streak_min {
                c_large =
                    (q as usize).is_multiple_of(PAGE_SIZE) && usable.is_multiple_of(PAGE_SIZE);
            }
            // (hz notes only a block that can start a streak: of at least
            // 8 KiB, C's of at least 256 bytes.)
            if usable >= streak_min {
                GROW.set((q as usize, new_size));
            }
        } else if tracked && !old_small {
            // `GlobalAlloc::realloc` keeps it large only at a size whose
            // class is tagged (8 KiB or more: below, `dealloc` takes the
            // layout's class for exact, E157), C `realloc` at any size. (The
            // address may be a later block's: hz keeps `grow_last` after the
            // buffer moved or was freed, and so does the model.)
            let tagged =
                c_api || class_for(new_size, align.max(1)) >= class_for(GROW_STREAK_MIN, 1);
            c_large |= new_size > grow_len && tagged;
            let last = if c_large && q != p {
                q as usize
            } else {
                grow_last
            };
            GROW.set((last, new_size));
        }
        let also = match api {
            ReallocApi::Realloc
                if old_small
                    && q == p
                    && new_size <= b.usable
                    && new_size >= b.usable - b.usable / 4 =>
            {
                b.usable
            }
            ReallocApi::Realloc if old_small && new_size > b.usable => {
                expected_usable(new_size.max((b.usable + b.usable / 4).min(SMALL_MAX)), 16)
            }
            _ => 0,
        };
        self.adopt_new(nb, false, keep, true, also, c_large);
    }

    pub fn free_all(&mut self) {
        while !self.live.is_empty() {
            let n = self.live.len();
            self.free(n - 1, FreeApi::Free);
        }
    }
}

/// A size drawn from a mix dominated by small blocks: mostly < 1 KiB,
/// some up to 128 KiB (the largest class), a few large runs up to `max_large`.
pub fn pick_size(rng: &mut Rng, max_large: usize) -> usize {
    match rng.below(100) {
        0..=59 => rng.below(257) as usize,
        60..=84 => rng.below(4097) as usize,
        85..=96 => rng.below(131_073) as usize,
        _ => 131_073 + rng.below(max_large.saturating_sub(131_073) as u64 + 1) as usize,
    }
}
