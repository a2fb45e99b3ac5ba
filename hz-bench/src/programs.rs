//! `hz-bench programs`: real programs under LD_PRELOAD, each allocator in
//! turn. The matrix and the workloads are written to stress an allocator;
//! these show what a user sees when they preload one into a program they
//! already run: an interpreter, a database, a compiler, a server.
//!
//! Every program runs in a child process with its input made beforehand in a
//! scratch directory; a run's time is its wall time, its peak RSS the
//! `ru_maxrss` that `wait4` reports for it (its own children included, e.g.
//! gcc's `cc1`). Linux carries `ru_maxrss` across exec, so that figure is
//! at least this harness's own peak when the child starts (3–4 MiB): below
//! that, a program's footprint does not show. A program whose binary is missing is skipped with a note.
//! `redis` is a server: `redis-server` runs preloaded, `redis-benchmark`
//! (not preloaded) drives it, and the time is the client's, the peak RSS the
//! server's.

use crate::allocs::Preload;
use crate::runner::preload_env;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every program, in the order they run.
pub const PROGRAMS: [&str; 5] = ["python-json", "sqlite", "perl-hash", "gcc", "redis"];

/// What a program does, for the report.
pub fn describe(name: &str) -> &'static str {
    match name {
        "python-json" => "python3: lists of dicts to JSON and back, grouping, sorted words",
        "sqlite" => "sqlite3 :memory:: inserts, an index, scans, GROUP BY",
        "perl-hash" => "perl: a hash of strings to arrays, sorted keys, deleted",
        "gcc" => "gcc -O2 -c of a generated C file (cc1's heap)",
        "redis" => {
            "redis-server under LD_PRELOAD, driven by redis-benchmark (16 clients, pipelined)"
        }
        _ => "",
    }
}

/// The binaries a program needs.
fn needs(name: &str) -> &'static [&'static str] {
    match name {
        "python-json" => &["python3"],
        "sqlite" => &["sqlite3"],
        "perl-hash" => &["perl"],
        "gcc" => &["gcc"],
        "redis" => &["redis-server", "redis-benchmark"],
        _ => &[],
    }
}

/// `prog`: /usr/bin's when there is one (not a version manager's shim,
/// which would add a shell script's start-up to every run), else the first
/// on the PATH, else None.
pub fn which(prog: &str) -> Option<PathBuf> {
    let is_file = |p: &Path| std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false);
    let sys = Path::new("/usr/bin").join(prog);
    if is_file(&sys) {
        return Some(sys);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| is_file(p))
}

/// A command for `prog`, found as [`which`] finds it.
fn command(prog: &str) -> Command {
    Command::new(which(prog).unwrap_or_else(|| PathBuf::from(prog)))
}

/// Why `name` cannot run here (a binary it needs is missing), or None.
pub fn missing(name: &str) -> Option<String> {
    let absent: Vec<&str> = needs(name)
        .iter()
        .copied()
        .filter(|b| which(b).is_none())
        .collect();
    if absent.is_empty() {
        None
    } else {
        Some(format!(
            "skipped program {name}: {} not installed",
            absent.join(", ")
        ))
    }
}

/// A scratch directory holding the programs' inputs, removed on drop.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Makes the directory and writes every input, sized by `scale`.
    pub fn new(scale: f64) -> std::io::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("hz-bench-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let s = Scratch { dir };
        let n = |base: f64| ((base * scale).round() as u64).max(1);
        std::fs::write(s.dir.join("py_json_bench.py"), python_json(n(100_000.0)))?;
        std::fs::write(s.dir.join("db.sql"), sqlite_script(n(200_000.0)))?;
        std::fs::write(s.dir.join("hash.pl"), perl_hash(n(300_000.0)))?;
        std::fs::write(s.dir.join("gen.c"), c_source(n(300.0)))?;
        std::fs::write(s.dir.join("redis-n"), n(200_000.0).to_string())?;
        Ok(s)
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn python_json(n: u64) -> String {
    format!(
        r#"import json, random
random.seed(1)
n = {n}
rows = [{{"id": i, "name": "n%d-" % i * (1 + i % 7), "tags": [str(j) for j in range(i % 13)], "v": i * 0.5}} for i in range(n)]
s = json.dumps(rows)
for _ in range(2):
    back = json.loads(s)
groups = {{}}
for r in back:
    groups.setdefault(len(r["tags"]), []).append(r["name"])
words = sorted(set(" ".join(r["name"] for r in back[: n // 2]).split("-")))
assert len(back) == n and sum(len(g) for g in groups.values()) == n and words
"#
    )
}

fn sqlite_script(n: u64) -> String {
    format!(
        "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);
WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n})
INSERT INTO t(b, c) SELECT hex(randomblob(20 + x % 50)), x * 1.5 FROM s;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(length(b)) FROM t WHERE b > '8';
SELECT CAST(c AS INTEGER) % 100 AS k, count(*) FROM t GROUP BY k ORDER BY 2 DESC LIMIT 3;
UPDATE t SET b = b || 'x' WHERE a % 3 = 0;
DELETE FROM t WHERE a % 2 = 0;
SELECT count(*) FROM t;
"
    )
}

fn perl_hash(n: u64) -> String {
    format!(
        r#"use strict; use warnings;
my %h;
for my $i (1 .. {n}) {{ $h{{"key$i" x (1 + $i % 5)}} = [ ($i) x ($i % 9) ]; }}
my @k = sort keys %h;
my $s = join(",", @k[0 .. 999]);
delete $h{{$_}} for @k;
die "lost keys" if %h;
print length($s), "\n";
"#
    )
}

/// A C file of `n` functions with arrays, loops, switches and structs: work
/// for cc1's parser, optimiser and register allocator.
fn c_source(n: u64) -> String {
    let mut s = String::from("struct p { int x, y; double w; };\n");
    for i in 0..n {
        s.push_str(&format!(
            "int f{i}(int a, int b, struct p *q) {{
    int v[32]; int acc = {i};
    for (int k = 0; k < 32; k++) v[k] = a * k + b - (k ^ {i});
    for (int k = 1; k < 32; k++) {{
        switch ((v[k] + acc) & 7) {{
        case 0: acc += v[k] * 3; break;
        case 1: acc ^= v[k - 1]; break;
        case 2: acc -= q->x * k; break;
        case 3: q->y += acc >> 2; break;
        case 4: q->w += acc * 0.5; break;
        default: acc += k;
        }}
    }}
    return acc + (int)q->w;
}}
"
        ));
    }
    s
}

/// One run's result: wall time and peak RSS.
#[derive(Clone, Copy, Debug)]
pub struct ProgResult {
    pub ns: u64,
    pub maxrss_kib: u64,
}

/// Waits for `child` with `wait4`, which gives its rusage: (success, peak
/// RSS in KiB, its children's included).
fn wait_rusage(child: &Child) -> Result<(bool, u64), String> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child, not yet reaped (std waits only when
        // asked); status and ru are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, ru.ru_maxrss as u64))
}

/// Runs `cmd` (already preloaded), timing it; fails unless it exits 0.
/// Its stderr goes to a file in `dir`, shown when it fails.
fn timed(mut cmd: Command, what: &str, dir: &Path) -> Result<ProgResult, String> {
    let err_path = dir.join(format!("{what}.stderr"));
    let err_file = std::fs::File::create(&err_path).map_err(|e| format!("{what}: {e}"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    let t = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    let (ok, rss) = wait_rusage(&child)?;
    let ns = t.elapsed().as_nanos() as u64;
    if !ok {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!("{what} failed: {}", err.trim()));
    }
    Ok(ProgResult {
        ns,
        maxrss_kib: rss,
    })
}

/// Runs program `name` once with allocator `p`, inputs in `dir`.
pub fn run(p: &Preload, name: &str, dir: &Path) -> Result<ProgResult, String> {
    let mut cmd = match name {
        "python-json" => {
            let mut c = command("python3");
            c.arg(dir.join("py_json_bench.py"));
            c
        }
        "sqlite" => {
            let mut c = command("sqlite3");
            c.arg(":memory:")
                .arg(format!(".read {}", dir.join("db.sql").display()));
            c
        }
        "perl-hash" => {
            let mut c = command("perl");
            c.arg(dir.join("hash.pl"));
            c
        }
        "gcc" => {
            let mut c = command("gcc");
            c.args(["-O2", "-c", "-o"])
                .arg(dir.join(format!("gen-{}.o", p.name)))
                .arg(dir.join("gen.c"));
            c
        }
        "redis" => return run_redis(p, dir),
        _ => return Err(format!("unknown program {name}")),
    };
    // python3 as users run it: pymalloc for small objects, the allocator
    // under test for the rest (no PYTHONMALLOC from our environment).
    cmd.env_remove("PYTHONMALLOC");
    preload_env(&mut cmd, p);
    timed(cmd, name, dir)
}

/// A TCP port that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Sends `SHUTDOWN NOSAVE` to the redis server on `port`; false when it
/// could not be sent.
fn redis_shutdown(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        .is_err()
    {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0u8; 64];
    let _ = s.read(&mut b);
    true
}

fn run_redis(p: &Preload, dir: &Path) -> Result<ProgResult, String> {
    let n = std::fs::read_to_string(dir.join("redis-n")).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let ps = port.to_string();
    let mut srv = command("redis-server");
    srv.args([
        "--port",
        &ps,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--daemonize", "no", "--dir"])
    .arg(dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    preload_env(&mut srv, p);
    let mut child = srv.spawn().map_err(|e| format!("redis-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("redis-server did not start listening".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bench = command("redis-benchmark");
    bench
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ps,
            "-n",
            n.trim(),
            "-c",
            "16",
            "-P",
            "16",
        ])
        .args(["-d", "64", "-r", "100000", "-q"])
        .args(["-t", "set,get,incr,lpush,lpop,sadd,hset,zadd"]);
    // The client is not the program measured: it runs with the system's
    // allocator whichever one the server has.
    bench.env_remove("LD_PRELOAD");
    let r = timed(bench, "redis-benchmark", dir);
    if !redis_shutdown(port) {
        // Not waiting for a server that was not told to stop.
        let _ = child.kill();
    }
    let (_, rss) = wait_rusage(&child)?;
    r.map(|r| ProgResult {
        ns: r.ns,
        maxrss_kib: rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each program that is installed runs (small) under glibc and reports
    /// a time and a peak RSS, and a program that fails is an error, not a
    /// time.
    #[test]
    fn installed_programs_run_small_under_glibc() {
        let glibc = Preload {
            name: "glibc",
            lib: None,
            origin: String::new(),
        };
        let s = Scratch::new(0.02).expect("scratch dir");
        for name in PROGRAMS {
            if missing(name).is_some() {
                continue;
            }
            let r = run(&glibc, name, s.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(r.ns > 0 && r.maxrss_kib > 0, "{name}: {r:?}");
        }
        // A program fed an input it rejects is an error, not a time.
        std::fs::write(s.path().join("hash.pl"), "die 'no';\n").unwrap();
        if missing("perl-hash").is_none() {
            assert!(run(&glibc, "perl-hash", s.path()).is_err());
        }
    }

    #[test]
    fn every_program_is_described() {
        for name in PROGRAMS {
            assert!(
                !describe(name).is_empty() && !needs(name).is_empty(),
                "{name}"
            );
        }
    }
}
