//! Python's `random` module generator (MT19937 seeded as `random.seed(int)`),
//! with `randint` drawn as CPython draws it, so that the named calibration
//! sets pick the same documents and offsets as the GPTQ reference scripts
//! (`random.seed(seed)` then `random.randint(...)`) for the same token ids.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER: u32 = 0x8000_0000;
const LOWER: u32 = 0x7fff_ffff;

/// The Mersenne Twister state behind Python's `random.Random`.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    fn init_genrand(s: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = s;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { mt, index: N }
    }

    /// `random.seed(seed)` for a non-negative integer: the integer's 32-bit
    /// words, least significant first, fed to `init_by_array`.
    pub fn seed(seed: u64) -> Self {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let key: &[u32] = if hi != 0 { &[lo, hi] } else { &[lo] };
        let mut r = Self::init_genrand(19_650_218);
        let mt = &mut r.mt;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.mt[k] & UPPER) | (self.mt[(k + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.getrandbits(k)` for `1 <= k <= 64`.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        debug_assert!((1..=64).contains(&k));
        if k <= 32 {
            (self.next_u32() >> (32 - k)) as u64
        } else {
            let lo = self.next_u32() as u64;
            let hi = (self.next_u32() >> (64 - k)) as u64;
            lo | (hi << 32)
        }
    }

    /// `random.random()`: a double in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `random.randint(lo, hi)`: uniform in `lo..=hi` by rejection sampling
    /// on `bit_length(hi − lo + 1)` bits, as CPython's `_randbelow`.
    pub fn randint(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        let n = (hi - lo) as u64 + 1;
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return lo + r as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values printed by CPython 3 for the same calls.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::seed(0);
        assert_eq!(r.random(), 0.8444218515250481);
        assert_eq!(r.getrandbits(32), 3255389356);
        assert_eq!(r.randint(0, 356316), 220500);
        let mut r = PyRandom::seed(0);
        let v: Vec<usize> = (0..3).map(|_| r.randint(0, 356316)).collect();
        assert_eq!(v, [201979, 220500, 21225]);
        assert_eq!(r.randint(0, 2_400_000 - 2048 - 1), 1085975);
        let mut r = PyRandom::seed(42);
        assert_eq!(r.getrandbits(40), 123005401501);
        assert_eq!(r.getrandbits(64), 13679192365072849617);
        assert_eq!(r.randint(5, 9), 7);
        assert_eq!(r.randint(0, 0), 0);
        assert_eq!(PyRandom::seed((1 << 33) + 5).getrandbits(32), 3185278367);
        assert_eq!(PyRandom::seed(123456789).random(), 0.6414006161858726);
    }
}
