//! The only module that talks to the kernel about memory.
//!
//! Owns: reserving address space, returning pages (`madvise`), moving
//! mappings (`mremap`), the monotonic clock, writing to stderr, and aborting.
//! Invariants: nothing here allocates; every failure is reported to the
//! caller as `None`/`false`, never as a panic.
//! A countdown ([`FAIL_MAPS`], set through `hz_core::fail_reservations`)
//! can make reservations fail, so out-of-memory paths can be tested; it
//! costs one relaxed load per reservation, which is rare.

use core::ptr::null_mut;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub static FAIL_MAPS: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(-1);

/// Whether a countdown ([`FAIL_MAPS`], [`FAIL_COMMITS`]) fails this call.
fn injected_failure(countdown: &core::sync::atomic::AtomicIsize) -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    // -1: off; 0: fail every call; n > 0: let n calls succeed, then fail.
    let v = countdown.load(Relaxed);
    if v < 0 {
        return false;
    }
    if v == 0 {
        return true;
    }
    countdown.fetch_sub(1, Relaxed);
    false
}

/// Reserves `len` bytes of address space, inaccessible (`PROT_NONE`) and
/// not committed (`MAP_NORESERVE`): the kernel charges nothing for it, even
/// under strict overcommit, and `mlockall` does not fault it in. The parts
/// in use are made accessible by [`commit`] (and [`protect_read`]).
pub fn reserve(len: usize) -> Option<*mut u8> {
    if injected_failure(&FAIL_MAPS) {
        return None;
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing cannot alias anything we own.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        Some(p as *mut u8)
    }
}

/// A countdown like [`FAIL_MAPS`] for [`commit`] (`hz_core::fail_commits`).
pub static FAIL_COMMITS: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(-1);

/// Makes part of a reservation readable and writable: the kernel charges it
/// to the commit limit here (strict overcommit) and refuses with `ENOMEM`
/// when it is spent; pages still cost memory only once touched. False when
/// refused; errno is left as it was.
///
/// # Safety
/// The range lies in a mapping of ours made by [`reserve`].
pub unsafe fn commit(p: *mut u8, len: usize) -> bool {
    if injected_failure(&FAIL_COMMITS) {
        return false;
    }
    let e = errno();
    // SAFETY: caller guarantees the range is ours.
    let ok = unsafe { protect_rw(p, len) };
    set_errno(e);
    ok
}

/// Makes part of a reservation readable only: reads see zeros (the
/// kernel's zero page) and nothing is charged or resident.
///
/// # Safety
/// The range lies in a mapping of ours made by [`reserve`] and is not in
/// use.
pub unsafe fn protect_read(p: *mut u8, len: usize) -> bool {
    // SAFETY: caller guarantees the range is ours.
    unsafe { libc::mprotect(p as *mut libc::c_void, len, libc::PROT_READ) == 0 }
}

/// The kernel's page size (`AT_PAGESZ`: 4 KiB on x86-64, 4, 16 or 64 KiB on
/// aarch64), the granularity of [`commit`] and [`protect_read`]; 4 KiB if
/// the auxiliary vector does not say. Read once.
pub fn page_size() -> usize {
    static SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    let s = SIZE.load(Relaxed);
    if s != 0 {
        return s;
    }
    // SAFETY: getauxval reads the process's auxiliary vector; no
    // preconditions, no allocation.
    let v = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    let s = if v == 0 {
        4096
    } else if v.is_power_of_two() && (4096..=crate::PAGE_SIZE).contains(&v) {
        v
    } else {
        // hz purges and protects in units of its own 64 KiB pages; a
        // kernel page larger than that would make a purge discard the
        // neighbouring unit's data (and the kernel's are powers of two
        // from 4 KiB).
        fatal("kernel page size not supported (hz needs a power of two from 4 to 64 KiB)")
    };
    SIZE.store(s, Relaxed);
    s
}

/// Unmaps a range previously returned (in part) by [`reserve`].
///
/// # Safety
/// Nothing may use the range afterwards.
pub unsafe fn release(p: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: caller guarantees the range is ours and unused.
    unsafe { libc::munmap(p as *mut libc::c_void, len) };
}

/// Gives the physical pages of a range back to the kernel; the range stays
/// mapped and reads back as zeros.
///
/// # Safety
/// The range lies in a mapping of ours and holds no live data.
pub unsafe fn purge(p: *mut u8, len: usize) -> bool {
    // SAFETY: caller guarantees the range is ours and holds no live data.
    unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

/// Asks for transparent huge pages on a range; a refusal is harmless.
///
/// # Safety
/// The range lies in a mapping of ours.
pub unsafe fn advise_huge(p: *mut u8, len: usize) {
    // SAFETY: caller guarantees the range is ours.
    unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

/// How many of the first `buf.len()` 4 KiB pieces of `[p, p + len)` are
/// resident (`mincore`), at most `len / 4096`; None when the kernel
/// refuses. On a kernel with larger pages (16 or 64 KiB) `mincore` says
/// one byte per page, each standing for that many pieces, and `p` must be
/// aligned to the page (else the kernel refuses). errno is left as it was.
///
/// # Safety
/// The range lies in a mapping of ours.
pub unsafe fn resident_small_pages(p: *mut u8, len: usize, buf: &mut [u8]) -> Option<usize> {
    let n = (len / 4096).min(buf.len());
    let page = page_size();
    let per = page / 4096;
    let pages = n.div_ceil(per);
    let e = errno();
    // SAFETY: caller's contract; mincore writes one byte per kernel page
    // of the range, `pages` <= n <= buf.len() of them, into buf.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, pages * page, buf.as_mut_ptr()) };
    set_errno(e);
    (r == 0).then(|| {
        let resident = buf[..pages].iter().filter(|&&b| b & 1 != 0).count();
        (resident * per).min(n)
    })
}

/// `madvise` advice of Linux 6.13+: guard markers in the page tables.
const MADV_GUARD_INSTALL: i32 = 102;
const MADV_GUARD_REMOVE: i32 = 103;
/// 0 unknown, 1 the kernel takes guard markers, 2 it does not (mprotect).
static GUARD_MARKERS: AtomicU32 = AtomicU32::new(0);

/// Makes a range inaccessible: a guard. Uses the kernel's guard markers
/// (`MADV_GUARD_INSTALL`, Linux 6.13+), which need no VMA split and only the
/// mm read lock, so threads install guards concurrently at a fraction of
/// the cost of `mprotect`; older kernels get `mprotect(PROT_NONE)`. The
/// range's contents are discarded. Returns how: [`GUARD_MARKER`],
/// [`GUARD_PROTECT`], or 0 when the kernel refused both.
///
/// # Safety
/// The range lies in a mapping of ours and holds no live data.
pub unsafe fn guard_install(p: *mut u8, len: usize) -> u8 {
    if GUARD_MARKERS.load(Relaxed) != 2 {
        // SAFETY: caller guarantees the range is ours and unused.
        if unsafe { libc::madvise(p as *mut libc::c_void, len, MADV_GUARD_INSTALL) } == 0 {
            GUARD_MARKERS.store(1, Relaxed);
            return GUARD_MARKER;
        }
        if errno() == libc::EINVAL {
            GUARD_MARKERS.store(2, Relaxed);
        }
    }
    // SAFETY: as above.
    if unsafe { protect_none(p, len) } {
        GUARD_PROTECT
    } else {
        0
    }
}

/// A guard made of page-table markers.
pub const GUARD_MARKER: u8 = 1;
/// A guard made by `mprotect`.
pub const GUARD_PROTECT: u8 = 2;

/// Lifts a guard made by [`guard_install`] (`how` is what it returned).
///
/// # Safety
/// The range lies in a mapping of ours.
pub unsafe fn guard_remove(p: *mut u8, len: usize, how: u8) -> bool {
    // SAFETY: caller guarantees the range is ours.
    unsafe {
        if how == GUARD_MARKER {
            libc::madvise(p as *mut libc::c_void, len, MADV_GUARD_REMOVE) == 0
        } else {
            protect_rw(p, len)
        }
    }
}

/// Makes a range inaccessible (guard pages).
///
/// # Safety
/// The range lies in a mapping of ours and holds no live data.
pub unsafe fn protect_none(p: *mut u8, len: usize) -> bool {
    // SAFETY: caller guarantees the range is ours.
    unsafe { libc::mprotect(p as *mut libc::c_void, len, libc::PROT_NONE) == 0 }
}

/// Makes a range readable and writable again.
///
/// # Safety
/// The range lies in a mapping of ours.
pub unsafe fn protect_rw(p: *mut u8, len: usize) -> bool {
    // SAFETY: caller guarantees the range is ours.
    unsafe {
        libc::mprotect(
            p as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        ) == 0
    }
}

/// Moves the pages of `[from, from+len)` to `[to, to+len)` without copying,
/// leaving `from` mapped and empty (it reads as zeros). Both ranges are ours.
/// False when the kernel cannot (before Linux 5.7, no `MREMAP_DONTUNMAP`):
/// the caller copies instead.
///
/// `MREMAP_DONTUNMAP` keeps the source range mapped through the move. A
/// plain `mremap` unmaps it, and until it is mapped again another thread's
/// `mmap` may be placed in that hole (glibc put a new thread's stack there)
/// and then be overwritten by the remapping: the hole must never exist.
///
/// Where the kernel (or an emulator standing in for it) does not honour
/// `MREMAP_DONTUNMAP` as documented ([`dontunmap_sound`]), nothing moves.
///
/// # Safety
/// Neither range holds data anyone else uses; they do not overlap.
pub unsafe fn move_pages(from: *mut u8, to: *mut u8, len: usize) -> bool {
    // SAFETY: forwarded contract.
    dontunmap_sound() && unsafe { remap_dontunmap(from, to, len) }
}

/// `mremap(MREMAP_FIXED | MREMAP_DONTUNMAP)` of `[from, from+len)` onto
/// `to`: [`move_pages`]'s call, and [`probe_dontunmap`]'s.
///
/// # Safety
/// As [`move_pages`].
unsafe fn remap_dontunmap(from: *mut u8, to: *mut u8, len: usize) -> bool {
    // SAFETY: MREMAP_FIXED replaces whatever is mapped at `to` (our own
    // reserved, unused pages) with the pages of `from`; `from` stays mapped.
    let r = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP,
            to as *mut libc::c_void,
        )
    };
    r == to as *mut libc::c_void
}

/// Whether `mremap(MREMAP_DONTUNMAP)` leaves its source as Linux documents:
/// mapped, empty, and emptied again by `MADV_DONTNEED` — what [`move_pages`]
/// relies on, as the range a block left is reused and purged later.
/// qemu-user 7.2 (Debian 12's) marks the source unmapped in its own page
/// table while the host keeps it mapped, and from then on answers
/// `madvise` there without passing it on, so purged pages keep their bytes
/// (a `calloc` read an earlier block's pattern), and it may place another
/// mapping in what it takes for a hole (docs/RELIABILITY.md §7). Probed
/// once, on the first move, with one page moved between two of a scratch
/// mapping; where it fails (or the kernel has no `MREMAP_DONTUNMAP`,
/// before 5.7), `realloc` copies instead. errno is left as it was.
pub fn dontunmap_sound() -> bool {
    // 0: not probed yet, 1: sound, 2: not.
    static STATE: AtomicU32 = AtomicU32::new(0);
    match STATE.load(Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let e = errno();
    // SAFETY: the probe works on a private mapping of its own.
    let r = unsafe { probe_dontunmap() };
    set_errno(e);
    // (No scratch mapping to be had, out of memory: no answer, and no move
    // this time; the next move asks again.)
    if let Some(ok) = r {
        STATE.store(if ok { 1 } else { 2 }, Relaxed);
    }
    r == Some(true)
}

/// [`dontunmap_sound`]'s probe: two fresh pages; the first, written, moves
/// onto the second with `MREMAP_DONTUNMAP`; the second must hold what was
/// written, and the first, written again and advised `MADV_DONTNEED`, must
/// read zero. None when the scratch mapping cannot be made.
///
/// # Safety
/// None beyond the syscalls' own: the mapping is the probe's, unmapped
/// before it returns.
unsafe fn probe_dontunmap() -> Option<bool> {
    let ps = page_size();
    // SAFETY: a fresh private anonymous mapping of two pages, ours alone;
    // every access below stays inside it, and it is unmapped at the end.
    unsafe {
        let m = libc::mmap(
            null_mut(),
            2 * ps,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if m == libc::MAP_FAILED {
            return None;
        }
        let src = m as *mut u8;
        let dst = src.add(ps);
        src.write_volatile(0x5a);
        let mut ok = remap_dontunmap(src, dst, ps) && dst.read_volatile() == 0x5a;
        if ok {
            src.write_volatile(0xa5);
            ok = libc::madvise(src as *mut libc::c_void, ps, libc::MADV_DONTNEED) == 0
                && src.read_volatile() == 0;
        }
        libc::munmap(m, 2 * ps);
        Some(ok)
    }
}

/// Milliseconds on a coarse monotonic clock (vDSO, no syscall).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A periodic task shared by all threads, due when `now` reaches `at` (a
/// time in [`now_ms`]): true for the one caller that moves `at` to `now +
/// period`, false for every other.
pub fn due(at: &AtomicU64, now: u64, period: u64) -> bool {
    let t = at.load(Relaxed);
    now >= t
        && at
            .compare_exchange(t, now + period, Relaxed, Relaxed)
            .is_ok()
}

/// Writes all of `b` to file descriptor `fd`, ignoring errors.
pub fn write_fd(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: valid buffer of b.len() bytes.
        let n = unsafe { libc::write(fd, b.as_ptr() as *const libc::c_void, b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

/// Internal corruption or an impossible state: one line on stderr, then abort.
#[cold]
pub fn fatal(msg: &str) -> ! {
    write_fd(2, b"hz: fatal: ");
    write_fd(2, msg.as_bytes());
    write_fd(2, b"\n");
    // SAFETY: abort never returns and needs no preconditions.
    unsafe { libc::abort() }
}

/// Saves errno so that paths which must not change it (free) can restore it.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets errno.
pub fn set_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v };
}
