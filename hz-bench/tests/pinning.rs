//! Pinning a worker thread allocates nothing (M57): the workloads' threads
//! pin themselves before their measured loop, and a block allocated there
//! would sit in the thread's cache of the allocator under test, changing
//! which block the loop's first allocation gets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the calling thread's allocations.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to System; the count is a thread-local Cell with a
// const initializer and no destructor, so touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn pinning_a_thread_allocates_nothing() {
    std::thread::spawn(|| {
        let before = allocs();
        std::hint::black_box(hz_bench::machine::pin_requested());
        let pinned = hz_bench::machine::pin_round_robin(1);
        hz_bench::machine::pin_next_if_requested();
        assert_eq!(allocs(), before, "pinning allocated");
        // The count does see allocations (the check above can fail).
        let v = std::hint::black_box(vec![1u8; 3]);
        assert_eq!(allocs(), before + 1);
        drop(v);
        assert!(pinned, "could not pin to an allowed CPU");
    })
    .join()
    .unwrap();
}
