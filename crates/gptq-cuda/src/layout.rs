//! Host-side repacking of a [`QLinear`] into the layouts the kernels read
//! (pure Rust: built and tested without a GPU).
//!
//! * [`W4Layout`]: the fused int4 kernel's layout (see `kernels/w4.cu`): codes
//!   in mma A-fragment order, 512 bytes per (16-row tile, 64-column chunk),
//!   one 16-byte load per lane; scales and zero points as f16 pairs per
//!   (row tile, group, lane row). Act-order layers are reordered once here:
//!   input columns sorted by group, so each group is a contiguous run and the
//!   kernel finds the group of column `k` as `k >> gshift`; the activations
//!   are gathered into that order at run time.
//! * [`AnyLayout`]: any bit width, for dequantize-then-GEMM: codes as
//!   little-endian bit streams of 32 values per word group, scales f16, true
//!   zero points as bytes, `g_idx` as is.

use crate::kernels::Dtype;
use gptq_core::QLinear;
use half::{bf16, f16};

/// Columns of one chunk of the fused int4 layout.
pub const CHUNK_K: usize = 64;
/// Rows of one tile of the fused int4 layout.
pub const TILE_N: usize = 16;
/// Row tiles are padded to a multiple of this (the most tiles a block covers).
pub const TILE_PAD: usize = 8;

/// The fused int4 kernel's layout of one layer.
#[derive(Debug, Clone)]
pub struct W4Layout {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Row tiles (16 rows each), padded to a multiple of [`TILE_PAD`].
    pub nt: usize,
    /// 64-column chunks.
    pub kc: usize,
    /// Groups in `sz` (covers the padded columns).
    pub groups: usize,
    /// Group of (permuted) column `k` is `k >> gshift`.
    pub gshift: u32,
    /// Codes, `[nt][kc][32][4]` words.
    pub qw: Vec<u32>,
    /// Scales and zero points, `[nt][groups][8][2]` words.
    pub sz: Vec<u32>,
    /// Column `p` of the repacked weight is input column `perm[p]`
    /// (`None`: identity).
    pub perm: Option<Vec<i32>>,
}

/// Whether every 64-column chunk of a layout with this `gshift` lies in one
/// group (groups of ≥ 64 columns, or per-channel), as the kernels that
/// scale in f32 per chunk (`W4Variant::fs`) need.
pub fn whole_chunk_groups(gshift: u32) -> bool {
    1u64.checked_shl(gshift).is_none_or(|g| g >= CHUNK_K as u64)
}

/// Why a layer cannot use the fused int4 kernel (it then takes the
/// dequantize-then-GEMM path).
pub fn w4_ineligible(q: &QLinear) -> Option<String> {
    if q.bits != 4 {
        return Some(format!("{} bits", q.bits));
    }
    if q.in_features == 0 || !q.in_features.is_multiple_of(16) {
        return Some(format!(
            "in_features = {} is not a multiple of 16",
            q.in_features
        ));
    }
    if q.in_features > i32::MAX as usize / 2 || q.out_features > i32::MAX as usize / 2 {
        return Some("layer too large for 32-bit indices".into());
    }
    if let Some(g) = q.group_size.filter(|g| !(*g >= 16 && g.is_power_of_two())) {
        return Some(format!("group size {g} is not a power of two >= 16"));
    }
    // The kernel forms 16·(q − z)·s in f16 for half of the rows (see
    // `w4.cu`), which must stay finite: 16·15·s ≤ 65504.
    if let Some(s) = q.scales.iter().find(|s| s.is_nan() || s.abs() > MAX_SCALE) {
        return Some(format!(
            "a scale of {s} (the fused kernel takes |s| <= {MAX_SCALE})"
        ));
    }
    None
}

/// The largest scale magnitude the fused int4 kernel takes.
pub const MAX_SCALE: f32 = 256.0;

/// Stable sort of the input columns by group, if that makes every group the
/// contiguous run `[g·gs, (g+1)·gs)`; `Ok(None)` when `g_idx` is already in
/// that order, `Err` when the groups are not of that shape.
fn act_order_perm(q: &QLinear, gshift: u32) -> Result<Option<Vec<i32>>, String> {
    let k = q.in_features;
    let in_order = |p: usize, g: u32| (p >> gshift) as u64 == g as u64;
    if q.g_idx.iter().enumerate().all(|(p, &g)| in_order(p, g)) {
        return Ok(None);
    }
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by_key(|&c| q.g_idx[c]);
    if perm
        .iter()
        .enumerate()
        .any(|(p, &c)| !in_order(p, q.g_idx[c]))
    {
        return Err("g_idx groups are not runs of group_size columns".into());
    }
    Ok(Some(perm.into_iter().map(|c| c as i32).collect()))
}

fn f16_bits(x: f32) -> u32 {
    f16::from_f32(x).to_bits() as u32
}

impl W4Layout {
    /// Repacks `q` (validated by the caller); `Err` says why it cannot.
    pub fn new(q: &QLinear) -> Result<Self, String> {
        if let Some(why) = w4_ineligible(q) {
            return Err(why);
        }
        q.validate().map_err(|e| e.to_string())?;
        let (n, k) = (q.out_features, q.in_features);
        let gshift = match q.group_size {
            Some(g) => g.trailing_zeros(),
            None => 31,
        };
        let perm = act_order_perm(q, gshift)?;
        let nt = n.div_ceil(TILE_N).div_ceil(TILE_PAD) * TILE_PAD;
        let kc = k.div_ceil(CHUNK_K);
        let kpad = kc * CHUNK_K;
        let groups = if gshift >= 31 {
            1
        } else {
            kpad.div_ceil(1 << gshift)
        };
        let src_groups = q.num_groups();
        let col = |p: usize| -> usize {
            match &perm {
                Some(pm) => pm[p] as usize,
                None => p,
            }
        };
        // Codes in the permuted column order, 0 in the padding.
        let code = |row: usize, p: usize| -> u32 {
            if row < n && p < k {
                q.codes[row * k + col(p)] as u32
            } else {
                0
            }
        };
        let mut qw = vec![0u32; nt * kc * 128];
        for t16 in 0..nt {
            for c in 0..kc {
                let base = (t16 * kc + c) * 128;
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    let (r0, r1) = (t16 * TILE_N + g, t16 * TILE_N + g + 8);
                    for j in 0..4 {
                        let k0 = c * CHUNK_K + 16 * t + 4 * j;
                        // nibble position -> (row, column)
                        let fields = [
                            (r0, k0),
                            (r1, k0),
                            (r0, k0 + 2),
                            (r1, k0 + 2),
                            (r0, k0 + 1),
                            (r1, k0 + 1),
                            (r0, k0 + 3),
                            (r1, k0 + 3),
                        ];
                        let mut word = 0u32;
                        for (pos, &(r, p)) in fields.iter().enumerate() {
                            word |= code(r, p) << (4 * pos);
                        }
                        qw[base + lane * 4 + j] = word;
                    }
                }
            }
        }
        let mut sz = vec![0u32; nt * groups * 16];
        for t16 in 0..nt {
            for grp in 0..groups {
                for g in 0..8 {
                    let mut s = [0u32; 2];
                    let mut z = [0u32; 2];
                    for (h, row) in [t16 * TILE_N + g, t16 * TILE_N + g + 8]
                        .into_iter()
                        .enumerate()
                    {
                        let (sv, zv) = if row < n && grp < src_groups {
                            (q.scales[grp * n + row], q.zeros[grp * n + row] as f32)
                        } else {
                            (0.0, 0.0)
                        };
                        s[h] = f16_bits(sv);
                        z[h] = f16_bits(1024.0 + zv);
                    }
                    let at = ((t16 * groups + grp) * 8 + g) * 2;
                    sz[at] = s[0] | (s[1] << 16);
                    sz[at + 1] = z[0] | (z[1] << 16);
                }
            }
        }
        Ok(W4Layout {
            n,
            k,
            nt,
            kc,
            groups,
            gshift,
            qw,
            sz,
            perm,
        })
    }

    /// Bytes the kernel streams per call (codes + scales/zeros).
    pub fn bytes(&self) -> usize {
        4 * (self.qw.len() + self.sz.len())
    }

    /// CPU model of the kernel, for tests: `y[m][n] = Σ_k x[m][k]·Ŵ[n][k]`
    /// with `Ŵ` decoded from this layout exactly as the kernel does
    /// (f16 dequantization, f64 sums). The fused variants that scale in f32
    /// per chunk (`W4Variant::fs`) round less: their products with q − z
    /// are exact and the scale is applied in f32.
    pub fn emulate(&self, x: &[f32], m: usize) -> Vec<f64> {
        self.emulate_as(x, m, Dtype::F16)
    }

    /// [`W4Layout::emulate`] for activations of type `dt`: with bf16 the
    /// kernels' bf16 dequantization, from the same words — the code as
    /// `0x4300 | q` (128 + q), the zero point's bf16 `0x4300 | z` cut from
    /// the f16 word of 1024 + z, the difference exact, the f16 scale
    /// rounded to bf16 and the product rounded to bf16.
    pub fn emulate_as(&self, x: &[f32], m: usize, dt: Dtype) -> Vec<f64> {
        let (n, k) = (self.n, self.k);
        let xp = |row: usize, p: usize| -> f64 {
            let c = match &self.perm {
                Some(pm) => pm[p] as usize,
                None => p,
            };
            x[row * k + c] as f64
        };
        let half = |bits: u32| f16::from_bits(bits as u16).to_f32();
        let mut y = vec![0f64; m * n];
        for t16 in 0..self.nt {
            for c in 0..self.kc {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    let k_lane = c * CHUNK_K + 16 * t;
                    if k_lane >= k {
                        continue;
                    }
                    let grp = if self.gshift >= 31 {
                        0
                    } else {
                        k_lane >> self.gshift
                    };
                    let at = ((t16 * self.groups + grp) * 8 + g) * 2;
                    let (sw, zw) = (self.sz[at], self.sz[at + 1]);
                    for j in 0..4 {
                        let word = self.qw[(t16 * self.kc + c) * 128 + lane * 4 + j];
                        let k0 = k_lane + 4 * j;
                        for pos in 0..8usize {
                            let hi_row = !pos.is_multiple_of(2);
                            let dk = [0, 0, 2, 2, 1, 1, 3, 3][pos];
                            let row = t16 * TILE_N + g + if hi_row { 8 } else { 0 };
                            if row >= n {
                                continue;
                            }
                            let q4 = (word >> (4 * pos)) & 15;
                            let sh = if hi_row { 16 } else { 0 };
                            let w = match dt {
                                Dtype::F16 => {
                                    let s = half((sw >> sh) & 0xFFFF);
                                    let z = half((zw >> sh) & 0xFFFF) - 1024.0;
                                    f16::from_f32((q4 as f32 - z) * s).to_f32()
                                }
                                Dtype::Bf16 => {
                                    let bf = |bits: u32| bf16::from_bits(bits as u16).to_f32();
                                    let code = bf(0x4300 | q4);
                                    let zero = bf((((zw >> sh) & 0xFFFF) & 0x03FF) | 0x4300);
                                    let s = bf16::from_f32(half((sw >> sh) & 0xFFFF)).to_f32();
                                    bf16::from_f32((code - zero) * s).to_f32()
                                }
                            } as f64;
                            for mi in 0..m {
                                y[mi * n + row] += w * xp(mi, k0 + dk);
                            }
                        }
                    }
                }
            }
        }
        y
    }
}

/// Any bit width, for dequantize-then-GEMM.
#[derive(Debug, Clone)]
pub struct AnyLayout {
    pub n: usize,
    pub k: usize,
    pub bits: u32,
    /// 32-column blocks.
    pub kb: usize,
    /// `[kb·bits][n]` words: block `b` of output `o` is the bit stream of
    /// words `b·bits .. b·bits + bits` of column `o`.
    pub qw: Vec<u32>,
    /// `[groups][n]` f16 bits.
    pub scales: Vec<u16>,
    /// `[groups][n]` true zero points.
    pub zeros: Vec<u8>,
    /// `[kb·32]` groups (0 in the padding).
    pub g_idx: Vec<i32>,
}

impl AnyLayout {
    pub fn new(q: &QLinear) -> Result<Self, String> {
        q.validate().map_err(|e| e.to_string())?;
        let (n, k, bits) = (q.out_features, q.in_features, q.bits);
        if k > i32::MAX as usize / 2 || n > i32::MAX as usize / 2 {
            return Err("layer too large for 32-bit indices".into());
        }
        let kb = k.div_ceil(32);
        let b = bits as usize;
        // The GPTQ bit stream along K, padded to whole 32-value blocks.
        let mut qw = vec![0u32; kb * b * n];
        for o in 0..n {
            let col = (0..kb * 32).map(|c| if c < k { q.codes[o * k + c] as u32 } else { 0 });
            gptq_core::pack::pack_stream(col, bits, |w, word| qw[w * n + o] = word);
        }
        let mut g_idx: Vec<i32> = q.g_idx.iter().map(|&g| g as i32).collect();
        g_idx.resize(kb * 32, 0);
        Ok(AnyLayout {
            n,
            k,
            bits,
            kb,
            qw,
            scales: q.scales.iter().map(|&s| f16_bits(s) as u16).collect(),
            zeros: q.zeros.clone(),
            g_idx,
        })
    }

    /// CPU model of the dequantization kernel: `Ŵ[n][k]` as the f16 values it writes.
    pub fn emulate_dequant(&self) -> Vec<f32> {
        let (n, k, b) = (self.n, self.k, self.bits as usize);
        let mask = (1u64 << b) - 1;
        let mut w = vec![0f32; n * k];
        for o in 0..n {
            for blk in 0..self.kb {
                let words: Vec<u64> = (0..=b)
                    .map(|i| {
                        if i < b {
                            self.qw[(blk * b + i) * n + o] as u64
                        } else {
                            0
                        }
                    })
                    .collect();
                for v in 0..32 {
                    let c = blk * 32 + v;
                    if c >= k {
                        break;
                    }
                    let bit = v * b;
                    let win = words[bit / 32] | (words[bit / 32 + 1] << 32);
                    let q = ((win >> (bit % 32)) & mask) as f32;
                    let g = self.g_idx[c] as usize;
                    let s = f16::from_bits(self.scales[g * n + o]).to_f32();
                    let z = self.zeros[g * n + o] as f32;
                    w[o * k + c] = f16::from_f32(s * (q - z)).to_f32();
                }
            }
        }
        w
    }
}

/// A deterministic generator for random test layers and inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A random quantized layer: random codes and zero points, f16-exact scales,
/// and (with `act_order`) a shuffled `g_idx`.
pub fn random_qlinear(
    rng: &mut Rng,
    bits: u32,
    group_size: Option<usize>,
    n: usize,
    k: usize,
    act_order: bool,
) -> QLinear {
    let maxq = 1u64 << bits;
    let groups = gptq_core::pack::num_groups(k, group_size);
    let mut g_idx = gptq_core::pack::default_g_idx(k, group_size);
    if act_order {
        for i in (1..k).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            g_idx.swap(i, j);
        }
    }
    QLinear {
        out_features: n,
        in_features: k,
        bits,
        group_size,
        codes: (0..n * k).map(|_| rng.below(maxq) as u8).collect(),
        scales: (0..groups * n)
            // |Ŵ| up to about 3 at every bit width (f16 outputs stay finite).
            .map(|_| {
                f16::from_f32((rng.below(10_000) as f32 + 1.0) * 2.0e-5 * 16.0 / maxq as f32)
                    .to_f32()
            })
            .collect(),
        zeros: (0..groups * n).map(|_| rng.below(maxq) as u8).collect(),
        g_idx,
        bias: None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_chunk_groups_need_64_columns() {
        // gshift 4 and 5 (groups of 16, 32) split a 64-column chunk; 6 and
        // up, and per-channel's large shift, do not.
        for (gshift, whole) in [
            (4, false),
            (5, false),
            (6, true),
            (7, true),
            (31, true),
            (64, true),
        ] {
            assert_eq!(whole_chunk_groups(gshift), whole, "gshift {gshift}");
        }
    }

    use super::*;

    /// `(Σ_k x·Ŵ, Σ_k |x·Ŵ|)` in f64 from the f32 dequantized weight.
    fn reference(q: &QLinear, x: &[f32], m: usize) -> Vec<(f64, f64)> {
        let w = q.dequantize();
        let (n, k) = (q.out_features, q.in_features);
        let mut y = vec![(0f64, 0f64); m * n];
        for mi in 0..m {
            for o in 0..n {
                for c in 0..k {
                    let p = x[mi * k + c] as f64 * w.data()[o * k + c] as f64;
                    y[mi * n + o].0 += p;
                    y[mi * n + o].1 += p.abs();
                }
            }
        }
        y
    }

    #[test]
    fn w4_layout_matches_dequantized_reference() {
        let mut rng = Rng::new(7);
        for &(n, k) in &[(16usize, 64usize), (40, 208), (33, 128), (8, 16)] {
            for gs in [None, Some(16), Some(32), Some(64), Some(128)] {
                for act in [false, true] {
                    let q = random_qlinear(&mut rng, 4, gs, n, k, act);
                    let l = W4Layout::new(&q).unwrap();
                    assert_eq!(l.perm.is_some(), act && gs.is_some_and(|g| g < k));
                    let m = 3;
                    let x: Vec<f32> = (0..m * k).map(|_| rng.sym()).collect();
                    let got = l.emulate(&x, m);
                    let want = reference(&q, &x, m);
                    for (a, &(b, abs)) in got.iter().zip(&want) {
                        // The layout rounds each s·(q−z) to f16 (the
                        // reference keeps it in f32): one f16 rounding
                        // (2^-11 relative) per term.
                        let tol = abs * 2f64.powi(-11) + 1e-12;
                        assert!((a - b).abs() <= tol, "{n}x{k} {gs:?} {act}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// The bf16 dequantization the kernels do, modelled on the same words,
    /// against the f64 reference within the per-weight bound the GPU check
    /// uses for bf16 (`bench::tolerance`): the f16 scale rounded to bf16 and
    /// the product rounded again, (2u + u²)·|Ŵ| with u = 2^-8. The
    /// activations are bf16 values, as the kernels get them.
    #[test]
    fn w4_layout_bf16_dequantization_within_its_bound() {
        let mut rng = Rng::new(11);
        let mut worst = 0f64;
        for &(n, k) in &[(16usize, 64usize), (40, 208), (33, 128)] {
            for gs in [None, Some(32), Some(128)] {
                for act in [false, true] {
                    let q = random_qlinear(&mut rng, 4, gs, n, k, act);
                    let l = W4Layout::new(&q).unwrap();
                    let m = 2;
                    let x: Vec<f32> = (0..m * k)
                        .map(|_| bf16::from_f32(rng.sym()).to_f32())
                        .collect();
                    let got = l.emulate_as(&x, m, Dtype::Bf16);
                    let want = reference(&q, &x, m);
                    for (a, &(b, abs)) in got.iter().zip(&want) {
                        let tol = abs * (2f64.powi(-7) + 2f64.powi(-16)) + 1e-12;
                        assert!((a - b).abs() <= tol, "{n}x{k} {gs:?} {act}: {a} vs {b}");
                        worst = worst.max((a - b).abs() / tol);
                    }
                }
            }
        }
        // bf16 error of the same order as the bound (an f16 model stays
        // under 2^-11 / 2^-7 = 1/16 of it).
        assert!(worst > 0.1, "worst error/bound {worst}");
    }

    #[test]
    fn any_layout_round_trips_every_bit_width() {
        let mut rng = Rng::new(3);
        for bits in [2u32, 3, 4, 8] {
            for &(n, k) in &[(5usize, 40usize), (7, 96), (1, 33)] {
                let q = random_qlinear(&mut rng, bits, Some(32), n, k, true);
                let l = AnyLayout::new(&q).unwrap();
                let w = l.emulate_dequant();
                let want = q.dequantize();
                for (a, b) in w.iter().zip(want.data()) {
                    assert_eq!(*a, f16::from_f32(*b).to_f32(), "{bits} bits {n}x{k}");
                }
            }
        }
    }

    #[test]
    fn ineligible_layers_say_why() {
        let mut rng = Rng::new(1);
        let q = random_qlinear(&mut rng, 3, Some(32), 32, 64, false);
        assert!(W4Layout::new(&q).unwrap_err().contains("3 bits"));
        let q = random_qlinear(&mut rng, 4, Some(32), 32, 40, false);
        assert!(W4Layout::new(&q).unwrap_err().contains("multiple of 16"));
        let mut q = random_qlinear(&mut rng, 4, Some(32), 32, 64, false);
        q.g_idx[0] = 1; // group 1 now has 33 columns
        assert!(W4Layout::new(&q).unwrap_err().contains("runs"));
        for bad in [MAX_SCALE * 1.5, f32::NAN] {
            let mut q = random_qlinear(&mut rng, 4, Some(32), 32, 64, false);
            q.scales[5] = bad;
            assert!(W4Layout::new(&q).unwrap_err().contains("scale"), "{bad}");
        }
        let mut q = random_qlinear(&mut rng, 4, Some(32), 32, 64, false);
        q.scales[5] = -MAX_SCALE;
        assert!(W4Layout::new(&q).is_ok());
    }
}
