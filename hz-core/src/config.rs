//! Settings, read once from the environment with `libc::getenv` (which does
//! not allocate) the first time hz needs them.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HZ_PURGE_DELAY_MS` | 10 | how long free pages stay resident before `madvise(DONTNEED)` (the dense zone's at least 100 ms, E129); 0 purges at once |
//! | `HZ_PURGE_MAX_DIRTY_MB` | 32 | dirty (free, still resident) memory above this is purged at once, oldest first; stretched while blocks of 2 MiB and more in use are below their peak of the last 1–2 s (by that difference plus a quarter of them); also bounds, apart, what exited threads' heaps keep for their adopters (E101), and twice it the big blocks kept for any thread (E104) |
//! | `HZ_PURGE_MAX_DIRTY_LARGE_MB` | 64 | the same for the pages of the huge-page zone (blocks `realloc` grew to 2 MiB and more), counted apart |
//! | `HZ_SHOW_STATS` | 0 | 1: print the statistics table to stderr at exit |
//! | `HZ_VERBOSE` | 0 | 1: print warnings (arena fallbacks, foreign frees) to stderr |
//! | `HZ_ARENA_GB` | 64 | size of the first address-space reservation, in GiB |
//! | `HZ_ARENA_MB` | — | the same in MiB (at least 16); wins over `HZ_ARENA_GB` |
//! | `HZ_SECURE_FILL` | 0 | secure builds: 1 fills freed blocks with 0xdf and checks their first word when they are handed out again |
//! | `HZ_THP` | 1 | transparent huge pages (`MADV_HUGEPAGE`): 0 none; 1 blocks of 2 MiB or more that `realloc` grows a large block into (arenas of their own), the spans of small blocks of a thread that builds densely (the dense zone, E125), and the large blocks of a thread that wrote its last two fresh ones densely (E128, E132); 2 also every span |

use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub struct Config {
    pub purge_delay_ms: AtomicU64,
    pub max_dirty_bytes: AtomicU64,
    pub max_dirty_large_bytes: AtomicU64,
    pub show_stats: AtomicU32,
    pub verbose: AtomicU32,
    pub arena_bytes: AtomicU64,
    pub secure_fill: AtomicU32,
    pub thp: AtomicU32,
}

#[cfg(not(loom))]
pub static CONFIG: Config = Config {
    purge_delay_ms: AtomicU64::new(10),
    max_dirty_bytes: AtomicU64::new(32 << 20),
    max_dirty_large_bytes: AtomicU64::new(64 << 20),
    show_stats: AtomicU32::new(0),
    verbose: AtomicU32::new(0),
    arena_bytes: AtomicU64::new(64 << 30),
    secure_fill: AtomicU32::new(0),
    thp: AtomicU32::new(1),
};

/// Parses a decimal number from a NUL-terminated C string.
fn parse(p: *const libc::c_char) -> Option<u64> {
    if p.is_null() {
        return None;
    }
    // c_char is i8 on x86_64 and u8 on aarch64: read bytes.
    let p = p.cast::<u8>();
    let mut v: u64 = 0;
    let mut i = 0;
    loop {
        // SAFETY: getenv returns a NUL-terminated string; we stop at NUL.
        let c = unsafe { *p.add(i) };
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() {
            return if i == 0 { None } else { Some(v) };
        }
        v = v.saturating_mul(10).saturating_add((c - b'0') as u64);
        i += 1;
    }
    if i == 0 {
        None
    } else {
        Some(v)
    }
}

fn env(name: &[u8]) -> Option<u64> {
    // SAFETY: `name` is a NUL-terminated literal; getenv does not allocate.
    parse(unsafe { libc::getenv(name.as_ptr() as *const libc::c_char) })
}

/// Reads the environment. Called once, from the first slow path.
#[cfg(not(loom))]
pub fn load() {
    let c = &CONFIG;
    if let Some(v) = env(b"HZ_PURGE_DELAY_MS\0") {
        c.purge_delay_ms.store(v, Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_PURGE_MAX_DIRTY_MB\0") {
        c.max_dirty_bytes
            .store(v.saturating_mul(1 << 20), Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_PURGE_MAX_DIRTY_LARGE_MB\0") {
        c.max_dirty_large_bytes
            .store(v.saturating_mul(1 << 20), Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_SHOW_STATS\0") {
        c.show_stats.store(v as u32, Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_VERBOSE\0") {
        c.verbose.store(v as u32, Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_ARENA_GB\0") {
        if (1..=1024).contains(&v) {
            c.arena_bytes.store(v << 30, Ordering::Relaxed);
        }
    }
    if let Some(v) = env(b"HZ_ARENA_MB\0") {
        if (16..=1 << 20).contains(&v) {
            c.arena_bytes.store(v << 20, Ordering::Relaxed);
        }
    }
    if let Some(v) = env(b"HZ_THP\0") {
        c.thp.store(v as u32, Ordering::Relaxed);
    }
    if let Some(v) = env(b"HZ_SECURE_FILL\0") {
        c.secure_fill.store(v as u32, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
pub fn verbose() -> bool {
    CONFIG.verbose.load(Ordering::Relaxed) != 0
}

#[cfg(test)]
mod tests {
    use super::parse;
    #[test]
    fn parses_decimal_prefix() {
        assert_eq!(parse(c"250".as_ptr()), Some(250));
        assert_eq!(parse(c"7ms".as_ptr()), Some(7));
        assert_eq!(parse(c"".as_ptr()), None);
        assert_eq!(parse(c"x1".as_ptr()), None);
        assert_eq!(parse(core::ptr::null()), None);
    }
}
