//! Real programs under libhz.so give the same output as on plain glibc.
//! A program that is not installed is skipped with a printed reason
//! (scripts/test.sh installs them all, so in CI every one runs).

use hz_e2e::{
    hz_command, kill_group, plain_command, require, run, same_as_glibc_under, Output, TempDir,
    LIMIT,
};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `prog args` in `dir` on plain glibc and under libhz.so
/// ([`same_as_glibc_under`]).
fn same_as_glibc(prog: &str, args: &[&str], dir: &Path) -> Option<Output> {
    same_as_glibc_under(prog, args, dir, |p| hz_command(p), "libhz.so")
}

const PYTHON_WORKLOAD: &str = r#"
import json, re, threading, collections, hashlib
from concurrent.futures import ThreadPoolExecutor

def work(seed):
    d = {}
    for i in range(40000):
        k = "k%d" % ((i * 7919 + seed) % 10007)
        d.setdefault(k, []).append(i)
        if i % 3 == 0:
            d.pop("k%d" % ((i * 31) % 10007), None)
    blob = json.dumps(d, sort_keys=True)
    back = json.loads(blob)
    words = re.findall(r"k(\d+)", blob)
    c = collections.Counter(w[-1] for w in words)
    big = 1
    for i in range(1, 400):
        big *= i
    s = "".join(str(x) for x in range(20000))
    return (len(back), sorted(c.items())[:3], hashlib.sha256(blob.encode()).hexdigest()[:16],
            big % 1000003, len(s))

results = [None] * 8
def run(i):
    results[i] = work(i)
ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
for t in ts: t.start()
for t in ts: t.join()
for r in results: print(r)
with ThreadPoolExecutor(4) as ex:
    for r in ex.map(lambda n: sum(len(str(i) * 3) for i in range(n)), range(1000, 30000, 1000)):
        print(r, end=" ")
print()
objs = [[{"a": i, "b": str(i) * (i % 50)}] * (i % 5) for i in range(100000)]
print(sum(len(o) for o in objs), len({str(o) for o in objs[:3000]}))
"#;

#[test]
fn python3_threads_workload() {
    let dir = TempDir::new("python");
    std::fs::write(dir.path().join("work.py"), PYTHON_WORKLOAD).expect("write work.py");
    same_as_glibc("python3", &["work.py"], dir.path());
}

#[test]
fn python3_own_test_suite_slice() {
    let Some(python) = require("python3") else {
        return;
    };
    let probe = run(
        plain_command(&python).args(["-c", "import test.libregrtest"]),
        LIMIT,
    );
    if !probe.status.success() {
        eprintln!(
            "SKIPPED: python3's test package is not installed (Debian: libpython3-testsuite)"
        );
        return;
    }
    let dir = TempDir::new("pytest");
    let tests = [
        "test_dict",
        "test_list",
        "test_set",
        "test_json",
        "test_re",
        "test_sort",
        "test_collections",
        "test_threading_local",
        "test_thread",
    ];
    let out = run(
        hz_command(&python)
            .args(["-m", "test", "-j2"])
            .args(tests)
            .current_dir(dir.path()),
        LIMIT,
    );
    out.assert_success("python3 -m test under libhz.so");
    assert!(out.stdout.contains("Result: SUCCESS"), "{}", out.stdout);
}

#[test]
fn sqlite3_queries() {
    let dir = TempDir::new("sqlite");
    let sql = "
        DROP TABLE IF EXISTS t;
        CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000)
          INSERT INTO t SELECT x, 'name' || (x * 7919 % 60000), x % 97, zeroblob(x % 700) FROM c;
        CREATE INDEX t_name ON t(name);
        SELECT grp, count(*), sum(length(payload)), min(name), max(name) FROM t
          GROUP BY grp ORDER BY grp LIMIT 10;
        SELECT count(*) FROM t a JOIN t b ON a.name = b.name WHERE a.grp < 5;
        DELETE FROM t WHERE id % 3 = 0;
        VACUUM;
        SELECT count(*), group_concat(name, ',') FROM (SELECT name FROM t ORDER BY name LIMIT 20);
    ";
    std::fs::write(dir.path().join("q.sql"), sql).expect("write q.sql");
    same_as_glibc("sqlite3", &["db.sqlite", ".read q.sql"], dir.path());
    // The hz run worked on the database the glibc run left: read it back.
    let out = same_as_glibc(
        "sqlite3",
        &[
            "db.sqlite",
            "PRAGMA integrity_check; SELECT count(*) FROM t;",
        ],
        dir.path(),
    );
    if let Some(out) = out {
        assert!(out.stdout.starts_with("ok\n"), "{}", out.stdout);
    }
}

#[test]
fn git_init_commit_log() {
    let Some(_) = require("git") else { return };
    let script = r#"
        set -e
        rm -rf repo && mkdir repo && cd repo
        git init -q -b main .
        for i in $(seq 1 15); do
            seq 1 $((i * 500)) > "file$((i % 4)).txt"
            echo "line $i" >> notes.txt
            git add -A
            git commit -q -m "commit number $i"
        done
        git log --format='%H %s'
        git log --stat --format='%h' | tail -5
        git diff HEAD~3 --stat
        git gc -q
        git fsck --no-progress 2>&1
        git rev-list --count HEAD
    "#;
    let dir = TempDir::new("git");
    let with_env = |mut c: Command| {
        c.args(["-c", script])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "hz")
            .env("GIT_AUTHOR_EMAIL", "hz@example.invalid")
            .env("GIT_COMMITTER_NAME", "hz")
            .env("GIT_COMMITTER_EMAIL", "hz@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
        c
    };
    let plain = run(&mut with_env(plain_command("bash")), LIMIT);
    plain.assert_success("git on plain glibc");
    let hz = run(&mut with_env(hz_command("bash")), LIMIT);
    hz.assert_success("git under libhz.so");
    assert_eq!(hz.stdout, plain.stdout, "git output differs");
    assert!(hz.stdout.contains("commit number 15"), "{}", hz.stdout);
}

/// The next value of a 64-bit linear congruential sequence (Knuth's MMIX
/// constants): reproducible inputs for the programs.
fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
}

#[test]
fn sort_large_input() {
    let dir = TempDir::new("sort");
    let mut input = String::new();
    let mut x: u64 = 12345;
    for i in 0..200_000u64 {
        x = lcg(x);
        input.push_str(&format!(
            "{} line{} {}\n",
            x >> 40,
            i % 977,
            "x".repeat((x % 40) as usize)
        ));
    }
    std::fs::write(dir.path().join("in.txt"), input).expect("write input");
    // A small buffer forces temporary files and merging.
    same_as_glibc("sort", &["-S", "1M", "-T", ".", "in.txt"], dir.path());
    same_as_glibc("sort", &["-n", "-u", "--parallel=2", "in.txt"], dir.path());
    same_as_glibc("sort", &["-k2,2", "-k1,1nr", "in.txt"], dir.path());
}

#[test]
fn perl_script() {
    let dir = TempDir::new("perl");
    let script = r#"
        use strict; use warnings;
        my %h; my @a;
        for my $i (1 .. 200000) {
            my $k = "key" . ($i * 7919 % 50021);
            $h{$k} .= chr(65 + $i % 26);
            push @a, [$i, $k] if $i % 7 == 0;
            delete $h{"key" . ($i % 1000)} if $i % 5 == 0;
        }
        my @sorted = sort { length($h{$a}) <=> length($h{$b}) || $a cmp $b } keys %h;
        print scalar(@sorted), " $sorted[0] $sorted[-1]\n";
        my $text = join(" ", map { $_->[1] } @a);
        my $n = () = $text =~ /key(\d*7)\b/g;
        print "matches $n\n";
        my %count; $count{length $_}++ for values %h;
        print join(",", map { "$_=$count{$_}" } sort { $a <=> $b } keys %count), "\n";
        print sprintf("%.6f", eval { my $s = 0; $s += sqrt($_) for 1 .. 100000; $s }), "\n";
    "#;
    std::fs::write(dir.path().join("s.pl"), script).expect("write s.pl");
    same_as_glibc("perl", &["s.pl"], dir.path());
}

#[test]
fn gcc_compiles_identical_objects() {
    let Some(_) = require("gcc") else { return };
    let dir = TempDir::new("gcc");
    let src = hz_e2e::repo_root().join("tests/c/stress.c");
    let inc = hz_e2e::repo_root().join("tests/c");
    for (name, mut cmd) in [
        ("glibc.o", plain_command("gcc")),
        ("hz.o", hz_command("gcc")),
    ] {
        cmd.args(["-O2", "-g", "-c", "-I"])
            .arg(&inc)
            .arg(&src)
            .arg("-o")
            .arg(dir.path().join(name));
        run(&mut cmd, LIMIT).assert_success(&format!("gcc -> {name}"));
    }
    let a = std::fs::read(dir.path().join("glibc.o")).expect("read glibc.o");
    let b = std::fs::read(dir.path().join("hz.o")).expect("read hz.o");
    assert!(a.len() > 1000, "gcc wrote a tiny object");
    assert!(a == b, "gcc under hz produced a different object file");
    // And the compiler links and the result runs.
    let exe = dir.path().join("stress");
    run(
        hz_command("gcc")
            .arg(dir.path().join("hz.o"))
            .args(["-pthread", "-o"])
            .arg(&exe),
        LIMIT,
    )
    .assert_success("gcc link under hz");
    let out = run(hz_command(&exe).args(["2", "1", "2000"]), LIMIT);
    out.assert_success("freshly compiled stress");
    assert_eq!(out.stdout.trim(), "stress: ok");
}

/// Kills the redis server's process group when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(self.0.id());
        let _ = self.0.wait();
    }
}

#[test]
fn redis_server_under_benchmark() {
    let (Some(server), Some(bench), Some(cli)) = (
        require("redis-server"),
        require("redis-benchmark"),
        require("redis-cli"),
    ) else {
        return;
    };
    let dir = TempDir::new("redis");
    let port = (20000 + std::process::id() % 20000).to_string();
    let mut cmd = hz_command(&server);
    cmd.args([
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--daemonize", "no", "--dir"])
    .arg(dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut srv = Server(cmd.spawn().expect("start redis-server"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port"))).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not start listening"
        );
        assert!(
            srv.0.try_wait().expect("poll server").is_none(),
            "redis-server exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(
        hz_command(&bench)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-n",
                "20000",
                "-c",
                "8",
                "-q",
            ])
            .args([
                "-d",
                "300",
                "-r",
                "5000",
                "-t",
                "set,get,incr,lpush,lpop,sadd,hset,mset",
            ]),
        LIMIT,
    );
    out.assert_success("redis-benchmark");
    for t in [
        "SET", "GET", "INCR", "LPUSH", "LPOP", "SADD", "HSET", "MSET",
    ] {
        assert!(
            // Progress lines end in '\r'; each final result is its own line.
            out.stdout
                .split(['\r', '\n'])
                .any(|l| l.trim_start().starts_with(t) && l.contains("requests per second")),
            "no {t} result in:\n{}",
            out.stdout
        );
    }
    let cli_out = |args: &[&str]| {
        let o = run(hz_command(&cli).args(["-p", &port]).args(args), LIMIT);
        o.assert_success(&format!("redis-cli {args:?}"));
        o.stdout
    };
    cli_out(&["set", "hz-key", &"v".repeat(10000)]);
    assert_eq!(cli_out(&["strlen", "hz-key"]).trim(), "10000");
    let keys: u64 = cli_out(&["dbsize"]).trim().parse().expect("dbsize");
    assert!(keys > 100, "benchmark left only {keys} keys");
    assert!(
        srv.0.try_wait().expect("poll server").is_none(),
        "redis-server died"
    );
    cli_out(&["shutdown", "nosave"]);
    let status = srv.0.wait().expect("wait for redis-server");
    assert!(status.success(), "redis-server exit status {status:?}");
}

/// node (tests/js/workers.js): V8 and libuv with worker threads that
/// start, allocate, hand memory over and exit.
#[test]
fn node_worker_threads() {
    let dir = TempDir::new("node");
    let script = hz_e2e::repo_root().join("tests/js/workers.js");
    let Some(out) = same_as_glibc("node", &[script.to_str().expect("path")], dir.path()) else {
        return;
    };
    for line in ["buffers ", "map workers ", "array workers "] {
        assert!(out.stdout.contains(line), "no {line:?} in {}", out.stdout);
    }
}

/// xz and zstd with two worker threads each: multi-megabyte buffers that
/// one thread fills and another frees. The compressed bytes must be those
/// glibc's run writes, and each stream must decompress to the input.
#[test]
fn xz_and_zstd_threaded_round_trip() {
    let (Some(_), Some(_)) = (require("xz"), require("zstd")) else {
        return;
    };
    let dir = TempDir::new("compress");
    let mut input = String::new();
    let mut x: u64 = 99;
    while input.len() < 12 << 20 {
        x = lcg(x);
        let word = ["alpha", "beta", "gamma", "delta", "epsilon"][(x >> 61) as usize % 5];
        input.push_str(&format!("{word} {} {:x}\n", x >> 44, x >> 20));
    }
    std::fs::write(dir.path().join("in.txt"), &input).expect("write input");
    let script = r#"
        set -e
        xz -T2 -3 --block-size=1MiB -c in.txt > in.xz
        zstd -q -T2 -5 --stream-size=$(stat -c %s in.txt) -c in.txt > in.zst
        md5sum in.xz in.zst
        xz -T2 -d -c in.xz | cmp - in.txt
        zstd -q -T2 -d -c in.zst | cmp - in.txt
        echo round trips ok
    "#;
    let hz = same_as_glibc("bash", &["-c", script], dir.path()).expect("bash");
    assert!(hz.stdout.ends_with("round trips ok\n"), "{}", hz.stdout);
}
