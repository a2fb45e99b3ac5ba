//! The command line and the runs it plans: which cells, which allocators, in
//! what order (repetitions interleaved across allocators), with a progress
//! bar, and what is written where.

use crate::allocs::{preload_allocators, InProc};
use crate::machine::Machine;
use crate::matrix::{lane, Lane, RingConfig, FALLBACK_LIMIT_PCT, LANES};
use crate::programs::{self, PROGRAMS};
use crate::report::{self, Cell, Kind, Sample, Summary};
use crate::runner::{run_cell, run_workload, Runner};
use crate::workloads::WORKLOADS;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;

/// Every allocator name `--allocators` knows. In a binary built with the
/// `secure` feature the in-process hz and mimalloc are `hz-secure` and
/// `mimalloc-secure`; `hz-secure` is also LD_PRELOAD libhz-secure.so.
pub const ALL_ALLOCATORS: [&str; 8] = [
    "hz",
    "hz-secure",
    "mimalloc",
    "mimalloc-secure",
    "system",
    "jemalloc",
    "tcmalloc",
    "glibc",
];

/// The allocators run when `--allocators` is not given: everything but the
/// hardened builds (`hz-bench secure` compares those), except in a binary
/// built with the `secure` feature, whose in-process allocators are them.
pub fn default_allocators() -> Vec<String> {
    ALL_ALLOCATORS
        .iter()
        .filter(|a| crate::allocs::SECURE || !a.ends_with("-secure"))
        .map(|s| s.to_string())
        .collect()
}

/// Parsed options.
#[derive(Clone, Debug)]
pub struct Opts {
    pub full: bool,
    pub threads: Vec<usize>,
    pub remote: Vec<u32>,
    pub lanes: Vec<Lane>,
    pub reps: usize,
    /// Matrix: iterations per cell, split evenly over its threads.
    pub iters: u64,
    pub allocators: Vec<String>,
    pub inproc: bool,
    pub preload: bool,
    pub ws: usize,
    pub ring: Option<usize>,
    pub seed: u64,
    /// Pin the matrix's and the workloads' threads round robin to the CPUs (`--no-pin`: off).
    pub pin: bool,
    pub out: Option<PathBuf>,
    pub build_hz: bool,
    pub workloads: Vec<String>,
    pub wl_threads: usize,
    pub scale: f64,
    pub programs: Vec<String>,
}

pub const USAGE: &str = "\
usage: hz-bench <matrix|workloads|all|programs|secure> [options]

  matrix     the T/R ring benchmark (quick subset by default, --full for all)
  workloads  larson, pipeline, xmalloc, cache-scratch, cache-thrash, realloc, realloc-medium,
             large, rust-collections, cxx-collections
  all        matrix, then workloads
  programs   python3, sqlite3, perl, gcc and redis-server under LD_PRELOAD, each
             allocator in turn (the ones installed; --scale sizes their inputs)
  secure     the matrix for hz vs hz-secure and mimalloc vs mimalloc-secure
             (in-process: runs a second hz-bench built with --features secure;
             LD_PRELOAD: libhz.so, libhz-secure.so, Debian mimalloc), one table

options (lists are comma-separated):
  --full               T=1,2,4,8,16  R=0,50,90  lanes guard,main,cross128, 3M iterations per cell
  --threads 1,4,16     thread counts T            (quick default: 1,4,16)
  --remote 0,90        remote-free percentages R  (quick default: 0,90)
  --lanes guard,main   size lanes: guard 16..2048, main 16..32768, cross128 16..131072
  --reps 3             repetitions (interleaved across allocators, their order rotated
                       each repetition; medians reported)
  --iters N            matrix iterations per cell, split over its T threads (default 3000000)
  --allocators LIST    hz,mimalloc,system,jemalloc,tcmalloc,glibc (default: all found)
                       (system = Rust's System in-process; glibc = no LD_PRELOAD)
                       hz-secure: LD_PRELOAD libhz-secure.so (not run by default)
  --modes LIST         inproc,preload (default: both)
  --ws 400             slots per thread
  --ring N             entries per SPSC ring (default: iterations per thread, at most 2^20)
  --seed S             RNG seed (default 1)
  --no-pin             let the scheduler place the threads (default: matrix thread i
                       runs only on the (i mod n)-th of the n CPUs it may use, workload
                       threads likewise in the order they start, so the scheduler
                       cannot leave one CPU with more threads than another)
  --out DIR            write CSV, JSON, markdown and SVG chart here (default bench-out/)
  --no-out             write no files
  --no-build           do not build libhz.so when it is missing
  --workloads LIST     which workloads (default: all)
  --wl-threads N       threads of the workloads (default 4)
  --scale F            workload and program input size factor (default 1.0)
  --programs LIST      which programs (default: all installed)

libhz.so is found at $HZ_LIB, else $CARGO_TARGET_DIR/release/libhz.so, else
<repo>/target/release/libhz.so (built with `cargo build --release -p hz-ffi` if missing);
libhz-secure.so likewise at $HZ_SECURE_LIB, else .../release/libhz-secure.so
(built with scripts/build-secure.sh). `secure` runs the hz-bench at
$HZ_BENCH_SECURE_EXE, else builds it: cargo build --release -p hz-bench
--features secure --target-dir ${CARGO_TARGET_DIR:-<repo>/target}/bench-secure.";

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().map_err(|_| format!("bad {what}: {s}")))
        .collect()
}

impl Opts {
    /// Parses the options after the subcommand.
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let full = args.iter().any(|a| a == "--full");
        let mut o = Opts {
            full,
            threads: if full {
                vec![1, 2, 4, 8, 16]
            } else {
                vec![1, 4, 16]
            },
            remote: if full { vec![0, 50, 90] } else { vec![0, 90] },
            lanes: if full {
                LANES.to_vec()
            } else {
                vec![LANES[0], LANES[1]]
            },
            reps: 3,
            iters: 3_000_000,
            allocators: default_allocators(),
            inproc: true,
            preload: true,
            ws: 400,
            ring: None,
            seed: 1,
            pin: true,
            out: Some(PathBuf::from("bench-out")),
            build_hz: true,
            workloads: WORKLOADS.iter().map(|s| s.to_string()).collect(),
            wl_threads: 4,
            scale: if full { 3.0 } else { 1.0 },
            programs: PROGRAMS.iter().map(|s| s.to_string()).collect(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut val = || -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--full" => {}
                "--no-out" => o.out = None,
                "--no-pin" => o.pin = false,
                "--pin" => o.pin = true,
                "--no-build" => o.build_hz = false,
                "--threads" => o.threads = list(&val()?, "thread count")?,
                "--remote" => o.remote = list(&val()?, "remote percentage")?,
                "--lanes" => {
                    o.lanes = val()?
                        .split(',')
                        .map(|n| {
                            lane(n)
                                .ok_or_else(|| format!("unknown lane {n} (guard, main, cross128)"))
                        })
                        .collect::<Result<_, _>>()?
                }
                "--reps" => o.reps = val()?.parse().map_err(|_| "bad --reps")?,
                "--iters" => o.iters = val()?.parse().map_err(|_| "bad --iters")?,
                "--ws" => o.ws = val()?.parse().map_err(|_| "bad --ws")?,
                "--ring" => o.ring = Some(val()?.parse().map_err(|_| "bad --ring")?),
                "--seed" => o.seed = val()?.parse().map_err(|_| "bad --seed")?,
                "--out" => o.out = Some(PathBuf::from(val()?)),
                "--allocators" => {
                    o.allocators = list(&val()?, "allocator")?;
                    if let Some(bad) = o
                        .allocators
                        .iter()
                        .find(|a| !ALL_ALLOCATORS.contains(&a.as_str()))
                    {
                        return Err(format!(
                            "unknown allocator {bad} (known: {})",
                            ALL_ALLOCATORS.join(",")
                        ));
                    }
                }
                "--modes" => {
                    let m: Vec<String> = list(&val()?, "mode")?;
                    o.inproc = m.iter().any(|x| x == "inproc");
                    o.preload = m.iter().any(|x| x == "preload");
                    if let Some(bad) = m.iter().find(|x| *x != "inproc" && *x != "preload") {
                        return Err(format!("unknown mode {bad} (inproc, preload)"));
                    }
                }
                "--workloads" => {
                    o.workloads = list(&val()?, "workload")?;
                    if let Some(bad) = o
                        .workloads
                        .iter()
                        .find(|w| !WORKLOADS.contains(&w.as_str()))
                    {
                        return Err(format!(
                            "unknown workload {bad} (known: {})",
                            WORKLOADS.join(",")
                        ));
                    }
                }
                "--programs" => {
                    o.programs = list(&val()?, "program")?;
                    if let Some(bad) = o.programs.iter().find(|p| !PROGRAMS.contains(&p.as_str())) {
                        return Err(format!(
                            "unknown program {bad} (known: {})",
                            PROGRAMS.join(",")
                        ));
                    }
                }
                "--wl-threads" => o.wl_threads = val()?.parse().map_err(|_| "bad --wl-threads")?,
                "--scale" => o.scale = val()?.parse().map_err(|_| "bad --scale")?,
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown option {other}\n\n{USAGE}")),
            }
        }
        if o.reps == 0 || o.threads.contains(&0) || o.ws == 0 || o.iters == 0 {
            return Err("--reps, --threads, --ws and --iters must be positive".into());
        }
        if let Some(bad) = o.remote.iter().find(|r| **r > 100) {
            return Err(format!("remote percentage {bad} > 100"));
        }
        Ok(o)
    }

    fn runners(&self, notes: &mut Vec<String>) -> Vec<Runner> {
        let mut r = Vec::new();
        if self.inproc {
            for a in InProc::ALL {
                if self.allocators.iter().any(|x| x == a.name()) {
                    r.push(Runner::InProc(a));
                }
            }
        }
        if self.preload {
            let (p, n) = preload_allocators(&self.allocators, self.build_hz);
            notes.extend(n);
            r.extend(p.into_iter().map(Runner::Preload));
        }
        r
    }
}

pub(crate) fn progress(len: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// The report's header: machine, allocators and where they come from, notes.
pub(crate) fn header_text(
    title: &str,
    m: &Machine,
    runners: &[Runner],
    notes: &[String],
) -> String {
    let mut h = format!("# hz-bench {title}\n\n{}", m.header());
    for r in runners {
        let line = match r {
            Runner::InProc(a) => {
                format!(
                    "- in-process {}: {}\n",
                    a.name(),
                    a.describe(&m.mimalloc_crate)
                )
            }
            Runner::Exe { name, exe, what } => {
                format!("- in-process {name}: {what}, run by {}\n", exe.display())
            }
            Runner::Preload(p) => format!("- LD_PRELOAD {}: {}\n", p.name, p.origin),
        };
        h.push_str(&line);
    }
    for n in notes {
        h.push_str(&format!("- note: {n}\n"));
    }
    h
}

/// The matrix cells of these options: (lane, T, R); T=1 runs R=0 only.
pub fn cells(o: &Opts, notes: &mut Vec<String>) -> Vec<(Lane, usize, u32)> {
    let mut v = Vec::new();
    let mut skipped = false;
    for l in &o.lanes {
        for &t in &o.threads {
            let mut rs: Vec<u32> = if t == 1 {
                o.remote.iter().copied().filter(|&r| r == 0).collect()
            } else {
                o.remote.clone()
            };
            if t == 1 && rs.is_empty() {
                rs.push(0);
            }
            skipped |= t == 1 && o.remote.iter().any(|&r| r > 0);
            for r in rs {
                v.push((*l, t, r));
            }
        }
    }
    if skipped {
        notes.push("T=1 has no other thread to free to: only R=0 is run for T=1".into());
    }
    v
}

/// [`cells`], and a note when T oversubscribes the cores.
pub fn matrix_cells(o: &Opts, m: &Machine, notes: &mut Vec<String>) -> Vec<(Lane, usize, u32)> {
    let c = cells(o, notes);
    if o.threads.iter().any(|&t| t > m.cores) {
        notes.push(format!(
            "T > {} cores is oversubscribed: threads time-share the cores",
            m.cores
        ));
    }
    notes.push(pin_note(
        o,
        &format!(
            "thread i runs only on the (i mod {0})-th of the {0} CPUs",
            m.cores
        ),
    ));
    c
}

/// The header note on pinning; `how` says how threads are placed.
fn pin_note(o: &Opts, how: &str) -> String {
    if o.pin {
        format!("threads pinned: {how} (`--no-pin` lets the scheduler place them; unpinned, a 4-thread run on 2 CPUs can split 3+1 and take 1.5x as long, whatever the allocator)")
    } else {
        "threads not pinned (`--no-pin`): the scheduler places them".into()
    }
}

/// The runners of one cell in repetition `rep`'s order: the list rotated
/// by `rep`, so that across the repetitions each allocator runs first,
/// right after another cell's or workload's runs, as often as any other
/// (with a fixed order the first runner alone ran right after the
/// previous workload's last process: rust-collections, first after a
/// glibc run of `large`, read 1.49 of the `mimalloc` crate in one suite
/// and 1.06 in shuffled direct runs; either allocator's runs right after
/// that `large` took 151–286 ms against about 170).
fn in_turn<T>(runners: &[T], rep: usize) -> impl Iterator<Item = &T> {
    let k = if runners.is_empty() {
        0
    } else {
        rep % runners.len()
    };
    runners[k..].iter().chain(&runners[..k])
}

/// Runs every (repetition, cell, runner) of the matrix, repetitions outermost
/// and runners innermost (interleaved, their order rotated each repetition:
/// [`in_turn`]), with a progress bar. Before each run it measures the
/// cross-core round trip (each sample carries it); the second value is
/// every probe taken.
pub fn measure_matrix(
    o: &Opts,
    cells: &[(Lane, usize, u32)],
    runners: &[Runner],
) -> (Vec<Sample>, Vec<f64>) {
    let total = (o.reps * cells.len() * runners.len()) as u64;
    let pb = progress(total);
    let mut samples = Vec::new();
    let mut probes = Vec::new();
    for rep in 0..o.reps {
        for &(l, t, r) in cells {
            let per_thread = (o.iters / t as u64).max(1);
            let cfg = RingConfig {
                threads: t,
                remote_pct: r,
                min: l.min,
                max: l.max,
                iters_per_thread: per_thread,
                ws: o.ws,
                ring_cap: o
                    .ring
                    .unwrap_or_else(|| RingConfig::default_ring_cap(per_thread)),
                seed: o.seed,
                pin: o.pin,
            };
            for run in in_turn(runners, rep) {
                let xcore_ns = crate::machine::cross_core_round_trip_ns(PROBE_ROUNDS);
                probes.extend(xcore_ns);
                pb.set_message(format!(
                    "rep {} {} {} T={t} R={r} {}",
                    rep + 1,
                    run.mode(),
                    l.name,
                    run.name()
                ));
                match run_cell(run, &cfg) {
                    Ok((res, rss)) => samples.push(Sample {
                        cell: Cell {
                            mode: run.mode(),
                            group: l.name.to_string(),
                            desc: format!("{}..{} B", l.min, l.max),
                            threads: t,
                            remote: Some(r),
                            alloc: run.name().to_string(),
                        },
                        rep,
                        ns: res.elapsed.as_nanos() as u64,
                        ops: res.counts.ops(),
                        maxrss_kib: rss,
                        counts: Some(res.counts),
                        xcore_ns,
                    }),
                    // (eprintln: a hidden progress bar's println prints nothing.)
                    Err(e) => pb.suspend(|| {
                        eprintln!(
                            "error: {} {} T={t} R={r} {}: {e}",
                            run.mode(),
                            l.name,
                            run.name()
                        )
                    }),
                }
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    (samples, probes)
}

/// Issue 7's memory target: hz's peak RSS at most this times mimalloc's.
const RSS_LIMIT: f64 = 1.10;

/// Round trips per cross-core probe: a few ms at most.
const PROBE_ROUNDS: u64 = 10_000;

/// The header of a matrix report: [`header_text`] and a line on iterations
/// and `reps` (followed by `reps_what`).
pub fn matrix_head(
    title: &str,
    reps_what: &str,
    o: &Opts,
    m: &Machine,
    runners: &[Runner],
    notes: &[String],
) -> String {
    format!(
        "{}- {} iterations per cell (split over its threads), ws={}, {} {reps_what}\n",
        header_text(title, m, runners, notes),
        o.iters,
        o.ws,
        o.reps
    )
}

/// `hz-bench matrix`.
pub fn matrix(o: &Opts) -> Vec<Summary> {
    let m = Machine::probe();
    let mut notes = Vec::new();
    let runners = o.runners(&mut notes);
    let cells = matrix_cells(o, &m, &mut notes);
    let head = matrix_head(
        "matrix: T threads × R% remote frees",
        "repetition(s) interleaved (the allocators' order rotated each repetition), medians; ops/s counts a remote free when sent and when freed",
        o,
        &m,
        &runners,
        &notes,
    );
    print!("{head}");
    let (samples, probes) = measure_matrix(o, &cells, &runners);
    let sums = report::summarize(&samples);
    print!("{}", report::markdown(&sums, m.cores, Kind::Ring));
    print!("{}", report::versus_markdown(&sums, Kind::Ring));
    print!("{}", report::rss_markdown(&sums, "mimalloc", RSS_LIMIT));
    if sums.iter().any(|s| !s.comparable()) {
        println!("\nCells marked **not comparable** had more than {FALLBACK_LIMIT_PCT}% of remote frees fall back to local frees (ring full): rerun with a larger --ring.");
    }
    let paired = report::paired_markdown(&report::paired(&samples));
    print!("{paired}");
    let rt = crate::machine::round_trip_line(&probes);
    if let Some(l) = &rt {
        println!("\n- {l}");
    }
    let head = match &rt {
        Some(l) => format!("{head}- {l}\n"),
        None => head,
    };
    write_out(
        o,
        "matrix",
        &head,
        &m,
        &runners,
        &notes,
        &sums,
        &samples,
        Kind::Ring,
        &paired,
    );
    sums
}

/// `hz-bench workloads`.
pub fn workloads(o: &Opts) -> Vec<Summary> {
    let m = Machine::probe();
    let mut notes = Vec::new();
    let runners = o.runners(&mut notes);
    if o.wl_threads > m.cores {
        notes.push(format!(
            "T={} > {} cores is oversubscribed",
            o.wl_threads, m.cores
        ));
    }
    notes.push("LD_PRELOAD runs use the C versions in hz-bench/c/bench_workloads.c (rust-collections has none) and, for cxx-collections (LD_PRELOAD only), the C++ program hz-bench/c/bench_cxx.cc".into());
    notes.push(pin_note(
        o,
        "worker threads take the CPUs round robin in the order they start",
    ));
    let head = format!(
        "{}- threads {}, scale {}, {} repetition(s) interleaved (the allocators' order rotated each repetition), medians\n",
        header_text("workloads", &m, &runners, &notes),
        o.wl_threads,
        o.scale,
        o.reps
    );
    print!("{head}");
    // Each workload with the runners that run it.
    let jobs: Vec<(&str, Vec<&Runner>)> = o
        .workloads
        .iter()
        .map(|w| {
            let w = w.as_str();
            let rs = runners
                .iter()
                .filter(|r| {
                    if matches!(r, Runner::Preload(_)) {
                        !crate::workloads::in_process_only(w)
                    } else {
                        !crate::workloads::is_cxx(w)
                    }
                })
                .collect();
            (w, rs)
        })
        .collect();
    let runs: usize = jobs.iter().map(|(_, rs)| rs.len()).sum();
    let pb = progress((o.reps * runs) as u64);
    let mut samples = Vec::new();
    for rep in 0..o.reps {
        for (w, run) in jobs
            .iter()
            .flat_map(|(w, rs)| in_turn(rs, rep).map(move |r| (*w, *r)))
        {
            pb.set_message(format!("rep {} {} {w} {}", rep + 1, run.mode(), run.name()));
            match run_workload(run, w, o.wl_threads, o.scale, o.pin) {
                Ok(res) => samples.push(whole_run(
                    run,
                    w,
                    crate::workloads::describe(w),
                    o.wl_threads,
                    rep,
                    (res.ns, res.ops, res.maxrss_kib),
                )),
                // (eprintln: a hidden progress bar's println prints nothing.)
                Err(e) => pb.suspend(|| eprintln!("error: {} {w} {}: {e}", run.mode(), run.name())),
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Run::new(o, &m, &head, &runners, &notes).finish("workloads", Kind::Workloads, &samples)
}

/// The sample of a workload or program run (no ring accounting):
/// `(ns, ops, maxrss_kib)` measured by `run` in repetition `rep`.
fn whole_run(
    run: &Runner,
    group: &str,
    desc: &str,
    threads: usize,
    rep: usize,
    (ns, ops, maxrss_kib): (u64, u64, u64),
) -> Sample {
    Sample {
        cell: Cell {
            mode: run.mode(),
            group: group.to_string(),
            desc: desc.to_string(),
            threads,
            remote: None,
            alloc: run.name().to_string(),
        },
        rep,
        ns,
        ops,
        maxrss_kib,
        counts: None,
        xcore_ns: None,
    }
}

/// What a workloads or programs run reports with its samples.
struct Run<'a> {
    o: &'a Opts,
    m: &'a Machine,
    head: &'a str,
    runners: &'a [Runner],
    notes: &'a [String],
}

impl<'a> Run<'a> {
    fn new(
        o: &'a Opts,
        m: &'a Machine,
        head: &'a str,
        runners: &'a [Runner],
        notes: &'a [String],
    ) -> Self {
        Run {
            o,
            m,
            head,
            runners,
            notes,
        }
    }

    /// Medians, the tables on stdout, and the files (`name`.md, ...).
    fn finish(&self, name: &str, kind: Kind, samples: &[Sample]) -> Vec<Summary> {
        let sums = report::summarize(samples);
        print!("{}", report::markdown(&sums, self.m.cores, kind));
        print!("{}", report::versus_markdown(&sums, kind));
        print!("{}", report::rss_markdown(&sums, "mimalloc", RSS_LIMIT));
        write_out(
            self.o,
            name,
            self.head,
            self.m,
            self.runners,
            self.notes,
            &sums,
            samples,
            kind,
            "",
        );
        sums
    }
}

/// `hz-bench programs`: real programs under each LD_PRELOAD allocator
/// (see [`crate::programs`]), repetitions interleaved, medians.
pub fn programs(o: &Opts) -> Vec<Summary> {
    let m = Machine::probe();
    let mut notes = Vec::new();
    let (pre, n) = preload_allocators(&o.allocators, o.build_hz);
    notes.extend(n);
    let runners: Vec<Runner> = pre.into_iter().map(Runner::Preload).collect();
    let mut progs: Vec<&str> = Vec::new();
    for p in &o.programs {
        match programs::missing(p) {
            Some(why) => notes.push(why),
            None => progs.push(p),
        }
    }
    notes.push(
        "programs run under LD_PRELOAD only; a run's time is the whole process's wall time \
         (start-up and exit included), its peak RSS what wait4 reports (children included)"
            .into(),
    );
    if progs.contains(&"redis") {
        notes.push(
            "redis: the server is preloaded, redis-benchmark is not; without LD_PRELOAD \
             (glibc) the server uses the allocator it was linked with (Debian's: jemalloc)"
                .into(),
        );
    }
    let head = format!(
        "{}- scale {}, {} repetition(s) interleaved across the allocators (their order rotated each repetition), medians\n",
        header_text("programs", &m, &runners, &notes),
        o.scale,
        o.reps
    );
    print!("{head}");
    let scratch = match programs::Scratch::new(o.scale) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("programs: cannot write the inputs: {e}");
            return Vec::new();
        }
    };
    let pb = progress((o.reps * progs.len() * runners.len()) as u64);
    let mut samples = Vec::new();
    for rep in 0..o.reps {
        for (name, run) in progs
            .iter()
            .flat_map(|p| in_turn(&runners, rep).map(move |r| (*p, r)))
        {
            pb.set_message(format!("rep {} {name} {}", rep + 1, run.name()));
            let Runner::Preload(p) = run else { continue };
            match programs::run(p, name, scratch.path()) {
                Ok(res) => samples.push(whole_run(
                    run,
                    name,
                    programs::describe(name),
                    1,
                    rep,
                    (res.ns, 0, res.maxrss_kib),
                )),
                Err(e) => pb.suspend(|| eprintln!("error: {name} {}: {e}", run.name())),
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Run::new(o, &m, &head, &runners, &notes).finish("programs", Kind::Programs, &samples)
}

/// The JSON header of a run: machine, options, notes, LD_PRELOAD origins.
pub(crate) fn json_header(
    name: &str,
    o: &Opts,
    m: &Machine,
    runners: &[Runner],
    notes: &[String],
) -> Vec<(String, String)> {
    let mut header: Vec<(String, String)> = [
        ("benchmark", name.to_string()),
        ("cpu", m.cpu.clone()),
        ("cores", m.cores.to_string()),
        ("kernel", m.kernel.clone()),
        ("date", m.date.clone()),
        ("rustc", m.rustc.clone()),
        ("mimalloc_crate", m.mimalloc_crate.clone()),
        ("glibc", m.glibc.clone()),
        ("options", format!("{o:?}")),
        ("notes", notes.join("; ")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for r in runners {
        if let Runner::Preload(p) = r {
            header.push((format!("preload_{}", p.name), p.origin.clone()));
        }
    }
    header
}

#[allow(clippy::too_many_arguments)]
fn write_out(
    o: &Opts,
    name: &str,
    head: &str,
    m: &Machine,
    runners: &[Runner],
    notes: &[String],
    sums: &[Summary],
    samples: &[Sample],
    kind: Kind,
    extra_md: &str,
) {
    let Some(dir) = &o.out else { return };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return;
    }
    let header = json_header(name, o, m, runners, notes);
    let md = format!(
        "{head}{}{}{}{extra_md}",
        report::markdown(sums, m.cores, kind),
        report::versus_markdown(sums, kind),
        report::rss_markdown(sums, "mimalloc", RSS_LIMIT)
    );
    let files = [
        (format!("{name}.csv"), report::csv(sums)),
        (format!("{name}.json"), report::json(&header, sums, samples)),
        (format!("{name}.md"), md),
    ];
    for (f, text) in files {
        if let Err(e) = std::fs::write(dir.join(&f), text) {
            eprintln!("cannot write {}: {e}", dir.join(&f).display());
        }
    }
    let svg = dir.join(format!("{name}.svg"));
    let title = format!(
        "hz-bench {name} — {} ({} cores), {}",
        m.cpu, m.cores, m.date
    );
    match crate::chart::draw(&svg, sums, &title) {
        Ok(()) => println!(
            "\nwrote {0}/{name}.csv, {0}/{name}.json, {0}/{name}.md, {0}/{name}.svg",
            dir.display()
        ),
        Err(e) => eprintln!("chart {}: {e}", svg.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each repetition runs every runner once, and over as many
    /// repetitions as runners each runner takes each place once: the
    /// first, after another cell's runs, included.
    #[test]
    fn each_runner_runs_first_in_turn() {
        let rs = ["hz", "mimalloc", "system", "jemalloc"];
        let mut firsts = Vec::new();
        for rep in 0..8 {
            let order: Vec<&str> = in_turn(&rs, rep).copied().collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let mut all = rs.to_vec();
            all.sort_unstable();
            assert_eq!(sorted, all, "repetition {rep}: {order:?}");
            firsts.push(order[0]);
        }
        assert_eq!(firsts[..4], rs);
        assert_eq!(firsts[4..], rs);
        assert_eq!(in_turn::<&str>(&[], 3).count(), 0);
    }

    #[test]
    fn hardened_builds_are_opt_in() {
        let o = Opts::parse(&[]).unwrap();
        let secure = crate::allocs::SECURE;
        assert_eq!(o.allocators.iter().any(|a| a == "hz-secure"), secure);
        assert_eq!(o.allocators.iter().any(|a| a == "mimalloc-secure"), secure);
        let args: Vec<String> = ["--allocators", "hz,hz-secure,mimalloc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Opts::parse(&args).unwrap();
        assert_eq!(o.allocators, ["hz", "hz-secure", "mimalloc"]);
    }
}
