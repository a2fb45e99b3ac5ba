//! Coverage-guided fuzzing of hz's raw API and `GlobalAlloc`: the input is
//! read as a sequence of operations over the shadow model shared with the
//! differential test (`hz-core/tests/reliability/shadow.rs`), which checks
//! every block for overlap, alignment, usable size, zeroing and intact
//! contents. Some operations run on a short-lived second thread: its frees
//! of our blocks are remote frees, the blocks it allocates and hands back
//! belong to a heap that is abandoned when it exits and adopted by the next
//! such thread. Everything still live is freed at the end of each input.
//!
//! Run (stable Rust; see docs/RELIABILITY.md):
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ops -s none -- -max_len=4096`
//! (`--features secure` for the hardened build)
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../hz-core/tests/reliability/shadow.rs"]
mod shadow;

use shadow::{AllocApi, FreeApi, Model, ReallocApi};

/// Reads the input a byte at a time; zeros once it runs out.
struct Cursor<'a>(&'a [u8]);
impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> usize {
        self.byte() as usize | (self.byte() as usize) << 8
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    /// A size: small, medium, up to the largest class, or a large run (up
    /// to 8 MiB, so realloc also takes the mremap path).
    fn size(&mut self) -> usize {
        let k = self.byte();
        let v = self.u16();
        match k % 8 {
            0..=3 => v % 513,
            4 | 5 => v % 16385,
            6 => (v << 2) % 131_073,
            _ => 131_072 + (v << 7),
        }
    }
    fn align_log(&mut self) -> u32 {
        // 1 .. 2 MiB, mostly small.
        let b = self.byte() as u32;
        if b < 200 {
            b % 8
        } else {
            b % 22
        }
    }
}

fn pick(m: &Model, c: &mut Cursor) -> Option<usize> {
    if m.live.is_empty() {
        None
    } else {
        Some(c.u16() % m.live.len())
    }
}

fn run(data: &[u8]) {
    let extents = shadow::new_extents();
    let mut m = Model::new(extents.clone(), "fuzz input".into());
    let mut c = Cursor(data);
    let mut seed = 0x5eed_u64;
    let mut threads = 0;
    while !c.done() && m.ops < 2000 {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let op = c.byte() % 16;
        match op {
            0..=2 => {
                let s = c.size();
                m.alloc(AllocApi::Malloc, s, 4, seed)
            }
            3 => {
                let s = c.size();
                m.alloc(AllocApi::Calloc, s, 4, seed)
            }
            4 => {
                let (s, a) = (c.size(), c.align_log());
                m.alloc(AllocApi::MallocAligned, s, a, seed)
            }
            5 => {
                let (s, a) = (c.size(), c.align_log());
                m.alloc(AllocApi::CallocAligned, s, a, seed)
            }
            6 => {
                let (s, a) = (c.size(), c.align_log());
                let api = if c.byte() & 1 == 0 {
                    AllocApi::Global
                } else {
                    AllocApi::GlobalZeroed
                };
                m.alloc(api, s, a, seed)
            }
            7..=9 => {
                if let Some(i) = pick(&m, &mut c) {
                    let api = [FreeApi::Free, FreeApi::FreeSized, FreeApi::Dealloc]
                        [c.byte() as usize % 3];
                    m.free(i, api);
                }
            }
            10 | 11 => {
                if let Some(i) = pick(&m, &mut c) {
                    let api = [
                        ReallocApi::Realloc,
                        ReallocApi::ReallocAligned,
                        ReallocApi::Global,
                    ][c.byte() as usize % 3];
                    let (s, a) = (c.size(), c.align_log());
                    m.realloc(i, api, s, a);
                }
            }
            12 => {
                if let Some(i) = pick(&m, &mut c) {
                    m.check(i);
                }
            }
            13 if threads < 8 => {
                // Another thread: frees some of our blocks, reallocates
                // others, allocates new ones, hands the survivors back.
                threads += 1;
                let n = (c.byte() % 8) as usize;
                let mut moved = Vec::new();
                for _ in 0..n.min(m.live.len()) {
                    let i = c.u16() % m.live.len();
                    moved.push(m.take(i));
                }
                let script: Vec<u8> = (0..16).map(|_| c.byte()).collect();
                let ext = extents.clone();
                let back = std::thread::spawn(move || {
                    let mut t = Model::new(ext, "fuzz input (thread)".into());
                    for b in moved {
                        t.give(b);
                    }
                    for (k, &s) in script.iter().enumerate() {
                        match s % 4 {
                            0 if !t.live.is_empty() => {
                                let i = s as usize % t.live.len();
                                t.free(i, FreeApi::Free)
                            }
                            1 if !t.live.is_empty() => {
                                let i = s as usize % t.live.len();
                                t.realloc(i, ReallocApi::Realloc, (s as usize) << (k % 10), 4)
                            }
                            _ => t.alloc(AllocApi::Malloc, (s as usize) << (k % 8), 4, s as u64),
                        }
                    }
                    std::mem::take(&mut t.live)
                })
                .join()
                .expect("fuzz helper thread panicked");
                for b in back {
                    m.give(b);
                }
            }
            14 => {
                if c.byte() < 16 {
                    hz_core::collect();
                }
            }
            _ => {
                // Pointers hz does not manage: owns() is false, usable_size
                // 0, free and realloc ignore / refuse them.
                let local = [0u64; 4];
                let p = local.as_ptr() as *mut u8;
                assert!(!hz_core::owns(p));
                // SAFETY: hz must ignore pointers it does not manage
                // (the secure build aborts on a free or realloc of one,
                // tests/secure.rs, so only the default build is asked).
                unsafe {
                    assert_eq!(hz_core::usable_size(p), 0);
                    if !cfg!(feature = "secure") {
                        hz_core::free(p);
                        assert!(hz_core::realloc(p, 64).is_null());
                    }
                }
            }
        }
    }
    m.free_all();
    assert_eq!(extents.lock().unwrap().len(), 0);
}

fuzz_target!(|data: &[u8]| run(data));
