//! Large-block segments (default build): each thread heap cuts its large
//! blocks of up to [`RUN_MAX`] pages (below 2 MiB) out of segments of its own, so
//! that a thread allocating and freeing such blocks touches no line another
//! thread writes (E67; mimalloc's thread-local segments).
//!
//! Owns: the [`Segment`] descriptors inside each [`Heap`] (at most
//! [`SEGS`]); the runs carved from them.
//! May touch: `arena` (a segment is one in-use run of the page allocator;
//! the metas and tags of the pages inside it), `heap` (the owner's state),
//! `os` (purging), `stats`.
//!
//! Invariants:
//! * A segment is [`SEG_PAGES`] pages taken from the page allocator as one
//!   run. Bit `i` of `free` is set when page `i` is in no block; a block is
//!   a run of consecutive pages whose head meta has `seg` pointing at the
//!   descriptor, `pages` its length and `addr` its address. The segment's
//!   first and last page metas keep the `state` the page allocator wrote
//!   (their neighbours read it under the page lock); the head meta's
//!   `pages`, which a block at page 0 overwrites, is restored on release.
//! * `free`, `dirty` and `idle` belong to the owning heap (whose thread
//!   alone carves and frees locally). Another thread frees a block by
//!   setting its pages in `remote` with one `fetch_or`; the owner folds
//!   `remote` into `free` with one swap when no segment has room, at its
//!   GC and at `flush_all`.
//! * `dirty` holds every page that may be resident (taken with the run,
//!   or part of a block since); a purge clears the bits it returns. `idle`
//!   is the free dirty pages at the last GC not carved since: the next GC
//!   purges them, so free pages stay resident for one to two GC periods.
//! * A segment whose pages are all free stays with its heap until a GC
//!   finds it purged (its pages free through a whole GC period), or
//!   `flush_all(h, true)` runs (thread exit, `collect()`); then it goes back
//!   to the page allocator. Releasing it as soon as it emptied made a
//!   thread whose live blocks hover around a segment's worth give back and
//!   take again a segment, through the page lock and the purges, again and
//!   again (E69).

use crate::arena::{self, PageMeta, KIND_FREE};
use crate::heap::{self, Heap, HEAP_ABANDONED};
use crate::stats::STATS;
use crate::sync::{AtomicU64, Ordering::*};
use crate::{os, tls, PAGE_SHIFT};
use core::ptr::null_mut;
use crossbeam_utils::CachePadded;

/// Pages per segment (4 MiB): one bit each in a `u64`.
pub const SEG_PAGES: usize = 64;
/// The longest block carved from a segment, in pages: every length below
/// the huge zone's 2 MiB (E68), so that a segment holds at least two.
pub const RUN_MAX: usize = arena::HUGE_RUN_PAGES - 1;
const _: () = assert!(2 * RUN_MAX <= SEG_PAGES);
/// Segments per heap (32 MiB of large blocks per thread; beyond, blocks
/// come from the shared page allocator).
pub const SEGS: usize = 8;

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
    /// Pages of blocks freed by other threads, not yet in `free`.
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

/// A block of `pages` pages (1..=[`RUN_MAX`]) from heap `h`'s segments:
/// its head meta (`pages`, `addr`, `arena` written; the caller writes its
/// tags and then `seg`), its segment, and whether its pages are clean
/// (never written since they were last purged or mapped). None when the
/// heap's segments have no room and no segment can be added.
///
/// # Safety
/// `h` is held by the calling thread.
pub unsafe fn take(h: *mut Heap, pages: usize) -> Option<(*mut PageMeta, *mut Segment, bool)> {
    // SAFETY: h is held: its descriptors are ours.
    unsafe {
        let ss = segs(h);
        let mut folded = false;
        loop {
            let mut best: Option<(*mut Segment, usize, u32)> = None;
            for k in 0..SEGS {
                let s = ss.add(k);
                if (*s).meta.is_null() {
                    continue;
                }
                if let Some((i, fresh)) = place(s, pages) {
                    if fresh == 0 {
                        return Some(carve(s, i, pages));
                    }
                    if best.is_none_or(|b| fresh < b.2) {
                        best = Some((s, i, fresh));
                    }
                }
            }
            if let Some((s, i, _)) = best {
                return Some(carve(s, i, pages));
            }
            if folded || !fold(h) {
                break;
            }
            folded = true;
        }
        for k in 0..SEGS {
            let s = ss.add(k);
            if (*s).meta.is_null() {
                if !open(s, h) {
                    return None;
                }
                let (i, _) = place(s, pages)?;
                return Some(carve(s, i, pages));
            }
        }
        None
    }
}

/// Where a block of `pages` pages goes in open segment `s`: the first
/// place whose pages are all resident (no page fault), else the one with
/// the fewest pages not resident; with how many those are. None when no
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

/// Takes a run for unused descriptor `s` of heap `h`.
///
/// # Safety
/// `h` is held; `s` is one of its unused descriptors.
unsafe fn open(s: *mut Segment, h: *mut Heap) -> bool {
    let Some(run) = arena::alloc_run(SEG_PAGES, 1, arena::Zone::Normal) else {
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
        // The pages the run was taken with resident.
        (*s).dirty.store(
            if (*m).dlo == (*m).dhi {
                0
            } else {
                mask(((*m).dlo - idx0) as usize, ((*m).dhi - (*m).dlo) as usize)
            },
            Relaxed,
        );
        (*s).remote.store(0, Relaxed);
    }
    true
}

/// Pages `[i, i + n)` of segment `s` become a block: its head meta.
///
/// # Safety
/// `s` is an open descriptor of a heap the caller holds; the pages are free.
unsafe fn carve(s: *mut Segment, i: usize, n: usize) -> (*mut PageMeta, *mut Segment, bool) {
    let bits = mask(i, n);
    // SAFETY: s is open and ours; the pages are free.
    unsafe {
        update(&(*s).free, |f| f & !bits);
        (*s).idle &= !bits;
        let clean = (*s).dirty.load(Relaxed) & bits == 0;
        update(&(*s).dirty, |d| d | bits);
        (head(s, i, n), s, clean)
    }
}

/// Pages `[i, i + n)` of segment `s` as a run: the meta of page `i`, with
/// its `arena`, `addr` and `pages` written (not `state`: the page
/// allocator's, see the module invariants).
///
/// # Safety
/// `s` is open; the pages are the caller's (being carved, or a block's).
unsafe fn head(s: *mut Segment, i: usize, n: usize) -> *mut PageMeta {
    // SAFETY: the metas of a segment are contiguous in its arena's table
    // and page i + n - 1 is inside the segment.
    unsafe {
        let m = (*s).meta.add(i);
        (*m).arena = (*(*s).meta).arena;
        (*m).addr = (*s).base + (i << PAGE_SHIFT);
        (*m).pages = n as u32;
        m
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
        let s = (*m).seg;
        let bits = mask(((*m).addr - (*s).base) >> PAGE_SHIFT, (*m).pages as usize);
        // Tags first: a second free of the block is then ignored.
        arena::set_tags(m, 0, KIND_FREE, 0);
        give_back(s, bits);
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

/// Shortens live block `m` of a segment to `new_pages` pages (any thread):
/// the pages after them go back to the segment.
///
/// # Safety
/// `m` heads a live segment block of more than `new_pages` (>= 1) pages,
/// held by the caller; nothing past the first `new_pages` pages is used.
pub unsafe fn shrink(m: *mut PageMeta, new_pages: usize) {
    // SAFETY: m heads a live block (see `free`); its tail pages are the
    // caller's, and their meta is inside the segment past page 0.
    unsafe {
        let s = (*m).seg;
        let n = (*m).pages as usize;
        let i = ((*m).addr - (*s).base) >> PAGE_SHIFT;
        // The first new_pages keep their tags; the tail's are cleared.
        arena::set_tags(head(s, i + new_pages, n - new_pages), 0, KIND_FREE, 0);
        (*m).pages = new_pages as u32;
        give_back(s, mask(i + new_pages, n - new_pages));
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
        for k in 0..SEGS {
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
        let d = (*s).dirty.load(Relaxed);
        (*s).free.store(0, Relaxed);
        (*s).dirty.store(0, Relaxed);
        (*m).pages = SEG_PAGES as u32;
        (*m).addr = (*s).base;
        (*m).given = 0;
        let (lo, hi) = if d == 0 {
            (0, 0)
        } else {
            let i0 = arena::meta_index(m) as u32;
            (
                i0 + d.trailing_zeros(),
                i0 + SEG_PAGES as u32 - d.leading_zeros(),
            )
        };
        (*m).dlo = lo;
        (*m).dhi = hi;
        (*s).meta = null_mut();
        // No page was handed out as such: the hull is the whole story.
        arena::free_large_run(m, 0, false);
    }
}

/// Gives the pages in `bits` of segment `s` back to the kernel.
///
/// # Safety
/// `s` is open and ours; the pages are free.
unsafe fn purge(s: *mut Segment, bits: u64) {
    let mut x = bits;
    while x != 0 {
        let lo = x.trailing_zeros() as usize;
        let n = (!(x >> lo)).trailing_zeros() as usize;
        let len = n << PAGE_SHIFT;
        // SAFETY: free pages of our segment: no live data.
        unsafe { os::purge(((*s).base + (lo << PAGE_SHIFT)) as *mut u8, len) };
        STATS.purges.fetch_add(1, Relaxed);
        STATS.purged_bytes.fetch_add(len as u64, Relaxed);
        x &= !mask(lo, n);
    }
    // SAFETY: as above.
    unsafe { update(&(*s).dirty, |d| d & !bits) };
}

/// Heap `h`'s segment GC: folds remote frees; purges the free pages that
/// stayed free and resident since the last GC (all free resident pages,
/// when `all`); releases empty segments that are purged (every empty one,
/// when `all`: thread exit and `collect()`).
///
/// # Safety
/// `h` is held.
pub unsafe fn gc(h: *mut Heap, all: bool) {
    // SAFETY: h is held.
    unsafe {
        fold(h);
        let ss = segs(h);
        for k in 0..SEGS {
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
        for k in 0..SEGS {
            let s = ss.add(k);
            let free = (*s).free.load(Relaxed);
            f += free.count_ones() as u64;
            fd += (free & (*s).dirty.load(Relaxed)).count_ones() as u64;
        }
    }
    (f, fd)
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
