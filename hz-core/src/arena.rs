//! Arenas, the page-tag table and the page allocator (the backend).
//!
//! Owns: address-space reservations ("arenas"), cut into 64 KiB pages; per
//! arena a tag table (one `u64` per page: class, kind, owner heap, offset to
//! the run's first page) and a page-meta table (one [`PageMeta`] per page);
//! the free runs of pages, their coalescing, and purging (returning dirty
//! free pages to the OS after a delay).
//! May touch: `os` (mappings), `config`, `stats`.
//! Invariants:
//! * A run of pages (free or in use) has `state`, `pages` and `addr` valid in
//!   its first page's meta, and `state`/`head` in its last page's meta.
//!   Neighbouring free runs are always coalesced.
//! * A free run's possibly resident pages lie in its dirty hull
//!   `[dlo, dhi)`; the dirty total and purges count only hulls.
//! * All page-allocator fields are read and written with [`PAGES`] held. The
//!   small-span fields of an in-use run belong to the owning heap alone.
//! * Tags are written when a run is handed out and read without locks: the
//!   pointer being looked up was obtained (with synchronisation) from an
//!   allocation that wrote them.
//! * Arenas are never unmapped (threads may still free during `exit`).

use crate::os;
use crate::stats::STATS;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering::*};
use crate::{PAGE_SHIFT, PAGE_SIZE};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

/// Tag kinds.
pub const KIND_FREE: u64 = 0;
pub const KIND_SMALL: u64 = 1;
pub const KIND_LARGE: u64 = 2;
pub const KIND_META: u64 = 3;

#[inline(always)]
pub const fn tag_class(t: u64) -> usize {
    // Classes are < 64 (see `heap::BIN_SLOTS_PER_HEAP`): the mask lets the
    // fast path index a heap's 64 bins without a bounds check.
    (t & 0x3f) as usize
}
#[inline(always)]
pub const fn tag_kind(t: u64) -> u64 {
    (t >> 8) & 0xf
}
#[inline(always)]
pub const fn tag_owner(t: u64) -> u32 {
    ((t >> 12) & 0xf_ffff) as u32
}
#[inline(always)]
pub const fn tag_offset(t: u64) -> usize {
    (t >> 32) as usize
}
pub const fn make_tag(class: usize, kind: u64, owner: u32, offset: usize) -> u64 {
    class as u64 | (kind << 8) | ((owner as u64 & 0xf_ffff) << 12) | ((offset as u64) << 32)
}
/// Largest heap id a tag can carry.
pub const MAX_OWNER: u32 = 0xf_ffff;

pub const STATE_FREE: u8 = 1;
pub const STATE_USED: u8 = 2;

/// Metadata of one page. Only the first page of a run (and `state`/`head`
/// of its last page) is meaningful.
#[repr(C)]
pub struct PageMeta {
    // ---- page allocator: only with PAGES held ----
    pub state: u8,
    /// Arena index of this page.
    pub arena: u16,
    /// Run length in pages (first page).
    pub pages: u32,
    /// Index of the run's first page (last page).
    pub head: u32,
    /// The pages that may be resident are inside `[dlo, dhi)` (arena page
    /// indices; empty when equal): of a free run, its dirty hull (a free
    /// run with a non-empty hull is in the dirty list); of a run
    /// in use, the hull it was taken with (a large block's untouched room
    /// to grow is not counted). A freed run merged with clean neighbours
    /// keeps its hull, so neither the dirty cap nor a purge counts the
    /// clean part (E20).
    pub dlo: u32,
    pub dhi: u32,
    pub freed_at: u64,
    /// Address of the page.
    pub addr: usize,
    pub fnext: *mut PageMeta,
    pub fprev: *mut PageMeta,
    pub dnext: *mut PageMeta,
    pub dprev: *mut PageMeta,
    // ---- small span: only by the owning heap ----
    /// Secure build: the span's free blocks, a chain of encoded links
    /// (`heap::span_push`; the default build keeps `bits` instead).
    #[cfg(feature = "secure")]
    pub free: *mut u8,
    /// The span's first block: its first page plus its colour
    /// (`class::coloured`; the secure build does not colour).
    pub base: usize,
    /// Start of the span's never-carved tail (`secure` builds copy it to
    /// the word beside each page's tag for other threads to read).
    pub bump: AtomicPtr<u8>,
    pub end: *mut u8,
    pub used: u32,
    pub class: u32,
    /// Default build: the span's free blocks are the set bits of `bits`
    /// (block `i` at `addr + i * size`; as many as it has carved blocks not
    /// in `used`), none in the words below `free_lo` (`heap::span_push`).
    /// Out of band: giving a block back to its span, or taking it again,
    /// touches no block (E49).
    #[cfg(not(feature = "secure"))]
    pub bits: *mut u64,
    #[cfg(not(feature = "secure"))]
    pub free_lo: u32,
    pub snext: *mut PageMeta,
    pub sprev: *mut PageMeta,
    pub in_partial: bool,
    /// Default build, large blocks: carved from a segment on pages never
    /// written since they were mapped or purged; its owner's `free`
    /// counts how many it wrote (`segment::sample`, E128).
    pub sample: bool,
    /// Large blocks: the run's leading pages handed to the program (the
    /// rest of the run is room to grow in place, never given out).
    pub given: u32,
    /// Default build: the heap segment a large block was carved from
    /// (`segment`); null for a block of the page allocator's own.
    #[cfg(not(feature = "secure"))]
    pub seg: *mut crate::segment::Segment,
    /// `secure` builds, any page: the last `secure::GUARD` bytes of this
    /// page are a guard (`os::GUARD_MARKER` or `os::GUARD_PROTECT`; 0: none). Guards stay when a run is freed (so a span
    /// carved again at the same place needs no system call); a run taken
    /// from the page allocator lifts the guards inside it (see
    /// `secure::take_run`). Only the run's owner touches it.
    pub guarded: u8,
}

pub const MAX_ARENAS: usize = 64;

pub struct ArenaSlot {
    /// Address of data page 0 (64 KiB aligned).
    pub base: AtomicUsize,
    /// Bytes of data pages.
    pub len: AtomicUsize,
    /// The page tags, [`TAG_WORDS`] words per page (see [`tag_ptr`]).
    pub tags: AtomicPtr<u64>,
    pub metas: AtomicPtr<PageMeta>,
    /// Default build: `SPAN_BITMAP_WORDS` words per page, the free-block
    /// bitmap of the small span whose first page it is.
    #[cfg(not(feature = "secure"))]
    pub bits: AtomicPtr<u64>,
    /// The arena's [`Zone`] (as `u8`).
    pub zone: AtomicU32,
    /// Pages the page allocator hands out of it: `len`'s, except in arena
    /// 0 when the dense zone's view ([`Zone::Dense`]) owns its upper part.
    pub pages: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: ArenaSlot = ArenaSlot {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    tags: AtomicPtr::new(null_mut()),
    metas: AtomicPtr::new(null_mut()),
    #[cfg(not(feature = "secure"))]
    bits: AtomicPtr::new(null_mut()),
    zone: AtomicU32::new(0),
    pages: AtomicUsize::new(0),
};
pub static ARENAS: [ArenaSlot; MAX_ARENAS] = [EMPTY_SLOT; MAX_ARENAS];
pub static NARENAS: AtomicUsize = AtomicUsize::new(0);

/// When (coarse ms) the oldest dirty run becomes due for a purge, or the
/// next purge check may run; `u64::MAX` with no dirty run. Written with
/// `PAGES` held, read without it by [`purge_if_due`]: a stale value only
/// costs one `try_lock` too many or one purge a tick late.
static PURGE_DUE_AT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Number of exact-size free lists; list `FREE_LISTS - 1` holds every run
/// of that many pages or more.
const FREE_LISTS: usize = 65;

/// Which arenas a run comes from. Large runs of [`HUGE_RUN_PAGES`] pages
/// or more have arenas of their own, advised for transparent huge pages
/// once when reserved, where every run starts on a 2 MiB boundary and
/// spans whole 2 MiB extents: a huge page never holds two runs, and small
/// spans (used sparsely by remote-free traffic, M14) never get one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Zone {
    Normal = 0,
    Huge = 1,
    Dense = 2,
}

/// Number of zones.
const ZONES: usize = 3;

/// Pages of a 2 MiB huge page.
pub const HUGE_RUN_PAGES: usize = HUGE_PAGE / PAGE_SIZE;

impl Zone {
    /// `pages` rounded up to what a run of this zone is made of: whole
    /// 2 MiB extents in the huge zone.
    pub const fn round(self, pages: usize) -> usize {
        match self {
            Zone::Normal | Zone::Dense => pages,
            Zone::Huge => pages.next_multiple_of(HUGE_RUN_PAGES),
        }
    }
}

struct PageState {
    /// Free runs per zone, by length.
    free: [[*mut PageMeta; FREE_LISTS]; ZONES],
    /// Dirty free runs per zone, oldest first, and their hulls' pages.
    dirty_head: [*mut PageMeta; ZONES],
    dirty_tail: [*mut PageMeta; ZONES],
    dirty_pages: [usize; ZONES],
    /// Pages handed out of each arena so far (bump pointer).
    top: [usize; MAX_ARENAS],
    /// Pages of each arena (from its page 0) made accessible so far
    /// ([`commit_to`]); at least `top`.
    committed: [usize; MAX_ARENAS],
    /// Pages whose entries in the tables are accessible; at least
    /// `committed`.
    tables: [usize; MAX_ARENAS],
    /// Size to try for the next reservation (halved on refusal).
    next_reserve: usize,
    last_purge_check: u64,
    /// Pages of the in-use runs of 2 MiB or more ([`big`]: large blocks,
    /// kept runs and the heaps' 4 MiB segments), and the most
    /// seen in the previous and in the current [`PEAK_WINDOW_MS`] window
    /// (begun at `big_peak_at`): the dirty caps stretch by how far the
    /// big runs in use are below that peak (E71, [`maybe_purge`]).
    big_in_use: usize,
    big_peak: [usize; 2],
    big_peak_at: u64,
    /// Purge back-off (E81, [`maybe_purge`]): when the last purge was;
    /// the clean pages of free runs handed out within a second of a purge
    /// (pages about to be faulted in again) in the window that began at
    /// `refault_since`; and until when purging holds back.
    last_purge_at: u64,
    refault_pages: usize,
    refault_since: u64,
    churn_until: u64,
}

struct Pages {
    lock: Mutex,
    st: UnsafeCell<PageState>,
}
// SAFETY: `st` is only accessed with `lock` held.
unsafe impl Sync for Pages {}

static PAGES: Pages = Pages {
    lock: Mutex::new(),
    st: UnsafeCell::new(PageState {
        free: [[null_mut(); FREE_LISTS]; ZONES],
        dirty_head: [null_mut(); ZONES],
        dirty_tail: [null_mut(); ZONES],
        dirty_pages: [0; ZONES],
        top: [0; MAX_ARENAS],
        committed: [0; MAX_ARENAS],
        tables: [0; MAX_ARENAS],
        next_reserve: 0,
        last_purge_check: 0,
        big_in_use: 0,
        big_peak: [0; 2],
        big_peak_at: 0,
        last_purge_at: 0,
        refault_pages: 0,
        refault_since: 0,
        churn_until: 0,
    }),
};

/// Words of a span's free-block bitmap (default build): one bit per block
/// of the span's class, at most a 64 KiB page of 16-byte blocks (every
/// class's span holds at most that many blocks: checked in `class`).
#[cfg(not(feature = "secure"))]
pub const SPAN_BITMAP_WORDS: usize = PAGE_SIZE / 16 / 64;
#[cfg(not(feature = "secure"))]
const META_BYTES: usize = core::mem::size_of::<PageMeta>() + 8 + SPAN_BITMAP_WORDS * 8;
#[cfg(feature = "secure")]
const META_BYTES: usize = core::mem::size_of::<PageMeta>() + 8 * TAG_WORDS;

/// Words per page in an arena's tag table: the tag, and in `secure` builds
/// beside it the carving point of the small span holding the page
/// (`secure::set_carved`), the span's boundary key
/// (`secure::boundary_key`, E94) and its class's divisor
/// (`secure::divisor`), so that a checked `free` reads one line of
/// metadata for all its span checks, apart from the page metas, whose
/// lines the owner writes on every refill: a remote free reads a line
/// that stays shared.
#[cfg(feature = "secure")]
pub const TAG_WORDS: usize = 4;
#[cfg(not(feature = "secure"))]
pub const TAG_WORDS: usize = 1;

/// The tag of page `idx` of arena slot `a` (a pointer into its table).
#[inline(always)]
pub fn tag_ptr(a: &ArenaSlot, idx: usize) -> *mut u64 {
    // Callers pass a page of the arena; the table has TAG_WORDS words per
    // page, so the result points into it.
    a.tags.load(Relaxed).wrapping_add(idx * TAG_WORDS)
}
const MIN_ARENA: usize = 16 << 20;
const HUGE_PAGE: usize = 2 << 20;

// ---------------------------------------------------------------------------
// Lookups (lock-free)

/// The tag of the page holding `p`, and the arena index; tag 0 when hz does
/// not manage `p`. Does not touch `p`.
#[inline(always)]
pub fn lookup(p: usize) -> (u64, usize) {
    let a = &ARENAS[0];
    let off = p.wrapping_sub(a.base.load(Relaxed));
    if off < a.len.load(Relaxed) {
        // SAFETY: off < len, so the index is within arena 0's tag table.
        let t = unsafe { *tag_ptr(a, off >> PAGE_SHIFT) };
        return (t, 0);
    }
    lookup_slow(p)
}

#[cold]
fn lookup_slow(p: usize) -> (u64, usize) {
    let n = NARENAS.load(Acquire);
    for i in 1..n {
        let a = &ARENAS[i];
        let off = p.wrapping_sub(a.base.load(Relaxed));
        if off < a.len.load(Relaxed) {
            // SAFETY: index within arena i's tag table.
            let t = unsafe { *tag_ptr(a, off >> PAGE_SHIFT) };
            return (t, i);
        }
    }
    (0, 0)
}

/// The meta of the first page of the run holding `p` (whose tag is `t`).
#[inline]
pub fn head_meta(p: usize, t: u64, arena: usize) -> *mut PageMeta {
    let a = &ARENAS[arena];
    let idx = ((p - a.base.load(Relaxed)) >> PAGE_SHIFT) - tag_offset(t);
    // SAFETY: idx is a page of this arena (tags only name in-arena heads).
    unsafe { a.metas.load(Relaxed).add(idx) }
}

/// `secure`: the boundary key of the small span holding the page whose tag
/// is at `tag` (the word after the carving point; `secure::boundary_key`).
#[cfg(feature = "secure")]
#[inline(always)]
pub fn key_word(tag: *const u64) -> *const u64 {
    // The third of the page's TAG_WORDS words.
    tag.wrapping_add(2)
}

/// `secure`: the divisor of the class of the small span holding the page
/// whose tag is at `tag` (`secure::divisor`; the fourth word).
#[cfg(feature = "secure")]
#[inline(always)]
pub fn divisor_word(tag: *const u64) -> *const u64 {
    tag.wrapping_add(3)
}

/// `secure`: the carving-point word of the page whose tag is at `tag`.
#[cfg(feature = "secure")]
#[inline(always)]
pub fn carved_word_of(tag: *const u64) -> *const core::sync::atomic::AtomicUsize {
    // The word after the page's tag, 8-byte aligned.
    tag.wrapping_add(1) as *const _
}

/// `secure`: the carving-point word of page `idx` of arena `arena`.
#[cfg(feature = "secure")]
#[inline(always)]
pub fn carved_word(arena: usize, idx: usize) -> *const core::sync::atomic::AtomicUsize {
    carved_word_of(tag_ptr(&ARENAS[arena], idx))
}

/// `secure`: page index of head meta `m` in its arena, and the arena.
#[cfg(feature = "secure")]
pub fn page_of(m: *mut PageMeta) -> (usize, usize) {
    // SAFETY: m is a meta of an arena.
    (page_index(m), unsafe { (*m).arena } as usize)
}

/// Default build: writes the tag of a large block's first page only, to
/// `kind` (a block of a segment waiting in its heap's cache, whose other
/// pages keep their tags: `segment::free`).
///
/// # Safety
/// `m` is the head meta of a run of large-block tags that the caller owns.
#[cfg(not(feature = "secure"))]
pub unsafe fn set_head_tag(m: *mut PageMeta, kind: u64) {
    // SAFETY: m is a valid head meta; its page's tag is in its arena's
    // table.
    unsafe {
        let a = &ARENAS[(*m).arena as usize];
        let idx = ((*m).addr - a.base.load(Relaxed)) >> PAGE_SHIFT;
        *tag_ptr(a, idx) = make_tag(0, kind, 0, 0);
    }
}

/// Writes the tags of a run.
///
/// # Safety
/// `m` is the head meta of a run that the caller owns.
pub unsafe fn set_tags(m: *mut PageMeta, class: usize, kind: u64, owner: u32) {
    // SAFETY: m is a valid head meta.
    let (arena, addr, pages) = unsafe { ((*m).arena as usize, (*m).addr, (*m).pages as usize) };
    let a = &ARENAS[arena];
    let idx = (addr - a.base.load(Relaxed)) >> PAGE_SHIFT;
    #[cfg(feature = "secure")]
    let (key, div) = (
        crate::secure::boundary_key(addr, class),
        crate::secure::divisor(class),
    );
    for i in 0..pages {
        // SAFETY: idx + i within the arena's tag table (TAG_WORDS words
        // per page: `key_word` and `divisor_word` name the key's and the
        // divisor's).
        unsafe {
            let tp = tag_ptr(a, idx + i);
            *tp = make_tag(class, kind, owner, i);
            #[cfg(feature = "secure")]
            {
                *(key_word(tp) as *mut u64) = key;
                *(divisor_word(tp) as *mut u64) = div;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Page allocator

fn meta_at(arena: usize, idx: usize) -> *mut PageMeta {
    // SAFETY: callers pass idx < arena pages.
    unsafe { ARENAS[arena].metas.load(Relaxed).add(idx) }
}

fn arena_pages(arena: usize) -> usize {
    ARENAS[arena].pages.load(Relaxed)
}

/// Default build: the free-block bitmap of the span whose head meta is `m`.
#[cfg(not(feature = "secure"))]
pub fn span_bits(m: *mut PageMeta) -> *mut u64 {
    // SAFETY: m is a meta of its arena; the bitmap table has
    // SPAN_BITMAP_WORDS words per page.
    unsafe {
        ARENAS[(*m).arena as usize]
            .bits
            .load(Relaxed)
            .add(page_index(m) * SPAN_BITMAP_WORDS)
    }
}

/// Index of meta `m` in its arena's table (its page's index).
#[cfg(not(feature = "secure"))]
pub fn meta_index(m: *mut PageMeta) -> usize {
    page_index(m)
}

fn page_index(m: *mut PageMeta) -> usize {
    // SAFETY: m is a meta inside its arena's table.
    unsafe { m.offset_from(ARENAS[(*m).arena as usize].metas.load(Relaxed)) as usize }
}

/// Marks `[idx, idx+pages)` of `arena` as one run in state `state`.
unsafe fn set_run(arena: usize, idx: usize, pages: usize, state: u8) -> *mut PageMeta {
    let h = meta_at(arena, idx);
    let t = meta_at(arena, idx + pages - 1);
    // SAFETY: both metas are in the table; PAGES is held by the caller.
    unsafe {
        (*h).state = state;
        (*h).pages = pages as u32;
        (*h).arena = arena as u16;
        (*h).addr = ARENAS[arena].base.load(Relaxed) + (idx << PAGE_SHIFT);
        (*t).state = state;
        (*t).head = idx as u32;
        (*t).arena = arena as u16;
    }
    h
}

fn list_of(pages: usize) -> usize {
    if pages >= FREE_LISTS - 1 {
        FREE_LISTS - 1
    } else {
        pages
    }
}

unsafe fn free_insert(st: &mut PageState, m: *mut PageMeta) {
    // SAFETY: m is a free head meta; lists are consistent (PAGES held).
    unsafe {
        let l = list_of((*m).pages as usize);
        let list = &mut st.free[zone_of(m) as usize][l];
        (*m).fprev = null_mut();
        (*m).fnext = *list;
        if !list.is_null() {
            (**list).fprev = m;
        }
        *list = m;
    }
}

unsafe fn free_remove(st: &mut PageState, m: *mut PageMeta) {
    // SAFETY: m is in list `list_of(pages)`.
    unsafe {
        let l = list_of((*m).pages as usize);
        if (*m).fprev.is_null() {
            st.free[zone_of(m) as usize][l] = (*m).fnext;
        } else {
            (*(*m).fprev).fnext = (*m).fnext;
        }
        if !(*m).fnext.is_null() {
            (*(*m).fnext).fprev = (*m).fprev;
        }
    }
}

unsafe fn dirty_append(st: &mut PageState, m: *mut PageMeta) {
    // SAFETY: m is a free head not in the dirty list.
    unsafe {
        (*m).dnext = null_mut();
        let z = zone_of(m) as usize;
        (*m).dprev = st.dirty_tail[z];
        if st.dirty_tail[z].is_null() {
            st.dirty_head[z] = m;
        } else {
            (*st.dirty_tail[z]).dnext = m;
        }
        st.dirty_tail[z] = m;
        st.dirty_pages[z] += ((*m).dhi - (*m).dlo) as usize;
        let due = (*m).freed_at + crate::config::CONFIG.purge_delay_ms.load(Relaxed);
        if due < PURGE_DUE_AT.load(Relaxed) {
            PURGE_DUE_AT.store(due, Relaxed);
        }
    }
}

unsafe fn dirty_remove(st: &mut PageState, m: *mut PageMeta) {
    // SAFETY: m is in the dirty list.
    unsafe {
        let z = zone_of(m) as usize;
        if (*m).dprev.is_null() {
            st.dirty_head[z] = (*m).dnext;
        } else {
            (*(*m).dprev).dnext = (*m).dnext;
        }
        if (*m).dnext.is_null() {
            st.dirty_tail[z] = (*m).dprev;
        } else {
            (*(*m).dnext).dprev = (*m).dprev;
        }
        st.dirty_pages[z] -= ((*m).dhi - (*m).dlo) as usize;
    }
}

/// The bytes of in-use run `m`, from its start, that may still hold what
/// an earlier owner wrote: its hull when it was taken (empty when it was
/// taken clean). Past them its pages read as zero, so a `calloc` clears
/// only these (E136).
///
/// # Safety
/// `m` heads an in-use run the caller owns, taken from the page allocator
/// or kept ([`keep_written`]), not grown since.
pub unsafe fn taken_dirty_bytes(m: *mut PageMeta) -> core::ops::Range<usize> {
    // SAFETY: caller's contract; only the owner touches an in-use run's hull.
    unsafe {
        if (*m).dlo >= (*m).dhi {
            return 0..0;
        }
        let idx = page_index(m);
        let lo = ((*m).dlo as usize).saturating_sub(idx) << PAGE_SHIFT;
        let hi = ((*m).dhi as usize).saturating_sub(idx) << PAGE_SHIFT;
        lo..hi
    }
}

/// True when in-use run `m` was taken with none of its pages resident (and
/// has not grown since): its pages read as zero.
///
/// # Safety
/// `m` heads an in-use run the caller owns.
pub unsafe fn taken_clean(m: *mut PageMeta) -> bool {
    // SAFETY: caller's contract; only the owner touches an in-use run's hull.
    unsafe { (*m).dlo == (*m).dhi }
}

/// The smallest range holding both `a` and `b` (empty ranges are `lo == hi`).
fn hull_union(a: (u32, u32), b: (u32, u32)) -> (u32, u32) {
    if a.0 == a.1 {
        b
    } else if b.0 == b.1 {
        a
    } else {
        (a.0.min(b.0), a.1.max(b.1))
    }
}

/// The part of hull `h` inside pages `[idx, idx + n)` (empty: `(0, 0)`).
fn hull_clip(h: (u32, u32), idx: usize, n: usize) -> (u32, u32) {
    let lo = h.0.max(idx as u32);
    let hi = h.1.min((idx + n) as u32);
    if lo < hi {
        (lo, hi)
    } else {
        (0, 0)
    }
}

/// Removes free run `m` from the free and dirty lists; returns its dirty
/// hull and when it was freed.
unsafe fn free_unlink(st: &mut PageState, m: *mut PageMeta) -> ((u32, u32), u64) {
    // SAFETY: m is a free head in the lists (PAGES held).
    unsafe {
        free_remove(st, m);
        if (*m).dlo < (*m).dhi {
            dirty_remove(st, m);
        }
        (((*m).dlo, (*m).dhi), (*m).freed_at)
    }
}

/// Makes `[idx, idx + n)` of arena `a` one free run whose possibly
/// resident pages are the part of `hull` inside it, and lists it.
unsafe fn free_put(
    st: &mut PageState,
    a: usize,
    idx: usize,
    n: usize,
    hull: (u32, u32),
    freed_at: u64,
) -> *mut PageMeta {
    // SAFETY: the pages are free and not in any run (PAGES held).
    unsafe {
        let f = set_run(a, idx, n, STATE_FREE);
        let (lo, hi) = hull_clip(hull, idx, n);
        (*f).dlo = lo;
        (*f).dhi = hi;
        (*f).freed_at = freed_at;
        free_insert(st, f);
        if lo < hi {
            dirty_append(st, f);
        }
        f
    }
}

/// Which of the newest dirty runs [`alloc_run`] takes when several fit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fit {
    /// The shortest: spans, segments, blocks that keep their length.
    Tight,
    /// For a block that `realloc` is growing: the run holding address
    /// `near` (0: none) if the block fits there from `near` on (E153),
    /// else the longest (E152).
    Roomy { near: usize },
}

/// A run taken from the page allocator.
pub struct Run {
    pub meta: *mut PageMeta,
    pub addr: *mut u8,
}

/// Allocates `pages` contiguous pages of `zone` whose address is a
/// multiple of `align_pages` pages. In [`Zone::Huge`] the run is rounded up
/// to whole 2 MiB extents (its `pages` says how many it got). When the
/// zone has no room and no address space is left for it (e.g. under
/// `ulimit -v`), the run comes from the other zone (the huge zone only
/// where huge pages are on, and then unrounded: a page next to such a run
/// may become resident with it, unaccounted, until the run after it is
/// purged). `None` when both are full.
pub fn alloc_run(pages: usize, align_pages: usize, zone: Zone, fit: Fit) -> Option<Run> {
    if pages == 0 || pages > (1 << 31) || align_pages > (1 << 30) {
        return None;
    }
    let shape = |zone: Zone| match zone {
        Zone::Normal | Zone::Dense => (pages, align_pages.max(1)),
        Zone::Huge => (zone.round(pages), align_pages.max(HUGE_RUN_PAGES)),
    };
    let other = match zone {
        Zone::Normal if huge_zone_on() => Some(Zone::Huge),
        Zone::Normal => None,
        Zone::Huge | Zone::Dense => Some(Zone::Normal),
    };
    PAGES.lock.lock();
    // SAFETY: PAGES held.
    let st = unsafe { &mut *PAGES.st.get() };
    let (p, a) = shape(zone);
    // SAFETY: PAGES held.
    let mut r = unsafe { alloc_run_locked(st, p, a, zone, fit) };
    if let (None, Some(z)) = (&r, other) {
        // Into the huge zone as asked: rounding small runs up to 2 MiB
        // there would waste the last of the address space.
        let (p, a) = shape(Zone::Normal);
        // SAFETY: PAGES held.
        r = unsafe { alloc_run_locked(st, p, a, z, fit) };
    }
    if let Some(r) = &r {
        // SAFETY: r's meta heads the run just taken.
        let pages = unsafe { (*r.meta).pages } as usize;
        STATS.pages_in_use.fetch_add(pages as u64, Relaxed);
        if big(pages) != 0 {
            set_big_in_use(st, st.big_in_use + pages);
        }
    }
    PAGES.lock.unlock();
    r
}

/// `pages` when a run of that length counts in [`PageState::big_in_use`]
/// (2 MiB or more), else 0.
const fn big(pages: usize) -> usize {
    if pages >= HUGE_RUN_PAGES {
        pages
    } else {
        0
    }
}

/// Length of the windows of [`PageState::big_peak`].
const PEAK_WINDOW_MS: u64 = 1000;

/// Sets [`PageState::big_in_use`] and notes it in the peak.
fn set_big_in_use(st: &mut PageState, pages: usize) {
    st.big_in_use = pages;
    big_peak(st, os::now_ms());
}

/// The most pages of big runs in use in the current window and the last
/// (a window ends `PEAK_WINDOW_MS` after it began; the next begins at the
/// first call after that).
fn big_peak(st: &mut PageState, now: u64) -> usize {
    if now >= st.big_peak_at + PEAK_WINDOW_MS {
        let last = if now < st.big_peak_at + 2 * PEAK_WINDOW_MS {
            st.big_peak[1]
        } else {
            0
        };
        st.big_peak = [last, 0];
        st.big_peak_at = now;
    }
    st.big_peak[1] = st.big_peak[1].max(st.big_in_use);
    st.big_peak[0].max(st.big_peak[1])
}

/// Large runs of 2 MiB and more come from [`Zone::Huge`]: not in secure
/// builds (guard pages would split the huge pages), nor with `HZ_THP=0`.
pub fn huge_zone_on() -> bool {
    !cfg!(feature = "secure") && crate::config::CONFIG.thp.load(Relaxed) != 0
}

/// The zone of the arena holding run `m`.
///
/// # Safety
/// `m` is a meta of an arena.
pub unsafe fn zone_of(m: *mut PageMeta) -> Zone {
    // SAFETY: caller's contract.
    arena_zone(unsafe { (*m).arena } as usize)
}

/// The zone of arena `a` (set before the arena is published).
fn arena_zone(a: usize) -> Zone {
    match ARENAS[a].zone.load(Relaxed) {
        z if z == Zone::Huge as u32 => Zone::Huge,
        z if z == Zone::Dense as u32 => Zone::Dense,
        _ => Zone::Normal,
    }
}

/// Purge back-off (E81). Purged pages that a program soon takes again
/// cost a page fault and a zeroed page each, and the purge a TLB shootdown:
/// a program whose footprint swings (queues that back up and drain) paid
/// that on every swing. When at least [`CHURN_PAGES`] clean pages of free
/// runs (purged, or never used) are handed out within [`CHURN_WINDOW_MS`],
/// each within [`CHURN_WINDOW_MS`] of a purge, purging holds back for
/// [`BACKOFF_MS`]: free runs wait 100 times `HZ_PURGE_DELAY_MS` (at most
/// [`BACKOFF_DELAY_MS`]; a longer delay is kept) and the normal zone's
/// dirty cap is [`BACKOFF_DIRTY_MULT`] times `HZ_PURGE_MAX_DIRTY_MB`.
/// Renewed while the churn goes on; a program that stops churning is back
/// to the plain delay and cap [`BACKOFF_MS`] later. `collect()` and
/// `malloc_trim` purge everything whatever the back-off.
const CHURN_PAGES: usize = 64;
const CHURN_WINDOW_MS: u64 = 1000;
const BACKOFF_MS: u64 = 2000;
const BACKOFF_DELAY_MS: u64 = 1000;
const BACKOFF_DIRTY_MULT: usize = 8;

/// `clean` pages of a free run were just handed out: counts them toward
/// the purge back-off when a purge was recent.
fn note_refault(st: &mut PageState, clean: usize) {
    let now = os::now_ms();
    if now >= st.last_purge_at + CHURN_WINDOW_MS {
        return;
    }
    if now >= st.refault_since + CHURN_WINDOW_MS {
        st.refault_since = now;
        st.refault_pages = 0;
    }
    st.refault_pages += clean;
    if st.refault_pages >= CHURN_PAGES {
        st.churn_until = now + BACKOFF_MS;
        st.refault_pages = 0;
        st.refault_since = now;
    }
}

/// How many of the newest dirty runs [`alloc_run`] looks at first (for the
/// one that fits best, E71).
const DIRTY_SCAN: usize = 8;

unsafe fn alloc_run_locked(
    st: &mut PageState,
    pages: usize,
    align: usize,
    zone: Zone,
    fit: Fit,
) -> Option<Run> {
    let want = pages + align - 1;
    // 0. The newest dirty runs: their pages are resident, so reusing them
    //    costs no page faults and keeps the resident total (and purging)
    //    down (E21). For a block that stays as long as it is, the smallest
    //    that fits: a big dirty run split for a short block no longer holds
    //    the next long one (E71). For a block that `realloc` grows, the
    //    longest: it grows in place over the rest, which is resident
    //    (E152) — or the one holding `near`, from there, if the block fits
    //    (E153).
    let mut m = st.dirty_tail[zone as usize];
    let mut k = 0;
    let mut best: *mut PageMeta = null_mut();
    while !m.is_null() && k < DIRTY_SCAN {
        // SAFETY: m is a dirty free head (PAGES held).
        unsafe {
            if let Fit::Roomy { near } = fit {
                if let Some(at) = start_at(m, near, pages, align) {
                    return Some(take_from_free(st, m, pages, align, Some(at)));
                }
            }
            let p = (*m).pages as usize;
            let better = best.is_null()
                || match fit {
                    Fit::Tight => p < (*best).pages as usize,
                    Fit::Roomy { .. } => p > (*best).pages as usize,
                };
            if p >= want && better {
                best = m;
                if p == want && fit == Fit::Tight {
                    break;
                }
            }
            m = (*m).dprev;
        }
        k += 1;
    }
    if !best.is_null() {
        // SAFETY: best is a dirty free head that fits (PAGES held).
        return Some(unsafe { take_from_free(st, best, pages, align, None) });
    }
    // 1. Free runs: the exact list first, then larger ones. Every run of
    //    `want` pages holds an aligned start with `pages` after it; in the
    //    last list, which holds every length from its own up, `fits` checks
    //    each run exactly.
    // 1b. An aligned request, before it takes never-used pages or a new
    //    arena: the shorter runs that happen to hold an aligned start with
    //    `pages` after it. The run that a freed aligned block and the gap
    //    skipped to align it leave behind is one of those; without this a
    //    request aligned to about an arena's size found no room anywhere
    //    and reserved a new arena each time (64 arenas, then ENOMEM for
    //    every later reservation; test `oom::aligned_runs_reused`).
    let shorter = if align > 1 {
        list_of(pages)..list_of(want)
    } else {
        0..0
    };
    for lists in [list_of(want)..FREE_LISTS, shorter] {
        // SAFETY: PAGES held.
        if let Some(m) = unsafe { first_fit(st, zone, lists, pages, align) } {
            // SAFETY: m is a free head that fits (PAGES held).
            return Some(unsafe { take_from_free(st, m, pages, align, None) });
        }
    }
    // 2. Never-used pages at the top of an arena.
    let n = NARENAS.load(Relaxed);
    for a in 0..n {
        if arena_zone(a) != zone {
            continue;
        }
        // SAFETY: PAGES held; arena a exists.
        if let Some(r) = unsafe { bump(st, a, pages, align) } {
            return Some(r);
        }
    }
    // 3. A new arena.
    let a = new_arena(st, want, zone)?;
    // SAFETY: the new arena has room for `want` pages.
    unsafe { bump(st, a, pages, align) }
}

/// The first free run in free lists `lists` of `zone` that [`fits`]
/// `pages` pages aligned to `align`.
///
/// # Safety
/// PAGES held.
unsafe fn first_fit(
    st: &PageState,
    zone: Zone,
    lists: core::ops::Range<usize>,
    pages: usize,
    align: usize,
) -> Option<*mut PageMeta> {
    for l in lists {
        let mut m = st.free[zone as usize][l];
        while !m.is_null() {
            // SAFETY: m is a free head meta in a list (PAGES held).
            unsafe {
                if fits(m, pages, align) {
                    return Some(m);
                }
                m = (*m).fnext;
            }
        }
    }
    None
}

/// Whether free run `m` holds `pages` pages from its first page whose
/// absolute index is a multiple of `align`.
///
/// # Safety
/// `m` is a free head meta (PAGES held).
unsafe fn fits(m: *mut PageMeta, pages: usize, align: usize) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        let n = (*m).pages as usize;
        if align <= 1 {
            return n >= pages;
        }
        let base_idx = ARENAS[(*m).arena as usize].base.load(Relaxed) >> PAGE_SHIFT;
        let idx = page_index(m);
        let start = (base_idx + idx).next_multiple_of(align) - base_idx;
        start + pages <= idx + n
    }
}

/// Carves from the never-used top of arena `a`.
unsafe fn bump(st: &mut PageState, a: usize, pages: usize, align: usize) -> Option<Run> {
    let total = arena_pages(a);
    let base_idx = ARENAS[a].base.load(Relaxed) >> PAGE_SHIFT;
    let top = st.top[a];
    // Align the absolute page number.
    let start = (base_idx + top).next_multiple_of(align) - base_idx;
    if start + pages > total {
        return None;
    }
    // SAFETY: PAGES held; arena a exists.
    if !unsafe { commit_to(st, a, start + pages) } {
        return None;
    }
    if start > top {
        // The skipped pages become a clean free run.
        // SAFETY: [top, start) is unused; PAGES held.
        unsafe { free_put(st, a, top, start - top, (0, 0), 0) };
    }
    st.top[a] = start + pages;
    // SAFETY: [start, start+pages) is unused; PAGES held.
    let m = unsafe { set_run(a, start, pages, STATE_USED) };
    // SAFETY: as above. Never-used pages: none resident.
    unsafe {
        (*m).dlo = 0;
        (*m).dhi = 0;
    }
    // SAFETY: m valid.
    let addr = unsafe { (*m).addr } as *mut u8;
    Some(Run { meta: m, addr })
}

/// The page index, inside free run `m`, of the first `align`-aligned page
/// at or after address `near` from which `pages` pages fit in the run;
/// None when `near` is 0, outside the run, or too close to its end.
///
/// # Safety
/// `m` is a free head (PAGES held).
unsafe fn start_at(m: *mut PageMeta, near: usize, pages: usize, align: usize) -> Option<usize> {
    // SAFETY: caller's contract.
    let (addr, n, a) = unsafe { ((*m).addr, (*m).pages as usize, (*m).arena as usize) };
    if near < addr || near >= addr + (n << PAGE_SHIFT) {
        return None;
    }
    let idx = page_index(m);
    let base_idx = ARENAS[a].base.load(Relaxed) >> PAGE_SHIFT;
    let at = (base_idx + idx + ((near - addr) >> PAGE_SHIFT)).next_multiple_of(align) - base_idx;
    (at + pages <= idx + n).then_some(at)
}

/// Takes `pages` (aligned) out of the free run `m`, which [`fits`] them:
/// from page `at` when given (which [`start_at`] found), else from the
/// front of its resident part or of the run.
unsafe fn take_from_free(
    st: &mut PageState,
    m: *mut PageMeta,
    pages: usize,
    align: usize,
    at: Option<usize>,
) -> Run {
    // SAFETY: m is a free head; PAGES held. Every piece is re-marked.
    unsafe {
        let (hull, freed_at) = free_unlink(st, m);
        let a = (*m).arena as usize;
        let idx = page_index(m);
        let n = (*m).pages as usize;
        let base_idx = ARENAS[a].base.load(Relaxed) >> PAGE_SHIFT;
        // Take from the front of the run's resident part, else of the run
        // (aligned up): a large block that later grows by realloc extends
        // in place into the rest of the same run, whose pages are likely
        // still resident.
        let end = idx + n;
        let aligned = |i: usize| (base_idx + i).next_multiple_of(align) - base_idx;
        let at_hull = aligned((hull.0 as usize).max(idx));
        let start = if let Some(at) = at {
            at
        } else if hull.0 < hull.1 && at_hull + pages <= end {
            at_hull
        } else {
            aligned(idx)
        };
        if start > idx {
            free_put(st, a, idx, start - idx, hull, freed_at);
        }
        if start + pages < end {
            free_put(st, a, start + pages, end - start - pages, hull, freed_at);
        }
        let u = set_run(a, start, pages, STATE_USED);
        let taken = hull_clip(hull, start, pages);
        (*u).dlo = taken.0;
        (*u).dhi = taken.1;
        let clean = pages - (taken.1 - taken.0) as usize;
        if clean > 0 && st.last_purge_at != 0 {
            note_refault(st, clean);
        }
        Run {
            meta: u,
            addr: (*u).addr as *mut u8,
        }
    }
}

/// Returns a run to the page allocator. Its tags are cleared.
///
/// # Safety
/// `m` is the head meta of an in-use run nobody uses any more.
pub unsafe fn free_run(m: *mut PageMeta) {
    // SAFETY: forwarded contract.
    unsafe { free_run_as(m, u32::MAX as usize, false) };
}

/// [`free_run`] for a large block's run, of which the program was given
/// only the first `given` pages (the rest was room to grow, never handed
/// out). When `moved`, those pages were moved away by `mremap` and the
/// range is empty; of the rest, only pages the run was taken with resident
/// may be. Returns true when the block was looked at and read sparse
/// ([`purge_if_sparse`]).
///
/// # Safety
/// As [`free_run`]; no page past `given` was written since the run was
/// taken, and when `moved` the first `given` pages are empty.
pub unsafe fn free_large_run(m: *mut PageMeta, given: usize, moved: bool) -> bool {
    // SAFETY: forwarded contract: the run is the caller's until freed.
    let sparse = !moved && unsafe { purge_if_sparse(m, given) };
    // SAFETY: forwarded contract; a sparse block's pages past its first
    // (or its first 2 MiB extent) were purged.
    unsafe { free_run_as(m, if sparse { 1 } else { given }, moved) };
    sparse
}

/// Every [`SPARSE_EVERY`]th big block of the normal zone (2 MiB or more)
/// that a program frees, and every one of the huge zone, is looked at, and
/// purged now when it reads sparse ([`reads_sparse`]), all but its first
/// page or 2 MiB extent (where the next block carved in its run starts:
/// E133).
/// Such a block (a buffer written at its ends, a vector reserved far beyond
/// its length) leaves a few resident pages at offsets that the next block,
/// of another length, does not write again, and its hull is the whole
/// block: the dirty caps, stretched for programs that cycle big blocks
/// written whole (E71), kept them all resident, until the program's
/// footprint was the address range of its blocks (blocks of 8–32 MiB
/// written at both ends: 102 MiB resident, Debian mimalloc 30). Purging
/// one such block in 64 bounds that (12.7 MiB) for a quarter of the time
/// that purging each one costs (the `madvise`, and the faults of the next
/// blocks there: 64 → 80 ms, each 220). In the huge zone, where every
/// touched extent costs 2 MiB, every block is looked at (E134). One
/// `mincore` of [`SPARSE_WINDOW`] 4 KiB pages from 3/8 of the block
/// decides (E135): a block written whole, or over its first half (a
/// vector freed just after its capacity doubled), reads dense and is kept.
/// Returns true when it read sparse.
///
/// # Safety
/// `m` heads an in-use run the caller gives up; `given` is the length in
/// pages of the block the program had.
unsafe fn purge_if_sparse(m: *mut PageMeta, given: usize) -> bool {
    // SAFETY: m is a meta of an arena.
    let zone = unsafe { zone_of(m) };
    let every = match zone {
        Zone::Normal => SPARSE_EVERY,
        Zone::Huge => 1,
        Zone::Dense => return false,
    };
    if given < HUGE_RUN_PAGES || !SPARSE_TURN.fetch_add(1, Relaxed).is_multiple_of(every) {
        return false;
    }
    // SAFETY: caller's contract: the run and its hull are the caller's,
    // and nothing the program will read again is in it.
    unsafe {
        if !reads_sparse((*m).addr, given << PAGE_SHIFT) {
            return false;
        }
        let idx = page_index(m);
        let pages = (*m).pages as usize;
        let (lo, hi) = hull_union(
            hull_clip(((*m).dlo, (*m).dhi), idx, pages),
            (idx as u32, (idx + zone.round(given).min(pages)) as u32),
        );
        let keep = (idx + zone.round(1)) as u32;
        let lo = lo.max(keep);
        if lo < hi {
            let base = ARENAS[(*m).arena as usize].base.load(Relaxed);
            let len = ((hi - lo) as usize) << PAGE_SHIFT;
            if !purge_sparse(base + ((lo as usize) << PAGE_SHIFT), len) {
                return false;
            }
        }
        (*m).dlo = idx as u32;
        (*m).dhi = keep;
        true
    }
}

/// Whether the `len` bytes at `p` (aligned to the kernel page, at least 2 MiB, ours)
/// read sparse: fewer than a quarter of the [`SPARSE_WINDOW`] 4 KiB pages
/// from 3/8 of them resident (one `mincore`; the window ends by their half,
/// so a vector freed just after its capacity doubled reads dense: E135).
/// False when the kernel refuses.
///
/// # Safety
/// The range lies in an arena.
unsafe fn reads_sparse(p: usize, len: usize) -> bool {
    let at = p + ((len / 8 * 3) & !(os::page_size() - 1));
    let mut buf = [0u8; SPARSE_WINDOW];
    // SAFETY: caller's contract; the window lies inside the range.
    match unsafe { os::resident_small_pages(at as *mut u8, SPARSE_WINDOW * 4096, &mut buf) } {
        Some(n) => 4 * n < SPARSE_WINDOW,
        None => false,
    }
}

/// Purges the `len` bytes at `p` (aligned to the kernel page) that read sparse, and
/// counts it (`purges`, `sparse_purges`); false when the kernel refuses.
///
/// # Safety
/// The range lies in an arena and holds nothing the program will read.
unsafe fn purge_sparse(p: usize, len: usize) -> bool {
    // SAFETY: caller's contract.
    if !unsafe { os::purge(p as *mut u8, len) } {
        return false;
    }
    STATS.purges.fetch_add(1, Relaxed);
    STATS.purged_bytes.fetch_add(len as u64, Relaxed);
    STATS.sparse_purges.fetch_add(1, Relaxed);
    true
}

/// Makes `len` bytes at `p`, part of a block being handed to `calloc`
/// and possibly holding an earlier owner's data, read as zero (E137): 2
/// MiB or more that read sparse ([`reads_sparse`]) are purged rather than
/// written, so their untouched pages stay untouched (each would be faulted
/// in and zeroed twice, by the kernel and by the write); the rest are
/// written. A `calloc` of 8–16 MiB taking the run of a block written at
/// one byte wrote the whole block, as Debian mimalloc, tcmalloc and glibc
/// do (jemalloc purges such blocks when freed).
///
/// # Safety
/// The range lies in a block of an arena that the caller owns and that
/// holds nothing the program will read.
pub unsafe fn clear_for_calloc(p: usize, len: usize) {
    // SAFETY: caller's contract.
    unsafe {
        // Whole kernel pages only: `madvise` rounds a length up to one.
        let mask = os::page_size() - 1;
        let whole = len & !mask;
        if p & mask == 0 && whole >= HUGE_PAGE && reads_sparse(p, whole) && purge_sparse(p, whole) {
            core::ptr::write_bytes((p + whole) as *mut u8, 0, len - whole);
            return;
        }
        core::ptr::write_bytes(p as *mut u8, 0, len);
    }
}

/// One big free in this many is looked at by [`purge_if_sparse`].
const SPARSE_EVERY: u32 = 64;
/// Big frees so far (a relaxed count: an approximate turn is enough).
static SPARSE_TURN: AtomicU32 = AtomicU32::new(0);
/// 4 KiB pages [`purge_if_sparse`] looks at (256 KiB).
const SPARSE_WINDOW: usize = 64;

/// In-use run `m`, whose first `k` pages a program may have written,
/// changes hands without going back to the page allocator (a kept large
/// run, [`kept_put`]): its dirty hull takes those pages in, so that they
/// are counted and purged when the run is freed whatever its next owner
/// writes, and a later calloc of them is cleared.
///
/// # Safety
/// `m` heads an in-use run that the caller holds (no other thread reads
/// its hull until the caller frees it, under the page lock).
#[cfg(not(feature = "secure"))]
pub unsafe fn keep_written(m: *mut PageMeta, k: usize) {
    // SAFETY: m heads a run the caller holds.
    unsafe {
        let idx = page_index(m);
        let k = zone_of(m).round(k).min((*m).pages as usize);
        let (lo, hi) = hull_union(((*m).dlo, (*m).dhi), (idx as u32, (idx + k) as u32));
        (*m).dlo = lo;
        (*m).dhi = hi;
    }
}

// ---------------------------------------------------------------------------
// Kept large runs (default build)

/// One slot per run length below the huge zone's 2 MiB: a large run a
/// program freed, kept whole (in use, with its dirty hull) for the next
/// large block of about its length, taken and put back with one atomic
/// operation instead of the page lock. Shared by all threads (a run kept
/// per thread is of no use to the others, which then take fresh pages:
/// E61), at most [`KEPT_MAX_PAGES`] pages together. Each slot has its own
/// cache line: threads taking and putting runs of different lengths do not
/// contend (E62).
#[cfg(not(feature = "secure"))]
static KEPT: [KeptSlot; HUGE_RUN_PAGES] = [KeptSlot::EMPTY; HUGE_RUN_PAGES];

/// A slot for one kept run or block (its head meta), shared by all threads
/// and on a cache line of its own: [`KEPT`] here, the kept big blocks of
/// the segments (E104).
#[cfg(not(feature = "secure"))]
#[repr(align(64))]
pub struct KeptSlot(AtomicPtr<PageMeta>);

#[cfg(not(feature = "secure"))]
impl KeptSlot {
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: KeptSlot = KeptSlot(AtomicPtr::new(null_mut()));

    /// True when nothing is kept here (a relaxed load: a hint).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.load(Relaxed).is_null()
    }

    /// What is kept here, the caller's now; null when nothing is.
    #[inline]
    pub fn take(&self) -> *mut PageMeta {
        if self.is_empty() {
            return null_mut();
        }
        self.0.swap(null_mut(), Acquire)
    }

    /// Keeps `m` here; false when the slot holds something.
    #[inline]
    pub fn put(&self, m: *mut PageMeta) -> bool {
        self.0
            .compare_exchange(null_mut(), m, Release, Relaxed)
            .is_ok()
    }
}
/// Pages of the runs in [`KEPT`].
#[cfg(not(feature = "secure"))]
static KEPT_PAGES: AtomicUsize = AtomicUsize::new(0);
/// At most 4 MiB kept.
#[cfg(not(feature = "secure"))]
const KEPT_MAX_PAGES: usize = 64;
/// A run was taken from [`KEPT`] since the last [`kept_gc`].
#[cfg(not(feature = "secure"))]
static KEPT_USED: crate::sync::AtomicBool = crate::sync::AtomicBool::new(false);
/// When the next [`kept_gc`] is due (coarse ms).
#[cfg(not(feature = "secure"))]
static KEPT_GC_AT: AtomicU64 = AtomicU64::new(0);

/// A kept run of `pages` pages, or up to a quarter more; null when none
/// is kept. The caller owns it (in use, tags cleared) and writes its tags.
#[cfg(not(feature = "secure"))]
pub fn kept_take(pages: usize) -> *mut PageMeta {
    if pages >= HUGE_RUN_PAGES {
        return null_mut();
    }
    for q in pages..=(pages + pages / 4).min(HUGE_RUN_PAGES - 1) {
        let m = KEPT[q].take();
        if !m.is_null() {
            KEPT_PAGES.fetch_sub(q, Relaxed);
            if !KEPT_USED.load(Relaxed) {
                KEPT_USED.store(true, Relaxed);
            }
            return m;
        }
    }
    null_mut()
}

/// Keeps large run `m` (given up by the program, its tags cleared) for a
/// later large block; false when its slot is taken, the kept pages would
/// pass [`KEPT_MAX_PAGES`], or it is 2 MiB or more. The pages the program
/// may have written join the run's dirty hull ([`keep_written`]).
///
/// # Safety
/// `m` heads an in-use run that the caller gives up.
#[cfg(not(feature = "secure"))]
pub unsafe fn kept_put(m: *mut PageMeta) -> bool {
    // SAFETY: m heads an in-use run (caller's contract).
    let (p, given) = unsafe { ((*m).pages as usize, (*m).given as usize) };
    if p >= HUGE_RUN_PAGES || !KEPT[p].is_empty() {
        return false;
    }
    if KEPT_PAGES.fetch_add(p, Relaxed) + p > KEPT_MAX_PAGES {
        KEPT_PAGES.fetch_sub(p, Relaxed);
        return false;
    }
    // SAFETY: the run is still the caller's.
    unsafe { keep_written(m, given) };
    if KEPT[p].put(m) {
        return true;
    }
    KEPT_PAGES.fetch_sub(p, Relaxed);
    false
}

/// Returns every kept run to the page allocator.
#[cfg(not(feature = "secure"))]
pub fn kept_flush() {
    for k in KEPT.iter() {
        let m = k.take();
        if !m.is_null() {
            // SAFETY: a kept run, ours now: in use, tags cleared.
            unsafe {
                KEPT_PAGES.fetch_sub((*m).pages as usize, Relaxed);
                free_large_run(m, (*m).given as usize, false);
            }
        }
    }
}

/// Every `period` ms (from any thread's tick): the kept runs go back when
/// none was taken during the last period.
#[cfg(not(feature = "secure"))]
pub fn kept_gc(now: u64, period: u64) {
    if os::due(&KEPT_GC_AT, now, period)
        && !KEPT_USED.swap(false, Relaxed)
        && KEPT_PAGES.load(Relaxed) != 0
    {
        kept_flush();
    }
}

/// See [`free_run_locked`].
unsafe fn free_run_as(m: *mut PageMeta, k: usize, moved: bool) {
    // SAFETY: caller's contract; the run's tags are ours to clear.
    unsafe { set_tags(m, 0, KIND_FREE, 0) };
    // In the huge zone a touched page makes its whole 2 MiB extent
    // resident (and moved pages move whole extents).
    // SAFETY: m is a meta of an arena.
    let k = unsafe { zone_of(m) }.round(k);
    // SAFETY: m valid.
    let pages = unsafe { (*m).pages } as u64;
    PAGES.lock.lock();
    // SAFETY: PAGES held; m is an in-use head.
    unsafe {
        let st = &mut *PAGES.st.get();
        st.big_in_use -= big(pages as usize);
        free_run_locked(st, m, k, moved);
        maybe_purge(st, false);
    }
    PAGES.lock.unlock();
    STATS.pages_in_use.fetch_sub(pages, Relaxed);
}

/// Frees in-use run `m`, coalesced with free neighbours. Its dirty hull is
/// the hull it was taken with and its first `k` pages, or when `moved`,
/// the part of the taken hull past its first `k` pages (which are fresh).
unsafe fn free_run_locked(st: &mut PageState, m: *mut PageMeta, k: usize, moved: bool) {
    // SAFETY: PAGES held; neighbours are examined through their metas,
    // whose `state` is only written with PAGES held.
    unsafe {
        let a = (*m).arena as usize;
        let mut idx = page_index(m);
        let mut n = (*m).pages as usize;
        let k = k.min(n);
        let taken = ((*m).dlo, (*m).dhi);
        let mut hull = if moved {
            hull_clip(taken, idx + k, n - k)
        } else {
            hull_union(hull_clip(taken, idx, n), (idx as u32, (idx + k) as u32))
        };
        // Next run.
        if idx + n < st.top[a] {
            let nx = meta_at(a, idx + n);
            if (*nx).state == STATE_FREE {
                let (h, _) = free_unlink(st, nx);
                hull = hull_union(hull, h);
                n += (*nx).pages as usize;
            }
        }
        // Previous run.
        if idx > 0 {
            let pt = meta_at(a, idx - 1);
            if (*pt).state == STATE_FREE {
                let ph = meta_at(a, (*pt).head as usize);
                let (h, _) = free_unlink(st, ph);
                hull = hull_union(hull, h);
                idx = (*pt).head as usize;
                n += (*ph).pages as usize;
            }
        }
        free_put(st, a, idx, n, hull, os::now_ms());
    }
}

/// Purges dirty runs older than the delay, or all of them (`force`), or the
/// oldest while a zone's dirty total is over its cap: the normal and dense
/// zones' `HZ_PURGE_MAX_DIRTY_MB` (each), the huge zone's `HZ_PURGE_MAX_DIRTY_LARGE_MB`
/// (E55: a program that cycles big buffers reuses them resident). Both
/// stretch by how far the pages of big runs (2 MiB or more) in use are
/// below their peak of the last one to two seconds, and by a quarter of
/// those in use (E71): a program that frees big blocks and takes others
/// of other lengths, which its free runs fit only now and then, keeps them
/// resident (as every rival does) instead of purging them and faulting
/// pages in again, while a program that frees small blocks only, or big
/// ones past their recent peak, is held to the caps as before.
unsafe fn maybe_purge(st: &mut PageState, force: bool) {
    let cfg = &crate::config::CONFIG;
    let mut delay = cfg.purge_delay_ms.load(Relaxed);
    let now = os::now_ms();
    let slack = big_peak(st, now) - st.big_in_use + st.big_in_use / 4;
    // Pages purged lately came back: keep more, longer (E81).
    let backoff = now < st.churn_until;
    if backoff && delay < BACKOFF_DELAY_MS {
        delay = (delay * 100).min(BACKOFF_DELAY_MS);
    }
    let mult = if backoff { BACKOFF_DIRTY_MULT } else { 1 };
    let normal = ((cfg.max_dirty_bytes.load(Relaxed) as usize) >> PAGE_SHIFT) * mult + slack;
    let max_dirty = [
        normal,
        ((cfg.max_dirty_large_bytes.load(Relaxed) as usize) >> PAGE_SHIFT) + slack,
        normal,
    ];
    if !force
        && delay > 0
        && (0..ZONES).all(|z| st.dirty_pages[z] <= max_dirty[z])
        && now < st.last_purge_check + delay / 2 + 1
    {
        PURGE_DUE_AT.store(st.last_purge_check + delay / 2 + 1, Relaxed);
        return;
    }
    st.last_purge_check = now;
    for z in 0..ZONES {
        let delay = zone_delay(z, delay);
        // The first run the kernel would not purge in this pass, put back
        // behind the others: meeting it again ends the pass.
        let mut refused: *mut PageMeta = null_mut();
        loop {
            let m = st.dirty_head[z];
            if m.is_null() || m == refused {
                break;
            }
            // SAFETY: m is a dirty free head; PAGES held.
            unsafe {
                let old = now >= (*m).freed_at + delay;
                if !(force || old || st.dirty_pages[z] > max_dirty[z]) {
                    break;
                }
                dirty_remove(st, m);
                // Only the hull: the rest of the run holds no resident page.
                let a = (*m).arena as usize;
                let addr = ARENAS[a].base.load(Relaxed) + (((*m).dlo as usize) << PAGE_SHIFT);
                let len = (((*m).dhi - (*m).dlo) as usize) << PAGE_SHIFT;
                if !os::purge(addr as *mut u8, len) {
                    // Refused (pages locked by `mlock`/`mlockall`: EINVAL; a
                    // seccomp filter: EPERM), or purged in part: the hull may
                    // still hold what was written, so it stays, and the run
                    // is tried again a delay from now. Clearing it made a
                    // `calloc` of the run skip the zeroing and hand out the
                    // old bytes.
                    (*m).freed_at = now;
                    dirty_append(st, m);
                    if refused.is_null() {
                        refused = m;
                    }
                    continue;
                }
                st.last_purge_at = now;
                (*m).dlo = 0;
                (*m).dhi = 0;
                STATS.purges.fetch_add(1, Relaxed);
                STATS.purged_bytes.fetch_add(len as u64, Relaxed);
            }
        }
    }
    let due = (0..ZONES)
        .filter(|&z| !st.dirty_head[z].is_null())
        // SAFETY: dirty heads are free heads; PAGES held.
        .map(|z| unsafe { (*st.dirty_head[z]).freed_at } + zone_delay(z, delay))
        .min()
        .map_or(u64::MAX, |d| d.max(now + delay / 2 + 1));
    PURGE_DUE_AT.store(due, Relaxed);
}

/// The purge delay of zone `z` given the normal one: the dense zone's free
/// runs wait at least [`DENSE_PURGE_DELAY_MS`] (E129), unless purging is
/// immediate (`HZ_PURGE_DELAY_MS=0`). Its spans belong to
/// heaps that build and drop collections, which take the runs again at
/// their next build; a purge of part of a huge page splits it, and its
/// pages then fault back 4 KiB at a time.
pub(crate) fn zone_delay(z: usize, delay: u64) -> u64 {
    if z == Zone::Dense as usize && delay > 0 {
        delay.max(DENSE_PURGE_DELAY_MS)
    } else {
        delay
    }
}
const DENSE_PURGE_DELAY_MS: u64 = 100;

/// [`purge_tick`] when something may be due (one relaxed load otherwise):
/// for ticks on paths that do not take the page lock, such as large blocks
/// served from the kept runs.
pub fn purge_if_due(now: u64) {
    if now >= PURGE_DUE_AT.load(Relaxed) {
        purge_tick();
    }
}

/// Purges every dirty free run now.
pub fn purge_all() {
    PAGES.lock.lock();
    // SAFETY: PAGES held.
    unsafe { maybe_purge(&mut *PAGES.st.get(), true) };
    PAGES.lock.unlock();
}

/// Purges what is due (called from slow paths so that memory comes back
/// without any call from the program).
pub fn purge_tick() {
    if PAGES.lock.try_lock() {
        // SAFETY: PAGES held.
        unsafe { maybe_purge(&mut *PAGES.st.get(), false) };
        PAGES.lock.unlock();
    }
}

/// Acquisitions of the page lock that found it taken (statistics).
pub fn page_lock_waits() -> u64 {
    PAGES.lock.waits()
}

/// Free but resident pages (for statistics).
pub fn dirty_pages() -> usize {
    PAGES.lock.lock();
    // SAFETY: PAGES held.
    let n = unsafe { (*PAGES.st.get()).dirty_pages.iter().sum() };
    PAGES.lock.unlock();
    n
}

/// Grows (or shrinks) an in-use run in place to `new_pages`. On growth the
/// following free run must be large enough. Returns false if it cannot.
///
/// # Safety
/// `m` is the head of an in-use run owned by the caller.
pub unsafe fn resize_run(m: *mut PageMeta, new_pages: usize) -> bool {
    // SAFETY: m is a meta of an arena.
    let new_pages = unsafe { zone_of(m) }.round(new_pages);
    PAGES.lock.lock();
    // SAFETY: PAGES held; m is an in-use head.
    let ok = unsafe { resize_locked(&mut *PAGES.st.get(), m, new_pages) };
    PAGES.lock.unlock();
    ok
}

unsafe fn resize_locked(st: &mut PageState, m: *mut PageMeta, new_pages: usize) -> bool {
    // SAFETY: PAGES held; metas of this arena.
    unsafe {
        let a = (*m).arena as usize;
        let idx = page_index(m);
        let n = (*m).pages as usize;
        if new_pages == n {
            return true;
        }
        let big_in_use = st.big_in_use - big(n) + big(new_pages);
        if new_pages < n {
            let hull = ((*m).dlo, (*m).dhi);
            set_run(a, idx, new_pages, STATE_USED);
            let f = set_run(a, idx + new_pages, n - new_pages, STATE_USED);
            (*f).dlo = 0;
            (*f).dhi = 0;
            (*m).dlo = hull.0;
            (*m).dhi = hull.1;
            // Clear the tail's tags, then free it as a run (all of it may
            // be resident).
            set_tags(f, 0, KIND_FREE, 0);
            free_run_locked(st, f, n - new_pages, false);
            STATS
                .pages_in_use
                .fetch_sub((n - new_pages) as u64, Relaxed);
            set_big_in_use(st, big_in_use);
            return true;
        }
        let extra = new_pages - n;
        let next = idx + n;
        if next == st.top[a] {
            if next + extra > arena_pages(a) || !commit_to(st, a, next + extra) {
                return false;
            }
            st.top[a] = next + extra;
        } else {
            let nx = meta_at(a, next);
            if (*nx).state != STATE_FREE || ((*nx).pages as usize) < extra {
                return false;
            }
            let rest = (*nx).pages as usize - extra;
            let (hull, freed_at) = free_unlink(st, nx);
            if rest > 0 {
                free_put(st, a, next + extra, rest, hull, freed_at);
            }
            // The run keeps the resident part of what it grew into.
            let grown = hull_union(((*m).dlo, (*m).dhi), hull_clip(hull, next, extra));
            (*m).dlo = grown.0;
            (*m).dhi = grown.1;
        }
        set_run(a, idx, new_pages, STATE_USED);
        STATS.pages_in_use.fetch_add(extra as u64, Relaxed);
        set_big_in_use(st, big_in_use);
        true
    }
}

/// Bytes of an arena's tables (tags, metas, bitmaps) for `pages` data
/// pages, at the start of its mapping.
const fn table_bytes(pages: usize) -> usize {
    (pages * META_BYTES + 128).next_multiple_of(PAGE_SIZE)
}

/// Pages an arena commits past what is asked at a time: an eighth of what
/// it has, at least 16 MiB and at most 64 MiB. So the commit charge and
/// what `mlockall` makes resident stay within 64 MiB of what hz handed
/// out, and a program that grows to 4 GiB in small steps makes about 80
/// commits. Few matter more than small: an `mprotect` write-locks the
/// mapping it changes, stalling every thread's page faults in it (4 MiB
/// steps: the large workload's threads blocked 4× as often, 12 → 65
/// context switches a run, and took 1.09× the time).
const COMMIT_MIN_PAGES: usize = 256;
const COMMIT_MAX_PAGES: usize = 1024;

/// Makes pages `[0, end)` of arena slot `a` usable: its data pages and
/// their entries in the tables become readable and writable (`os::commit`),
/// a step of [`COMMIT_MIN_PAGES`] to [`COMMIT_MAX_PAGES`] at a time (or
/// as far as `end` when that is further), in whole 2 MiB extents. False
/// when the kernel refuses (the commit limit under strict overcommit): the
/// data watermark stays where it was (tables committed ahead stay usable,
/// which is harmless), and the caller looks elsewhere or reports out of
/// memory.
///
/// An arena is reserved inaccessible (`os::reserve`), its tag table
/// readable, so a lookup of any pointer inside it reads a tag (zero past
/// what is committed); the rest is committed here as the bump pointer
/// passes. So the kernel charges hz for what it has handed out plus one
/// step, not the reservation, and `mlockall(MCL_CURRENT)` leaves the rest
/// of the reservation alone.
///
/// # Safety
/// PAGES held; arena slot `a` is set up (its tables point into its
/// mapping); `end <= arena_pages(a)`.
unsafe fn commit_to(st: &mut PageState, a: usize, end: usize) -> bool {
    let have = st.committed[a];
    if end <= have {
        return true;
    }
    let pages = arena_pages(a);
    let want = end
        .max(have + (have / 8).clamp(COMMIT_MIN_PAGES, COMMIT_MAX_PAGES))
        .next_multiple_of(HUGE_RUN_PAGES)
        .min(pages);
    let slot = &ARENAS[a];
    let had = st.tables[a];
    if want > had {
        // The tables' entries, further ahead: one commit of them for many
        // of the data (they are about 1% of its size).
        let upto = (want + TABLE_AHEAD_PAGES).min(pages);
        #[cfg(not(feature = "secure"))]
        let bits = {
            let bits = slot.bits.load(Relaxed);
            (
                bits.wrapping_add(had * SPAN_BITMAP_WORDS) as usize,
                bits.wrapping_add(upto * SPAN_BITMAP_WORDS) as usize,
            )
        };
        #[cfg(feature = "secure")]
        let bits = (0, 0);
        for (lo, hi) in [
            (tag_ptr(slot, had) as usize, tag_ptr(slot, upto) as usize),
            (meta_at(a, had) as usize, meta_at(a, upto) as usize),
            bits,
        ] {
            // Whole system pages: the last one of the previous commit is
            // usable already; the first one of a table (or of the dense
            // zone's part of arena 0's) may hold the end of what comes
            // before it in the table area, which this makes usable too.
            let os_page = os::page_size();
            let lo = if had == 0 {
                lo & !(os_page - 1)
            } else {
                lo.next_multiple_of(os_page)
            };
            let hi = hi.next_multiple_of(os_page);
            // SAFETY: inside arena a's table area (`table_bytes` is whole
            // system pages), holding no live entries past `had`'s.
            if lo < hi && !unsafe { os::commit(lo as *mut u8, hi - lo) } {
                return false;
            }
        }
        st.tables[a] = upto;
    }
    let base = slot.base.load(Relaxed);
    // SAFETY: arena a's data pages past `have`: never handed out.
    if !unsafe {
        os::commit(
            (base + (have << PAGE_SHIFT)) as *mut u8,
            (want - have) << PAGE_SHIFT,
        )
    } {
        return false;
    }
    st.committed[a] = want;
    STATS
        .committed
        .fetch_add(((want - have) << PAGE_SHIFT) as u64, Relaxed);
    true
}

/// Data pages whose table entries are committed past the data's (128 MiB
/// of data: about 1.3 MiB of tables).
const TABLE_AHEAD_PAGES: usize = 2048;

/// Whether `[lo, hi)` overlaps one of hz's reservations (an arena's whole
/// mapping: its tables, its data pages and the alignment slack after
/// them). Lock-free; sees the arenas published so far. libhz.so's
/// `mlockall` leaves these to lock as they fault in (docs/RELIABILITY.md).
pub fn overlaps_reservation(lo: usize, hi: usize) -> bool {
    (0..NARENAS.load(Acquire)).any(|i| {
        let a = &ARENAS[i];
        let len = a.len.load(Relaxed);
        // The dense zone's view (len 0) lies inside arena 0's mapping.
        if len == 0 {
            return false;
        }
        let start = a.tags.load(Relaxed) as usize;
        let end = start + table_bytes(len >> PAGE_SHIFT) + len + HUGE_PAGE;
        lo < end && start < hi
    })
}

/// Reserves a new arena able to hold `min_pages` pages. Tries the
/// configured size, halving on refusal (e.g. under `ulimit -v`).
fn new_arena(st: &mut PageState, min_pages: usize, zone: Zone) -> Option<usize> {
    let n = NARENAS.load(Relaxed);
    if n >= MAX_ARENAS {
        return None;
    }
    if st.next_reserve == 0 {
        st.next_reserve = crate::config::CONFIG.arena_bytes.load(Relaxed) as usize;
    }
    let need = min_pages.checked_mul(PAGE_SIZE)?;
    // The huge zone holds only large runs: a quarter of the reservation.
    let want = match zone {
        Zone::Normal => st.next_reserve,
        Zone::Huge => st.next_reserve / 4,
        // Only arena 0's view (below): when it is full, dense spans come
        // from the normal zone.
        Zone::Dense => return None,
    };
    let mut size = want.max(need.next_multiple_of(MIN_ARENA));
    loop {
        let pages = size >> PAGE_SHIFT;
        let meta = table_bytes(pages);
        let total = meta + size + HUGE_PAGE;
        if let Some(map) = os::reserve(total) {
            let tags = map as *mut u64;
            // Lookups read the tag of any page of the arena: the whole tag
            // table is readable (zeros: no page of hz) from the start.
            let tag_bytes = (pages * 8 * TAG_WORDS).next_multiple_of(os::page_size());
            // SAFETY: the tag table is the start of our new mapping.
            if !unsafe { os::protect_read(map, tag_bytes) } {
                // SAFETY: our mapping, unused.
                unsafe { os::release(map, total) };
                return None;
            }
            let metas =
                (map as usize + pages * 8 * TAG_WORDS).next_multiple_of(64) as *mut PageMeta;
            // Data starts on a 2 MiB boundary so transparent huge pages can
            // back it: the huge zone's arenas, and with `HZ_THP=2` all.
            let base = (map as usize + meta).next_multiple_of(HUGE_PAGE);
            if zone == Zone::Huge || crate::config::CONFIG.thp.load(Relaxed) >= 2 {
                // SAFETY: the data range lies inside our new mapping.
                unsafe { os::advise_huge(base as *mut u8, size) };
            }
            let a = &ARENAS[n];
            a.zone.store(zone as u32, Relaxed);
            a.pages.store(size >> PAGE_SHIFT, Relaxed);
            a.tags.store(tags, Relaxed);
            a.metas.store(metas, Relaxed);
            #[cfg(not(feature = "secure"))]
            {
                // SAFETY: the tables fit in `meta` bytes (META_BYTES per
                // page, plus alignment slack).
                let bits = unsafe { metas.add(pages) } as usize;
                a.bits.store(bits.next_multiple_of(64) as *mut u64, Relaxed);
            }
            a.base.store(base, Relaxed);
            a.len.store(size, Relaxed);
            st.top[n] = 0;
            st.committed[n] = 0;
            st.tables[n] = 0;
            // What the request needs is committed now: when the kernel
            // refuses, the arena is given back (an arena that cannot be
            // used would only be followed by more).
            // SAFETY: PAGES held; slot n is set up; need <= size.
            if !unsafe { commit_to(st, n, min_pages) } {
                // SAFETY: our mapping, not published, unused.
                unsafe { os::release(map, total) };
                return None;
            }
            #[cfg(feature = "secure")]
            {
                // Page 0 is never handed out: a guard between the metadata
                // and the first run.
                st.top[n] = 1;
                // SAFETY: page 0 of the new arena is ours and unused.
                unsafe { os::protect_none(base as *mut u8, PAGE_SIZE) };
            }
            NARENAS.store(n + 1, Release);
            if n == 0 {
                dense_view(st, size);
            }
            if n > 0 && crate::config::verbose() {
                os::write_fd(2, b"hz: reserved an additional arena\n");
            }
            STATS.mapped.fetch_add(total as u64, Relaxed);
            if zone == Zone::Normal && size < st.next_reserve {
                st.next_reserve = size;
            }
            return Some(n);
        }
        if size / 2 < need.max(MIN_ARENA) {
            return None;
        }
        size /= 2;
        if crate::config::verbose() {
            os::write_fd(
                2,
                b"hz: address-space reservation refused; trying a smaller arena\n",
            );
        }
    }
}

/// The dense zone (E125): the upper quarter of arena 0, advised for huge
/// pages, published as arena 1, a view sharing arena 0's tables (its
/// pages' tags, metas and bitmaps are arena 0's), so that `lookup` finds
/// its blocks through arena 0 in the fast path while the page allocator
/// treats it as an arena of its own, with its own bump pointer, free
/// lists and coalescing bounds. Arena 0 hands out only the pages below it.
fn dense_view(st: &mut PageState, size: usize) {
    if !huge_zone_on() || size < DENSE_MIN_ARENA {
        return;
    }
    let a0 = &ARENAS[0];
    let pages = size >> PAGE_SHIFT;
    let split = (pages - pages / 4).next_multiple_of(HUGE_RUN_PAGES);
    let base = a0.base.load(Relaxed) + (split << PAGE_SHIFT);
    let v = &ARENAS[1];
    v.zone.store(Zone::Dense as u32, Relaxed);
    v.pages.store(pages - split, Relaxed);
    v.tags.store(tag_ptr(a0, split), Relaxed);
    // SAFETY: split < pages: inside arena 0's meta table.
    v.metas
        .store(unsafe { a0.metas.load(Relaxed).add(split) }, Relaxed);
    #[cfg(not(feature = "secure"))]
    // SAFETY: inside arena 0's bitmap table.
    v.bits.store(
        unsafe { a0.bits.load(Relaxed).add(split * SPAN_BITMAP_WORDS) },
        Relaxed,
    );
    v.base.store(base, Relaxed);
    // Not `len`: lookups of its pointers end in arena 0; `lookup_slow`
    // never matches a view.
    v.len.store(0, Relaxed);
    if crate::config::CONFIG.thp.load(Relaxed) < 2 {
        // SAFETY: the range lies inside arena 0's data.
        unsafe { os::advise_huge(base as *mut u8, (pages - split) << PAGE_SHIFT) };
    }
    a0.pages.store(split, Relaxed);
    st.top[1] = 0;
    NARENAS.store(2, Release);
}

/// Arena 0 gets a dense zone when it is at least this big.
const DENSE_MIN_ARENA: usize = 1 << 30;

/// fork(): hold the page lock across the fork.
pub fn fork_prepare() {
    PAGES.lock.lock();
}
pub fn fork_parent() {
    PAGES.lock.unlock();
}
pub fn fork_child() {
    PAGES.lock.reset_after_fork();
}
