//! hz as the `#[global_allocator]` of this test binary: every test below
//! allocates through hz, and verifies every byte it wrote.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread;

#[path = "reliability/child.rs"]
mod child;

#[global_allocator]
static A: hz_core::HzAlloc = hz_core::HzAlloc;

/// Deterministic xorshift for reproducible sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fill(p: *mut u8, n: usize, seed: u8) {
    // SAFETY: callers pass a live block of at least n bytes.
    unsafe { std::ptr::write_bytes(p, seed, n) };
}

fn check(p: *const u8, n: usize, seed: u8) {
    // SAFETY: callers pass a live block of at least n bytes.
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    if let Some(i) = s.iter().position(|&b| b != seed) {
        panic!(
            "block {p:p} byte {i} of {n} is {:#x}, expected {seed:#x}",
            s[i]
        );
    }
}

struct Block {
    p: usize,
    n: usize,
    align: usize,
    seed: u8,
}

impl Block {
    fn new(rng: &mut Rng, max: u64) -> Block {
        let n = 1 + rng.below(max) as usize;
        let align = if rng.below(8) == 0 {
            1usize << (4 + rng.below(9))
        } else {
            8
        };
        let seed = rng.next() as u8;
        // SAFETY: non-zero size, power-of-two align.
        let p = unsafe { A.alloc(Layout::from_size_align(n, align).unwrap()) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "alignment {align}");
        fill(p, n, seed);
        Block {
            p: p as usize,
            n,
            align,
            seed,
        }
    }
    fn free(self) {
        check(self.p as *const u8, self.n, self.seed);
        // SAFETY: allocated above with this layout.
        unsafe {
            A.dealloc(
                self.p as *mut u8,
                Layout::from_size_align(self.n, self.align).unwrap(),
            )
        };
    }
}

#[test]
fn many_threads_pattern_checked() {
    let hs: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut live: Vec<Option<Block>> = (0..500).map(|_| None).collect();
                for _ in 0..60_000 {
                    let i = rng.below(live.len() as u64) as usize;
                    match live[i].take() {
                        Some(b) => b.free(),
                        None => {
                            let max = if rng.below(50) == 0 { 300_000 } else { 2048 };
                            live[i] = Some(Block::new(&mut rng, max));
                        }
                    }
                }
                for b in live.into_iter().flatten() {
                    b.free();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn blocks_freed_by_other_threads() {
    // A ring of threads: each allocates, sends most blocks to the next thread
    // which verifies and frees them.
    const T: usize = 6;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..T).map(|_| mpsc::sync_channel::<Block>(256)).unzip();
    let mut rxs: Vec<Option<_>> = rxs.into_iter().map(Some).collect();
    let hs: Vec<_> = (0..T)
        .map(|t| {
            let tx = txs[(t + 1) % T].clone();
            let rx = rxs[t].take().unwrap();
            thread::spawn(move || {
                let mut rng = Rng(t as u64 * 7919 + 17);
                for i in 0..40_000 {
                    let b = Block::new(&mut rng, 4096);
                    if i % 10 == 0 {
                        b.free();
                    } else if let Err(e) = tx.try_send(b) {
                        match e {
                            mpsc::TrySendError::Full(b) | mpsc::TrySendError::Disconnected(b) => {
                                b.free()
                            }
                        }
                    }
                    while let Ok(b) = rx.try_recv() {
                        b.free();
                    }
                }
                drop(tx);
                rx
            })
        })
        .collect();
    drop(txs);
    let rxs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    for rx in rxs {
        while let Ok(b) = rx.try_recv() {
            b.free();
        }
    }
    let s = hz_core::stats();
    assert!(
        s.remote_frees_sent > 0,
        "remote frees were sent home: {s:?}"
    );
}

/// Blocks that one thread frees for another (still running) thread go to
/// the shared pool, so a third thread reuses them instead of carving
/// fresh memory (E19 in docs/PERFORMANCE.md; the secure build pools only
/// classes up to 2 KiB, E22). In a child process: the pool's bounds are
/// global, and the other tests here, running in parallel, could fill it or
/// take the batch (it failed that way once in `scripts/test.sh`).
#[test]
fn remote_frees_are_reused_by_a_third_thread() {
    if !child::in_child(
        "HZ_GA_CHILD",
        "remote_frees_are_reused_by_a_third_thread",
        &[],
        &[],
    ) {
        return;
    }
    // The pool sends home, at the end of a GC period (100 ms) in which no
    // heap took from it, what it held at the period's start: a run slower
    // than that (a loaded machine, qemu) may find the blocks gone home,
    // which is the design. Such a run is tried again; one that fails within
    // the period fails the test. (Until the fortieth session the pool sent
    // home all it held, so a period's end in the middle of a quick run
    // emptied it too: 1 run in 5 under qemu.)
    for attempt in 1..=5 {
        let start = std::time::Instant::now();
        let reused = third_thread_reuse();
        if reused > N / 4 {
            return;
        }
        let ms = start.elapsed().as_millis();
        assert!(
            ms >= 80,
            "only {reused} of {N} blocks freed remotely were reused by a third thread ({ms} ms)"
        );
        eprintln!("attempt {attempt}: {reused} of {N} reused in {ms} ms, past a GC period");
    }
    eprintln!("SKIPPED: every attempt outlasted the pool's GC period");
}

const N: usize = 1000;

/// One thread allocates N blocks and stays alive, another frees them all
/// (remote frees) and exits, a third allocates as many of the class: how
/// many of its blocks are the freed ones.
fn third_thread_reuse() -> usize {
    const SIZE: usize = if cfg!(feature = "secure") { 1900 } else { 6000 };
    let (to_main, from_owner) = mpsc::channel::<Vec<usize>>();
    let (release_owner, owner_waits) = mpsc::channel::<()>();
    // The owner allocates, hands the blocks over, and stays alive (active)
    // until the end.
    let owner = thread::spawn(move || {
        let v: Vec<usize> = (0..N).map(|_| hz_core::malloc(SIZE) as usize).collect();
        to_main.send(v).unwrap();
        owner_waits.recv().unwrap();
    });
    let blocks = from_owner.recv().unwrap();
    let set: std::collections::HashSet<usize> = blocks.iter().copied().collect();
    // Another thread frees them all (remote frees) and exits, which
    // flushes its caches.
    thread::spawn(move || {
        for &b in &blocks {
            // SAFETY: a live block of hz, freed once.
            unsafe { hz_core::free(b as *mut u8) };
        }
    })
    .join()
    .unwrap();
    // A third thread allocates the same class.
    let reused = thread::spawn(move || {
        let mine: Vec<usize> = (0..N).map(|_| hz_core::malloc(SIZE) as usize).collect();
        let n = mine.iter().filter(|p| set.contains(p)).count();
        for &p in &mine {
            // SAFETY: live blocks of hz.
            unsafe { hz_core::free(p as *mut u8) };
        }
        n
    })
    .join()
    .unwrap();
    release_owner.send(()).unwrap();
    owner.join().unwrap();
    reused
}

#[test]
fn short_lived_threads_blocks_outlive_them() {
    let mut kept: Vec<Vec<u64>> = Vec::new();
    for wave in 0..20 {
        let hs: Vec<_> = (0..16)
            .map(|t| {
                thread::spawn(move || {
                    let mut v = Vec::new();
                    for i in 0..50 {
                        let n = 1 + (i * 37 + t) % 700;
                        v.push(vec![(wave * 1000 + t * 50 + i) as u64; n]);
                    }
                    // Also leave garbage behind in this thread's caches.
                    for i in 0..200 {
                        drop(vec![i as u8; 1 + i * 3]);
                    }
                    v
                })
            })
            .collect();
        for (t, h) in hs.into_iter().enumerate() {
            let v = h.join().unwrap();
            for (i, x) in v.iter().enumerate() {
                assert!(x.iter().all(|&e| e == (wave * 1000 + t * 50 + i) as u64));
            }
            kept.extend(v.into_iter().step_by(2));
        }
        // Free half of what earlier (dead) threads allocated, from here.
        if wave % 2 == 1 {
            kept.truncate(kept.len() / 2);
        }
    }
    let s = hz_core::stats();
    assert!(
        s.heaps_created < 16 * 20,
        "heaps are reused after thread exit: {} created",
        s.heaps_created
    );
}

#[test]
fn over_aligned_layouts() {
    let mut blocks = Vec::new();
    for shift in 4..=23 {
        let align = 1usize << shift;
        for size in [1, 24, align / 2 + 1, align, 3 * align + 5, 200_000] {
            let l = Layout::from_size_align(size.max(1), align).unwrap();
            // SAFETY: valid layout.
            let p = unsafe { A.alloc(l) };
            assert!(!p.is_null(), "align {align} size {size}");
            assert_eq!(p as usize % align, 0, "align {align} size {size}");
            fill(p, l.size(), shift as u8);
            blocks.push((p, l, shift as u8));
        }
    }
    for (p, l, s) in blocks {
        check(p, l.size(), s);
        // SAFETY: allocated above with l.
        unsafe { A.dealloc(p, l) };
    }
    // Page and 2 MiB alignment through the zeroed path too.
    for align in [4096usize, 65536, 2 << 20] {
        let l = Layout::from_size_align(align * 2, align).unwrap();
        // SAFETY: valid layout.
        let p = unsafe { A.alloc_zeroed(l) };
        assert_eq!(p as usize % align, 0);
        check(p, l.size(), 0);
        // SAFETY: allocated above with l.
        unsafe { A.dealloc(p, l) };
    }
}

#[test]
fn realloc_chains_grow_and_shrink() {
    let mut rng = Rng(42);
    for round in 0..30 {
        let align = if round % 3 == 0 { 64 } else { 16 };
        let mut l = Layout::from_size_align(1, align).unwrap();
        // SAFETY: valid layout.
        let mut p = unsafe { A.alloc(l) };
        let seed = round as u8;
        fill(p, 1, seed);
        let mut filled = 1;
        for _ in 0..60 {
            let n = if rng.below(3) == 0 {
                1 + rng.below(l.size() as u64) as usize
            } else {
                1 + rng.below((l.size() * 3) as u64 + 64) as usize
            };
            let n = n.min(8 << 20);
            // SAFETY: p is live with layout l.
            let q = unsafe { A.realloc(p, l, n) };
            assert!(!q.is_null());
            assert_eq!(q as usize % align, 0);
            let keep = filled.min(n);
            check(q, keep, seed);
            fill(q, n, seed);
            filled = n;
            p = q;
            l = Layout::from_size_align(n, align).unwrap();
        }
        // SAFETY: p is live with layout l.
        unsafe { A.dealloc(p, l) };
    }
}

#[test]
fn zeroed_after_dirty_frees() {
    for size in [8usize, 100, 1000, 5000, 40_000, 131_072, 200_000, 3 << 20] {
        let l = Layout::from_size_align(size, 16).unwrap();
        let mut ps = Vec::new();
        for _ in 0..20 {
            // SAFETY: valid layout.
            let p = unsafe { A.alloc(l) };
            fill(p, size, 0xa5);
            ps.push(p);
        }
        for p in ps.drain(..) {
            // SAFETY: allocated above.
            unsafe { A.dealloc(p, l) };
        }
        for _ in 0..20 {
            // SAFETY: valid layout.
            let p = unsafe { A.alloc_zeroed(l) };
            check(p, size, 0);
            fill(p, size, 0x5a);
            ps.push(p);
        }
        for p in ps {
            // SAFETY: allocated above.
            unsafe { A.dealloc(p, l) };
        }
    }
}

#[test]
fn collections_workload() {
    let hs: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut total = 0usize;
                for round in 0..20 {
                    let mut m: HashMap<String, Vec<u32>> = HashMap::new();
                    let mut b: BTreeMap<u64, String> = BTreeMap::new();
                    for i in 0..2000u32 {
                        let k = format!("key-{t}-{round}-{i}");
                        m.entry(k.clone()).or_default().extend(0..(i % 17));
                        b.insert((i as u64 * 2654435761) % 100_003, k);
                    }
                    let mut s = String::new();
                    for (k, v) in b.iter().take(500) {
                        s.push_str(v);
                        s.push_str(&k.to_string());
                    }
                    for (k, v) in &m {
                        let i: u32 = k.rsplit('-').next().unwrap().parse().unwrap();
                        assert_eq!(v.len() as u32, i % 17);
                    }
                    total += s.len() + m.len() + b.len();
                }
                total
            })
        })
        .collect();
    for h in hs {
        assert!(h.join().unwrap() > 0);
    }
}

// (The `secure` build aborts instead: see tests/secure.rs.)
#[cfg(not(feature = "secure"))]
#[test]
fn foreign_pointers_are_ignored_and_counted() {
    let before = hz_core::stats().foreign_frees;
    let mut x = [0u64; 4];
    // SAFETY: hz must ignore a pointer it never handed out.
    unsafe { hz_core::free(x.as_mut_ptr() as *mut u8) };
    static S: [u8; 64] = [0; 64];
    // SAFETY: as above.
    unsafe { hz_core::free(S.as_ptr() as *mut u8) };
    assert_eq!(x[0], 0);
    assert!(hz_core::stats().foreign_frees >= before + 2);
    // SAFETY: as above.
    assert_eq!(unsafe { hz_core::usable_size(x.as_ptr() as *const u8) }, 0);
    assert!(!hz_core::owns(x.as_ptr() as *const u8));
}

#[test]
fn raw_api_usable_size_is_writable() {
    for size in [0usize, 1, 15, 16, 17, 1000, 1025, 131_072, 131_073, 1 << 20] {
        let p = hz_core::malloc(size);
        assert!(!p.is_null());
        assert_eq!(p as usize % 16, 0);
        // SAFETY: p is live.
        let u = unsafe { hz_core::usable_size(p) };
        assert!(u >= size.max(1), "usable {u} < {size}");
        fill(p, u, 7);
        check(p, u, 7);
        // SAFETY: p is live.
        unsafe { hz_core::free(p) };
    }
    // Impossible sizes fail cleanly.
    assert!(hz_core::malloc(usize::MAX).is_null());
    assert!(hz_core::malloc(isize::MAX as usize).is_null());
    assert!(hz_core::malloc_aligned(64, 3).is_null());
}

#[test]
fn fork_while_other_threads_allocate() {
    // hz registers its fork handlers itself: a Rust program needs nothing.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng(t + 99);
                let mut v: Vec<Block> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    v.push(Block::new(&mut rng, 200_000));
                    if v.len() > 300 {
                        v.swap_remove(rng.below(300) as usize).free();
                    }
                }
                v.into_iter().for_each(Block::free);
            })
        })
        .collect();
    for i in 0..20 {
        // SAFETY: fork in a test; the child only allocates, checks and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut rng = Rng(i + 1);
            let bs: Vec<Block> = (0..500).map(|_| Block::new(&mut rng, 100_000)).collect();
            let ok = bs.len() == 500;
            bs.into_iter().for_each(Block::free);
            // SAFETY: leave the child without running the parent's atexit work.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child {i} status {st:#x}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
}
