//! The asymmetric/symmetric min-max quantization grid of GPTQ (Frantar et
//! al. 2022, arXiv 2210.17323, §2 "Quantization grid" and the reference
//! implementation's `Quantizer.find_params`), with the optional MSE shrink
//! search of the reference (`--mse`).
//!
//! This file owns the per-row grid parameters (scale `s`, zero point `z`),
//! the quantizer `q(x) = s·(clamp(⌊x/s⌉ + z, 0, maxq) − z)` and the rounding
//! convention every other part of the crate uses.
//!
//! # Numerics
//!
//! * Rounding is round-half-to-even (IEEE `roundTiesToEven`), as
//!   `torch.round` does; see [`round_ties_even`].
//! * The quantizer evaluates `x / s` with a true division (not `x·(1/s)`),
//!   then `s·(code − z)`, each step rounded once in f32, in the reference's
//!   order, so the dequantized value equals `s·(code − z)` bit for bit as
//!   [`gptq_core::QLinear::dequantize`] computes it.
//! * The MSE search error `Σ |q(x) − x|^norm` is evaluated with a vectorizable
//!   `exp(norm·ln|d|)` whose relative error is below `4·10⁻⁷ + 10⁻⁷·|y|`,
//!   `y = norm·ln|d|` (under 3·10⁻⁶ for `10⁻⁸ ≤ |d| ≤ 10⁴` at norm 2.4; see
//!   [`pow_abs`]); per-lane sums are f32 over blocks of 1024 values, added
//!   in f64. Candidates are compared with a
//!   strict `<`, so the first (least shrunk) of equal candidates wins and the
//!   unshrunk grid (`p = 1`, always tried first) is kept unless a shrink is
//!   strictly better under the same error function.
//! * Rows with no value (all zeros, or an empty slice) get the reference's
//!   `[−1, 1]` range. A row whose scale would not be a normal positive f32
//!   (a range below ~10⁻³⁸·maxq, or one overflowing f32) is treated the
//!   same way instead of producing NaN (a departure from the reference that
//!   only affects such degenerate rows).

use gptq_kernels::cpu::Mat;

/// Parameters of the reference's MSE grid search: shrink the min-max range
/// by `p = 1 − i/grid` for `i` in `0..⌊max_shrink·grid⌋` and keep, per row,
/// the `p` minimizing `Σ |q(x) − x|^norm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MseSearch {
    /// Exponent of the error (the reference's `norm`, 2.4).
    pub norm: f32,
    /// Number of shrink steps per unit (the reference's `grid`, 100).
    pub grid: u32,
    /// Largest shrink fraction (the reference's `maxshrink`, 0.8).
    pub max_shrink: f64,
}

impl Default for MseSearch {
    fn default() -> Self {
        Self {
            norm: 2.4,
            grid: 100,
            max_shrink: 0.8,
        }
    }
}

impl MseSearch {
    /// Number of candidates tried: `int(max_shrink · grid)` as in Python.
    pub fn steps(&self) -> usize {
        (self.max_shrink * self.grid as f64).max(0.0) as usize
    }
}

/// Grid parameters of one output row: scale `s > 0` and zero point `z`
/// (an integer in `0..=maxq`, held as f32 as the reference does).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowGrid {
    /// Step `s` between representable values.
    pub scale: f32,
    /// Integer zero point `z`: the code that represents 0.
    pub zero: f32,
}

/// A uniform `bits`-bit grid per output row, symmetric or asymmetric, with
/// an optional MSE shrink search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantGrid {
    /// Bits per code (1..=8); codes lie in `0..=maxq`, `maxq = 2^bits − 1`.
    pub bits: u32,
    /// Symmetric grid: `z = (maxq + 1)/2` and a range symmetric about 0.
    pub sym: bool,
    /// MSE shrink search; `None` is plain min-max.
    pub mse: Option<MseSearch>,
}

/// `v` rounded to the nearest integer, ties to even (`torch.round`).
///
/// Adding and subtracting `2^23` rounds `|v| < 2^23` in the FPU's default
/// round-to-nearest-even mode; larger magnitudes are already integers. The
/// sign is restored afterwards so `−0.3` gives `−0.0` like `torch.round`.
/// Branch-free, so loops using it vectorize (SSE2 has no `roundps`).
#[inline(always)]
pub fn round_ties_even(v: f32) -> f32 {
    const TWO23: f32 = 8_388_608.0;
    let a = v.abs();
    let r = if a < TWO23 { (a + TWO23) - TWO23 } else { a };
    r.copysign(v)
}

/// The integer code of `x`: `clamp(⌊x/s⌉ + z, 0, maxq)` (as f32).
#[inline(always)]
pub fn quantize_code(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    (round_ties_even(x / scale) + zero).max(0.0).min(maxq)
}

/// The grid value nearest to `x`: `s·(clamp(⌊x/s⌉ + z, 0, maxq) − z)`.
#[inline(always)]
pub fn quantize(x: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    scale * (quantize_code(x, scale, zero, maxq) - zero)
}

/// Natural logarithm of a positive normal f32: `x = m·2^e` with
/// `m ∈ [√½, √2)`, `ln m = 2·atanh(t)`, `t = (m−1)/(m+1)`, `|t| ≤ 0.172`,
/// by its odd series to `t⁹` (truncation < 3·10⁻¹⁰); `e·ln 2` is split in a
/// high and a low part so large exponents keep full precision.
#[inline(always)]
fn ln_pos(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let s =
        2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0)))));
    let ef = e as f32;
    ef * LN2_HI + (ef * LN2_LO + s)
}

/// `|d|^norm` for the MSE search: `exp(norm·ln|d|)` with a series logarithm and the
/// kernels' `exp_f32`; exactly 0 for `d = 0`. Relative error below
/// `4·10⁻⁷ + 10⁻⁷·|y|` with `y = norm·ln|d|` (the f32 rounding of `y`
/// dominates) for results between 10⁻³⁶ and 10³⁷ (the exponent is clamped to
/// [−87, 88], so results saturate there instead of flushing to 0 or ∞;
/// subnormal `|d|` give ≈10⁻³⁸ instead of 0).
#[inline(always)]
pub fn pow_abs(d: f32, norm: f32) -> f32 {
    let a = d.abs();
    let r = gptq_kernels::cpu::simd::exp_f32(norm * ln_pos(a));
    if a == 0.0 {
        0.0
    } else {
        r
    }
}

#[inline(always)]
fn norm_error_impl(x: &[f32], scale: f32, zero: f32, maxq: f32, norm: f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] += pow_abs(quantize(c[l], scale, zero, maxq) - c[l], norm);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &v in chunks.remainder() {
            s += pow_abs(quantize(v, scale, zero, maxq) - v, norm);
        }
        total += s as f64;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norm_error_avx2(x: &[f32], scale: f32, zero: f32, maxq: f32, norm: f32) -> f64 {
    norm_error_impl(x, scale, zero, maxq, norm)
}

/// `Σ |q(x) − x|^norm` over a row for the grid `(scale, zero)`: lane-parallel
/// f32 sums over blocks of 1024 values, added in f64.
pub fn norm_error(x: &[f32], scale: f32, zero: f32, maxq: f32, norm: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { norm_error_avx2(x, scale, zero, maxq, norm) };
        }
    }
    norm_error_impl(x, scale, zero, maxq, norm)
}

impl QuantGrid {
    /// A min-max grid without MSE search.
    pub fn new(bits: u32, sym: bool) -> Self {
        Self {
            bits,
            sym,
            mse: None,
        }
    }

    /// The same grid with the MSE search `m`.
    pub fn with_mse(self, m: MseSearch) -> Self {
        Self {
            mse: Some(m),
            ..self
        }
    }

    /// Largest code, `2^bits − 1`, as f32.
    pub fn maxq(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// Grid parameters from a clamped range `xmin ≤ 0 ≤ xmax` (not both 0).
    #[inline]
    fn range_params(&self, xmin: f32, xmax: f32) -> RowGrid {
        let maxq = self.maxq();
        let scale = (xmax - xmin) / maxq;
        let zero = if self.sym {
            (maxq + 1.0) / 2.0
        } else {
            round_ties_even(-xmin / scale)
        };
        RowGrid { scale, zero }
    }

    /// Grid parameters of one row of values `x` (the reference's
    /// `find_params` for a single row):
    ///
    /// 1. `xmin = min(min x, 0)`, `xmax = max(max x, 0)`;
    /// 2. symmetric: `xmax = max(|xmin|, xmax)` and, where `xmin < 0`,
    ///    `xmin = −xmax` (a row with no negative value keeps `xmin = 0`,
    ///    as in the reference);
    /// 3. `xmin = xmax = 0` becomes `[−1, 1]`;
    /// 4. `s = (xmax − xmin)/maxq`, `z = (maxq+1)/2` (symmetric) or
    ///    `⌊−xmin/s⌉` (asymmetric);
    /// 5. with MSE search, the best shrunk range per [`MseSearch`].
    pub fn row_params(&self, x: &[f32]) -> RowGrid {
        let (mut xmin, mut xmax) = x
            .iter()
            .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if self.sym {
            xmax = xmax.max(xmin.abs());
            if xmin < 0.0 {
                xmin = -xmax;
            }
        }
        if xmin == 0.0 && xmax == 0.0 {
            xmin = -1.0;
            xmax = 1.0;
        }
        let mut base = self.range_params(xmin, xmax);
        if !(base.scale.is_normal() && base.scale > 0.0) {
            // The range underflowed or overflowed (see the module docs).
            xmin = -1.0;
            xmax = 1.0;
            base = self.range_params(xmin, xmax);
        }
        match self.mse {
            None => base,
            Some(m) => self.search(x, xmin, xmax, base, m),
        }
    }

    /// The reference's MSE loop for one row.
    fn search(&self, x: &[f32], xmin: f32, xmax: f32, base: RowGrid, m: MseSearch) -> RowGrid {
        let maxq = self.maxq();
        let mut best = f64::INFINITY;
        let mut out = base;
        for i in 0..m.steps() {
            let p = (1.0 - i as f64 / m.grid as f64) as f32;
            let (xmin1, xmax1) = (p * xmin, p * xmax);
            let scale = (xmax1 - xmin1) / maxq;
            if !(scale.is_normal() && scale > 0.0) {
                continue;
            }
            let zero = if self.sym {
                base.zero
            } else {
                round_ties_even(-xmin1 / scale)
            };
            let err = norm_error(x, scale, zero, maxq, m.norm);
            if err < best {
                best = err;
                out = RowGrid { scale, zero };
            }
        }
        out
    }

    /// Grid parameters of every row of the strided view `x` (`[rows, cols]`,
    /// one output row per row). Each row is gathered into a contiguous
    /// buffer first, so any layout works.
    pub fn params(&self, x: Mat<'_>) -> Vec<RowGrid> {
        let mut buf = vec![0.0f32; x.cols];
        (0..x.rows)
            .map(|r| {
                for (c, b) in buf.iter_mut().enumerate() {
                    *b = x.data[r * x.row_stride + c * x.col_stride];
                }
                self.row_params(&buf)
            })
            .collect()
    }

    /// `q(x)` under `p`.
    #[inline]
    pub fn quantize(&self, x: f32, p: RowGrid) -> f32 {
        quantize(x, p.scale, p.zero, self.maxq())
    }

    /// The integer code of `x` under `p`.
    #[inline]
    pub fn code(&self, x: f32, p: RowGrid) -> u8 {
        quantize_code(x, p.scale, p.zero, self.maxq()) as u8
    }

    /// `Σ |q(x) − x|^norm` of a row under `p` (the MSE search's objective).
    pub fn row_error(&self, x: &[f32], p: RowGrid, norm: f32) -> f64 {
        norm_error(x, p.scale, p.zero, self.maxq(), norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_ties_to_even_like_torch() {
        for v in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999997,
            3.4999998,
            4_194_304.5,
            8_388_607.5,
            8_388_609.0,
            1e20,
            -1e20,
            0.0,
            -0.0,
            7.0,
            -7.25,
            123.75,
        ] {
            let r = round_ties_even(v);
            assert_eq!(r.to_bits(), v.round_ties_even().to_bits(), "{v}");
        }
        assert_eq!(round_ties_even(-0.3).to_bits(), (-0.0f32).to_bits());
        assert!(round_ties_even(f32::NAN).is_nan());
        let mut x = -300.0f32;
        while x < 300.0 {
            assert_eq!(round_ties_even(x), x.round_ties_even(), "{x}");
            x += 0.03125;
        }
    }

    #[test]
    fn asymmetric_hand_example() {
        // 2 bits: maxq 3. Row [-1, 0.5, 2]: range [-1, 2], s = 1, z = ⌊1⌉ = 1.
        let g = QuantGrid::new(2, false);
        let p = g.row_params(&[-1.0, 0.5, 2.0]);
        assert_eq!(
            p,
            RowGrid {
                scale: 1.0,
                zero: 1.0
            }
        );
        // 0.5/1 = 0.5 → ties to even → 0, code 1 → value 0.
        assert_eq!(g.code(0.5, p), 1);
        assert_eq!(g.quantize(0.5, p), 0.0);
        assert_eq!(g.quantize(1.5, p), 2.0); // 1.5 → 2
        assert_eq!(g.quantize(2.5, p), 2.0); // code 1+2=3 → 2; 2.5 → 2 (tie to even)
        assert_eq!(g.quantize(9.0, p), 2.0); // clamped to maxq
        assert_eq!(g.quantize(-5.0, p), -1.0); // clamped to 0
    }

    #[test]
    fn symmetric_hand_example() {
        // 4 bits: maxq 15, z = 8. Row [-3, 1]: xmax = 3, xmin = -3, s = 6/15.
        let g = QuantGrid::new(4, true);
        let p = g.row_params(&[-3.0, 1.0]);
        assert_eq!(p.zero, 8.0);
        assert_eq!(p.scale, 6.0f32 / 15.0);
        assert_eq!(g.code(0.0, p), 8);
        assert_eq!(g.code(-3.0, p), 0); // -7.5 → -8 (even) + 8 = 0
        assert_eq!(g.code(3.0, p), 15); // 7.5 → 8 + 8 = 16 → clamp 15
                                        // Positive-only row under sym keeps xmin = 0 (the reference's quirk):
                                        // range [0, 4], s = 4/15, z = 8, so values above s·7 clip.
        let p = g.row_params(&[1.0, 4.0]);
        assert_eq!(
            p,
            RowGrid {
                scale: 4.0 / 15.0,
                zero: 8.0
            }
        );
        assert_eq!(g.quantize(4.0, p), p.scale * 7.0);
    }

    #[test]
    fn zero_and_negative_only_rows() {
        for sym in [false, true] {
            let g = QuantGrid::new(3, sym);
            let p = g.row_params(&[0.0; 5]);
            assert_eq!(p.scale, 2.0 / 7.0);
            assert_eq!(
                p.zero,
                if sym {
                    4.0
                } else {
                    round_ties_even(1.0 / (2.0 / 7.0))
                }
            );
            assert_eq!(g.quantize(0.0, p), 0.0);
            assert_eq!(g.row_params(&[]), p);
        }
        // Degenerate ranges fall back to [-1, 1] instead of a NaN grid.
        for row in [[1e-44f32, 0.0], [f32::MAX, -f32::MAX]] {
            for sym in [false, true] {
                let g = QuantGrid::new(4, sym);
                let p = g.row_params(&row);
                assert_eq!(p, g.row_params(&[0.0]));
                assert!(row.iter().all(|&v| g.quantize(v, p).is_finite()));
            }
        }
        // Negative-only, asymmetric: range [-2, 0], s = 2/3, z = ⌊3⌉ = 3 = maxq.
        let g = QuantGrid::new(2, false);
        let p = g.row_params(&[-2.0, -1.0]);
        assert_eq!(
            p,
            RowGrid {
                scale: 2.0 / 3.0,
                zero: 3.0
            }
        );
        assert_eq!(g.quantize(0.0, p), 0.0);
        assert_eq!(g.quantize(-2.0, p), -2.0);
        // Negative-only, symmetric: xmax = 2, xmin = -2, s = 4/3, z = 2.
        let g = QuantGrid::new(2, true);
        let p = g.row_params(&[-2.0, -1.0]);
        assert_eq!(
            p,
            RowGrid {
                scale: 4.0 / 3.0,
                zero: 2.0
            }
        );
    }

    #[test]
    fn codes_stay_in_range_and_dequantize_consistently() {
        for bits in [2u32, 3, 4, 8] {
            for sym in [false, true] {
                let g = QuantGrid::new(bits, sym);
                let x: Vec<f32> = (0..97)
                    .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.013)
                    .collect();
                let p = g.row_params(&x);
                for &v in &x {
                    let c = g.code(v, p);
                    assert!(c as f32 <= g.maxq());
                    assert_eq!(g.quantize(v, p), p.scale * (c as f32 - p.zero));
                }
            }
        }
    }

    #[test]
    fn pow_abs_is_accurate() {
        let mut worst = 0.0f64;
        let mut d = 1e-12f32;
        while d < 1e12 {
            for norm in [2.0f32, 2.4, 3.0] {
                let e = (d as f64).powf(norm as f64);
                if e > 1e-36 && e < 1e37 {
                    // The exponent y = norm·ln d is an f32: its rounding
                    // (|y|·2⁻²⁴) bounds the relative error of e^y.
                    let y = (norm as f64 * (d as f64).ln()).abs();
                    let rel = (pow_abs(d, norm) as f64 - e).abs() / e;
                    worst = worst.max(rel / (4e-7 + 1e-7 * y));
                }
                assert_eq!(pow_abs(-d, norm), pow_abs(d, norm));
            }
            d *= 1.0137;
        }
        assert!(worst <= 1.0, "worst relative error {worst} of the bound");
        assert_eq!(pow_abs(0.0, 2.4), 0.0);
    }

    #[test]
    fn mse_search_never_worse_than_min_max() {
        let m = MseSearch::default();
        assert_eq!(m.steps(), 80);
        for bits in [2u32, 3, 4, 8] {
            for sym in [false, true] {
                let plain = QuantGrid::new(bits, sym);
                let mse = plain.with_mse(m);
                for seed in 0..20u32 {
                    // Heavy-tailed rows: a few outliers make shrinking pay.
                    let x: Vec<f32> = (0..128u32)
                        .map(|i| {
                            let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) >> 8;
                            let u = (h % 10007) as f32 / 10007.0 - 0.5;
                            if h % 53 == 0 {
                                u * 20.0
                            } else {
                                u
                            }
                        })
                        .collect();
                    let p0 = plain.row_params(&x);
                    let p1 = mse.row_params(&x);
                    let e0 = plain.row_error(&x, p0, m.norm);
                    let e1 = plain.row_error(&x, p1, m.norm);
                    assert!(e1 <= e0, "bits {bits} sym {sym} seed {seed}: {e1} > {e0}");
                    if sym {
                        assert_eq!(p1.zero, p0.zero);
                    }
                }
            }
        }
    }

    #[test]
    fn params_of_a_strided_view_match_rows() {
        let g = QuantGrid::new(4, false);
        let w: Vec<f32> = (0..24).map(|i| (i as f32 * 0.7).sin()).collect();
        let rows = g.params(Mat::row_major(&w, 4, 6));
        let t = gptq_core::Tensor::new(vec![4, 6], w.clone())
            .unwrap()
            .transpose2()
            .unwrap();
        let cols = g.params(Mat::row_major(t.data(), 6, 4).t());
        assert_eq!(rows, cols);
        for (r, p) in rows.iter().enumerate() {
            assert_eq!(*p, g.row_params(&w[r * 6..(r + 1) * 6]));
        }
    }
}
