//! Unit tests of the internal layers: page tags, the inbox protocol, heap
//! release and adoption. (Size classes are tested in `class`.) Tests that
//! claim heaps hold `SERIAL`, so adoption order is deterministic.

use crate::arena::{self, make_tag, tag_class, tag_kind, tag_offset, tag_owner};
use crate::heap::{self, HEAPS, HEAP_ABANDONED, HEAP_ACTIVE};
use crate::inbox::{self, Inbox};
use crate::sync::Ordering::*;
use std::sync::{Arc, Mutex};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn tag_fields_round_trip() {
    for (c, k, o, off) in [(1, 1, 1, 0), (48, 2, 0xf_ffff, 17), (0, 3, 5, 0xffff_ffff)] {
        let t = make_tag(c, k, o, off);
        assert_eq!(
            (tag_class(t), tag_kind(t), tag_owner(t), tag_offset(t)),
            (c, k, o, off)
        );
    }
}

#[test]
fn tags_describe_blocks_without_touching_them() {
    let _g = serial();
    std::thread::spawn(|| {
        let p = crate::malloc(100);
        let (t, a) = arena::lookup(p as usize);
        assert_eq!(tag_kind(t), arena::KIND_SMALL);
        assert_eq!(crate::class::CLASS_SIZE[tag_class(t)], 112);
        let me = crate::tls::get() as *mut heap::Heap;
        // SAFETY: this thread's heap.
        assert_eq!(tag_owner(t), unsafe { (*me).id });
        assert_eq!(a, 0);
        let big = crate::malloc(1 << 20);
        let (t, _) = arena::lookup(big as usize + 300_000);
        assert_eq!(tag_kind(t), arena::KIND_LARGE);
        assert_eq!(tag_offset(t), 300_000 >> crate::PAGE_SHIFT);
        // The heap's own pages are metadata, not blocks.
        assert_eq!(tag_kind(arena::lookup(me as usize).0), arena::KIND_META);
        // Not ours: stack, static, null.
        let x = 5u64;
        assert_eq!(arena::lookup(&x as *const u64 as usize).0, 0);
        assert_eq!(arena::lookup(0).0, 0);
        // SAFETY: both blocks are live.
        unsafe {
            crate::free(p);
            crate::free(big);
        }
        // A freed large run's tags are cleared.
        assert_eq!(tag_kind(arena::lookup(big as usize).0), arena::KIND_FREE);
    })
    .join()
    .unwrap();
}

#[test]
fn inbox_delivers_every_block_once() {
    // Four publishers push batches of 1..8 blocks while the owner drains.
    // The blocks are hz blocks (secure builds check that links name one).
    let _g = serial();
    const PER: usize = 2000;
    let inbox = Arc::new(Inbox::new());
    let blocks: Vec<usize> = (0..4 * PER).map(|_| crate::malloc(16) as usize).collect();
    let blocks = Arc::new(blocks);
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let (inbox, blocks) = (inbox.clone(), blocks.clone());
            std::thread::spawn(move || {
                let mine = &blocks[t * PER..(t + 1) * PER];
                for chunk in mine.chunks(1 + t * 2) {
                    // SAFETY: blocks are 16-byte allocations we own.
                    unsafe {
                        for w in chunk.windows(2) {
                            inbox::set_next(w[0] as *mut u8, w[1] as *mut u8);
                        }
                        inbox::set_next(*chunk.last().unwrap() as *mut u8, std::ptr::null_mut());
                        inbox.publish(chunk[0] as *mut u8);
                    }
                }
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let drain = |seen: &mut std::collections::HashSet<usize>| {
        let mut batch = inbox.take_all();
        while !batch.is_null() {
            // SAFETY: published batches are ours after take_all.
            unsafe {
                let nb = inbox::next_batch(batch);
                let mut b = batch;
                while !b.is_null() {
                    assert!(seen.insert(b as usize), "block delivered twice");
                    b = inbox::next(b);
                }
                batch = nb;
            }
        }
    };
    while hs.iter().any(|h| !h.is_finished()) {
        drain(&mut seen);
    }
    for h in hs {
        h.join().unwrap();
    }
    drain(&mut seen);
    assert_eq!(seen.len(), 4 * PER);
    for &b in blocks.iter() {
        // SAFETY: allocated above. The test wrote hz's own (in `secure`
        // builds: encoded) links into these live blocks; a real program
        // cannot forge those, so clear them before freeing.
        unsafe {
            (b as *mut usize).write(0);
            crate::free(b as *mut u8)
        };
    }
}

#[test]
fn exited_heap_is_adopted_with_its_inbox() {
    let _g = serial();
    // Thread A allocates a block and exits: its heap is abandoned.
    let (p, id, gen) = std::thread::spawn(|| {
        let p = crate::malloc(700);
        let h = crate::tls::get() as *mut heap::Heap;
        // SAFETY: this thread's heap.
        (p as usize, unsafe { (*h).id }, unsafe { (*h).generation })
    })
    .join()
    .unwrap();
    let h = HEAPS[id as usize].load(Acquire);
    // SAFETY: registered heaps live forever.
    assert_eq!(unsafe { (*h).state.load(Acquire) }, HEAP_ABANDONED);
    // Another thread frees A's block remotely: it waits in A's inbox.
    let t = arena::lookup(p).0;
    assert_eq!(tag_owner(t), id);
    // A thread past its teardown frees it: a one-block batch to the owner.
    std::thread::spawn(move || {
        crate::tls::set(crate::tls::dead());
        // SAFETY: p is live.
        unsafe { crate::free(p as *mut u8) };
    })
    .join()
    .unwrap();
    // SAFETY: as above.
    assert!(!unsafe { (*h).inbox.is_empty() });
    // Thread B adopts A's heap (last abandoned, first adopted), with a new
    // generation, and its first allocation of that class drains the inbox.
    std::thread::spawn(move || {
        let q = crate::malloc(700);
        let b = crate::tls::get() as *mut heap::Heap;
        // SAFETY: this thread's heap.
        unsafe {
            assert_eq!((*b).id, id, "B adopted A's heap");
            assert_eq!((*b).generation, gen + 1);
            assert_eq!((*b).state.load(Acquire), HEAP_ACTIVE);
            assert!((*b).inbox.is_empty());
        }
        assert_eq!(q as usize, p, "the block freed into the inbox is reused");
        // SAFETY: q is live.
        unsafe { crate::free(q) };
    })
    .join()
    .unwrap();
}

#[test]
fn thread_after_teardown_still_allocates_and_frees() {
    let _g = serial();
    std::thread::spawn(|| {
        let p = crate::malloc(64);
        let me = crate::tls::get() as *mut heap::Heap;
        // Simulate the pthread-key destructor having run.
        crate::tls::set(crate::tls::dead());
        let q = crate::malloc(64);
        assert!(!q.is_null());
        // SAFETY: both live; frees from a dead thread go to inboxes.
        unsafe {
            crate::free(p);
            crate::free(q);
        }
        // Restore so the real destructor flushes normally.
        crate::tls::set(me as *mut heap::Bins);
    })
    .join()
    .unwrap();
}

#[test]
fn the_dense_zone_waits_longer_before_purging() {
    use arena::{zone_delay, Zone};
    // The normal and huge zones keep HZ_PURGE_DELAY_MS as it is.
    assert_eq!(zone_delay(Zone::Normal as usize, 10), 10);
    assert_eq!(zone_delay(Zone::Huge as usize, 10), 10);
    // The dense zone waits at least 100 ms (E129), longer if asked...
    assert_eq!(zone_delay(Zone::Dense as usize, 10), 100);
    assert_eq!(zone_delay(Zone::Dense as usize, 500), 500);
    // ...and purges at once when purging is immediate.
    assert_eq!(zone_delay(Zone::Dense as usize, 0), 0);
}

#[test]
fn pointers_into_the_uncommitted_arena_are_foreign() {
    let p = crate::malloc(100);
    assert!(!p.is_null());
    let a = &arena::ARENAS[0];
    // The arena's last page: far past what any test commits (the tag table
    // is readable there, nothing else is).
    let last = a.base.load(Relaxed) + a.len.load(Relaxed) - crate::PAGE_SIZE;
    assert!(crate::stats().committed < a.len.load(Relaxed) as u64);
    assert_eq!(arena::lookup(last + 64).0, 0);
    // The default build ignores it in `free` (the secure build aborts on
    // any pointer it never handed out: `tests/secure.rs`, case "foreign").
    #[cfg(not(feature = "secure"))]
    {
        let before = crate::stats().foreign_frees;
        // SAFETY: a pointer hz never handed out: free must ignore it (and
        // must not touch it: the page is PROT_NONE).
        unsafe { crate::free((last + 64) as *mut u8) };
        assert!(crate::stats().foreign_frees > before);
    }
    // SAFETY: no preconditions.
    let sys = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    assert_eq!(crate::os::page_size() as i64, sys as i64);
    // SAFETY: a live block.
    unsafe { crate::free(p) };
}
