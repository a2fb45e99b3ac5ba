//! C++ `operator new` and `operator delete`, every replaceable form
//! (Itanium ABI names, 64-bit `size_t`), as mimalloc, jemalloc and tcmalloc
//! export them. Without these a C++ program reaches hz through libstdc++'s
//! operators: two more calls through the PLT per `new`/`delete` pair and
//! libstdc++'s own loop (a loop of 20 M `new`/`delete` of 16–264 bytes ran
//! 1.6× the time of the same loop of `malloc`/`free`; docs/PERFORMANCE.md
//! E139).
//!
//! `delete` in every form is [`free`](crate::free): hz finds a block's size
//! and alignment from its address, so the sized and aligned forms ignore
//! their extra arguments (a mismatched size, which some programs pass, is
//! harmless).
//!
//! `new` has to keep C++'s failure contract: call the installed
//! `new_handler` and try again, throw `std::bad_alloc` when there is none,
//! and the `nothrow` forms return null where the others throw. Rust cannot
//! throw a C++ exception, nor let one pass through a Rust frame in a
//! `panic = "abort"` build, so each `new` is a small assembly stub: it
//! calls hz for the block and returns it; only when hz returns null does it
//! jump, with its arguments as it received them and no frame of its own
//! left, to the same operator of the next object in the lookup order (the
//! C++ runtime's, found with `dlsym(RTLD_NEXT)` on that first failure).
//! That operator calls hz's `malloc` again, runs the handlers and throws
//! exactly as it would without hz. A C++ library that a C program
//! `dlopen`ed with `RTLD_LOCAL` (as Python loads extension modules) has its
//! runtime outside the global scope: the operator is then looked up in the
//! calling object's own scope. Only with no C++ runtime anywhere does an
//! out-of-memory `new` end the process, with a one-line message.
//!
//! x86-64 and aarch64 (the stubs are assembly); elsewhere libstdc++'s
//! operators stay in use and reach hz through `malloc`.

#![allow(non_snake_case)]

use core::ffi::{c_char, c_void};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The `new` forms' names, indexed by the `kind` each stub passes.
const NEW_NAMES: [&[u8]; 8] = [
    b"_Znwm\0",
    b"_Znam\0",
    b"_ZnwmRKSt9nothrow_t\0",
    b"_ZnamRKSt9nothrow_t\0",
    b"_ZnwmSt11align_val_t\0",
    b"_ZnamSt11align_val_t\0",
    b"_ZnwmSt11align_val_tRKSt9nothrow_t\0",
    b"_ZnamSt11align_val_tRKSt9nothrow_t\0",
];

/// The next object's `new` of each form, looked up on its first failure.
static NEXT: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

/// Whether `addr` lies in libhz.so itself (a stub of ours, whatever name
/// the lookup took).
fn in_libhz(addr: usize) -> bool {
    // SAFETY: `Dl_info` is plain data that dladdr fills when it returns
    // non-zero; `next_new` is a function of this object.
    unsafe {
        let mut ours: libc::Dl_info = core::mem::zeroed();
        let mut theirs: libc::Dl_info = core::mem::zeroed();
        libc::dladdr(next_new as *const c_void, &mut ours) != 0
            && libc::dladdr(addr as *const c_void, &mut theirs) != 0
            && ours.dli_fbase == theirs.dli_fbase
    }
}

/// The address of the operator `NEW_NAMES[kind]` that an out-of-memory
/// `new` called from `caller` (a return address) continues in; never
/// returns without one. In order: the next object's after libhz.so (the
/// shared C++ runtime; cached); the one the caller's object sees in its own
/// scope (a C++ library `dlopen`ed with `RTLD_LOCAL`, whose runtime is not
/// in the global scope); the first in the global scope outside libhz.so (a
/// C++ runtime linked statically into an executable that exports it).
extern "C" fn next_new(kind: usize, caller: usize) -> usize {
    let slot = &NEXT[kind];
    let cached = slot.load(Relaxed);
    if cached != 0 {
        return cached;
    }
    let name = NEW_NAMES[kind].as_ptr() as *const c_char;
    // SAFETY: `name` is a NUL-terminated constant; `RTLD_NEXT` searches the
    // objects loaded after libhz.so, so the result is never a stub of ours.
    let next = unsafe { libc::dlsym(libc::RTLD_NEXT, name) } as usize;
    if next != 0 {
        slot.store(next, Relaxed);
        return next;
    }
    // SAFETY: as in `in_libhz`; `dli_fname` is then a NUL-terminated path
    // owned by the loader; RTLD_NOLOAD opens nothing new, and the handle it
    // returns (one more reference to a loaded object) is closed at once.
    let local = unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        let mut f = 0;
        if libc::dladdr(caller as *const c_void, &mut info) != 0 && !info.dli_fname.is_null() {
            let h = libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD);
            if !h.is_null() {
                f = libc::dlsym(h, name) as usize;
                libc::dlclose(h);
            }
        }
        f
    };
    if local != 0 && !in_libhz(local) {
        return local;
    }
    // SAFETY: as the first lookup.
    let any = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name) } as usize;
    if any != 0 && !in_libhz(any) {
        return any;
    }
    hz_core::os::fatal(
        "operator new: out of memory, and no C++ runtime besides libhz.so to throw std::bad_alloc",
    )
}

/// Defines `operator new` stubs (x86-64): `$name` returns `$fast(args)`
/// when that is not null, else jumps to `next_new($kind, its return
/// address)` with the arguments unchanged. It saves the argument registers `$push` (and pops
/// them as `$pop`): `rdi` alone for the one-argument forms, `rdi`, `rsi` and
/// `rdx` for the others; either count keeps the stack 16-byte aligned at
/// each call (8 at entry, plus the pushes), and `$ret` is where the return
/// address then sits. The CFI lets debuggers and profilers unwind through
/// a stub.
#[cfg(target_arch = "x86_64")]
macro_rules! new_stub {
    ($name:ident, $kind:expr, $fast:ident, [$($push:literal),+], [$($pop:literal),+], $ret:literal) => {
        /// An `operator new`; see the module documentation.
        #[unsafe(naked)]
        #[no_mangle]
        pub extern "C" fn $name() {
            // SAFETY: a leaf of plain calls: the saved arguments are restored
            // before the return or the jump, and `$fast`/`next_new` follow the
            // C ABI; after the jump no frame of this stub is left for a C++
            // exception to pass through.
            core::arch::naked_asm!(
                ".cfi_startproc",
                $(concat!("push ", $push), ".cfi_adjust_cfa_offset 8",)+
                "call {fast}",
                $(concat!("pop ", $pop), ".cfi_adjust_cfa_offset -8",)+
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                $(concat!("push ", $push), ".cfi_adjust_cfa_offset 8",)+
                concat!("mov rsi, [rsp + ", $ret, "]"),
                "mov edi, {kind}",
                "call {next}",
                $(concat!("pop ", $pop), ".cfi_adjust_cfa_offset -8",)+
                "jmp rax",
                ".cfi_endproc",
                fast = sym $fast,
                next = sym next_new,
                kind = const $kind,
            )
        }
    };
    ($name:ident, $kind:expr, $fast:ident, one) => {
        new_stub!($name, $kind, $fast, ["rdi"], ["rdi"], 8);
    };
    ($name:ident, $kind:expr, $fast:ident, three) => {
        new_stub!($name, $kind, $fast, ["rdi", "rsi", "rdx"], ["rdx", "rsi", "rdi"], 24);
    };
}

/// Defines `operator new` stubs (aarch64), as the x86-64 ones: `$name`
/// returns `$fast(args)` when that is not null, else branches to
/// `next_new($kind, its return address)` with the arguments unchanged. One
/// 48-byte frame holds the frame record and `x0`–`x2` (all three, whatever
/// the form: one `str` more for the one-argument forms); the branch goes
/// through `x16`, which the ABI leaves free at a call and which a BTI
/// landing pad (`bti c`) accepts.
#[cfg(target_arch = "aarch64")]
macro_rules! new_stub {
    ($name:ident, $kind:expr, $fast:ident, $args:ident) => {
        /// An `operator new`; see the module documentation.
        #[unsafe(naked)]
        #[no_mangle]
        pub extern "C" fn $name() {
            // SAFETY: a leaf of plain calls: the saved arguments and frame
            // record are restored before the return or the branch, and
            // `$fast`/`next_new` follow the C ABI; after the branch no frame
            // of this stub is left for a C++ exception to pass through.
            core::arch::naked_asm!(
                ".cfi_startproc",
                "stp x29, x30, [sp, #-48]!",
                ".cfi_def_cfa_offset 48",
                ".cfi_offset x29, -48",
                ".cfi_offset x30, -40",
                "mov x29, sp",
                "stp x0, x1, [sp, #16]",
                "str x2, [sp, #32]",
                "bl {fast}",
                "cbz x0, 2f",
                ".cfi_remember_state",
                "ldp x29, x30, [sp], #48",
                ".cfi_def_cfa_offset 0",
                ".cfi_restore x29",
                ".cfi_restore x30",
                "ret",
                "2:",
                ".cfi_restore_state",
                "ldr x1, [sp, #8]",
                "mov x0, #{kind}",
                "bl {next}",
                "mov x16, x0",
                "ldp x0, x1, [sp, #16]",
                "ldr x2, [sp, #32]",
                "ldp x29, x30, [sp], #48",
                ".cfi_def_cfa_offset 0",
                ".cfi_restore x29",
                ".cfi_restore x30",
                "br x16",
                ".cfi_endproc",
                fast = sym $fast,
                next = sym next_new,
                kind = const $kind,
            )
        }
    };
}

/// A block for `new(size)`: `malloc`'s (a unique pointer for 0 bytes).
/// Its own function rather than `sym` of the exported `malloc`, which is
/// interposable and would be called through the PLT (the linker folds the
/// two bodies into one anyway).
extern "C" fn new_fast(size: usize) -> *mut c_void {
    hz_core::malloc_errno(size).cast()
}

/// A block for `new(size, align_val_t)`; null (so the C++ runtime decides)
/// when `align` is not a power of two.
extern "C" fn new_aligned_fast(size: usize, align: usize) -> *mut c_void {
    crate::alloc_aligned(align, size)
}

new_stub!(_Znwm, 0, new_fast, one);
new_stub!(_Znam, 1, new_fast, one);
new_stub!(_ZnwmRKSt9nothrow_t, 2, new_fast, three);
new_stub!(_ZnamRKSt9nothrow_t, 3, new_fast, three);
new_stub!(_ZnwmSt11align_val_t, 4, new_aligned_fast, three);
new_stub!(_ZnamSt11align_val_t, 5, new_aligned_fast, three);
new_stub!(
    _ZnwmSt11align_val_tRKSt9nothrow_t,
    6,
    new_aligned_fast,
    three
);
new_stub!(
    _ZnamSt11align_val_tRKSt9nothrow_t,
    7,
    new_aligned_fast,
    three
);

/// Defines `operator delete` forms: each frees its first argument and
/// ignores the rest (size, alignment, `nothrow`).
macro_rules! delete_fn {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        /// An `operator delete`; see the module documentation.
        ///
        /// # Safety
        /// As [`free`](crate::free).
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: forwarded contract.
            unsafe { crate::free_keep_errno(p, None) }
        }
    )*};
}

delete_fn! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size: usize);
    _ZdaPvm(size: usize);
    _ZdlPvRKSt9nothrow_t(nothrow: *const c_void);
    _ZdaPvRKSt9nothrow_t(nothrow: *const c_void);
    _ZdlPvSt11align_val_t(align: usize);
    _ZdaPvSt11align_val_t(align: usize);
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, nothrow: *const c_void);
}
