//! `mlockall`, interposed. hz reserves its arenas up front (64 GiB of
//! address space by default, `PROT_NONE` until committed as used), and
//! `mlockall(MCL_CURRENT)` faults in and locks every accessible page of
//! every mapping: a program calling it under libhz.so (cryptsetup,
//! real-time audio, some daemons) would make all that hz has committed
//! resident, purged free pages and the untouched rest of the last commit
//! step included (up to 64 MiB; before arenas were committed as used, the
//! whole reservation). So libhz.so's `mlockall` asks the kernel for the same flags plus
//! `MCL_ONFAULT` (Linux 4.4+: every page already resident is locked now,
//! every other one when first touched), then locks and faults in, with
//! `mlock`, every mapping that is not one of hz's reservations, which is
//! what `MCL_CURRENT` alone does to them. hz's memory is thus locked as it
//! is used. The mapping that holds hz's heap registry (libhz.so's `.bss`:
//! 8 MiB of slots, one written per heap) is locked as it faults in too:
//! populated, it was 8 of the 10 MiB a small C program had locked after
//! the call (glibc's: 1.4). What differs from glibc: with `MCL_FUTURE`, mappings the
//! program makes later are locked as they fault in rather than populated
//! when made. A kernel without `MCL_ONFAULT` gets the call as made.

use core::ffi::c_int;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

type MlockallFn = unsafe extern "C" fn(c_int) -> c_int;

/// The C library's `mlockall`, looked up on the first call.
static REAL: AtomicUsize = AtomicUsize::new(0);

fn real() -> Option<MlockallFn> {
    let mut f = REAL.load(Relaxed);
    if f == 0 {
        // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects
        // after libhz.so, so this is never our own `mlockall`.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"mlockall".as_ptr()) } as usize;
        REAL.store(f, Relaxed);
    }
    // SAFETY: a non-null result is the C library's `mlockall`, of this type.
    (f != 0).then(|| unsafe { core::mem::transmute::<usize, MlockallFn>(f) })
}

/// `mlockall(2)`; see the module documentation.
///
/// # Safety
/// As `mlockall(2)`: none beyond the C contract.
#[no_mangle]
pub unsafe extern "C" fn mlockall(flags: c_int) -> c_int {
    let Some(real) = real() else {
        crate::set_errno(libc::ENOSYS);
        return -1;
    };
    if flags & libc::MCL_ONFAULT != 0 || flags & (libc::MCL_CURRENT | libc::MCL_FUTURE) == 0 {
        // SAFETY: forwarded as made.
        return unsafe { real(flags) };
    }
    // SAFETY: the C library's mlockall with valid flags.
    if unsafe { real(flags | libc::MCL_ONFAULT) } != 0 {
        // A kernel older than MCL_ONFAULT says EINVAL: the call as made.
        return if crate::errno() == libc::EINVAL {
            // SAFETY: forwarded as made.
            unsafe { real(flags) }
        } else {
            -1
        };
    }
    if flags & libc::MCL_CURRENT != 0 {
        let e = crate::errno();
        lock_all_but_reservations();
        crate::set_errno(e);
    }
    0
}

/// `mlock`s every mapping of `/proc/self/maps` that overlaps none of hz's
/// reservations; mappings that refuse (`[vsyscall]`, `PROT_NONE` guards)
/// are left as `mlockall` leaves them. Reads the file in pieces into a
/// stack buffer: nothing here allocates.
fn lock_all_but_reservations() {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut have = 0;
    loop {
        // SAFETY: reads into the free tail of `buf`.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut used = 0;
        while let Some(nl) = buf[used..have].iter().position(|&b| b == b'\n') {
            lock_line(&buf[used..used + nl]);
            used += nl + 1;
        }
        buf.copy_within(used..have, 0);
        have -= used;
        if have == buf.len() {
            // A line longer than the buffer (a very long path): its range
            // was at its start; drop the rest of it.
            lock_line(&buf[..have]);
            have = 0;
        }
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
}

/// Locks the range at the start of one `/proc/self/maps` line
/// (`start-end perms ...`, hexadecimal) unless it overlaps a reservation.
fn lock_line(line: &[u8]) {
    let hex = |s: &[u8]| -> Option<usize> {
        if s.is_empty() || s.len() > 16 {
            return None;
        }
        s.iter().try_fold(0usize, |v, &c| {
            let d = (c as char).to_digit(16)?;
            Some(v << 4 | d as usize)
        })
    };
    let Some(dash) = line.iter().position(|&b| b == b'-') else {
        return;
    };
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return;
    };
    if space <= dash {
        return;
    }
    let (Some(lo), Some(hi)) = (hex(&line[..dash]), hex(&line[dash + 1..space])) else {
        return;
    };
    if lo >= hi || hz_core::overlaps_reservation(lo, hi) {
        return;
    }
    // The mapping holding hz's heap registry (libhz.so's `.bss`: 8 MiB of
    // slots, most never written) is locked as it faults in, so that the
    // call does not make zero pages resident that nothing reads.
    let (rlo, rhi) = hz_core::registry_range();
    if lo < rhi && rlo < hi {
        const MLOCK_ONFAULT: libc::c_long = 1;
        // SAFETY: mlock2 changes no memory; a mapping of this process.
        if unsafe { libc::syscall(libc::SYS_mlock2, lo, hi - lo, MLOCK_ONFAULT) } == 0 {
            return;
        }
    }
    // SAFETY: mlock changes no memory; a refused range stays as it is.
    unsafe { libc::mlock(lo as *const libc::c_void, hi - lo) };
}
