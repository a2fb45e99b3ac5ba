//! libhz.so on kernels with 16 and 64 KiB pages (arm64, ppc64), emulated
//! here by tests/c/libpageshim.c: the page size reported by `getauxval`
//! and `sysconf`, mappings aligned to it, and `munmap`, `mprotect`,
//! `madvise`, `mincore` and `mremap` refusing addresses not aligned to it
//! and rounding lengths up to it — so an allocator that committed,
//! purged or moved memory in 4 KiB units would fail its calls or discard a
//! neighbour's data. The end-to-end programs check their own blocks'
//! contents (api: every entry point, `valloc`/`pvalloc` aligned to the
//! page `sysconf` reports; stress: patterns across threads; fork; thread
//! teardown; dlopen; C++; blocks recycled through `calloc` and `realloc`).
//! scripts/pages.sh runs hz-core's own test suite the same way.

use hz_e2e::{large_page_command, run, test_bin, LIMIT};

const PAGES: [usize; 2] = [16 << 10, 64 << 10];

/// Runs test program `name` with `args` under libhz.so at each emulated
/// page size and returns its stdouts (none under qemu-user).
fn at_each_page(name: &str, args: &[&str]) -> Vec<String> {
    let mut outs = Vec::new();
    for page in PAGES {
        let Some(mut cmd) = large_page_command(test_bin(name), page) else {
            eprintln!("SKIPPED: the page shim does not run under qemu-user");
            return outs;
        };
        let out = run(cmd.args(args), LIMIT);
        out.assert_success(&format!("{name} {args:?} with {page}-byte pages"));
        outs.push(out.stdout);
    }
    outs
}

#[test]
fn the_shim_reports_and_enforces_the_page() {
    for (out, page) in at_each_page("pagecheck", &[]).iter().zip(PAGES) {
        assert_eq!(out.trim(), format!("pagecheck: ok {page}"));
    }
}

#[test]
fn api_at_larger_pages() {
    for out in at_each_page("api", &[]) {
        assert!(out.trim_end().ends_with("api: ok"), "{out}");
    }
}

#[test]
fn threads_and_remote_frees_at_larger_pages() {
    for out in at_each_page("stress", &["4", "4", "20000"]) {
        assert_eq!(out.trim(), "stress: ok");
    }
}

#[test]
fn fork_at_larger_pages() {
    for out in at_each_page("fork", &["100", "4"]) {
        assert_eq!(out.trim(), "fork: ok");
    }
}

#[test]
fn thread_teardown_and_dlopen_at_larger_pages() {
    for out in at_each_page("tls_dtor", &["10", "8"]) {
        assert!(out.starts_with("tls_dtor: ok"), "{out}");
    }
    let lib = test_bin("libtlsmod.so");
    let lib = lib.to_str().expect("utf-8 path");
    for out in at_each_page("dlopen", &[lib, "10"]) {
        assert_eq!(out.trim(), "dlopen: ok");
    }
}

#[test]
fn cxx_at_larger_pages() {
    for out in at_each_page("cxx", &[]) {
        assert!(out.contains("cxx: ok"), "{out}");
    }
}

#[test]
fn big_blocks_recycled_through_calloc_and_realloc_at_larger_pages() {
    for out in at_each_page("pagecheck", &["recycle"]) {
        assert!(out.starts_with("pagecheck: recycled ok"), "{out}");
    }
}
