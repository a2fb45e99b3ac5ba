//! The allocators a run compares: in-process ones (called through a generic
//! `GlobalAlloc` parameter) and LD_PRELOAD ones (a shared object injected into
//! the C program).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// An allocator linked into hz-bench itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InProc {
    Hz,
    Mimalloc,
    System,
}

/// Whether this binary was built with hz-bench's `secure` feature (hz-core
/// and mimalloc hardened).
pub const SECURE: bool = cfg!(feature = "secure");

/// The in-process name of hz in this binary: `hz-secure` when built with the
/// `secure` feature, so a table never calls the hardened build `hz`.
pub const HZ_NAME: &str = if SECURE { "hz-secure" } else { "hz" };
/// The in-process name of the mimalloc crate in this binary.
pub const MIMALLOC_NAME: &str = if SECURE {
    "mimalloc-secure"
} else {
    "mimalloc"
};

impl InProc {
    pub const ALL: [InProc; 3] = [InProc::Hz, InProc::Mimalloc, InProc::System];

    pub fn name(self) -> &'static str {
        match self {
            InProc::Hz => HZ_NAME,
            InProc::Mimalloc => MIMALLOC_NAME,
            InProc::System => "system",
        }
    }

    /// What the report's header says this allocator is.
    pub fn describe(self, mimalloc_crate: &str) -> String {
        let feat = if SECURE { ", feature secure" } else { "" };
        match self {
            InProc::Hz if SECURE => "hz_core::HzAlloc (hz-core feature secure)".to_string(),
            InProc::Hz => "hz_core::HzAlloc".to_string(),
            InProc::Mimalloc => format!("mimalloc::MiMalloc (crate {mimalloc_crate}{feat})"),
            InProc::System => "std::alloc::System (glibc malloc)".to_string(),
        }
    }

    pub fn from_name(s: &str) -> Option<InProc> {
        InProc::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Calls `f` with the allocator `which` as a concrete type (monomorphised per
/// allocator: no dynamic dispatch inside the benchmark loops).
#[macro_export]
macro_rules! with_inproc {
    ($which:expr, |$a:ident| $body:expr) => {
        match $which {
            $crate::allocs::InProc::Hz => {
                let $a = &hz_core::HzAlloc;
                $body
            }
            $crate::allocs::InProc::Mimalloc => {
                let $a = &mimalloc::MiMalloc;
                $body
            }
            $crate::allocs::InProc::System => {
                let $a = &std::alloc::System;
                $body
            }
        }
    };
}

/// Environment variable naming the global allocator of an hz-bench process
/// (read once, at its first allocation, with `getenv`, which does not allocate).
pub const GLOBAL_ENV: &str = "HZ_BENCH_GLOBAL";

/// The name that selects [`crate::floor::Floor`], the measuring stick (not a
/// rival: no table lists it unless asked for).
pub const FLOOR_NAME: &str = "floor";

/// A `#[global_allocator]` that forwards to the allocator named by
/// `HZ_BENCH_GLOBAL` ([`HZ_NAME`], [`MIMALLOC_NAME`], [`FLOOR_NAME`]; anything else: System). The choice is
/// made at the process's first allocation and never changes, so every block
/// is freed by the allocator that made it. Used by workloads that exercise
/// std collections, which cannot take an allocator parameter on stable Rust.
pub struct Switch;

static CHOICE: AtomicU8 = AtomicU8::new(0); // 0 unset, 1 system, 2 hz, 3 mimalloc, 4 floor

#[inline]
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != 0 {
        return c;
    }
    // SAFETY: the name is NUL-terminated; getenv returns null or a C string
    // that stays valid while the environment is not modified (it is not, this
    // early). Racing first calls compute the same value.
    let c = unsafe {
        let v = libc::getenv(c"HZ_BENCH_GLOBAL".as_ptr());
        if v.is_null() {
            1
        } else {
            let v = std::ffi::CStr::from_ptr(v).to_bytes();
            if v == HZ_NAME.as_bytes() {
                2
            } else if v == MIMALLOC_NAME.as_bytes() {
                3
            } else if v == FLOOR_NAME.as_bytes() {
                4
            } else {
                1
            }
        }
    };
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// Which allocator [`Switch`] forwards to in this process.
pub fn global_choice() -> &'static str {
    match choice() {
        2 => HZ_NAME,
        3 => MIMALLOC_NAME,
        4 => FLOOR_NAME,
        _ => "system",
    }
}

// SAFETY: every call forwards to one allocator, the same for the whole life of
// the process, so each block is freed/reallocated by the allocator that made it.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match choice() {
                2 => hz_core::HzAlloc.alloc(l),
                3 => mimalloc::MiMalloc.alloc(l),
                4 => crate::floor::Floor.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match choice() {
                2 => hz_core::HzAlloc.alloc_zeroed(l),
                3 => mimalloc::MiMalloc.alloc_zeroed(l),
                4 => crate::floor::Floor.alloc_zeroed(l),
                _ => System.alloc_zeroed(l),
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract; p came from the same allocator.
        unsafe {
            match choice() {
                2 => hz_core::HzAlloc.dealloc(p, l),
                3 => mimalloc::MiMalloc.dealloc(p, l),
                4 => crate::floor::Floor.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract; p came from the same allocator.
        unsafe {
            match choice() {
                2 => hz_core::HzAlloc.realloc(p, l, n),
                3 => mimalloc::MiMalloc.realloc(p, l, n),
                4 => crate::floor::Floor.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

/// An allocator injected with LD_PRELOAD (`lib: None` is plain glibc).
#[derive(Clone, Debug)]
pub struct Preload {
    pub name: &'static str,
    pub lib: Option<PathBuf>,
    /// Debian package and version, or where it came from.
    pub origin: String,
}

/// The names `--allocators` accepts for LD_PRELOAD runs. `hz-secure` is
/// libhz-secure.so (scripts/build-secure.sh).
pub const PRELOAD_NAMES: [&str; 6] = [
    "hz",
    "hz-secure",
    "mimalloc",
    "jemalloc",
    "tcmalloc",
    "glibc",
];

const LIBDIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib",
];

fn find_lib(names: &[&str]) -> Option<PathBuf> {
    for dir in LIBDIRS {
        for n in names {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return Some(p);
            }
        }
    }
    // Any versioned file, e.g. libmimalloc.so.2.1.
    for dir in LIBDIRS {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let f = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
                names
                    .iter()
                    .any(|n| f.starts_with(n.split(".so").next().unwrap_or(n)))
                    && f.contains(".so")
                    && !f.contains("debug")
            })
            .collect();
        found.sort();
        if let Some(p) = found.into_iter().next() {
            return Some(p);
        }
    }
    None
}

fn debian_origin(lib: &Path) -> String {
    let pkg = Command::new("dpkg")
        .arg("-S")
        .arg(lib)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split(':').next().map(|p| p.trim().to_string()))
        .filter(|s| !s.is_empty());
    match pkg {
        Some(pkg) => {
            let ver = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", &pkg])
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .unwrap_or_default();
            format!("Debian {pkg} {ver}")
        }
        None => lib.display().to_string(),
    }
}

/// One of hz's shared objects: the default `libhz.so` or the hardened
/// `libhz-secure.so`, how to find it and how to (re)build it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HzLib {
    /// File name under `<target>/release/`.
    pub file: &'static str,
    /// Environment variable that names the file directly (no build).
    pub env: &'static str,
    /// The build command, as the notes print it.
    pub build_cmd: &'static str,
}

/// `libhz.so`: `cargo build --release -p hz-ffi`.
pub const LIBHZ: HzLib = HzLib {
    file: "libhz.so",
    env: "HZ_LIB",
    build_cmd: "cargo build --release -p hz-ffi",
};

/// `libhz-secure.so`: hz-ffi with `--features secure`, built by
/// scripts/build-secure.sh in its own target dir.
pub const LIBHZ_SECURE: HzLib = HzLib {
    file: "libhz-secure.so",
    env: "HZ_SECURE_LIB",
    build_cmd: "scripts/build-secure.sh",
};

impl HzLib {
    /// Where it is: `$ENV`, else `$CARGO_TARGET_DIR/release/FILE`, else
    /// `<repo>/target/release/FILE`.
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(p) = std::env::var_os(self.env) {
            v.push(PathBuf::from(p));
            return v;
        }
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            v.push(Path::new(&t).join("release").join(self.file));
        }
        v.push(repo_root().join("target/release").join(self.file));
        v
    }

    /// Finds the library. Unless `$ENV` names it, `build` first runs its
    /// build command (quick when it is up to date), so a stale library is
    /// never measured. Err carries the note to print.
    pub fn find(&self, build: bool) -> Result<PathBuf, String> {
        let found = || self.candidates().into_iter().find(|p| p.exists());
        if let Some(p) = std::env::var_os(self.env) {
            let p = PathBuf::from(p);
            return if p.exists() {
                Ok(p)
            } else {
                Err(format!("{}={} does not exist", self.env, p.display()))
            };
        }
        if build {
            eprintln!("building {}: {}", self.file, self.build_cmd);
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = if *self == LIBHZ_SECURE {
                let mut c = Command::new("bash");
                c.arg(repo_root().join("scripts/build-secure.sh")).arg("-q");
                c
            } else {
                let mut c = Command::new(&cargo);
                c.args(["build", "--release", "-q", "-p", "hz-ffi"]);
                c
            };
            // build-secure.sh prints where it installed the library: keep
            // stdout for the report.
            let ok = cmd
                .current_dir(repo_root())
                .stdout(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!(
                    "warning: `{}` failed; using an existing {} if any",
                    self.build_cmd, self.file
                );
            }
        }
        found().ok_or_else(|| {
            format!(
                "{} not found (looked at {})",
                self.file,
                self.candidates()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

/// Where libhz.so is: `$HZ_LIB`, else `$CARGO_TARGET_DIR/release/libhz.so`,
/// else `<repo>/target/release/libhz.so`.
pub fn libhz_candidates() -> Vec<PathBuf> {
    LIBHZ.candidates()
}

/// The workspace root (hz-bench's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Finds libhz.so (see [`HzLib::find`]).
pub fn find_libhz(build: bool) -> Result<PathBuf, String> {
    LIBHZ.find(build)
}

/// "built <age> ago" for a file, so a stale library shows in the header.
fn age(p: &Path) -> String {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| format!("built {} min ago", d.as_secs() / 60))
        .unwrap_or_default()
}

/// The LD_PRELOAD allocators among `wanted` that exist here; a note for each
/// one skipped.
pub fn preload_allocators(wanted: &[String], build_hz: bool) -> (Vec<Preload>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for &name in PRELOAD_NAMES.iter() {
        if !wanted.iter().any(|w| w == name) {
            continue;
        }
        let lib = match name {
            "hz" | "hz-secure" => {
                let which = if name == "hz" { LIBHZ } else { LIBHZ_SECURE };
                match which.find(build_hz) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        notes.push(format!("skipped {name} (LD_PRELOAD): {e}"));
                        continue;
                    }
                }
            }
            "glibc" => None,
            _ => {
                let names: &[&str] = match name {
                    "mimalloc" => &["libmimalloc.so.2", "libmimalloc.so"],
                    "jemalloc" => &["libjemalloc.so.2", "libjemalloc.so"],
                    _ => &[
                        "libtcmalloc_minimal.so.4",
                        "libtcmalloc.so.4",
                        "libtcmalloc_minimal.so",
                    ],
                };
                match find_lib(names) {
                    Some(p) => Some(p),
                    None => {
                        notes.push(format!(
                            "skipped {name} (LD_PRELOAD): no {} found (scripts/bench.sh installs it)",
                            names[0]
                        ));
                        continue;
                    }
                }
            }
        };
        let origin = match (&lib, name) {
            (None, _) => format!("glibc {}", glibc_version()),
            (Some(p), "hz" | "hz-secure") => format!("{} ({})", p.display(), age(p)),
            (Some(p), _) => debian_origin(p),
        };
        out.push(Preload { name, lib, origin });
    }
    (out, notes)
}

/// glibc's version string (gnu_get_libc_version).
pub fn glibc_version() -> String {
    extern "C" {
        fn gnu_get_libc_version() -> *const libc::c_char;
    }
    // SAFETY: returns a static NUL-terminated string.
    unsafe {
        std::ffi::CStr::from_ptr(gnu_get_libc_version())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_which_build() {
        let names: Vec<&str> = InProc::ALL.iter().map(|a| a.name()).collect();
        let (mine, other) = if SECURE {
            (
                ["hz-secure", "mimalloc-secure", "system"],
                ["hz", "mimalloc"],
            )
        } else {
            (
                ["hz", "mimalloc", "system"],
                ["hz-secure", "mimalloc-secure"],
            )
        };
        assert_eq!(names, mine);
        for a in InProc::ALL {
            assert_eq!(InProc::from_name(a.name()), Some(a));
        }
        // A build never answers to the other build's names.
        for n in other {
            assert_eq!(InProc::from_name(n), None, "{n}");
        }
        assert!(PRELOAD_NAMES.contains(&"hz-secure"));
        assert_ne!(LIBHZ.file, LIBHZ_SECURE.file);
    }
}
