//! The public API and the malloc/free fast paths (see the crate docs for
//! the picture). Everything here is a thin layer over `heap` (small blocks)
//! and `arena` (page runs for large blocks).

use crate::arena::{self, tag_class, tag_kind, KIND_LARGE};
use crate::class::{class_for, class_of, CLASS_SIZE, NUM_CLASSES, SMALL_MAX};
use crate::stats as counters;
use crate::sync::Ordering::Relaxed;
use crate::{config, heap, os, tls, PAGE_SHIFT, PAGE_SIZE};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{addr_of_mut, null_mut};

/// Requests above this many bytes fail (`PTRDIFF_MAX` minus slack).
const MAX_REQUEST: usize = (isize::MAX as usize) - 2 * PAGE_SIZE;
/// Bytes at the end of each large run kept as a guard (`secure` only).
#[cfg(feature = "secure")]
const GUARD_BYTES: usize = crate::secure::GUARD;
#[cfg(not(feature = "secure"))]
const GUARD_BYTES: usize = 0;
/// Large blocks at least this big move by `mremap` instead of copying.
const MREMAP_MIN: usize = 1 << 20;

/// The global allocator:
/// `#[global_allocator] static GLOBAL: hz_core::HzAlloc = hz_core::HzAlloc;`
pub struct HzAlloc;

// SAFETY: blocks are at least `layout.size()` bytes, aligned to
// `layout.align()`, never overlap while live; null on failure; no unwinding.
unsafe impl GlobalAlloc for HzAlloc {
    #[inline(always)]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let c = class_for(l.size(), l.align());
        if c != 0 {
            alloc_small(c)
        } else {
            alloc_large(l.size(), l.align(), false)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        calloc_aligned(l.size(), l.align())
    }

    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        #[cfg(feature = "secure")]
        // SAFETY: forwarded contract; the layout is checked against the tag.
        return unsafe { secure_free(p, Some(l)) };
        // Below 8 KiB the layout names the class (class_for is a pure
        // function, blocks never change class, and `realloc` gives such a
        // layout exactly its class), so no tag lookup is needed. From 8 KiB
        // `realloc` may have made the block large to grow in place (E157):
        // the tag says which.
        #[allow(unreachable_code)]
        let c = untagged_class(l.size(), l.align());
        if c != 0 {
            // SAFETY: p is a live block of class c.
            unsafe { free_small(p, c) }
        } else {
            // SAFETY: p is a live block of hz.
            unsafe { free_not_small(p) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // A small block to a small class: both classes from the layouts
        // (as `dealloc` has it), so no tag is read (E124). The secure
        // build checks the block in `resize`.
        #[cfg(not(feature = "secure"))]
        {
            let c = untagged_class(l.size(), l.align());
            let new_c = untagged_class(n, l.align());
            if c != 0 && new_c != 0 {
                if new_c == c {
                    return p;
                }
                let q = alloc_small(new_c);
                if !q.is_null() {
                    // SAFETY: both blocks are live and distinct; the
                    // program's bytes are the first l.size() of p; p is
                    // a live block of class c.
                    unsafe {
                        core::ptr::copy_nonoverlapping(p, q, l.size().min(n));
                        free_small(p, c);
                    }
                }
                return q;
            }
            if l.align() <= 16 {
                // SAFETY: p is a live block of the layout's size.
                return unsafe { realloc_global(p, l.size(), n) };
            }
        }
        // SAFETY: p is a live block allocated with alignment l.align().
        unsafe { realloc_aligned(p, n, l.align()) }
    }
}

/// The first class that `GlobalAlloc::dealloc` and `realloc` do not take
/// from the layout alone but read the tag for: 8 KiB, where a growing
/// block may be made large (E157).
const TAGGED_FROM: usize = 36;
const _: () = assert!(CLASS_SIZE[TAGGED_FROM] as usize == 8 << 10);

/// The largest size of 16-byte alignment whose class is below
/// [`TAGGED_FROM`].
const UNTAGGED_MAX: usize = CLASS_SIZE[TAGGED_FROM - 1] as usize;

/// The class of a `Layout` that names its block exactly (below
/// [`TAGGED_FROM`]); 0 for one of 8 KiB or more, or large, whose tag says
/// what its block is. At the default alignment one compare of the size,
/// which also stands for `class_of`'s own test of [`SMALL_MAX`].
#[inline(always)]
fn untagged_class(size: usize, align: usize) -> usize {
    if align <= 16 {
        if size <= UNTAGGED_MAX {
            class_of(size)
        } else {
            0
        }
    } else {
        let c = class_for(size, align);
        if c < TAGGED_FROM {
            c
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------
// Fast paths

#[inline(always)]
fn alloc_small(c: usize) -> *mut u8 {
    alloc_small_with(c, alloc_small_slow)
}

/// A block of class `c` from this thread's bin, or `slow(c)` when the bin
/// is empty (a tail call: the fast path saves no register). `secure`: the
/// block's free marker is cleared here on the fast path, and by
/// [`alloc_small_slow`] on the slow one, so that neither needs the class
/// after a call returns.
#[inline(always)]
fn alloc_small_with(c: usize, slow: fn(usize) -> *mut u8) -> *mut u8 {
    let h = tls::get();
    // SAFETY: h points at this thread's heap or at a static empty heap whose
    // bins are both empty and full (top == base == end), so the pop below is
    // taken only for a real heap. Raw places: no reference to a static.
    unsafe {
        let bin = addr_of_mut!((*h).b[c]);
        let top = (*bin).top;
        if top != (*bin).base {
            let top = top.sub(1);
            (*bin).top = top;
            // (`secure` with HZ_SECURE_FILL=1 never gets here: its TLS
            // slot names bins that are always empty, `heap::Heap::decoy`,
            // so `slow`, which checks the marker, hands out every block;
            // likewise every free goes to `free_small_slow`, which fills.)
            #[cfg(feature = "secure")]
            return crate::secure::on_alloc_fast(*top);
            #[cfg(not(feature = "secure"))]
            return *top;
        }
    }
    slow(c)
}

/// The slow path of [`alloc_small_with`]: a block of class `c`, or null
/// when out of memory (`secure`: with its free marker cleared).
#[cold]
#[inline(never)]
fn alloc_small_slow(c: usize) -> *mut u8 {
    let p = alloc_small_slow_raw(c);
    #[cfg(feature = "secure")]
    if !p.is_null() {
        return crate::secure::on_alloc(p, c);
    }
    p
}

#[inline(always)]
fn alloc_small_slow_raw(c: usize) -> *mut u8 {
    let h = heap::current_or_claim();
    if h.is_null() {
        return heap::shared_alloc(c);
    }
    // SAFETY: h is this thread's heap.
    unsafe {
        let bin = &mut (*h).bins.b[c];
        if bin.top != bin.base {
            bin.top = bin.top.sub(1);
            return *bin.top;
        }
        heap::refill(h, c)
    }
}

#[inline(always)]
unsafe fn free_small(p: *mut u8, c: usize) {
    let h = tls::get();
    // SAFETY: as in alloc_small; p is a free block of class c.
    unsafe {
        if !bin_push(addr_of_mut!((*h).b[c]), p) {
            free_small_slow(p, c);
        }
    }
}

/// Pushes `p` onto `bin` unless the bin is full (or closed); false then.
///
/// # Safety
/// `bin` is a bin of this thread's bins or of a static set (always full);
/// `p` is a free block of the bin's class.
#[inline(always)]
unsafe fn bin_push(bin: *mut crate::heap::Bin, p: *mut u8) -> bool {
    // SAFETY: a bin that is not full has room at `top` (caller's contract).
    unsafe {
        let top = (*bin).top;
        if top == (*bin).end {
            return false;
        }
        *top = p;
        (*bin).top = top.add(1);
        true
    }
}

#[cold]
#[inline(never)]
unsafe fn free_small_slow(p: *mut u8, c: usize) {
    // Slow paths may make system calls: free never changes errno.
    let e = os::errno();
    // SAFETY: forwarded contract.
    unsafe { free_small_slow_inner(p, c) };
    os::set_errno(e);
}

unsafe fn free_small_slow_inner(p: *mut u8, c: usize) {
    if c >= NUM_CLASSES {
        os::fatal("page tag names a size class that does not exist (corruption)");
    }
    // `secure` with HZ_SECURE_FILL=1: every free of a small block gets here
    // (the thread's TLS slot names bins that are always full,
    // `heap::Heap::decoy`), after its checks and its marker.
    #[cfg(feature = "secure")]
    if crate::secure::fill_mode() {
        crate::secure::fill(p, c);
    }
    let h = heap::current_or_claim();
    // SAFETY: p is a free block of class c; h is this thread's heap.
    unsafe {
        if h.is_null() {
            heap::free_without_heap(p, arena::lookup(p as usize).0);
            return;
        }
        let bin = &mut (*h).bins.b[c];
        if bin.top != bin.end {
            *bin.top = p;
            bin.top = bin.top.add(1);
            return;
        }
        if bin.end == bin.base {
            heap::free_to_closed_bin(h, c, p);
            return;
        }
        heap::overflow(h, c, p);
    }
}

/// Frees a block that is not (known to be) small: null, large, or foreign.
#[cold]
unsafe fn free_not_small(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let (t, a) = arena::lookup(p as usize);
    let c = tag_class(t);
    if c != 0 {
        // SAFETY: the tag says p is a small block of class c.
        return unsafe { free_small(p, c) };
    }
    if tag_kind(t) != KIND_LARGE {
        return foreign_free(p);
    }
    let m = arena::head_meta(p as usize, t, a);
    // SAFETY: m is the head of p's run.
    if unsafe { (*m).addr } != p as usize {
        return foreign_free(p);
    }
    // The fast path (E120): the block waits in the calling thread's cache
    // for its next block of this length; no system call, errno untouched.
    #[cfg(not(feature = "secure"))]
    // SAFETY: the caller gives up p, the whole live run m heads; a cached
    // block's meta stays as it was.
    unsafe {
        let h = heap::heap_of_slot(tls::get());
        // The thread's buffer that a streak made large, freed by it: one
        // more transient buffer (E160), and the size it had grown to (its
        // pages when another buffer grew since).
        if !h.is_null() && (*h).grow_big == p as usize {
            (*h).grow_big = 0;
            (*h).grow_freed = (*h).grow_freed.saturating_add(1);
            (*h).grow_end = if (*h).grow_last == p as usize {
                (*h).grow_len
            } else {
                ((*m).given as usize) << PAGE_SHIFT
            };
        }
        if crate::segment::cache_put(h, m) {
            heap::count_large_in(h, ((*m).pages as u64) << PAGE_SHIFT, true);
            return;
        }
    }
    // Other paths may make system calls: free never changes errno.
    let e = os::errno();
    // SAFETY: the caller gives up p, the whole run.
    unsafe { free_large(m, false) };
    os::set_errno(e);
}

/// Counts a large block resized in place from `pages` to `now` pages (the
/// allocated bytes of the statistics; its free counts its length then).
fn count_resized(pages: usize, now: usize) {
    count_resized_in(heap::heap_of_slot(tls::get()), pages, now);
}

/// [`count_resized`] with the calling thread's heap `h` (null: none) known.
#[inline(always)]
fn count_resized_in(h: *mut heap::Heap, pages: usize, now: usize) {
    let delta = (now as i64 - pages as i64) << PAGE_SHIFT;
    heap::count_large_resized(h, delta as u64);
}

/// Resizes large run `m` (now `pages` long) in place to `new_pages`.
unsafe fn resize_large(m: *mut arena::PageMeta, pages: usize, new_pages: usize) -> bool {
    // SAFETY: the caller owns the run.
    if !unsafe { arena::resize_run(m, new_pages) } {
        return false;
    }
    // SAFETY: m heads the run, now at least new_pages long (the huge zone
    // rounds it up to whole 2 MiB extents).
    let now = unsafe {
        arena::set_tags(m, 0, KIND_LARGE, 0);
        (*m).pages as usize
    };
    count_resized(pages, now);
    counters::note_pages();
    true
}

/// Lengthens segment block `m` (now `pages` long) in place to at least
/// `new_pages` pages ([`crate::segment::grow`]); false when it cannot.
///
/// # Safety
/// `m` heads a live segment block of fewer than `new_pages` pages, held by
/// the caller.
#[cfg(not(feature = "secure"))]
unsafe fn grow_in_segment(m: *mut arena::PageMeta, pages: usize, new_pages: usize) -> bool {
    // SAFETY: forwarded contract.
    let Some(now) = (unsafe { crate::segment::grow(m, new_pages) }) else {
        return false;
    };
    let h = heap::heap_of_slot(tls::get());
    count_resized_in(h, pages, now);
    // What a move would have done through the allocation it makes: the
    // heap's periodic work (bin GC, purges) runs from slow paths only, and
    // a program whose small blocks all hit the bins relies on these (python
    // json: 10 MiB more peak RSS without it).
    // SAFETY: the thread's own heap (or null), not inside a heap operation.
    unsafe { heap::tick(h) };
    true
}

/// Shortens large block `m` (now `pages` long) in place to `new_pages`:
/// a run through the page allocator (which may refuse), a block of a
/// segment (`seg`) inside its segment (which always succeeds).
unsafe fn shrink_large(m: *mut arena::PageMeta, pages: usize, new_pages: usize, seg: bool) -> bool {
    if !seg {
        // SAFETY: forwarded contract.
        return unsafe { resize_large(m, pages, new_pages) };
    }
    // A segment's block keeps whole units: its length may stay longer.
    #[cfg(not(feature = "secure"))]
    // SAFETY: the caller owns the block; nothing past new_pages is used.
    let new_pages = unsafe { crate::segment::shrink(m, new_pages) };
    count_resized(pages, new_pages);
    true
}

/// Returns a large block's run (`moved`: the pages given to the program
/// were moved away by `mremap`).
unsafe fn free_large(m: *mut arena::PageMeta, moved: bool) {
    // SAFETY: m heads a large run the caller gives up.
    let pages = unsafe { (*m).pages } as u64;
    heap::count_large(pages << PAGE_SHIFT, true);
    // A block of a heap's segment goes back to it (E67; never `moved`:
    // realloc moves no segment's pages).
    #[cfg(not(feature = "secure"))]
    // SAFETY: m heads the block the caller gives up.
    if unsafe { in_segment(m) } {
        // SAFETY: as above.
        unsafe { crate::segment::free(m) };
        return;
    }
    // The default build keeps a run below 2 MiB for the next large block
    // (`arena::kept_put`); its tags are cleared first, so a second free of
    // the block is ignored as it is for a returned run.
    #[cfg(not(feature = "secure"))]
    // SAFETY: m heads the live run the caller gives up.
    if !moved && unsafe { (*m).pages as usize } < arena::HUGE_RUN_PAGES {
        // SAFETY: m heads the run the caller gives up: its tags are ours.
        unsafe { arena::set_tags(m, 0, arena::KIND_FREE, 0) };
        // SAFETY: as above.
        if unsafe { arena::kept_put(m) } {
            heap::tick_current();
            return;
        }
    }
    // SAFETY: m is a meta of an arena.
    let huge = unsafe { arena::zone_of(m) } == arena::Zone::Huge;
    // The place for this thread's next growing block (E153).
    // SAFETY: m heads the run the caller gives up.
    if unsafe { (*m).pages as usize } >= arena::HUGE_RUN_PAGES {
        let h = heap::heap_of_slot(tls::get());
        if !h.is_null() {
            // SAFETY: h is the calling thread's heap, between operations;
            // m heads the run.
            unsafe { (*h).grow_at = (*m).addr };
        }
    }
    // SAFETY: as above; the program wrote no page past `given`, and when
    // `moved`, those pages are empty.
    let sparse = unsafe { arena::free_large_run(m, (*m).given as usize, moved) };
    // A thread that writes its big blocks sparsely gets no more huge pages
    // for them (E134), though its dense ones earned it the huge zone (E132).
    #[cfg(not(feature = "secure"))]
    if sparse && huge {
        let h = heap::heap_of_slot(tls::get());
        if !h.is_null() {
            // SAFETY: h is the calling thread's heap, between operations.
            unsafe { crate::segment::score(h, false) };
        }
    }
    #[cfg(feature = "secure")]
    let _ = (sparse, huge);
    heap::tick_current();
}

/// `secure`: every free is validated against the page tags, the span and
/// the block's free marker (see `secure`); misuse aborts naming the pointer.
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn secure_free(p: *mut u8, layout: Option<Layout>) {
    let a0 = &arena::ARENAS[0];
    let off = (p as usize).wrapping_sub(a0.base.load(Relaxed));
    if off >= a0.len.load(Relaxed) {
        // SAFETY: forwarded contract.
        return unsafe { secure_free_elsewhere(p, layout) };
    }
    let tp = arena::tag_ptr(a0, off >> PAGE_SHIFT);
    // SAFETY: off < len: tp is the tag of a page of arena 0.
    let t = unsafe { *tp };
    if let Some(l) = layout {
        // The layout must name the tag's class (`class::fits_class`: one
        // table entry, where computing the layout's class and comparing
        // took 13 instructions); a large layout never fits a small class,
        // and a tag of class 0 (large, or not hz's) goes to the exact
        // check. A tail call (the checks there abort), so that this path
        // needs no stack frame.
        if tag_class(t) == 0 || !crate::class::fits_class(l.size(), l.align(), tag_class(t)) {
            // SAFETY: forwarded contract.
            return unsafe { secure_free_elsewhere(p, layout) };
        }
    }
    if tag_class(t) != 0 {
        // SAFETY: forwarded contract; t is p's tag, tp its page's entry.
        return unsafe { secure_free_small(p, t, tp) };
    }
    // SAFETY: forwarded contract; t is p's tag in arena 0.
    unsafe { secure_free_not_small(p, t, 0) }
}

#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
fn layout_mismatch(p: *mut u8) -> ! {
    crate::secure::fatal_ptr("dealloc with a layout that does not match the block", p)
}

/// `secure`: the free of small block `p` (tag `t`, `tp` its page's entry
/// in the tag table: tag, carving point, boundary key, divisor), checked: block
/// boundary (through the span's boundary key, `secure::on_boundary_key`),
/// free marker (see `secure::mark`), carving point. Every value of word 0
/// that can mean "free" decodes below 2^47, so one test keeps the common
/// case (a live block: a random-looking word) off the exact check. Any
/// doubt goes to [`secure_free_checked`] by a tail call, which sorts the
/// cases out and aborts or goes on: the common path makes no call that
/// returns, so it needs no stack frame.
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn secure_free_small(p: *mut u8, t: u64, tp: *const u64) {
    // SAFETY: tp is the entry of p's page: its words 1, 2 and 3 are the
    // carving point (`secure::set_carved`), the boundary key and the
    // class's divisor (`arena::set_tags`), written before any block of the
    // span was handed out.
    let (cw, key, div) = unsafe {
        (
            arena::carved_word_of(tp),
            *arena::key_word(tp),
            *arena::divisor_word(tp),
        )
    };
    if !crate::secure::on_boundary_key(p as usize, div, key) {
        // SAFETY: forwarded contract.
        return unsafe { secure_free_checked(p, t, cw) };
    }
    let k = crate::secure::mask0(p);
    // SAFETY: p is on a block boundary of a small span: 16 bytes at least.
    // cw is the carving-point word of p's page, in a live span
    // (`secure::set_carved`): it only grows while the span lives; p was
    // carved (that store) before the program could hand it to this thread,
    // so a live p always lies below it.
    let (v, carved) = unsafe { ((p as *const usize).read_volatile() ^ k, (*cw).load(Relaxed)) };
    if v >> 47 == 0 || p as usize >= carved {
        // SAFETY: forwarded contract.
        return unsafe { secure_free_checked(p, t, cw) };
    }
    // SAFETY: forwarded contract; every check passed.
    unsafe { secure_free_mark(p, tag_class(t), k) }
}

/// `secure`: a free that [`secure_free_small`] could not pass at a glance:
/// each check again, exactly (the boundary from the tag alone), aborting
/// on the first that fails; if none does (word 0 only looked like a
/// marker), the rest of the free.
#[cfg(feature = "secure")]
#[cold]
#[inline(never)]
unsafe fn secure_free_checked(p: *mut u8, t: u64, cw: *const core::sync::atomic::AtomicUsize) {
    let c = tag_class(t);
    if !crate::secure::on_boundary(p as usize, t) {
        crate::secure::interior(p);
    }
    let k = crate::secure::mask0(p);
    // SAFETY: p is on a block boundary of a small span: 16 bytes at least.
    let v = unsafe { (p as *const usize).read_volatile() } ^ k;
    if v >> 47 == 0 && crate::secure::looks_free_slow(v, c, t) {
        crate::secure::double_free(p);
    }
    // SAFETY: as in secure_free_small.
    if p as usize >= unsafe { (*cw).load(Relaxed) } {
        crate::secure::never_carved(p);
    }
    // SAFETY: forwarded contract; every check passed.
    unsafe { secure_free_mark(p, c, k) }
}

/// `secure`: the end of a free of block `p` that passed every check
/// (class `c`, word 0 mask `k`): the free marker, then the thread cache
/// (and, with `HZ_SECURE_FILL=1`, the fill: `free_small_slow_inner`).
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn secure_free_mark(p: *mut u8, c: usize, k: usize) {
    // SAFETY: a live block of class c, ours again: marked free, then cached.
    unsafe {
        (p as *mut usize).write_volatile(k ^ c);
        free_small(p, c)
    }
}

/// `secure`: a free outside arena 0 (null, another arena, or foreign).
#[cfg(feature = "secure")]
#[cold]
unsafe fn secure_free_elsewhere(p: *mut u8, layout: Option<Layout>) {
    if p.is_null() {
        return;
    }
    let (t, a) = arena::lookup(p as usize);
    if layout.is_some_and(|l| class_for(l.size(), l.align()) != tag_class(t)) {
        layout_mismatch(p);
    }
    // SAFETY: forwarded contract; (t, a) is p's tag.
    unsafe { secure_free_tagged(p, t, a) }
}

#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn secure_free_tagged(p: *mut u8, t: u64, a: usize) {
    if tag_class(t) != 0 {
        let slot = &arena::ARENAS[a];
        let tp = arena::tag_ptr(slot, (p as usize - slot.base.load(Relaxed)) >> PAGE_SHIFT);
        // SAFETY: forwarded contract; (t, a) is p's tag, tp its page's entry.
        return unsafe { secure_free_small(p, t, tp) };
    }
    // SAFETY: forwarded contract.
    unsafe { secure_free_not_small(p, t, a) }
}

/// `secure`: a free whose tag is not a small block's: a large block (its
/// run's start) or an abort.
#[cfg(feature = "secure")]
#[cold]
unsafe fn secure_free_not_small(p: *mut u8, t: u64, a: usize) {
    if tag_kind(t) == KIND_LARGE {
        let m = arena::head_meta(p as usize, t, a);
        // SAFETY: m is the head meta of p's run.
        if unsafe { (*m).addr } != p as usize {
            crate::secure::fatal_ptr("free of an interior pointer", p);
        }
        // SAFETY: validated: a live large block (this path keeps errno).
        return unsafe { free_not_small(p) };
    }
    crate::secure::fatal_ptr(
        "free of a pointer hz never handed out (or already freed)",
        p,
    );
}

#[cold]
fn foreign_free(p: *mut u8) {
    counters::STATS.foreign_frees.fetch_add(1, Relaxed);
    if config::verbose() {
        let mut b = counters::Buf::<96>::new();
        let _ = core::fmt::Write::write_fmt(
            &mut b,
            format_args!("hz: ignored free of {:p}: not a block of hz\n", p),
        );
        // `free` never changes errno, even when the message fails.
        let e = os::errno();
        os::write_fd(2, b.as_bytes());
        os::set_errno(e);
    }
}

// ---------------------------------------------------------------------------
// Large blocks: page runs

#[cold]
fn alloc_large(size: usize, align: usize, zero: bool) -> *mut u8 {
    #[cfg(not(feature = "secure"))]
    {
        let p = alloc_large_cached(size, align, zero);
        if !p.is_null() {
            return p;
        }
    }
    alloc_large_in(size, align, zero, false)
}

/// The fast path of a large block (E120): one the calling thread freed,
/// of this length, waiting in its heap's segment cache
/// ([`crate::segment::cache_put`]); null when none waits (or the block
/// is not one a segment would serve: longer than 8 MiB, or aligned to
/// more than a page). No system call, no lock, a tick once in 16.
#[cfg(not(feature = "secure"))]
#[inline(always)]
fn alloc_large_cached(size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > crate::segment::BIG_RUN_MAX << PAGE_SHIFT || align > PAGE_SIZE {
        return null_mut();
    }
    let h = heap::heap_of_slot(tls::get());
    if h.is_null() {
        return null_mut();
    }
    let pages = size.max(1).div_ceil(PAGE_SIZE);
    // SAFETY: h is this thread's heap, between operations; a block the
    // cache gives is ours, live again, its tags and `seg` as they were
    // while it was live.
    unsafe {
        let m = crate::segment::cache_take_pages(h, pages);
        if m.is_null() {
            return null_mut();
        }
        (*m).given = pages as u32;
        if zero {
            // Its pages may be dirty: written where they read dense, purged
            // where 2 MiB or more read sparse (E137's rule; E147).
            arena::clear_for_calloc((*m).addr, size);
        }
        heap::count_large_in(h, ((*m).pages as u64) << PAGE_SHIFT, false);
        heap::tick_cached(h);
        (*m).addr as *mut u8
    }
}

/// [`alloc_large`]; `grown`: the block is the target of a `realloc` that
/// grows a large block (its old contents are copied or moved in, so its
/// pages are written densely), which may come from the huge zone.
#[cold]
#[inline(never)]
fn alloc_large_in(size: usize, align: usize, zero: bool, grown: bool) -> *mut u8 {
    if size > MAX_REQUEST || align > (1 << 40) || !align.is_power_of_two() {
        counters::STATS.oom.fetch_add(1, Relaxed);
        return null_mut();
    }
    #[cfg(not(feature = "secure"))]
    let pages = size.max(1).div_ceil(PAGE_SIZE);
    #[cfg(feature = "secure")]
    let pages = (size + crate::secure::GUARD).div_ceil(PAGE_SIZE);
    let align_pages = (align >> PAGE_SHIFT).max(1);
    // The settings (`HZ_THP`, `HZ_ARENA_*`) when this is the first call.
    heap::init_once();
    // Up to 8 MiB: from the thread's own segments (E67, E68; blocks of 2
    // MiB and more from its big segments, E74, unless a `realloc` grows
    // into them: those go to the huge zone), then a kept run, which needs
    // no tick: no page changes hands (the free that kept it ticked).
    #[cfg(not(feature = "secure"))]
    if align_pages == 1 {
        let big = pages > crate::segment::RUN_MAX;
        if !big || (!grown && pages <= crate::segment::BIG_RUN_MAX) {
            let p = alloc_large_seg(size, pages, zero, big);
            if !p.is_null() {
                return p;
            }
        }
        let p = alloc_large_kept(size, pages, zero);
        if !p.is_null() {
            return p;
        }
    }
    heap::tick_current();
    // A block that realloc grows goes where it can go on growing in place:
    // where the thread's last big block was (E153), else into the longest
    // resident run (E152).
    let fit = if grown {
        let h = heap::heap_of_slot(tls::get());
        let near = if h.is_null() {
            0
        } else {
            // SAFETY: h is the calling thread's heap, between operations.
            unsafe { (*h).grow_at }
        };
        arena::Fit::Roomy { near }
    } else {
        arena::Fit::Tight
    };
    // A thread that writes its large blocks densely (E128) gets huge pages
    // for the longer ones too (E132), as for those a realloc grows into.
    let grown = grown || dense_writer();
    #[cfg_attr(feature = "secure", allow(unused_mut))]
    let mut run = arena::alloc_run(pages, align_pages, zone_for(pages, grown), fit);
    // Out of memory: the thread's empty segments go back first (their
    // pages could serve this run), then those of exited threads' heaps,
    // which keep theirs for the next thread until a reclaim (E101); one
    // more try after each.
    #[cfg(not(feature = "secure"))]
    if run.is_none() {
        let h = heap::heap_of_slot(tls::get());
        // SAFETY: h, when not null, is the calling thread's heap, between
        // operations.
        run = unsafe {
            heap::retry_after_reclaim(h, || {
                arena::alloc_run(pages, align_pages, zone_for(pages, grown), fit)
            })
        };
        // Then the room left in the thread's big segments, whatever the
        // length (their units are 512 KiB: a block below 2 MiB is rounded
        // up), rather than failing.
        if run.is_none() && align_pages == 1 && pages <= crate::segment::BIG_RUN_MAX {
            let p = alloc_large_seg(size, pages, zero, true);
            if !p.is_null() {
                return p;
            }
        }
    }
    let Some(run) = run else {
        counters::STATS.oom.fetch_add(1, Relaxed);
        return null_mut();
    };
    counters::note_pages();
    #[cfg(feature = "secure")]
    // SAFETY: the run is ours.
    unsafe {
        crate::secure::take_run(&run, pages, true)
    };
    // SAFETY: the run is ours (the huge zone may have rounded it up), just
    // taken.
    unsafe { hand_out_large(run.meta, pages, size, calloc_clear(run.meta, zero)) }
}

/// The bytes a `calloc` (`zero`) must clear of run `m`, just taken from
/// the page allocator or kept: those its hull says may hold an earlier
/// owner's data (`arena::taken_dirty_bytes`, E136; none when the run was
/// taken clean); none for a `malloc`.
///
/// # Safety
/// As [`arena::taken_dirty_bytes`].
unsafe fn calloc_clear(m: *mut arena::PageMeta, zero: bool) -> core::ops::Range<usize> {
    if zero {
        // SAFETY: forwarded contract.
        unsafe { arena::taken_dirty_bytes(m) }
    } else {
        0..0
    }
}

/// Run `m`, ours, becomes a large block of `size` bytes (`pages` pages
/// asked; the run may be longer): its tags, `given`, the zeroing a
/// `calloc` needs (`clear`: the bytes, from the block's start, that may
/// hold an earlier owner's data; past `size` nothing is cleared), the
/// counts. Returns the block.
///
/// # Safety
/// `m` heads an in-use run of at least `pages` pages that the caller owns
/// and no one else names.
unsafe fn hand_out_large(
    m: *mut arena::PageMeta,
    pages: usize,
    size: usize,
    clear: core::ops::Range<usize>,
) -> *mut u8 {
    // SAFETY: caller's contract.
    let (addr, run_pages) = unsafe {
        arena::set_tags(m, 0, KIND_LARGE, 0);
        (*m).given = pages as u32;
        #[cfg(not(feature = "secure"))]
        {
            (*m).seg = null_mut();
            (*m).sample = false;
        }
        let end = clear.end.min(size);
        if clear.start < end {
            arena::clear_for_calloc((*m).addr + clear.start, end - clear.start);
        }
        ((*m).addr as *mut u8, (*m).pages as u64)
    };
    heap::count_large(run_pages << PAGE_SHIFT, false);
    addr
}

/// A large block of `size` bytes (`pages` pages, 64 KiB-aligned) from the
/// runs kept when large blocks were freed ([`arena::kept_take`]): no page
/// lock. Null when none fits.
#[cfg(not(feature = "secure"))]
fn alloc_large_kept(size: usize, pages: usize, zero: bool) -> *mut u8 {
    let m = arena::kept_take(pages);
    if m.is_null() {
        return null_mut();
    }
    // SAFETY: m heads an in-use run that is ours now (up to a quarter
    // longer than asked); the pages its last owner wrote are in its dirty
    // hull already (`arena::keep_written`), so `given` is this block's, and
    // they may be dirty: a calloc clears them.
    unsafe { hand_out_large(m, pages, size, calloc_clear(m, zero)) }
}

/// A large block of `pages` pages carved from the calling thread's
/// segments (claiming a heap for a thread that has none): small ones (at
/// most `segment::RUN_MAX` pages), or big ones when `big` (at most
/// `segment::BIG_RUN_MAX`); null when it has no heap and can get none, or
/// its segments of that kind have no room and no more can be added.
#[cfg(not(feature = "secure"))]
fn alloc_large_seg(size: usize, pages: usize, zero: bool, big: bool) -> *mut u8 {
    let mut h = heap::heap_of_slot(tls::get());
    if h.is_null() {
        h = heap::current_or_claim();
        if h.is_null() {
            return null_mut();
        }
    }
    use crate::segment::Taken;
    // SAFETY: h is this thread's heap.
    let Some((m, how)) = (unsafe { crate::segment::take(h, pages, big) }) else {
        return null_mut();
    };
    let (Taken::Clean(s) | Taken::Dirty(s)) = how;
    // SAFETY: m heads the block just carved, ours; then it names its
    // segment (hand_out_large clears `seg`); h is held and between
    // operations for the tick.
    unsafe {
        let dirty = zero && matches!(how, Taken::Dirty(_));
        let p = hand_out_large(m, pages, size, if dirty { 0..size } else { 0..0 });
        (*m).seg = s;
        // Fresh pages: their owner's free sees how densely they were
        // written (E128).
        (*m).sample = matches!(how, Taken::Clean(_)) && !crate::segment::is_dense(s);
        heap::tick(h);
        p
    }
}

/// Whether the calling thread's heap writes its large blocks densely
/// ([`crate::segment::writes_densely`], E128).
fn dense_writer() -> bool {
    #[cfg(not(feature = "secure"))]
    {
        let h = heap::heap_of_slot(tls::get());
        // SAFETY: h, when not null, is the calling thread's heap.
        !h.is_null() && unsafe { crate::segment::writes_densely(h) }
    }
    #[cfg(feature = "secure")]
    false
}

/// True when large block `m` was carved from a heap's segment.
///
/// # Safety
/// `m` heads a live large block.
unsafe fn in_segment(m: *mut arena::PageMeta) -> bool {
    #[cfg(not(feature = "secure"))]
    // SAFETY: caller's contract.
    return !unsafe { (*m).seg }.is_null();
    #[cfg(feature = "secure")]
    {
        let _ = m;
        false
    }
}

/// The zone a large run of `pages` pages comes from: runs of 2 MiB and more
/// that a `realloc` grows into (`grown`) are backed by transparent huge
/// pages (one fault and one TLB entry per 2 MiB instead of 512 of each),
/// see [`arena::huge_zone_on`]. Other runs are not (E70): the first touch
/// of a huge page zeroes all 2 MiB of it, so a program that writes a few
/// bytes of each big block, or whose freed blocks are purged and taken
/// again, pays for 2 MiB per page it touches (50× the time of 4 KiB pages
/// with 2–8 MiB blocks written at both ends); a buffer that realloc grows
/// has its old contents copied in, densely.
fn zone_for(pages: usize, grown: bool) -> arena::Zone {
    if grown && pages >= arena::HUGE_RUN_PAGES && arena::huge_zone_on() {
        arena::Zone::Huge
    } else {
        arena::Zone::Normal
    }
}

// ---------------------------------------------------------------------------
// Public raw API

/// Allocates `size` bytes aligned to 16. Null when out of memory (errno is
/// left to the caller: hz-ffi sets `ENOMEM`).
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    let c = class_of(size);
    if c != 0 {
        alloc_small(c)
    } else {
        alloc_large(size, 16, false)
    }
}

/// [`malloc`] for C callers: a null result also sets `errno` to `ENOMEM`.
/// Every path that can fail is a tail call, so the fast path saves no
/// register and tests no result (libhz.so's `malloc`; E11 in
/// docs/PERFORMANCE.md).
#[inline]
pub fn malloc_errno(size: usize) -> *mut u8 {
    let c = class_of(size);
    if c == 0 {
        return alloc_large_errno(size);
    }
    alloc_small_with(c, alloc_small_slow_errno)
}

#[cold]
#[inline(never)]
fn alloc_small_slow_errno(c: usize) -> *mut u8 {
    let p = alloc_small_slow(c);
    if p.is_null() {
        os::set_errno(libc::ENOMEM);
    }
    p
}

#[cold]
#[inline(never)]
fn alloc_large_errno(size: usize) -> *mut u8 {
    alloc_aligned_large_errno(size, 16)
}

/// [`malloc_aligned`] for C callers (`aligned_alloc`, `memalign`,
/// `posix_memalign`): a null result also sets `errno` (`ENOMEM`; `EINVAL`
/// when `align` is not a power of two). Shaped as [`malloc_errno`]: every
/// path that can fail is a tail call, so a small block costs one class
/// lookup more than `malloc`'s and nothing else.
#[inline]
pub fn malloc_aligned_errno(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        return einval();
    }
    let c = class_for(size, align);
    if c == 0 {
        return alloc_aligned_large_errno(size, align);
    }
    alloc_small_with(c, alloc_small_slow_errno)
}

#[cold]
#[inline(never)]
fn einval() -> *mut u8 {
    os::set_errno(libc::EINVAL);
    null_mut()
}

#[cold]
#[inline(never)]
fn alloc_aligned_large_errno(size: usize, align: usize) -> *mut u8 {
    let p = alloc_large(size, align, false);
    if p.is_null() {
        os::set_errno(libc::ENOMEM);
    }
    p
}

/// Allocates `size` bytes aligned to `align` (a power of two; anything else
/// gives null). Null when out of memory.
#[inline]
pub fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        return null_mut();
    }
    let c = class_for(size, align);
    if c != 0 {
        alloc_small(c)
    } else {
        alloc_large(size, align, false)
    }
}

/// Like [`malloc`], zero-filled.
pub fn calloc(size: usize) -> *mut u8 {
    calloc_aligned(size, 16)
}

/// Like [`malloc_aligned`], zero-filled. Fresh pages from the OS are not
/// cleared a second time.
pub fn calloc_aligned(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        return null_mut();
    }
    let c = class_for(size, align);
    if c != 0 {
        let p = alloc_small(c);
        if !p.is_null() {
            // SAFETY: p has at least `size` bytes.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        p
    } else {
        alloc_large(size, align, true)
    }
}

/// Frees a block. Null is ignored; a pointer hz never handed out is ignored
/// and counted (`Stats::foreign_frees`). Never changes `errno`.
///
/// # Safety
/// `p` is null, a live block of hz, or an address hz does not manage.
#[inline]
pub unsafe fn free(p: *mut u8) {
    #[cfg(feature = "secure")]
    // SAFETY: forwarded contract.
    return unsafe { secure_free(p, None) };
    #[allow(unreachable_code)]
    let a0 = &arena::ARENAS[0];
    let off = (p as usize).wrapping_sub(a0.base.load(Relaxed));
    if off >= a0.len.load(Relaxed) {
        // Null, another arena, or foreign: a tail call, so the fast path
        // below keeps `p` in its argument register and saves nothing.
        // SAFETY: forwarded contract.
        return unsafe { free_not_small(p) };
    }
    // SAFETY: off < len: a page of arena 0.
    let t = unsafe { *arena::tag_ptr(a0, off >> PAGE_SHIFT) };
    let c = tag_class(t);
    if c != 0 {
        // SAFETY: the tag says p is a small block of class c.
        unsafe { free_small_pending(p, c) }
    } else {
        // SAFETY: forwarded contract.
        unsafe { free_not_small(p) }
    }
}

/// `free` of a small block `p` of class `c` (default build): `p` becomes
/// the thread's pending block and the block pending before it goes into
/// its bin (E108). So the bin a `free` pushes to, and the slot it writes,
/// are known from the previous call, not from the tag this one has just
/// read: with the bin chosen from `p`'s own tag, a `malloc` right after
/// waited for that tag load (the processor cannot tell its loads from
/// the bin apart from `free`'s stores until their addresses are known),
/// and a loop of `malloc`/`free` pairs of changing sizes ran as one chain
/// of dependent loads. [`GlobalAlloc::dealloc`] has the class from the
/// layout without a load and pushes at once.
#[inline(always)]
unsafe fn free_small_pending(p: *mut u8, c: usize) {
    let h = tls::get();
    // SAFETY: h points at this thread's bins or at a static set whose
    // pending class is 0 and whose bins are all full, so nothing below is
    // written unless h is a real heap; pending_c is always below
    // BIN_ENTRIES (0 or a class from a tag, masked to 6 bits), so the bin
    // pointer stays inside the array; q is a free block of class qc when
    // qc is not 0.
    unsafe {
        let q = (*h).pending;
        let qc = (*h).pending_c;
        if bin_push(addr_of_mut!((*h).b).cast::<crate::heap::Bin>().add(qc), q) {
            (*h).pending = p;
            (*h).pending_c = c;
            return;
        }
        free_pending_slow(p, c);
    }
}

/// The slow path of [`free_small_pending`]: the thread has no heap yet (or
/// no longer), has no pending block, or the pending block's bin is full.
#[cold]
#[inline(never)]
unsafe fn free_pending_slow(p: *mut u8, c: usize) {
    let h = heap::heap_of_slot(tls::get());
    if h.is_null() {
        // SAFETY: forwarded contract (free_small's slow path claims a heap,
        // or frees through the shared paths after the thread's teardown).
        return unsafe { free_small(p, c) };
    }
    // SAFETY: h is this thread's heap; q is a free block of class qc.
    unsafe {
        let (q, qc) = heap::take_pending(h);
        if qc != 0 {
            free_small(q, qc);
        }
        // (free_small's slow path keeps the thread's heap: it has one.)
        let b = &mut (*h).bins;
        b.pending = p;
        b.pending_c = c;
    }
}

/// Frees a block whose size (as requested, with 16-byte alignment) is
/// known; the size selects the class without a tag lookup when it agrees.
///
/// # Safety
/// As [`free`]; `size` is the size it was allocated (or last reallocated) with.
#[inline]
pub unsafe fn free_sized(p: *mut u8, size: usize) {
    let _ = size; // A wrong size from C must not corrupt a bin: use the tag.
                  // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// Usable size of a live block (every byte may be written); 0 for null or
/// pointers hz does not manage.
///
/// # Safety
/// `p` is null, a live block of hz, or an address hz does not manage.
pub unsafe fn usable_size(p: *const u8) -> usize {
    let (t, a) = arena::lookup(p as usize);
    let c = tag_class(t);
    if c != 0 {
        return CLASS_SIZE[c] as usize;
    }
    if tag_kind(t) == KIND_LARGE {
        let m = arena::head_meta(p as usize, t, a);
        // SAFETY: m is the head meta of p's run.
        unsafe {
            if (*m).addr == p as usize {
                return (((*m).given as usize) << PAGE_SHIFT) - GUARD_BYTES;
            }
        }
    }
    0
}

/// True when `p` lies in memory hz manages (without touching `p`).
pub fn owns(p: *const u8) -> bool {
    arena::lookup(p as usize).0 != 0
}

/// Resizes a live block (16-byte alignment). Null on failure, the old block
/// intact. `new_size` 0 gives a minimal block.
///
/// A small block that must move to grow gets at least a quarter more room
/// than it had (E112): a buffer that a C program grows by a little at a
/// time (a string appended to, an array pushed to) then moves once per
/// class or two instead of once per class. The block is freed by
/// [`free`], which reads its class from its page, so the extra room costs
/// nothing to track; [`realloc_aligned`] (`GlobalAlloc::realloc`, whose
/// `dealloc` recomputes the class from the `Layout`) gives exactly the
/// class of the request.
///
/// # Safety
/// `p` is a live block of hz.
#[inline]
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // In place, without a frame: a small block the new size uses at least
    // 3/4 of (most calls of a program that grows a buffer by a little at
    // a time). The secure build checks the block first ([`resize`]).
    #[cfg(not(feature = "secure"))]
    if !p.is_null() {
        let c = tag_class(arena::lookup(p as usize).0);
        if c != 0 {
            let usable = CLASS_SIZE[c] as usize;
            if keeps_in_place(new_size, usable) {
                return p;
            }
            if new_size <= usable.max(GROW_LARGE_MIN) {
                // SAFETY: forwarded contract; p is a live block of class c.
                return unsafe { move_small(p, c, usable, new_size) };
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { resize(p, new_size, 16, Fit::Headroom, usize::MAX) }
}

/// [`realloc`] of small block `p` of class `c` (`usable` bytes) to another
/// small class: what [`resize`] does for it, with the class known (E123).
/// A growing block gets at least a quarter more room (E112), or, when it
/// is the block this thread's last growing move returned and holds at
/// least [`GROW_STREAK_MIN`] bytes, a large block to grow in place (E155);
/// the old block goes the way of a C `free` without its tag read again.
///
/// # Safety
/// `p` is a live block of class `c`; `new_size <= max(usable,
/// GROW_LARGE_MIN)`, so the new block is small.
#[cfg(not(feature = "secure"))]
#[inline(always)]
unsafe fn move_small(p: *mut u8, c: usize, usable: usize, new_size: usize) -> *mut u8 {
    let growing = new_size > usable;
    let want = if growing {
        new_size.max((usable + usable / 4).min(SMALL_MAX))
    } else {
        new_size
    };
    let nc = class_of(want);
    // A growing block that gets 256 bytes or more may be, or become, the
    // thread's growing buffer (E155, E160): out of line, so that the moves
    // below that pay nothing for it.
    if growing && CLASS_SIZE[nc] as usize >= GROW_EARLY_MIN {
        // SAFETY: forwarded contract; the new block is larger.
        return unsafe { move_growing(p, c, usable, usable, new_size, nc, true) };
    }
    let q = alloc_small(nc);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; p is of class c.
        unsafe {
            core::ptr::copy_nonoverlapping(p, q, usable.min(new_size));
            free_small_pending(p, c);
        }
    }
    q
}

/// [`move_small`] of small block `p` (class `c`, `usable` bytes, of which
/// the first `live` hold the program's bytes) growing to `new_size` into
/// class `nc` of at least [`GROW_EARLY_MIN`] bytes (C `realloc`, `early`)
/// or [`GROW_STREAK_MIN`] (`GlobalAlloc::realloc`), as the thread's
/// growing buffer (E155): when `p` is already that buffer and holds at
/// least [`GROW_STREAK_MIN`] bytes, or, `early`, at least
/// [`GROW_EARLY_MIN`] while [`grows_large`] says so (E160), to a large
/// block that grows in place from there (not for a thread whose segments
/// take huge pages, E128, where the block's whole 64 KiB page would be
/// resident however little of it is used); else to class `nc`. Either way
/// the new block is noted as the buffer. Null when out of memory, `p`
/// intact.
///
/// # Safety
/// As [`move_small`]'s, with `live <= usable < new_size <=
/// CLASS_SIZE[nc]`.
#[cfg(not(feature = "secure"))]
#[inline(never)]
unsafe fn move_growing(
    p: *mut u8,
    c: usize,
    usable: usize,
    live: usize,
    new_size: usize,
    nc: usize,
    early: bool,
) -> *mut u8 {
    let h = heap::heap_of_slot(tls::get());
    // SAFETY: h is null or this thread's heap, whose thread alone writes
    // grow_last, grow_big and grow_freed.
    let streak = usable >= if early { GROW_EARLY_MIN } else { GROW_STREAK_MIN }
        && !h.is_null()
        && unsafe { (*h).grow_last == p as usize && !crate::segment::writes_densely(h) }
        // SAFETY: as above.
        && unsafe { grows_large(h, usable) };
    let q = if streak {
        // SAFETY: forwarded contract.
        let Some((q, m)) = (unsafe { copy_to_grow(p, live, new_size, 16) }) else {
            return null_mut();
        };
        // SAFETY: m heads q's run. A block made large to grow says nothing
        // of how densely the thread writes its large blocks: it is not
        // sampled when freed. h is this thread's heap.
        unsafe {
            (*m).sample = false;
            (*h).grow_big = q as usize;
        }
        q
    } else {
        let q = alloc_small(nc);
        if q.is_null() {
            return q;
        }
        // SAFETY: both blocks are live and distinct; p has live bytes.
        unsafe { core::ptr::copy_nonoverlapping(p, q, live) };
        q
    };
    // The heap, if the allocation above had to claim it.
    let h = if h.is_null() {
        heap::heap_of_slot(tls::get())
    } else {
        h
    };
    // SAFETY: p is live, of class c, and copied; h is null or this
    // thread's heap.
    unsafe {
        // Into its bin at once, not pending (E108): the buffer's next
        // round of growth takes the same block of class c again, where a
        // pending one would make it take turns with another (twice the
        // cache lines, E157).
        free_small(p, c);
        if !h.is_null() {
            (*h).grow_last = q as usize;
            (*h).grow_len = new_size;
        }
    }
    q
}

/// Whether the thread's growing buffer, a small block of `usable` bytes
/// (at least [`GROW_EARLY_MIN`]) moved to grow again, becomes large: from
/// [`GROW_STREAK_MIN`] always (E155). Below it (E160): while the thread
/// freed each of its last [`GROW_EARLY_AFTER`] buffers made large before
/// the next one grew, when the last of them had grown to at least three
/// times `usable`; otherwise once in [`GROW_PROBE_EVERY`] streaks of a
/// block of at least [`GROW_PROBE_MIN`], to learn whether its buffers are
/// transient again. A streak that finds the last buffer made large still
/// live (kept, shrunk back to a class, or freed by another thread) starts
/// the count again.
///
/// # Safety
/// `h` is this thread's heap.
#[cfg(not(feature = "secure"))]
#[inline(always)]
unsafe fn grows_large(h: *mut heap::Heap, usable: usize) -> bool {
    // SAFETY: h is this thread's heap; its thread alone writes these.
    unsafe {
        if (*h).grow_big != 0 {
            (*h).grow_big = 0;
            (*h).grow_freed = 0;
        }
        if usable >= GROW_STREAK_MIN {
            return true;
        }
        // Early while the last buffer made large grew to three times this
        // one's size or more before it was freed: one that stops short of
        // that saves a class move or two, less than its large block's
        // allocation and free cost.
        if (*h).grow_freed >= GROW_EARLY_AFTER {
            return (*h).grow_end / 3 >= usable;
        }
        if usable < GROW_PROBE_MIN {
            return false;
        }
        (*h).grow_tries += 1;
        if (*h).grow_tries < GROW_PROBE_EVERY {
            return false;
        }
        (*h).grow_tries = 0;
        true
    }
}

/// A large block of at least `new_size` bytes with room to grow in place
/// ([`alloc_to_grow`]), holding the first `usable` bytes of small block `p`,
/// which the caller then frees, and its run's head meta; None when out of
/// memory (`p` intact).
///
/// # Safety
/// `p` is a live small block of `usable` bytes, `usable < new_size <=
/// MAX_REQUEST`.
unsafe fn copy_to_grow(
    p: *mut u8,
    usable: usize,
    new_size: usize,
    align: usize,
) -> Option<(*mut u8, *mut arena::PageMeta)> {
    let (q, m) = alloc_to_grow(new_size.div_ceil(PAGE_SIZE), align)?;
    // SAFETY: q is a fresh block of at least new_size > usable bytes; p is
    // live and distinct.
    unsafe { core::ptr::copy_nonoverlapping(p, q, usable) };
    Some((q, m))
}

/// Resizes a live block keeping alignment `align`. Null on failure (or for
/// a pointer hz does not manage), the old block intact. The new block's
/// class is that of (`new_size`, `align`): `GlobalAlloc::dealloc` may
/// recompute it from a `Layout`.
///
/// # Safety
/// `p` is a live block of hz allocated with alignment `align`.
pub unsafe fn realloc_aligned(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { resize(p, new_size, align, Fit::Exact, usize::MAX) }
}

/// `GlobalAlloc::realloc` to `new_size` of live block `p` of 16-byte
/// alignment and `live` bytes (its layout's size) whose old or new layout
/// is of at least 8 KiB (or large): C
/// [`realloc`]'s growth without its headroom (E157). A buffer grown by
/// steps becomes large from 8 KiB and grows in place, as C `realloc`'s
/// does (E155), instead of being copied at every class up to 128 KiB; every
/// block of a layout below 8 KiB stays exactly its class, which `dealloc`
/// takes from the layout.
///
/// # Safety
/// `p` is a live block of hz allocated with 16-byte alignment.
#[cfg(not(feature = "secure"))]
#[inline(never)]
unsafe fn realloc_global(p: *mut u8, live: usize, new_size: usize) -> *mut u8 {
    let c = tag_class(arena::lookup(p as usize).0);
    if c != 0 {
        let usable = CLASS_SIZE[c] as usize;
        let nc = class_of(new_size);
        if nc == c {
            return p;
        }
        if new_size > usable && new_size <= GROW_LARGE_MIN && nc >= TAGGED_FROM {
            // SAFETY: forwarded contract; p is a live block of class c,
            // growing into class nc of at least 8 KiB.
            return unsafe { move_growing(p, c, usable, live, new_size, nc, false) };
        }
    }
    // SAFETY: forwarded contract.
    unsafe { resize(p, new_size, 16, Fit::Grow, live) }
}

/// A large block for `realloc` to move a growing block into: `new_pages`
/// pages given, with half as many again behind them (address space, until
/// written), so that the next growths happen in place. The block and its
/// run's head meta; None when out of memory.
fn alloc_to_grow(new_pages: usize, align: usize) -> Option<(*mut u8, *mut arena::PageMeta)> {
    let roomy = new_pages + new_pages / 2;
    // A block of a segment the thread freed, of this length, first (E120's
    // fast path): a buffer that grows to the same length again and again
    // reuses it, as `malloc` would (E155).
    #[cfg(not(feature = "secure"))]
    let q = if roomy <= crate::segment::RUN_MAX {
        alloc_large_cached(roomy << PAGE_SHIFT, align, false)
    } else {
        null_mut()
    };
    #[cfg(feature = "secure")]
    let q: *mut u8 = null_mut();
    let q = if q.is_null() {
        alloc_large_in(roomy << PAGE_SHIFT, align, false, true)
    } else {
        q
    };
    if q.is_null() {
        return None;
    }
    let (t, a) = arena::lookup(q as usize);
    let m = arena::head_meta(q as usize, t, a);
    // SAFETY: q heads its own fresh run of at least roomy pages; the
    // program is given new_pages of them.
    unsafe { (*m).given = new_pages as u32 };
    Some((q, m))
}

/// C `realloc` grows a small block to more than this many bytes into a
/// large block (whole 64 KiB pages, with room to grow in place: E119), as
/// jemalloc's blocks above 16 KiB and glibc's above its mmap threshold
/// are: a buffer doubled from 4 KiB to 1 MiB was copied through every
/// class up to 128 KiB (250 KiB copied; now 60 KiB).
const GROW_LARGE_MIN: usize = 32 << 10;

/// C `realloc` grows a small block of at least this many bytes into a
/// large block, as past [`GROW_LARGE_MIN`], when it is the block that the
/// thread's last growing move of a small block returned: a buffer grown
/// by steps (a string appended to, an array grown by half) then grows in
/// place from here instead of being copied at every class (E155).
#[cfg(not(feature = "secure"))]
const GROW_STREAK_MIN: usize = 8 << 10;

/// ... and from this many bytes while the thread's buffers made large are
/// transient: while it freed each of the last [`GROW_EARLY_AFTER`] of them
/// before its next buffer grew (E160). A loop that grows a buffer by steps
/// and frees it then copies it at no class from here, as glibc grows its
/// buffer at the top of its arena; a thread that keeps its buffers keeps
/// E155's rule, under which a kept buffer below 8 KiB has its class, but
/// for one in [`GROW_PROBE_EVERY`] of at least [`GROW_PROBE_MIN`].
#[cfg(not(feature = "secure"))]
pub(crate) const GROW_EARLY_MIN: usize = 256;

/// See [`GROW_EARLY_MIN`]. A new thread starts with this many.
#[cfg(not(feature = "secure"))]
pub(crate) const GROW_EARLY_AFTER: u32 = 4;

/// See [`GROW_EARLY_MIN`].
#[cfg(not(feature = "secure"))]
pub(crate) const GROW_PROBE_EVERY: u32 = 256;

/// See [`GROW_EARLY_MIN`]: a probe of a smaller buffer, when kept, would
/// hold a 4 KiB page for a block of a few hundred bytes.
#[cfg(not(feature = "secure"))]
const GROW_PROBE_MIN: usize = 1 << 10;

/// C `realloc`'s rule for a small block of `usable` bytes (E112): it stays
/// where it is while the new size uses at least 3/4 of it.
#[inline(always)]
fn keeps_in_place(new_size: usize, usable: usize) -> bool {
    new_size <= usable && new_size >= usable - usable / 4
}

/// How [`resize`] may place the new block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Exactly the request's class, or a large block when it has none
    /// ([`realloc_aligned`]).
    Exact,
    /// Exactly the request's class below 8 KiB; from there a growing block
    /// may be made large to grow in place, as C `realloc`'s (E119, E155),
    /// since `GlobalAlloc::dealloc` reads the tag of those (E157).
    #[cfg(not(feature = "secure"))]
    Grow,
    /// C [`realloc`]'s: [`Fit::Grow`], and a small block stays in place
    /// while the new size uses at least 3/4 of it, or moves to grow into at
    /// least 5/4 of its room (E112).
    Headroom,
}

/// [`realloc`] ([`Fit::Headroom`]), `GlobalAlloc::realloc`'s blocks of 8
/// KiB or more ([`Fit::Grow`]) and [`realloc_aligned`] ([`Fit::Exact`]).
/// A block that moves has at most its first `live` bytes copied (the
/// layout's size; `usize::MAX` when unknown: all it holds).
///
/// # Safety
/// `p` is a live block of hz allocated with alignment `align`, of which
/// the program's bytes are within the first `live`.
#[inline(never)]
unsafe fn resize(p: *mut u8, new_size: usize, align: usize, fit: Fit, live: usize) -> *mut u8 {
    let headroom = fit == Fit::Headroom;
    let promote = fit != Fit::Exact;
    if p.is_null() {
        return malloc_aligned(new_size, align);
    }
    if !align.is_power_of_two() {
        return null_mut();
    }
    let (t, a) = arena::lookup(p as usize);
    let c = tag_class(t);
    let new_c = class_for(new_size, align);
    let old_usable;
    #[cfg(feature = "secure")]
    if c != 0 && !crate::secure::is_live(p, t) {
        crate::secure::fatal_ptr("realloc of a freed block", p);
    }
    if c != 0 {
        old_usable = CLASS_SIZE[c] as usize;
        // In place: the same class, or with headroom (a block that grew
        // with room to spare, E112) any size that uses at least 3/4 of it.
        if new_c == c || (headroom && keeps_in_place(new_size, old_usable)) {
            return p;
        }
    } else if tag_kind(t) == KIND_LARGE {
        let m = arena::head_meta(p as usize, t, a);
        // SAFETY: m is the head meta of p's run.
        let (addr, pages, given) = unsafe { ((*m).addr, (*m).pages as usize, (*m).given as usize) };
        if addr != p as usize {
            return null_mut();
        }
        old_usable = (given << PAGE_SHIFT) - GUARD_BYTES;
        // A block of a segment keeps its pages: its neighbours there are
        // the segment's, not the page allocator's.
        // SAFETY: m heads p's run.
        let seg = unsafe { in_segment(m) };
        // (secure builds keep their guard pages: no in-place resizing.)
        // (C `realloc` keeps a large block above GROW_LARGE_MIN large, and
        // one that a streak made large (E155) while it grows.)
        // `tracked`: p is the thread's growing buffer, whose last size asked
        // the heap keeps; `streak`: it grows again.
        #[cfg(not(feature = "secure"))]
        let (tracked, streak) = {
            let h = heap::heap_of_slot(tls::get());
            // SAFETY: h is null or this thread's heap, whose thread alone
            // writes grow_last and grow_len.
            unsafe {
                if promote && !h.is_null() && (*h).grow_last == p as usize {
                    let grows = new_size > (*h).grow_len;
                    (*h).grow_len = new_size;
                    (h, grows)
                } else {
                    (null_mut(), false)
                }
            }
        };
        #[cfg(feature = "secure")]
        let streak = false;
        // (Either way the new size has no class below 8 KiB, which
        // `GlobalAlloc::dealloc` would take for exact: E157.)
        // C `realloc`'s blocks are freed by their tag: one that a streak
        // made large stays large while it grows, whatever its size (E160).
        let stays = new_c == 0
            || (promote && new_size > GROW_LARGE_MIN)
            || (streak && (headroom || new_c >= TAGGED_FROM));
        if stays && new_size <= MAX_REQUEST && !cfg!(feature = "secure") {
            let new_pages = new_size.max(1).div_ceil(PAGE_SIZE);
            if new_pages <= pages {
                // Shrinking: give the tail back only when it is most of the
                // run; otherwise keep it as room to grow again in place.
                // SAFETY: the run is p's. (A refusal leaves it whole.)
                if new_pages * 2 < pages && unsafe { shrink_large(m, pages, new_pages, seg) } {
                    // SAFETY: m heads p's run, now new_pages long.
                    unsafe { (*m).given = new_pages as u32 };
                } else if new_pages > given {
                    // SAFETY: as above; the run holds new_pages pages.
                    unsafe { (*m).given = new_pages as u32 };
                }
                return p;
            }
            // Growing: into the free run that follows, with 50% headroom if
            // there is room (untouched pages cost address space, not memory),
            // else exactly.
            let roomy = new_pages + new_pages / 2;
            // SAFETY: the run is p's.
            if !seg && unsafe { resize_large(m, pages, roomy) || resize_large(m, pages, new_pages) }
            {
                // SAFETY: m heads p's run, now at least new_pages long.
                unsafe { (*m).given = new_pages as u32 };
                return p;
            }
            // A block of a segment grows over the free units that follow it
            // there, on its owner's thread.
            #[cfg(not(feature = "secure"))]
            // SAFETY: m heads p's block, ours, shorter than new_pages.
            let grown = seg
                && unsafe {
                    grow_in_segment(m, pages, roomy) || grow_in_segment(m, pages, new_pages)
                };
            #[cfg(feature = "secure")]
            let grown = false;
            if grown {
                // SAFETY: m heads p's block, now at least new_pages long.
                unsafe { (*m).given = new_pages as u32 };
                return p;
            }
            // Moving: to a run with the same headroom, so the next growth
            // happens in place (the doubling that makes glibc's mremap'd
            // chunks cheap to grow), moving the pages by mremap when they
            // are many.
            let Some((q, mq)) = alloc_to_grow(new_pages, align) else {
                return null_mut();
            };
            #[cfg(not(feature = "secure"))]
            if !tracked.is_null() {
                // SAFETY: tracked is this thread's heap.
                unsafe {
                    (*tracked).grow_last = q as usize;
                    if (*tracked).grow_big == p as usize {
                        (*tracked).grow_big = q as usize;
                    }
                }
            }
            // A clean target (never touched, or purged) takes the old pages
            // by mremap; a resident one is copied into, since discarding its
            // pages and faulting others in later costs more than the copy.
            // SAFETY: mq heads q's fresh run.
            let clean = unsafe { !in_segment(mq) && arena::taken_clean(mq) };
            // Pages move only within a zone: `mremap` carries the source
            // range's huge-page advice along, and a range advised unlike its
            // neighbours is a VMA of its own. In the huge zone whole 2 MiB
            // extents move (both runs are made of them), so that the kernel
            // moves huge pages without splitting them.
            // SAFETY: m and mq are metas of arenas.
            let (zone, zone_q) = unsafe { (arena::zone_of(m), arena::zone_of(mq)) };
            let same_zone = zone == zone_q;
            let move_len = match zone {
                arena::Zone::Normal | arena::Zone::Dense => old_usable,
                arena::Zone::Huge => zone.round(given) << PAGE_SHIFT,
            };
            // SAFETY: q is a fresh run of at least old_usable bytes; the old
            // range is p's whole run, which we then free.
            unsafe {
                if clean
                    && !seg
                    && same_zone
                    && old_usable >= MREMAP_MIN
                    && os::move_pages(p, q, move_len)
                {
                    // The old range is mapped and empty.
                    free_large(m, true);
                } else {
                    core::ptr::copy_nonoverlapping(p, q, old_usable.min(live));
                    free_large(m, false);
                }
            }
            return q;
        }
    } else {
        return null_mut();
    }
    // Growing a small block past GROW_LARGE_MIN (C `realloc`): to a large
    // block with half as much again as room, which the next growths take
    // in place (E119).
    if promote
        && c != 0
        && new_size > old_usable.max(GROW_LARGE_MIN)
        && new_size <= MAX_REQUEST
        && !cfg!(feature = "secure")
    {
        // SAFETY: p is a live small block of old_usable < new_size bytes.
        let Some((q, _)) = (unsafe { copy_to_grow(p, old_usable.min(live), new_size, align) })
        else {
            return null_mut();
        };
        // SAFETY: p is live and copied.
        unsafe { free(p) };
        return q;
    }
    // Growing a small block: with headroom, to at least 5/4 of its class
    // (within the small classes; a request above them is served as asked).
    let want = if headroom && c != 0 && new_size > old_usable {
        new_size.max((old_usable + old_usable / 4).min(SMALL_MAX))
    } else {
        new_size
    };
    let q = malloc_aligned(want, align);
    if q.is_null() {
        return null_mut();
    }
    // SAFETY: both blocks are live and distinct; copy what both can hold.
    unsafe {
        core::ptr::copy_nonoverlapping(p, q, old_usable.min(new_size).min(live));
        free(p);
    }
    q
}

/// Returns free memory to the OS now: flushes this thread's caches, those
/// of heaps whose threads have exited, and purges every free page.
pub fn collect() {
    // Kept big blocks back to their segments first (E104), so that the
    // flushes below purge them with their segments' free units.
    #[cfg(not(feature = "secure"))]
    crate::segment::kept_flush(false);
    let h = heap::heap_of_slot(tls::get());
    if !h.is_null() {
        // SAFETY: h is this thread's heap.
        unsafe {
            heap::pool_gc(h, true);
            heap::flush_all(h, true);
        }
    }
    heap::collect_shared_and_abandoned();
    #[cfg(not(feature = "secure"))]
    arena::kept_flush();
    arena::purge_all();
}

// ---------------------------------------------------------------------------
// Statistics

/// Per-class figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClassStats {
    /// Block size of the class.
    pub size: u32,
    /// Blocks out of their spans (live, or cached in a thread's bin).
    pub blocks: u64,
    /// Spans of the class.
    pub spans: u64,
}

/// Snapshot of allocator statistics (read without stopping other threads:
/// figures are each exact but not mutually atomic).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Bytes in blocks handed out of spans and page runs (live, plus small
    /// blocks cached in thread bins).
    pub allocated: u64,
    /// Bytes of pages that hold spans, large blocks and heap metadata (of
    /// a heap's segments, only the pages of their blocks).
    pub in_use: u64,
    /// Highest count of pages taken from the page allocator (segments
    /// whole).
    pub peak: u64,
    /// `in_use` plus free pages not yet purged (of the page allocator and
    /// of the segments): what `collect()` can return.
    pub resident: u64,
    /// Address space reserved.
    pub mapped: u64,
    /// Bytes of data pages made usable so far (the part of `mapped` the
    /// kernel charges to the commit limit; tables not counted).
    pub committed: u64,
    pub purges: u64,
    pub purged_bytes: u64,
    /// Spans carved from the dense zone's huge pages (E125).
    pub dense_spans: u64,
    /// Large-block segments taken from the dense zone (E128).
    pub dense_segments: u64,
    /// Big blocks purged at once because they read sparse: at their free
    /// (E133) or when a `calloc` took their run (E137); also counted in
    /// `purges`.
    pub sparse_purges: u64,
    pub remote_frees_sent: u64,
    pub remote_frees_received: u64,
    /// Frees of pointers hz never handed out (ignored).
    pub foreign_frees: u64,
    /// Large blocks live.
    pub large_blocks: u64,
    pub heaps_live: u64,
    pub heaps_created: u64,
    /// Allocation requests refused (out of memory or impossible size).
    pub failed_allocations: u64,
    /// Acquisitions that found a lock taken (and spun, then maybe slept in
    /// the kernel): the page allocator's lock, the remote pools' (all
    /// classes), the heap registry's (thread start and exit) and the
    /// shared heap's. Where a multithreaded program spends time in `futex`
    /// or `sched_yield`, these say which of hz's locks, if any, it is.
    pub page_lock_waits: u64,
    pub pool_lock_waits: u64,
    pub registry_lock_waits: u64,
    pub shared_lock_waits: u64,
    /// Per size class, by class index (`class::CLASS_SIZE`); the last four
    /// are the aligned twins of 4–32 KiB (`class::TWIN_FIRST`).
    pub classes: [ClassStats; NUM_CLASSES],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            allocated: 0,
            in_use: 0,
            peak: 0,
            resident: 0,
            mapped: 0,
            committed: 0,
            purges: 0,
            purged_bytes: 0,
            dense_spans: 0,
            dense_segments: 0,
            sparse_purges: 0,
            remote_frees_sent: 0,
            remote_frees_received: 0,
            foreign_frees: 0,
            large_blocks: 0,
            heaps_live: 0,
            heaps_created: 0,
            failed_allocations: 0,
            page_lock_waits: 0,
            pool_lock_waits: 0,
            registry_lock_waits: 0,
            shared_lock_waits: 0,
            classes: [ClassStats::default(); NUM_CLASSES],
        }
    }
}

/// Current statistics.
pub fn stats() -> Stats {
    let g = &counters::STATS;
    // Large blocks of threads without a heap (one pass over the shards).
    let (heapless_blocks, heapless_bytes) = counters::large_sums();
    let mut s = Stats {
        in_use: g.pages_in_use.load(Relaxed) << PAGE_SHIFT,
        peak: g
            .peak_pages_in_use
            .load(Relaxed)
            .max(g.pages_in_use.load(Relaxed))
            << PAGE_SHIFT,
        mapped: g.mapped.load(Relaxed),
        committed: g.committed.load(Relaxed),
        purges: g.purges.load(Relaxed),
        purged_bytes: g.purged_bytes.load(Relaxed),
        dense_spans: g.dense_spans.load(Relaxed),
        dense_segments: g.dense_segments.load(Relaxed),
        sparse_purges: g.sparse_purges.load(Relaxed),
        foreign_frees: g.foreign_frees.load(Relaxed),
        large_blocks: heapless_blocks,
        heaps_live: g.heaps_live.load(Relaxed),
        heaps_created: g.heaps_created.load(Relaxed),
        failed_allocations: g.oom.load(Relaxed),
        page_lock_waits: arena::page_lock_waits(),
        ..Stats::default()
    };
    (
        s.pool_lock_waits,
        s.registry_lock_waits,
        s.shared_lock_waits,
    ) = heap::lock_waits();
    s.resident = s.in_use + ((arena::dirty_pages() as u64) << PAGE_SHIFT);
    heap::sum_heaps(&mut s);
    let mut small = 0;
    for c in 1..NUM_CLASSES {
        s.classes[c].size = CLASS_SIZE[c];
        small += s.classes[c].blocks * CLASS_SIZE[c] as u64;
    }
    // `sum_heaps` added the heaps' large bytes (wrapping: one heap's count
    // alone may be "negative").
    s.allocated = s.allocated.wrapping_add(small).wrapping_add(heapless_bytes);
    s
}

/// Writes a readable statistics table to file descriptor `fd` (no allocation).
pub fn write_stats(fd: i32) {
    use core::fmt::Write;
    let s = stats();
    let mut b = counters::Buf::<8192>::new();
    let mib = |x: u64| x as f64 / (1u64 << 20) as f64;
    let _ = writeln!(b, "hz statistics");
    let _ = writeln!(b, "  allocated      {:>12.2} MiB", mib(s.allocated));
    let _ = writeln!(
        b,
        "  in use (pages) {:>12.2} MiB   peak {:.2} MiB",
        mib(s.in_use),
        mib(s.peak)
    );
    let _ = writeln!(b, "  resident (max) {:>12.2} MiB", mib(s.resident));
    let _ = writeln!(
        b,
        "  mapped         {:>12.2} MiB   committed {:.2} MiB",
        mib(s.mapped),
        mib(s.committed)
    );
    let _ = writeln!(
        b,
        "  purges         {:>12}   ({:.2} MiB; {} sparse big blocks)",
        s.purges,
        mib(s.purged_bytes),
        s.sparse_purges
    );
    let _ = writeln!(b, "  dense spans    {:>12}", s.dense_spans);
    let _ = writeln!(b, "  dense segments {:>12}", s.dense_segments);
    let _ = writeln!(
        b,
        "  remote frees   {:>12} sent, {} received",
        s.remote_frees_sent, s.remote_frees_received
    );
    let _ = writeln!(b, "  foreign frees  {:>12}", s.foreign_frees);
    let _ = writeln!(b, "  large blocks   {:>12}", s.large_blocks);
    let _ = writeln!(
        b,
        "  heaps          {:>12} live, {} created",
        s.heaps_live, s.heaps_created
    );
    let _ = writeln!(b, "  failed allocs  {:>12}", s.failed_allocations);
    let _ = writeln!(
        b,
        "  lock waits     {:>12} page, {} pool, {} registry, {} shared",
        s.page_lock_waits, s.pool_lock_waits, s.registry_lock_waits, s.shared_lock_waits
    );
    let _ = writeln!(
        b,
        "  {:>8} {:>12} {:>8} {:>12}",
        "class", "blocks", "spans", "KiB"
    );
    for (i, c) in s.classes.iter().enumerate().skip(1) {
        if c.blocks != 0 || c.spans != 0 {
            let _ = writeln!(
                b,
                "  {:>7}{} {:>12} {:>8} {:>12}",
                c.size,
                // `a`: an aligned twin (uncoloured spans, `class::TWIN_FIRST`).
                if i >= crate::class::TWIN_FIRST {
                    'a'
                } else {
                    ' '
                },
                c.blocks,
                c.spans,
                c.blocks * c.size as u64 / 1024
            );
        }
    }
    os::write_fd(fd, b.as_bytes());
}

/// Writes the statistics as the XML document of glibc's `malloc_info(3)`,
/// with glibc's elements, so that tools reading glibc's report read this
/// one. hz has no per-arena heaps: one `<heap nr="0">` holds the sums.
/// `<sizes>` lists, per size class with spans, the free room in its spans
/// (`from`..`to` bytes per block, `count` blocks, `total` bytes); blocks
/// cached in thread bins count as in use, as glibc's report leaves its
/// tcache out. `rest` totals that room; `mmap` counts the live large
/// blocks and their bytes; `system current` is the bytes of pages in use,
/// `system max` its peak; `aspace total` is the address space reserved
/// (`in_use` inside the heap element) and `aspace mprotect`, as in glibc's
/// thread arenas, the part made accessible: `committed` (the pages in use
/// inside the heap element). No allocation: `w` may be a fixed buffer.
pub fn write_info<W: core::fmt::Write>(w: &mut W) -> core::fmt::Result {
    let s = stats();
    writeln!(w, "<malloc version=\"1\">")?;
    writeln!(w, "<heap nr=\"0\">")?;
    writeln!(w, "<sizes>")?;
    let (mut free_blocks, mut free_bytes, mut small) = (0u64, 0u64, 0u64);
    let mut from = 1u64;
    for (c, k) in s.classes.iter().enumerate().skip(1) {
        let size = u64::from(k.size);
        let room = (k.spans * crate::class::span_blocks(c) as u64).saturating_sub(k.blocks);
        // An aligned twin serves the sizes above half its own.
        let twin = c >= crate::class::TWIN_FIRST;
        if room != 0 {
            writeln!(
                w,
                "<size from=\"{}\" to=\"{size}\" total=\"{}\" count=\"{room}\"/>",
                if twin { size / 2 + 1 } else { from },
                room * size
            )?;
        }
        free_blocks += room;
        free_bytes += room * size;
        small += k.blocks * size;
        from = size + 1;
    }
    writeln!(w, "</sizes>")?;
    let totals = |w: &mut W, heap: bool| -> core::fmt::Result {
        writeln!(w, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
        writeln!(
            w,
            "<total type=\"rest\" count=\"{free_blocks}\" size=\"{free_bytes}\"/>"
        )?;
        if !heap {
            writeln!(
                w,
                "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>",
                s.large_blocks,
                s.allocated.saturating_sub(small)
            )?;
        }
        writeln!(w, "<system type=\"current\" size=\"{}\"/>", s.in_use)?;
        writeln!(w, "<system type=\"max\" size=\"{}\"/>", s.peak)?;
        let total = if heap { s.in_use } else { s.mapped };
        writeln!(w, "<aspace type=\"total\" size=\"{total}\"/>")?;
        let open = if heap { s.in_use } else { s.committed };
        writeln!(w, "<aspace type=\"mprotect\" size=\"{open}\"/>")
    };
    totals(w, true)?;
    writeln!(w, "</heap>")?;
    totals(w, false)?;
    writeln!(w, "</malloc>")
}

// ---------------------------------------------------------------------------
// fork

static FORK_HANDLERS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" fn on_fork_prepare() {
    fork_prepare();
}
extern "C" fn on_fork_parent() {
    fork_parent();
}
extern "C" fn on_fork_child() {
    fork_child();
}

/// Registers [`fork_prepare`], [`fork_parent`] and [`fork_child`] with
/// `pthread_atfork`, once per process (later calls do nothing). hz calls it
/// on the first allocation of every thread, and libhz.so from its
/// constructor, so programs need not.
pub fn register_fork_handlers() {
    if FORK_HANDLERS.load(Relaxed) || FORK_HANDLERS.swap(true, Relaxed) {
        return;
    }
    // SAFETY: plain extern "C" functions valid for the life of the process.
    unsafe {
        libc::pthread_atfork(
            Some(on_fork_prepare),
            Some(on_fork_parent),
            Some(on_fork_child),
        )
    };
}

/// fork() support, registered automatically (see
/// [`register_fork_handlers`]): takes every global lock before `fork`.
pub fn fork_prepare() {
    heap::fork_prepare();
    arena::fork_prepare();
}
/// See [`fork_prepare`].
pub fn fork_parent() {
    arena::fork_parent();
    heap::fork_parent();
}
/// See [`fork_prepare`].
pub fn fork_child() {
    arena::fork_child();
    heap::fork_child();
}

/// Testing hook: after `n` more successful address-space reservations, make
/// every further one fail as if the OS refused it (`n < 0`: never fail, the
/// default). Existing arenas keep serving; only growth is refused.
pub fn fail_reservations(n: isize) {
    os::FAIL_MAPS.store(n, Relaxed);
}

/// Testing hook: after `n` more successful commits (the `mprotect` that
/// makes the next part of an arena usable), make every further one fail as
/// the kernel does when the commit limit is spent under strict overcommit
/// (`n < 0`: never fail, the default). Memory already committed keeps
/// serving.
pub fn fail_commits(n: isize) {
    os::FAIL_COMMITS.store(n, Relaxed);
}

/// Largest request served from size classes.
pub const SMALL_LIMIT: usize = SMALL_MAX;
