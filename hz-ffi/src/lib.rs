//! libhz.so: the hz allocator as a drop-in replacement for glibc's malloc.
//!
//! A thin skin of `extern "C"` functions over `hz_core`. This layer owns the
//! C contract only: `errno` (every null from an allocation sets `ENOMEM`
//! here; hz-core's free never changes it),
//! overflow checks on `nmemb * size`, the alignment rules of the memalign
//! family, and `pthread_atfork` registration. Semantics follow the glibc
//! version this project is measured on (2.36); where glibc's behaviour was
//! checked by running a program against it, the comment says so.
//!
//! Invariants: nothing here allocates, panics or calls `dlsym` (but the
//! out-of-memory path of C++ `operator new`, which looks up the C++
//! runtime's operator once: see `cxx`; and `mlockall`, which looks up the
//! C library's: see `mlock`); the
//! initial-exec TLS lives in hz-core (feature `ie-tls`, on by default; build
//! with `--no-default-features --features dynamic-tls` for the
//! `thread_local!` fallback).

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod cxx;
mod mlock;

/// The alignment `malloc` guarantees (glibc's `MALLOC_ALIGNMENT` on 64-bit).
const MIN_ALIGN: usize = 16;

/// Sets `errno`.
fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e }
}

/// Reads `errno`.
fn errno() -> c_int {
    // SAFETY: as in `set_errno`.
    unsafe { *libc::__errno_location() }
}

/// The C contract for an allocation result: a null sets `ENOMEM`.
#[inline]
fn enomem_if_null(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions and does not allocate.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(MIN_ALIGN)
}

/// Allocation with any power-of-two `align`; the common 16-byte case takes
/// the plain malloc path.
#[inline(always)]
fn alloc_aligned(align: usize, size: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        hz_core::malloc_errno(size).cast()
    } else {
        hz_core::malloc_aligned_errno(size, align).cast()
    }
}

/// Frees `p`. hz-core's free never changes `errno` (its slow paths save and
/// restore it around system calls), as `free(3)` requires.
///
/// # Safety
/// `p` is null, a live block from this allocator, or not an hz address.
#[inline(always)]
unsafe fn free_keep_errno(p: *mut c_void, size: Option<usize>) {
    match size {
        // SAFETY: forwarded contract; `s` is the size the caller allocated with.
        Some(s) => unsafe { hz_core::free_sized(p.cast(), s) },
        // SAFETY: forwarded contract.
        None => unsafe { hz_core::free(p.cast()) },
    }
}

/// `malloc(3)`: 16-byte aligned; `malloc(0)` is a unique non-null pointer.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    hz_core::malloc_errno(size).cast()
}

/// `free(3)`: keeps `errno`; a foreign pointer is ignored by hz-core.
///
/// # Safety
/// `p` is null or a block from this allocator not yet freed.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_keep_errno(p, None) }
}

/// `cfree(3)`: an old alias of `free`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_keep_errno(p, None) }
}

/// C23 `free_sized`: `size` is the size passed to the allocation call.
///
/// # Safety
/// As [`free`]; `size` is what `p` was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free_keep_errno(p, Some(size)) }
}

/// C23 `free_aligned_sized`: for blocks from `aligned_alloc`.
///
/// # Safety
/// As [`free_sized`]; `align` is what `p` was allocated with.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, align: usize, size: usize) {
    // hz finds a block's alignment from its address.
    let _ = align;
    // SAFETY: forwarded contract.
    unsafe { free_keep_errno(p, Some(size)) }
}

/// `calloc(3)`: zero-filled; `nmemb * size` overflow gives null + `ENOMEM`.
#[no_mangle]
pub extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        Some(n) => enomem_if_null(hz_core::calloc(n)),
        None => enomem_if_null(null_mut()),
    }
}

/// `realloc(3)`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p`
/// and returns null (glibc, errno unchanged); on failure the old block stays
/// intact and `errno` is `ENOMEM`.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded contract.
        unsafe { free_keep_errno(p, None) };
        return null_mut();
    }
    // SAFETY: p is a live block of hz (not null).
    enomem_if_null(unsafe { hz_core::realloc(p.cast(), size) })
}

/// `reallocarray(3)`: `realloc(p, nmemb * size)` with an overflow check
/// (overflow: null + `ENOMEM`, `p` untouched).
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(n) => unsafe { realloc(p, n) },
        None => enomem_if_null(null_mut()),
    }
}

/// `posix_memalign(3)`: `EINVAL` (out-pointer untouched) unless `align` is a
/// power of two multiple of `sizeof(void *)`; `ENOMEM` returned on failure
/// (glibc also leaves `errno` = `ENOMEM` then; checked against 2.36).
///
/// # Safety
/// `out` is valid for a pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // A power of two is a multiple of sizeof(void *) exactly when it is at least that.
    if !align.is_power_of_two() || align < size_of::<*mut c_void>() {
        return libc::EINVAL;
    }
    let p = alloc_aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller guarantees `out` is writable.
    unsafe { out.write(p) };
    0
}

/// `memalign(3)` as glibc 2.36 does it: `align` ≤ 16 is plain malloc; an
/// alignment above `SIZE_MAX / 2 + 1` is `EINVAL`; any other alignment that
/// is not a power of two is rounded up to the next one.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_inline(align, size)
}

/// The body of [`memalign`] and [`aligned_alloc`], inlined into both (a
/// call from one to the other is a jump more on every call).
#[inline(always)]
fn memalign_inline(align: usize, size: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        return malloc(size);
    }
    if align.is_power_of_two() {
        return hz_core::malloc_aligned_errno(size, align).cast();
    }
    memalign_rounded(align, size)
}

/// [`memalign_inline`] with an alignment above [`MIN_ALIGN`] that is not a power
/// of two. Out of line: with the rounding (`checked_next_power_of_two`,
/// a `bsr` and a variable shift) in `memalign` ahead of every aligned
/// request, `aligned_alloc(64, 100)` and `free` in a loop took 9.1 ns a
/// pair, against 6.7 without it and tcmalloc's 6.4 (E122).
#[cold]
#[inline(never)]
fn memalign_rounded(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(a) => alloc_aligned(a, size),
        None => {
            set_errno(libc::EINVAL);
            null_mut()
        }
    }
}

/// `aligned_alloc(3)`: in glibc 2.36 an alias of `memalign` (a bad alignment
/// is rounded up, not rejected: glibc only began returning `EINVAL` in 2.38;
/// checked by running against 2.36).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    memalign_inline(align, size)
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_aligned(page_size(), size)
}

/// `pvalloc(3)`: page-aligned, size rounded up to a whole page.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_add(page - 1) {
        Some(n) => alloc_aligned(page, n & !(page - 1)),
        None => enomem_if_null(null_mut()),
    }
}

/// `malloc_usable_size(3)`: 0 for null.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded contract (hz-core answers 0 for null and foreign pointers).
    unsafe { hz_core::usable_size(p.cast()) }
}

/// `malloc_trim(3)`: returns free memory to the OS now; 1 if any was released.
#[no_mangle]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad; // hz keeps no top chunk to pad
    let before = hz_core::stats().purged_bytes;
    hz_core::collect();
    c_int::from(hz_core::stats().purged_bytes > before)
}

/// `mallopt(3)`: hz takes its settings from the environment; every parameter
/// is accepted and ignored (glibc, too, answers 1 for a parameter it does
/// not know).
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    let _ = (param, value);
    1
}

/// `malloc_stats(3)`: the hz statistics table on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    hz_core::write_stats(2);
}

/// [`malloc_info`]'s writer: a small buffer passed to `fwrite` whenever it
/// fills (a few hundred bytes of stack, also on a thread with a small
/// one); `failed` once `fwrite` wrote short.
struct StreamWriter {
    stream: *mut libc::FILE,
    b: [u8; 512],
    n: usize,
    failed: bool,
}
impl StreamWriter {
    fn flush(&mut self) {
        if self.n != 0 && !self.failed {
            // SAFETY: b[..n] is initialised; stream is an open FILE
            // (malloc_info's contract).
            let w = unsafe { libc::fwrite(self.b.as_ptr().cast(), 1, self.n, self.stream) };
            self.failed = w != self.n;
        }
        self.n = 0;
    }
}
impl core::fmt::Write for StreamWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for chunk in s.as_bytes().chunks(self.b.len()) {
            if self.n + chunk.len() > self.b.len() {
                self.flush();
            }
            self.b[self.n..self.n + chunk.len()].copy_from_slice(chunk);
            self.n += chunk.len();
        }
        if self.failed {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// `malloc_info(3)`: hz's statistics as glibc's XML document
/// (`hz_core::write_info`: the same elements; `<sizes>` is the free room of
/// each size class's spans) written to `stream`; 0 on success. `options`
/// must be 0: otherwise it returns `EINVAL` itself, leaving `errno` alone,
/// as glibc 2.36 does (its manual page says -1 and `errno`, its code does
/// not; tests/c/api.c checks glibc and hz agree). A null `stream` is
/// answered the same way (glibc would crash). -1 when the stream fails
/// (`errno` from stdio). The statistics are read once, before anything is
/// written (`fwrite` may allocate).
///
/// # Safety
/// `stream` is null or an open `FILE`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 || stream.is_null() {
        return libc::EINVAL;
    }
    let mut w = StreamWriter {
        stream,
        b: [0; 512],
        n: 0,
        failed: false,
    };
    let r = hz_core::write_info(&mut w);
    w.flush();
    if r.is_err() || w.failed {
        -1
    } else {
        0
    }
}

/// `mallinfo2(3)` filled from `hz_core::stats()`: `arena` = bytes of pages
/// in use, `uordblks` = bytes allocated, `fordblks` = the rest of `arena`,
/// `hblks` = large blocks live, `usmblks` = peak of `arena`, `keepcost` =
/// free pages not yet returned to the OS (what `malloc_trim` releases).
#[no_mangle]
pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
    let s = hz_core::stats();
    let z = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    libc::mallinfo2 {
        arena: z(s.in_use),
        ordblks: 0,
        smblks: 0,
        hblks: z(s.large_blocks),
        hblkhd: 0,
        usmblks: z(s.peak),
        fsmblks: 0,
        uordblks: z(s.allocated),
        fordblks: z(s.in_use.saturating_sub(s.allocated)),
        keepcost: z(s.resident.saturating_sub(s.in_use)),
    }
}

/// `mallinfo(3)`: [`mallinfo2`] with every field clamped to `int`.
#[no_mangle]
pub extern "C" fn mallinfo() -> libc::mallinfo {
    let m = mallinfo2();
    let c = |v: usize| c_int::try_from(v).unwrap_or(c_int::MAX);
    libc::mallinfo {
        arena: c(m.arena),
        ordblks: c(m.ordblks),
        smblks: c(m.smblks),
        hblks: c(m.hblks),
        hblkhd: c(m.hblkhd),
        usmblks: c(m.usmblks),
        fsmblks: c(m.fsmblks),
        uordblks: c(m.uordblks),
        fordblks: c(m.fordblks),
        keepcost: c(m.keepcost),
    }
}

// glibc's internal names: some programs (and libc itself, through
// interposition) call these directly.

/// `__libc_malloc`: see [`malloc`].
#[no_mangle]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc(size)
}

/// `__libc_calloc`: see [`calloc`].
#[no_mangle]
pub extern "C" fn __libc_calloc(nmemb: usize, size: usize) -> *mut c_void {
    calloc(nmemb, size)
}

/// `__libc_realloc`: see [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { realloc(p, size) }
}

/// `__libc_free`: see [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_keep_errno(p, None) }
}

/// `__libc_memalign`: see [`memalign`].
#[no_mangle]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign(align, size)
}

/// `__libc_valloc`: see [`valloc`].
#[no_mangle]
pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    valloc(size)
}

/// `__libc_pvalloc`: see [`pvalloc`].
#[no_mangle]
pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    pvalloc(size)
}

/// `__libc_mallinfo`: see [`mallinfo`] (glibc exports it as a public
/// symbol too).
#[no_mangle]
pub extern "C" fn __libc_mallinfo() -> libc::mallinfo {
    mallinfo()
}

/// `__libc_mallopt`: see [`mallopt`].
#[no_mangle]
pub extern "C" fn __libc_mallopt(param: c_int, value: c_int) -> c_int {
    mallopt(param, value)
}

/// Runs when ld.so loads libhz.so: registers hz's fork handlers (hz-core
/// does it too on a thread's first allocation; registration happens once).
extern "C" fn hz_ffi_init() {
    hz_core::register_fork_handlers();
}

#[used]
#[link_section = ".init_array"]
static HZ_FFI_INIT: extern "C" fn() = hz_ffi_init;
