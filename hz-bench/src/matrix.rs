//! The T/R ring benchmark (DESIGN.md, "The benchmark that defines the matrix"),
//! generic over `GlobalAlloc`: the allocator is called through a type
//! parameter, never through `#[global_allocator]`.
//!
//! T threads in a ring; thread i keeps `ws` slots. Each iteration it drains its
//! receive ring (each pointer received is freed: a remote free), picks a random
//! slot; an empty slot gets a block of a size uniform in `min..=max` (first and
//! last byte written); a full slot is freed, with probability R% by sending it
//! to thread (i+1)%T's ring, otherwise here. A full ring means a local free,
//! counted as a fallback. `c/bench_matrix.c` is the same program in C.

use crate::rng::XorShift;
use crate::spsc::{Entry, Spsc};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Alignment asked for every block (what `Vec<u8>`/`Box<[u8]>` would ask).
pub const ALIGN: usize = 8;

/// A lane: the size range of one row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
}

/// The three lanes of the design.
pub const LANES: [Lane; 3] = [
    Lane {
        name: "guard",
        min: 16,
        max: 2048,
    },
    Lane {
        name: "main",
        min: 16,
        max: 32768,
    },
    Lane {
        name: "cross128",
        min: 16,
        max: 131072,
    },
];

/// Finds a lane by name.
pub fn lane(name: &str) -> Option<Lane> {
    LANES.iter().copied().find(|l| l.name == name)
}

/// One cell of the matrix, for one allocator.
#[derive(Clone, Debug)]
pub struct RingConfig {
    pub threads: usize,
    pub remote_pct: u32,
    pub min: usize,
    pub max: usize,
    /// Iterations of each thread.
    pub iters_per_thread: u64,
    pub ws: usize,
    /// Entries per SPSC ring.
    pub ring_cap: usize,
    pub seed: u64,
    /// Pin thread i to the (i mod n)-th allowed CPU. A runner passes it to
    /// its child as `HZB_PIN=1` (`machine::PIN_ENV`), not as an argument;
    /// the child's threads pin themselves when that is set.
    pub pin: bool,
}

impl RingConfig {
    /// The ring capacity used when none is given: one entry per iteration of
    /// a thread (it sends at most one block per iteration, so the ring cannot
    /// overflow), up to 2^20 entries (16 MiB of address space; only the
    /// entries used are ever touched).
    pub fn default_ring_cap(iters_per_thread: u64) -> usize {
        (iters_per_thread as usize)
            .clamp(64, 1 << 20)
            .next_power_of_two()
    }
}

/// What the threads did, summed over threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Blocks allocated in the loop.
    pub allocs: u64,
    /// Frees done by the thread that chose the slot (fallbacks included).
    pub local_frees: u64,
    /// Blocks sent to the next thread's ring.
    pub remote_sent: u64,
    /// Blocks received from a ring and freed (the remote frees).
    pub remote_recv: u64,
    /// Remote frees that found the ring full and were freed locally.
    pub fallbacks: u64,
    /// Blocks still in slots at the end, freed after the clock stopped.
    pub cleanup_frees: u64,
    /// The program's own backlog: per thread, the most blocks one drain of
    /// its ring found queued, summed over threads. Blocks queued in a ring
    /// are live, so peak RSS includes them whatever the allocator.
    pub backlog: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.allocs += o.allocs;
        self.local_frees += o.local_frees;
        self.remote_sent += o.remote_sent;
        self.remote_recv += o.remote_recv;
        self.fallbacks += o.fallbacks;
        self.cleanup_frees += o.cleanup_frees;
        self.backlog += o.backlog;
    }

    /// Operations: a remote free counts once when sent and once when freed.
    pub fn ops(&self) -> u64 {
        self.allocs + self.local_frees + self.remote_sent + self.remote_recv
    }

    /// Percent of the loop's frees that went to another thread.
    pub fn remote_pct(&self) -> f64 {
        pct(self.remote_sent, self.remote_sent + self.local_frees)
    }

    /// Percent of attempted remote frees that found the ring full.
    pub fn fallback_pct(&self) -> f64 {
        pct(self.fallbacks, self.remote_sent + self.fallbacks)
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// Above this fallback percentage a cell is "not comparable".
pub const FALLBACK_LIMIT_PCT: f64 = 0.1;

/// A finished run.
#[derive(Clone, Copy, Debug)]
pub struct RingResult {
    pub counts: Counts,
    pub elapsed: Duration,
}

impl RingResult {
    /// Millions of operations per second.
    pub fn mops(&self) -> f64 {
        self.counts.ops() as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

#[inline(always)]
fn layout(size: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and sizes are far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
}

/// Runs one cell with allocator `a`. Remote frees need a second thread: with
/// one thread every free is local whatever `remote_pct` says.
pub fn run_ring<A: GlobalAlloc + Sync>(a: &A, cfg: &RingConfig) -> RingResult {
    let t = cfg.threads.max(1);
    assert!(cfg.min >= 2 && cfg.min <= cfg.max && cfg.ws > 0);
    let rings: Vec<Spsc> = (0..t).map(|_| Spsc::new(cfg.ring_cap)).collect();
    let barrier = Barrier::new(t + 1);
    let done = AtomicUsize::new(0);
    let (start, ends, counts) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|i| {
                let (rings, barrier, done) = (&rings, &barrier, &done);
                s.spawn(move || worker(a, cfg, i, t, rings, barrier, done))
            })
            .collect();
        barrier.wait();
        let mut spans = Vec::new();
        let mut total = Counts::default();
        for h in handles {
            let (span, c) = h.join().expect("benchmark thread panicked");
            spans.push(span);
            total.add(&c);
        }
        // From the first thread's start to the last thread's end: each thread
        // reads the clock itself, as this thread may be descheduled when the
        // barrier opens (T >= cores).
        let start = spans.iter().map(|s| s.0).min();
        let end = spans.iter().map(|s| s.1).max();
        (start, end, total)
    });
    let elapsed = match (start, ends) {
        (Some(s), Some(e)) => e.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    RingResult { counts, elapsed }
}

fn worker<A: GlobalAlloc>(
    a: &A,
    cfg: &RingConfig,
    id: usize,
    t: usize,
    rings: &[Spsc],
    barrier: &Barrier,
    done: &AtomicUsize,
) -> ((Instant, Instant), Counts) {
    if cfg.pin {
        crate::machine::pin_round_robin(id);
    }
    let rx = &rings[id];
    let tx = &rings[(id + 1) % t];
    let remote = if t > 1 { cfg.remote_pct as u64 } else { 0 };
    let span = (cfg.max - cfg.min + 1) as u64;
    let mut slots: Vec<Entry> = vec![
        Entry {
            ptr: std::ptr::null_mut(),
            size: 0
        };
        cfg.ws
    ];
    let mut rng = XorShift::for_thread(cfg.seed, id);
    let mut c = Counts::default();
    let free_received = |e: Entry, c: &mut Counts| {
        // SAFETY: e.ptr came from `a.alloc(layout(e.size))` on another thread
        // and ownership moved here through the ring.
        unsafe { a.dealloc(e.ptr, layout(e.size)) };
        c.remote_recv += 1;
    };
    // Frees what the previous thread sent; keeps the largest drain.
    let drain = |c: &mut Counts| {
        let n = rx.drain(|e| free_received(e, c)) as u64;
        c.backlog = c.backlog.max(n);
    };
    barrier.wait();
    let begin = Instant::now();
    for _ in 0..cfg.iters_per_thread {
        drain(&mut c);
        let k = rng.below(cfg.ws as u64) as usize;
        let slot = &mut slots[k];
        if slot.ptr.is_null() {
            let size = cfg.min + rng.below(span) as usize;
            // SAFETY: size is non-zero.
            let p = unsafe { a.alloc(layout(size)) };
            if p.is_null() {
                std::process::abort();
            }
            // SAFETY: p is a fresh block of `size` >= 2 bytes.
            unsafe {
                p.write(id as u8);
                p.add(size - 1).write(k as u8);
            }
            *slot = Entry { ptr: p, size };
            c.allocs += 1;
        } else {
            let e = std::mem::replace(
                slot,
                Entry {
                    ptr: std::ptr::null_mut(),
                    size: 0,
                },
            );
            if remote > 0 && rng.below(100) < remote {
                if tx.push(e) {
                    c.remote_sent += 1;
                    continue;
                }
                c.fallbacks += 1;
            }
            // SAFETY: e.ptr is a live block of this thread with this layout.
            unsafe { a.dealloc(e.ptr, layout(e.size)) };
            c.local_frees += 1;
        }
    }
    // Keep freeing what the previous thread sends until every thread is done;
    // `done` is read before the drain, so the last drain sees every send.
    done.fetch_add(1, Ordering::Release);
    loop {
        let all = done.load(Ordering::Acquire) == t;
        drain(&mut c);
        if all {
            break;
        }
        std::thread::yield_now();
    }
    let end = Instant::now();
    for e in slots.iter().filter(|e| !e.ptr.is_null()) {
        // SAFETY: a live block of this thread with this layout.
        unsafe { a.dealloc(e.ptr, layout(e.size)) };
        c.cleanup_frees += 1;
    }
    ((begin, end), c)
}

/// The one machine-readable line a cell prints (the C program prints the same).
pub fn result_line(r: &RingResult, maxrss_kib: u64) -> String {
    let c = &r.counts;
    format!(
        "HZB_RESULT allocs={} local={} sent={} recv={} fallback={} cleanup={} ns={} maxrss_kib={} backlog={}",
        c.allocs,
        c.local_frees,
        c.remote_sent,
        c.remote_recv,
        c.fallbacks,
        c.cleanup_frees,
        r.elapsed.as_nanos(),
        maxrss_kib,
        c.backlog
    )
}

/// Parses a line written by [`result_line`] (or by the C program).
pub fn parse_result_line(text: &str) -> Option<(RingResult, u64)> {
    let line = text.lines().find(|l| l.starts_with("HZB_RESULT "))?;
    let get = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
    };
    let counts = Counts {
        allocs: get("allocs")?,
        local_frees: get("local")?,
        remote_sent: get("sent")?,
        remote_recv: get("recv")?,
        fallbacks: get("fallback")?,
        cleanup_frees: get("cleanup")?,
        backlog: get("backlog")?,
    };
    Some((
        RingResult {
            counts,
            elapsed: Duration::from_nanos(get("ns")?),
        },
        get("maxrss_kib")?,
    ))
}

/// Peak resident set of this process in KiB: `VmHWM` of
/// `/proc/self/status`, the peak of what this program mapped since its
/// exec. Not `getrusage`'s `ru_maxrss`: Linux carries that across exec, so
/// a child started by vfork (`posix_spawn`, as `std::process::Command`
/// does) reports at least its parent's RSS (the harness's 3–4 MiB set the
/// floor of the small workloads' figures until the 31st session). Read
/// into a stack buffer: the allocator under test sees no call.
pub fn self_maxrss_kib() -> u64 {
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path; read writes at most buf.len() bytes
    // into buf; fd is closed once.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/status".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            -1
        } else {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            n
        }
    };
    if n > 0 {
        if let Some(kib) = vm_hwm_kib(&buf[..n as usize]) {
            return kib;
        }
    }
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss.max(0) as u64
    }
}

/// The `VmHWM:` figure (KiB) of a `/proc/PID/status` text.
fn vm_hwm_kib(status: &[u8]) -> Option<u64> {
    let key = b"VmHWM:";
    let at = status.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = status[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    let mut v: Option<u64> = None;
    for &d in digits {
        v = Some(v.unwrap_or(0) * 10 + u64::from(d - b'0'));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_from_a_status_text() {
        let text = b"Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    3644 kB\nVmRSS:\t 3000 kB\n";
        assert_eq!(vm_hwm_kib(text), Some(3644));
        assert_eq!(vm_hwm_kib(b"VmRSS:\t 3000 kB\n"), None);
        assert_eq!(vm_hwm_kib(b"VmHWM:\t kB\n"), None);
    }

    #[test]
    fn peak_rss_is_this_programs_not_its_parents() {
        // A child spawned (vfork) from this test process, after it has
        // touched 64 MiB, must not report them: the test binary runs
        // itself as the child (`--exact` on a test that prints).
        if std::env::var_os("HZB_RSS_CHILD").is_some() {
            println!("HZB_RSS_CHILD_KIB={}", self_maxrss_kib());
            return;
        }
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        assert!(
            self_maxrss_kib() >= 64 << 10,
            "the parent's own peak is missing"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "matrix::tests::peak_rss_is_this_programs_not_its_parents",
                "--nocapture",
            ])
            .env("HZB_RSS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let kib: u64 = text
            .split("HZB_RSS_CHILD_KIB=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no figure from the child: {text}"));
        assert!(
            kib > 0 && kib < 32 << 10,
            "the child reported {kib} KiB: its parent's peak"
        );
        drop(big);
    }

    #[test]
    fn result_line_round_trips() {
        let r = RingResult {
            counts: Counts {
                allocs: 10,
                local_frees: 3,
                remote_sent: 4,
                remote_recv: 4,
                fallbacks: 1,
                cleanup_frees: 3,
                backlog: 2,
            },
            elapsed: Duration::from_nanos(12345),
        };
        let (back, rss) = parse_result_line(&format!("noise\n{}\n", result_line(&r, 77))).unwrap();
        assert_eq!(back.counts, r.counts);
        assert_eq!(back.elapsed, r.elapsed);
        assert_eq!(rss, 77);
    }
}
