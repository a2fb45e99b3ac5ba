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
