//! The `secure` build turns heap misuse into a clean abort naming the
//! pointer and the check. Each misuse runs in a child process (this test
//! binary re-executed with `HZ_SECURE_CASE` set) and the parent asserts that
//! it died of SIGABRT (or SIGSEGV for a guard page) with the right line.
//! Run with `cargo test -p hz-core --release --features secure`.
#![cfg(feature = "secure")]

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
#[path = "reliability/child.rs"]
mod child;

#[global_allocator]
static A: hz_core::HzAlloc = hz_core::HzAlloc;

/// Runs `case` in a child (this binary, test `child_entry`).
fn child(case: &str, extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = child::self_command();
    cmd.args([
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    cmd.env("HZ_SECURE_CASE", case);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Runs `case` in a child; returns (signal, stderr).
fn run_case(case: &str, extra_env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = child(case, extra_env);
    (
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expect_abort(case: &str, msg: &str) {
    expect_abort_env(case, msg, &[]);
}

fn expect_abort_env(case: &str, msg: &str, env: &[(&str, &str)]) {
    let (sig, err) = run_case(case, env);
    assert_eq!(
        sig,
        Some(libc::SIGABRT),
        "case {case}: expected SIGABRT, stderr:\n{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("hz: fatal:"))
        .unwrap_or_else(|| panic!("case {case}: no hz line in:\n{err}"));
    assert!(
        line.contains(msg),
        "case {case}: {line:?} does not name {msg:?}"
    );
    assert!(
        line.contains("0x"),
        "case {case}: {line:?} does not name the pointer"
    );
}

/// The child side: performs one misuse selected by HZ_SECURE_CASE.
#[test]
fn child_entry() {
    let Ok(case) = std::env::var("HZ_SECURE_CASE") else {
        return;
    };
    let l = Layout::from_size_align(48, 16).unwrap();
    // SAFETY: deliberate misuse; the allocator must abort before harm.
    unsafe {
        let p = A.alloc(l);
        std::ptr::write_bytes(p, 1, 48);
        match case.as_str() {
            "double_free" => {
                hz_core::free(p);
                hz_core::free(p);
            }
            "double_free_rust" => {
                A.dealloc(p, l);
                A.dealloc(p, l);
            }
            "layout_mismatch" => {
                // A block of 48 bytes given back as if it were 4 KiB.
                A.dealloc(p, Layout::from_size_align(4096, 16).unwrap());
            }
            "layout_mismatch_next_class" => {
                // 49 bytes: the class just above the block's (48 bytes).
                A.dealloc(p, Layout::from_size_align(49, 16).unwrap());
            }
            "layout_mismatch_class_below" => {
                // 32 bytes: the class just below.
                A.dealloc(p, Layout::from_size_align(32, 8).unwrap());
            }
            "layout_mismatch_large" => {
                // A large block (a page run) given back as a small one, and
                // a small block given back as a large one.
                if std::env::var_os("HZ_CASE_SMALL_AS_LARGE").is_some() {
                    A.dealloc(p, Layout::from_size_align(1 << 20, 16).unwrap());
                } else {
                    let l = Layout::from_size_align(1 << 20, 16).unwrap();
                    A.dealloc(A.alloc(l), Layout::from_size_align(48, 16).unwrap());
                }
            }
            "layout_same_class" => {
                // Any size of the block's class (33..=48 bytes at the default
                // alignment) names it: `class_for` maps them all to 48.
                A.dealloc(p, Layout::from_size_align(33, 1).unwrap());
                for size in [33, 40, 48] {
                    let q = A.alloc(Layout::from_size_align(48, 16).unwrap());
                    A.dealloc(q, Layout::from_size_align(size, 16).unwrap());
                }
                let q = A.alloc(Layout::from_size_align(100, 64).unwrap());
                A.dealloc(q, Layout::from_size_align(100, 64).unwrap());
                eprintln!("same class passed");
                std::process::exit(0);
            }
            "interior" => hz_core::free(p.add(16)),
            "interior_large" => {
                let q = hz_core::malloc(1 << 20);
                hz_core::free(q.add(4096));
            }
            "foreign" => {
                let mut x = [0u64; 4];
                hz_core::free(x.as_mut_ptr() as *mut u8);
            }
            "realloc_freed" => {
                hz_core::free(p);
                hz_core::realloc(p, 100);
            }
            "overflow_link" => {
                // Fill whole spans, keep one block x whose neighbour x+48 is
                // in the same span, free everything else and flush the
                // thread cache: x+48 now sits on its span's free list with
                // an encoded link. Overflow from x into it, then allocate
                // enough to walk every free list: the clobbered link must
                // be caught when it is read.
                let blocks: Vec<*mut u8> = (0..5000).map(|_| hz_core::malloc(48)).collect();
                let set: std::collections::HashSet<usize> =
                    blocks.iter().map(|&b| b as usize).collect();
                let x = *blocks
                    .iter()
                    .find(|&&b| set.contains(&(b as usize + 48)) && (b as usize + 96) % 65536 >= 96)
                    .expect("a block with an allocated neighbour");
                for &b in &blocks {
                    if b != x {
                        hz_core::free(b);
                    }
                }
                hz_core::collect();
                std::ptr::write_bytes(x, 0x41, 48 + 16);
                for _ in 0..20_000 {
                    hz_core::malloc(48);
                }
            }
            "guard_large" => {
                let q = hz_core::malloc(200_000);
                let u = hz_core::usable_size(q);
                std::ptr::write_volatile(q.add(u), 1); // one past the end
            }
            "write_after_free" => {
                // The freed block goes to the top of its bin and is the next
                // one handed out: its first word no longer holds the marker.
                hz_core::free(p);
                std::ptr::write_volatile(p as *mut u64, 0x4141_4141_4141_4141);
                let q = hz_core::malloc(48);
                eprintln!("malloc returned {q:p}");
            }
            "never_carved" => {
                // A fresh 3 KiB class: one refill carves 8 of the span's 20
                // blocks, so the span's last block has never been handed out.
                let q = hz_core::malloc(3000);
                let size = hz_core::usable_size(q);
                let base = q as usize & !0xffff;
                let last = base + ((65536 - 4096) / size - 1) * size;
                hz_core::free(last as *mut u8);
            }
            "never_carved_reused" => {
                // The same, on pages that held data before: a large block
                // written with junk and freed leaves its run resident
                // (dirty); the span of a fresh class carved there must
                // still know which of its blocks were never handed out.
                let big = hz_core::malloc(200_000);
                std::ptr::write_bytes(big, 0x41, 200_000);
                hz_core::free(big);
                let q = hz_core::malloc(5000);
                let base = q as usize & !0xffff;
                if base < big as usize || base >= big as usize + 200_000 {
                    eprintln!("span {base:#x} not carved on the freed run {big:p}");
                    std::process::exit(4);
                }
                let size = hz_core::usable_size(q);
                let last = base + ((65536 - 4096) / size - 1) * size;
                hz_core::free(last as *mut u8);
            }
            "fill_check" => {
                std::ptr::write_bytes(p, 0x11, 48);
                hz_core::free(p);
                // Past the two link words the freed block must hold the fill.
                let tail: Vec<u8> = (16..48)
                    .map(|i| std::ptr::read_volatile(p.add(i)))
                    .collect();
                let filled = tail.iter().all(|&b| b == 0xdf);
                let old = tail.iter().all(|&b| b == 0x11);
                std::process::exit(if filled {
                    10
                } else if old {
                    11
                } else {
                    12
                });
            }
            c if c.starts_with("double_free_pooled:") => {
                // 500 blocks of a pooled class (up to 2 KiB) freed by a
                // second thread while their owner runs: they go to the
                // shared pool (or home) as carrier batches. Freeing one of
                // them again, a carrier or a carried block, must abort.
                let idx: usize = c["double_free_pooled:".len()..].parse().unwrap();
                let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
                let (release, wait) = std::sync::mpsc::channel::<()>();
                let owner = std::thread::spawn(move || {
                    let v = (0..500).map(|_| hz_core::malloc(1900) as usize).collect();
                    tx.send(v).unwrap();
                    let _ = wait.recv();
                });
                let v = rx.recv().unwrap();
                let w = v.clone();
                std::thread::spawn(move || {
                    for &b in &w {
                        hz_core::free(b as *mut u8);
                    }
                })
                .join()
                .unwrap();
                hz_core::free(v[idx] as *mut u8);
                let _ = release.send(());
                let _ = owner.join();
            }
            other => panic!("unknown case {other}"),
        }
    }
    eprintln!("child survived case {case}");
    std::process::exit(3);
}

#[test]
fn double_free_aborts() {
    expect_abort("double_free", "double free");
    expect_abort("double_free_rust", "double free");
}

#[test]
fn double_free_of_a_pooled_block_aborts() {
    for idx in [0, 1, 250, 499] {
        expect_abort(&format!("double_free_pooled:{idx}"), "double free");
    }
}

#[test]
fn interior_pointer_aborts() {
    expect_abort("interior", "interior pointer");
    expect_abort("interior_large", "interior pointer");
}

#[test]
fn foreign_pointer_aborts() {
    expect_abort("foreign", "never handed out");
}

#[test]
fn write_after_free_is_caught_when_the_block_is_reused() {
    expect_abort_env(
        "write_after_free",
        "modified after free",
        &[("HZ_SECURE_FILL", "1")],
    );
    // Off by default (the check would wait for blocks freed on other cores).
    let (sig, err) = run_case("write_after_free", &[]);
    assert_eq!(sig, None, "stderr:\n{err}");
    assert!(err.contains("malloc returned"), "stderr:\n{err}");
}

/// With `HZ_SECURE_FILL=1` every free takes the checked path (the
/// carving-point words stay 0) and reads the carving point from the span.
const FILL: &[(&str, &str)] = &[("HZ_SECURE_FILL", "1")];

#[test]
fn free_of_a_block_never_carved_aborts() {
    expect_abort("never_carved", "never handed out");
    expect_abort_env("never_carved", "never handed out", FILL);
}

#[test]
fn free_of_a_block_never_carved_on_reused_pages_aborts() {
    expect_abort("never_carved_reused", "never handed out");
    expect_abort_env("never_carved_reused", "never handed out", FILL);
}

#[test]
fn double_free_aborts_with_secure_fill() {
    expect_abort_env("double_free", "double free", FILL);
    expect_abort_env("double_free_pooled:250", "double free", FILL);
}

#[test]
fn dealloc_with_a_wrong_layout_aborts() {
    expect_abort("layout_mismatch", "layout that does not match");
    expect_abort("layout_mismatch_next_class", "layout that does not match");
    expect_abort("layout_mismatch_class_below", "layout that does not match");
    expect_abort("layout_mismatch_large", "layout that does not match");
    expect_abort_env(
        "layout_mismatch_large",
        "layout that does not match",
        &[("HZ_CASE_SMALL_AS_LARGE", "1")],
    );
}

#[test]
fn dealloc_with_any_layout_of_the_class_passes() {
    let out = child("layout_same_class", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{err}");
    assert!(err.contains("same class passed"), "stderr:\n{err}");
}

#[test]
fn realloc_of_freed_block_aborts() {
    expect_abort("realloc_freed", "realloc of a freed block");
}

#[test]
fn overflow_into_free_block_is_caught() {
    let (sig, err) = run_case("overflow_link", &[]);
    assert_eq!(sig, Some(libc::SIGABRT), "stderr:\n{err}");
    assert!(err.contains("hz: fatal:"), "{err}");
}

#[test]
fn guard_page_after_large_block() {
    let (sig, err) = run_case("guard_large", &[]);
    assert_eq!(sig, Some(libc::SIGSEGV), "stderr:\n{err}");
}

#[test]
fn fresh_span_order_is_randomised() {
    // In a default build consecutive blocks of a fresh span are adjacent.
    let ps: Vec<usize> = (0..64).map(|_| hz_core::malloc(4000) as usize).collect();
    let adjacent = ps
        .windows(2)
        .filter(|w| w[1].abs_diff(w[0]) == 4096)
        .count();
    assert!(
        adjacent < 32,
        "{adjacent} of 63 neighbours adjacent: carving is not randomised"
    );
    for p in ps {
        // SAFETY: allocated above.
        unsafe { hz_core::free(p as *mut u8) };
    }
}

fn exit_code(case: &str, env: &[(&str, &str)]) -> Option<i32> {
    child(case, env).status.code()
}

#[test]
fn fill_on_free_when_asked() {
    assert_eq!(
        exit_code("fill_check", &[("HZ_SECURE_FILL", "1")]),
        Some(10),
        "freed block filled with 0xdf"
    );
    assert_eq!(
        exit_code("fill_check", &[("HZ_SECURE_FILL", "0")]),
        Some(11),
        "no fill unless asked"
    );
}
