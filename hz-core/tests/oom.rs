//! Out of memory: every entry point returns null when memory runs out, the
//! blocks that exist keep their contents, and once memory is freed hz
//! serves again. Each test re-executes this test binary as a child
//! (`current_exe() <name> --exact --nocapture`, with `HZ_OOM_CHILD=<name>`
//! selecting the child's part), so the child starts with a fresh allocator
//! and its address-space limit cannot hurt the other tests.
//!
//! * `oom_rlimit`: the child lowers `RLIMIT_AS` to its current size plus
//!   384 MiB before hz has reserved anything (`HZ_ARENA_MB=64`, so the
//!   first arena fits and later ones are refused by the kernel).
//! * `oom_fail_reservations`: the first 64 MiB arena exists, then
//!   `hz_core::fail_reservations(0)` refuses every further reservation.
//! * `oom_fail_commits`: a 1 GiB arena with 64 MiB of it committed, then
//!   `hz_core::fail_commits(0)` refuses every further commit (as strict
//!   overcommit does once its limit is spent): the same, with no arena
//!   reserved and kept meanwhile.
//! * `oom_before_first_use`: no reservation ever succeeds: no heap can be
//!   created; every entry point returns null, on any thread; after
//!   `fail_reservations(-1)` hz works.
//! * `oom_reclaims_exited_threads_segments`: the pages a request needs are
//!   in the segment an exited thread's heap keeps for the next thread:
//!   the out-of-memory path reclaims it before failing.
//! * `oom_small_reclaims_exited_threads_segments`: the same for a new
//!   span of a small class.
//! * `aligned_runs_reused`: blocks aligned to an arena's size, freed and
//!   requested again 200 times, reserve no more address space.
//! * `huge_requests`: 1 TiB (under the rlimit), `usize::MAX / 2`,
//!   `isize::MAX`, `usize::MAX`, overflowing alignments: null, nothing
//!   reserved or in use afterwards, live blocks untouched.
//!
//! The test binary's own allocator is the system one (preallocated before
//! the limit is set); only the blocks under test come from hz.

use std::alloc::{GlobalAlloc, Layout};

use hz_core::HzAlloc;

#[path = "reliability/child.rs"]
mod child;

const CHILD: &str = "HZ_OOM_CHILD";
const MIB: usize = 1 << 20;

/// Runs test `name` in a fresh child process; true when we *are* the child
/// (the caller then runs the child part).
fn in_child(name: &str, env: &[(&str, &str)]) -> bool {
    child::in_child(CHILD, name, env, &[])
}

fn vm_bytes() -> usize {
    child::statm_bytes(0)
}

fn limit_address_space(bytes: usize) {
    let r = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) }, 0);
}

/// A block with a pattern, to check that running out of memory leaves
/// existing blocks alone.
struct Sentinel {
    p: *mut u8,
    n: usize,
    seed: u8,
}

impl Sentinel {
    fn new(p: *mut u8, n: usize, seed: u8) -> Sentinel {
        assert!(!p.is_null(), "sentinel allocation of {n} bytes failed");
        for i in 0..n {
            // SAFETY: p has n bytes.
            unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
        }
        Sentinel { p, n, seed }
    }
    fn check(&self, when: &str) {
        for i in 0..self.n {
            // SAFETY: p has n bytes.
            let v = unsafe { *self.p.add(i) };
            assert_eq!(
                v,
                self.seed.wrapping_add(i as u8),
                "{when}: sentinel {:p} ({} bytes) byte {i} changed",
                self.p,
                self.n
            );
        }
    }
}

/// Blocks held while exhausting memory (capacity reserved up front: the
/// system allocator may be out of memory too).
struct Held(Vec<usize>);

impl Held {
    /// Calls `f` until it returns null; returns how many it took. The
    /// entry point must give up within `max` calls.
    fn until_null(&mut self, what: &str, max: usize, mut f: impl FnMut() -> *mut u8) -> usize {
        for i in 0..max {
            let p = f();
            if p.is_null() {
                return i;
            }
            assert!(self.0.len() < self.0.capacity(), "{what}: too many blocks");
            self.0.push(p as usize);
        }
        panic!("{what}: still not null after {max} calls");
    }
    fn free_all(&mut self) {
        for p in self.0.drain(..) {
            // SAFETY: live blocks of hz.
            unsafe { hz_core::free(p as *mut u8) };
        }
    }
}

/// The part both limits share: memory is (about to be) limited.
fn exhaust_and_recover() {
    let mut held = Held(Vec::with_capacity(1 << 20));
    let small = Sentinel::new(hz_core::malloc(100), 100, 1);
    let medium = Sentinel::new(hz_core::malloc(20_000), 20_000, 2);
    let large = Sentinel::new(hz_core::malloc(3 * MIB), 3 * MIB, 3);
    let glayout = Layout::from_size_align(200, 64).unwrap();
    // SAFETY: non-zero size.
    let global = Sentinel::new(unsafe { HzAlloc.alloc(glayout) }, 200, 4);
    let check_all = |when: &str| {
        for s in [&small, &medium, &large, &global] {
            s.check(when);
        }
    };
    let failed0 = hz_core::stats().failed_allocations;

    // Run out: big runs first, then the room left in this thread's big
    // segment (the 3 MiB block opened one), then pages, then every small
    // path.
    let n16 = held.until_null("malloc(16 MiB)", 1 << 16, || hz_core::malloc(16 * MIB));
    let n2 = held.until_null("malloc(2 MiB)", 1 << 16, || hz_core::malloc(2 * MIB));
    let n1 = held.until_null("malloc(1 MiB)", 1 << 16, || hz_core::malloc(MIB));
    held.until_null("malloc(64 KiB)", 1 << 18, || hz_core::malloc(64 << 10));
    let total = n16 * 16 * MIB + n2 * 2 * MIB + n1 * MIB;
    println!("exhausted after {} MiB in large blocks", total / MIB);
    assert!(total >= 16 * MIB, "ran out after only {} MiB", total / MIB);
    check_all("after exhausting large blocks");

    // Every entry point, small and large, must now give up with null.
    for size in [16, 100, 1000, 5000, 40_000, 131_072] {
        held.until_null("malloc (small)", 1 << 20, || hz_core::malloc(size));
        held.until_null("calloc (small)", 1 << 20, || hz_core::calloc(size));
        held.until_null("malloc_aligned (small)", 1 << 20, || {
            hz_core::malloc_aligned(size, 256)
        });
        held.until_null("calloc_aligned (small)", 1 << 20, || {
            hz_core::calloc_aligned(size, 4096)
        });
        let l = Layout::from_size_align(size, 32).unwrap();
        // SAFETY: non-zero sizes.
        held.until_null("GlobalAlloc::alloc (small)", 1 << 20, || unsafe {
            HzAlloc.alloc(l)
        });
        // SAFETY: as above.
        held.until_null("GlobalAlloc::alloc_zeroed (small)", 1 << 20, || unsafe {
            HzAlloc.alloc_zeroed(l)
        });
    }
    let big = Layout::from_size_align(2 * MIB, 16).unwrap();
    let big_aligned = Layout::from_size_align(MIB, MIB).unwrap();
    assert!(hz_core::malloc(200_000).is_null(), "malloc (large)");
    assert!(hz_core::calloc(200_000).is_null(), "calloc (large)");
    assert!(
        hz_core::malloc_aligned(200_000, MIB).is_null(),
        "malloc_aligned (large)"
    );
    assert!(
        hz_core::calloc_aligned(MIB, 2 * MIB).is_null(),
        "calloc_aligned (large)"
    );
    // SAFETY: non-zero sizes.
    unsafe {
        assert!(HzAlloc.alloc(big).is_null(), "GlobalAlloc::alloc (large)");
        assert!(
            HzAlloc.alloc(big_aligned).is_null(),
            "GlobalAlloc::alloc (aligned)"
        );
        assert!(
            HzAlloc.alloc_zeroed(big).is_null(),
            "GlobalAlloc::alloc_zeroed (large)"
        );
    }
    // Growth by realloc fails and leaves the block where it was.
    // SAFETY: live blocks of hz (the global one with its layout).
    unsafe {
        assert!(
            hz_core::realloc(small.p, 8 * MIB).is_null(),
            "realloc small → large"
        );
        assert!(
            hz_core::realloc(medium.p, 100_000).is_null(),
            "realloc small → bigger class"
        );
        assert!(
            hz_core::realloc(large.p, 64 * MIB).is_null(),
            "realloc large growth"
        );
        assert!(
            hz_core::realloc_aligned(medium.p, 4 * MIB, 16).is_null(),
            "realloc_aligned growth"
        );
        assert!(
            HzAlloc.realloc(global.p, glayout, 4 * MIB).is_null(),
            "GlobalAlloc::realloc growth"
        );
    }
    check_all("after failed allocations");
    assert!(hz_core::stats().failed_allocations > failed0);

    // A thread started now has no heap to get: null, not a crash.
    let t = std::thread::spawn(|| hz_core::malloc(64) as usize)
        .join()
        .unwrap();
    if t != 0 {
        held.0.push(t);
    }

    // Free everything: hz serves again, as much as before.
    held.free_all();
    check_all("after freeing");
    let again = held.until_null("malloc(1 MiB) after freeing", 1 << 16, || {
        hz_core::malloc(MIB)
    });
    println!("served {again} MiB again after freeing");
    assert!(
        again * MIB + 24 * MIB >= total,
        "only {again} MiB could be allocated again (had {} MiB)",
        total / MIB
    );
    held.free_all();
    // Every entry point works again, growth included.
    for p in [
        hz_core::malloc(64),
        hz_core::calloc(5000),
        hz_core::malloc_aligned(300, 4096),
        hz_core::calloc_aligned(MIB, MIB),
        hz_core::malloc(5 * MIB),
    ] {
        assert!(!p.is_null(), "allocation failed after memory was freed");
        held.0.push(p as usize);
    }
    // SAFETY: live blocks of hz; the global one with its layout.
    unsafe {
        let p = hz_core::realloc(small.p, 8 * MIB);
        assert!(!p.is_null(), "realloc growth after freeing");
        Sentinel { p, ..small }.check("after realloc growth");
        hz_core::free(p);
        let q = HzAlloc.realloc(global.p, glayout, 4 * MIB);
        assert!(!q.is_null(), "GlobalAlloc::realloc after freeing");
        Sentinel { p: q, ..global }.check("after GlobalAlloc::realloc growth");
        hz_core::free(q);
        let t = std::thread::spawn(|| hz_core::malloc(64) as usize)
            .join()
            .unwrap();
        assert_ne!(t, 0, "a new thread cannot allocate after memory was freed");
        hz_core::free(t as *mut u8);
        hz_core::free(medium.p);
        hz_core::free(large.p);
    }
    held.free_all();
}

#[test]
fn oom_rlimit() {
    if !in_child("oom_rlimit", &[("HZ_ARENA_MB", "64")]) {
        return;
    }
    limit_address_space(vm_bytes() + 384 * MIB);
    exhaust_and_recover();
}

#[test]
fn oom_fail_reservations() {
    if !in_child("oom_fail_reservations", &[("HZ_ARENA_MB", "64")]) {
        return;
    }
    // The first arena is made by the first allocation; no other one after.
    // SAFETY: a live block.
    unsafe { hz_core::free(hz_core::malloc(16)) };
    hz_core::fail_reservations(0);
    exhaust_and_recover();
}

#[test]
fn oom_fail_commits() {
    if !in_child("oom_fail_commits", &[("HZ_ARENA_MB", "1024")]) {
        return;
    }
    // 64 MiB of the arena made usable, then freed: what is left to serve.
    // SAFETY: a live block.
    unsafe { hz_core::free(hz_core::malloc(64 * MIB)) };
    let before = hz_core::stats();
    assert!(before.committed >= 64 * MIB as u64);
    assert!(
        before.committed < before.mapped / 4,
        "{} MiB of {} MiB reserved committed",
        before.committed / MIB as u64,
        before.mapped / MIB as u64
    );
    // The kernel now refuses every commit (strict overcommit, its limit
    // spent) while the arena still has 900 MiB of address space left.
    hz_core::fail_commits(0);
    exhaust_and_recover();
    let after = hz_core::stats();
    assert_eq!(
        after.committed, before.committed,
        "committed without a commit"
    );
    assert_eq!(
        after.mapped, before.mapped,
        "arenas reserved (and kept) although none could be committed"
    );
    hz_core::fail_commits(-1);
    let p = hz_core::malloc(200 * MIB);
    assert!(!p.is_null(), "no recovery once commits succeed");
    // SAFETY: a live block.
    unsafe { hz_core::free(p) };
}

#[test]
fn oom_before_first_use() {
    if !in_child("oom_before_first_use", &[]) {
        return;
    }
    hz_core::fail_reservations(0);
    let l = Layout::from_size_align(64, 16).unwrap();
    for _ in 0..3 {
        assert!(hz_core::malloc(16).is_null());
        assert!(hz_core::malloc(MIB).is_null());
        assert!(hz_core::calloc(100).is_null());
        assert!(hz_core::malloc_aligned(100, 4096).is_null());
        assert!(hz_core::calloc_aligned(100, 64).is_null());
        // SAFETY: non-zero size; null pointer realloc is malloc.
        unsafe {
            assert!(HzAlloc.alloc(l).is_null());
            assert!(HzAlloc.alloc_zeroed(l).is_null());
            assert!(hz_core::realloc(std::ptr::null_mut(), 100).is_null());
        }
        let t = std::thread::spawn(|| hz_core::malloc(64).is_null());
        assert!(
            t.join().unwrap(),
            "a thread allocated with no memory at all"
        );
    }
    assert_eq!(hz_core::stats().mapped, 0);
    hz_core::fail_reservations(-1);
    let p = hz_core::malloc(100);
    assert!(
        !p.is_null(),
        "hz does not recover once reservations succeed"
    );
    let t = std::thread::spawn(|| {
        let q = hz_core::calloc(1000);
        assert!(!q.is_null());
        // SAFETY: live block.
        unsafe { hz_core::free(q) };
    });
    t.join().unwrap();
    // SAFETY: live block.
    unsafe { hz_core::free(p) };
}

#[test]
fn huge_requests() {
    if !in_child("huge_requests", &[("HZ_ARENA_MB", "64")]) {
        return;
    }
    limit_address_space(vm_bytes() + 512 * MIB);
    let keep = Sentinel::new(hz_core::malloc(1000), 1000, 9);
    let keep_large = Sentinel::new(hz_core::malloc(MIB), MIB, 10);
    let before = hz_core::stats();
    let tib = 1usize << 40;
    let sizes = [
        tib,
        usize::MAX / 2,
        isize::MAX as usize,
        usize::MAX - 4095,
        usize::MAX,
    ];
    for &n in &sizes {
        assert!(hz_core::malloc(n).is_null(), "malloc({n:#x})");
        assert!(hz_core::calloc(n).is_null(), "calloc({n:#x})");
        assert!(
            hz_core::malloc_aligned(n, 4096).is_null(),
            "malloc_aligned({n:#x})"
        );
        assert!(
            hz_core::calloc_aligned(n, 64).is_null(),
            "calloc_aligned({n:#x})"
        );
        // SAFETY: live blocks of hz.
        unsafe {
            assert!(
                hz_core::realloc(keep.p, n).is_null(),
                "realloc small to {n:#x}"
            );
            assert!(
                hz_core::realloc(keep_large.p, n).is_null(),
                "realloc large to {n:#x}"
            );
        }
        if let Ok(l) = Layout::from_size_align(n, 16) {
            // SAFETY: non-zero size.
            unsafe {
                assert!(HzAlloc.alloc(l).is_null(), "GlobalAlloc::alloc({n:#x})");
                assert!(HzAlloc.alloc_zeroed(l).is_null(), "alloc_zeroed({n:#x})");
            }
        }
    }
    // Absurd alignments.
    assert!(hz_core::malloc_aligned(64, 1 << 62).is_null());
    assert!(hz_core::malloc_aligned(64, 3).is_null());
    assert!(hz_core::calloc_aligned(64, 1 << 45).is_null());
    let after = hz_core::stats();
    assert_eq!(
        after.mapped, before.mapped,
        "a failed request reserved memory"
    );
    assert_eq!(after.in_use, before.in_use, "a failed request kept pages");
    assert_eq!(after.large_blocks, before.large_blocks);
    assert!(after.failed_allocations > before.failed_allocations);
    keep.check("after huge requests");
    keep_large.check("after huge requests");
    // Still serving, including a fresh arena-sized request.
    let p = hz_core::malloc(100 * MIB);
    assert!(!p.is_null(), "hz no longer serves after huge requests");
    // SAFETY: live blocks.
    unsafe {
        hz_core::free(p);
        hz_core::free(keep.p);
        hz_core::free(keep_large.p);
    }
}

/// Blocks aligned to about an arena's size, allocated and freed over and
/// over (64 MiB arenas here, so the alignment costs little address
/// space): each freed block, with the pages skipped to align it, is a free
/// run that the next such request must find. Before, the search wanted
/// `pages + align - 1` free pages in one run, found none, reserved a new
/// arena every time and ran out of arenas after 64 (every later
/// reservation then failing).
#[test]
fn aligned_runs_reused() {
    if !in_child("aligned_runs_reused", &[("HZ_ARENA_MB", "64")]) {
        return;
    }
    for align in [64 * MIB, 128 * MIB] {
        // The first few may reserve an arena: a freed one-page run can be
        // kept whole for the next large block (E61) instead of going back
        // to the free runs. After that, nothing more.
        let mut mapped_after_warmup = 0;
        for i in 0..200 {
            let p = hz_core::malloc_aligned(4096, align);
            assert!(!p.is_null(), "align {align:#x}: request {i} failed");
            assert_eq!(p as usize % align, 0, "align {align:#x}: misaligned");
            // SAFETY: p is a live 4 KiB block of hz.
            unsafe {
                p.write_bytes(0x5a, 4096);
                hz_core::free(p);
            }
            if i == 9 {
                mapped_after_warmup = hz_core::stats().mapped;
            }
        }
        assert_eq!(
            hz_core::stats().mapped,
            mapped_after_warmup,
            "align {align:#x}: freed aligned runs were not reused"
        );
    }
    let p = hz_core::malloc(100 * MIB);
    assert!(!p.is_null(), "hz no longer serves after aligned requests");
    // SAFETY: live block.
    unsafe { hz_core::free(p) };
}

/// In a child with one 64 MiB arena (`HZ_ARENA_MB=64`) and no further
/// reservations: a thread's 6 MiB block comes from a 32 MiB big segment
/// of its heap, freed before the thread exits (E101: the exited heap keeps
/// the segment for the next thread). Then `filler` bytes take the arena's
/// never-used pages but less than `request` needs, so `request` fits only
/// in that segment's pages: the out-of-memory path must reclaim the exited
/// thread's heap before it gives up.
#[cfg(not(feature = "secure"))] // (segments: default build only)
fn needs_an_exited_threads_segment(filler: usize, request: usize) {
    // SAFETY: a live block.
    unsafe { hz_core::free(hz_core::malloc(16)) };
    hz_core::fail_reservations(0);
    std::thread::spawn(|| {
        let p = hz_core::malloc(6 * MIB);
        assert!(!p.is_null());
        // SAFETY: p is a live block of 6 MiB.
        unsafe {
            p.write_bytes(1, 6 * MIB);
            hz_core::free(p);
        }
    })
    .join()
    .unwrap();
    let f = hz_core::malloc(filler);
    assert!(!f.is_null(), "the arena is smaller than this test thinks");
    let p = hz_core::malloc(request);
    assert!(
        !p.is_null(),
        "out of memory while an exited thread's empty segment held the pages"
    );
    // SAFETY: live blocks.
    unsafe {
        hz_core::free(p);
        hz_core::free(f);
    }
}

/// A large request (a page run above 8 MiB).
#[cfg(not(feature = "secure"))] // (segments: default build only)
#[test]
fn oom_reclaims_exited_threads_segments() {
    if in_child(
        "oom_reclaims_exited_threads_segments",
        &[("HZ_ARENA_MB", "64")],
    ) {
        // 28 MiB of the 31.8 MiB left; 30 MiB more.
        needs_an_exited_threads_segment(28 * MIB, 30 * MIB);
    }
}

/// A small block whose class needs a new span.
#[cfg(not(feature = "secure"))] // (segments: default build only)
#[test]
fn oom_small_reclaims_exited_threads_segments() {
    if in_child(
        "oom_small_reclaims_exited_threads_segments",
        &[("HZ_ARENA_MB", "64")],
    ) {
        // All but one page of the arena: 64 MiB less the segment, two
        // heaps and a span (a 64 KiB page each) and one page; then a
        // 64 KiB block, whose class's spans are 8 pages.
        needs_an_exited_threads_segment(32 * MIB - 4 * 65536, 65536);
    }
}

/// Out of memory, big blocks kept for any thread (E104) go back to their
/// segments, so that the calling thread's emptied segment is released and
/// its pages serve the request.
#[cfg(not(feature = "secure"))] // (segments: default build only)
#[test]
fn oom_returns_kept_big_blocks() {
    if in_child("oom_returns_kept_big_blocks", &[("HZ_ARENA_MB", "64")]) {
        // SAFETY: a live block.
        unsafe { hz_core::free(hz_core::malloc(16)) };
        hz_core::fail_reservations(0);
        // This thread's big segment (32 MiB) holds one block, which another
        // thread frees: kept, the segment not empty. (The filler first: its
        // tick runs the kept blocks' GC, the next one is a period away.)
        let p = hz_core::malloc(6 * MIB) as usize;
        assert_ne!(p, 0);
        // 28 MiB of the 31.8 MiB left; 30 MiB more fit only in the segment.
        let f = hz_core::malloc(28 * MIB);
        assert!(!f.is_null(), "the arena is smaller than this test thinks");
        std::thread::spawn(move || {
            // SAFETY: p is a live block of 6 MiB.
            unsafe {
                (p as *mut u8).write_bytes(1, 6 * MIB);
                hz_core::free(p as *mut u8);
            }
        })
        .join()
        .unwrap();
        let q = hz_core::malloc(30 * MIB);
        assert!(
            !q.is_null(),
            "out of memory while a kept big block held its segment"
        );
        // SAFETY: live blocks.
        unsafe {
            hz_core::free(q);
            hz_core::free(f);
        }
    }
}
