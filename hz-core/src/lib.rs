//! hz: a thread-scalable general-purpose memory allocator.
//!
//! TEMPORARY SKELETON: the public API below is final; the backend in
//! `stub.rs` is a placeholder (one mmap per block) being replaced by the real
//! allocator. Do not rely on its performance.
#![cfg_attr(not(test), no_std)]

mod stub;

use core::alloc::{GlobalAlloc, Layout};

/// The global allocator: `#[global_allocator] static A: hz_core::HzAlloc = hz_core::HzAlloc;`
pub struct HzAlloc;

// SAFETY: every method forwards to the raw API, which returns blocks of at
// least the requested size and alignment, or null.
unsafe impl GlobalAlloc for HzAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        malloc_aligned(l.size(), l.align())
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        calloc_aligned(l.size(), l.align())
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p came from this allocator with layout l.
        unsafe { free_sized(p, l.size()) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: p came from this allocator with layout l.
        unsafe { realloc_aligned(p, n, l.align()) }
    }
}

/// Allocates `size` bytes aligned to 16. Null when out of memory.
pub fn malloc(size: usize) -> *mut u8 {
    stub::alloc(size, 16, false)
}
/// Allocates `size` bytes aligned to `align` (a power of two). Null when out of memory.
pub fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
    stub::alloc(size, align, false)
}
/// Like `malloc`, zero-filled.
pub fn calloc(size: usize) -> *mut u8 {
    stub::alloc(size, 16, true)
}
/// Like `malloc_aligned`, zero-filled.
pub fn calloc_aligned(size: usize, align: usize) -> *mut u8 {
    stub::alloc(size, align, true)
}
/// Frees a block. Null is ignored; a pointer hz never handed out is ignored and counted.
///
/// # Safety
/// `p` is null, or a live block of hz, or not an hz address at all.
pub unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { stub::free(p) }
}
/// Frees a block whose requested size is known (a hint).
///
/// # Safety
/// As [`free`]; `size` is the size it was allocated (or last reallocated) with.
pub unsafe fn free_sized(p: *mut u8, size: usize) {
    let _ = size;
    // SAFETY: forwarded contract.
    unsafe { stub::free(p) }
}
/// Resizes a live block (16-byte alignment). Null on failure, the old block intact.
///
/// # Safety
/// `p` is a live block of hz (not null); `new_size` may be 0 (gives a minimal block).
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { stub::realloc(p, new_size, 16) }
}
/// Resizes a live block keeping alignment `align`. Null on failure, the old block intact.
///
/// # Safety
/// As [`realloc`].
pub unsafe fn realloc_aligned(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { stub::realloc(p, new_size, align) }
}
/// Usable size of a live block (every byte of it may be written); 0 for null or foreign pointers.
///
/// # Safety
/// `p` is null, a live block of hz, or not an hz address.
pub unsafe fn usable_size(p: *const u8) -> usize {
    // SAFETY: forwarded contract.
    unsafe { stub::usable(p) }
}
/// True when `p` points into memory hz manages (without touching `p`).
pub fn owns(p: *const u8) -> bool {
    stub::owns(p)
}
/// Returns all free memory to the OS now (flushes this thread's caches first).
pub fn collect() {}

/// Snapshot of allocator statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub allocated: u64,
    pub peak_allocated: u64,
    pub resident: u64,
    pub mapped: u64,
    pub purges: u64,
    pub purged_bytes: u64,
    pub remote_frees_sent: u64,
    pub remote_frees_received: u64,
    pub foreign_frees: u64,
    pub heaps_live: u64,
    pub heaps_created: u64,
}
/// Current statistics.
pub fn stats() -> Stats {
    Stats::default()
}
/// Writes a human-readable statistics table to file descriptor `fd` (no allocation).
pub fn write_stats(fd: i32) {
    let _ = fd;
}
/// fork() support: call in the prepare / parent / child handlers of `pthread_atfork`.
pub fn fork_prepare() {}
/// See [`fork_prepare`].
pub fn fork_parent() {}
/// See [`fork_prepare`].
pub fn fork_child() {}
