//! The thread's one TLS word: a pointer to its heap's bins.
//!
//! Owns: the TLS slot. It starts out (in every new thread, by the TLS
//! initialisation image) pointing at [`EMPTY`], a static heap whose bins are
//! all empty and full at once, so the malloc and free fast paths fall into
//! the slow path on first use without an "initialised?" branch. After the
//! thread's teardown it points at [`DEAD`].
//!
//! Implementations:
//! * default on x86_64 and aarch64: initial-exec TLS written with
//!   `global_asm!` (a `.tdata` symbol) and an `asm!` load through
//!   `@GOTTPOFF` / `:gottprel:` — one `%fs`-relative load, no
//!   `__tls_get_addr`, as the glibc manual requires of malloc replacements;
//! * feature `dynamic-tls`, or any other target: a `pthread_key_t` read with
//!   `pthread_getspecific` (portable, a call per access).

use crate::heap::Bins;

/// The heap of a thread that has not allocated yet.
pub static EMPTY: Bins = Bins::EMPTY;
/// The heap of a thread whose teardown has run.
pub static DEAD: Bins = Bins::EMPTY;

#[inline(always)]
pub fn empty() -> *mut Bins {
    &EMPTY as *const Bins as *mut Bins
}
#[inline(always)]
pub fn dead() -> *mut Bins {
    &DEAD as *const Bins as *mut Bins
}

#[cfg(all(target_arch = "x86_64", not(feature = "dynamic-tls"), not(loom)))]
mod imp {
    use super::Bins;
    use core::arch::{asm, global_asm};

    global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl hz_tls_heap_slot",
        ".hidden hz_tls_heap_slot",
        ".type hz_tls_heap_slot,@object",
        ".size hz_tls_heap_slot,8",
        "hz_tls_heap_slot:",
        ".quad {empty}",
        ".popsection",
        empty = sym super::EMPTY,
    );

    #[inline(always)]
    pub fn get() -> *mut Bins {
        let v: *mut Bins;
        // SAFETY: reads this thread's slot at its initial-exec offset.
        unsafe {
            asm!(
                "mov {t}, qword ptr [rip + hz_tls_heap_slot@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{t}]",
                t = out(reg) _,
                v = lateout(reg) v,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        v
    }

    #[inline(always)]
    pub fn set(h: *mut Bins) {
        // SAFETY: writes this thread's slot at its initial-exec offset.
        unsafe {
            asm!(
                "mov {t}, qword ptr [rip + hz_tls_heap_slot@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {v}",
                t = out(reg) _,
                v = in(reg) h,
                options(nostack, preserves_flags),
            );
        }
    }
    pub fn init() {}
}

#[cfg(all(target_arch = "aarch64", not(feature = "dynamic-tls"), not(loom)))]
mod imp {
    use super::Bins;
    use core::arch::{asm, global_asm};

    global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl hz_tls_heap_slot",
        ".hidden hz_tls_heap_slot",
        ".type hz_tls_heap_slot,%object",
        ".size hz_tls_heap_slot,8",
        "hz_tls_heap_slot:",
        ".xword {empty}",
        ".popsection",
        empty = sym super::EMPTY,
    );

    #[inline(always)]
    pub fn get() -> *mut Bins {
        let v: *mut Bins;
        // SAFETY: reads this thread's slot at its initial-exec offset.
        unsafe {
            asm!(
                "adrp {t}, :gottprel:hz_tls_heap_slot",
                "ldr {t}, [{t}, :gottprel_lo12:hz_tls_heap_slot]",
                "mrs {p}, tpidr_el0",
                "ldr {v}, [{p}, {t}]",
                t = out(reg) _,
                p = out(reg) _,
                v = lateout(reg) v,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        v
    }

    #[inline(always)]
    pub fn set(h: *mut Bins) {
        // SAFETY: writes this thread's slot at its initial-exec offset.
        unsafe {
            asm!(
                "adrp {t}, :gottprel:hz_tls_heap_slot",
                "ldr {t}, [{t}, :gottprel_lo12:hz_tls_heap_slot]",
                "mrs {p}, tpidr_el0",
                "str {v}, [{p}, {t}]",
                t = out(reg) _,
                p = out(reg) _,
                v = in(reg) h,
                options(nostack, preserves_flags),
            );
        }
    }
    pub fn init() {}
}

#[cfg(any(
    feature = "dynamic-tls",
    loom,
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
mod imp {
    use super::Bins;
    use core::sync::atomic::{AtomicU32, Ordering::*};

    // u32::MAX: not created yet.
    static KEY: AtomicU32 = AtomicU32::new(u32::MAX);

    #[inline]
    pub fn get() -> *mut Bins {
        let k = KEY.load(Acquire);
        if k == u32::MAX {
            return super::empty();
        }
        // SAFETY: k is a key we created.
        let v = unsafe { libc::pthread_getspecific(k as libc::pthread_key_t) } as *mut Bins;
        if v.is_null() {
            super::empty()
        } else {
            v
        }
    }

    pub fn set(h: *mut Bins) {
        init();
        // SAFETY: key created by init(); glibc's first 32 keys never allocate.
        unsafe {
            libc::pthread_setspecific(
                KEY.load(Acquire) as libc::pthread_key_t,
                h as *const libc::c_void,
            )
        };
    }

    pub fn init() {
        if KEY.load(Acquire) != u32::MAX {
            return;
        }
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer; no destructor (teardown uses its own key).
        if unsafe { libc::pthread_key_create(&mut k, None) } != 0 {
            crate::os::fatal("pthread_key_create failed for the TLS fallback");
        }
        if KEY
            .compare_exchange(u32::MAX, k as u32, AcqRel, Acquire)
            .is_err()
        {
            // SAFETY: our key lost the race; nobody else saw it.
            unsafe { libc::pthread_key_delete(k) };
        }
    }
}

pub use imp::{get, init, set};
