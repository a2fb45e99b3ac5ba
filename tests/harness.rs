//! End-to-end harness: finds (or builds) `libhz.so`, finds the C/C++ test
//! programs `build.rs` compiled, and runs programs with and without
//! `LD_PRELOAD`, with a time limit, capturing status and output.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The repository root (the hz-e2e package).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `build.rs` put the compiled test programs.
pub fn bin_dir() -> &'static Path {
    Path::new(env!("HZ_TEST_BIN_DIR"))
}

/// A compiled test program (or `libNAME.so`) from `tests/c`.
pub fn test_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "test program {} was not built", p.display());
    p
}

/// Newest modification time of any file below `dir` (recursively).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// A library of this repository: `$env_var` if set (used as is, made
/// absolute), else `<target>/release/<file>` where `<target>` is
/// `$CARGO_TARGET_DIR` or `<repo>/target`. In the second case `build` runs
/// (with `CARGO_TARGET_DIR` set to that absolute target dir) when the file is
/// missing or older than the sources of hz-core and hz-ffi.
fn repo_lib(env_var: &str, file: &str, build: impl FnOnce(&Path) -> Command) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        // Absolute, so tests that change directory still find it.
        return std::fs::canonicalize(&p)
            .unwrap_or_else(|e| panic!("{env_var}={}: {e}", p.to_string_lossy()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        std::env::current_dir().expect("current dir").join(target)
    };
    let lib = target.join("release").join(file);
    let built = std::fs::metadata(&lib).and_then(|m| m.modified()).ok();
    let sources = ["hz-core", "hz-ffi"]
        .iter()
        .filter_map(|d| newest_mtime(&repo_root().join(d)))
        .max();
    if built.is_none() || sources > built {
        eprintln!("harness: building {}", lib.display());
        let mut cmd = build(&target);
        let status = cmd
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap_or_else(|e| panic!("building {file}: {e}"));
        assert!(status.success(), "building {file} failed: {cmd:?}");
    }
    assert!(lib.exists(), "{} missing after build", lib.display());
    lib
}

/// Path of `libhz.so`: `$HZ_LIB` if set, else built by
/// `cargo build --release -p hz-ffi` into the target dir when stale (see
/// [`repo_lib`]); once per test process.
pub fn libhz() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        repo_lib("HZ_LIB", "libhz.so", |_| {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.args(["build", "--release", "-p", "hz-ffi"]);
            c
        })
    })
}

/// Path of the hardened `libhz-secure.so` (hz-ffi built with
/// `--features secure`): `$HZ_SECURE_LIB` if set, else built by
/// `scripts/build-secure.sh` when stale (see [`repo_lib`]).
pub fn libhz_secure() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        repo_lib("HZ_SECURE_LIB", "libhz-secure.so", |_| {
            let mut c = Command::new("bash");
            c.arg(repo_root().join("scripts").join("build-secure.sh"));
            c
        })
    })
}

/// A command for `prog` with `LD_PRELOAD=libhz-secure.so` set.
pub fn secure_command(prog: impl AsRef<OsStr>) -> Command {
    preloaded(prog, libhz_secure())
}

/// `HZ_TEST_RUNNER`: the qemu-user command line (`qemu-aarch64 -L
/// /usr/aarch64-linux-gnu`) that runs the test programs when they are
/// built for another architecture (`scripts/cross.sh`); unset or empty:
/// they run directly.
fn runner() -> Option<&'static [String]> {
    static RUNNER: OnceLock<Vec<String>> = OnceLock::new();
    let words = RUNNER.get_or_init(|| {
        std::env::var("HZ_TEST_RUNNER")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    });
    (!words.is_empty()).then_some(words.as_slice())
}

/// A command that runs `prog`, under [`runner`] when there is one, with
/// no preload.
fn program(prog: impl AsRef<OsStr>) -> Command {
    let mut cmd = match runner() {
        Some(words) => {
            let mut c = Command::new(&words[0]);
            c.args(&words[1..]).arg(prog.as_ref());
            c
        }
        None => Command::new(prog),
    };
    cmd.env_remove("LD_PRELOAD").env_remove("QEMU_SET_ENV");
    cmd
}

/// A command that runs `prog` with `lib` preloaded. Under qemu-user the
/// preload goes to the emulated program (`QEMU_SET_ENV`), not to the
/// emulator, which is a program of this machine's architecture.
fn preloaded(prog: impl AsRef<OsStr>, lib: &Path) -> Command {
    let mut cmd = program(prog);
    if runner().is_some() {
        let mut set = std::ffi::OsString::from("LD_PRELOAD=");
        set.push(lib);
        cmd.env("QEMU_SET_ENV", set);
    } else {
        cmd.env("LD_PRELOAD", lib);
    }
    cmd
}

/// What a finished program left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with the program's output unless it exited with status 0.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what}: {:?} (signal {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.status.signal(),
            tail(&self.stdout),
            tail(&self.stderr)
        );
        self
    }

    /// For the programs whose first line names the object that defined a
    /// symbol (`cxx_new`): asserts that line is `first` on x86-64 and
    /// aarch64 (where libhz.so exports the C++ operators) and the rest of the report equals
    /// `plain`'s (the same program on glibc).
    #[track_caller]
    pub fn assert_report_after_first_line(&self, first: &str, plain: &Output) {
        let (line, rest) = self.stdout.split_once('\n').expect("a report");
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(line, first);
        }
        let plain_rest = plain.stdout.split_once('\n').expect("a report").1;
        assert_eq!(rest, plain_rest, "report differs from the glibc run");
    }
}

/// The last few KiB of a long output, for failure messages.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Default time limit for one program run.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs `prog args` in `dir` on plain glibc and under `preloaded` (a
/// command maker such as [`hz_command`] or [`secure_command`], `name` naming
/// its library in failures); both must succeed with the same, non-empty
/// stdout. Returns the preloaded run, or `None` when `prog` is missing.
pub fn same_as_glibc_under(
    prog: &str,
    args: &[&str],
    dir: &Path,
    preloaded: fn(&Path) -> Command,
    name: &str,
) -> Option<Output> {
    let path = require(prog)?;
    let plain = run(plain_command(&path).args(args).current_dir(dir), LIMIT);
    plain.assert_success(&format!("{prog} {args:?} on plain glibc"));
    let hz = run(preloaded(&path).args(args).current_dir(dir), LIMIT);
    hz.assert_success(&format!("{prog} {args:?} under {name}"));
    assert!(
        hz.stdout == plain.stdout,
        "{prog} {args:?}: output under {name} differs from glibc\n--- glibc ---\n{}\n--- hz ---\n{}",
        plain.stdout,
        hz.stdout
    );
    assert!(!hz.stdout.is_empty(), "{prog} printed nothing");
    Some(hz)
}

/// A command for `prog` with `LD_PRELOAD=libhz.so` set.
pub fn hz_command(prog: impl AsRef<OsStr>) -> Command {
    preloaded(prog, libhz())
}

/// A command for `prog` with libhz.so preloaded behind
/// `libpageshim.so` (tests/c/libpageshim.c), which makes the process see
/// kernel pages of `page` bytes; None under [`runner`] (qemu-user: the
/// shim's raw system calls would reach the emulator's own mapping code).
pub fn large_page_command(prog: impl AsRef<OsStr>, page: usize) -> Option<Command> {
    if runner().is_some() {
        return None;
    }
    let mut preload = test_bin("libpageshim.so").into_os_string();
    preload.push(" ");
    preload.push(libhz());
    let mut cmd = program(prog);
    cmd.env("LD_PRELOAD", preload)
        .env("HZ_SHIM_PAGE", page.to_string());
    Some(cmd)
}

/// A command for `prog` on the plain system allocator (no preload).
pub fn plain_command(prog: impl AsRef<OsStr>) -> Command {
    program(prog)
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion in its own process group, stdin closed, output
/// captured. Past `limit` the whole group is killed and the test fails.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break s;
        }
        if Instant::now() > deadline {
            // What each thread was doing, read before the kill, and what the
            // program had printed: a hang in CI then says where it hung.
            let threads = thread_states(child.id());
            kill_group(child.id());
            let _ = child.wait();
            let (stdout, stderr) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            panic!(
                "{cmd:?} ran longer than {limit:?}; killed\n\
                 threads (tid, state, syscall, wchan) just before:\n{threads}\
                 stdout (its end): {}\nstderr (its end): {}",
                tail(&stdout),
                tail(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Grandchildren left behind would keep the pipes open forever.
    kill_group(child.id());
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// One line per thread of process `pid` from `/proc`: its id, scheduler
/// state, the system call it is in (number and first arguments, or
/// `running`) and the kernel function it sleeps in.
fn thread_states(pid: u32) -> String {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "  (no /proc entry)\n".into();
    };
    let mut lines: Vec<String> = tasks
        .flatten()
        .map(|t| {
            let dir = t.path();
            let stat = read(dir.join("stat"));
            // The state is the first field after the parenthesised name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .unwrap_or("?")
                .to_string();
            let syscall: Vec<String> = read(dir.join("syscall"))
                .split_whitespace()
                .take(3)
                .map(str::to_string)
                .collect();
            format!(
                "  {} {} [{}] {}\n",
                t.file_name().to_string_lossy(),
                state,
                syscall.join(" "),
                read(dir.join("wchan"))
            )
        })
        .collect();
    lines.sort();
    lines.concat()
}

/// Sends SIGKILL to the process group `pgid` (ignoring "no such group").
pub fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: kill has no memory-safety preconditions; a negative pid
        // names the process group we created for the child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Runs a compiled test program under hz and asserts it exits with status 0.
#[track_caller]
pub fn run_test_bin(name: &str, args: &[&str]) -> Output {
    let out = run(hz_command(test_bin(name)).args(args), LIMIT);
    out.assert_success(&format!("{name} {args:?} under libhz.so"));
    out
}

/// Full path of `prog` found on `PATH`, or `None` (the caller then skips,
/// saying why).
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Like [`which`], printing the skip reason when `prog` is missing.
pub fn require(prog: &str) -> Option<PathBuf> {
    let found = which(prog);
    if found.is_none() {
        eprintln!("SKIPPED: {prog} is not installed (scripts/test.sh installs it)");
    }
    found
}

/// A fresh empty temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hz-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program past its limit is killed, and the failure says what its
    /// threads were doing and what it had printed.
    #[test]
    fn a_program_past_its_limit_reports_its_threads_and_output() {
        let started = Instant::now();
        let err = std::panic::catch_unwind(|| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "echo started-and-waiting; exec sleep 30"]);
            run(&mut cmd, Duration::from_millis(500))
        })
        .expect_err("the program outlived its limit and must fail the run");
        let msg = err
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not killed at its limit"
        );
        assert!(msg.contains("ran longer than 500ms; killed"), "{msg}");
        assert!(
            msg.contains("stdout (its end): started-and-waiting"),
            "{msg}"
        );
        // `sleep` sleeps (state S) in a system call, named by number.
        let threads: Vec<&str> = msg
            .lines()
            .skip_while(|l| !l.starts_with("threads"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert_eq!(threads.len(), 1, "{msg}");
        let fields: Vec<&str> = threads[0].split_whitespace().collect();
        assert_eq!(fields[1], "S", "{msg}");
        assert!(
            fields[2].starts_with('[') && fields[2][1..].parse::<u32>().is_ok(),
            "{msg}"
        );
    }
}
