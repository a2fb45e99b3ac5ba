//! In a child of `fork`, the heaps of the parent's other threads are
//! orphaned: their threads do not exist there, and hz never touches their
//! spans or drains their inboxes (they may have been mid-update). Blocks of
//! theirs that the child frees must still be reused by the child, through
//! the pool, not sent to an inbox nobody drains: a child that drops a
//! structure another thread built and then builds one again must not need
//! fresh memory for it, and hz must not keep moving those blocks around
//! while they wait.
//!
//! One test in its own binary: it forks, and reads process-wide counts.

use std::sync::mpsc;
use std::thread;

const SIZE: usize = 1000;
const N: usize = 4096;

fn pattern(p: usize, i: usize) -> u8 {
    (p >> 4) as u8 ^ i as u8
}

/// Runs in the child: frees the other thread's blocks, optionally collects,
/// allocates as many again; returns how many bytes of pages that took.
fn child_round(blocks: &[usize], collect: bool) -> Result<u64, String> {
    for (i, &p) in blocks.iter().enumerate() {
        // SAFETY: p is a live block of SIZE bytes the parent's worker wrote.
        let b = unsafe { *(p as *const u8).add(SIZE - 1) };
        if b != pattern(p, i) {
            return Err(format!("block {i} lost its contents before the free"));
        }
    }
    let before = hz_core::stats().in_use;
    for &p in blocks {
        // SAFETY: p is live, hz's, freed once.
        unsafe { hz_core::free(p as *mut u8) };
    }
    if collect {
        hz_core::collect();
        // The pool's GC (which `collect` runs over every class) leaves the
        // orphans' blocks where they wait: passing them through the spill
        // arrays again at every GC would cost a pass over all of them each
        // time, for nothing.
        let sent = hz_core::stats().remote_frees_sent;
        hz_core::collect();
        hz_core::collect();
        let again = hz_core::stats().remote_frees_sent - sent;
        if again >= (N / 4) as u64 {
            return Err(format!("two more collects sent {again} blocks again"));
        }
    }
    let again: Vec<usize> = (0..N).map(|_| hz_core::malloc(SIZE) as usize).collect();
    if again.contains(&0) {
        return Err("malloc failed".into());
    }
    for &p in &again {
        // SAFETY: live block of SIZE bytes.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0x5a, SIZE) };
    }
    let grew = hz_core::stats().in_use.saturating_sub(before);
    for &p in &again {
        // SAFETY: live, freed once.
        unsafe { hz_core::free(p as *mut u8) };
    }
    Ok(grew)
}

#[test]
fn a_fork_child_reuses_the_blocks_of_the_parents_other_threads() {
    // A worker that builds N blocks and stays alive across the forks.
    let (to_main, from_worker) = mpsc::channel::<Vec<usize>>();
    let (to_worker, from_main) = mpsc::channel::<()>();
    let worker = thread::spawn(move || {
        let mut rounds = Vec::new();
        for _ in 0..2 {
            let v: Vec<usize> = (0..N)
                .map(|i| {
                    let p = hz_core::malloc(SIZE) as usize;
                    assert_ne!(p, 0);
                    // SAFETY: live block of SIZE bytes.
                    unsafe { *(p as *mut u8).add(SIZE - 1) = pattern(p, i) };
                    p
                })
                .collect();
            rounds.push(v);
        }
        to_main.send(rounds.concat()).unwrap();
        from_main.recv().unwrap();
        for v in rounds {
            for p in v {
                // SAFETY: the worker's own live blocks.
                unsafe { hz_core::free(p as *mut u8) };
            }
        }
    });
    let all = from_worker.recv().unwrap();
    // This thread holds a block of the class, so its bin is open and its
    // heap has blocks of the class out (and it has a heap before the next
    // thread's exits, so it does not adopt that one).
    let mine = hz_core::malloc(SIZE);
    assert!(!mine.is_null());
    // A thread that has exited with a block still live leaves an abandoned
    // heap, so blocks are pooled only after a look at each one's owner
    // (E140/E141's shortcuts off), as in most real processes.
    let left = thread::spawn(|| hz_core::malloc(SIZE) as usize)
        .join()
        .unwrap();
    assert_ne!(left, 0);
    for (round, collect) in [false, true].into_iter().enumerate() {
        let blocks = &all[round * N..(round + 1) * N];
        // SAFETY: fork in a test; the child frees, allocates, checks and
        // _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match child_round(blocks, collect) {
                // A bin and a spill array of the class may hold some of the
                // freed blocks back (64 KiB each at most): well under a
                // quarter of the 4 MiB freed.
                Ok(grew) if grew <= (N * SIZE / 4) as u64 => 0,
                Ok(grew) => {
                    eprintln!(
                        "child (collect {collect}): {grew} bytes of fresh pages for {} bytes \
                         it had just freed",
                        N * SIZE
                    );
                    1
                }
                Err(e) => {
                    eprintln!("child (collect {collect}): {e}");
                    2
                }
            };
            // SAFETY: leave the child without the parent's atexit work.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child (collect {collect}) status {st:#x}"
        );
    }
    // SAFETY: live, freed once.
    unsafe {
        hz_core::free(mine);
        hz_core::free(left as *mut u8);
    }
    to_worker.send(()).unwrap();
    worker.join().unwrap();
}
