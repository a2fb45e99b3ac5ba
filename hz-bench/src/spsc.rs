//! A single-producer single-consumer ring of (pointer, size) pairs: the
//! channel a thread sends its remote frees through.
//!
//! Owns: its buffer, mapped with `mmap` so that the allocator under test never
//! sees it (every allocator pays the same for the rings).
//! Invariants: `tail` is written only by the producer, `head` only by the
//! consumer; `tail - head <= cap`; slots in `head..tail` (mod cap) are
//! initialised and owned by the consumer. The producer publishes a slot with a
//! Release store of `tail`, the consumer reads it after an Acquire load of
//! `tail`; the consumer gives slots back with a Release store of `head`, which
//! the producer loads with Acquire before overwriting them.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One 128-byte line (two on CPUs with adjacent-line prefetch) per index, so
/// producer and consumer never share a line.
#[repr(align(128))]
struct Padded(AtomicUsize);

/// One remote free in flight: the block and the size it was allocated with.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Entry {
    pub ptr: *mut u8,
    pub size: usize,
}

/// The ring. `Sync` because its protocol gives each side exclusive parts.
pub struct Spsc {
    head: Padded,
    tail: Padded,
    buf: *mut Entry,
    cap: usize,
}

// SAFETY: the head/tail protocol in the module comment gives the producer
// exclusive access to the free slots and the consumer to the full ones; the
// raw pointers inside entries are blocks handed over, never shared.
unsafe impl Send for Spsc {}
// SAFETY: as above; `push` is called by one thread only, `drain` by one.
unsafe impl Sync for Spsc {}

impl Spsc {
    /// A ring of `cap` entries (rounded up to a power of two, at least 2).
    pub fn new(cap: usize) -> Spsc {
        let cap = cap.max(2).next_power_of_two();
        let bytes = cap * std::mem::size_of::<Entry>();
        // SAFETY: anonymous private mapping, no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of a {bytes}-byte ring failed");
        Spsc {
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            buf: p.cast(),
            cap,
        }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Producer side: appends `e`, or returns false when the ring is full.
    #[inline(always)]
    pub fn push(&self, e: Entry) -> bool {
        let t = self.tail.0.load(Ordering::Relaxed);
        let h = self.head.0.load(Ordering::Acquire);
        if t.wrapping_sub(h) >= self.cap {
            return false;
        }
        // SAFETY: slot t is outside head..tail, so the consumer does not read
        // it; only this producer writes it; index is masked into the buffer.
        unsafe { self.buf.add(t & (self.cap - 1)).write(e) };
        self.tail.0.store(t.wrapping_add(1), Ordering::Release);
        true
    }

    /// Consumer side: hands every published entry to `f`; returns how many.
    #[inline(always)]
    pub fn drain(&self, mut f: impl FnMut(Entry)) -> usize {
        let h = self.head.0.load(Ordering::Relaxed);
        let t = self.tail.0.load(Ordering::Acquire);
        if h == t {
            return 0;
        }
        let mut i = h;
        while i != t {
            // SAFETY: slots head..tail were written before the Release store
            // of tail that the Acquire load above observed.
            f(unsafe { self.buf.add(i & (self.cap - 1)).read() });
            i = i.wrapping_add(1);
        }
        self.head.0.store(t, Ordering::Release);
        t.wrapping_sub(h)
    }

    /// Consumer side: takes one entry, if any.
    #[inline(always)]
    pub fn pop(&self) -> Option<Entry> {
        let h = self.head.0.load(Ordering::Relaxed);
        let t = self.tail.0.load(Ordering::Acquire);
        if h == t {
            return None;
        }
        // SAFETY: as in `drain`: slot h was published by the producer.
        let e = unsafe { self.buf.add(h & (self.cap - 1)).read() };
        self.head.0.store(h.wrapping_add(1), Ordering::Release);
        Some(e)
    }
}

impl Drop for Spsc {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with exactly this length.
        unsafe { libc::munmap(self.buf.cast(), self.cap * std::mem::size_of::<Entry>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_drains_and_wraps() {
        let r = Spsc::new(4);
        for round in 0..3 {
            for i in 0..4 {
                assert!(r.push(Entry {
                    ptr: std::ptr::null_mut(),
                    size: round * 10 + i
                }));
            }
            assert!(!r.push(Entry {
                ptr: std::ptr::null_mut(),
                size: 99
            }));
            let mut got = vec![];
            assert_eq!(r.drain(|e| got.push(e.size)), 4);
            assert_eq!(got, (0..4).map(|i| round * 10 + i).collect::<Vec<_>>());
        }
        assert!(r.pop().is_none());
    }
}
