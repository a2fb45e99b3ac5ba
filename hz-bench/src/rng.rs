//! The benchmark's random numbers: xorshift64*, seeded per thread.
//!
//! The C program (`c/bench_matrix.c`) implements the same generator and the
//! same reductions, so both modes draw the same sequence of slots and sizes.

/// xorshift64* (Vigna): three shifts and a multiply per number.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for thread `id` of a run seeded with `seed` (never zero state).
    pub fn for_thread(seed: u64, id: usize) -> Self {
        let mut s = seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if s == 0 {
            s = 0x2545_F491_4F6C_DD1D;
        }
        XorShift(s)
    }

    /// The next 64 random bits.
    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number uniform in `0..n` (Lemire's multiply-shift, no division).
    #[inline(always)]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = XorShift::for_thread(42, 0);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }

    #[test]
    fn threads_get_different_streams() {
        let a = XorShift::for_thread(1, 0).next_u64();
        let b = XorShift::for_thread(1, 1).next_u64();
        assert_ne!(a, b);
    }
}
