//! loom models of hz's concurrent protocols (built only with `--cfg loom`).
//!
//! Run: `scripts/loom.sh`, i.e.
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p hz-core --lib --release loom`.
//! Each model runs under [`loom::model::Builder`] with a preemption bound
//! (2 or 3), which keeps the exhaustive search to seconds while covering
//! the interleavings that break lock-free code in practice.
//!
//! What is modelled, and how faithfully:
//!
//! 1. **The inbox** ([`crate::inbox::Inbox`], the real code, over loom's
//!    atomics): several publishers push multi-block batches while the owner
//!    takes everything concurrently. Each block carries a payload in a
//!    `loom::cell::UnsafeCell`, written by the publisher before it publishes
//!    and read by the owner after it takes: loom reports any access that the
//!    Release CAS / Acquire swap do not order (a data race), and the model
//!    checks that every block arrives exactly once, each batch as the intact
//!    chain it was published as. A negative control (`relaxed_inbox_*`)
//!    runs the same protocol with a Relaxed publish and must be caught.
//!
//! 2. **Heap release and adoption**, as built in `heap.rs`: a thread exits
//!    (flushes: drains its own inbox; marks the heap abandoned; pushes it on
//!    the abandoned list under the registry lock), then still frees a block
//!    of its old heap (after teardown a free is a one-block publish to the
//!    owner's inbox), while another thread keeps publishing into that heap's
//!    inbox and a new thread claims a heap (pops the abandoned list under
//!    the lock, or creates a fresh heap when it is empty). A second model
//!    races the adoption against `collect` and the periodic reclaim of
//!    abandoned heaps (`reclaim_abandoned`: take the whole abandoned list
//!    under the lock, flush the heaps outside it, put them back). The heap's owner-private state (what `flush_all`/`drain_inbox`
//!    touch: bins, chains, spans) is a loom `UnsafeCell`, so two threads
//!    holding the heap at once, or a hand-over without happens-before, is a
//!    reported race; a holder counter asserts "no double adoption"; nothing
//!    published is lost (every block ends in the heap's private state
//!    exactly once). Heaps are never freed in hz (the `HEAPS` table keeps
//!    them), so publishers may always reach a heap whoever holds it: the
//!    model keeps them in a table too. The registry lock is hz's futex
//!    mutex in reality; here it is loom's `Mutex` (same acquire/release
//!    semantics; the futex lock itself is not model-checked).
//!
//! 3. **Purging pages that other threads free into.** In hz a remote free
//!    never touches a span's metadata: it writes only the freed block's
//!    link words and publishes the block to the owner's inbox. A span's
//!    `used` counts blocks sitting in any inbox, so only the owner, after it
//!    has taken those blocks out of its inbox (Acquire swap), can bring
//!    `used` to 0 and return the span to the page allocator (`free_run`,
//!    under the page lock); only then may a purge (`madvise`, under the
//!    same lock, from any thread's `purge_tick`) discard the pages. The
//!    model checks exactly that chain: a remote thread's writes into a
//!    block happen-before the purge that discards them, in every
//!    interleaving, and the span is purged once it is empty. (Large blocks
//!    have no owner: the freeing thread returns the run itself, so there
//!    is no remote write to race with.) A negative control, in which the
//!    owner does not count blocks in flight to its inbox and frees the span
//!    early, must be caught.

#[cfg(test)]
mod tests {
    use crate::inbox::{self, Inbox};
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
    use loom::sync::{Arc, Mutex};
    use std::ptr::null_mut;

    fn model<F: Fn() + Sync + Send + 'static>(bound: usize, f: F) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(f);
    }

    /// A free block as the inbox sees it: word 0 links the chain, word 1
    /// the next batch; then a payload loom tracks.
    #[repr(C)]
    struct Block {
        links: [*mut u8; 2],
        payload: UnsafeCell<usize>,
    }

    fn new_block(id: usize) -> *mut u8 {
        let b = Box::new(Block {
            links: [null_mut(); 2],
            payload: UnsafeCell::new(0),
        });
        // SAFETY: fresh block, ours alone.
        b.payload.with_mut(|p| unsafe { *p = id });
        Box::into_raw(b) as *mut u8
    }

    /// The freeing thread writes into a block it gives up (hz writes the
    /// link words; the payload write stands for them, tracked by loom).
    fn scribble(b: *mut u8, v: usize) {
        // SAFETY: b is a live Block the caller owns.
        unsafe { (*(b as *mut Block)).payload.with_mut(|p| *p = v) };
    }

    fn payload(b: *mut u8) -> usize {
        // SAFETY: b is a Block the caller owns.
        unsafe { (*(b as *mut Block)).payload.with(|p| *p) }
    }

    /// Links blocks `ids` into one batch (a chain through word 0).
    fn batch(ids: &[usize]) -> *mut u8 {
        let blocks: Vec<*mut u8> = ids.iter().map(|&i| new_block(i)).collect();
        for w in blocks.windows(2) {
            // SAFETY: our fresh blocks.
            unsafe { inbox::set_next(w[0], w[1]) };
        }
        // SAFETY: as above.
        unsafe { inbox::set_next(*blocks.last().unwrap(), null_mut()) };
        blocks[0]
    }

    /// Walks what `take_all` returned: the batches, each as its list of
    /// payloads, freeing the blocks.
    fn drain(mut b: *mut u8, out: &mut Vec<Vec<usize>>) {
        while !b.is_null() {
            // SAFETY: everything taken from an inbox is ours: whole chains
            // of Blocks, batches linked through word 1.
            unsafe {
                let next_batch = inbox::next_batch(b);
                let mut chain = Vec::new();
                let mut x = b;
                while !x.is_null() {
                    let n = inbox::next(x);
                    chain.push(payload(x));
                    drop(Box::from_raw(x as *mut Block));
                    x = n;
                }
                out.push(chain);
                b = next_batch;
            }
        }
    }

    /// Publisher `t`'s batches: ids t*10 + k, in chains of the given shape.
    fn batches_of(t: usize, shape: &[usize]) -> Vec<Vec<usize>> {
        let mut k = 0;
        shape
            .iter()
            .map(|&n| {
                let v: Vec<usize> = (0..n).map(|j| t * 10 + k + j).collect();
                k += n;
                v
            })
            .collect()
    }

    fn assert_exactly(mut got: Vec<Vec<usize>>, mut want: Vec<Vec<usize>>) {
        got.sort();
        want.sort();
        assert_eq!(got, want, "batches lost, duplicated or broken up");
    }

    fn inbox_model(publishers: usize, shape: &'static [usize], owner_takes: usize) {
        let inbox = Arc::new(Inbox::new());
        let mut hs = Vec::new();
        for t in 0..publishers {
            let inbox = inbox.clone();
            hs.push(loom::thread::spawn(move || {
                for ids in batches_of(t, shape) {
                    // SAFETY: a fresh chain we give up.
                    unsafe { inbox.publish(batch(&ids)) };
                }
            }));
        }
        let mut got = Vec::new();
        for _ in 0..owner_takes {
            drain(inbox.take_all(), &mut got);
        }
        for h in hs {
            h.join().unwrap();
        }
        drain(inbox.take_all(), &mut got);
        assert!(inbox.is_empty());
        let want = (0..publishers).flat_map(|t| batches_of(t, shape)).collect();
        assert_exactly(got, want);
    }

    /// Two publishers, two batches each (of 2 and 1 blocks), the owner
    /// taking twice while they publish.
    #[test]
    fn loom_inbox_two_publishers_multi_block_batches() {
        model(3, || inbox_model(2, &[2, 1], 2));
    }

    /// Three publishers, one 2-block batch each, the owner taking once
    /// while they publish.
    #[test]
    fn loom_inbox_three_publishers() {
        model(3, || inbox_model(3, &[2], 1));
    }

    /// Negative control: the same protocol with a Relaxed publish loses
    /// the happens-before edge, and loom must say so.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_relaxed_inbox_is_caught() {
        struct RelaxedInbox(AtomicPtr<u8>);
        model(2, || {
            let inbox = Arc::new(RelaxedInbox(AtomicPtr::new(null_mut())));
            let i2 = inbox.clone();
            let h = loom::thread::spawn(move || {
                let b = batch(&[7, 8]);
                let mut old = i2.0.load(Relaxed);
                loop {
                    // SAFETY: our fresh chain.
                    unsafe { inbox::set_next_batch(b, old) };
                    match i2.0.compare_exchange_weak(old, b, Relaxed, Relaxed) {
                        Ok(_) => break,
                        Err(c) => old = c,
                    }
                }
            });
            let mut got = Vec::new();
            drain(inbox.0.swap(null_mut(), Acquire), &mut got);
            h.join().unwrap();
            drain(inbox.0.swap(null_mut(), Acquire), &mut got);
        });
    }

    // -----------------------------------------------------------------
    // Heap release and adoption

    const ACTIVE: usize = 1;
    const ABANDONED: usize = 2;

    struct MHeap {
        inbox: Inbox,
        state: AtomicUsize,
        /// Threads holding the heap right now (must never exceed 1).
        holders: AtomicUsize,
        /// Owner-private state: the blocks drained from the inbox so far.
        private: UnsafeCell<Vec<usize>>,
    }

    impl MHeap {
        fn new() -> Self {
            MHeap {
                inbox: Inbox::new(),
                state: AtomicUsize::new(ACTIVE),
                holders: AtomicUsize::new(0),
                private: UnsafeCell::new(Vec::new()),
            }
        }
        fn hold(&self) {
            assert_eq!(self.holders.fetch_add(1, Relaxed), 0, "heap adopted twice");
        }
        fn unhold(&self) {
            self.holders.fetch_sub(1, Relaxed);
        }
        /// `drain_inbox` + filing the blocks (what `flush_all` does with
        /// them): only the holder may.
        fn flush(&self) {
            let mut got = Vec::new();
            drain(self.inbox.take_all(), &mut got);
            // SAFETY: the caller holds the heap; loom checks that claim.
            self.private
                .with_mut(|v| unsafe { (*v).extend(got.into_iter().flatten()) });
        }
    }

    struct Registry {
        abandoned: Vec<usize>,
        next_id: usize,
    }

    struct World {
        /// Like `HEAPS`: heaps are never freed, anyone may reach them.
        heaps: Vec<MHeap>,
        registry: Mutex<Registry>,
    }

    impl World {
        fn new(n: usize) -> Arc<World> {
            Arc::new(World {
                heaps: (0..n).map(|_| MHeap::new()).collect(),
                registry: Mutex::new(Registry {
                    abandoned: Vec::new(),
                    next_id: 1, // heap 0 is held by the exiting thread
                }),
            })
        }
        /// `thread_exit`: flush, mark abandoned, push under the lock.
        fn exit(&self, id: usize) {
            let h = &self.heaps[id];
            h.flush();
            h.state.store(ABANDONED, Release);
            h.unhold();
            let mut r = self.registry.lock().unwrap();
            r.abandoned.push(id);
        }
        /// `claim`: pop the abandoned list under the lock, or create.
        fn claim(&self) -> usize {
            let id = {
                let mut r = self.registry.lock().unwrap();
                match r.abandoned.pop() {
                    Some(id) => id,
                    None => {
                        r.next_id += 1;
                        r.next_id - 1
                    }
                }
            };
            let h = &self.heaps[id];
            h.hold();
            h.state.store(ACTIVE, Release);
            id
        }
        /// `free_without_heap` / `flush_spill`: publish to the owner's inbox.
        fn publish(&self, id: usize, ids: &[usize]) {
            // SAFETY: a fresh chain we give up.
            unsafe { self.heaps[id].inbox.publish(batch(ids)) };
        }
        /// `collect_shared_and_abandoned`.
        fn collect(&self) {
            let list = core::mem::take(&mut self.registry.lock().unwrap().abandoned);
            for &id in &list {
                self.heaps[id].hold();
                self.heaps[id].flush();
                self.heaps[id].unhold();
            }
            let mut r = self.registry.lock().unwrap();
            r.abandoned.extend(list);
        }
        /// After every thread is gone: drain heap 0 (as its next holder
        /// would) and return everything it ever received, sorted.
        fn finish(&self) -> Vec<usize> {
            let h = &self.heaps[0];
            h.hold();
            h.flush();
            h.unhold();
            // SAFETY: held (and every other thread is gone).
            let mut v = h.private.with(|v| unsafe { (*v).clone() });
            v.sort();
            v
        }
    }

    /// A thread exits and abandons heap 0, then (torn down) frees one more
    /// of heap 0's blocks; a publisher sends heap 0 two batches meanwhile;
    /// a new thread claims a heap (heap 0 if it is already abandoned) and
    /// drains it. Nothing is lost, heap 0 is never held twice.
    #[test]
    fn loom_heap_exit_adopt_while_publishing() {
        model(3, || {
            let w = World::new(3);
            w.heaps[0].hold();
            // Blocks 1 and 2 already wait in heap 0's inbox.
            w.publish(0, &[1, 2]);
            let w1 = w.clone();
            let exiting = loom::thread::spawn(move || {
                w1.exit(0);
                w1.publish(0, &[3]);
            });
            let w2 = w.clone();
            let publisher = loom::thread::spawn(move || {
                w2.publish(0, &[4, 5]);
                w2.publish(0, &[6]);
            });
            let w3 = w.clone();
            let adopter = loom::thread::spawn(move || {
                let id = w3.claim();
                w3.heaps[id].flush();
                w3.heaps[id].unhold();
                id
            });
            exiting.join().unwrap();
            publisher.join().unwrap();
            let id = adopter.join().unwrap();
            let st = w.heaps[0].state.load(Relaxed);
            if id == 0 {
                assert_eq!(st, ACTIVE);
            } else {
                assert_eq!(st, ABANDONED);
                assert_eq!(w.registry.lock().unwrap().abandoned, vec![0]);
            }
            assert_eq!(w.finish(), vec![1, 2, 3, 4, 5, 6]);
        });
    }

    /// Two threads claim while heap 0 is abandoned and a publisher sends
    /// it a batch: at most one adopts it.
    #[test]
    fn loom_heap_no_double_adoption() {
        model(3, || {
            let w = World::new(4);
            w.heaps[0].hold();
            w.exit(0);
            let mut hs = Vec::new();
            for _ in 0..2 {
                let w = w.clone();
                hs.push(loom::thread::spawn(move || {
                    let id = w.claim();
                    w.heaps[id].flush();
                    w.heaps[id].unhold();
                    id
                }));
            }
            let w2 = w.clone();
            let p = loom::thread::spawn(move || w2.publish(0, &[1, 2]));
            let ids: Vec<usize> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            p.join().unwrap();
            assert_ne!(ids[0], ids[1]);
            assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 1);
            assert_eq!(w.finish(), vec![1, 2]);
        });
    }

    /// `collect` flushes abandoned heaps outside the lock while a thread
    /// exits and another claims: never two holders, nothing lost.
    #[test]
    fn loom_heap_collect_races_adoption() {
        model(3, || {
            let w = World::new(3);
            w.heaps[0].hold();
            let w1 = w.clone();
            let exiting = loom::thread::spawn(move || {
                w1.exit(0);
                w1.publish(0, &[1]);
            });
            let w2 = w.clone();
            let collector = loom::thread::spawn(move || w2.collect());
            let w3 = w.clone();
            let adopter = loom::thread::spawn(move || {
                let id = w3.claim();
                w3.publish(0, &[2, 3]);
                w3.heaps[id].flush();
                w3.heaps[id].unhold();
            });
            exiting.join().unwrap();
            collector.join().unwrap();
            adopter.join().unwrap();
            assert_eq!(w.finish(), vec![1, 2, 3]);
        });
    }

    // -----------------------------------------------------------------
    // Purging a span that other threads free into

    struct Span {
        /// The span's memory: what remote frees write and madvise discards.
        blocks: [*mut u8; 2],
        /// Owner-private: blocks out of the span (live, cached, in flight
        /// to the owner's inbox).
        used: UnsafeCell<u32>,
        inbox: Inbox,
    }
    // SAFETY: the raw block pointers are only dereferenced as the protocol
    // allows (loom checks the accesses through the payload cells).
    unsafe impl Send for Span {}
    unsafe impl Sync for Span {}

    #[derive(Default)]
    struct Pages {
        /// The span was returned (free_run) and waits to be purged.
        dirty: bool,
        purged: bool,
    }

    /// `maybe_purge` with the page lock held: madvise discards the span's
    /// memory, a write to every byte as far as the data is concerned.
    fn purge_locked(s: &Span, st: &mut Pages) {
        if st.dirty {
            for &b in &s.blocks {
                scribble(b, 0);
            }
            st.dirty = false;
            st.purged = true;
        }
    }

    /// The owner takes its inbox and returns the blocks to the span; at
    /// `used == 0` it frees the run (which may purge at once).
    fn owner_drain(s: &Span, pages: &Mutex<Pages>, counts_inflight: bool) {
        let mut b = s.inbox.take_all();
        while !b.is_null() {
            // SAFETY: taken from our inbox: our blocks.
            let nb = unsafe { inbox::next_batch(b) };
            let mut x = b;
            while !x.is_null() {
                // SAFETY: as above.
                x = unsafe { inbox::next(x) };
                if counts_inflight {
                    // SAFETY: the owner alone touches `used`.
                    s.used.with_mut(|u| unsafe { *u -= 1 });
                }
                // SAFETY: the owner alone touches `used`.
                if s.used.with(|u| unsafe { *u }) == 0 {
                    let mut st = pages.lock().unwrap();
                    if !st.purged && !st.dirty {
                        st.dirty = true;
                        purge_locked(s, &mut st);
                    }
                }
            }
            b = nb;
        }
    }

    fn purge_model(counts_inflight: bool) {
        let span = Arc::new(Span {
            blocks: [new_block(0), new_block(1)],
            used: UnsafeCell::new(2),
            inbox: Inbox::new(),
        });
        let pages = Arc::new(Mutex::new(Pages::default()));
        // Block 1 was handed to another thread, which frees it: it writes
        // the block's words and publishes it to the owner's inbox.
        let s1 = span.clone();
        let remote = loom::thread::spawn(move || {
            let b = s1.blocks[1];
            scribble(b, 0xdead);
            // SAFETY: a one-block chain we give up.
            unsafe {
                inbox::set_next(b, null_mut());
                s1.inbox.publish(b);
            }
        });
        // Any thread's slow path: purge_tick (try_lock, purge what is due).
        let (s2, p2) = (span.clone(), pages.clone());
        let purger = loom::thread::spawn(move || {
            if let Ok(mut st) = p2.try_lock() {
                purge_locked(&s2, &mut st);
            }
        });
        // The owner frees block 0 locally, then drains its inbox.
        scribble(span.blocks[0], 0xbeef);
        // SAFETY: owner-private.
        span.used.with_mut(|u| unsafe { *u -= 1 });
        if !counts_inflight {
            // Broken accounting: the block in flight is not counted.
            // SAFETY: owner-private.
            span.used.with_mut(|u| unsafe { *u -= 1 });
            let mut st = pages.lock().unwrap();
            st.dirty = true;
            purge_locked(&span, &mut st);
        }
        owner_drain(&span, &pages, counts_inflight);
        remote.join().unwrap();
        purger.join().unwrap();
        // Later slow paths of the owner.
        owner_drain(&span, &pages, counts_inflight);
        purge_locked(&span, &mut pages.lock().unwrap());
        // SAFETY: every thread is done.
        assert_eq!(span.used.with(|u| unsafe { *u }), 0);
        assert!(
            pages.lock().unwrap().purged,
            "an empty span was never purged"
        );
        for &b in &span.blocks {
            // SAFETY: every thread is done; the blocks are ours again.
            drop(unsafe { Box::from_raw(b as *mut Block) });
        }
    }

    /// A remote free into a span races the owner's drain and another
    /// thread's purge: the span is purged only after the remote write.
    #[test]
    fn loom_purge_after_remote_free() {
        model(3, || purge_model(true));
    }

    /// Negative control: an owner that does not count blocks in flight
    /// frees and purges the span under the remote thread's feet.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn loom_purge_without_inflight_count_is_caught() {
        model(2, || purge_model(false));
    }
}
