//! What the report says about the machine and the toolchain.

use std::process::Command;

/// Facts printed at the top of every report.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub rustc: String,
    pub mimalloc_crate: String,
    pub libmimalloc_sys: String,
    pub glibc: String,
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&o.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_else(|_| "unknown".into()),
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_else(|| "unknown".into()),
            rustc: env!("HZB_RUSTC_VERSION").to_string(),
            mimalloc_crate: env!("HZB_MIMALLOC_VERSION").to_string(),
            libmimalloc_sys: env!("HZB_LIBMIMALLOC_SYS_VERSION").to_string(),
            glibc: crate::allocs::glibc_version(),
        }
    }

    /// The header block (markdown).
    pub fn header(&self) -> String {
        format!(
            "- CPU: {} ({} cores available)\n- kernel: {}\n- date: {}\n- {}\n- mimalloc crate {} (libmimalloc-sys {}), glibc {}\n",
            self.cpu, self.cores, self.kernel, self.date, self.rustc, self.mimalloc_crate, self.libmimalloc_sys, self.glibc
        )
    }
}

/// Cache-line round trip between two cores, in ns: two threads pinned to
/// the first two CPUs this process may use hand one line back and forth
/// `rounds` times. `None` with fewer than two CPUs, or if pinning fails.
///
/// Why the matrix measures it: on a virtual machine the host may place the
/// vCPUs on cores that share a cache (45-140 ns on the development
/// machine) or on distant ones (about 400 ns), and move them while a run
/// goes on. Every remote free moves lines between cores, so the remote
/// cells' times (and which allocator is fastest) follow this figure.
pub fn cross_core_round_trip_ns(rounds: u64) -> Option<f64> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    /// Set by the timing thread to end the exchange early.
    const STOP: u64 = u64::MAX;
    /// A probe never takes longer than this: if the other CPU is busy,
    /// every round waits for a time slice, and the average of the rounds
    /// done so far is the answer.
    const BUDGET: std::time::Duration = std::time::Duration::from_millis(200);
    let cpus = allowed_cpus();
    if cpus.len() < 2 || rounds == 0 {
        return None;
    }
    #[repr(align(128))]
    struct Line(AtomicU64);
    let flag = Line(AtomicU64::new(0));
    let pinned = AtomicBool::new(true);
    let ns = std::thread::scope(|s| {
        let (flag, pinned) = (&flag, &pinned);
        let (a, b) = (cpus[0], cpus[1]);
        // The answering thread: turns 2i+1 into 2i+2, until STOP. A
        // compare-exchange, so that it never overwrites STOP.
        s.spawn(move || {
            if !pin_to(b) {
                pinned.store(false, Relaxed);
            }
            for i in 0..rounds {
                loop {
                    match flag
                        .0
                        .compare_exchange(2 * i + 1, 2 * i + 2, AcqRel, Acquire)
                    {
                        Ok(_) => break,
                        Err(STOP) => return,
                        Err(_) => std::hint::spin_loop(),
                    }
                }
            }
        });
        s.spawn(move || {
            if !pin_to(a) {
                pinned.store(false, Relaxed);
            }
            let t0 = std::time::Instant::now();
            let mut done = 0;
            'rounds: for i in 0..rounds {
                flag.0.store(2 * i + 1, Release);
                let mut spins = 0u32;
                while flag.0.load(Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(4096) && t0.elapsed() > BUDGET {
                        flag.0.swap(STOP, AcqRel);
                        break 'rounds;
                    }
                }
                done = i + 1;
            }
            (done > 0).then(|| t0.elapsed().as_nanos() as f64 / done as f64)
        })
        .join()
        .expect("probe thread panicked")
    });
    ns.filter(|_| pinned.load(Relaxed))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    (0..).map_while(nth_allowed_cpu).collect()
}

/// The `n`-th CPU (from 0) this process may run on; `None` past the last
/// (or if the set cannot be read). It allocates nothing: worker threads
/// call it before the measured loop, where an allocation would put blocks
/// of the allocator under test in the thread's cache that the workload
/// did not ask for (M57: two such blocks opened hz's class-16 bin, so
/// in-process cache-scratch measured a different program from its C
/// version).
fn nth_allowed_cpu(n: usize) -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .nth(n)
    }
}

/// How many CPUs this process may run on, without allocating.
fn allowed_cpu_count() -> usize {
    // SAFETY: as in nth_allowed_cpu.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// The environment variable that asks a benchmark child's threads to pin
/// themselves (the Rust ring and workloads, `c/bench_matrix.c` and
/// `c/bench_workloads.c`): thread i to the (i mod n)-th of the n CPUs the
/// process may use, or the next CPU in the order threads start.
pub const PIN_ENV: &str = "HZB_PIN";

/// [`PIN_ENV`] as a C string, for `getenv`.
const PIN_ENV_C: &std::ffi::CStr = c"HZB_PIN";

/// True when [`PIN_ENV`] is `1` in this process's environment. It
/// allocates nothing (`getenv` returns a pointer into the environment;
/// see [`nth_allowed_cpu`] for why).
pub fn pin_requested() -> bool {
    // SAFETY: the name is NUL-terminated; getenv returns null or a
    // NUL-terminated string that stays valid while nobody calls setenv,
    // which the benchmark children never do.
    unsafe {
        let v = libc::getenv(PIN_ENV_C.as_ptr());
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == PIN_ENV_ON
    }
}

/// The value of [`PIN_ENV`] that asks for pinning.
const PIN_ENV_ON: &[u8] = b"1";

/// Pins the calling thread, thread `id` of a benchmark, to the
/// (id mod n)-th of the n CPUs the process may use. False if it could not.
/// It allocates nothing.
pub fn pin_round_robin(id: usize) -> bool {
    let n = allowed_cpu_count();
    n > 0 && nth_allowed_cpu(id % n).is_some_and(pin_to)
}

/// With [`PIN_ENV`] set: pins the calling thread to the next allowed CPU,
/// round robin over one process-wide counter, in the order threads call
/// it (for workloads whose threads have no index). Without it: nothing.
pub fn pin_next_if_requested() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if pin_requested() {
        pin_round_robin(NEXT.fetch_add(1, Relaxed));
    }
}

/// Pins the calling thread to CPU `cpu`.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: as in allowed_cpus; the set names one CPU, and pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// How the cross-core round trip read over a run: `None` when no probe
/// could run.
pub fn round_trip_line(probes: &[f64]) -> Option<String> {
    if probes.is_empty() {
        return None;
    }
    let mut v = probes.to_vec();
    v.sort_by(f64::total_cmp);
    let far = v.iter().filter(|&&x| x >= FAR_NS).count();
    Some(format!(
        "cross-core round trip (a cache line between the first two CPUs, measured before every run): median {:.0} ns, min {:.0}, max {:.0}; {far} of {} probes at {FAR_NS:.0} ns or more. The host moves the vCPUs between cores that share a cache and cores that do not; the remote cells' times, and which allocator leads them, change with it, so compare runs at similar figures",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    ))
}

/// A round trip this long means the two CPUs share no cache (the
/// development machine reads 45-140 ns when they do, 400 ns when not).
pub const FAR_NS: f64 = 200.0;

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_probe_measures_a_positive_time_or_says_why_not() {
        match super::cross_core_round_trip_ns(2000) {
            // Two pinned threads exchanging a line: more than a few ns, and
            // far below a millisecond, on any machine that runs this.
            Some(ns) => assert!(ns > 5.0 && ns < 1e6, "{ns}"),
            None => assert!(super::allowed_cpus().len() < 2),
        }
    }

    #[test]
    fn round_trip_probe_stops_at_its_time_budget() {
        let t0 = std::time::Instant::now();
        let r = super::cross_core_round_trip_ns(u64::MAX);
        // 200 ms of budget, checked every 4096 spins: well under 2 s.
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        if super::allowed_cpus().len() >= 2 {
            assert!(r.is_some_and(|ns| ns > 0.0), "{r:?}");
        }
    }

    #[test]
    fn pin_env_names_agree() {
        assert_eq!(super::PIN_ENV_C.to_bytes(), super::PIN_ENV.as_bytes());
    }

    #[test]
    fn pinned_threads_run_on_their_round_robin_cpu() {
        let cpus = super::allowed_cpus();
        for id in 0..4 {
            let on = std::thread::spawn(move || {
                assert!(super::pin_round_robin(id));
                // SAFETY: sched_getcpu has no preconditions.
                unsafe { libc::sched_getcpu() }
            })
            .join()
            .unwrap();
            assert_eq!(on as usize, cpus[id % cpus.len()], "thread {id}");
        }
    }

    #[test]
    fn round_trip_line_reports_median_and_far_count() {
        let l = super::round_trip_line(&[80.0, 400.0, 90.0]).unwrap();
        assert!(
            l.contains("median 90 ns, min 80, max 400; 1 of 3 probes"),
            "{l}"
        );
        assert!(super::round_trip_line(&[]).is_none());
    }
}
