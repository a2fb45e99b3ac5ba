//! Blocks a thread cache gives back to their own spans (bin overflow) are
//! kept as bits of the span's free-block bitmap (`heap::span_push`; in the
//! secure build, a chain of encoded links through the blocks), and a refill
//! takes them back lowest address first (`heap::fill_from_spans`). Many
//! frees and reallocations of one class must still hand every block out
//! once: every live block keeps its own contents, and no address is live
//! twice.

use std::collections::HashSet;

#[path = "reliability/child.rs"]
mod child;

fn fill(p: *mut u8, size: usize, tag: u32) {
    let b = tag.to_le_bytes();
    for i in 0..size {
        // SAFETY: p is a live block of at least `size` bytes.
        unsafe { *p.add(i) = b[i % 4] };
    }
}

fn intact(p: *mut u8, size: usize, tag: u32) -> bool {
    let b = tag.to_le_bytes();
    // SAFETY: p is a live block of at least `size` bytes.
    (0..size).all(|i| unsafe { *p.add(i) } == b[i % 4])
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// `rounds` times: fills up to `fill_to` live blocks of `size` bytes, each
/// with its own pattern, then gives back all but one in `keep_one_in`,
/// scattered (each checked intact first), and requires no address to be
/// live twice. Frees the rest at the end, checked.
fn churn(size: usize, fill_to: usize, rounds: usize, keep_one_in: u64, seed: u64) {
    let mut rng = seed;
    let mut live: Vec<(*mut u8, u32)> = Vec::new();
    let mut tag = 1u32;
    for round in 0..rounds {
        while live.len() < fill_to {
            let p = hz_core::malloc(size);
            assert!(!p.is_null());
            fill(p, size, tag);
            live.push((p, tag));
            tag += 1;
        }
        let mut keep = Vec::new();
        for (p, t) in live.drain(..) {
            if xorshift(&mut rng).is_multiple_of(keep_one_in) {
                keep.push((p, t));
            } else {
                assert!(
                    intact(p, size, t),
                    "size {size} round {round}: block {p:p} overwritten"
                );
                // SAFETY: p is live, handed out above.
                unsafe { hz_core::free(p) };
            }
        }
        live = keep;
        let set: HashSet<usize> = live.iter().map(|&(p, _)| p as usize).collect();
        assert_eq!(
            set.len(),
            live.len(),
            "size {size}: an address is live twice"
        );
    }
    for (p, t) in live {
        assert!(intact(p, size, t), "size {size}: block {p:p} overwritten");
        // SAFETY: p is live.
        unsafe { hz_core::free(p) };
    }
}

#[test]
fn span_free_lists_hand_each_block_out_once() {
    // 16 B (4 096 blocks to a span), 48 B, 256 B, 1 KiB, 3 KiB, and 20 000 B
    // (a span of several pages). Thousands of blocks, far more than a bin
    // holds; two in three given back each round, so the bin overflows again
    // and again and most of them go back to their spans.
    for size in [16usize, 48, 256, 1024, 3072, 20_000] {
        churn(
            size,
            6000.min((64 << 20) / size),
            4,
            3,
            0x9e37_79b9_7f4a_7c15,
        );
    }
}

/// A program that frees its blocks in the reverse order it allocated them
/// (a list or a stack torn down) gives each span's blocks back just below
/// its carving point: a bin's overflow lowers the point over a whole run of
/// them with one compare a block (`heap::release_below`, E114), a gap (a
/// block kept, or freed out of turn) ends the run, and the rest go through
/// `heap::release_blocks`. Every round must still hand each block
/// out once with its contents intact: runs that reach a span's first block,
/// runs cut by kept blocks, and runs that straddle two spans.
#[test]
fn reverse_frees_give_blocks_back_by_the_carving_point() {
    for (size, n) in [(16usize, 9000), (48, 7000), (512, 3000), (3072, 700)] {
        let mut rng = 0x853c_49e6_748f_ea9bu64;
        let mut kept: Vec<(*mut u8, u32)> = Vec::new();
        let mut tag = 1u32;
        for round in 0..6 {
            let mut live: Vec<(*mut u8, u32)> = (0..n)
                .map(|_| {
                    let p = hz_core::malloc(size);
                    assert!(!p.is_null());
                    fill(p, size, tag);
                    tag += 1;
                    (p, tag - 1)
                })
                .collect();
            let set: HashSet<usize> = live.iter().chain(&kept).map(|&(p, _)| p as usize).collect();
            assert_eq!(
                set.len(),
                live.len() + kept.len(),
                "size {size} round {round}"
            );
            // Newest first; in odd rounds one block in 16 is kept (a gap).
            while let Some((p, t)) = live.pop() {
                assert!(intact(p, size, t), "size {size} round {round}: {p:p}");
                if round % 2 == 1 && xorshift(&mut rng).is_multiple_of(16) {
                    kept.push((p, t));
                } else {
                    // SAFETY: p is live, handed out above.
                    unsafe { hz_core::free(p) };
                }
            }
        }
        for (p, t) in kept {
            assert!(intact(p, size, t), "size {size}: kept block {p:p}");
            // SAFETY: p is live.
            unsafe { hz_core::free(p) };
        }
    }
}

/// Bin overflow gives a bin's oldest blocks back in runs (`heap::release_blocks`):
/// blocks of the span of the block before go back without a tag lookup,
/// and each span's count of blocks in use is updated once per run. Freed
/// in a scattered order, with another thread's blocks among them, every
/// span must still come out empty and go back: afterwards the class holds
/// no more spans than the blocks still in caches keep in use, and none
/// once the caches are flushed. In a child process: a thread of another
/// test could claim the exited thread's heap first, and its inbox then
/// holds the foreign blocks until that thread's next slow path (2 runs in
/// 60 failed so, with 3 087 blocks out).
#[test]
fn scattered_frees_leave_every_span_empty() {
    if !child::in_child(
        "HZ_SPAN_LISTS_CHILD",
        "scattered_frees_leave_every_span_empty",
        &[],
        &[],
    ) {
        return;
    }
    const SIZE: usize = 640; // a class no other test here uses
    let class = |s: &hz_core::Stats| {
        s.classes
            .iter()
            .position(|k| k.size as usize == SIZE)
            .expect("a 640-byte class")
    };
    std::thread::spawn(move || {
        // Another thread's blocks, to be freed here: they go towards their
        // owner (spill arrays), in the middle of the runs of own blocks.
        let foreign: Vec<usize> =
            std::thread::spawn(|| (0..3000).map(|_| hz_core::malloc(SIZE) as usize).collect())
                .join()
                .unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut mine: Vec<usize> = (0..20_000)
            .map(|_| hz_core::malloc(SIZE) as usize)
            .collect();
        assert!(mine.iter().chain(&foreign).all(|&p| p != 0));
        let c = class(&hz_core::stats());
        let spans_full = hz_core::stats().classes[c].spans;
        assert!(
            spans_full >= 20_000 * SIZE as u64 / (1 << 20),
            "{spans_full} spans"
        );
        mine.extend(&foreign);
        // Fisher–Yates: frees in no relation to the carving order.
        for i in (1..mine.len()).rev() {
            mine.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
        }
        for p in mine {
            // SAFETY: each block is live and freed once.
            unsafe { hz_core::free(p as *mut u8) };
        }
        let s = hz_core::stats();
        let (spans, blocks) = (s.classes[c].spans, s.classes[c].blocks);
        // Every span still held has a block out (this thread's bin and
        // spill array, the exited heap's inbox), but for one kept empty
        // per heap.
        assert!(blocks <= 1024, "{blocks} blocks of {SIZE} B still out");
        assert!(
            spans <= blocks + 2,
            "{spans} spans held for {blocks} blocks out"
        );
        // Flushing the caches (this thread's bin goes back in one run,
        // scattered over most of its spans) leaves nothing out and every
        // span returned.
        hz_core::collect();
        let s = hz_core::stats();
        assert_eq!(s.classes[c].blocks, 0, "blocks out after collect");
        assert_eq!(s.classes[c].spans, 0, "spans held after collect");
    })
    .join()
    .unwrap();
}

/// Blocks freed in no relation to their addresses (a hash map dropped in
/// hash order) overflow the bin with blocks of many spans. Where the heap
/// holds at most 16 spans of the class, `heap::release_grouped` gives them
/// back grouped by span through a table of 64 slots keyed by page number
/// mod 64; two spans 64 pages apart share a slot, and the one whose slot
/// the other takes is written back then and loaded again later in the
/// batch. Here 48-byte blocks fill spans with 1 KiB blocks' spans between
/// them until two of theirs are 64 pages apart (with huge pages off, so
/// that spans follow each other in one zone); the 1 KiB blocks are freed,
/// then the 48-byte ones, shuffled, three quarters at a time, allocated
/// again each round: every block kept must keep its contents, no address
/// may be live twice, and after `collect` no span of the class is left.
/// The same with 150 spans of 32-byte blocks, which go back in order.
#[test]
fn blocks_freed_in_hash_order_are_handed_out_once() {
    if !child::in_child(
        "HZ_SPAN_LISTS_CHILD",
        "blocks_freed_in_hash_order_are_handed_out_once",
        &[("HZ_THP", "0")],
        &[],
    ) {
        return;
    }
    // The secure build has no such table (it gives blocks back through
    // encoded chains) and guards its spans: only the second part there.
    #[cfg(not(feature = "secure"))]
    shared_slot_spans();
    churn_shuffled(32, (0..300_000).map(|_| hz_core::malloc(32)).collect());
}

/// The first part of [`blocks_freed_in_hash_order_are_handed_out_once`]:
/// spans of 48-byte blocks until two are 64 pages apart, then their
/// blocks freed shuffled.
#[cfg(not(feature = "secure"))]
fn shared_slot_spans() {
    const SMALL: usize = 48;
    const PAGE: usize = 64 << 10;
    let page = |p: *mut u8| p as usize / PAGE;
    let mut spacers: Vec<*mut u8> = Vec::new();
    let mut small: Vec<*mut u8> = Vec::new();
    let mut pages = std::collections::HashMap::new();
    let mut shared = false;
    for _ in 0..14 {
        // Seven spans of 1 KiB blocks, then a span's worth of 48 B ones.
        spacers.extend((0..7 * 64).map(|_| hz_core::malloc(1024)));
        for _ in 0..(PAGE / SMALL) {
            let p = hz_core::malloc(SMALL);
            assert!(!p.is_null());
            let other = *pages.entry(page(p) % 64).or_insert(page(p));
            shared |= other != page(p);
            small.push(p);
        }
        if shared {
            break;
        }
    }
    assert!(
        shared,
        "no two spans of 48 B blocks 64 pages apart: {:?}",
        pages.values().collect::<Vec<_>>()
    );
    for p in spacers {
        // SAFETY: live blocks of hz, freed once.
        unsafe { hz_core::free(p) };
    }
    churn_shuffled(SMALL, small);
}

/// Fills the live blocks of `size` bytes in `live`, then three rounds:
/// frees three quarters of them shuffled (each checked intact first) and
/// allocates as many again; then frees the rest and flushes the caches:
/// no address live twice, no span of the class left.
fn churn_shuffled(size: usize, live: Vec<*mut u8>) {
    let n = live.len();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ size as u64;
    let mut tag = 1u32;
    let mut live: Vec<(*mut u8, u32)> = live
        .into_iter()
        .map(|p| {
            assert!(!p.is_null());
            fill(p, size, tag);
            tag += 1;
            (p, tag - 1)
        })
        .collect();
    for round in 0..3 {
        for i in (1..live.len()).rev() {
            live.swap(i, (xorshift(&mut rng) % (i as u64 + 1)) as usize);
        }
        for (p, t) in live.drain(n / 4..) {
            assert!(intact(p, size, t), "size {size} round {round}: {p:p}");
            // SAFETY: p is live, handed out above, freed once.
            unsafe { hz_core::free(p) };
        }
        while live.len() < n {
            let p = hz_core::malloc(size);
            assert!(!p.is_null());
            fill(p, size, tag);
            live.push((p, tag));
            tag += 1;
        }
        let set: HashSet<usize> = live.iter().map(|&(p, _)| p as usize).collect();
        assert_eq!(
            set.len(),
            n,
            "size {size} round {round}: an address live twice"
        );
    }
    for (p, t) in live {
        assert!(intact(p, size, t), "size {size}: kept block {p:p}");
        // SAFETY: p is live.
        unsafe { hz_core::free(p) };
    }
    hz_core::collect();
    let s = hz_core::stats();
    let k = s
        .classes
        .iter()
        .find(|k| k.size as usize == size)
        .expect("the class");
    assert_eq!(
        (k.blocks, k.spans),
        (0, 0),
        "size {size}: left after collect"
    );
}

/// Spans in arenas after the first keep their free blocks in that arena's
/// bitmap table (`arena::span_bits`): with a 16 MiB first arena, 24 MiB of
/// 48-byte blocks, then of 1 KiB blocks, spill into further arenas; half
/// freed in a scattered order and allocated again, each round, every block
/// must keep its contents and no address may be handed out twice.
#[test]
fn spans_in_later_arenas() {
    if !child::in_child(
        "HZ_SPAN_LISTS_CHILD",
        "spans_in_later_arenas",
        &[("HZ_ARENA_MB", "16")],
        &[],
    ) {
        return;
    }
    for size in [48usize, 1024] {
        churn(size, (24 << 20) / size, 3, 2, 0x0123_4567_89ab_cdef);
    }
    // Two arenas at least (each 16 MiB of pages, plus its tables).
    assert!(
        hz_core::stats().mapped > 32 << 20,
        "{:?}",
        hz_core::stats().mapped
    );
}
