//! Builds the C and C++ programs the end-to-end tests run under
//! `LD_PRELOAD=libhz.so`: every `tests/c/NAME.c` / `tests/c/NAME.cc` becomes
//! the executable `NAME`, and every `tests/c/libNAME.c` the shared library
//! `libNAME.so`, all in `$OUT_DIR/bin`, whose path the tests read from
//! `HZ_TEST_BIN_DIR`.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("bin");
    fs::create_dir_all(&out).expect("create OUT_DIR/bin");
    let src = Path::new("tests/c");
    println!("cargo:rerun-if-changed={}", src.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(src)
        .expect("read tests/c")
        .map(|e| e.expect("read tests/c entry").path())
        .collect();
    sources.sort();
    for path in sources {
        // Headers too: a change to check.h must rebuild the programs.
        println!("cargo:rerun-if-changed={}", path.display());
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let cpp = match ext {
            "c" => false,
            "cc" => true,
            _ => continue,
        };
        let shared = stem.starts_with("lib");
        let target = out.join(if shared {
            format!("{stem}.so")
        } else {
            stem.to_owned()
        });
        let mut cmd = cc::Build::new()
            .cpp(cpp)
            .opt_level(2)
            .debug(true)
            .cargo_metadata(false)
            .get_compiler()
            .to_command();
        if shared {
            cmd.args(["-shared", "-fPIC"]);
        }
        cmd.arg(&path).arg("-o").arg(&target).args([
            "-pthread",
            "-ldl",
            "-Wall",
            "-Wextra",
            "-Wno-deprecated-declarations",
        ]);
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            status.success(),
            "compiling {} failed: {cmd:?}",
            path.display()
        );
    }
    println!("cargo:rustc-env=HZ_TEST_BIN_DIR={}", out.display());
}
