//! `hz-bench secure`: the hardened builds against the default ones, in one
//! table. In-process, hz-core and mimalloc with and without their `secure`
//! features cannot live in one binary (cargo unifies features), so this
//! (default) binary runs `hz` and `mimalloc` itself and a second hz-bench,
//! built with `--features secure` in its own target dir, runs `hz-secure`
//! and `mimalloc-secure`; every repetition of every cell runs all of them in
//! turn (interleaved), and medians are compared. Under LD_PRELOAD: libhz.so,
//! libhz-secure.so and Debian's mimalloc (no hardened build of it there).

use crate::allocs::{preload_allocators, repo_root, InProc, SECURE};
use crate::machine::Machine;
use crate::report::{self, secure_markdown, secure_rows};
use crate::runner::Runner;
use crate::suite::{json_header, matrix_cells, matrix_head, measure_matrix, Opts};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming a ready hz-bench built with `--features
/// secure` (then nothing is built).
pub const EXE_ENV: &str = "HZ_BENCH_SECURE_EXE";

/// Cells where hz-secure may be this much slower than hz (the 10%).
pub const LIMIT: f64 = 1.10;

/// The target dir of the secure hz-bench: `${CARGO_TARGET_DIR:-<repo>/target}/bench-secure`.
pub fn secure_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("bench-secure")
}

/// The in-process allocator names a hz-bench binary reports (`__names`).
pub fn exe_names(exe: &Path) -> Result<Vec<String>, String> {
    let out = Command::new(exe)
        .arg("__names")
        .output()
        .map_err(|e| format!("running {} __names: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!("{} __names failed ({})", exe.display(), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// The secure hz-bench: `$HZ_BENCH_SECURE_EXE`, else built (when `build`)
/// with `cargo build --release -p hz-bench --features secure --target-dir
/// <secure_target_dir>`. Checked: it must call its allocators hz-secure and
/// mimalloc-secure, so a default build can never be measured under that name.
pub fn secure_exe(build: bool) -> Result<PathBuf, String> {
    let exe = match std::env::var_os(EXE_ENV) {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = secure_target_dir();
            if build {
                eprintln!(
                    "building the secure hz-bench: cargo build --release -p hz-bench --features secure --target-dir {}",
                    dir.display()
                );
                let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                    .args([
                        "build",
                        "--release",
                        "-q",
                        "-p",
                        "hz-bench",
                        "--features",
                        "secure",
                    ])
                    .arg("--target-dir")
                    .arg(&dir)
                    .current_dir(repo_root())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    return Err("building the secure hz-bench failed".into());
                }
            }
            dir.join("release/hz-bench")
        }
    };
    check_secure_exe(&exe)?;
    Ok(exe)
}

/// Err unless `exe` is a hz-bench built with `--features secure`.
pub fn check_secure_exe(exe: &Path) -> Result<(), String> {
    if !exe.exists() {
        return Err(format!("{} does not exist", exe.display()));
    }
    let names = exe_names(exe)?;
    for want in ["hz-secure", "mimalloc-secure"] {
        if !names.iter().any(|n| n == want) {
            return Err(format!(
                "{} is not a secure build (its allocators: {})",
                exe.display(),
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// The runners of `hz-bench secure`, in the order they run within a cell.
fn runners(o: &Opts, notes: &mut Vec<String>) -> Result<Vec<Runner>, String> {
    let mut r = Vec::new();
    if o.inproc {
        let exe = secure_exe(o.build_hz)?;
        let m = Machine::probe();
        r.push(Runner::InProc(InProc::Hz));
        r.push(Runner::Exe {
            name: "hz-secure".into(),
            exe: exe.clone(),
            what: "hz_core::HzAlloc (hz-core feature secure)".into(),
        });
        r.push(Runner::InProc(InProc::Mimalloc));
        r.push(Runner::Exe {
            name: "mimalloc-secure".into(),
            exe,
            what: format!(
                "mimalloc::MiMalloc (crate {}, feature secure)",
                m.mimalloc_crate
            ),
        });
    }
    if o.preload {
        let wanted: Vec<String> = ["hz", "hz-secure", "mimalloc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (p, n) = preload_allocators(&wanted, o.build_hz);
        notes.extend(n);
        r.extend(p.into_iter().map(Runner::Preload));
    }
    Ok(r)
}

/// `hz-bench secure [options]`: prints the table, writes secure.{md,csv,json}
/// under `--out`. `--allocators` is ignored (the set is fixed).
pub fn run(o: &Opts) -> Result<Vec<report::SecureRow>, String> {
    if SECURE {
        return Err("run `secure` from the default hz-bench build: it runs the secure one".into());
    }
    let m = Machine::probe();
    let mut notes = Vec::new();
    let runners = runners(o, &mut notes)?;
    let cells = matrix_cells(o, &m, &mut notes);
    notes.push(
        "HZ_SECURE_FILL is not set: freed blocks are not filled (the default of the secure build)"
            .into(),
    );
    let head = matrix_head(
        "secure: hardened builds vs default builds",
        "repetition(s) interleaved across the builds, medians",
        o,
        &m,
        &runners,
        &notes,
    );
    print!("{head}");
    let (samples, probes) = measure_matrix(o, &cells, &runners);
    let sums = report::summarize(&samples);
    let mut rows = secure_rows(&sums);
    report::add_paired(&mut rows, &samples);
    let mut table = secure_markdown(&rows, LIMIT);
    if let Some(l) = crate::machine::round_trip_line(&probes) {
        table.push_str(&format!("- {l}\n"));
    }
    print!("{table}");
    if let Some(dir) = &o.out {
        let header = json_header("secure", o, &m, &runners, &notes);
        let files = [
            ("secure.md", format!("{head}{table}")),
            ("secure.csv", report::csv(&sums)),
            ("secure.json", report::json(&header, &sums, &samples)),
        ];
        let written = std::fs::create_dir_all(dir).is_ok()
            && files
                .iter()
                .all(|(f, text)| std::fs::write(dir.join(f), text).is_ok());
        if written {
            println!(
                "\nwrote {0}/secure.md, {0}/secure.csv, {0}/secure.json",
                dir.display()
            );
        } else {
            eprintln!("cannot write the results under {}", dir.display());
        }
    }
    Ok(rows)
}
