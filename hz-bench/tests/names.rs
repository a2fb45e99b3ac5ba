//! The binary's in-process allocators are named after its build, and it
//! refuses to measure under the other build's names, so a table can never
//! call the hardened build `hz` or the default one `hz-secure`.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_hz-bench");

#[test]
fn names_match_the_build() {
    let out = Command::new(EXE).arg("__names").output().unwrap();
    assert!(out.status.success());
    let names = String::from_utf8(out.stdout).unwrap();
    let (mine, other) = if hz_bench::allocs::SECURE {
        ("hz-secure mimalloc-secure system", "hz")
    } else {
        ("hz mimalloc system", "hz-secure")
    };
    assert_eq!(names.trim(), mine);
    // A one-iteration cell under the other build's name is refused.
    let out = Command::new(EXE)
        .args(["__cell", other, "1", "0", "16", "64", "1", "4", "16", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // `hz-bench secure` takes only a secure build as its second binary.
    let check = hz_bench::secure::check_secure_exe(std::path::Path::new(EXE));
    assert_eq!(check.is_ok(), hz_bench::allocs::SECURE, "{check:?}");
}
