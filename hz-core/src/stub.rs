//! TEMPORARY placeholder backend: one mmap per block, 64-byte header.
use core::ptr::null_mut;
const MAGIC: usize = 0x687a_7374_7562;
pub fn alloc(size: usize, align: usize, _zero: bool) -> *mut u8 {
    let align = align.max(16);
    let Some(len) = size.checked_add(align + 64) else { return null_mut() };
    if len > isize::MAX as usize { return null_mut(); }
    // SAFETY: anonymous private mapping.
    let base = unsafe { libc::mmap(null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    if base == libc::MAP_FAILED { return null_mut(); }
    let base = base as usize;
    let p = (base + 64 + align - 1) & !(align - 1);
    let h = (p - 32) as *mut usize;
    // SAFETY: header lies inside the mapping.
    unsafe { h.write(MAGIC); h.add(1).write(base); h.add(2).write(len); h.add(3).write(size.max(1)); }
    p as *mut u8
}
pub fn owns(p: *const u8) -> bool { !p.is_null() && (p as usize) & 15 == 0 && p as usize > 4096 }
pub unsafe fn free(p: *mut u8) {
    if !owns(p) { return; }
    let h = (p as usize - 32) as *mut usize;
    // SAFETY: stub: assumes p came from alloc.
    unsafe { if h.read() != MAGIC { return; } h.write(0); libc::munmap(h.add(1).read() as *mut _, h.add(2).read()); }
}
pub unsafe fn usable(p: *const u8) -> usize {
    if !owns(p) { return 0; }
    // SAFETY: stub.
    unsafe { let h = (p as usize - 32) as *mut usize; if h.read() != MAGIC { 0 } else { h.add(3).read() } }
}
pub unsafe fn realloc(p: *mut u8, n: usize, align: usize) -> *mut u8 {
    // SAFETY: stub.
    unsafe {
        let old = usable(p);
        let q = alloc(n, align, false);
        if q.is_null() { return q; }
        core::ptr::copy_nonoverlapping(p, q, old.min(n));
        free(p);
        q
    }
}
