//! Helpers shared by the reliability tests that must run in a fresh
//! process (RSS, address-space limits): re-executing the test binary as a
//! child, and reading the process's memory figures.
#![allow(dead_code)] // each test file uses a subset

use std::process::Command;

pub const MIB: usize = 1 << 20;

/// A command that runs this test binary again. Where the tests run under
/// an emulator (`scripts/cross.sh`: the binary is another architecture's,
/// which this kernel cannot exec), `HZ_TEST_RUNNER` names it, with its
/// arguments, and the child runs under it too.
pub fn self_command() -> Command {
    let exe = std::env::current_exe().unwrap();
    let runner = std::env::var("HZ_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(prog) => {
            let mut cmd = Command::new(prog);
            cmd.args(words).arg(exe);
            cmd
        }
        None => Command::new(exe),
    }
}

/// Runs test `name` of this binary in a fresh child process, with `env`
/// set and `unset` removed from its environment, and asserts that it ran
/// and passed. Returns true when we *are* that child (the caller then runs
/// the child part). `marker` is the environment variable that tells them
/// apart (one per test file).
pub fn in_child(marker: &str, name: &str, env: &[(&str, &str)], unset: &[&str]) -> bool {
    if std::env::var(marker).as_deref() == Ok(name) {
        return true;
    }
    let mut cmd = self_command();
    cmd.args([
        name,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(marker, name)
    .envs(env.iter().copied());
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("cannot run the test binary as a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "child {name} failed ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child {name} did not run its test:\n{text}"
    );
    print!("{text}");
    false
}

/// Runs `f` on a thread of its own (a fresh heap, whose segments hold
/// nothing else) in the fresh child process of [`in_child`]; in the
/// parent, runs the child and returns.
pub fn on_own_thread_in_child(marker: &str, name: &str, f: impl FnOnce() + Send + 'static) {
    if in_child(marker, name, &[], &[]) {
        std::thread::spawn(f).join().unwrap();
    }
}

/// Field `field` of /proc/self/statm, in bytes (0: size, 1: resident),
/// read from /proc/self/status (`VmSize`, `VmRSS`), which gives kB: statm
/// counts kernel pages, and under tests/c/libpageshim.c `sysconf` reports
/// the emulated page, not the one statm counts in.
pub fn statm_bytes(field: usize) -> usize {
    let key = ["VmSize:", "VmRSS:"][field];
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    let kb: usize = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb << 10
}

/// Resident set size in bytes.
pub fn rss() -> usize {
    statm_bytes(1)
}

pub fn mib(x: usize) -> f64 {
    x as f64 / MIB as f64
}

/// xorshift: reproducible sizes.
pub struct Rng(pub u64);
impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Does small-block work (more blocks than a bin holds: refills and
/// overflows, the slow paths where a heap's ticks, and so its GC, run)
/// every 10 ms until no page of `[p, p + len)` is resident, with no call to
/// collect (hz has no background thread). Fails after 2 s, naming `what`.
pub fn wait_until_purged_by_small_work(p: *mut u8, len: usize, what: &str) {
    wait_until_purged_by(p, len, what, "small-block work", || {
        let v: Vec<*mut u8> = (0..2000).map(|i| hz_core::malloc(16 + i % 1000)).collect();
        for b in v {
            // SAFETY: live blocks of hz, each freed once.
            unsafe { hz_core::free(b) };
        }
    });
}

/// Runs `work` every 10 ms until no page of `[p, p + len)` is resident,
/// with no call to collect. Fails after 2 s, naming `what` and `doing`.
pub fn wait_until_purged_by(
    p: *mut u8,
    len: usize,
    what: &str,
    doing: &str,
    mut work: impl FnMut(),
) {
    let t0 = std::time::Instant::now();
    while resident_pages(p, len) != 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{what} stayed resident for 2 s of {doing}"
        );
        work();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// 4 KiB pieces of `[p, p + len)` resident now (`mincore`). On a kernel
/// with larger pages (or under tests/c/libpageshim.c) each resident page
/// counts as that many pieces, at most `len / 4096` in all; `p` must be
/// aligned to the kernel's page.
pub fn resident_pages(p: *mut u8, len: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut v = vec![0u8; len.div_ceil(page)];
    // SAFETY: the range is mapped (hz never unmaps its arenas); v has one
    // byte per page.
    let r = unsafe { libc::mincore(p as *mut libc::c_void, len, v.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    let resident = v.iter().filter(|&&b| b & 1 != 0).count();
    (resident * (page / 4096)).min(len.div_ceil(4096))
}

/// Another thread frees `blocks` (live blocks of hz, allocated by the
/// calling thread, each of `n` bytes, in the calling thread's segments);
/// then the calling thread's next as many blocks of `n` bytes must be the
/// same places, taken without new pages from the page allocator. They are
/// freed before returning.
pub fn remote_frees_serve_the_owner(blocks: &[usize], n: usize) {
    let freed = blocks.to_vec();
    std::thread::spawn(move || {
        for p in freed {
            // SAFETY: live blocks of hz, each freed once.
            unsafe { hz_core::free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
    let in_use = hz_core::stats().in_use;
    let mut again: Vec<usize> = (0..blocks.len())
        .map(|_| hz_core::malloc(n) as usize)
        .collect();
    assert_eq!(
        hz_core::stats().in_use,
        in_use,
        "the owner took new pages instead of the blocks freed by another thread"
    );
    again.sort();
    let mut want = blocks.to_vec();
    want.sort();
    assert_eq!(
        again, want,
        "blocks freed by another thread did not serve their owner"
    );
    for p in again {
        // SAFETY: live blocks of hz, each freed once.
        unsafe { hz_core::free(p as *mut u8) };
    }
}

/// Whether the first `n` bytes of `p` are all `v`.
pub fn all_are(p: *mut u8, n: usize, v: u8) -> bool {
    // SAFETY: callers pass a live block of at least n bytes.
    unsafe { core::slice::from_raw_parts(p, n) }
        .iter()
        .all(|&b| b == v)
}

/// Writes `v` into the first `n` bytes of `p`.
pub fn write_all(p: *mut u8, n: usize, v: u8) {
    // SAFETY: callers pass a live block of at least n bytes.
    unsafe { core::ptr::write_bytes(p, v, n) };
}

/// Frees each of `ps` through hz, none of them a live block's start (a
/// block freed before, or an address inside one: the misuse under test),
/// and asserts that hz ignored each and counted it as a foreign free;
/// `what` names them in the failure.
pub fn frees_are_ignored(ps: &[*mut u8], what: &str) {
    let foreign = hz_core::stats().foreign_frees;
    ps.iter().for_each(|&p| free(p));
    assert_eq!(
        hz_core::stats().foreign_frees,
        foreign + ps.len() as u64,
        "{what} is not ignored and counted"
    );
}

/// The next two blocks of `n` bytes after block `p` of that length was
/// freed (and freed again, the misuse under test): the first must be `p`,
/// the second another block, so that `p` is handed out once; `what` names
/// `p` in the failures.
pub fn served_once(p: *mut u8, n: usize, what: &str) -> (*mut u8, *mut u8) {
    let (q, r) = (hz_core::malloc(n), hz_core::malloc(n));
    assert_eq!(q, p, "{what} did not serve the next block of its length");
    assert_ne!(r, q, "{what}, freed twice, was handed out twice");
    (q, r)
}

/// Frees `p` through hz.
pub fn free(p: *mut u8) {
    // SAFETY: callers pass live blocks of hz, each once (or, where the
    // test says so, a block freed before: the misuse under test).
    unsafe { hz_core::free(p) };
}

/// The VMA flags (`VmFlags:` line of /proc/self/smaps) of the mapping
/// holding `p`.
pub fn vm_flags(p: *mut u8) -> Vec<String> {
    let a = p as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = lo <= a && a < hi;
                continue;
            }
        }
        if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return f.split_whitespace().map(String::from).collect();
            }
        }
    }
    panic!("no mapping holds {p:?}");
}
