//! The dense zone (E125, E130): a heap that has 2 MiB of blocks out of its spans
//! and whose blocks rarely cross threads takes its further spans of a class
//! it holds two or more spans of (blocks up to 1 KiB) from the upper quarter
//! of arena 0, advised for transparent huge pages. Its blocks are found by
//! the same lookup as every other block of arena 0, keep what the program
//! wrote, and go back like any others; the first spans a heap carves, and
//! every span with `HZ_THP=0` or in a secure build, come from the normal
//! zone without the advice.
//!
//! Large blocks (E128): a heap whose thread wrote the last fresh blocks of
//! its segments densely (3/4 of their 4 KiB pages or more, `mincore` at
//! their free) takes its next segments from the dense zone too; one that
//! writes a few bytes of each does not.
//!
//! Each test runs in a child process, so that the heap and the mappings it
//! inspects are its own.

#[path = "reliability/child.rs"]
mod child;

const MARKER: &str = "HZ_DENSE_ZONE_CHILD";

/// Runs test `name` in a child with `HZ_THP` at its default (see
/// `child::in_child`): true in the child.
fn in_child_thp_default(name: &str) -> bool {
    child::in_child(MARKER, name, &[], &["HZ_THP"])
}

/// Whether the mapping holding `p` carries `MADV_HUGEPAGE`.
fn advised_huge(p: *mut u8) -> bool {
    child::vm_flags(p).iter().any(|f| f == "hg")
}

/// 16 MiB of 64-byte blocks, each written with its index, from one thread.
/// Returns the blocks.
fn build() -> Vec<*mut u8> {
    let n = (16 << 20) / 64;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let p = hz_core::malloc(64);
        assert!(!p.is_null());
        // SAFETY: p is a live 64-byte block.
        unsafe { (p as *mut u64).write(i as u64 ^ 0x5a5a) };
        v.push(p);
    }
    v
}

/// Checks every block's word, then frees them all.
fn check_and_free(v: Vec<*mut u8>) {
    for (i, &p) in v.iter().enumerate() {
        // SAFETY: p is live and was written by `build`.
        assert_eq!(unsafe { (p as *mut u64).read() }, i as u64 ^ 0x5a5a);
        // SAFETY: p is live.
        assert_eq!(unsafe { hz_core::usable_size(p) }, 64);
    }
    for p in v {
        // SAFETY: p is live; freed once.
        unsafe { hz_core::free(p) };
    }
}

#[test]
fn dense_heaps_take_spans_from_huge_pages() {
    if !in_child_thp_default("dense_heaps_take_spans_from_huge_pages") {
        return;
    }
    let before = hz_core::stats();
    let v = std::thread::spawn(|| build().into_iter().map(|p| p as usize).collect::<Vec<_>>())
        .join()
        .unwrap();
    let v: Vec<*mut u8> = v.into_iter().map(|p| p as *mut u8).collect();
    let dense = hz_core::stats().dense_spans - before.dense_spans;
    let (first, last) = (v[0], v[v.len() - 1]);
    if cfg!(feature = "secure") {
        assert_eq!(dense, 0, "secure builds have no dense zone");
        assert!(!advised_huge(last));
    } else {
        // 16 MiB of one class: all but about the first 2 MiB dense.
        assert!(dense >= 64, "{dense} dense spans");
        assert!(advised_huge(last), "the last block's span is dense");
        assert!(!advised_huge(first), "the first spans are not");
    }
    let in_use = hz_core::stats().in_use;
    // Freed from this thread: every block goes back through the remote
    // paths, dense or not.
    check_and_free(v);
    hz_core::collect();
    assert!(hz_core::stats().in_use < in_use - (8 << 20));
}

#[test]
fn no_dense_zone_with_thp_off() {
    if !child::in_child(
        MARKER,
        "no_dense_zone_with_thp_off",
        &[("HZ_THP", "0")],
        &[],
    ) {
        return;
    }
    let v = build();
    assert_eq!(hz_core::stats().dense_spans, 0);
    assert!(!advised_huge(v[v.len() - 1]));
    check_and_free(v);
}

const MIB: usize = 1 << 20;

/// On a thread of its own: four 1 MiB blocks (one small segment), each
/// written whole or at both ends; two of them freed (the thread's free of
/// a fresh block samples it); then four more, which need a second
/// segment. Returns whether the last block's mapping is advised for huge
/// pages, and how many dense segments the process took meanwhile. Every
/// block keeps what was written.
fn second_segment(dense: bool) -> (bool, u64) {
    let before = hz_core::stats().dense_segments;
    let huge = std::thread::spawn(move || {
        let write = |p: *mut u8, tag: u8| {
            // SAFETY: p is a live block of MIB bytes.
            unsafe {
                if dense {
                    core::ptr::write_bytes(p, tag, MIB);
                } else {
                    *p = tag;
                    *p.add(MIB - 1) = tag;
                }
            }
        };
        let check = |p: *mut u8, tag: u8| {
            // SAFETY: p is a live block of MIB bytes written by `write`.
            unsafe {
                assert_eq!(*p, tag);
                assert_eq!(*p.add(MIB - 1), tag);
                if dense {
                    assert_eq!(*p.add(MIB / 2), tag);
                }
            }
        };
        let first: Vec<*mut u8> = (0..4).map(|_| hz_core::malloc(MIB)).collect();
        for (i, &p) in first.iter().enumerate() {
            assert!(!p.is_null());
            write(p, i as u8 + 1);
        }
        for &p in &first[..2] {
            // SAFETY: live; freed once.
            unsafe { hz_core::free(p) };
        }
        let more: Vec<*mut u8> = (0..4).map(|_| hz_core::malloc(MIB)).collect();
        for (i, &p) in more.iter().enumerate() {
            assert!(!p.is_null());
            write(p, i as u8 + 11);
        }
        let huge = advised_huge(more[3]);
        for (i, &p) in first[2..].iter().enumerate() {
            check(p, i as u8 + 3);
        }
        for (i, &p) in more.iter().enumerate() {
            check(p, i as u8 + 11);
        }
        for p in first[2..].iter().chain(&more) {
            // SAFETY: live; freed once.
            unsafe { hz_core::free(*p) };
        }
        huge
    })
    .join()
    .unwrap();
    (huge, hz_core::stats().dense_segments - before)
}

#[test]
fn dense_large_blocks_take_segments_from_huge_pages() {
    if !in_child_thp_default("dense_large_blocks_take_segments_from_huge_pages") {
        return;
    }
    let (huge, segments) = second_segment(true);
    assert_eq!(
        huge,
        !cfg!(feature = "secure"),
        "a thread writing its large blocks whole (secure builds: never)"
    );
    assert_eq!(segments, u64::from(huge), "the statistics count it");
}

#[test]
fn sparse_large_blocks_stay_on_small_pages() {
    if !in_child_thp_default("sparse_large_blocks_stay_on_small_pages") {
        return;
    }
    assert_eq!(
        second_segment(false),
        (false, 0),
        "blocks written at both ends only"
    );
}

#[test]
fn no_dense_segments_with_thp_off() {
    if !child::in_child(
        MARKER,
        "no_dense_segments_with_thp_off",
        &[("HZ_THP", "0")],
        &[],
    ) {
        return;
    }
    assert_eq!(second_segment(true), (false, 0));
}

#[test]
fn a_small_footprint_churned_through_many_spans_stays_off_huge_pages() {
    if !in_child_thp_default("a_small_footprint_churned_through_many_spans_stays_off_huge_pages") {
        return;
    }
    // About 0.5 MiB live (1,000 blocks of 16..=1,008 bytes), replaced at
    // random 400,000 times: some 200 MiB allocated in all, over the same
    // few spans of each class (larson's shape). It never builds: no span
    // of it belongs in a huge page it would fill only in part (E130).
    let before = hz_core::stats().dense_spans;
    let dense = std::thread::spawn(move || {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut slots: Vec<(*mut u8, usize)> = (0..1000)
            .map(|_| {
                let n = 16 + (next() % 63) as usize * 16;
                (hz_core::malloc(n), n)
            })
            .collect();
        for _ in 0..400_000 {
            let k = (next() % 1000) as usize;
            let n = 16 + (next() % 63) as usize * 16;
            let p = hz_core::malloc(n);
            assert!(!p.is_null());
            // SAFETY: p is a live block of n bytes.
            unsafe { p.write_bytes(k as u8, n) };
            // SAFETY: the slot's block is live; freed once.
            unsafe { hz_core::free(slots[k].0) };
            slots[k] = (p, n);
        }
        for (k, &(p, n)) in slots.iter().enumerate() {
            // SAFETY: live blocks; those written above hold their slot's
            // index in every byte.
            unsafe {
                if *p == k as u8 {
                    assert_eq!(*p.add(n - 1), k as u8);
                }
                hz_core::free(p);
            }
        }
        hz_core::stats().dense_spans - before
    })
    .join()
    .unwrap();
    assert_eq!(dense, 0, "{dense} dense spans for a 0.5 MiB footprint");
}

#[test]
fn a_dense_writer_faults_no_fresh_page_of_a_normal_segment() {
    if !in_child_thp_default("a_dense_writer_faults_no_fresh_page_of_a_normal_segment") {
        return;
    }
    // Two 1 MiB blocks written whole and freed (two dense samples) fill
    // half of the thread's first segment; the two next blocks take them
    // back from the heap's cache, and the fifth would fit in the first
    // segment's fresh half: it comes from a dense segment instead (E131).
    let before = hz_core::stats().dense_segments;
    let (first, fifth) = std::thread::spawn(|| {
        let first = two_dense_blocks();
        let cd: Vec<*mut u8> = (0..3).map(|_| hz_core::malloc(MIB)).collect();
        let fifth = advised_huge(cd[2]);
        for &p in &cd {
            assert!(!p.is_null());
            // SAFETY: p is a live block of MIB bytes; freed once.
            unsafe {
                core::ptr::write_bytes(p, 0xa5, MIB);
                assert_eq!(*p.add(MIB - 1), 0xa5);
                hz_core::free(p);
            }
        }
        (first, fifth)
    })
    .join()
    .unwrap();
    assert!(!first, "the first segment is a normal one");
    let dense = hz_core::stats().dense_segments - before;
    if cfg!(feature = "secure") {
        assert!(!fifth && dense == 0, "secure builds have no dense zone");
    } else {
        assert!(
            fifth,
            "the fifth block was carved on a normal segment's fresh pages"
        );
        assert_eq!(dense, 1);
    }
}

/// Two 1 MiB blocks from the calling thread, written whole, then freed:
/// two dense samples (E128). Returns whether the first was advised for
/// huge pages while live.
fn two_dense_blocks() -> bool {
    let ab: Vec<*mut u8> = (0..2).map(|_| hz_core::malloc(MIB)).collect();
    for &p in &ab {
        assert!(!p.is_null());
        // SAFETY: p is a live block of MIB bytes.
        unsafe { core::ptr::write_bytes(p, 0x5a, MIB) };
    }
    let first = advised_huge(ab[0]);
    for &p in &ab {
        // SAFETY: live; freed once.
        unsafe { hz_core::free(p) };
    }
    first
}

/// `n` blocks of 16 MiB (beyond the segments' 8 MiB), one after the
/// other, from a thread that first wrote two 1 MiB blocks whole (`warm`)
/// or none; the program writes the last byte of each. Returns whether each
/// one's mapping was advised for huge pages.
fn long_blocks(warm: bool, n: usize) -> Vec<bool> {
    std::thread::spawn(move || {
        if warm {
            two_dense_blocks();
        }
        (0..n)
            .map(|_| {
                let p = hz_core::malloc(16 * MIB);
                assert!(!p.is_null());
                // SAFETY: p is a live block of 16 MiB; freed once.
                unsafe {
                    *p.add(16 * MIB - 1) = 7;
                    let huge = advised_huge(p);
                    assert_eq!(*p.add(16 * MIB - 1), 7);
                    hz_core::free(p);
                    huge
                }
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// [`long_blocks`] for one block.
fn long_block(warm: bool) -> bool {
    long_blocks(warm, 1)[0]
}

#[test]
fn a_dense_writers_long_blocks_come_from_huge_pages() {
    if !in_child_thp_default("a_dense_writers_long_blocks_come_from_huge_pages") {
        return;
    }
    // E132: huge pages, as for a block a realloc grows into.
    assert_eq!(
        long_block(true),
        !cfg!(feature = "secure"),
        "a dense writer's 16 MiB block (secure builds: never)"
    );
}

#[test]
fn a_long_block_of_a_thread_with_no_sample_is_on_small_pages() {
    if !in_child_thp_default("a_long_block_of_a_thread_with_no_sample_is_on_small_pages") {
        return;
    }
    assert!(!long_block(false));
}

#[test]
fn a_dense_writer_that_writes_a_long_block_sparsely_gets_small_pages_again() {
    if !in_child_thp_default(
        "a_dense_writer_that_writes_a_long_block_sparsely_gets_small_pages_again",
    ) {
        return;
    }
    // E134: the first block, of the huge zone, reads sparse at its free
    // (its middle untouched), which takes the thread's score below E132's.
    let huge = !cfg!(feature = "secure");
    assert_eq!(
        long_blocks(true, 3),
        [huge, false, false],
        "a dense writer's 16 MiB blocks written at one byte each"
    );
}
