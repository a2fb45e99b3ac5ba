//! Builds the C and C++ benchmark programs run under LD_PRELOAD (one
//! executable per program, linked into OUT_DIR with the compilers `cc`
//! finds), and records
//! the toolchain facts the report prints.
use std::path::Path;
use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    println!("cargo:rerun-if-changed=c/hzb_common.h");
    println!("cargo:rerun-if-changed=c/hzb_sys.h");
    for prog in ["bench_matrix", "bench_workloads", "pairs"] {
        let src = format!("c/{prog}.c");
        println!("cargo:rerun-if-changed={src}");
        let exe = Path::new(&out).join(prog);
        let compiler = cc::Build::new().opt_level(2).get_compiler();
        let status = compiler
            .to_command()
            // malloc/free must stay calls (no builtin elision) so LD_PRELOAD sees them all.
            .args(["-std=gnu11", "-O2", "-g", "-fno-builtin", "-pthread", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("running the C compiler for {src}: {e}"));
        assert!(status.success(), "compiling {src} failed");
        println!(
            "cargo:rustc-env=HZB_C_{}={}",
            prog.to_uppercase(),
            exe.display()
        );
    }

    // The C++ workload (cxx-collections), with the C++ compiler `cc` finds.
    let src = "c/bench_cxx.cc";
    println!("cargo:rerun-if-changed={src}");
    let exe = Path::new(&out).join("bench_cxx");
    let status = cc::Build::new()
        .cpp(true)
        .opt_level(2)
        .get_compiler()
        .to_command()
        .args(["-std=c++17", "-O2", "-g", "-pthread", "-o"])
        .arg(&exe)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running the C++ compiler for {src}: {e}"));
    assert!(status.success(), "compiling {src} failed");
    println!("cargo:rustc-env=HZB_C_BENCH_CXX={}", exe.display());

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=HZB_RUSTC_VERSION={}", version.trim());

    // The mimalloc crate's version, read from the workspace lock file.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for krate in ["mimalloc", "libmimalloc-sys"] {
        let needle = format!("name = \"{krate}\"\nversion = \"");
        let v = text
            .find(&needle)
            .map(|i| &text[i + needle.len()..])
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("unknown");
        let key = krate.replace('-', "_").to_uppercase();
        println!("cargo:rustc-env=HZB_{key}_VERSION={v}");
    }
}
