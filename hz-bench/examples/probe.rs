//! The single-thread malloc+free pair probe for instruction counts
//! (`scripts/instructions.sh` runs it under callgrind): the loop of
//! `hz-bench/c/pairs.c`, in-process, through one allocator API.
//!
//! `cargo run --release -p hz-bench --example probe -- MODE N`
//!
//! MODE: `hz` (`hz_core::HzAlloc` as a `GlobalAlloc`: the class comes from
//! the `Layout`), `hz-c` (`hz_core::malloc`/`free`: `free` reads the page
//! tag), `mimalloc` (`mimalloc::MiMalloc`), `mi-c` (`mi_malloc`/`mi_free`
//! of the same static mimalloc), `system` (`std::alloc::System`, glibc).
//! `--c-pairs` prints the path of the C probe (built by build.rs), and
//! `--cxx-pairs` that of the C++ program whose `pairs` mode is the same
//! probe with `operator new`/`delete`.
//!
//! One live block of each size 16..1024 stays for the whole run, 100 000
//! warm-up pairs, then N pairs, sizes cycling through 16..1024 in steps of
//! 16, each block written once.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

extern "C" {
    // The mimalloc crate links libmimalloc-sys's static library.
    fn mi_malloc(size: usize) -> *mut u8;
    fn mi_free(p: *mut u8);
}

trait Api {
    /// # Safety
    /// `s` > 0.
    unsafe fn alloc(&self, s: usize) -> *mut u8;
    /// # Safety
    /// `p` came from `alloc(s)` and is live.
    unsafe fn free(&self, p: *mut u8, s: usize);
}

struct Global<A>(A);
impl<A: GlobalAlloc> Api for Global<A> {
    #[inline(always)]
    unsafe fn alloc(&self, s: usize) -> *mut u8 {
        // SAFETY: s > 0, alignment 8 is a power of two.
        unsafe { self.0.alloc(Layout::from_size_align_unchecked(s, 8)) }
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, s: usize) {
        // SAFETY: forwarded contract; the same layout as the allocation.
        unsafe { self.0.dealloc(p, Layout::from_size_align_unchecked(s, 8)) }
    }
}

struct HzC;
impl Api for HzC {
    #[inline(always)]
    unsafe fn alloc(&self, s: usize) -> *mut u8 {
        hz_core::malloc(s)
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, _: usize) {
        // SAFETY: p is a live block of hz.
        unsafe { hz_core::free(p) }
    }
}

struct MiC;
impl Api for MiC {
    #[inline(always)]
    unsafe fn alloc(&self, s: usize) -> *mut u8 {
        // SAFETY: plain C allocation.
        unsafe { mi_malloc(s) }
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8, _: usize) {
        // SAFETY: p is a live block of mimalloc.
        unsafe { mi_free(p) }
    }
}

#[inline(never)]
fn run<A: Api>(a: &A, n: u64) {
    for i in 0..n {
        let s = black_box(16 + (i as usize & 63) * 16);
        // SAFETY: s > 0; p is freed with the size it was allocated with.
        unsafe {
            let p = a.alloc(s);
            assert!(!p.is_null());
            p.write_volatile(1);
            a.free(black_box(p), s);
        }
    }
}

fn probe<A: Api>(a: &A, n: u64) {
    let sizes = || (0..64).map(|i| 16 + i * 16);
    // SAFETY: sizes > 0; each kept block is freed once with its size.
    let keep: Vec<*mut u8> = sizes().map(|s| unsafe { a.alloc(s) }).collect();
    assert!(keep.iter().all(|p| !p.is_null()));
    run(a, 100_000);
    run(a, n);
    for (p, s) in keep.into_iter().zip(sizes()) {
        // SAFETY: as above.
        unsafe { a.free(p, s) };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--c-pairs") {
        println!("{}", env!("HZB_C_PAIRS"));
        return;
    }
    if args.first().map(String::as_str) == Some("--cxx-pairs") {
        println!("{}", env!("HZB_C_BENCH_CXX"));
        return;
    }
    let usage = "usage: probe hz|hz-c|mimalloc|mi-c|system N | probe --c-pairs | probe --cxx-pairs";
    let (Some(mode), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    match mode.as_str() {
        "hz" => probe(&Global(hz_core::HzAlloc), n),
        "hz-c" => probe(&HzC, n),
        "mimalloc" => probe(&Global(mimalloc::MiMalloc), n),
        "mi-c" => probe(&MiC, n),
        "system" => probe(&Global(System), n),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
