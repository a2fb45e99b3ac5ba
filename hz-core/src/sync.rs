//! Synchronisation primitives used by hz-core, in one place so that `loom`
//! can replace the atomics under `cfg(loom)` and model-check the protocols.
//!
//! Owns: the atomic types re-export and [`Mutex`], a three-state futex lock
//! (Drepper's "mutex2": 0 unlocked, 1 locked, 2 locked with waiters).
//! Invariants: the lock never allocates and never unwinds; it may be taken
//! in `fork_prepare` and released in the parent/child handlers.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
// Secure builds use no `AtomicBool` (the kept runs are the default build's).
#[cfg_attr(feature = "secure", allow(unused_imports))]
pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// A small futex-based lock that does not allocate and is usable from
/// static storage. Spins briefly, then sleeps in the kernel: on an
/// oversubscribed machine (more threads than cores) a pure spin lock burns
/// the time slice of the very thread it waits for.
pub struct Mutex {
    state: core::sync::atomic::AtomicU32,
    /// Acquisitions that found the lock taken (statistics: `Stats`'
    /// `*_lock_waits`); written only on the contended path.
    waits: core::sync::atomic::AtomicU64,
}

impl Mutex {
    pub const fn new() -> Self {
        Self {
            state: core::sync::atomic::AtomicU32::new(0),
            waits: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many acquisitions found the lock taken (and spun, then maybe
    /// slept) since the process started.
    pub fn waits(&self) -> u64 {
        self.waits.load(core::sync::atomic::Ordering::Relaxed)
    }

    #[inline]
    pub fn lock(&self) {
        use core::sync::atomic::Ordering::*;
        if self.state.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            return;
        }
        self.lock_contended();
    }

    #[cold]
    fn lock_contended(&self) {
        use core::sync::atomic::Ordering::*;
        self.waits.fetch_add(1, Relaxed);
        for _ in 0..64 {
            core::hint::spin_loop();
            if self.state.load(Relaxed) == 0
                && self.state.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
            {
                return;
            }
        }
        // Mark "locked with waiters" and sleep until the holder wakes us.
        while self.state.swap(2, Acquire) != 0 {
            futex_wait(&self.state, 2);
        }
    }

    #[inline]
    pub fn try_lock(&self) -> bool {
        use core::sync::atomic::Ordering::*;
        self.state.compare_exchange(0, 1, Acquire, Relaxed).is_ok()
    }

    #[inline]
    pub fn unlock(&self) {
        use core::sync::atomic::Ordering::*;
        if self.state.swap(0, Release) == 2 {
            futex_wake(&self.state);
        }
    }

    /// Re-initialise in a forked child (only the forking thread exists; the
    /// lock was taken in `fork_prepare` by this very thread).
    pub fn reset_after_fork(&self) {
        self.state.store(0, core::sync::atomic::Ordering::Relaxed);
    }
}

impl Default for Mutex {
    fn default() -> Self {
        Self::new()
    }
}

fn futex_wait(a: &core::sync::atomic::AtomicU32, val: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 we own a reference to; a
    // spurious return (EINTR/EAGAIN) is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            a.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            val,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(a: &core::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            a.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Mutex;
    use core::sync::atomic::Ordering::*;

    #[test]
    fn counts_only_acquisitions_that_wait() {
        let m = Mutex::new();
        m.lock();
        m.unlock();
        assert!(m.try_lock());
        m.unlock();
        assert_eq!(m.waits(), 0, "uncontended acquisitions are not waits");
        m.lock();
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                m.lock();
                m.unlock();
            });
            // The other thread has given up spinning and sleeps on the
            // futex (state 2) while this one holds the lock.
            while m.state.load(Relaxed) != 2 {
                std::thread::yield_now();
            }
            m.unlock();
            t.join().unwrap();
        });
        assert_eq!(m.waits(), 1);
    }
}
