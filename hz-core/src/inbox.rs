//! The remote-free protocol: each heap's inbox.
//!
//! Owns: [`Inbox`], a lock-free stack of *batches*, and the layout of the
//! free blocks that make up a batch. A batch holds blocks of one size class
//! as a chain of *carriers*: each carrier is one of the batch's blocks,
//! and carries in its own memory the addresses of up to
//! [`carrier_cap`]`(size)` further blocks of the batch, so the owner reads
//! one carrier (a few contiguous cache lines) per dozens of blocks instead
//! of chasing a pointer through every block (hz3's drain cost):
//!
//! ```text
//!  word 0: next carrier of this batch     word 1: next batch (batch head only)
//!  word 2: n, blocks carried              words 3..3+n: their addresses
//! ```
//! 16-byte blocks have no word 2: they carry nothing and form a plain chain.
//! Blocks are ≥ 16 bytes, so words 0 and 1 always exist.
//!
//! ```text
//!            publish(batch) by any thread: one CAS (Release)
//!          ┌──────────────────────────────┐
//!          ▼                              │
//!   ┌─────────────┐  publish   ┌──────────────────────┐
//!   │ EMPTY (null)│ ─────────► │ NONEMPTY: b3→b2→b1→∅ │
//!   └─────────────┘            └──────────────────────┘
//!          ▲      take_all by the owner: one swap(null) (Acquire)
//!          └───────────────────────────────┘
//! ```
//! Invariants: only the owner (the thread holding the heap) takes, and it
//! takes everything in one exchange, so there is no ABA problem and no
//! per-object atomic operation; a publisher writes the batch's links before
//! its Release CAS and the owner reads them after its Acquire swap. The head
//! sits on its own cache line.

use crate::sync::{AtomicPtr, Ordering::*};
use crossbeam_utils::CachePadded;

/// Reads/writes the two link words of a free block.
/// In `secure` builds the words are stored encoded with a per-process
/// secret and checked when read (see `secure`).
#[inline(always)]
pub unsafe fn next(b: *mut u8) -> *mut u8 {
    // SAFETY: b is a free block of at least 16 bytes, 16-aligned.
    unsafe { load_link(b as *mut usize) }
}
#[inline(always)]
pub unsafe fn set_next(b: *mut u8, n: *mut u8) {
    // SAFETY: as above.
    unsafe { store_link(b as *mut usize, n) }
}
#[inline(always)]
pub unsafe fn next_batch(b: *mut u8) -> *mut u8 {
    // SAFETY: as above (second word).
    unsafe { load_link((b as *mut usize).add(1)) }
}
#[inline(always)]
pub unsafe fn set_next_batch(b: *mut u8, n: *mut u8) {
    // SAFETY: as above (second word).
    unsafe { store_link((b as *mut usize).add(1), n) }
}

/// How many further blocks a carrier block of `size` bytes holds.
#[inline(always)]
pub const fn carrier_cap(size: usize) -> usize {
    size.saturating_sub(24) / 8
}

#[cold]
fn corrupt_carrier() -> ! {
    #[cfg(not(loom))]
    crate::os::fatal("remote batch carrier holds an impossible count (heap corruption)");
    #[cfg(loom)]
    panic!("remote batch carrier holds an impossible count");
}

/// Number of blocks carried by `b` (a carrier of a class with
/// `carrier_cap > 0`). Aborts if the count is impossible (corruption).
#[inline(always)]
pub unsafe fn carried(b: *mut u8, cap: usize) -> usize {
    // SAFETY: b is a free block with a word 2.
    let n = unsafe { load_count((b as *mut usize).add(2)) };
    if n > cap {
        corrupt_carrier();
    }
    n
}
#[inline(always)]
pub unsafe fn set_carried(b: *mut u8, n: usize) {
    // SAFETY: b is a free block with a word 2.
    unsafe { store_count((b as *mut usize).add(2), n) }
}
/// The `i`-th block carried by `b`.
#[inline(always)]
pub unsafe fn carried_block(b: *mut u8, i: usize) -> *mut u8 {
    // SAFETY: i < carrier_cap(size of b), inside the block.
    unsafe { load_link((b as *mut usize).add(3 + i)) }
}
#[inline(always)]
pub unsafe fn set_carried_block(b: *mut u8, i: usize, p: *mut u8) {
    // SAFETY: as above.
    unsafe { store_link((b as *mut usize).add(3 + i), p) }
}

#[cfg(any(not(feature = "secure"), loom))]
#[inline(always)]
unsafe fn load_count(w: *mut usize) -> usize {
    // SAFETY: w is word 2 of a free block.
    unsafe { *w }
}
#[cfg(any(not(feature = "secure"), loom))]
#[inline(always)]
unsafe fn store_count(w: *mut usize, n: usize) {
    // SAFETY: w is word 2 of a free block.
    unsafe { *w = n }
}
#[cfg(all(feature = "secure", not(loom)))]
#[inline(always)]
unsafe fn load_count(w: *mut usize) -> usize {
    // SAFETY: w is word 2 of a free block.
    crate::secure::decode_word(unsafe { *w }, w as *mut u8)
}
#[cfg(all(feature = "secure", not(loom)))]
#[inline(always)]
unsafe fn store_count(w: *mut usize, n: usize) {
    // SAFETY: w is word 2 of a free block.
    unsafe { *w = crate::secure::encode(n as *mut u8, w as *mut u8) }
}

#[cfg(any(not(feature = "secure"), loom))]
#[inline(always)]
unsafe fn load_link(w: *mut usize) -> *mut u8 {
    // SAFETY: w is a link word of a free block.
    unsafe { *w as *mut u8 }
}
#[cfg(any(not(feature = "secure"), loom))]
#[inline(always)]
unsafe fn store_link(w: *mut usize, n: *mut u8) {
    // SAFETY: w is a link word of a free block.
    unsafe { *w = n as usize }
}
#[cfg(all(feature = "secure", not(loom)))]
#[inline(always)]
unsafe fn load_link(w: *mut usize) -> *mut u8 {
    // SAFETY: w is a link word of a free block.
    crate::secure::decode(unsafe { *w }, w as *mut u8)
}
#[cfg(all(feature = "secure", not(loom)))]
#[inline(always)]
unsafe fn store_link(w: *mut usize, n: *mut u8) {
    // SAFETY: w is a link word of a free block.
    unsafe { *w = crate::secure::encode(n, w as *mut u8) }
}

pub struct Inbox {
    head: CachePadded<AtomicPtr<u8>>,
}

impl Inbox {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            head: CachePadded::new(AtomicPtr::new(core::ptr::null_mut())),
        }
    }
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            head: CachePadded::new(AtomicPtr::new(core::ptr::null_mut())),
        }
    }

    /// Publishes a batch (its chain already linked through word 0) with one
    /// successful CAS.
    ///
    /// # Safety
    /// `batch` heads a chain of free blocks that the caller gives up.
    pub unsafe fn publish(&self, batch: *mut u8) {
        let mut old = self.head.load(Relaxed);
        loop {
            // SAFETY: we still own `batch` until the CAS succeeds.
            unsafe { set_next_batch(batch, old) };
            match self
                .head
                .compare_exchange_weak(old, batch, Release, Relaxed)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// Takes every published batch with one exchange (owner only).
    #[inline]
    pub fn take_all(&self) -> *mut u8 {
        if self.head.load(Relaxed).is_null() {
            return core::ptr::null_mut();
        }
        self.head.swap(core::ptr::null_mut(), Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.head.load(Relaxed).is_null()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two publishers, one owner draining concurrently: every block arrives
    /// exactly once, in intact chains.
    #[test]
    fn publish_and_drain() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new());
            let mut handles = Vec::new();
            for t in 0..2usize {
                let inbox = inbox.clone();
                handles.push(loom::thread::spawn(move || {
                    // A batch of two 16-byte blocks; word 0 links them.
                    let a = Box::into_raw(Box::new([0usize; 2])) as *mut u8;
                    let b = Box::into_raw(Box::new([0usize; 2])) as *mut u8;
                    // SAFETY: fresh blocks of 16 bytes.
                    unsafe {
                        *(a as *mut usize).add(1) = 0;
                        set_next(a, b);
                        set_next(b, core::ptr::null_mut());
                        *(b as *mut usize).add(1) = 0;
                        // tag the blocks with the publisher id in a side table
                        let _ = t;
                        inbox.publish(a);
                    }
                }));
            }
            let mut got = 0;
            let mut drain = |p: *mut u8| {
                let mut batch = p;
                while !batch.is_null() {
                    // SAFETY: batches published above, now owned by us.
                    unsafe {
                        let nb = next_batch(batch);
                        let mut b = batch;
                        while !b.is_null() {
                            let n = next(b);
                            drop(Box::from_raw(b as *mut [usize; 2]));
                            got += 1;
                            b = n;
                        }
                        batch = nb;
                    }
                }
            };
            drain(inbox.take_all());
            for h in handles {
                h.join().unwrap();
            }
            drain(inbox.take_all());
            assert_eq!(got, 4);
        });
    }
}
