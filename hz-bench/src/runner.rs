//! Runs one measurement in a child process, so that peak RSS is per cell:
//! in-process cells re-execute hz-bench (`__cell`), LD_PRELOAD cells run the
//! C program with the allocator injected. Both print one `HZB_RESULT` line.

use crate::allocs::{InProc, Preload};
use crate::matrix::{parse_result_line, RingConfig, RingResult};
use std::path::PathBuf;
use std::process::Command;

/// The C programs built by build.rs.
pub const C_MATRIX: &str = env!("HZB_C_BENCH_MATRIX");
pub const C_WORKLOADS: &str = env!("HZB_C_BENCH_WORKLOADS");
/// The C++ workload program (`c/bench_cxx.cc`: cxx-collections).
pub const C_CXX: &str = env!("HZB_C_BENCH_CXX");

/// Who runs a measurement.
#[derive(Clone, Debug)]
pub enum Runner {
    /// An allocator linked into this hz-bench (it re-executes itself).
    InProc(InProc),
    /// An allocator linked into another hz-bench binary, e.g. one built with
    /// the `secure` feature: `exe __cell NAME ...`. `name` is that binary's
    /// own name for it (it refuses names it does not have).
    Exe {
        name: String,
        exe: PathBuf,
        /// What the header says it is.
        what: String,
    },
    Preload(Preload),
}

impl Runner {
    pub fn name(&self) -> &str {
        match self {
            Runner::InProc(a) => a.name(),
            Runner::Exe { name, .. } => name,
            Runner::Preload(p) => p.name,
        }
    }
    pub fn mode(&self) -> &'static str {
        match self {
            Runner::InProc(_) | Runner::Exe { .. } => "in-process",
            Runner::Preload(_) => "LD_PRELOAD",
        }
    }

    /// `EXE SUBCOMMAND NAME`: an in-process runner's child (Err for LD_PRELOAD).
    fn self_command(&self, sub: &str) -> Result<Command, String> {
        let (exe, name) = match self {
            Runner::InProc(a) => (
                std::env::current_exe().map_err(|e| e.to_string())?,
                a.name(),
            ),
            Runner::Exe { name, exe, .. } => (exe.clone(), name.as_str()),
            Runner::Preload(p) => return Err(format!("{} is not in-process", p.name)),
        };
        let mut c = Command::new(exe);
        c.arg(sub).arg(name);
        Ok(c)
    }
}

/// The argument list both `__cell` and the C program take, in order.
pub fn cell_args(c: &RingConfig) -> Vec<String> {
    [
        c.threads as u64,
        c.remote_pct as u64,
        c.min as u64,
        c.max as u64,
        c.iters_per_thread,
    ]
    .into_iter()
    .chain([c.ws as u64, c.ring_cap as u64, c.seed])
    .map(|v| v.to_string())
    .collect()
}

/// Parses [`cell_args`] back.
pub fn parse_cell_args(a: &[String]) -> Option<RingConfig> {
    let v: Vec<u64> = a.iter().map(|s| s.parse().ok()).collect::<Option<_>>()?;
    if v.len() != 8 {
        return None;
    }
    Some(RingConfig {
        threads: v[0] as usize,
        remote_pct: v[1] as u32,
        min: v[2] as usize,
        max: v[3] as usize,
        iters_per_thread: v[4],
        ws: v[5] as usize,
        ring_cap: v[6] as usize,
        seed: v[7],
        pin: crate::machine::pin_requested(),
    })
}

fn run_child(mut cmd: Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd:?} failed ({}): {}", out.status, err.trim()));
    }
    Ok(stdout)
}

/// `cmd` with `HZB_PIN=1` in its environment when `pin`, and without it
/// (whatever the parent has) otherwise: the child's threads pin themselves.
fn pin_env(mut cmd: Command, pin: bool) -> Command {
    if pin {
        cmd.env(crate::machine::PIN_ENV, "1");
    } else {
        cmd.env_remove(crate::machine::PIN_ENV);
    }
    cmd
}

/// Runs one matrix cell; returns the result and the child's peak RSS (KiB).
pub fn run_cell(r: &Runner, cfg: &RingConfig) -> Result<(RingResult, u64), String> {
    let cmd = match r {
        Runner::Preload(p) => {
            let mut c = Command::new(C_MATRIX);
            c.args(cell_args(cfg));
            preload_env(&mut c, p);
            c
        }
        _ => {
            let mut c = r.self_command("__cell")?;
            c.args(cell_args(cfg));
            c
        }
    };
    let out = run_child(pin_env(cmd, cfg.pin))?;
    parse_result_line(&out).ok_or_else(|| format!("no HZB_RESULT line in: {out}"))
}

/// Sets LD_PRELOAD for `p` (and clears it for glibc).
pub fn preload_env(c: &mut Command, p: &Preload) {
    match &p.lib {
        Some(lib) => c.env("LD_PRELOAD", lib),
        None => c.env_remove("LD_PRELOAD"),
    };
}

/// Result of one workload run: wall time, operations (if counted), peak RSS.
#[derive(Clone, Copy, Debug)]
pub struct WorkResult {
    pub ns: u64,
    pub ops: u64,
    pub maxrss_kib: u64,
}

/// The line a workload child prints.
pub fn work_line(w: &WorkResult) -> String {
    format!(
        "HZB_WORK ns={} ops={} maxrss_kib={}",
        w.ns, w.ops, w.maxrss_kib
    )
}

/// Parses [`work_line`].
pub fn parse_work_line(text: &str) -> Option<WorkResult> {
    let line = text.lines().find(|l| l.starts_with("HZB_WORK "))?;
    let get = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
    };
    Some(WorkResult {
        ns: get("ns")?,
        ops: get("ops")?,
        maxrss_kib: get("maxrss_kib")?,
    })
}

/// Runs one workload (`name`, `threads`, `scale`) in a child.
pub fn run_workload(
    r: &Runner,
    name: &str,
    threads: usize,
    scale: f64,
    pin: bool,
) -> Result<WorkResult, String> {
    let cmd = match r {
        Runner::Preload(p) => {
            let prog = if crate::workloads::is_cxx(name) {
                C_CXX
            } else {
                C_WORKLOADS
            };
            let mut c = Command::new(prog);
            c.arg(name).arg(threads.to_string()).arg(scale.to_string());
            preload_env(&mut c, p);
            c
        }
        _ => {
            let mut c = r.self_command("__workload")?;
            c.arg(name).arg(threads.to_string()).arg(scale.to_string());
            // Workloads built on std collections use the global allocator.
            c.env(crate::allocs::GLOBAL_ENV, r.name());
            c
        }
    };
    let out = run_child(pin_env(cmd, pin))?;
    parse_work_line(&out).ok_or_else(|| format!("no HZB_WORK line in: {out}"))
}
