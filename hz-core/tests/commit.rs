//! An arena is reserved inaccessible and committed as it is used: the
//! kernel charges hz (strict overcommit) and `mlockall` locks only what
//! hz has made usable, not the 64 GiB reservation. Each test runs in a
//! fresh child process (`HZ_COMMIT_CHILD=<name>`), so what it measures is
//! hz's first arena as that test alone made it.
//!
//! * `reservation_committed_as_used`: the mapping holding a block is
//!   readable and writable only as far as what is committed, the rest of
//!   the arena is `PROT_NONE`; `committed` covers the pages in use,
//!   stays near the peak, and is what `malloc_info` reports as `aspace
//!   mprotect`.
//! * `mlockall_in_a_rust_program`: `mlockall(MCL_CURRENT | MCL_FUTURE)`
//!   called by the program itself (no libhz.so to interpose it) locks
//!   what is committed, not the 1 GiB arena, and blocks allocated after
//!   it are locked.
//!
//! The test binary's own allocator is the system one; only the blocks
//! under test come from hz.

#[path = "reliability/child.rs"]
mod child;

const CHILD: &str = "HZ_COMMIT_CHILD";
const MIB: usize = 1 << 20;

fn in_child(name: &str, env: &[(&str, &str)]) -> bool {
    child::in_child(CHILD, name, env, &[])
}

/// The line of /proc/self/maps whose range holds `addr`, and the one after
/// it: (start, end, permissions) each.
type MapLine = (usize, usize, String);

fn maps_around(addr: usize) -> (MapLine, Option<MapLine>) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lines: Vec<MapLine> = maps
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next().unwrap().split_once('-').unwrap();
            (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
                f.next().unwrap().to_string(),
            )
        })
        .collect();
    let i = lines
        .iter()
        .position(|&(lo, hi, _)| lo <= addr && addr < hi)
        .expect("the block is in no mapping");
    (lines[i].clone(), lines.get(i + 1).cloned())
}

/// Writes every page of `[p, p + n)`.
fn touch(p: *mut u8, n: usize) {
    for i in (0..n).step_by(4096) {
        // SAFETY: p has n bytes.
        unsafe { p.add(i).write_volatile(i as u8 | 1) };
    }
}

#[test]
fn reservation_committed_as_used() {
    if !in_child("reservation_committed_as_used", &[]) {
        return;
    }
    let mut blocks = Vec::new();
    for i in 0..300 {
        let n = if i % 3 == 0 { MIB } else { 1000 + i * 40 };
        let p = hz_core::malloc(n);
        assert!(!p.is_null());
        touch(p, n);
        blocks.push(p);
    }
    let s = hz_core::stats();
    println!(
        "in use {} MiB, peak {} MiB, committed {} MiB, mapped {} MiB",
        s.in_use / MIB as u64,
        s.peak / MIB as u64,
        s.committed / MIB as u64,
        s.mapped / MIB as u64
    );
    assert!(
        s.committed >= s.in_use,
        "pages in use that are not committed"
    );
    assert!(
        s.committed <= 2 * s.peak + 64 * MIB as u64,
        "committed {} MiB for a peak of {} MiB",
        s.committed / MIB as u64,
        s.peak / MIB as u64
    );
    assert!(s.mapped >= 8 * s.committed, "the test needs a large arena");
    let ((lo, hi, perms), next) = maps_around(blocks[0] as usize);
    assert_eq!(perms, "rw-p", "the mapping of a block");
    assert!(
        (hi - lo) as u64 <= s.committed + 64 * MIB as u64,
        "{} MiB readable and writable around a block, {} MiB committed",
        (hi - lo) / MIB,
        s.committed / MIB as u64
    );
    let (nlo, nhi, nperms) = next.expect("nothing mapped after the committed part");
    assert_eq!(nlo, hi, "the arena does not go on after what is committed");
    assert_eq!(nperms, "---p", "the rest of the arena");
    assert!(
        (nhi - nlo) as u64 >= s.mapped / 2,
        "the inaccessible rest is only {} MiB",
        (nhi - nlo) / MIB
    );
    // malloc_info's totals name the committed part as glibc's thread
    // arenas do: `aspace mprotect`.
    let mut info = String::new();
    hz_core::write_info(&mut info).unwrap();
    let open: u64 = info
        .rsplit("<aspace type=\"mprotect\" size=\"")
        .next()
        .and_then(|t| t.split('"').next())
        .map(|v| v.parse().unwrap())
        .expect("no aspace mprotect line");
    assert_eq!(open, hz_core::stats().committed, "{info}");
    for p in blocks {
        // SAFETY: live blocks of hz.
        unsafe { hz_core::free(p) };
    }
}

/// Resident locked memory of this process in KiB ("Locked:" of
/// /proc/self/smaps_rollup).
fn locked_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Locked:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("no Locked: line")
}

#[test]
fn mlockall_in_a_rust_program() {
    if std::env::var_os("HZ_TEST_RUNNER").is_some() {
        // Under an emulator, mlockall locks the emulator's own reservation.
        println!("skipped under HZ_TEST_RUNNER");
        return;
    }
    if !in_child("mlockall_in_a_rust_program", &[("HZ_ARENA_MB", "1024")]) {
        return;
    }
    let n = 32 * MIB;
    let p = hz_core::malloc(n);
    assert!(!p.is_null());
    touch(p, n);
    // SAFETY: no preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        let e = std::io::Error::last_os_error();
        assert!(matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::ENOMEM | libc::EAGAIN)
        ));
        println!("mlockall: skipped ({e})");
        return;
    }
    let before = locked_kib();
    let committed = hz_core::stats().committed as usize;
    println!(
        "locked {} MiB after mlockall, hz committed {} MiB",
        before / 1024,
        committed / MIB
    );
    assert!(
        before < 256 * 1024,
        "mlockall locked {} MiB: the arena's reservation",
        before / 1024
    );
    let q = hz_core::malloc(2 * n);
    assert!(!q.is_null());
    touch(q, 2 * n);
    let after = locked_kib();
    assert!(
        after >= before + 60 * 1024,
        "a block written after mlockall is not locked ({} -> {} MiB)",
        before / 1024,
        after / 1024
    );
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::munlockall() }, 0);
    // SAFETY: live blocks of hz.
    unsafe {
        hz_core::free(q);
        hz_core::free(p);
    }
}
