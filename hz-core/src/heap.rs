//! Thread heaps: bins, spill arrays, spans of small blocks, the registry of
//! heaps, and every small-block slow path.
//!
//! Owns: [`Heap`] and [`Bins`]; the heap registry ([`HEAPS`]), claiming a
//! heap for a thread, its release at thread exit and adoption by a later
//! thread; refilling an empty bin; handling a full bin; the remote pool
//! ([`POOL`]: other heaps' blocks, in bulk, for any heap).
//! May touch: `arena` (runs, tags), `inbox` (publish to other heaps, drain
//! its own), `tls`, `stats`.
//!
//! Invariants:
//! * A heap is used by one thread at a time (the one whose TLS points at it,
//!   or the holder of [`SHARED_LOCK`] for the shared heap). Only its `inbox`
//!   is touched by other threads.
//! * A bin holds free blocks of its class owned by any heap. Blocks of this
//!   heap return to their span when a bin overflows; blocks of other heaps
//!   go to the class's spill array and from there, grouped by owner, to the
//!   pool (owner active, pool not full) or to the owners' inboxes, one CAS
//!   per owner.
//! * A span's `used` counts its blocks not on its own free list or bump
//!   area: live blocks and blocks cached in any bin, spill array, chain,
//!   inbox or the pool. A span is returned to the page allocator when `used` drops to
//!   0 (one empty span per class is kept to avoid thrashing).

use crate::arena::{self, PageMeta, KIND_META, KIND_SMALL};
use crate::class::{BIN_CAP, BIN_SLOTS, CLASS_SIZE, NUM_CLASSES, SPAN_PAGES};
use crate::inbox::{self, Inbox};
use crate::os;
use crate::stats::STATS;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering::*};
use crate::{tls, PAGE_SHIFT, PAGE_SIZE};
use core::mem::MaybeUninit;
use core::ptr::null_mut;

/// One class's thread cache: a stack of block pointers in `[base, end)`,
/// filled up to `top`. Empty when `top == base`, full when `top == end`.
#[repr(C)]
pub struct Bin {
    pub top: *mut *mut u8,
    pub base: *mut *mut u8,
    pub end: *mut *mut u8,
}

/// Bins per heap: a power of two above the class count, so that a class
/// read from a page tag (masked to 6 bits) indexes without a bounds check.
/// Entries past the last class stay empty and full: only a corrupted tag
/// could reach one, and the slow path aborts on it.
pub const BIN_ENTRIES: usize = 64;
const _: () = assert!(NUM_CLASSES <= BIN_ENTRIES);

/// The hot part of a heap, and what the TLS slot points at.
#[repr(C)]
pub struct Bins {
    pub b: [Bin; BIN_ENTRIES],
    /// Default build: the block the last `free` (C's, or `hz_core::free`)
    /// was given, not yet in its bin, and its class; class 0 when there is
    /// none (bin 0 is always full, so the next `free` takes the slow path).
    /// Each `free` pushes the block before it and keeps its own here, so
    /// the addresses `free` stores to do not depend on the tag it reads
    /// for its own block (E108). [`flush_all`] pushes it.
    pub pending: *mut u8,
    pub pending_c: usize,
}

// SAFETY: the static EMPTY/DEAD bins are never written (all their bins are
// both empty and full and their pending class is 0, so every fast path
// leaves for the slow path).
unsafe impl Sync for Bins {}

impl Bins {
    pub const EMPTY: Bins = {
        const B: Bin = Bin {
            top: null_mut(),
            base: null_mut(),
            end: null_mut(),
        };
        Bins {
            b: [B; BIN_ENTRIES],
            pending: null_mut(),
            pending_c: 0,
        }
    };
}

/// Empty spans a heap keeps per class before returning them: one. The
/// secure build keeps up to 128 KiB of them per class (at least one): each
/// carve and release costs it two `mprotect` calls (the span's guard page).
#[cfg(not(feature = "secure"))]
const fn keep_empty_spans(_c: usize) -> u32 {
    1
}
#[cfg(feature = "secure")]
const fn keep_empty_spans(c: usize) -> u32 {
    let n = (128 << 10) / (SPAN_PAGES[c] as usize * PAGE_SIZE);
    if n == 0 {
        1
    } else {
        n as u32
    }
}

const fn spill_cap(c: usize) -> usize {
    (BIN_CAP[c] / 2) as usize
}
const fn gen_spill_slots() -> usize {
    let mut t = 0;
    let mut c = 1;
    while c < NUM_CLASSES {
        t += spill_cap(c);
        c += 1;
    }
    t
}
const SPILL_SLOTS: usize = gen_spill_slots();
/// The most blocks a spill array holds: `flush_spill`'s scratch arrays.
const SPILL_MAX: usize = 128;
const _: () = {
    let mut c = 1;
    while c < NUM_CLASSES {
        assert!(spill_cap(c) <= SPILL_MAX);
        c += 1;
    }
};

pub const HEAP_FREE: u32 = 0;
pub const HEAP_ACTIVE: u32 = 1;
pub const HEAP_ABANDONED: u32 = 2;
pub const HEAP_ORPHANED: u32 = 3;

#[repr(C)]
pub struct Heap {
    /// Must stay first: the TLS slot points here (at `decoy`
    /// instead in a `secure` build with `HZ_SECURE_FILL=1`).
    pub bins: Bins,
    pub id: u32,
    pub generation: u32,
    /// Set while [`pool_gc`] sends pooled blocks home through this heap.
    pool_off: bool,
    pub state: AtomicU32,
    next_abandoned: *mut Heap,
    /// Drained remote chains of this heap's own blocks, per class (linked
    /// through each chain's head's second word).
    chains: [*mut u8; NUM_CLASSES],
    /// Spans with free blocks, per class.
    partial: [*mut PageMeta; NUM_CLASSES],
    spill_len: [u32; NUM_CLASSES],
    /// Spans in `partial[c]` with no block out (`used == 0`).
    empty_kept: [u32; NUM_CLASSES],
    spill_base: [*mut *mut u8; NUM_CLASSES],
    /// Blocks out of this heap's spans, per class (statistics).
    pub blocks_out: [AtomicU64; NUM_CLASSES],
    pub spans: [AtomicU64; NUM_CLASSES],
    pub remote_sent: AtomicU64,
    pub remote_received: AtomicU64,
    /// Blocks of the spans this heap has carved, ever ([`span_zone`]).
    carved_blocks: u64,
    /// Blocks this heap took from the pool (other heaps' blocks that other
    /// threads freed), ever ([`span_zone`]).
    pool_taken: u64,
    /// Bin GC (see [`gc`]): when this heap's next GC is due (coarse ms).
    gc_at: u64,
    /// Bin GC: classes refilled since the last GC (bit c), i.e. whose bin
    /// ran empty.
    gc_refilled: u64,
    /// Bin GC: each bin's fill right after the last GC.
    gc_mark: [u16; NUM_CLASSES],
    /// Blocks of other heaps freed into each closed bin and sent home
    /// instead ([`free_to_closed_bin`]).
    diverted: [u16; NUM_CLASSES],
    /// `secure` builds: state of the carving shuffle's RNG.
    rng: u64,
    /// Large blocks this heap's thread allocated minus those it freed, and
    /// their bytes, wrapping (a thread may free blocks another allocated:
    /// only the sum over heaps, `stats::LARGE` and `STATS` is meaningful).
    /// Written by the heap's thread alone, so no locked instruction and no
    /// line shared between threads on the large paths; read by `stats()`.
    large_blocks: AtomicU64,
    large_bytes: AtomicU64,
    /// Default build: bytes of free resident pages that this heap's
    /// segments kept when its thread exited, counted in [`KEPT_AT_EXIT`]
    /// until a thread adopts the heap or a reclaim purges them (E101).
    #[cfg(not(feature = "secure"))]
    kept_at_exit: u64,
    /// Default build: how densely this heap's thread writes its large
    /// blocks, from the fresh ones it frees (`segment::sample`, E128): at
    /// [`segment::DENSE_AT`] or more, its new segments come from the dense
    /// zone.
    #[cfg(not(feature = "secure"))]
    pub large_dense: i32,
    /// Where the last block of 2 MiB or more that this heap's thread gave
    /// back to the page allocator began: its next block that `realloc`
    /// grows is placed there if those pages are still free and resident,
    /// so that threads growing buffers each reuse their own (E153). A hint
    /// only: `arena::alloc_run` checks it against the free runs.
    pub grow_at: usize,
    /// Default build: the block that C `realloc`'s last move of a growing
    /// small block returned, and the size asked then: growing it again
    /// makes it large, and it stays large while it grows (E155). Written
    /// by the heap's thread alone; a stale value costs one buffer a large
    /// block.
    #[cfg(not(feature = "secure"))]
    pub grow_last: usize,
    #[cfg(not(feature = "secure"))]
    pub grow_len: usize,
    /// Default build: the block a growing buffer's streak last made large
    /// (E155, E160), until its thread frees it; how many such blocks in a
    /// row the thread freed before its next streak (saturating; a new
    /// thread starts at [`crate::api::GROW_EARLY_AFTER`]); the streaks
    /// since the last made large below 8 KiB while that count was lower
    /// ([`crate::api::GROW_PROBE_EVERY`]); and the size the last one freed
    /// had grown to (`usize::MAX` on a new thread). See
    /// `api::grows_large`.
    #[cfg(not(feature = "secure"))]
    pub grow_end: usize,
    #[cfg(not(feature = "secure"))]
    pub grow_big: usize,
    #[cfg(not(feature = "secure"))]
    pub grow_freed: u32,
    #[cfg(not(feature = "secure"))]
    pub grow_tries: u32,
    /// `secure` builds with `HZ_SECURE_FILL=1`: what the TLS slot points at
    /// instead of `bins` ([`slot_of`]). Its bins are all empty and full and
    /// never written, so every `malloc` and `free` leaves the fast path for
    /// the slow one, where the fill mode's checks are: the fast paths carry
    /// no test of the mode.
    #[cfg(feature = "secure")]
    decoy: Bins,
    /// Default build: the segments this heap's large blocks up to 8 MiB
    /// are carved from (`segment`).
    #[cfg(not(feature = "secure"))]
    pub segs: [crate::segment::Segment; crate::segment::SEG_SLOTS],
    /// Default build: blocks of its segments this heap's thread freed,
    /// newest first, kept whole for its next blocks of their lengths
    /// (`segment::cache_put`, E118).
    #[cfg(not(feature = "secure"))]
    pub seg_cache: [*mut PageMeta; crate::segment::CACHED],
    /// Their pages (written by the heap's thread, read by statistics).
    #[cfg(not(feature = "secure"))]
    pub seg_cached_pages: AtomicU64,
    /// Default build: large blocks the cache served since the last
    /// [`tick`] it ran ([`tick_cached`]).
    #[cfg(not(feature = "secure"))]
    cache_served: u32,
    pub inbox: Inbox,
    slots: [*mut u8; BIN_SLOTS],
    spill: [*mut u8; SPILL_SLOTS],
}

pub const HEAP_BYTES: usize = core::mem::size_of::<Heap>();
const HEAP_PAGES: usize = HEAP_BYTES.div_ceil(PAGE_SIZE);

/// Heap ids: 1..=MAX_HEAPS (0 means "no owner").
pub const MAX_HEAPS: usize = 1 << 20;
#[allow(clippy::declare_interior_mutable_const)]
const NO_HEAP: AtomicPtr<Heap> = AtomicPtr::new(null_mut());
pub static HEAPS: [AtomicPtr<Heap>; MAX_HEAPS] = [NO_HEAP; MAX_HEAPS];

/// The address range of [`HEAPS`], 8 MiB of static slots of which a
/// process writes one per heap: for libhz.so's `mlockall`, which locks the
/// mapping holding it as it faults in rather than making it resident.
#[cfg(not(loom))]
pub fn registry_range() -> (usize, usize) {
    let r = HEAPS.as_ptr_range();
    (r.start as usize, r.end as usize)
}

struct Registry {
    next_id: u32,
    abandoned: *mut Heap,
}
struct RegistryCell(core::cell::UnsafeCell<Registry>);
// SAFETY: only accessed with REGISTRY_LOCK held.
unsafe impl Sync for RegistryCell {}
static REGISTRY_LOCK: Mutex = Mutex::new();
static REGISTRY: RegistryCell = RegistryCell(core::cell::UnsafeCell::new(Registry {
    next_id: 1,
    abandoned: null_mut(),
}));

/// The shared heap serves threads whose teardown has run; it is used only
/// with SHARED_LOCK held.
pub static SHARED_LOCK: Mutex = Mutex::new();
static SHARED: AtomicPtr<Heap> = AtomicPtr::new(null_mut());

#[inline(always)]
pub fn heap_of(id: u32) -> *mut Heap {
    // SAFETY: ids come from tags written for registered heaps (< MAX_HEAPS).
    unsafe { HEAPS.get_unchecked(id as usize).load(Acquire) }
}

// ---------------------------------------------------------------------------
// Heap creation, claim, release

/// Creates or adopts a heap. Null when no memory is left.
fn claim() -> *mut Heap {
    REGISTRY_LOCK.lock();
    // SAFETY: REGISTRY_LOCK held.
    let reg = unsafe { &mut *REGISTRY.0.get() };
    let h = if !reg.abandoned.is_null() {
        let h = reg.abandoned;
        // SAFETY: heaps on the abandoned list are valid and unused.
        unsafe { reg.abandoned = (*h).next_abandoned };
        ABANDONED_HEAPS.fetch_sub(1, Relaxed);
        h
    } else {
        create(reg)
    };
    REGISTRY_LOCK.unlock();
    if !h.is_null() {
        // SAFETY: h is ours now.
        unsafe {
            #[cfg(not(feature = "secure"))]
            {
                unkeep(h);
                // A new thread grows no buffer yet (E155), has kept none
                // (E160), nor has it written a large block: its record of
                // dense writes (E128) starts as a new heap's, not as the
                // exited thread's, under which no buffer of its turns
                // large below 32 KiB (E155, E157).
                (*h).grow_last = 0;
                (*h).grow_big = 0;
                (*h).grow_end = usize::MAX;
                (*h).grow_freed = crate::api::GROW_EARLY_AFTER;
                (*h).grow_tries = 0;
                (*h).large_dense = 0;
            }
            (*h).generation = (*h).generation.wrapping_add(1);
            (*h).state.store(HEAP_ACTIVE, Release);
        }
        STATS.heaps_live.fetch_add(1, Relaxed);
    }
    h
}

fn create(reg: &mut Registry) -> *mut Heap {
    if reg.next_id as usize >= MAX_HEAPS {
        return null_mut();
    }
    let Some(run) = arena::alloc_run(HEAP_PAGES, 1, arena::Zone::Normal, arena::Fit::Tight) else {
        return null_mut();
    };
    #[cfg(feature = "secure")]
    // SAFETY: the run was just taken.
    unsafe {
        crate::secure::take_run(&run, HEAP_PAGES, false)
    };
    let id = reg.next_id;
    reg.next_id += 1;
    // SAFETY: the run is ours; its pages are zero (fresh or purged is not
    // guaranteed, so every field is written explicitly below).
    unsafe {
        arena::set_tags(run.meta, 0, KIND_META, 0);
        let h = run.addr as *mut Heap;
        core::ptr::write_bytes(
            h as *mut u8,
            0,
            core::mem::size_of::<Heap>()
                - core::mem::size_of::<[*mut u8; BIN_SLOTS]>()
                - core::mem::size_of::<[*mut u8; SPILL_SLOTS]>(),
        );
        (*h).id = id;
        (*h).state = AtomicU32::new(HEAP_FREE);
        #[cfg(feature = "secure")]
        {
            (*h).rng = crate::secure::seed(id);
        }
        core::ptr::addr_of_mut!((*h).inbox).write(Inbox::new());
        let slots = core::ptr::addr_of_mut!((*h).slots) as *mut *mut u8;
        let spill = core::ptr::addr_of_mut!((*h).spill) as *mut *mut u8;
        let (mut so, mut po) = (0usize, 0usize);
        for c in 1..NUM_CLASSES {
            let b = slots.add(so);
            // Closed (`end == base`) until the thread first allocates
            // from it: see [`free_to_closed_bin`].
            (*h).bins.b[c] = Bin {
                top: b,
                base: b,
                end: b,
            };
            so += BIN_CAP[c] as usize;
            (*h).spill_base[c] = spill.add(po);
            po += spill_cap(c);
        }
        HEAPS[id as usize].store(h, Release);
        STATS.heaps_created.fetch_add(1, Relaxed);
        h
    }
}

/// Heaps on the abandoned list (their threads exited, no thread has
/// adopted them yet). While there are none, every heap that owns blocks is
/// active, and [`pool_whole`] pools a spill array (or, E141, a bin of only
/// other heaps' blocks) without looking at each block's owner (E140). Read without the registry lock: a thread that
/// exits while another flushes leaves blocks of its heap in the pool, as a
/// heap's state read just before it changed always could.
static ABANDONED_HEAPS: AtomicUsize = AtomicUsize::new(0);

/// Puts a heap on the abandoned list for a later thread to adopt.
fn abandon(h: *mut Heap) {
    ABANDONED_HEAPS.fetch_add(1, Relaxed);
    // SAFETY: h is a valid heap we hold.
    unsafe { (*h).state.store(HEAP_ABANDONED, Release) };
    REGISTRY_LOCK.lock();
    // SAFETY: REGISTRY_LOCK held; h is ours until it is on the list.
    unsafe {
        let reg = &mut *REGISTRY.0.get();
        (*h).next_abandoned = reg.abandoned;
        reg.abandoned = h;
    }
    REGISTRY_LOCK.unlock();
    STATS.heaps_live.fetch_sub(1, Relaxed);
}

// ---------------------------------------------------------------------------
// Thread lifecycle

static INIT: AtomicU32 = AtomicU32::new(0);
static EXIT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Loads the settings and the thread-exit hook, once per process (also
/// called by paths that need the settings before any heap exists).
pub fn init_once() {
    if INIT.load(Acquire) == 2 {
        return;
    }
    if INIT.compare_exchange(0, 1, AcqRel, Acquire).is_ok() {
        crate::config::load();
        #[cfg(feature = "secure")]
        crate::secure::init();
        tls::init();
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer and an extern "C" destructor.
        if unsafe { libc::pthread_key_create(&mut k, Some(thread_exit)) } == 0 {
            EXIT_KEY.store(k as u32, Release);
        }
        INIT.store(2, Release);
        if crate::config::CONFIG.show_stats.load(Relaxed) != 0 {
            // SAFETY: registers an extern "C" fn; atexit may allocate, which
            // is fine: INIT is 2, so a nested malloc takes the normal paths.
            unsafe { libc::atexit(print_stats_at_exit) };
        }
    } else {
        while INIT.load(Acquire) != 2 {
            core::hint::spin_loop();
        }
    }
}

extern "C" fn print_stats_at_exit() {
    crate::write_stats(2);
}

/// What the TLS slot of a thread owning heap `h` points at: its bins, or
/// in a `secure` build with `HZ_SECURE_FILL=1` its decoy (see
/// `Heap::decoy`).
fn slot_of(h: *mut Heap) -> *mut Bins {
    #[cfg(feature = "secure")]
    if crate::secure::fill_mode() {
        // SAFETY: h is a live heap: a raw place, no reference made.
        return unsafe { core::ptr::addr_of_mut!((*h).decoy) };
    }
    h as *mut Bins
}

/// The heap whose slot ([`slot_of`]) `b` is, or null for the empty and
/// the dead slot.
pub fn heap_of_slot(b: *mut Bins) -> *mut Heap {
    if b == tls::empty() || b == tls::dead() {
        return null_mut();
    }
    #[cfg(feature = "secure")]
    if crate::secure::fill_mode() {
        // SAFETY: b is the decoy field of a heap (slot_of), so stepping back
        // by its offset stays inside that heap.
        return unsafe { (b as *mut u8).sub(core::mem::offset_of!(Heap, decoy)) } as *mut Heap;
    }
    b as *mut Heap
}

/// The heap of the calling thread for a slow path; claims one on first
/// use. Null for a thread after its teardown (or when no heap can be had).
#[cold]
pub fn current_or_claim() -> *mut Heap {
    let b = tls::get();
    if b == tls::dead() {
        return null_mut();
    }
    if b != tls::empty() {
        return heap_of_slot(b);
    }
    init_once();
    let h = claim();
    if h.is_null() {
        return null_mut();
    }
    tls::set(slot_of(h));
    // With the TLS slot set, calls that allocate (pthread_atfork,
    // pthread_setspecific) re-enter malloc safely.
    crate::register_fork_handlers();
    let k = EXIT_KEY.load(Acquire);
    if k != u32::MAX {
        // SAFETY: the key exists; setspecific may allocate (keys >= 32),
        // which is fine now that the TLS slot points at our heap.
        unsafe { libc::pthread_setspecific(k as libc::pthread_key_t, h as *const libc::c_void) };
    }
    h
}

/// Default build: free resident segment pages that exited threads' heaps
/// keep for the threads that adopt them (E101), in bytes; at most the
/// dirty cap (`HZ_PURGE_MAX_DIRTY_MB`): past it, an exiting thread's
/// segments purge theirs, so that threads that exit and are not replaced
/// leave at most that much resident while no thread calls the allocator.
#[cfg(not(feature = "secure"))]
static KEPT_AT_EXIT: AtomicU64 = AtomicU64::new(0);

/// Exiting thread's heap `h`, flushed: its segments keep their free
/// resident pages if they fit under the cap of [`KEPT_AT_EXIT`], else
/// purge them and release their empty segments.
///
/// # Safety
/// `h` is the exiting thread's heap, not yet abandoned.
#[cfg(not(feature = "secure"))]
unsafe fn keep_at_exit(h: *mut Heap) {
    // SAFETY: h is held.
    unsafe {
        let bytes = crate::segment::free_pages(h).1 << PAGE_SHIFT;
        let cap = crate::config::CONFIG.max_dirty_bytes.load(Relaxed);
        if KEPT_AT_EXIT.fetch_add(bytes, Relaxed) + bytes > cap {
            KEPT_AT_EXIT.fetch_sub(bytes, Relaxed);
            crate::segment::gc(h, true);
        } else {
            (*h).kept_at_exit = bytes;
        }
    }
}

/// Heap `h`, adopted or reclaimed, no longer keeps pages for an adopter.
///
/// # Safety
/// `h` is held (adopted by the caller, or abandoned with REGISTRY_LOCK held).
#[cfg(not(feature = "secure"))]
unsafe fn unkeep(h: *mut Heap) {
    // SAFETY: h is held.
    unsafe {
        KEPT_AT_EXIT.fetch_sub((*h).kept_at_exit, Relaxed);
        (*h).kept_at_exit = 0;
    }
}

/// pthread key destructor: the thread is exiting.
extern "C" fn thread_exit(v: *mut libc::c_void) {
    let h = v as *mut Heap;
    if h.is_null() {
        return;
    }
    // From now on this thread allocates through the shared heap and frees
    // by publishing to owners' inboxes.
    tls::set(tls::dead());
    // SAFETY: h was this thread's heap; no one else uses it. Its segments
    // keep their recently freed pages for the thread that adopts the heap
    // next, within a cap; a reclaim purges them if none does (E101).
    unsafe {
        flush_all(h, false);
        #[cfg(not(feature = "secure"))]
        keep_at_exit(h);
    }
    abandon(h);
}

// ---------------------------------------------------------------------------
// Spans

#[inline]
unsafe fn partial_push(h: *mut Heap, c: usize, m: *mut PageMeta) {
    // SAFETY: m is a span of h, not in the list.
    unsafe {
        (*m).sprev = null_mut();
        (*m).snext = (*h).partial[c];
        if !(*m).snext.is_null() {
            (*(*m).snext).sprev = m;
        }
        (*h).partial[c] = m;
        (*m).in_partial = true;
    }
}

#[inline]
unsafe fn partial_remove(h: *mut Heap, c: usize, m: *mut PageMeta) {
    // SAFETY: m is in h's partial list for c.
    unsafe {
        if (*m).sprev.is_null() {
            (*h).partial[c] = (*m).snext;
        } else {
            (*(*m).sprev).snext = (*m).snext;
        }
        if !(*m).snext.is_null() {
            (*(*m).snext).sprev = (*m).sprev;
        }
        (*m).in_partial = false;
    }
}

/// Exact division by a class size (default build): for a multiple `off`
/// of class `c`'s size, `off / size == (off >> s) * inv (mod 2^64)` with
/// `(s, inv) = DIV_EXACT[c]`: the size is `2^s` times an odd number, and
/// `inv` is that odd number's inverse modulo 2^64 (a shift and a
/// multiplication where a division takes tens of cycles).
#[cfg(not(feature = "secure"))]
static DIV_EXACT: [(u32, u64); NUM_CLASSES] = {
    let mut t = [(0u32, 0u64); NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let size = CLASS_SIZE[c] as u64;
        let s = size.trailing_zeros();
        let d = size >> s;
        // Newton's iteration doubles the correct low bits: 3, 6, ..., 96.
        let mut x = d;
        let mut i = 0;
        while i < 5 {
            x = x.wrapping_mul(2u64.wrapping_sub(d.wrapping_mul(x)));
            i += 1;
        }
        assert!(d.wrapping_mul(x) == 1);
        // Every span's blocks fit its bitmap.
        assert!(crate::class::SPAN_BLOCKS[c] as usize <= arena::SPAN_BITMAP_WORDS * 64);
        t[c] = (s, x);
        c += 1;
    }
    t
};

/// `off / size` for `off` a multiple of a class's size, with that class's
/// `DIV_EXACT` entry `d` (default build).
#[cfg(not(feature = "secure"))]
#[inline(always)]
fn exact_div(off: usize, d: (u32, u64)) -> usize {
    ((off >> d.0) as u64).wrapping_mul(d.1) as usize
}

/// Index of block `b` in span `m` of class `c` (default build).
#[cfg(not(feature = "secure"))]
#[inline(always)]
fn block_index(m: *mut PageMeta, c: usize, b: *mut u8) -> usize {
    // SAFETY: m is a live span's head meta.
    exact_div(b as usize - unsafe { (*m).base }, DIV_EXACT[c])
}

/// Block `j` of a span goes back: below the carving point `carved` (the
/// last block carved) it is un-carved, so a block carved and given back
/// unused is never written; otherwise its bit is set in the span's bitmap
/// `bits` and `free_lo` (the lowest word that may hold a set bit) follows
/// (default build; the span's state as held by a release loop).
///
/// # Safety
/// `j` is a carved block of the span, now free; `bits` is its bitmap.
#[cfg(not(feature = "secure"))]
#[inline(always)]
unsafe fn put_back(j: usize, carved: &mut usize, free_lo: &mut u32, bits: *mut u64) {
    if j + 1 == *carved {
        *carved = j;
    } else {
        // SAFETY: j is a block of the span, so its word is in the bitmap.
        unsafe { *bits.add(j >> 6) |= 1u64 << (j & 63) };
        *free_lo = (*free_lo).min((j >> 6) as u32);
    }
}

/// Secure build: puts free block `b` of h's span `m` back on the span,
/// without the span's accounting, which [`span_freed`] does once for a run
/// of blocks of one span: a chain through the blocks, each link encoded
/// and checked when the chain is walked (`secure::next_in_span`), so the
/// blocks keep something of the allocator's to check. (The default build
/// sets a bit in the span's bitmap instead: [`release_blocks`].)
#[cfg(feature = "secure")]
#[inline(always)]
unsafe fn span_push(m: *mut PageMeta, b: *mut u8) {
    // SAFETY: b is a free block of span m, owned by the caller's heap.
    unsafe {
        inbox::set_next(b, (*m).free);
        (*m).free = b;
    }
}

/// `k` blocks went back to h's span `m` of class `c` ([`release_blocks`]): its
/// count of blocks in use, its place in the partial list, and, if it is
/// now empty, kept or returned.
#[inline]
unsafe fn span_freed(h: *mut Heap, c: usize, m: *mut PageMeta, k: u32) {
    // SAFETY: m is a span of h with at least k blocks in use.
    unsafe {
        (*m).used -= k;
        if !(*m).in_partial {
            partial_push(h, c, m);
        }
        if (*m).used == 0 {
            // Keep a few empty spans per class (a class whose live count
            // hovers around a span boundary would otherwise carve and
            // release a span again and again); return the others.
            if (*h).empty_kept[c] < keep_empty_spans(c) {
                (*h).empty_kept[c] += 1;
            } else {
                release_span(h, c, m);
            }
        }
    }
}

unsafe fn release_span(h: *mut Heap, c: usize, m: *mut PageMeta) {
    // SAFETY: m is an empty span of h in its partial list.
    unsafe {
        partial_remove(h, c, m);
        (*h).spans[c].store((*h).spans[c].load(Relaxed) - 1, Relaxed);
        arena::free_run(m);
    }
}

/// The zone of h's next span of class `c` (E125). The dense zone's huge
/// pages cost one fault per 2 MiB instead of one per 4 KiB, but the first
/// touch zeroes all 2 MiB, so they pay only where spans fill: blocks of at
/// most [`DENSE_MAX_SIZE`] bytes (bigger ones are often written sparsely,
/// E59), of a class the heap already holds [`DENSE_SPANS`] spans of, in a
/// heap whose blocks rarely cross threads (fewer than one in
/// [`DENSE_REMOTE_SHARE`] of the blocks it carved were sent, received or
/// taken from the pool: remote frees leave spans partly used and
/// churning, M14, E84) and that has [`DENSE_OUT_BYTES`] (2 MiB) of blocks
/// out of its spans now (E130: a heap that builds, not one that churns a
/// small footprint through many spans, and not a small program, which
/// would pay for a huge page it fills in part). E125 asked for 8 MiB of
/// spans ever carved, which a churning heap reaches as surely as a
/// building one, so the threshold could not come down.
#[inline]
unsafe fn span_zone(h: *mut Heap, c: usize) -> arena::Zone {
    // SAFETY: h is held by the calling thread.
    unsafe {
        let held = (*h).spans[c].load(Relaxed);
        let remote =
            (*h).remote_sent.load(Relaxed) + (*h).remote_received.load(Relaxed) + (*h).pool_taken;
        // Secure builds: no dense zone (`huge_zone_on`); the test is
        // cheaper than the page allocator's fallback.
        if !cfg!(feature = "secure")
            && held >= DENSE_SPANS
            && CLASS_SIZE[c] <= DENSE_MAX_SIZE
            && remote * DENSE_REMOTE_SHARE < (*h).carved_blocks
            && out_bytes(h) >= DENSE_OUT_BYTES
        {
            arena::Zone::Dense
        } else {
            arena::Zone::Normal
        }
    }
}

/// Bytes of blocks out of heap `h`'s spans now (in use, or in its bins),
/// over all classes.
///
/// # Safety
/// `h` is held by the calling thread.
unsafe fn out_bytes(h: *mut Heap) -> u64 {
    // SAFETY: caller's contract.
    unsafe {
        (1..NUM_CLASSES)
            .map(|c| (*h).blocks_out[c].load(Relaxed) * CLASS_SIZE[c] as u64)
            .sum()
    }
}

/// See [`span_zone`].
const DENSE_OUT_BYTES: u64 = 2 << 20;
/// See [`span_zone`].
const DENSE_SPANS: u64 = 2;
const DENSE_MAX_SIZE: u32 = 1024;
const DENSE_REMOTE_SHARE: u64 = 32;

/// Carves a fresh span for class c. False when out of memory.
unsafe fn new_span(h: *mut Heap, c: usize) -> bool {
    // SAFETY: h is held by the calling thread.
    let zone = unsafe { span_zone(h, c) };
    let take = || arena::alloc_run(SPAN_PAGES[c] as usize, 1, zone, arena::Fit::Tight);
    #[cfg(not(feature = "secure"))]
    // SAFETY: h is held by the calling thread, between operations on it.
    let run = take().or_else(|| unsafe { retry_after_reclaim(h, take) });
    #[cfg(feature = "secure")]
    let run = take();
    let Some(run) = run else {
        return false;
    };
    crate::stats::note_pages();
    let m = run.meta;
    // SAFETY: m heads the run just taken.
    if zone == arena::Zone::Dense && unsafe { arena::zone_of(m) } == zone {
        STATS.dense_spans.fetch_add(1, Relaxed);
    }
    let size = CLASS_SIZE[c] as usize;
    #[cfg(not(feature = "secure"))]
    let (n, base) = {
        let span_bytes = SPAN_PAGES[c] as usize * PAGE_SIZE;
        let n = crate::class::SPAN_BLOCKS[c] as usize;
        // The colour: a multiple of 64 bytes up to the span's slack (at
        // most `COLOR_SPAN`), from the span's address, so that the first
        // lines of its blocks spread over the cache sets (E56, E76, E77).
        let off = if crate::class::coloured(c) {
            let steps = ((span_bytes - n * size).min(crate::class::COLOR_SPAN) / 64) as u64;
            let h = ((run.addr as u64) >> 16).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58;
            (h % (steps + 1)) as usize * 64
        } else {
            0
        };
        // SAFETY: off + n * size <= span_bytes: inside the run.
        (n, unsafe { run.addr.add(off) })
    };
    #[cfg(feature = "secure")]
    let (n, base) = (crate::class::span_blocks(c), run.addr);
    // SAFETY: the run is ours.
    unsafe {
        #[cfg(feature = "secure")]
        {
            (*m).free = null_mut();
        }
        #[cfg(not(feature = "secure"))]
        {
            // The bitmap may hold the bits of an earlier span on this page.
            let bits = arena::span_bits(m);
            core::ptr::write_bytes(bits, 0, n.div_ceil(64));
            (*m).bits = bits;
            (*m).free_lo = u32::MAX;
        }
        (*m).base = base as usize;
        (*m).bump.store(base, Relaxed);
        (*m).end = base.add(n * size);
        #[cfg(feature = "secure")]
        crate::secure::take_run(&run, SPAN_PAGES[c] as usize, true);
        #[cfg(feature = "secure")]
        crate::secure::set_carved(m, c, run.addr);
        (*m).used = 0;
        (*m).class = c as u32;
        (*m).in_partial = false;
        arena::set_tags(m, c, KIND_SMALL, (*h).id);
        partial_push(h, c, m);
        (*h).empty_kept[c] += 1;
        (*h).spans[c].store((*h).spans[c].load(Relaxed) + 1, Relaxed);
        (*h).carved_blocks += n as u64;
    }
    true
}

// ---------------------------------------------------------------------------
// Refill (bin empty)

/// Fills bin `c` of heap `h` and returns one block, or null when out of
/// memory.
pub unsafe fn refill(h: *mut Heap, c: usize) -> *mut u8 {
    // SAFETY: h is held by the caller; bin c is empty.
    unsafe {
        tick(h);
        // The bin ran empty: its low-water mark for this GC period is 0.
        (*h).gc_refilled |= 1 << c;
        open_bin(h, c, BIN_CAP[c] as usize);
        let want = (BIN_CAP[c] as usize).div_ceil(2);
        if fill_from_chains(h, c, want)
            || fill_from_inbox(h, c, want)
            || fill_from_pool(h, c, want)
            || fill_from_spans(h, c, want)
        {
            return pop(h, c);
        }
        // Before growing: send our outgoing blocks home so their owners can
        // reuse them, and return what is due to the OS.
        flush_spills(h);
        arena::purge_tick();
        if new_span(h, c) && fill_from_spans(h, c, want) {
            return pop(h, c);
        }
        null_mut()
    }
}

#[inline]
unsafe fn pop(h: *mut Heap, c: usize) -> *mut u8 {
    // SAFETY: bin c is non-empty.
    unsafe {
        let bin = &mut (*h).bins.b[c];
        bin.top = bin.top.sub(1);
        *bin.top
    }
}

/// Moves the blocks of the carrier chain `b` (class `c`, carriers of
/// `cap`) into `bin`, up to `target`: each carrier's carried addresses
/// (without touching those blocks), last first, then the carrier itself.
/// Returns the first carrier not wholly taken (its count updated), or null.
///
/// # Safety
/// `b` heads a chain of free blocks of class `c` that the caller holds;
/// `bin` is the caller's bin `c`, with room up to `target`.
unsafe fn take_chain(
    bin: &mut Bin,
    mut b: *mut u8,
    c: usize,
    cap: usize,
    target: *mut *mut u8,
) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe {
        while !b.is_null() && bin.top < target {
            let mut k = if cap > 0 { inbox::carried(b, cap) } else { 0 };
            while k > 0 && bin.top < target {
                k -= 1;
                *bin.top = inbox::carried_block(b, k);
                bin.top = bin.top.add(1);
            }
            if k > 0 || bin.top == target {
                if cap > 0 {
                    inbox::set_carried(b, k);
                }
                return b;
            }
            let n = inbox::next(b);
            #[cfg(feature = "secure")]
            (b as *mut usize).write(crate::secure::mark(b, c));
            *bin.top = b;
            bin.top = bin.top.add(1);
            b = n;
        }
        #[cfg(not(feature = "secure"))]
        let _ = c;
        b
    }
}

/// Calls `f` on every block of the carrier chain `b` (class `c`): each
/// carrier's carried blocks, then the carrier itself (marked free first in
/// `secure` builds, as the carried blocks already are). The chain is
/// consumed: `f` may reuse the blocks' memory.
///
/// # Safety
/// `b` heads a chain of free blocks of class `c` that the caller holds.
unsafe fn for_each_in_chain(mut b: *mut u8, c: usize, mut f: impl FnMut(*mut u8)) {
    let cap = inbox::carrier_cap(CLASS_SIZE[c] as usize);
    // SAFETY: forwarded contract; each carrier's links are read before `f`
    // sees it.
    unsafe {
        while !b.is_null() {
            let next = inbox::next(b);
            let k = if cap > 0 { inbox::carried(b, cap) } else { 0 };
            for i in 0..k {
                f(inbox::carried_block(b, i));
            }
            #[cfg(feature = "secure")]
            (b as *mut usize).write(crate::secure::mark(b, c));
            f(b);
            b = next;
        }
    }
}

unsafe fn fill_from_chains(h: *mut Heap, c: usize, want: usize) -> bool {
    // SAFETY: chains[c] holds chains of h's own free blocks of class c.
    unsafe {
        let mut ch = (*h).chains[c];
        if ch.is_null() {
            return false;
        }
        let cap = inbox::carrier_cap(CLASS_SIZE[c] as usize);
        let bin = &mut (*h).bins.b[c];
        let target = bin.base.add(want);
        let before = bin.top;
        while !ch.is_null() && bin.top < target {
            let next_chain = inbox::next_batch(ch);
            let b = take_chain(bin, ch, c, cap, target);
            if !b.is_null() {
                inbox::set_next_batch(b, next_chain);
                ch = b;
            } else {
                ch = next_chain;
            }
        }
        (*h).chains[c] = ch;
        let got = bin.top.offset_from(before) as u64;
        (*h).remote_received
            .store((*h).remote_received.load(Relaxed) + got, Relaxed);
        got > 0
    }
}

/// Takes the whole inbox (one exchange) and files its batches by class.
unsafe fn drain_inbox(h: *mut Heap) {
    // SAFETY: h is held; batches in its inbox are its own blocks.
    unsafe {
        let mut batch = (*h).inbox.take_all();
        while !batch.is_null() {
            let nb = inbox::next_batch(batch);
            let (t, _) = arena::lookup(batch as usize);
            let c = arena::tag_class(t);
            if c == 0 || arena::tag_owner(t) != (*h).id {
                os::fatal("remote batch in an inbox holds a block this heap does not own");
            }
            inbox::set_next_batch(batch, (*h).chains[c]);
            (*h).chains[c] = batch;
            batch = nb;
        }
    }
}

unsafe fn fill_from_inbox(h: *mut Heap, c: usize, want: usize) -> bool {
    // SAFETY: h is held.
    unsafe {
        if (*h).inbox.is_empty() {
            return false;
        }
        drain_inbox(h);
        fill_from_chains(h, c, want)
    }
}

/// Moves free blocks of span `m` (blocks of `size` bytes; `nfree` set
/// bits in its bitmap) into `bin`, up to `target`, lowest address on top
/// of the bin (a stack: the program gets the lowest first, as from a fresh
/// span). Returns how many.
#[cfg(not(feature = "secure"))]
unsafe fn take_from_bitmap(
    bin: &mut Bin,
    m: *mut PageMeta,
    size: usize,
    nfree: usize,
    target: *mut *mut u8,
) -> usize {
    // SAFETY: m is a span of the caller's heap whose bitmap has nfree > 0
    // set bits, none in the words below free_lo, so the scan stops inside
    // the bitmap after k <= nfree of them; the bin has room up to target.
    unsafe {
        let k = nfree.min(target.offset_from(bin.top).max(0) as usize);
        let base = (*m).base;
        let bits = (*m).bits;
        let mut i = (*m).free_lo as usize;
        let mut w = *bits.add(i);
        let mut dst = bin.top.add(k);
        for _ in 0..k {
            while w == 0 {
                *bits.add(i) = 0;
                i += 1;
                w = *bits.add(i);
            }
            let j = w.trailing_zeros() as usize;
            w &= w - 1;
            dst = dst.sub(1);
            *dst = (base + ((i << 6) + j) * size) as *mut u8;
        }
        *bits.add(i) = w;
        bin.top = bin.top.add(k);
        (*m).free_lo = if k == nfree { u32::MAX } else { i as u32 };
        k
    }
}

unsafe fn fill_from_spans(h: *mut Heap, c: usize, want: usize) -> bool {
    // SAFETY: h is held; partial spans of class c are h's.
    unsafe {
        let size = CLASS_SIZE[c] as usize;
        let bin = &mut (*h).bins.b[c];
        let target = bin.base.add(want);
        let mut m = (*h).partial[c];
        let mut got = 0u64;
        #[cfg(feature = "secure")]
        let start = bin.top;
        // Fresh blocks this refill may still carve (see `secure::carve_limit`).
        #[cfg(not(feature = "secure"))]
        let mut carve_left = usize::MAX;
        #[cfg(feature = "secure")]
        let mut carve_left = crate::secure::carve_limit(size);
        while !m.is_null() && bin.top < target {
            let next = (*m).snext;
            if (*m).used == 0 {
                // An empty span (kept or fresh) is about to be used.
                (*h).empty_kept[c] -= 1;
            }
            // The span's free blocks (`span_push`): in the default build
            // the set bits of its bitmap, lowest address first; in `secure`
            // builds a chain whose every link is checked against the span.
            let before = bin.top;
            // Free blocks left on the span after this refill's take.
            #[cfg(not(feature = "secure"))]
            let left = {
                let carved = block_index(m, c, (*m).bump.load(Relaxed));
                let nfree = carved - (*m).used as usize;
                if nfree != 0 {
                    nfree - take_from_bitmap(bin, m, size, nfree, target)
                } else {
                    0
                }
            };
            #[cfg(feature = "secure")]
            {
                let mut f = (*m).free;
                while !f.is_null() && bin.top < target {
                    let n = crate::secure::next_in_span(f, m);
                    *bin.top = f;
                    bin.top = bin.top.add(1);
                    f = n;
                }
                (*m).free = f;
            }
            let mut taken = bin.top.offset_from(before) as u32;
            // Carve k blocks, highest address first into the bin, so the
            // program gets the lowest first and the blocks that sit at the
            // bottom of the bin (the first a GC or an overflow gives back)
            // are the highest: those go back by lowering `bump`, without a
            // write to blocks the program never touched (`span_push`).
            let mut p = (*m).bump.load(Relaxed);
            let end = (*m).end;
            let room = (end as usize).saturating_sub(p as usize) / size;
            let k = room
                .min(target.offset_from(bin.top).max(0) as usize)
                .min(carve_left);
            carve_left -= k;
            // Through locals: a store through `bin.top` could be to
            // `bin.top` itself as far as the compiler knows, which reloaded
            // it for every block and kept the loop from being vectorised
            // (E114: 6 instructions a block carved, now under 1.5).
            let dst = bin.top;
            let mut q = (p as usize).wrapping_add(k.wrapping_sub(1).wrapping_mul(size));
            for i in 0..k {
                *dst.add(i) = q as *mut u8;
                q = q.wrapping_sub(size);
            }
            bin.top = dst.add(k);
            p = p.add(k * size);
            taken += k as u32;
            #[cfg(feature = "secure")]
            if p != (*m).bump.load(Relaxed) {
                crate::secure::set_carved(m, c, p);
            }
            (*m).bump.store(p, Relaxed);
            (*m).used += taken;
            got += taken as u64;
            #[cfg(feature = "secure")]
            let left = !(*m).free.is_null();
            #[cfg(not(feature = "secure"))]
            let left = left != 0;
            if !left && p >= end {
                partial_remove(h, c, m);
            }
            m = next;
        }
        let bo = &(*h).blocks_out[c];
        bo.store(bo.load(Relaxed) + got, Relaxed);
        #[cfg(feature = "secure")]
        {
            // Hand the new blocks out in a random order, each marked free.
            let n = bin.top.offset_from(start) as usize;
            crate::secure::shuffle(&mut (*h).rng, start, n);
            for i in 0..n {
                let b = *start.add(i);
                (b as *mut usize).write(crate::secure::mark(b, c));
            }
        }
        got > 0
    }
}

// ---------------------------------------------------------------------------
// Overflow (bin full)

/// Bin `c` is full: move its older half out, then push `p`. A bin that a
/// `free` opened and no refill has widened (it holds [`free_only_cap`]
/// blocks) belongs to a thread that does not allocate the class: every
/// block leaves, and the spill array is flushed behind them, so such a
/// thread holds a quarter of a bin of the class on average, not a bin
/// and a spill array (E126), for the same number of overflows and flushes.
pub unsafe fn overflow(h: *mut Heap, c: usize, p: *mut u8) {
    // SAFETY: h is held; bin c is full.
    unsafe {
        let bin = &mut (*h).bins.b[c];
        let cap = bin.end.offset_from(bin.base) as usize;
        let free_only = cap < BIN_CAP[c] as usize;
        let out = if free_only { cap } else { cap / 2 };
        // A heap with no block of this class out of its own spans holds only
        // other heaps' blocks in the bin (a thread that frees what others
        // made): while every heap runs, they go to the pool as they are,
        // with no look at each block's owner (E141).
        #[cfg(not(feature = "secure"))]
        let pooled = (*h).blocks_out[c].load(Relaxed) == 0
            && pool_whole(h, c, core::slice::from_raw_parts(bin.base, out));
        #[cfg(feature = "secure")]
        let pooled = false;
        if !pooled {
            #[cfg(not(feature = "secure"))]
            let done = release_below(h, c, bin.base, out);
            #[cfg(feature = "secure")]
            let done = 0;
            release_blocks(h, c, bin.base.add(done), out - done);
        }
        let bin = &mut (*h).bins.b[c];
        core::ptr::copy(bin.base.add(out), bin.base, cap - out);
        bin.top = bin.base.add(cap - out);
        *bin.top = p;
        bin.top = bin.top.add(1);
        if free_only && (*h).spill_len[c] != 0 {
            flush_spill(h, c);
        }
        tick(h);
    }
}

/// The first of the `n` blocks at `bs` (class `c`) and those after it that
/// run down from it, block by block, go back to h's span by lowering its
/// carving point, if the first is h's block just below that point; returns
/// how many blocks it handled (0 when the first is h's but not there; 1
/// when it is another heap's, which goes to its spill array as in
/// [`release_blocks`]). A program that frees blocks in the reverse order
/// it allocated them (a list or a tree torn down) overflows its bins with
/// such runs: they cost a pointer compare a block here, against about 13
/// instructions each through [`release_blocks`] (E114), whose loop, for
/// the remote blocks it mostly handles, this leaves as it was.
///
/// # Safety
/// `h` is held; `bs[..n]` are free blocks of class `c`.
#[cfg(not(feature = "secure"))]
unsafe fn release_below(h: *mut Heap, c: usize, bs: *const *mut u8, n: usize) -> usize {
    // SAFETY: caller's contract; r is b's span, h's, whose meta only h's
    // thread writes: left untouched when nothing goes back to it, written
    // back by leave_run otherwise. The run's blocks are b and the blocks
    // below it, all carved (j of them below b) and now free.
    unsafe {
        if n == 0 {
            return 0;
        }
        let b = *bs as usize;
        // Another heap's block: to its spill array (one block handled).
        let Some(mut r) = switch_run(h, c, NO_RUN, 0, b) else {
            return 1;
        };
        let j = block_index(r.m, c, b as *mut u8);
        if j + 1 != r.carved {
            return 0;
        }
        let size = CLASS_SIZE[c] as usize;
        let mut next = b;
        let mut k = 0;
        let max = n.min(j + 1);
        while k < max && *bs.add(k) as usize == next {
            next = next.wrapping_sub(size);
            k += 1;
        }
        r.carved -= k;
        leave_run(h, c, r, k as u32);
        k
    }
}

/// A bin is *closed* (`end == base`, so every `free` into it takes the slow
/// path) until its thread first allocates from it, and again after
/// [`flush_all`]. A block of another heap freed into a closed bin goes
/// home (its owner's inbox) instead of into the bin: otherwise the next
/// `malloc` of the class hands that very block back out, and a thread that
/// frees a block it was handed and then works on blocks of its own size
/// keeps writing into a cache line that the thread which allocated it (or
/// the threads it handed the line's other blocks to) also writes: passive
/// false sharing (Hoard's cache-scratch; docs/PERFORMANCE.md, E47). The
/// first `malloc` refills the bin from the thread's own spans instead.
/// A thread that only frees the class (a consumer) sends half a bin of
/// blocks home this way, then the bin opens, with half its capacity
/// until the thread first refills it ([`free_only_cap`], [`overflow`]). The
/// fast paths carry no test for it.
///
/// # Safety
/// `h` is this thread's heap; bin `c` is closed; `p` is a free block of
/// class `c`.
pub unsafe fn free_to_closed_bin(h: *mut Heap, c: usize, p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe {
        let (t, _) = arena::lookup(p as usize);
        let o = arena::tag_owner(t);
        // (An orphaned heap's block stays: its home is never drained.)
        if o != (*h).id
            && ((*h).diverted[c] as usize) < spill_cap(c)
            && (*owner_heap(o)).state.load(Relaxed) != HEAP_ORPHANED
        {
            (*h).diverted[c] += 1;
            // Home, not through the spill array: that may put it in the
            // pool, from which this thread's next refill would take it.
            let cap = inbox::carrier_cap(CLASS_SIZE[c] as usize);
            let orphan = send_home(owner_heap(o), &[p], cap);
            (*h).remote_sent
                .store((*h).remote_sent.load(Relaxed) + 1, Relaxed);
            if orphan {
                reclaim_tick();
            }
            tick(h);
            return;
        }
        open_bin(h, c, free_only_cap(c));
        let bin = &mut (*h).bins.b[c];
        *bin.top = p;
        bin.top = bin.top.add(1);
    }
}

/// The capacity a bin opens with when a `free` opens it: a thread that
/// has not allocated the class (a consumer, a pipeline's last stage) only
/// gathers blocks there for their way out, and a full bin's worth of them
/// per class was held from their owners for nothing (E126). The thread's
/// first refill of the class gives the bin its whole capacity.
const fn free_only_cap(c: usize) -> usize {
    (BIN_CAP[c] / 2) as usize
}

/// Gives bin `c` of `h` (see [`free_to_closed_bin`]) a capacity of `cap`
/// blocks if it is closed or holds fewer; a bin holding more is left alone.
///
/// # Safety
/// `h` is held; `cap` is at most `BIN_CAP[c]`, and not 0.
unsafe fn open_bin(h: *mut Heap, c: usize, cap: usize) {
    // SAFETY: h is held; the bin's slots run BIN_CAP[c] from its base.
    unsafe {
        let bin = &mut (*h).bins.b[c];
        if bin.end == bin.base {
            // A pending block of this class (E108) was freed while the bin
            // was closed: it goes where it would have gone then (home, if
            // it is another heap's), before the bin opens and could hand
            // it out. (That may open the bin, with the free-only capacity.)
            if (*h).bins.pending_c == c {
                let (q, _) = take_pending(h);
                free_to_closed_bin(h, c, q);
            }
            let bin = &mut (*h).bins.b[c];
            if bin.end == bin.base {
                (*h).diverted[c] = 0;
            }
        }
        let bin = &mut (*h).bins.b[c];
        if (bin.end.offset_from(bin.base) as usize) < cap {
            bin.end = bin.base.add(cap);
        }
    }
}

// ---------------------------------------------------------------------------
// Bin GC: bins shrink on their own

/// How often a heap's bins are looked at (per heap, in coarse ms).
const GC_INTERVAL_MS: u64 = 100;

/// Slow-path tick of heap `h` (null: no heap): reclaims abandoned heaps
/// (globally, every 100 ms), purges free pages that are due, returns kept
/// large runs that went unused for a period, and runs this heap's bin GC
/// when it is due.
///
/// # Safety
/// `h` is null or held by the caller, and not in the middle of changing a
/// bin or spill array.
pub unsafe fn tick(h: *mut Heap) {
    let now = os::now_ms();
    reclaim_at(now);
    arena::purge_if_due(now);
    #[cfg(not(feature = "secure"))]
    {
        arena::kept_gc(now, GC_INTERVAL_MS);
        crate::segment::kept_gc(now, GC_INTERVAL_MS);
    }
    // SAFETY: h is held (caller's contract).
    unsafe {
        if !h.is_null() && now >= (*h).gc_at {
            gc(h, now);
        }
        if !h.is_null() && os::due(&POOL_GC_AT, now, GC_INTERVAL_MS) {
            pool_gc(h, false);
        }
    }
}

/// [`tick`] once in [`CACHE_TICK_EVERY`] large blocks that heap `h`'s
/// segment cache serves (E120): such a block changes no page, and the
/// tick was a sixth of a `malloc`+`free` of one; a thread whose blocks all
/// come from its bins and its cache still runs its GC and purges.
///
/// # Safety
/// As [`tick`], with `h` not null.
#[cfg(not(feature = "secure"))]
pub unsafe fn tick_cached(h: *mut Heap) {
    // SAFETY: h is held (caller's contract).
    unsafe {
        (*h).cache_served += 1;
        if (*h).cache_served >= CACHE_TICK_EVERY {
            (*h).cache_served = 0;
            tick(h);
        }
    }
}

/// See [`tick_cached`].
#[cfg(not(feature = "secure"))]
const CACHE_TICK_EVERY: u32 = 16;

/// [`tick`] for the calling thread's heap, from paths that hold no heap
/// (large blocks).
pub fn tick_current() {
    let h = heap_of_slot(tls::get());
    // SAFETY: the thread's own heap, used by no one else; the large-block
    // paths that call this are not inside a heap operation.
    unsafe { tick(h) };
}

/// The bin GC (jemalloc's tcache GC, without its fast-path bookkeeping):
/// every bin whose low-water mark since the last GC was above zero gives
/// back half of that many blocks, the oldest first (own blocks to their
/// spans, so that spans can empty and their pages go back; others towards
/// their owners). The fast paths keep no count, so the low-water mark is
/// estimated from slow-path facts: 0 if the bin was refilled (it ran empty),
/// else at most the smaller of its fill after the last GC and its fill now.
/// A bin left alone halves every period and is empty after a few; a bin in
/// use loses at most half its blocks per period, which costs it one refill.
/// Spill arrays are flushed too, so foreign blocks do not wait for a fill.
unsafe fn gc(h: *mut Heap, now: u64) {
    // SAFETY: h is held; no bin or spill array is mid-update.
    unsafe {
        (*h).gc_at = now + GC_INTERVAL_MS;
        let refilled = (*h).gc_refilled;
        (*h).gc_refilled = 0;
        for c in 1..NUM_CLASSES {
            let bin = &(*h).bins.b[c];
            let fill = bin.top.offset_from(bin.base) as usize;
            let low = if refilled & (1 << c) != 0 {
                0
            } else {
                fill.min((*h).gc_mark[c] as usize)
            };
            let n = low.div_ceil(2);
            if n > 0 {
                release_blocks(h, c, (*h).bins.b[c].base, n);
                let bin = &mut (*h).bins.b[c];
                core::ptr::copy(bin.base.add(n), bin.base, fill - n);
                bin.top = bin.base.add(fill - n);
            }
            (*h).gc_mark[c] = (fill - n) as u16;
            if (*h).spill_len[c] != 0 {
                flush_spill(h, c);
            }
        }
        #[cfg(not(feature = "secure"))]
        crate::segment::gc(h, false);
    }
}

/// Block `b` of class `c`, another heap's, joins h's spill array of the
/// class (flushed first if full).
#[inline]
unsafe fn spill_push(h: *mut Heap, c: usize, b: *mut u8) {
    // SAFETY: h is held; the spill array has room after a flush.
    unsafe {
        if (*h).spill_len[c] as usize == spill_cap(c) {
            flush_spill(h, c);
        }
        let n = (*h).spill_len[c] as usize;
        *(*h).spill_base[c].add(n) = b;
        (*h).spill_len[c] = n as u32 + 1;
    }
}

/// `n` blocks of class `c` at `bs` leave the thread cache (a bin's oldest,
/// on overflow, GC and flush; pooled blocks on a pool GC): each to its
/// span if it is ours, else to the spill array bound for its owner.
/// Blocks that leave a bin together were mostly carved or freed together:
/// a block inside the span of the last own block goes back to it with no
/// tag lookup, and each span's accounting ([`span_freed`]) and the heap's
/// count of blocks out are updated once per run of blocks instead of once
/// per block (E48).
///
/// Default build: a block goes back as one bit in the span's bitmap, out
/// of band, so the block (often cold by now: a program that drops a big
/// collection frees blocks it has not touched for a while) is not written
/// to (E49; E42 kept the list in the blocks). The last block carved is
/// un-carved instead (the carving point moves back over it), so a block
/// carved into a bin and given back unused (bin GC, overflow) stays
/// untouched, and its page not resident. While blocks of one span go
/// back, the span's state lives in registers ([`SpanRun`]), written back
/// once per run of blocks (E99: 20 instructions a block within a span,
/// was 43).
#[cfg(not(feature = "secure"))]
unsafe fn release_blocks(h: *mut Heap, c: usize, bs: *mut *mut u8, n: usize) {
    let div = DIV_EXACT[c];
    let (mut bs, mut n) = (bs, n);
    // SAFETY: bs[..n] are free blocks of class c, in memory the caller
    // lets us reorder (a bin's slots, or a single block); r is a span of h
    // whose k blocks put back are written back by leave_run before the
    // next pass.
    unsafe {
        let mut passes = 0;
        while n > 1 && passes < SPAN_PASSES {
            let b = *bs as usize;
            let Some(mut r) = switch_run(h, c, NO_RUN, 0, b) else {
                bs = bs.add(1);
                n -= 1;
                continue;
            };
            // One pass: the blocks of b's span go back, the others move to
            // the front, in order, for the next pass.
            let (base, len, bits) = (r.base, r.len, r.bits);
            let (mut carved, mut free_lo) = (r.carved, r.free_lo);
            let mut k = 0u32;
            let mut rest = 0;
            // One block of the pass: back to the span if it is of it,
            // else to the front for the next pass.
            macro_rules! one {
                ($i:expr) => {{
                    let x = *bs.add($i);
                    let off = (x as usize).wrapping_sub(base);
                    if off >= len {
                        *bs.add(rest) = x;
                        rest += 1;
                    } else {
                        put_back(exact_div(off, div), &mut carved, &mut free_lo, bits);
                        k += 1;
                    }
                }};
            }
            // The first few blocks tell whether the blocks come from a few
            // spans: if not, passes would cost more than they save, and
            // the rest go in order.
            let probe = n.min(PASS_PROBE);
            for i in 0..probe {
                one!(i);
            }
            let many = probe < n && (k as usize) * 4 < probe;
            if !many {
                for i in probe..n {
                    one!(i);
                }
            }
            r.carved = carved;
            r.free_lo = free_lo;
            leave_run(h, c, r, k);
            if many {
                core::ptr::copy(bs.add(probe), bs.add(rest), n - probe);
                n = rest + (n - probe);
                break;
            }
            n = rest;
            passes += 1;
        }
        if n >= GROUP_MIN && SPAN_PAGES[c] == 1 && (*h).spans[c].load(Relaxed) <= GROUP_SPANS_MAX {
            release_grouped(h, c, bs, n);
        } else {
            release_in_order(h, c, bs, n);
        }
    }
}

/// Blocks from several spans (those the passes left), of a class whose
/// spans are one page and of which the heap holds at most
/// [`GROUP_SPANS_MAX`]: each span's state stays in a small table keyed by
/// its page for the whole batch, so a span's run is loaded and written
/// back once per batch instead of at every change of span (a map dropped
/// in hash order changed span at four blocks in five: 84 instructions a
/// block, E158). Blocks of one span go back in their order, as in
/// [`release_in_order`]; a span whose slot another takes is written back
/// then and may come back.
///
/// # Safety
/// As [`release_blocks`].
#[cfg(not(feature = "secure"))]
#[inline(never)]
unsafe fn release_grouped(h: *mut Heap, c: usize, bs: *const *mut u8, n: usize) {
    let div = DIV_EXACT[c];
    // Page number of each slot's span, 0 for none (page 0 holds no span).
    let mut key = [0usize; GROUP_SLOTS];
    // Read only where `key` says the slot holds a span.
    let mut runs = [const { MaybeUninit::<GroupRun>::uninit() }; GROUP_SLOTS];
    // The slots that hold a span, for the last loop.
    let mut filled = 0u64;
    // SAFETY: bs[..n] are free blocks of class c (caller's contract); the
    // spans in the table have `k` blocks put back but not accounted, so
    // they stay in use (not released) until leave_run; a span's meta is
    // written only by leave_run, once it has left the table.
    unsafe {
        for i in 0..n {
            let b = *bs.add(i) as usize;
            let pg = b >> PAGE_SHIFT;
            let s = pg & (GROUP_SLOTS - 1);
            if key[s] != pg {
                let Some(r) = switch_run(h, c, NO_RUN, 0, b) else {
                    continue;
                };
                if key[s] != 0 {
                    let old = runs[s].assume_init();
                    leave_run(h, c, old.run(), old.k);
                }
                key[s] = pg;
                filled |= 1 << s;
                runs[s].write(GroupRun {
                    m: r.m,
                    base: r.base,
                    bits: r.bits,
                    carved: r.carved as u32,
                    free_lo: r.free_lo,
                    k: 0,
                });
            }
            let g = runs[s].assume_init_mut();
            let mut carved = g.carved as usize;
            put_back(
                exact_div(b - g.base, div),
                &mut carved,
                &mut g.free_lo,
                g.bits,
            );
            g.carved = carved as u32;
            g.k += 1;
        }
        while filled != 0 {
            let s = filled.trailing_zeros() as usize;
            filled &= filled - 1;
            let g = runs[s].assume_init();
            leave_run(h, c, g.run(), g.k);
        }
    }
}

/// A span's state in [`release_grouped`]'s table: [`SpanRun`]'s, without
/// its length (the span is its page), in 40 bytes, and the blocks put
/// back to it.
#[cfg(not(feature = "secure"))]
#[derive(Clone, Copy)]
struct GroupRun {
    m: *mut PageMeta,
    base: usize,
    bits: *mut u64,
    carved: u32,
    free_lo: u32,
    k: u32,
}

#[cfg(not(feature = "secure"))]
impl GroupRun {
    /// The run [`leave_run`] writes back.
    fn run(&self) -> SpanRun {
        SpanRun {
            m: self.m,
            base: self.base,
            len: PAGE_SIZE,
            bits: self.bits,
            carved: self.carved as usize,
            free_lo: self.free_lo,
        }
    }
}

/// Spans [`release_grouped`] holds at once (a power of two, at most 64:
/// the bits of its mask of filled slots). Its frame holds 64 keys and 64
/// slots of 40 bytes: 3 KiB of stack in a `free` that overflows a bin
/// (32 slots, 1.5 KiB, counted 4% more instructions in E158's drop; 48
/// bytes a slot, 4 KiB, 1.5% fewer).
#[cfg(not(feature = "secure"))]
const GROUP_SLOTS: usize = 64;
#[cfg(not(feature = "secure"))]
const _: () = assert!(GROUP_SLOTS.is_power_of_two() && GROUP_SLOTS <= 64);
/// The fewest blocks [`release_blocks`] groups by span ([`release_grouped`]);
/// fewer go in order.
#[cfg(not(feature = "secure"))]
const GROUP_MIN: usize = 32;
/// The most spans of the class the heap may hold for [`release_blocks`]
/// to group a batch by span. With more, grouping measured slower than
/// going in order although it counted fewer instructions (shuffled frees
/// of 100,000–400,000 small blocks: 14–16 ns a `free` against 10; a
/// counting sort by page the same), with at most 16 faster (20,000 and
/// 50,000 blocks: 8–10 against 11–12 ns): E158.
#[cfg(not(feature = "secure"))]
const GROUP_SPANS_MAX: u64 = 16;

/// How many spans [`release_blocks`] gives blocks back to a pass at a time
/// before it takes the rest in order: blocks freed in no particular order
/// alternate between a few spans, and a pass per span puts each span's
/// state in registers once instead of at every change (E115), while a
/// bin's worth of blocks from many spans would cost a pass each.
#[cfg(not(feature = "secure"))]
const SPAN_PASSES: u32 = 4;
/// Blocks a pass looks at before it decides whether to go on: it does if
/// at least a quarter of them are of its span.
#[cfg(not(feature = "secure"))]
const PASS_PROBE: usize = 16;

/// [`release_blocks`] in the blocks' order, one span run after another.
#[cfg(not(feature = "secure"))]
unsafe fn release_in_order(h: *mut Heap, c: usize, bs: *const *mut u8, n: usize) {
    let div = DIV_EXACT[c];
    let mut r = NO_RUN;
    let mut k = 0u32;
    // SAFETY: bs[..n] are free blocks of class c (caller's contract); while
    // k > 0, r is a span of h with k of them put back in r but not in its
    // meta (SpanRun), and not yet accounted, so it stays in use (not
    // released) until leave_run.
    unsafe {
        for i in 0..n {
            let b = *bs.add(i) as usize;
            let mut off = b.wrapping_sub(r.base);
            if off >= r.len {
                // Another heap's block leaves the run as it is: bins that
                // hold remote blocks mix them with their own.
                let Some(next) = switch_run(h, c, r, k, b) else {
                    continue;
                };
                r = next;
                k = 0;
                off = b - r.base;
            }
            put_back(exact_div(off, div), &mut r.carved, &mut r.free_lo, r.bits);
            k += 1;
        }
        if k != 0 {
            leave_run(h, c, r, k);
        }
    }
}

/// A span of the releasing heap while its blocks go back
/// ([`release_blocks`]): its blocks are `[base, base + len)`, it has carved
/// `carved` of them, and its bitmap's lowest word with a free block is
/// at least `free_lo` — the meta's `bump` and `free_lo`, held here and
/// written back by [`leave_run`].
#[cfg(not(feature = "secure"))]
#[derive(Clone, Copy)]
struct SpanRun {
    m: *mut PageMeta,
    base: usize,
    len: usize,
    bits: *mut u64,
    carved: usize,
    free_lo: u32,
}

/// No span: every block is outside it.
#[cfg(not(feature = "secure"))]
const NO_RUN: SpanRun = SpanRun {
    m: null_mut(),
    base: 0,
    len: 0,
    bits: null_mut(),
    carved: 0,
    free_lo: 0,
};

/// The span run of free block `b`, after leaving run `r` if `k` blocks
/// went back to it; None when `b` is another heap's (it goes to the spill
/// array, and `r` stays the run). Inlined, so that the run stays in
/// registers (out of line, E99's first version, a run passed or returned
/// through memory cost more than the call saved).
///
/// # Safety
/// As in [`release_blocks`]; `b` is a free block of class `c`.
#[cfg(not(feature = "secure"))]
#[inline(always)]
unsafe fn switch_run(h: *mut Heap, c: usize, r: SpanRun, k: u32, b: usize) -> Option<SpanRun> {
    // SAFETY: caller's contract; m heads b's span, whose meta only h's
    // thread writes when it is h's. spill_push moves other heaps' blocks
    // only (to the pool, their inboxes, or abandoned heaps' spans), so r's
    // meta, not yet written back, is not read meanwhile.
    unsafe {
        let (t, a) = arena::lookup(b);
        if arena::tag_owner(t) != (*h).id {
            spill_push(h, c, b as *mut u8);
            return None;
        }
        if k != 0 {
            leave_run(h, c, r, k);
        }
        let m = arena::head_meta(b, t, a);
        let base = (*m).base;
        Some(SpanRun {
            m,
            base,
            len: (*m).end as usize - base,
            bits: (*m).bits,
            carved: block_index(m, c, (*m).bump.load(Relaxed)),
            free_lo: (*m).free_lo,
        })
    }
}

/// Writes span run `r` back to its meta and accounts the `k` blocks that
/// went back to it ([`span_freed`], the heap's blocks out).
///
/// # Safety
/// `r` is a span of h that k of the blocks being released went back to.
#[cfg(not(feature = "secure"))]
#[inline(always)]
unsafe fn leave_run(h: *mut Heap, c: usize, r: SpanRun, k: u32) {
    // SAFETY: caller's contract.
    unsafe {
        let bump = r.base + r.carved * CLASS_SIZE[c] as usize;
        (*r.m).bump.store(bump as *mut u8, Relaxed);
        (*r.m).free_lo = r.free_lo;
        span_freed(h, c, r.m, k);
        let bo = &(*h).blocks_out[c];
        bo.store(bo.load(Relaxed) - k as u64, Relaxed);
    }
}

/// [`release_blocks`] of the secure build: each block on its span's chain
/// ([`span_push`]); the carving point only grows there.
#[cfg(feature = "secure")]
unsafe fn release_blocks(h: *mut Heap, c: usize, bs: *mut *mut u8, n: usize) {
    let span_bytes = SPAN_PAGES[c] as usize * PAGE_SIZE;
    // SAFETY: bs[..n] are free blocks of class c (caller's contract); m,
    // when not null, is a span of h whose run is [lo, lo + span_bytes)
    // and which has k of them pushed but not yet accounted, so it stays
    // in use (not released) until span_freed below.
    unsafe {
        let mut m: *mut PageMeta = null_mut();
        let mut lo = 0usize;
        let mut k = 0u32;
        let mut own = 0u64;
        for i in 0..n {
            let b = *bs.add(i);
            if (b as usize).wrapping_sub(lo) >= span_bytes {
                let (t, a) = arena::lookup(b as usize);
                if arena::tag_owner(t) != (*h).id {
                    spill_push(h, c, b);
                    continue;
                }
                if k != 0 {
                    span_freed(h, c, m, k);
                    k = 0;
                }
                m = arena::head_meta(b as usize, t, a);
                lo = (*m).addr;
            }
            span_push(m, b);
            k += 1;
            own += 1;
        }
        if k != 0 {
            span_freed(h, c, m, k);
        }
        let bo = &(*h).blocks_out[c];
        bo.store(bo.load(Relaxed) - own, Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The pool: remote blocks in bulk, for any heap (E19)

/// A per-class pool of batches of free blocks that any heap may refill
/// from. A thread whose spill array of remote blocks (other heaps' blocks
/// it freed) is full puts the blocks of owners whose threads run here, in
/// one batch (E50), instead of into the owners' inboxes, where only the
/// owner could reuse them (blocks of exited threads' heaps still go home:
/// those heaps are reclaimed through their inboxes). Without it, a thread draining a backed-up queue sent
/// thousands of blocks home at once and the owner, waiting for a core,
/// could not reuse them while the running threads carved fresh memory
/// (docs/PERFORMANCE.md E16–E19). Blocks stay their owners': a heap that
/// takes a batch holds them like remote blocks freed into its bin. The
/// pool is bounded, softly ([`POOL_CLASS_BYTES`], [`POOL_BYTES`]), and a class's
/// batches that sat through a whole GC period with none of the class taken
/// go home ([`pool_gc`]).
#[repr(align(128))]
struct Pool {
    lock: Mutex,
    /// Batches put in since the last [`pool_gc`] that found the class idle,
    /// linked through their heads' second word; written with `lock` held,
    /// read without it only as an emptiness hint.
    head: AtomicPtr<u8>,
    /// The batches that were in `head` at that call: the next call that
    /// finds the class idle sends them home. Taken after `head`.
    old: AtomicPtr<u8>,
    /// Blocks in the pool.
    count: AtomicU64,
    /// A batch was taken since the last [`pool_gc`].
    taken: AtomicU32,
    /// Bytes of this class last added to [`POOL_TOTAL`] (written with
    /// `lock` held): the total moves in steps of [`TOTAL_STEP`] or more.
    reported: AtomicU64,
}
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_POOL: Pool = Pool {
    lock: Mutex::new(),
    head: AtomicPtr::new(null_mut()),
    old: AtomicPtr::new(null_mut()),
    count: AtomicU64::new(0),
    taken: AtomicU32::new(0),
    reported: AtomicU64::new(0),
};
static POOL: [Pool; NUM_CLASSES] = [EMPTY_POOL; NUM_CLASSES];
/// In a fork child, the blocks of the parent's other threads' heaps
/// (orphaned by [`fork_child`]) that the child frees: they have no home to
/// go to, so they wait here for any heap's refill, after [`POOL`], and
/// [`pool_gc`] leaves them alone (cycling them through the spill arrays
/// every 100 ms would cost a pass over all of them each time).
static ORPHAN_POOL: [Pool; NUM_CLASSES] = [EMPTY_POOL; NUM_CLASSES];
/// Set by [`fork_child`] when it orphaned a heap: only then is
/// [`ORPHAN_POOL`] looked at.
static ORPHANS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Bytes of blocks one class's pool may hold (E81: 16 MiB before; at T >= 8
/// with queues backed up, the pool was full and most remote blocks went
/// home to owners waiting for a core, while the running threads carved).
const POOL_CLASS_BYTES: u64 = 64 << 20;
/// Bytes of blocks all pools together may hold (E81: 64 MiB before).
const POOL_BYTES: u64 = 256 << 20;
static POOL_TOTAL: AtomicU64 = AtomicU64::new(0);
/// How far a class's pooled bytes may drift from what it last added to
/// [`POOL_TOTAL`] before the total is updated (E85): the one line every
/// class shares is written about once per 1 MiB of blocks pooled or taken,
/// not once per batch, and the total is off by at most this much per class.
const TOTAL_STEP: u64 = 1 << 20;
/// When the pools are next looked at by [`pool_gc`] (coarse ms).
static POOL_GC_AT: AtomicU64 = AtomicU64::new(0);

/// Puts `blocks` (free blocks of class `c`, other heaps' blocks that `h`
/// freed) into the pool as one batch, if the pool has room (else false:
/// the caller sends them home).
unsafe fn pool_put(h: *mut Heap, c: usize, blocks: &[*mut u8]) -> bool {
    // SAFETY: h is held; the blocks are free and ours to give away.
    unsafe {
        // (`secure` builds pooled classes up to 2 KiB only from E22 until
        // E82: pooling the larger ones made the main lane's remote cells
        // 1.5-1.7x slower, which was the purge-and-refault churn E81's
        // back-off removed.)
        if (*h).pool_off {
            return false;
        }
        pool_insert(&POOL[c], c, blocks)
    }
}

/// Moves the blocks among `s[..n]` whose owner heaps (`owners[..n]`, kept
/// in step) are in `state` to the front of both arrays; returns how many.
///
/// # Safety
/// `s` and `owners` hold `n` entries each; every owner is a registered heap.
unsafe fn owned_first(s: *mut *mut u8, owners: *mut u32, n: usize, state: u32) -> usize {
    let mut a = 0;
    for i in 0..n {
        // SAFETY: i < n; owners name registered heaps.
        unsafe {
            if (*owner_heap(*owners.add(i))).state.load(Relaxed) == state {
                core::ptr::swap(s.add(i), s.add(a));
                core::ptr::swap(owners.add(i), owners.add(a));
                a += 1;
            }
        }
    }
    a
}

/// Puts `blocks` into `p` (a pool of class `c`) as one batch, whether or
/// not `pool_gc` runs: false when the pool is full.
///
/// # Safety
/// As [`pool_put`].
unsafe fn pool_insert(p: &Pool, c: usize, blocks: &[*mut u8]) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        let n = blocks.len();
        let bytes = n as u64 * CLASS_SIZE[c] as u64;
        if (p.count.load(Relaxed) * CLASS_SIZE[c] as u64 + bytes > POOL_CLASS_BYTES)
            || POOL_TOTAL.load(Relaxed) + bytes > POOL_BYTES
        {
            return false;
        }
        let batch = build_carriers(blocks, inbox::carrier_cap(CLASS_SIZE[c] as usize));
        p.lock.lock();
        inbox::set_next_batch(batch, p.head.load(Relaxed));
        p.head.store(batch, Relaxed);
        let pooled = p.count.load(Relaxed) + n as u64;
        p.count.store(pooled, Relaxed);
        let delta = report(p, pooled * CLASS_SIZE[c] as u64);
        p.lock.unlock();
        total_add(delta);
        true
    }
}

/// Takes the newest batch of pool `p`, or null.
fn pool_take(p: &Pool) -> *mut u8 {
    if p.head.load(Relaxed).is_null() && p.old.load(Relaxed).is_null() {
        return null_mut();
    }
    p.lock.lock();
    let mut batch = null_mut();
    for list in [&p.head, &p.old] {
        batch = list.load(Relaxed);
        if !batch.is_null() {
            // SAFETY: batch heads a batch in the pool (lock held).
            list.store(unsafe { inbox::next_batch(batch) }, Relaxed);
            break;
        }
    }
    p.lock.unlock();
    batch
}

/// Notes that `k` blocks of class `c` left pool `p` and returns to it
/// what is left of the batch they came from (`rest`, may be null), with
/// the lock taken once. The counts are soft (a [`pool_gc`] racing with a
/// taker may count a batch out twice), so they saturate at 0, and a pool
/// found empty here counts 0.
///
/// # Safety
/// `rest` is null or heads a batch of free blocks of class `c`.
unsafe fn pool_count_out(p: &Pool, c: usize, k: u64, rest: *mut u8) {
    p.lock.lock();
    if !rest.is_null() {
        // SAFETY: rest heads a batch of free blocks of class c.
        unsafe { inbox::set_next_batch(rest, p.head.load(Relaxed)) };
        p.head.store(rest, Relaxed);
    }
    let empty = p.head.load(Relaxed).is_null() && p.old.load(Relaxed).is_null();
    let pooled = if empty {
        0
    } else {
        p.count.load(Relaxed).saturating_sub(k)
    };
    p.count.store(pooled, Relaxed);
    let delta = report(p, pooled * CLASS_SIZE[c] as u64);
    p.lock.unlock();
    total_add(delta);
}

/// With pool `p`'s lock held and `bytes` pooled in it now: how much to add
/// to [`POOL_TOTAL`] (0 while within [`TOTAL_STEP`] of what it last added).
fn report(p: &Pool, bytes: u64) -> i64 {
    let was = p.reported.load(Relaxed);
    if bytes.abs_diff(was) < TOTAL_STEP && bytes != 0 {
        return 0;
    }
    p.reported.store(bytes, Relaxed);
    bytes as i64 - was as i64
}

fn total_add(delta: i64) {
    if delta > 0 {
        POOL_TOTAL.fetch_add(delta as u64, Relaxed);
    } else if delta < 0 {
        let d = delta.unsigned_abs();
        let _ = POOL_TOTAL.fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_sub(d)));
    }
}

/// Fills bin `c` of `h` from the pool (in a fork child, then from the
/// orphans' pool).
unsafe fn fill_from_pool(h: *mut Heap, c: usize, want: usize) -> bool {
    let mut p = &POOL[c];
    let mut batch = pool_take(p);
    if !batch.is_null() {
        // (For `pool_gc`, which leaves the orphans' pool alone.)
        p.taken.store(1, Relaxed);
    } else {
        if !ORPHANS.load(Relaxed) {
            return false;
        }
        p = &ORPHAN_POOL[c];
        batch = pool_take(p);
        if batch.is_null() {
            return false;
        }
    }
    // SAFETY: h is held; batch is a batch of free blocks of class c, ours
    // to use now.
    unsafe {
        let cap = inbox::carrier_cap(CLASS_SIZE[c] as usize);
        let bin = &mut (*h).bins.b[c];
        let target = bin.base.add(want);
        let before = bin.top;
        let b = take_chain(bin, batch, c, cap, target);
        let got = bin.top.offset_from(before) as u64;
        pool_count_out(p, c, got, b);
        (*h).pool_taken += got;
        got > 0
    }
}

/// Sends home the pooled blocks of every class no heap took a batch of
/// since the last call that were already in the pool at that call (all of
/// them when `all`), through `h`'s own paths (`release_blocks`, then the
/// spill arrays, with the pool bypassed); the class's newer batches take
/// their place, to go home at the next call if the class stays idle. So a
/// batch waits at least one whole period: one put in just before a call
/// used to go home at once, before any heap could take it.
///
/// # Safety
/// `h` is held by the caller, between operations on its bins.
pub unsafe fn pool_gc(h: *mut Heap, all: bool) {
    // SAFETY: h is held.
    unsafe {
        (*h).pool_off = true;
        for c in 1..NUM_CLASSES {
            let p = &POOL[c];
            if p.taken.swap(0, Relaxed) != 0 && !all {
                continue;
            }
            if p.head.load(Relaxed).is_null() && p.old.load(Relaxed).is_null() {
                continue;
            }
            p.lock.lock();
            let old = p.old.load(Relaxed);
            let young = p.head.load(Relaxed);
            p.head.store(null_mut(), Relaxed);
            p.old.store(if all { null_mut() } else { young }, Relaxed);
            p.lock.unlock();
            let mut home = 0u64;
            for mut batch in [old, if all { young } else { null_mut() }] {
                while !batch.is_null() {
                    let nb = inbox::next_batch(batch);
                    for_each_in_chain(batch, c, |mut b| {
                        home += 1;
                        release_blocks(h, c, &mut b, 1)
                    });
                    batch = nb;
                }
            }
            // (Nothing is returned to the pool: rest is null.)
            pool_count_out(p, c, home, null_mut());
        }
        flush_spills(h);
        (*h).pool_off = false;
    }
}

/// Acquisitions that found a lock taken (statistics): the remote pools'
/// (all classes together), the heap registry's, the shared heap's.
pub fn lock_waits() -> (u64, u64, u64) {
    (
        POOL.iter()
            .chain(ORPHAN_POOL.iter())
            .map(|p| p.lock.waits())
            .sum(),
        REGISTRY_LOCK.waits(),
        SHARED_LOCK.waits(),
    )
}

/// fork(): the pools' locks are held across the fork.
fn pool_fork_prepare() {
    for p in POOL.iter().chain(ORPHAN_POOL.iter()) {
        p.lock.lock();
    }
}
fn pool_fork_parent() {
    for p in POOL.iter().chain(ORPHAN_POOL.iter()) {
        p.lock.unlock();
    }
}
fn pool_fork_child() {
    for p in POOL.iter().chain(ORPHAN_POOL.iter()) {
        p.lock.reset_after_fork();
    }
}

/// Empties spill array `c`: the blocks of running threads' heaps to the
/// pool (see [`Pool`]) as one batch, the rest home grouped by owner, one
/// CAS per owner.
unsafe fn flush_spill(h: *mut Heap, c: usize) {
    let mut orphan_fed = false;
    // SAFETY: h is held; the spill array holds free blocks of other heaps,
    // n <= spill_cap(c) <= SPILL_MAX of them (checked at compile time), so
    // every index below stays inside the scratch arrays.
    unsafe {
        let mut s = (*h).spill_base[c];
        let mut n = (*h).spill_len[c] as usize;
        if pool_whole(h, c, core::slice::from_raw_parts(s, n)) {
            (*h).spill_len[c] = 0;
            return;
        }
        // Scratch arrays, written before they are read: left uninitialised
        // (zeroing them cost a 1.5 KiB memset per flush, about a tenth of
        // the instructions of a flush in the remote cells).
        let mut owners_buf = MaybeUninit::<[u32; SPILL_MAX]>::uninit();
        let mut owners = owners_buf.as_mut_ptr() as *mut u32;
        for i in 0..n {
            *owners.add(i) = arena::tag_owner(arena::lookup(*s.add(i) as usize).0);
        }
        let mut sent = 0u64;
        // Blocks of heaps whose threads run go to the pool, all of them in
        // one batch whatever their owners (a heap that takes it holds them
        // as remote blocks freed into its bin): one operation on the
        // pool's lock and cache line per flush instead of one per owner
        // (E50). Those of an exited thread's heap go home, where its
        // reclaim finds them (E19), and so does everything when the pool
        // is full.
        // In a fork child, the heaps of the parent's other threads are
        // orphaned (`fork_child`): nobody will drain their inboxes, so
        // their blocks go to the orphans' pool, where this process's heaps
        // take them.
        for state in [HEAP_ORPHANED, HEAP_ACTIVE] {
            if state == HEAP_ORPHANED && !ORPHANS.load(Relaxed) {
                continue;
            }
            let a = owned_first(s, owners, n, state);
            let front = core::slice::from_raw_parts(s, a);
            let pooled = a > 0
                && if state == HEAP_ORPHANED {
                    pool_insert(&ORPHAN_POOL[c], c, front)
                } else {
                    pool_put(h, c, front)
                };
            if pooled {
                s = s.add(a);
                owners = owners.add(a);
                n -= a;
                sent += a as u64;
            }
        }
        let cap = inbox::carrier_cap(CLASS_SIZE[c] as usize);
        let mut group_buf = MaybeUninit::<[*mut u8; SPILL_MAX]>::uninit();
        let group = group_buf.as_mut_ptr() as *mut *mut u8;
        while n > 0 {
            // Gather every block bound for the owner of the last one.
            n -= 1;
            let o = *owners.add(n);
            *group = *s.add(n);
            let mut k = 1;
            let mut i = 0;
            while i < n {
                if *owners.add(i) == o {
                    *group.add(k) = *s.add(i);
                    k += 1;
                    n -= 1;
                    *s.add(i) = *s.add(n);
                    *owners.add(i) = *owners.add(n);
                } else {
                    i += 1;
                }
            }
            // SAFETY: group[..k] was just written.
            let group = core::slice::from_raw_parts(group, k);
            sent += k as u64;
            orphan_fed |= send_home(owner_heap(o), group, cap);
        }
        (*h).spill_len[c] = 0;
        (*h).remote_sent
            .store((*h).remote_sent.load(Relaxed) + sent, Relaxed);
    }
    // Blocks went to a heap whose thread has exited: nobody will drain
    // that inbox unless a thread is adopted into it, so drain it (at most
    // every 100 ms) and let its spans and pages go back.
    if orphan_fed {
        reclaim_tick();
    }
}

/// Pools `blocks` (free blocks of class `c`, other heaps') in one batch,
/// with no look at their owners, while every heap that owns blocks runs
/// (no heap is abandoned: E140), and counts them sent; false, with nothing
/// done, when a heap is abandoned or the pool refuses.
///
/// # Safety
/// `h` is held; the blocks are free, of class `c`, and the caller's to give.
unsafe fn pool_whole(h: *mut Heap, c: usize, blocks: &[*mut u8]) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        if ABANDONED_HEAPS.load(Relaxed) != 0 || !pool_put(h, c, blocks) {
            return false;
        }
        (*h).remote_sent.store(
            (*h).remote_sent.load(Relaxed) + blocks.len() as u64,
            Relaxed,
        );
    }
    true
}

/// The heap that owns blocks whose tags name owner `o`.
fn owner_heap(o: u32) -> *mut Heap {
    let dest = heap_of(o);
    if dest.is_null() {
        os::fatal("freed block names an owner heap that does not exist");
    }
    dest
}

/// Publishes `group` (free blocks of `dest`, one class, carriers of `cap`)
/// to `dest`'s inbox as one batch. True when `dest`'s thread has exited:
/// nobody drains that inbox until the caller makes a reclaim run.
///
/// # Safety
/// The blocks are free, of one class, owned by `dest`, and the caller's to send.
unsafe fn send_home(dest: *mut Heap, group: &[*mut u8], cap: usize) -> bool {
    // SAFETY: forwarded contract; dest is a registered heap.
    unsafe {
        (*dest).inbox.publish(build_carriers(group, cap));
        (*dest).state.load(Relaxed) == HEAP_ABANDONED
    }
}

/// Links `blocks` into one batch of carriers (see `inbox`); returns its
/// head. Only the carriers are written to.
unsafe fn build_carriers(blocks: &[*mut u8], cap: usize) -> *mut u8 {
    let mut head: *mut u8 = null_mut();
    for chunk in blocks.chunks(cap + 1) {
        let carrier = chunk[0];
        // SAFETY: every block is free and ours to send; chunk.len() - 1 <= cap.
        unsafe {
            if cap > 0 {
                for (i, &b) in chunk[1..].iter().enumerate() {
                    inbox::set_carried_block(carrier, i, b);
                }
                inbox::set_carried(carrier, chunk.len() - 1);
            }
            inbox::set_next(carrier, head);
        }
        head = carrier;
    }
    head
}

unsafe fn flush_spills(h: *mut Heap) {
    for c in 1..NUM_CLASSES {
        // SAFETY: h is held.
        unsafe {
            if (*h).spill_len[c] != 0 {
                flush_spill(h, c);
            }
        }
    }
}

/// Empties every cache of `h`: bins, spills, inbox and chains; returns its
/// empty spans to the page allocator. With `segments_now`, its segments'
/// free pages are purged and its empty segments released too (`collect()`,
/// and heaps whose threads have exited, at the next reclaim); without, its
/// segments keep the pages freed since their last GC (a thread's exit:
/// the next thread adopts the heap and reuses them, E101).
///
/// # Safety
/// `h` is held by the caller.
pub unsafe fn flush_all(h: *mut Heap, segments_now: bool) {
    // SAFETY: h is held.
    unsafe {
        let (mut q, qc) = take_pending(h);
        if qc != 0 {
            release_blocks(h, qc, &mut q, 1);
        }
        for c in 1..NUM_CLASSES {
            let bin = &mut (*h).bins.b[c];
            let (base, top) = (bin.base, bin.top);
            bin.top = base;
            // Closed again: the next blocks of other heaps freed here go home.
            bin.end = base;
            release_blocks(h, c, base, top.offset_from(base) as usize);
        }
        flush_spills(h);
        drain_inbox(h);
        #[cfg(not(feature = "secure"))]
        crate::segment::gc(h, segments_now);
        #[cfg(feature = "secure")]
        let _ = segments_now; // (no segments in the secure build)
        for c in 1..NUM_CLASSES {
            let mut ch = (*h).chains[c];
            (*h).chains[c] = null_mut();
            while !ch.is_null() {
                let nc = inbox::next_batch(ch);
                let mut k = 0;
                // Chains hold this heap's own blocks: each back to its span.
                for_each_in_chain(ch, c, |x| {
                    release_blocks(h, c, &mut { x }, 1);
                    k += 1;
                });
                (*h).remote_received
                    .store((*h).remote_received.load(Relaxed) + k, Relaxed);
                ch = nc;
            }
            let mut m = (*h).partial[c];
            while !m.is_null() {
                let next = (*m).snext;
                if (*m).used == 0 {
                    (*h).empty_kept[c] -= 1;
                    release_span(h, c, m);
                }
                m = next;
            }
        }
    }
}

/// Takes `h`'s pending block (E108) and its class, 0 when there is none;
/// the next `free` on its thread takes the slow path.
///
/// # Safety
/// `h` is held by the caller.
pub unsafe fn take_pending(h: *mut Heap) -> (*mut u8, usize) {
    // SAFETY: h is held.
    unsafe {
        let b = &mut (*h).bins;
        let qc = b.pending_c;
        b.pending_c = 0;
        (b.pending, qc)
    }
}

// ---------------------------------------------------------------------------
// Threads after teardown: the shared heap

/// Allocates class `c` for a thread without a heap of its own.
pub fn shared_alloc(c: usize) -> *mut u8 {
    SHARED_LOCK.lock();
    let mut h = SHARED.load(Relaxed);
    if h.is_null() {
        init_once();
        h = claim();
        SHARED.store(h, Relaxed);
    }
    let p = if h.is_null() {
        null_mut()
    } else {
        // SAFETY: SHARED_LOCK held, so the shared heap is ours.
        unsafe {
            let bin = &mut (*h).bins.b[c];
            if bin.top != bin.base {
                bin.top = bin.top.sub(1);
                *bin.top
            } else {
                refill(h, c)
            }
        }
    };
    SHARED_LOCK.unlock();
    p
}

/// Frees a small block for a thread without a heap: a one-block batch to
/// its owner's inbox.
///
/// # Safety
/// `p` is a live small block whose tag is `t`.
pub unsafe fn free_without_heap(p: *mut u8, t: u64) {
    let dest = heap_of(arena::tag_owner(t));
    if dest.is_null() {
        os::fatal("freed block names an owner heap that does not exist");
    }
    // SAFETY: p is a free block; a chain of one.
    unsafe {
        inbox::set_next(p, null_mut());
        if inbox::carrier_cap(CLASS_SIZE[arena::tag_class(t)] as usize) > 0 {
            inbox::set_carried(p, 0);
        }
        (*dest).inbox.publish(p);
        if (*dest).state.load(Relaxed) == HEAP_ABANDONED {
            reclaim_tick();
        }
    }
}

// ---------------------------------------------------------------------------
// fork

pub fn fork_prepare() {
    SHARED_LOCK.lock();
    REGISTRY_LOCK.lock();
    pool_fork_prepare();
}
pub fn fork_parent() {
    pool_fork_parent();
    REGISTRY_LOCK.unlock();
    SHARED_LOCK.unlock();
}
/// In the child only the forking thread exists: the heaps other threads
/// held can never be released, and may be mid-update, so they are
/// orphaned (never adopted); what they hold is lost to the child only.
/// Their blocks that the child frees go to [`ORPHAN_POOL`], never home
/// (`flush_spill`, `free_to_closed_bin`).
pub fn fork_child() {
    pool_fork_child();
    REGISTRY_LOCK.reset_after_fork();
    SHARED_LOCK.reset_after_fork();
    let me = heap_of_slot(tls::get());
    let shared = SHARED.load(Relaxed);
    // SAFETY: single-threaded child; REGISTRY is consistent (its lock was
    // held by this thread across the fork).
    let n = unsafe { (*REGISTRY.0.get()).next_id };
    for id in 1..n {
        let h = heap_of(id);
        if h.is_null() || h == me || h == shared {
            continue;
        }
        // SAFETY: h is a registered heap.
        unsafe {
            if (*h).state.load(Relaxed) == HEAP_ACTIVE {
                (*h).state.store(HEAP_ORPHANED, Relaxed);
                STATS.heaps_live.fetch_sub(1, Relaxed);
                ORPHANS.store(true, Relaxed);
            }
        }
    }
}

/// Number of heap ids handed out so far (for statistics).
pub fn heap_count() -> u32 {
    REGISTRY_LOCK.lock();
    // SAFETY: lock held.
    let n = unsafe { (*REGISTRY.0.get()).next_id } - 1;
    REGISTRY_LOCK.unlock();
    n
}

const _: () = assert!(PAGE_SHIFT == 16);
const _: () = assert!(MAX_HEAPS <= arena::MAX_OWNER as usize + 1);
// A heap is one arena page (64,128 bytes on x86_64; 62,592 in secure builds).
const _: () = assert!(HEAP_BYTES <= PAGE_SIZE);

static LAST_RECLAIM: AtomicU64 = AtomicU64::new(0);

/// At most every 100 ms, from a slow path that is about to take fresh
/// pages: drain the inboxes of abandoned heaps (their threads exited), so
/// blocks freed into them return to their spans and their pages to the OS
/// even when no new thread comes to adopt them.
pub fn reclaim_tick() {
    reclaim_at(os::now_ms());
}

fn reclaim_at(now: u64) {
    let last = LAST_RECLAIM.load(Relaxed);
    if now < last + 100
        || LAST_RECLAIM
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    let _ = reclaim_abandoned();
}

/// Out of memory (`take` found no run): gives back what heaps keep for
/// later — `h`'s empty segments, then the segments that exited threads'
/// heaps keep for the next thread (E101) — and calls `take` again after
/// each that freed something.
///
/// # Safety
/// `h` is null or held by the calling thread, between operations on it.
#[cfg(not(feature = "secure"))]
pub unsafe fn retry_after_reclaim<T>(
    h: *mut Heap,
    mut take: impl FnMut() -> Option<T>,
) -> Option<T> {
    // Big blocks kept for any thread (E104) go back to their segments
    // first, so that empty ones can be released.
    #[cfg(not(feature = "secure"))]
    crate::segment::kept_flush(false);
    // SAFETY: caller's contract.
    if !h.is_null() && unsafe { crate::segment::release_for_retry(h) } {
        if let Some(r) = take() {
            return Some(r);
        }
    }
    if reclaim_abandoned() {
        return take();
    }
    None
}

/// Flushes the shared heap and every abandoned heap (their threads are
/// gone; blocks other threads sent them wait in their inboxes).
pub fn collect_shared_and_abandoned() {
    SHARED_LOCK.lock();
    let s = SHARED.load(Relaxed);
    if !s.is_null() {
        // SAFETY: SHARED_LOCK held.
        unsafe { flush_all(s, true) };
    }
    SHARED_LOCK.unlock();
    let _ = reclaim_abandoned();
}

static RECLAIMING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Flushes every abandoned heap in place, holding REGISTRY_LOCK so that a
/// thread claiming a heap meanwhile waits and adopts one (instead of
/// finding the list empty and creating a heap: a leak under thread churn).
/// Lock order REGISTRY_LOCK → PAGES, as in `create`. A nested call (a
/// flush that feeds another abandoned heap) returns at once. True when it
/// flushed a heap.
fn reclaim_abandoned() -> bool {
    if RECLAIMING.swap(true, Acquire) {
        return false;
    }
    REGISTRY_LOCK.lock();
    // SAFETY: REGISTRY_LOCK held: the abandoned heaps are nobody's.
    let any = unsafe {
        let mut h = (*REGISTRY.0.get()).abandoned;
        let any = !h.is_null();
        while !h.is_null() {
            flush_all(h, true);
            #[cfg(not(feature = "secure"))]
            unkeep(h);
            h = (*h).next_abandoned;
        }
        any
    };
    REGISTRY_LOCK.unlock();
    RECLAIMING.store(false, Release);
    any
}

/// Counts a large block of `bytes` allocated (or `freed`) by the calling
/// thread: in its heap ([`Heap::large_blocks`]), or in its shard of
/// [`crate::stats::LARGE`] for a thread without one.
pub fn count_large(bytes: u64, freed: bool) {
    count_large_in(heap_of_slot(tls::get()), bytes, freed);
}

/// [`count_large`] with the calling thread's heap `h` (null: none) known.
#[inline(always)]
pub fn count_large_in(h: *mut Heap, bytes: u64, freed: bool) {
    let (n, b) = if freed {
        (1u64.wrapping_neg(), bytes.wrapping_neg())
    } else {
        (1, bytes)
    };
    add_large(h, n, b);
}

/// Counts a large block of the calling thread's heap `h` (null: none)
/// resized in place by `delta` bytes (wrapping: negative when it shrank),
/// where [`count_large_in`] counts blocks: one global counter for this was
/// a contended line for threads growing buffers at once (M88).
#[inline(always)]
pub fn count_large_resized(h: *mut Heap, delta: u64) {
    add_large(h, 0, delta);
}

/// Adds `n` blocks and `b` bytes (both wrapping) to the large-block
/// counters of heap `h`, or of the calling thread's shard when null.
#[inline(always)]
fn add_large(h: *mut Heap, n: u64, b: u64) {
    if h.is_null() {
        let s = crate::stats::large_shard();
        s.count.fetch_add(n, Relaxed);
        s.bytes.fetch_add(b, Relaxed);
        return;
    }
    // SAFETY: the calling thread's own heap: only it writes these.
    unsafe {
        let c = &(*h).large_blocks;
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
        let c = &(*h).large_bytes;
        c.store(c.load(Relaxed).wrapping_add(b), Relaxed);
    }
}

/// Adds every heap's counters into `s`.
pub fn sum_heaps(s: &mut crate::Stats) {
    let n = heap_count();
    for id in 1..=n {
        let h = heap_of(id);
        if h.is_null() {
            continue;
        }
        // SAFETY: registered heaps are never freed; counters are atomics.
        unsafe {
            s.remote_frees_sent += (*h).remote_sent.load(Relaxed);
            s.remote_frees_received += (*h).remote_received.load(Relaxed);
            s.large_blocks = s.large_blocks.wrapping_add((*h).large_blocks.load(Relaxed));
            s.allocated = s.allocated.wrapping_add((*h).large_bytes.load(Relaxed));
            for c in 1..NUM_CLASSES {
                s.classes[c].blocks += (*h).blocks_out[c].load(Relaxed);
                s.classes[c].spans += (*h).spans[c].load(Relaxed);
            }
            // A segment is in use as a whole for the page allocator; its
            // free pages are not in use, and those never written since
            // their last purge are not resident either.
            #[cfg(not(feature = "secure"))]
            {
                let (free, free_dirty) = crate::segment::free_pages(h);
                s.in_use = s.in_use.saturating_sub(free << PAGE_SHIFT);
                s.resident = s.resident.saturating_sub((free - free_dirty) << PAGE_SHIFT);
            }
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    /// The pool's share of the global total moves in steps (E85): small
    /// changes leave the shared line alone, a change of a step or more, or
    /// an emptied pool, reports the exact difference, so the total stays
    /// within one step per class of the truth and returns to 0.
    #[test]
    fn pool_reports_its_bytes_in_steps() {
        let p = EMPTY_POOL;
        let mut total: i64 = 0;
        let mut pooled = 0u64;
        for (bytes, reported) in [
            (64 << 10, false),
            (TOTAL_STEP - 1, false),
            (TOTAL_STEP, true),
            (TOTAL_STEP + (512 << 10), false),
            (3 * TOTAL_STEP, true),
            (2 * TOTAL_STEP + 1, false),
            (TOTAL_STEP / 2, true),
            (0, true),
        ] {
            pooled = bytes;
            let d = report(&p, bytes);
            assert_eq!(d != 0, reported, "at {bytes} bytes");
            total += d;
            assert!(
                (total - pooled as i64).unsigned_abs() < TOTAL_STEP,
                "total {total} drifted from {pooled}"
            );
        }
        assert_eq!((total, pooled), (0, 0));
    }
}
