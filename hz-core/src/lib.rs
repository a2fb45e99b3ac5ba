//! hz: a thread-scalable general-purpose memory allocator.
//!
//! ```text
//!  malloc(size) ─► class_of ─► thread bin (array stack) ──hit──► block
//!                                  │ miss (heap.rs: refill)
//!                                  ▼
//!            own drained chains ─► own inbox (one swap) ─► partial spans
//!            ─► flush own spill arrays ─► fresh span (arena.rs)
//!  free(ptr) ─► page tag (class, owner) ─► push onto *my* bin, whoever owns it
//!            bin full ─► older half out: mine → their spans;
//!                        others' → spill array → one CAS per owner inbox
//! ```
//!
//! Layers, one module each: `class` (size classes), `os` (the kernel),
//! `arena` (reservations, page tags, page runs, purging), `heap` (thread
//! heaps, bins, spill arrays, spans, slow paths), `inbox` (the remote-free
//! protocol), `tls` (the thread's heap pointer), `stats`, `config`. This file
//! the public API and the fast paths live in `api`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
// Parallel per-class arrays are indexed by class number throughout.
#![allow(clippy::needless_range_loop)]
// Under loom only the protocols are built; the rest of sync is unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

// Under `--cfg loom` only the concurrent protocols are built, over loom's
// atomics, and model-checked (see `loom_models`).
#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
mod arena;
#[cfg(not(loom))]
pub mod class;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod heap;
mod inbox;
#[cfg(loom)]
mod loom_models;
#[cfg(not(loom))]
pub mod os;
#[cfg(all(feature = "secure", not(loom)))]
mod secure;
#[cfg(all(not(feature = "secure"), not(loom)))]
mod segment;
#[cfg(not(loom))]
mod stats;
mod sync;
#[cfg(not(loom))]
mod tls;

#[cfg(not(loom))]
pub use api::*;
#[cfg(not(loom))]
pub use arena::overlaps_reservation;
#[cfg(not(loom))]
pub use heap::registry_range;

/// log2 of the page size: spans, runs and tags work in 64 KiB pages.
pub const PAGE_SHIFT: usize = 16;
/// The allocator's page (not the OS page).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

#[cfg(all(test, not(loom)))]
mod tests;
