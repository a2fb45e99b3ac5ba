//! Threads, fork, thread teardown and dlopen under libhz.so.

use hz_e2e::{run_test_bin, test_bin};

#[test]
fn stress_patterns_survive_cross_thread_frees_in_waves() {
    let out = run_test_bin("stress", &["4", "4", "20000"]);
    assert_eq!(out.stdout.trim(), "stress: ok");
}

#[test]
fn stress_with_many_short_lived_threads() {
    let out = run_test_bin("stress", &["32", "6", "1500"]);
    assert_eq!(out.stdout.trim(), "stress: ok");
}

#[test]
fn fork_while_other_threads_allocate() {
    let out = run_test_bin("fork", &["100", "4"]);
    assert_eq!(out.stdout.trim(), "fork: ok");
}

#[test]
fn allocation_in_key_and_thread_local_destructors() {
    let out = run_test_bin("tls_dtor", &["10", "8"]);
    assert!(out.stdout.starts_with("tls_dtor: ok"), "{}", out.stdout);
}

#[test]
fn dlopen_dlclose_of_a_tls_library_while_threads_allocate() {
    let lib = test_bin("libtlsmod.so");
    let lib = lib.to_str().expect("utf-8 path");
    let out = run_test_bin("dlopen", &[lib, "10"]);
    assert_eq!(out.stdout.trim(), "dlopen: ok");
}
