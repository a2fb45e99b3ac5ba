//! Statistics: global counters kept on slow paths, per-heap counters summed
//! on demand, and the statistics table written without allocating.
//!
//! Owns: [`STATS`] and the formatting of the table. Fast paths never touch
//! a shared counter: blocks are counted when they leave or return to their
//! spans (a bin refill or overflow moves dozens at once).

use crate::sync::{AtomicU64, Ordering::Relaxed};

pub struct Global {
    pub pages_in_use: AtomicU64,
    pub peak_pages_in_use: AtomicU64,
    pub mapped: AtomicU64,
    pub committed: AtomicU64,
    pub purges: AtomicU64,
    pub purged_bytes: AtomicU64,
    pub dense_spans: AtomicU64,
    pub dense_segments: AtomicU64,
    pub sparse_purges: AtomicU64,
    pub foreign_frees: AtomicU64,
    pub heaps_created: AtomicU64,
    pub heaps_live: AtomicU64,
    pub oom: AtomicU64,
}

#[cfg(not(loom))]
pub static STATS: Global = Global {
    pages_in_use: AtomicU64::new(0),
    peak_pages_in_use: AtomicU64::new(0),
    mapped: AtomicU64::new(0),
    committed: AtomicU64::new(0),
    purges: AtomicU64::new(0),
    purged_bytes: AtomicU64::new(0),
    dense_spans: AtomicU64::new(0),
    dense_segments: AtomicU64::new(0),
    sparse_purges: AtomicU64::new(0),
    foreign_frees: AtomicU64::new(0),
    heaps_created: AtomicU64::new(0),
    heaps_live: AtomicU64::new(0),
    oom: AtomicU64::new(0),
};

/// Large-block counters of threads without a heap (one allocating only
/// large blocks never claims one), spread over cache-line shards picked by
/// the thread's stack address: one shared pair of counters made every
/// large `malloc` and `free` of two such threads a contended line (E62).
#[repr(align(128))]
pub struct LargeShard {
    pub count: AtomicU64,
    pub bytes: AtomicU64,
}

pub const LARGE_SHARDS: usize = 16;

#[cfg(not(loom))]
#[allow(clippy::declare_interior_mutable_const)]
const NO_LARGE: LargeShard = LargeShard {
    count: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};
#[cfg(not(loom))]
pub static LARGE: [LargeShard; LARGE_SHARDS] = [NO_LARGE; LARGE_SHARDS];

/// The calling thread's shard of [`LARGE`], from its stack address:
/// threads' stacks usually lie at least 64 KiB apart, and the hash spreads
/// them over the shards. Threads that land on one shard only share its
/// line; the sums stay exact.
#[cfg(not(loom))]
#[inline]
pub fn large_shard() -> &'static LargeShard {
    let probe = 0u8;
    let a = core::ptr::addr_of!(probe) as usize >> 16;
    let i = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
    &LARGE[i as usize % LARGE_SHARDS]
}

/// Sums [`LARGE`]: (blocks, bytes), both wrapping.
#[cfg(not(loom))]
pub fn large_sums() -> (u64, u64) {
    LARGE.iter().fold((0u64, 0u64), |(n, b), s| {
        (
            n.wrapping_add(s.count.load(Relaxed)),
            b.wrapping_add(s.bytes.load(Relaxed)),
        )
    })
}

/// Raises the peak after pages were taken.
pub fn note_pages() {
    let now = STATS.pages_in_use.load(Relaxed);
    STATS.peak_pages_in_use.fetch_max(now, Relaxed);
}

/// A fixed buffer that implements `core::fmt::Write` (no allocation).
pub struct Buf<const N: usize> {
    pub b: [u8; N],
    pub n: usize,
}
impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Self { b: [0; N], n: 0 }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}
impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let s = s.as_bytes();
        let room = N - self.n;
        let k = s.len().min(room);
        self.b[self.n..self.n + k].copy_from_slice(&s[..k]);
        self.n += k;
        if k < s.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}
