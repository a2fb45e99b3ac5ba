//! The hardened build for C programs, `libhz-secure.so`
//! (`scripts/build-secure.sh`; the harness builds it when missing or stale).
//!
//! * Heap misuse in a C program (tests/c/misuse.c) dies of SIGABRT with one
//!   line `hz: fatal: <check> 0x<ptr>` naming the pointer, or of SIGSEGV on
//!   a guard page; `HZ_SECURE_FILL=1` fills freed blocks with 0xdf.
//! * The default `libhz.so` survives frees of foreign pointers.
//! * `libhz-secure.so` is still a working allocator: the API, thread and
//!   real-program tests pass under it.

use hz_e2e::{
    hz_command, plain_command, run, same_as_glibc_under, secure_command, test_bin, Output, TempDir,
    LIMIT,
};
use std::os::unix::process::ExitStatusExt;

/// Runs `misuse CASE` under libhz-secure.so.
fn misuse(case: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = secure_command(test_bin("misuse"));
    cmd.arg(case).envs(env.iter().copied());
    run(&mut cmd, LIMIT)
}

/// `misuse CASE` must die of SIGABRT with a `hz: fatal:` line containing
/// `check` and naming the pointer: the one the program printed as
/// `ptr 0x...` when `named`, else just some `0x...`.
#[track_caller]
fn expect_abort(case: &str, check: &str, named: bool) {
    let out = misuse(case, &[]);
    let why = format!(
        "misuse {case} under libhz-secure.so: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status, out.stdout, out.stderr
    );
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{why}");
    assert!(!out.stdout.contains("survived"), "{why}");
    let fatal: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("hz: fatal: "))
        .collect();
    assert_eq!(fatal.len(), 1, "expected one hz: fatal: line; {why}");
    let line = fatal[0];
    assert!(
        line.contains(check),
        "{line:?} does not say {check:?}; {why}"
    );
    let ptr = line
        .rsplit(' ')
        .next()
        .filter(|w| w.starts_with("0x") && w.len() > 2)
        .unwrap_or_else(|| panic!("{line:?} does not end in a pointer; {why}"));
    if named {
        let printed = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ptr "))
            .unwrap_or_else(|| panic!("misuse printed no pointer; {why}"));
        assert_eq!(ptr, printed, "the fatal line names another pointer; {why}");
    }
}

#[test]
fn double_free_aborts() {
    expect_abort("double_free", "double free", true);
}

#[test]
fn double_free_of_a_large_block_aborts() {
    expect_abort("double_free_large", "already freed", true);
}

#[test]
fn free_of_an_interior_pointer_aborts() {
    expect_abort("interior", "free of an interior pointer", true);
}

#[test]
fn free_of_an_interior_pointer_of_a_large_block_aborts() {
    expect_abort("interior_large", "free of an interior pointer", true);
}

#[test]
fn free_of_a_stack_pointer_aborts() {
    expect_abort("foreign_stack", "never handed out", true);
}

#[test]
fn free_of_a_static_pointer_aborts() {
    expect_abort("foreign_static", "never handed out", true);
}

#[test]
fn free_of_an_mmap_pointer_aborts() {
    expect_abort("foreign_mmap", "never handed out", true);
}

#[test]
fn realloc_of_a_freed_block_aborts() {
    expect_abort("realloc_freed", "realloc of a freed block", true);
}

/// A linear overflow from a live block into its free neighbour (on its
/// span's free list after `malloc_trim(0)`) clobbers the neighbour's encoded
/// links; allocating the span again decodes them. Repeated: the carving is
/// random, so every run sees another layout.
#[test]
fn overflow_into_a_free_neighbour_is_caught() {
    for _ in 0..3 {
        expect_abort("overflow_link", "corrupted free-list link", false);
    }
}

#[test]
fn write_past_a_large_block_hits_the_guard_page() {
    let out = misuse("guard_large", &[]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

#[test]
fn freed_blocks_read_0xdf_with_secure_fill() {
    let filled = misuse("fill", &[("HZ_SECURE_FILL", "1")]);
    filled.assert_success("misuse fill with HZ_SECURE_FILL=1");
    assert_eq!(filled.stdout.trim(), "fill: df");
    // Off by default: the freed bytes keep what the program wrote.
    let mut cmd = secure_command(test_bin("misuse"));
    cmd.arg("fill").env_remove("HZ_SECURE_FILL");
    let plain = run(&mut cmd, LIMIT);
    plain.assert_success("misuse fill without HZ_SECURE_FILL");
    assert_eq!(plain.stdout.trim(), "fill: old");
}

/// The default build ignores a free of memory it never handed out (glibc
/// would abort; hz keeps the program running).
#[test]
fn default_build_survives_foreign_frees() {
    for case in ["foreign_stack", "foreign_static", "foreign_mmap"] {
        let out = run(hz_command(test_bin("misuse")).arg(case), LIMIT);
        out.assert_success(&format!("misuse {case} under the default libhz.so"));
        assert!(
            out.stdout.contains(&format!("{case}: survived")),
            "{}",
            out.stdout
        );
    }
}

// --- libhz-secure.so is a working allocator ---------------------------------

/// Runs a compiled test program under libhz-secure.so; it must exit 0.
#[track_caller]
fn run_secure(name: &str, args: &[&str]) -> Output {
    let out = run(secure_command(test_bin(name)).args(args), LIMIT);
    out.assert_success(&format!("{name} {args:?} under libhz-secure.so"));
    assert!(!out.stderr.contains("hz: fatal:"), "{name}: {}", out.stderr);
    out
}

/// As `calloc_after_locked_blocks_reads_zero` in api.rs, under the secure
/// build (its runs keep their guard pages while free).
#[test]
fn secure_calloc_after_locked_blocks_reads_zero() {
    let out = run_secure("mlock", &[]);
    assert!(
        out.stdout.starts_with("mlock: ok") || out.stdout.starts_with("mlock: skipped"),
        "{}",
        out.stdout
    );
}

/// As `calloc_and_realloc_work_when_madvise_and_mremap_are_denied` in
/// api.rs, under the secure build.
#[test]
fn secure_calloc_and_realloc_work_when_madvise_and_mremap_are_denied() {
    let out = run_secure("nomadvise", &[]);
    assert!(
        out.stdout.starts_with("nomadvise: ok") || out.stdout.starts_with("nomadvise: skipped"),
        "{}",
        out.stdout
    );
}

#[test]
fn secure_api_corner_cases_match_glibc() {
    let out = run_secure("api", &[]);
    assert_eq!(out.stdout.trim(), "api: ok");
}

#[test]
fn secure_every_export_works_and_keeps_errno() {
    let out = run_secure("hz_only", &["exports"]);
    assert_eq!(out.stdout.trim(), "exports: ok");
}

#[test]
fn secure_mallinfo_and_malloc_stats_report_live_memory() {
    let out = run_secure("hz_only", &["stats"]);
    assert_eq!(out.stdout.trim(), "stats: ok");
}

#[test]
fn secure_cxx_program_matches_glibc() {
    let out = run_secure("cxx", &[]);
    let plain = run(&mut plain_command(test_bin("cxx")), LIMIT);
    plain.assert_success("cxx on plain glibc");
    assert_eq!(
        out.stdout, plain.stdout,
        "output differs from the glibc run"
    );
}

/// The C++ operators of libhz-secure.so: `new` and `delete` in every form,
/// and their out-of-memory contract, report as on plain glibc.
#[test]
fn secure_cxx_operators_match_glibc() {
    let out = run_secure("cxx_new", &[]);
    let plain = run(&mut plain_command(test_bin("cxx_new")), LIMIT);
    plain.assert_success("cxx_new on plain glibc");
    out.assert_report_after_first_line("operator new from libhz-secure.so", &plain);
}

#[test]
fn secure_stress_cross_thread_frees_in_waves() {
    let out = run_secure("stress", &["4", "4", "20000"]);
    assert_eq!(out.stdout.trim(), "stress: ok");
}

/// With `HZ_SECURE_FILL=1` every `malloc` and `free` takes the slow paths
/// (the thread's TLS slot names a decoy whose bins are always empty and
/// full): threads, cross-thread frees and a C++ program must still work,
/// and every block handed out must pass the marker check.
#[test]
fn secure_fill_mode_runs_threads_and_cxx() {
    let mut cmd = secure_command(test_bin("stress"));
    cmd.args(["4", "4", "20000"]).env("HZ_SECURE_FILL", "1");
    let out = run(&mut cmd, LIMIT);
    out.assert_success("stress 4 4 20000 under libhz-secure.so with HZ_SECURE_FILL=1");
    assert!(!out.stderr.contains("hz: fatal:"), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "stress: ok");
    let mut cmd = secure_command(test_bin("cxx"));
    cmd.env("HZ_SECURE_FILL", "1");
    let out = run(&mut cmd, LIMIT);
    out.assert_success("cxx under libhz-secure.so with HZ_SECURE_FILL=1");
    let plain = run(&mut plain_command(test_bin("cxx")), LIMIT);
    plain.assert_success("cxx on plain glibc");
    assert_eq!(
        out.stdout, plain.stdout,
        "output differs from the glibc run"
    );
}

#[test]
fn secure_stress_many_short_lived_threads() {
    let out = run_secure("stress", &["32", "6", "1500"]);
    assert_eq!(out.stdout.trim(), "stress: ok");
}

#[test]
fn secure_fork_while_other_threads_allocate() {
    let out = run_secure("fork", &["100", "4"]);
    assert_eq!(out.stdout.trim(), "fork: ok");
}

#[test]
fn secure_allocation_in_tls_destructors() {
    let out = run_secure("tls_dtor", &["10", "8"]);
    assert!(out.stdout.starts_with("tls_dtor: ok"), "{}", out.stdout);
}

#[test]
fn secure_dlopen_dlclose_while_threads_allocate() {
    let lib = test_bin("libtlsmod.so");
    let lib = lib.to_str().expect("utf-8 path");
    let out = run_secure("dlopen", &[lib, "10"]);
    assert_eq!(out.stdout.trim(), "dlopen: ok");
}

/// Python (threads, dicts, JSON, big integers), sqlite3 and node under the
/// secure build print what they print on glibc.
fn secure_same_as_glibc(prog: &str, args: &[&str], dir: &TempDir) {
    same_as_glibc_under(
        prog,
        args,
        dir.path(),
        |p| secure_command(p),
        "libhz-secure.so",
    );
}

#[test]
fn secure_python3_workload() {
    let dir = TempDir::new("secure-python");
    let script = r#"
import json, threading, collections
def work(seed):
    d = {}
    for i in range(20000):
        k = "k%d" % ((i * 7919 + seed) % 5003)
        d.setdefault(k, []).append(str(i) * (i % 7))
        if i % 3 == 0:
            d.pop("k%d" % ((i * 31) % 5003), None)
    blob = json.dumps(d, sort_keys=True)
    return len(json.loads(blob)), collections.Counter(blob[::97]).most_common(2), 3 ** 2000 % 1000003
out = [None] * 4
ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, work(i))) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
for r in out: print(r)
"#;
    std::fs::write(dir.path().join("work.py"), script).expect("write work.py");
    secure_same_as_glibc("python3", &["work.py"], &dir);
}

#[test]
fn secure_sqlite3_queries() {
    let dir = TempDir::new("secure-sqlite");
    let sql = "
        CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
          INSERT INTO t SELECT x, 'name' || (x * 7919 % 20000), x % 97, zeroblob(x % 700) FROM c;
        CREATE INDEX t_name ON t(name);
        SELECT grp, count(*), sum(length(payload)), min(name) FROM t GROUP BY grp LIMIT 5;
        DELETE FROM t WHERE id % 3 = 0;
        SELECT count(*), group_concat(name, ',') FROM (SELECT name FROM t ORDER BY name LIMIT 10);
    ";
    std::fs::write(dir.path().join("q.sql"), sql).expect("write q.sql");
    secure_same_as_glibc("sqlite3", &[":memory:", ".read q.sql"], &dir);
}

/// node (tests/js/workers.js): worker threads that start, allocate, hand
/// memory over and exit, under the secure build.
#[test]
fn secure_node_worker_threads() {
    let dir = TempDir::new("secure-node");
    let script = hz_e2e::repo_root().join("tests/js/workers.js");
    secure_same_as_glibc("node", &[script.to_str().expect("path")], &dir);
}
