//! Vectorizable f32 row primitives (exp, softmax, sums) with run-time ISA
//! dispatch: the portable bodies are written with independent lanes so LLVM
//! vectorizes them, then compiled a second time with AVX2+FMA enabled and
//! chosen with `is_x86_feature_detected!` (the release binary targets
//! baseline x86-64, where only SSE2 is assumed).

const LANES: usize = 16;

/// `e^x` for f32 by range reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, and a
/// degree-6 Taylor polynomial for `e^r` (truncation error < 2.4e-8 relative,
/// below f32's 6e-8 unit roundoff), scaled by `2^n` through the exponent bits.
/// Inputs are clamped to [-87, 88], so results stay normal and finite;
/// `e^-87` ≈ 1.6e-38 stands in for 0.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round-to-nearest through the 1.5·2^23 "magic" add: the low mantissa
    // bits of `t` then hold n as an integer, so 2^n is built with integer
    // ops only (a float→int `as` cast saturates and would not vectorize).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    p * scale
}

#[inline(always)]
fn max_impl(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        m = m.max(v);
    }
    m
}

/// `x ← e^(x − shift)`, returning the sum of the results.
#[inline(always)]
fn exp_sub_sum_impl(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_f32(c[i] - shift);
            acc[i] += c[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - shift);
        s += *v;
    }
    s
}

/// `Σ e^(x − shift)` without modifying `x`: lane-parallel f32 sums over
/// blocks of 1024, added in f64 (so long rows such as a 150k vocabulary keep
/// f64-level accuracy in the total).
#[inline(always)]
fn sum_exp_impl(x: &[f32], shift: f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += exp_f32(c[i] - shift);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &v in chunks.remainder() {
            s += exp_f32(v - shift);
        }
        total += s as f64;
    }
    total
}

#[inline(always)]
fn log_sum_exp_impl(x: &[f32]) -> f64 {
    let m = max_impl(x);
    if m == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    m as f64 + sum_exp_impl(x, m).ln()
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 2 * LANES];
    let mut ca = a.chunks_exact(2 * LANES);
    let mut cb = b.chunks_exact(2 * LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..2 * LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn scale_impl(x: &mut [f32], a: f32) {
    for v in x.iter_mut() {
        *v *= a;
    }
}

#[inline(always)]
fn softmax_impl(x: &mut [f32]) {
    let m = max_impl(x);
    let s = exp_sub_sum_impl(x, m);
    scale_impl(x, 1.0 / s);
}

#[inline(always)]
fn silu_mul_impl(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

#[inline(always)]
fn sum_squares_impl(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
}

/// Defines a public function that runs `$impl` compiled for AVX2+FMA when the
/// CPU has them, and the portable build otherwise.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $impl:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $impl($($arg),*)
        }

        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { $avx($($arg),*) };
                }
            }
            $impl($($arg),*)
        }
    };
}

dispatch!(
    /// Softmax of a row in place (max-subtracted).
    softmax, softmax_avx2, softmax_impl, (x: &mut [f32]) -> ()
);
dispatch!(
    /// `g ← silu(g) · u` elementwise.
    silu_mul_rows, silu_mul_avx2, silu_mul_impl, (g: &mut [f32], u: &[f32]) -> ()
);
dispatch!(
    /// `Σ x²` with lane-parallel f32 accumulators.
    sum_squares, sum_squares_avx2, sum_squares_impl, (x: &[f32]) -> f32
);
dispatch!(
    /// `log Σ e^x` of a row.
    log_sum_exp, log_sum_exp_avx2, log_sum_exp_impl, (x: &[f32]) -> f64
);
dispatch!(
    /// `Σ a_i·b_i` with lane-parallel f32 accumulators.
    dot, dot_avx2, dot_impl, (a: &[f32], b: &[f32]) -> f32
);
dispatch!(
    /// `x ← x·a`.
    scale, scale_avx2, scale_impl, (x: &mut [f32], a: f32) -> ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let e = (x as f64).exp();
            let rel = ((exp_f32(x) as f64) - e).abs() / e;
            worst = worst.max(rel);
            x += 0.01237;
        }
        // A few f32 ulps (the scale and polynomial each round once).
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37 && exp_f32(f32::NEG_INFINITY) >= 0.0);
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let orig = x.clone();
        softmax(&mut x);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        let m = orig.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = orig.iter().map(|&v| ((v - m) as f64).exp()).sum();
        for (p, v) in x.iter().zip(&orig) {
            assert!((*p as f64 - ((*v - m) as f64).exp() / z).abs() < 1e-6);
        }
    }
}
