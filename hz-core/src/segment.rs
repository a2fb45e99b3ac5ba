//! Large-block segments (default build): each thread heap cuts its large
//! blocks of up to [`RUN_MAX`] pages (below 2 MiB) out of small segments of
//! its own, and those of 2 MiB up to [`BIG_RUN_MAX`] pages (8 MiB) out of big
//! segments of its own, so that a thread allocating and freeing such blocks
//! touches no line another thread writes (E67, E74; mimalloc's thread-local
//! segments).
//!
//! Owns: the [`Segment`] descriptors inside each [`Heap`] (at most
//! [`SEGS`] small and [`BIG_SEGS`] big ones); the runs carved from them.
//! May touch: `arena` (a segment is one in-use run of the page allocator;
//! the metas and tags of the pages inside it), `heap` (the owner's state),
//! `os` (purging), `stats`.
//!
//! Invariants:
//! * A segment is [`SEG_PAGES`] units taken from the page allocator as one
//!   run; a unit is one page in a small segment, `1 << BIG_UNIT` pages in a
//!   big one (the descriptor's `unit`), and every bitmap below counts units.
//!   Bit `i` of `free` is set when unit `i` is in no block; a block is a run
//!   of consecutive units whose head meta has `seg` pointing at the
//!   descriptor, `pages` its length (whole units) and `addr` its address. The segment's
//!   first and last page metas keep the `state` the page allocator wrote
//!   (their neighbours read it under the page lock); the head meta's
//!   `pages`, which a block at page 0 overwrites, is restored on release.
//! * `free`, `dirty` and `idle` belong to the owning heap (whose thread
//!   alone carves and frees locally). Another thread frees a block by
//!   setting its pages in `remote` with one `fetch_or`; the owner folds
//!   `remote` into `free` with one swap when no segment has a place whose
//!   pages are all resident (E103), at its GC and at `flush_all`.
//! * A block of a segment that its owner's thread frees waits whole in
//!   the heap's cache ([`CACHED`] of them, newest first) for the next
//!   block of its length: its units stay out of `free` (statistics count
//!   them free), its first page's tag says free (the others' are cleared
//!   when it leaves the cache for its segment). The segment GC, and a
//!   block of a length none of them has, give them back.
//! * A big block that another thread frees is kept whole, while there is
//!   room, in [`KEPT`] (shared; E104): any thread's next big block of its
//!   length takes it before carving units that fault. Its units stay in
//!   use in the owner's segment; its head meta keeps `seg`. Kept blocks go
//!   back to their segments (as frees) when no thread took one of their
//!   length for a GC period, at `collect()` and out of memory, and an
//!   owner that finds none of its length takes its own back before it
//!   carves units that fault.
//! * `dirty` holds every page that may be resident (taken with the run,
//!   or part of a block since); a purge clears the bits it returns. `idle`
//!   is the free dirty pages at the last GC not carved since: the next GC
//!   purges them, so free pages stay resident for one to two GC periods.
//! * A segment whose pages are all free stays with its heap until a GC
//!   finds it purged (its pages free through a whole GC period), or
//!   `flush_all(h, true)` runs (`collect()`, the reclaim of an exited
//!   thread's heap; not the exit itself: E101); then it goes back
//!   to the page allocator. Releasing it as soon as it emptied made a
//!   thread whose live blocks hover around a segment's worth give back and
//!   take again a segment, through the page lock and the purges, again and
//!   again (E69).

use crate::arena::{self, KeptSlot, PageMeta, KIND_FREE};
use crate::heap::{self, Heap, HEAP_ABANDONED};
use crate::stats::STATS;
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use crate::{os, tls, PAGE_SHIFT};
use core::ptr::null_mut;
use crossbeam_utils::CachePadded;

/// How [`take`] found a block.
pub enum Taken {
    /// Carved from segment `.0` (the caller writes the block's tags, then
    /// its `seg`), its pages never written since they were last purged or
    /// mapped.
    Clean(*mut Segment),
    /// The same, some of its pages possibly written.
    Dirty(*mut Segment),
}

/// Units per segment: one bit each in a `u64`. A small segment's unit is
/// a page (4 MiB segments), a big segment's `1 << BIG_UNIT` pages (32 MiB segments).
pub const SEG_PAGES: usize = 64;
/// The longest block carved from a small segment, in pages: every length
/// below the huge zone's 2 MiB (E68), so that a segment holds at least two.
pub const RUN_MAX: usize = arena::HUGE_RUN_PAGES - 1;
const _: () = assert!(2 * RUN_MAX <= SEG_PAGES);
/// Small segments per heap (32 MiB of large blocks below 2 MiB per
/// thread; beyond, blocks come from the shared page allocator).
pub const SEGS: usize = 8;
/// log2 of a big segment's unit in pages: 8 pages (512 KiB), so a big
/// segment is 32 MiB (E74).
pub const BIG_UNIT: u32 = 3;
/// The longest block carved from a big segment, in pages (8 MiB): a big
/// segment holds at least four. Blocks of 2 MiB up to this come from big
/// segments, rounded up to whole units (address space: the pages past the
/// block's end are never handed out, so they are not written).
pub const BIG_RUN_MAX: usize = (SEG_PAGES << BIG_UNIT) / 4;
/// Big segments per heap (128 MiB of blocks of 2-8 MiB per thread).
pub const BIG_SEGS: usize = 4;
/// Descriptors per heap: the small segments, then the big ones.
pub const SEG_SLOTS: usize = SEGS + BIG_SEGS;

const ALL: u64 = u64::MAX;

/// One segment of a heap. All zero: unused.
#[repr(C)]
pub struct Segment {
    /// Head meta of the segment's run; null when the descriptor is unused.
    meta: *mut PageMeta,
    /// The heap whose descriptor this is.
    heap: *mut Heap,
    /// Address of page 0.
    base: usize,
    /// `free` and `dirty` are atomics only so that [`free_pages`] (the
    /// statistics, any thread) may read them; their owner alone writes
    /// them, with plain loads and stores. Both are 0 while the descriptor
    /// is unused.
    free: AtomicU64,
    dirty: AtomicU64,
    idle: u64,
    /// log2 of the pages per unit (bit): 0, or [`BIG_UNIT`] in a big
    /// segment. Written when the descriptor is opened.
    unit: u32,
    /// Taken from the dense zone (transparent huge pages, E128).
    dense: bool,
    /// Units of blocks freed by other threads, not yet in `free`.
    remote: CachePadded<AtomicU64>,
}

/// Sets owner-only word `a` of a segment to `f` of its value: a plain
/// load and store (no read-modify-write: no other thread writes it).
#[inline]
fn update(a: &AtomicU64, f: impl FnOnce(u64) -> u64) {
    a.store(f(a.load(Relaxed)), Relaxed);
}

/// Pages `[i, i + n)` as bits.
#[inline]
fn mask(i: usize, n: usize) -> u64 {
    (if n >= 64 { ALL } else { (1u64 << n) - 1 }) << i
}

/// Bit `i` set when bits `i..i + n` of `x` are all set (`n >= 1`).
#[inline]
fn runs_of(x: u64, n: usize) -> u64 {
    let (mut r, mut k) = (x, 1);
    while k < n {
        let s = k.min(n - k);
        r &= r >> s;
        k += s;
    }
    r
}

/// The descriptors of heap `h`.
///
/// # Safety
/// `h` is a live heap.
unsafe fn segs(h: *mut Heap) -> *mut Segment {
    // SAFETY: a raw place inside the live heap.
    unsafe { core::ptr::addr_of_mut!((*h).segs) as *mut Segment }
}

/// A block of `pages` pages from heap `h`'s segments: from a small one
/// (1..=[`RUN_MAX`] pages), or when `big` from a big one (up to
/// [`BIG_RUN_MAX`], rounded up to its units): its head meta (`pages`,
/// `addr`, `arena` written) and how it was [`Taken`]. None when the heap's
/// segments of that kind have no room and no segment can be added. The
/// heap's cache goes back to the segments first: a `malloc` looked there
/// for a block of this length already ([`cache_take_pages`]), and a
/// `realloc` that grows a block into a new one does not wait for one.
///
/// # Safety
/// `h` is held by the calling thread; `pages` is in the range of the kind.
pub unsafe fn take(h: *mut Heap, pages: usize, big: bool) -> Option<(*mut PageMeta, Taken)> {
    let (lo, hi, unit) = if big {
        (SEGS, SEG_SLOTS, BIG_UNIT)
    } else {
        (0, SEGS, 0)
    };
    let pages = pages.div_ceil(1 << unit);
    // SAFETY: h is held: its descriptors are ours.
    unsafe {
        cache_flush(h);
        let ss = segs(h);
        let (mut folded, mut reclaimed) = (false, false);
        // A heap that writes its blocks densely faults its fresh units in
        // a dense segment, never in a normal one (E131).
        let dense = writes_densely(h);
        loop {
            let any = best_place(ss, lo..hi, pages, false);
            if let Some((s, i, 0)) = any {
                return Some(carve(s, i, pages));
            }
            let best = if dense {
                best_place(ss, lo..hi, pages, true)
            } else {
                any
            };
            // No place all resident, or none at all: fold the blocks other
            // threads freed (their pages are likely resident) and look
            // again, before carving units that fault or opening a segment
            // (E103: before, remote frees were folded only when no segment
            // had room, so an owner touched fresh pages while the ones its
            // consumers had freed sat resident).
            if !folded && fold(h) {
                folded = true;
                continue;
            }
            // A big block another thread freed, resident, before units
            // that fault (E104).
            if big {
                let m = kept_take(pages);
                if !m.is_null() {
                    // One unit longer: the unit goes back to its segment.
                    let s = (*m).seg;
                    let (i, q) = units(s, m);
                    if q > pages {
                        (*m).pages = (pages << (*s).unit) as u32;
                        give_back(s, mask(i + pages, q - pages));
                    }
                    return Some((m, Taken::Dirty(s)));
                }
                // None of this length: this heap's own blocks that other
                // threads freed and no thread took back (a consumer's frees
                // of a producer's blocks of other lengths) come home, and
                // their units may serve a block of any length.
                if !reclaimed && kept_reclaim(h) {
                    reclaimed = true;
                    continue;
                }
            }
            if let Some((s, i, _)) = best {
                return Some(carve(s, i, pages));
            }
            break;
        }
        for k in lo..hi {
            let s = ss.add(k);
            if (*s).meta.is_null() {
                if !open(s, h, unit) {
                    return None;
                }
                let (i, _) = place(s, pages)?;
                return Some(carve(s, i, pages));
            }
        }
        // No descriptor left for a dense segment: the normal segments'
        // fresh units after all.
        if dense {
            if let Some((s, i, _)) = best_place(ss, lo..hi, pages, false) {
                return Some(carve(s, i, pages));
            }
        }
        None
    }
}

/// The place for a block of `pages` units among the open descriptors
/// `ss[range]` (only the dense segments' with `dense_only`): the first
/// whose units are all resident, else the one with the fewest units not
/// resident; with that count. None when none has room.
///
/// # Safety
/// `ss` are the descriptors of a heap the caller holds.
unsafe fn best_place(
    ss: *mut Segment,
    range: core::ops::Range<usize>,
    pages: usize,
    dense_only: bool,
) -> Option<(*mut Segment, usize, u32)> {
    let mut best: Option<(*mut Segment, usize, u32)> = None;
    for k in range {
        // SAFETY: caller's contract; an open descriptor is ours.
        unsafe {
            let s = ss.add(k);
            if (*s).meta.is_null() || (dense_only && !(*s).dense) {
                continue;
            }
            if let Some((i, fresh)) = place(s, pages) {
                if fresh == 0 {
                    return Some((s, i, 0));
                }
                if best.is_none_or(|b| fresh < b.2) {
                    best = Some((s, i, fresh));
                }
            }
        }
    }
    best
}

/// Whether heap `h`'s new large blocks get huge pages: its thread wrote
/// the last fresh ones it freed densely (score at [`DENSE_AT`], E128) and
/// huge pages are on.
///
/// # Safety
/// `h` is held by the calling thread.
pub unsafe fn writes_densely(h: *mut Heap) -> bool {
    // SAFETY: caller's contract.
    unsafe { (*h).large_dense >= DENSE_AT && arena::huge_zone_on() }
}

/// Where a block of `pages` units goes in open segment `s`: the first
/// place whose units are all resident (no page fault), else the one with
/// the fewest units not resident; with how many those are. None when no
/// place is free.
///
/// # Safety
/// `s` is an open descriptor of a heap the caller holds.
unsafe fn place(s: *mut Segment, pages: usize) -> Option<(usize, u32)> {
    // SAFETY: s is open and ours.
    let (free, dirty) = unsafe { ((*s).free.load(Relaxed), (*s).dirty.load(Relaxed)) };
    let f = runs_of(free, pages);
    if f == 0 {
        return None;
    }
    let d = f & runs_of(dirty, pages);
    if d != 0 {
        return Some((d.trailing_zeros() as usize, 0));
    }
    let (mut best, mut x) = ((0, u32::MAX), f);
    while x != 0 {
        let i = x.trailing_zeros() as usize;
        x &= x - 1;
        let fresh = (mask(i, pages) & !dirty).count_ones();
        if fresh < best.1 {
            best = (i, fresh);
        }
    }
    Some(best)
}

/// Takes a run for unused descriptor `s` of heap `h`, of units of
/// `1 << unit` pages.
///
/// # Safety
/// `h` is held; `s` is one of its unused descriptors.
unsafe fn open(s: *mut Segment, h: *mut Heap, unit: u32) -> bool {
    // SAFETY: h is held.
    let dense = unsafe { writes_densely(h) };
    // Dense: 2 MiB aligned, so the segment is whole huge pages.
    let run = if dense {
        arena::alloc_run(
            SEG_PAGES << unit,
            arena::HUGE_RUN_PAGES,
            arena::Zone::Dense,
            arena::Fit::Tight,
        )
    } else {
        arena::alloc_run(SEG_PAGES << unit, 1, arena::Zone::Normal, arena::Fit::Tight)
    };
    let Some(run) = run else {
        return false;
    };
    crate::stats::note_pages();
    let m = run.meta;
    // SAFETY: the run is ours; s is h's unused descriptor.
    unsafe {
        let idx0 = arena::meta_index(m) as u32;
        (*s).meta = m;
        (*s).heap = h;
        (*s).base = run.addr as usize;
        (*s).free.store(ALL, Relaxed);
        (*s).idle = 0;
        (*s).unit = unit;
        (*s).dense = arena::zone_of(m) == arena::Zone::Dense;
        if (*s).dense {
            STATS.dense_segments.fetch_add(1, Relaxed);
        }
        // The units holding the pages the run was taken with resident.
        (*s).dirty.store(
            if (*m).dlo == (*m).dhi {
                0
            } else {
                let lo = ((*m).dlo - idx0) as usize >> unit;
                let hi = (((*m).dhi - idx0) as usize).div_ceil(1 << unit);
                mask(lo, hi - lo)
            },
            Relaxed,
        );
        (*s).remote.store(0, Relaxed);
    }
    true
}

/// Units `[i, i + n)` of segment `s` become a block: its head meta.
///
/// # Safety
/// `s` is an open descriptor of a heap the caller holds; the pages are free.
unsafe fn carve(s: *mut Segment, i: usize, n: usize) -> (*mut PageMeta, Taken) {
    // SAFETY: forwarded contract.
    unsafe {
        let clean = take_units(s, mask(i, n));
        let m = head(s, i, n);
        (
            m,
            if clean {
                Taken::Clean(s)
            } else {
                Taken::Dirty(s)
            },
        )
    }
}

/// Free units `bits` of segment `s` become part of a block: neither free
/// nor idle, and dirty from now on. Returns whether they were all clean.
///
/// # Safety
/// `s` is an open descriptor of a heap the caller holds; the units are free.
unsafe fn take_units(s: *mut Segment, bits: u64) -> bool {
    // SAFETY: s is open and ours.
    unsafe {
        update(&(*s).free, |f| f & !bits);
        (*s).idle &= !bits;
        let clean = (*s).dirty.load(Relaxed) & bits == 0;
        update(&(*s).dirty, |d| d | bits);
        clean
    }
}

/// Units `[i, i + n)` of segment `s` as a run: the meta of its first
/// page, with its `arena`, `addr` and `pages` written (not `state`: the
/// page allocator's, see the module invariants).
///
/// # Safety
/// `s` is open; the units are the caller's (being carved, or a block's).
unsafe fn head(s: *mut Segment, i: usize, n: usize) -> *mut PageMeta {
    // SAFETY: the metas of a segment are contiguous in its arena's table
    // and unit i + n - 1 is inside the segment.
    unsafe {
        let u = (*s).unit;
        let m = (*s).meta.add(i << u);
        (*m).arena = (*(*s).meta).arena;
        (*m).addr = (*s).base + ((i << u) << PAGE_SHIFT);
        (*m).pages = (n << u) as u32;
        m
    }
}

/// Block `m` of segment `s` as units: (first, count).
///
/// # Safety
/// `m` heads a live block of open segment `s`.
unsafe fn units(s: *mut Segment, m: *mut PageMeta) -> (usize, usize) {
    // SAFETY: caller's contract.
    unsafe {
        let u = (*s).unit;
        (
            ((*m).addr - (*s).base) >> (PAGE_SHIFT + u as usize),
            (*m).pages as usize >> u,
        )
    }
}

/// Frees block `m` of segment `(*m).seg` (any thread).
///
/// # Safety
/// `m` heads a live segment block that the caller gives up.
pub unsafe fn free(m: *mut PageMeta) {
    // SAFETY: m heads a live block: its meta fields were written (and
    // published with the block) by the thread that carved it; s's `heap`
    // and `base` do not change while the block is live.
    unsafe {
        if cache_put(heap::heap_of_slot(tls::get()), m) {
            return;
        }
        let s = (*m).seg;
        let (i, n) = units(s, m);
        // Tags first: a second free of the block is then ignored.
        arena::set_tags(m, 0, KIND_FREE, 0);
        // Another heap's big block is kept for any thread's next block of
        // its length, while there is room (E104).
        if (*s).unit != 0 && keep(m, n) {
            return;
        }
        give_back(s, mask(i, n));
    }
}

/// Large block `m`, which the caller gives up, waits whole in the cache
/// of its segment's heap for that thread's next block of its length, when
/// the calling thread is the owner (true); the oldest block waiting goes
/// back instead (E118). Its first page's tag says free (a second free of
/// the block is then ignored); the others' keep naming the block, whose
/// head no longer says it is live, until it leaves the cache
/// ([`uncache`]). No system call but [`sample`]'s, which keeps errno:
/// `free` needs no errno saved (E120).
///
/// # Safety
/// `m` heads a live large block (of a segment or not) that the caller
/// gives up; `h` is the calling thread's heap (null: none).
#[inline(always)]
pub unsafe fn cache_put(h: *mut Heap, m: *mut PageMeta) -> bool {
    // SAFETY: m heads a live large block: `seg` names its segment or is
    // null; a segment's `heap` never changes; a heap that is the calling
    // thread's is held by it.
    unsafe {
        let s = (*m).seg;
        if s.is_null() || h != (*s).heap {
            return false;
        }
        if (*m).sample {
            sample(h, m);
        }
        arena::set_head_tag(m, KIND_FREE);
        let c = &mut (*h).seg_cache;
        let old = c[CACHED - 1];
        for k in (1..CACHED).rev() {
            c[k] = c[k - 1];
        }
        c[0] = m;
        update(&(*h).seg_cached_pages, |p| p + (*m).pages as u64);
        if !old.is_null() {
            uncache(h, old);
        }
        true
    }
}

/// Whether segment `s` was taken from the dense zone.
///
/// # Safety
/// `s` is an open descriptor.
pub unsafe fn is_dense(s: *mut Segment) -> bool {
    // SAFETY: caller's contract.
    unsafe { (*s).dense }
}

/// [`Heap::large_dense`] at which a heap's new segments come from the
/// dense zone: the last two fresh blocks sampled were written densely.
pub const DENSE_AT: i32 = 2;

/// Whether a fresh large block of `m`'s heap, written by its thread and
/// now freed by it, was written densely: at least 3/4 of its 4 KiB pages
/// resident (`mincore`, one system call, on a block whose pages cost one
/// fault each, or a few for a sparse one: E128). A dense block raises the
/// heap's [`Heap::large_dense`] by one, to at most `DENSE_AT + 1`; a sparse
/// one lowers it by three, to at least -6, so one sparse block takes
/// the heap out of the dense zone, and a heap that wrote a few sparse ones
/// needs several dense ones in a row to come back. Only blocks of segments
/// in the normal zone are looked at (in the dense zone every page of a
/// touched huge page reads resident), so a heap whose segments are all
/// dense stays so until it opens no new ones: E70's sparse blocks of 2–8
/// MiB never enter it, as their first block reads sparse.
///
/// # Safety
/// `h` is held by the calling thread and owns `m`'s segment; `m` heads a
/// live large block of it, given up by the caller.
#[cold]
#[inline(never)]
unsafe fn sample(h: *mut Heap, m: *mut PageMeta) {
    // SAFETY: caller's contract: the block's pages are ours to look at.
    unsafe {
        (*m).sample = false;
        let len = ((*m).given as usize) << PAGE_SHIFT;
        let mut buf = [0u8; SAMPLE_PAGES];
        let Some(n) = os::resident_small_pages((*m).addr as *mut u8, len, &mut buf) else {
            return;
        };
        let looked = (len / 4096).min(SAMPLE_PAGES);
        score(h, 4 * n >= 3 * looked);
    }
}

/// Notes in heap `h`'s [`Heap::large_dense`] a large block its thread
/// wrote densely (+1, to at most `DENSE_AT + 1`) or sparsely (−3, to at
/// least −6): [`sample`], and a big block of the huge zone that the page
/// allocator read sparse when the thread freed it (E134).
///
/// # Safety
/// `h` is held by the calling thread.
pub unsafe fn score(h: *mut Heap, dense: bool) {
    // SAFETY: caller's contract.
    let d = unsafe { &mut (*h).large_dense };
    *d = if dense {
        (*d + 1).min(DENSE_AT + 1)
    } else {
        (*d - 3).max(-6)
    };
}

/// The most 4 KiB pages of a block [`sample`] looks at (8 MiB: every
/// block of a segment).
const SAMPLE_PAGES: usize = (BIG_RUN_MAX << PAGE_SHIFT) / 4096;

/// Blocks of its segments a heap keeps after its thread freed them
/// (`Heap::seg_cache`): a thread that takes a buffer of 128 KiB to 8 MiB
/// and frees it, again and again, then gets the same block back without
/// a search of its segments (E118: a `malloc` and `free` of 256 KiB took
/// 560 instructions, tcmalloc's thread cache about 30). Their units stay
/// in use, their first page's tag says free (a second `free` of one is
/// ignored; the other pages' tags are written when it leaves); the
/// segment GC gives them back ([`gc`]), so they wait at most a GC period.
pub const CACHED: usize = 2;

/// A block for `pages` pages (at most [`BIG_RUN_MAX`]) from heap `h`'s
/// cache, taken out of it and live again: one of that length rounded up
/// as [`take`] rounds it; null when none waits. The fast path of a large
/// `malloc` (E120), before any other work.
///
/// # Safety
/// `h` is held by the calling thread.
#[inline(always)]
pub unsafe fn cache_take_pages(h: *mut Heap, pages: usize) -> *mut PageMeta {
    let pages = if pages > RUN_MAX {
        pages.div_ceil(1 << BIG_UNIT) << BIG_UNIT
    } else {
        pages
    };
    // SAFETY: h is held: its cache is ours; cached blocks are live metas.
    unsafe {
        let c = &mut (*h).seg_cache;
        for k in 0..CACHED {
            let m = c[k];
            if !m.is_null() && (*m).pages as usize == pages {
                for j in k..CACHED - 1 {
                    c[j] = c[j + 1];
                }
                c[CACHED - 1] = null_mut();
                update(&(*h).seg_cached_pages, |p| p - pages as u64);
                arena::set_head_tag(m, arena::KIND_LARGE);
                return m;
            }
        }
        null_mut()
    }
}

/// Cached block `m` goes back to its segment, its tags cleared.
///
/// # Safety
/// `m` was in the cache of `h`, which the calling thread holds, and has
/// just left it.
unsafe fn uncache(h: *mut Heap, m: *mut PageMeta) {
    // SAFETY: caller's contract: m heads a carved block of its segment.
    unsafe {
        let s = (*m).seg;
        let (i, n) = units(s, m);
        update(&(*h).seg_cached_pages, |p| p - (*m).pages as u64);
        arena::set_tags(m, 0, KIND_FREE, 0);
        give_back(s, mask(i, n));
    }
}

/// Every block in heap `h`'s cache goes back to its segment.
///
/// # Safety
/// `h` is held.
unsafe fn cache_flush(h: *mut Heap) {
    // SAFETY: h is held: its cache is ours.
    unsafe {
        for k in 0..CACHED {
            let m = core::mem::replace(&mut (*h).seg_cache[k], null_mut());
            if !m.is_null() {
                uncache(h, m);
            }
        }
    }
}

/// Pages `bits` of segment `s`, which the caller held and no longer uses,
/// go back to it: with plain stores from the owner's thread, else into
/// `remote` (and a reclaim is due when the owner's thread has exited).
///
/// # Safety
/// The pages are the caller's (a block or its tail) and their tags are
/// cleared.
unsafe fn give_back(s: *mut Segment, bits: u64) {
    // SAFETY: `heap` never changes; `free` is the owner's alone, and the
    // owner's thread is the calling one on that branch.
    unsafe {
        let h = (*s).heap;
        if heap::heap_of_slot(tls::get()) == h {
            update(&(*s).free, |f| f | bits);
        } else {
            (*s).remote.fetch_or(bits, Release);
            if (*h).state.load(Relaxed) == HEAP_ABANDONED {
                heap::reclaim_tick();
            }
        }
    }
}

/// Shortens live block `m` of a segment to `new_pages` pages rounded up to
/// its segment's units (any thread): the units after them go back to the
/// segment. Returns the block's length in pages now.
///
/// # Safety
/// `m` heads a live segment block of more than `new_pages` (>= 1) pages,
/// held by the caller; nothing past the first `new_pages` pages is used.
pub unsafe fn shrink(m: *mut PageMeta, new_pages: usize) -> usize {
    // SAFETY: m heads a live block (see `free`); its tail units are the
    // caller's, and their meta is inside the segment past page 0.
    unsafe {
        // Its length changes: no longer one block as carved (E128).
        (*m).sample = false;
        let s = (*m).seg;
        let (i, n) = units(s, m);
        let u = (*s).unit;
        let keep = new_pages.div_ceil(1 << u);
        if keep < n {
            // The first units keep their tags; the tail's are cleared.
            arena::set_tags(head(s, i + keep, n - keep), 0, KIND_FREE, 0);
            (*m).pages = (keep << u) as u32;
            give_back(s, mask(i + keep, n - keep));
        }
        (*m).pages as usize
    }
}

/// Lengthens live block `m` of a segment in place to `new_pages` pages
/// rounded up to its segment's units, when the calling thread owns the
/// segment, the units after the block are free (remote frees folded in if
/// that makes them so) and the block stays within its kind's longest run
/// ([`RUN_MAX`] pages in a small segment, [`BIG_RUN_MAX`] in a big one).
/// Returns the block's length in pages now, or None (the block unchanged).
/// A `realloc` that grows a block a little at a time then copies nothing
/// while its neighbours are free.
///
/// # Safety
/// `m` heads a live segment block of fewer than `new_pages` pages, held by
/// the caller.
pub unsafe fn grow(m: *mut PageMeta, new_pages: usize) -> Option<usize> {
    // SAFETY: m heads a live block (see `free`); `free`, `idle` and `dirty`
    // are written only on the owner's thread, which is checked first to
    // be the calling one; the new units' metas are inside the segment.
    unsafe {
        // Its length changes: no longer one block as carved (E128).
        (*m).sample = false;
        let s = (*m).seg;
        let h = (*s).heap;
        if heap::heap_of_slot(tls::get()) != h {
            return None;
        }
        let u = (*s).unit;
        let (i, n) = units(s, m);
        let want = new_pages.div_ceil(1 << u);
        let longest = if u == 0 { RUN_MAX } else { BIG_RUN_MAX >> u };
        if want <= n || want > longest || i + want > SEG_PAGES {
            return None;
        }
        let extra = mask(i + n, want - n);
        // The units after the block may be a cached block's.
        if (*s).free.load(Relaxed) & extra != extra {
            cache_flush(h);
        }
        if (*s).free.load(Relaxed) & extra != extra
            && ((*s).remote.load(Relaxed) & extra == 0
                || !fold(h)
                || (*s).free.load(Relaxed) & extra != extra)
        {
            return None;
        }
        take_units(s, extra);
        (*m).pages = (want << u) as u32;
        arena::set_tags(m, 0, arena::KIND_LARGE, 0);
        Some((*m).pages as usize)
    }
}

/// Folds the remote frees of every segment of `h` into `free`; true when
/// there were some.
///
/// # Safety
/// `h` is held.
unsafe fn fold(h: *mut Heap) -> bool {
    let mut any = false;
    // SAFETY: h is held.
    unsafe {
        let ss = segs(h);
        for k in 0..SEG_SLOTS {
            let s = ss.add(k);
            if (*s).meta.is_null() || (*s).remote.load(Relaxed) == 0 {
                continue;
            }
            let r = (*s).remote.swap(0, Acquire);
            update(&(*s).free, |f| f | r);
            any = true;
        }
    }
    any
}

/// Returns segment `s` (empty) to the page allocator, with the hull of
/// its possibly resident pages.
///
/// # Safety
/// `s` is an open, empty descriptor of a heap the caller holds.
unsafe fn release(s: *mut Segment) {
    // SAFETY: s is ours and empty: no block names its pages.
    unsafe {
        let m = (*s).meta;
        let u = (*s).unit;
        let d = (*s).dirty.load(Relaxed);
        (*s).free.store(0, Relaxed);
        (*s).dirty.store(0, Relaxed);
        (*m).pages = (SEG_PAGES << u) as u32;
        (*m).addr = (*s).base;
        (*m).given = 0;
        let (lo, hi) = if d == 0 {
            (0, 0)
        } else {
            let i0 = arena::meta_index(m) as u32;
            (
                i0 + (d.trailing_zeros() << u),
                i0 + ((SEG_PAGES as u32 - d.leading_zeros()) << u),
            )
        };
        (*m).dlo = lo;
        (*m).dhi = hi;
        (*s).meta = null_mut();
        // No page was handed out as such: the hull is the whole story.
        arena::free_large_run(m, 0, false);
    }
}

/// Gives the units in `bits` of segment `s` back to the kernel.
///
/// # Safety
/// `s` is open and ours; the units are free.
unsafe fn purge(s: *mut Segment, bits: u64) {
    // SAFETY: s is open: its unit is set.
    let u = unsafe { (*s).unit } as usize;
    let mut x = bits;
    let mut purged = 0;
    while x != 0 {
        let lo = x.trailing_zeros() as usize;
        let n = (!(x >> lo)).trailing_zeros() as usize;
        let len = n << (PAGE_SHIFT + u);
        // SAFETY: free units of our segment: no live data.
        if unsafe { os::purge(((*s).base + (lo << (PAGE_SHIFT + u))) as *mut u8, len) } {
            purged |= mask(lo, n);
            STATS.purges.fetch_add(1, Relaxed);
            STATS.purged_bytes.fetch_add(len as u64, Relaxed);
        }
        // Refused (locked pages, a seccomp filter): the units stay dirty,
        // so a `calloc` carved from them clears them, and the next GC
        // tries again.
        x &= !mask(lo, n);
    }
    // SAFETY: as above.
    unsafe { update(&(*s).dirty, |d| d & !purged) };
}

/// Heap `h`'s segment GC: folds remote frees; purges the free pages that
/// stayed free and resident since the last GC (all free resident pages,
/// when `all`); releases empty segments that are purged (every empty one,
/// when `all`: `collect()` and the reclaim of an exited thread's heap).
///
/// # Safety
/// `h` is held.
pub unsafe fn gc(h: *mut Heap, all: bool) {
    // SAFETY: h is held.
    unsafe {
        cache_flush(h);
        fold(h);
        let ss = segs(h);
        for k in 0..SEG_SLOTS {
            let s = ss.add(k);
            if (*s).meta.is_null() {
                continue;
            }
            let free = (*s).free.load(Relaxed);
            let mut p = free & (*s).dirty.load(Relaxed);
            if !all {
                p &= (*s).idle;
            }
            if p != 0 {
                purge(s, p);
            }
            let dirty = (*s).dirty.load(Relaxed);
            (*s).idle = free & dirty;
            if free == ALL && (all || dirty == 0) {
                release(s);
            }
        }
    }
}

/// Under memory pressure (the page allocator refused a run): runs heap
/// `h`'s segment GC with everything due ([`gc`] with `all`), so that its
/// empty segments go back to the page allocator; true when one did.
///
/// # Safety
/// `h` is held.
pub unsafe fn release_for_retry(h: *mut Heap) -> bool {
    // SAFETY: h is held: its descriptors are ours.
    unsafe {
        let open = |h: *mut Heap| {
            (0..SEG_SLOTS)
                .filter(|&k| !(*segs(h).add(k)).meta.is_null())
                .count()
        };
        let before = open(h);
        gc(h, true);
        open(h) < before
    }
}

/// Pages free in heap `h`'s segments, and how many of those may be
/// resident: `(free, free and written)`. Any thread; a snapshot, each
/// segment read at a different moment (frees of other threads not yet
/// folded count as in use).
///
/// # Safety
/// `h` is a registered heap (heaps are never freed).
pub unsafe fn free_pages(h: *mut Heap) -> (u64, u64) {
    let (mut f, mut fd) = (0, 0);
    // SAFETY: descriptors live inside the heap; only their atomics are read.
    unsafe {
        let ss = segs(h);
        for k in 0..SEG_SLOTS {
            let s = ss.add(k);
            let free = (*s).free.load(Relaxed);
            // (From the slot, not `unit`: that is the owner's to write.)
            let u = if k < SEGS { 0 } else { BIG_UNIT };
            f += (free.count_ones() as u64) << u;
            fd += ((free & (*s).dirty.load(Relaxed)).count_ones() as u64) << u;
        }
        // Cached blocks are free pages, written.
        let c = (*h).seg_cached_pages.load(Relaxed);
        f += c;
        fd += c;
    }
    (f, fd)
}

// ---------------------------------------------------------------------------
// Kept big blocks (E104)

/// The fewest units of a big segment's block (a block of more than
/// [`RUN_MAX`] pages).
const KEPT_MIN_UNITS: usize = (RUN_MAX >> BIG_UNIT) + 1;
/// The most units of a big segment's block.
const KEPT_MAX_UNITS: usize = BIG_RUN_MAX >> BIG_UNIT;
/// Slots per block length.
const KEPT_WAYS: usize = 4;

/// At most this many units kept: twice the dirty cap
/// (`HZ_PURGE_MAX_DIRTY_MB`), 64 MiB by default.
fn kept_cap_units() -> usize {
    let bytes = crate::config::CONFIG.max_dirty_bytes.load(Relaxed) as usize;
    bytes.saturating_mul(2) >> (PAGE_SHIFT + BIG_UNIT as usize)
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_BLOCKS: [KeptSlot; KEPT_WAYS] = [KeptSlot::EMPTY; KEPT_WAYS];

/// Big blocks that a thread other than their segment's owner freed, kept
/// whole (their units still in use in the owner's segment, tags cleared)
/// for the next big block of about their length from any thread: the
/// owner's thread could reuse them only after folding them in, and no
/// other thread at all, so a program that passes blocks of 2–8 MiB
/// between threads kept them resident in one heap while the others
/// faulted fresh units in (M40). Shared and lock-free, as the page
/// allocator's kept runs are (E61, E62): a block is put and taken with one
/// atomic operation on its length's slots.
static KEPT: [[KeptSlot; KEPT_WAYS]; KEPT_MAX_UNITS + 1 - KEPT_MIN_UNITS] =
    [NO_BLOCKS; KEPT_MAX_UNITS + 1 - KEPT_MIN_UNITS];
/// Units of the blocks in [`KEPT`].
static KEPT_UNITS: AtomicUsize = AtomicUsize::new(0);
/// Bit `n - KEPT_MIN_UNITS`: a block of `n` units was taken since the
/// last [`kept_gc`].
static KEPT_USED: AtomicU32 = AtomicU32::new(0);
/// When the next [`kept_gc`] is due (coarse ms).
static KEPT_GC_AT: AtomicU64 = AtomicU64::new(0);

/// Keeps big block `m` of `n` units (given up, tags cleared) in [`KEPT`];
/// false when its length's slots are taken, the kept units would pass
/// [`kept_cap_units`], or it is shorter than 2 MiB.
///
/// # Safety
/// `m` heads a block of a big segment that the caller gives up.
unsafe fn keep(m: *mut PageMeta, n: usize) -> bool {
    // (Out of memory, a block below 2 MiB may come from a big segment.)
    if n < KEPT_MIN_UNITS {
        return false;
    }
    let slots = &KEPT[n - KEPT_MIN_UNITS];
    let Some(slot) = slots.iter().find(|k| k.is_empty()) else {
        return false;
    };
    if KEPT_UNITS.fetch_add(n, Relaxed) + n > kept_cap_units() {
        KEPT_UNITS.fetch_sub(n, Relaxed);
        return false;
    }
    if slot.put(m) {
        return true;
    }
    KEPT_UNITS.fetch_sub(n, Relaxed);
    false
}

/// A kept big block for a block of `n` units: of `n` units, or `n + 1`
/// when `n` is at least 8 (its `pages` says which), the caller's now (in
/// use, tags cleared, `seg` naming its segment, its pages written by an
/// earlier block); null when none is kept.
fn kept_take(n: usize) -> *mut PageMeta {
    if n < KEPT_MIN_UNITS || KEPT_UNITS.load(Relaxed) == 0 {
        return null_mut();
    }
    for q in n..=(n + n / 8).min(KEPT_MAX_UNITS) {
        for k in KEPT[q - KEPT_MIN_UNITS].iter() {
            let m = k.take();
            if !m.is_null() {
                KEPT_UNITS.fetch_sub(q, Relaxed);
                let bit = 1 << (q - KEPT_MIN_UNITS);
                if KEPT_USED.load(Relaxed) & bit == 0 {
                    KEPT_USED.fetch_or(bit, Relaxed);
                }
                return m;
            }
        }
    }
    null_mut()
}

/// Gives kept blocks back to their segments: those of heap `only`, or of
/// every heap when it is null, skipping the lengths whose bits are set in
/// `skip` (a block of another heap taken out of its slot is put back, or
/// goes home when the slot was filled meanwhile). True when it gave one
/// back.
fn kept_drain(skip: u32, only: *mut Heap) -> bool {
    let mut any = false;
    for (x, slots) in KEPT.iter().enumerate() {
        if skip & (1 << x) != 0 {
            continue;
        }
        for k in slots.iter() {
            let m = k.take();
            if m.is_null() {
                continue;
            }
            // SAFETY: a kept block, ours now: its meta names its segment,
            // which it holds open, and that segment's heap; its tags are
            // cleared; give_back writes `free` only on the owner's thread.
            unsafe {
                let s = (*m).seg;
                if !only.is_null() && (*s).heap != only && k.put(m) {
                    continue;
                }
                let (i, n) = units(s, m);
                KEPT_UNITS.fetch_sub(n, Relaxed);
                give_back(s, mask(i, n));
                any = true;
            }
        }
    }
    any
}

/// Takes heap `h`'s own blocks out of [`KEPT`] and frees them into its
/// segments; true when it gave any block back.
///
/// # Safety
/// `h` is held by the calling thread, between operations on its segments.
unsafe fn kept_reclaim(h: *mut Heap) -> bool {
    KEPT_UNITS.load(Relaxed) != 0 && kept_drain(0, h)
}

/// Gives the kept blocks back to their segments: all of them, or when
/// `idle` those of the lengths no thread took since the last call with
/// `idle`.
pub fn kept_flush(idle: bool) {
    let used = if idle { KEPT_USED.swap(0, Relaxed) } else { 0 };
    kept_drain(used, null_mut());
}

/// Every `period` ms (from any thread's tick): the kept blocks of the
/// lengths no thread took during the last period go back to their
/// segments, whose owners' GC purges them a period or two later.
pub fn kept_gc(now: u64, period: u64) {
    if os::due(&KEPT_GC_AT, now, period) {
        if KEPT_UNITS.load(Relaxed) != 0 {
            kept_flush(true);
        } else {
            KEPT_USED.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mask, runs_of};

    #[test]
    fn runs_of_finds_every_place_with_n_free_pages() {
        let xs = [
            0u64,
            u64::MAX,
            0b1011_0111,
            0xf0f0_ff00_0000_fff1,
            1 << 63,
            (1 << 63) | 3,
        ];
        for &x in &xs {
            for n in 1..=64 {
                let mut want = 0u64;
                for i in 0..=(64 - n) {
                    if x & mask(i, n) == mask(i, n) {
                        want |= 1 << i;
                    }
                }
                assert_eq!(runs_of(x, n), want, "x={x:#x} n={n}");
            }
        }
    }
}
