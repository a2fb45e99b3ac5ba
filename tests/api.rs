//! The malloc API under libhz.so, entry point by entry point.

use hz_e2e::{plain_command, run, run_test_bin, test_bin, LIMIT};

/// Every corner case in tests/c/api.c holds on plain glibc (so the
/// expectations are glibc's real behaviour) and under hz.
#[test]
fn api_corner_cases_match_glibc() {
    let plain = run(&mut plain_command(test_bin("api")), LIMIT);
    plain.assert_success("api on plain glibc");
    let hz = run_test_bin("api", &[]);
    assert_eq!(hz.stdout.trim(), "api: ok");
}

#[test]
fn every_export_works_and_keeps_errno() {
    let out = run_test_bin("hz_only", &["exports"]);
    assert_eq!(out.stdout.trim(), "exports: ok");
}

#[test]
fn freeing_foreign_pointers_does_not_crash() {
    let out = run_test_bin("hz_only", &["foreign"]);
    assert_eq!(out.stdout.trim(), "foreign: ok");
}

/// Needs the real hz-core: the placeholder reports all-zero statistics.
#[test]
fn mallinfo_and_malloc_stats_report_live_memory() {
    let out = run_test_bin("hz_only", &["stats"]);
    assert_eq!(out.stdout.trim(), "stats: ok");
    assert!(
        !out.stderr.trim().is_empty(),
        "malloc_stats() wrote nothing to stderr"
    );
}

/// Needs the real hz-core: HZ_SHOW_STATS=1 makes it print its table at exit.
#[test]
fn show_stats_prints_a_table_at_exit() {
    let out = run(
        hz_e2e::hz_command(test_bin("api")).env("HZ_SHOW_STATS", "1"),
        LIMIT,
    );
    out.assert_success("api with HZ_SHOW_STATS=1");
    assert_eq!(out.stdout.trim(), "api: ok");
    let lines = out.stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        lines >= 3 && out.stderr.contains("allocated"),
        "expected a statistics table on stderr, got:\n{}",
        out.stderr
    );
}

#[test]
fn cxx_program_with_iostream_containers_exceptions() {
    let out = run_test_bin("cxx", &[]);
    assert!(out.stdout.contains("cxx: ok"), "{}", out.stdout);
    let plain = run(&mut plain_command(test_bin("cxx")), LIMIT);
    plain.assert_success("cxx on plain glibc");
    assert_eq!(
        out.stdout, plain.stdout,
        "output differs from the glibc run"
    );
}

/// libhz.so's C++ operators: the program's `new` and `delete` resolve to
/// libhz.so, and out of memory they keep C++'s contract (new_handler
/// retries, `std::bad_alloc`, nullptr from the nothrow forms) exactly as the
/// C++ runtime's own operators do on plain glibc.
#[test]
fn cxx_operators_come_from_hz_and_keep_the_failure_contract() {
    let plain = run(&mut plain_command(test_bin("cxx_new")), LIMIT);
    plain.assert_success("cxx_new on plain glibc");
    let hz = run(
        hz_e2e::hz_command(test_bin("cxx_new")).env("HZ_SHOW_STATS", "1"),
        LIMIT,
    );
    hz.assert_success("cxx_new under libhz.so");
    hz.assert_report_after_first_line("operator new from libhz.so", &plain);
    assert!(hz.stdout.contains("cxx_new: ok"), "{}", hz.stdout);
    // Each of the eleven failing operator calls asked hz at least once.
    let failed: u64 = hz
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("failed allocs"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 'failed allocs' line in:\n{}", hz.stderr));
    assert!(failed >= 11, "hz saw {failed} failed allocations");
}

/// A C program that `dlopen`s a C++ library with `RTLD_LOCAL` (as Python
/// loads extension modules): the library's `new` binds to libhz.so while its
/// C++ runtime is outside the global scope, and out of memory it must still
/// throw `std::bad_alloc` (or return nullptr), as on plain glibc, not abort.
#[test]
fn cxx_library_dlopened_locally_keeps_bad_alloc() {
    let lib = test_bin("libcxxplug.so");
    let lib = lib.to_str().expect("utf-8 path");
    let plain = run(plain_command(test_bin("dlopen_cxx")).arg(lib), LIMIT);
    plain.assert_success("dlopen_cxx on plain glibc");
    let out = run_test_bin("dlopen_cxx", &[lib]);
    assert_eq!(out.stdout.trim(), "dlopen_cxx: ok");
}

/// Blocks locked with `mlock` and freed without `munlock`: the kernel
/// refuses to purge their pages, and a later `calloc` of the same memory
/// must still read zero (it handed out the old bytes when a refused purge
/// was taken for a done one).
#[test]
fn calloc_after_locked_blocks_reads_zero() {
    let out = run_test_bin("mlock", &[]);
    if out.stdout.starts_with("mlock: skipped") {
        eprintln!("SKIPPED: this process may lock no memory (RLIMIT_MEMLOCK)");
        return;
    }
    assert!(out.stdout.starts_with("mlock: ok"), "{}", out.stdout);
}

/// The same under a seccomp filter that denies `madvise` and `mremap`
/// (EPERM), as some sandboxes do: no purge succeeds, and `calloc` still
/// reads zero; no block moves by `mremap`, and `realloc` keeps the
/// contents. Needs no privilege, so it runs where `mlock` is not allowed.
#[test]
fn calloc_and_realloc_work_when_madvise_and_mremap_are_denied() {
    let out = run_test_bin("nomadvise", &[]);
    if out.stdout.starts_with("nomadvise: skipped") {
        eprintln!("SKIPPED: no seccomp filters here ({})", out.stdout.trim());
        return;
    }
    assert_eq!(out.stdout.trim(), "nomadvise: ok");
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)` under libhz.so locks what the
/// program uses, hz's blocks as they are written, and leaves hz's reserved
/// address space alone (locking all of it would take 64 GiB by default;
/// here the arena is 1 GiB, so the old behaviour fails without harm).
#[test]
fn mlockall_locks_what_is_used_not_the_reservation() {
    let mut cmd = hz_e2e::hz_command(test_bin("mlockall"));
    cmd.env("HZ_ARENA_MB", "1024");
    // Under qemu-user, /proc/self/smaps_rollup is the emulator's process's.
    if std::env::var_os("HZ_TEST_RUNNER").is_some() {
        cmd.env("HZ_TEST_LOCKED_MAX_KIB", (256 * 1024).to_string());
    }
    let out = run(&mut cmd, LIMIT);
    out.assert_success("mlockall under libhz.so");
    if out.stdout.starts_with("mlockall: skipped") {
        eprintln!(
            "SKIPPED: this process may not lock memory ({})",
            out.stdout.trim()
        );
        return;
    }
    assert_eq!(out.stdout.trim(), "mlockall: ok");
}
