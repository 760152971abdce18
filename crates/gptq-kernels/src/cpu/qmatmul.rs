//! Matrix products straight from GPTQ-quantized weights (and from f16
//! weights), dequantizing in registers.
//!
//! # Layout ([`QMatrix`])
//!
//! A quantized `[n, k]` weight is repacked once at load:
//!
//! - **Columns** are reordered so that every group is contiguous (this is
//!   how act-order checkpoints, whose `g_idx` is not sorted, are handled:
//!   the weight columns are permuted once, and the activation is gathered
//!   into the same order once per call), and each group is padded with zero
//!   codes to a multiple of 8 columns (so odd `k` and odd group sizes need no
//!   tail code; the gathered activation is 0 in the padding). When `g_idx` is
//!   sorted and every group is a multiple of 8 wide, no gather happens.
//! - **Rows** are cut into tiles of 16 (the last one zero-padded). A tile's
//!   codes are stored as consecutive *chunks* of 16 rows × 8 columns,
//!   `16·bits` bytes each: row `j`'s 8 codes form the little-endian bit field
//!   `F_j = Σ_i q[j, i] << (bits·i)`, and byte `c` of `F_j` sits at offset
//!   `16·c + j`. For 4 bits, byte `c` of a row holds columns `2c` (low
//!   nibble) and `2c + 1` (high nibble), so one 16-byte load gives two
//!   columns of 16 rows — one zero-extension to 16 lanes, an AND and a shift
//!   away from the multiplier.
//! - **Scales** are kept as f32 `scale` and `−scale·zero`, `[tile][group][16]`,
//!   so the zero point costs nothing in the inner loop:
//!   `y[r] = Σ_g scale[g, r]·(Σ_{i∈g} x[i]·q[r, i]) + (−scale·zero)[g, r]·Σ_{i∈g} x[i]`.
//!
//! # Kernels
//!
//! - `M = 1` (decode): each task takes a band of row tiles; per group a
//!   16-lane accumulator collects `x[i]·q[r, i]` (lanes are rows, so there is
//!   no horizontal reduction), then the group's scale and zero term are
//!   applied. 4 bits has hand-written AVX-512 and AVX2+FMA bodies; 2/3/8 bits
//!   and the scalar fallback use a portable body (compiled a second time with
//!   AVX2 enabled). The ISA is chosen at run time.
//! - `M > 1` (prompts, perplexity): each task dequantizes a band of rows
//!   into a small f32 buffer (in the original column order, so the
//!   activations are used as they are) and multiplies it with the `gemm`
//!   crate, writing its own columns of the output.
//!
//! [`F16Matrix`] holds an f16 weight (the tied embedding / output layer) and
//! converts it in-kernel (F16C / AVX-512F), with the same two regimes.

use gptq_core::{Error, QLinear, Result};
use rayon::prelude::*;

/// Rows per tile.
const TILE: usize = 16;
/// Columns per chunk (groups are padded to a multiple of this).
const CHUNK: usize = 8;
/// A padded column (no source column; its code is 0 and its activation 0).
const PAD: u32 = u32::MAX;

/// An instruction-set level of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust (whatever the compile target allows).
    Scalar,
    /// AVX2 + FMA (+ F16C for f16 weights).
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every level this CPU supports, fastest last.
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        let mut v = vec![Isa::Scalar];
        if best != Isa::Scalar {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
            }
            if best == Isa::Avx512 {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    fn check(self) {
        assert!(
            Self::available().contains(&self),
            "{self:?} kernels requested on a CPU without them"
        );
    }

    /// A short name (`scalar`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// A GPTQ-quantized weight `[n, k]` in the kernel layout (module docs).
#[derive(Debug, Clone)]
pub struct QMatrix {
    n: usize,
    k: usize,
    bits: u32,
    /// Padded column count (a multiple of 8).
    kp: usize,
    /// Start of each group in padded columns, `[groups + 1]`.
    gstart: Vec<usize>,
    /// Source column of each padded column (`PAD` for padding); `None` when
    /// the padded order is the identity.
    order: Option<Vec<u32>>,
    /// Codes: tiles × chunks × `16·bits` bytes.
    data: Vec<u8>,
    /// `scale`, `[tile][group][16]`.
    scale: Vec<f32>,
    /// `−scale·zero`, `[tile][group][16]`.
    mzs: Vec<f32>,
}

impl QMatrix {
    /// Repacks a (validated) quantized layer; the bias is not included.
    pub fn from_qlinear(q: &QLinear) -> Result<Self> {
        q.validate()?;
        let (n, k, bits) = (q.out_features, q.in_features, q.bits);
        let groups = q.num_groups();
        let mut cols: Vec<Vec<u32>> = vec![Vec::new(); groups];
        for (c, &g) in q.g_idx.iter().enumerate() {
            cols[g as usize].push(c as u32);
        }
        let mut order = Vec::with_capacity(k + 8 * groups);
        let mut gstart = Vec::with_capacity(groups + 1);
        gstart.push(0);
        for list in cols {
            order.extend(list);
            while !order.len().is_multiple_of(CHUNK) {
                order.push(PAD);
            }
            gstart.push(order.len());
        }
        let kp = order.len();
        let tiles = n.div_ceil(TILE);
        let chunks = kp / CHUNK;
        let cb = TILE * bits as usize;
        let size = tiles
            .checked_mul(chunks)
            .and_then(|v| v.checked_mul(cb))
            .ok_or_else(|| Error::Quant(format!("a {n}x{k} layer is too large to repack")))?;
        let mut data = vec![0u8; size];
        for t in 0..tiles {
            for j in 0..TILE {
                let row = t * TILE + j;
                if row >= n {
                    break;
                }
                let codes = &q.codes[row * k..(row + 1) * k];
                for ci in 0..chunks {
                    let mut f = 0u64;
                    for i in 0..CHUNK {
                        let src = order[ci * CHUNK + i];
                        if src != PAD {
                            f |= (codes[src as usize] as u64) << (bits as usize * i);
                        }
                    }
                    let base = (t * chunks + ci) * cb;
                    for c in 0..bits as usize {
                        data[base + TILE * c + j] = (f >> (8 * c)) as u8;
                    }
                }
            }
        }
        let mut scale = vec![0f32; tiles * groups * TILE];
        let mut mzs = vec![0f32; tiles * groups * TILE];
        for t in 0..tiles {
            for g in 0..groups {
                for j in 0..TILE {
                    let row = t * TILE + j;
                    if row < n {
                        let s = q.scales[g * n + row];
                        let z = q.zeros[g * n + row] as f32;
                        scale[(t * groups + g) * TILE + j] = s;
                        mzs[(t * groups + g) * TILE + j] = -s * z;
                    }
                }
            }
        }
        let identity = kp == k && order.iter().enumerate().all(|(i, &c)| c as usize == i);
        Ok(Self {
            n,
            k,
            bits,
            kp,
            gstart,
            order: (!identity).then_some(order),
            data,
            scale,
            mzs,
        })
    }

    /// Output width `n`.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input width `k`.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bits per weight.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bytes a product streams: codes, scales and zero terms.
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * (self.scale.len() + self.mzs.len())
    }

    fn groups(&self) -> usize {
        self.gstart.len() - 1
    }

    fn chunks(&self) -> usize {
        self.kp / CHUNK
    }

    /// `Ŵ` as f32 `[n, k]` (`scale·q + (−scale·zero)`, the value the kernels use).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for t in 0..self.n.div_ceil(TILE) {
            let rows = (self.n - t * TILE).min(TILE);
            self.dequant_tile(
                t,
                rows,
                &mut w[t * TILE * self.k..(t * TILE + rows) * self.k],
            );
        }
        w
    }

    /// `out[m×n] = x[m×k] · Ŵᵀ` with the best kernels of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Isa::detect(), x, m, out)
    }

    /// [`Self::matmul`] with a given kernel level.
    ///
    /// # Panics
    /// When the sizes disagree or the CPU lacks `isa` (programming errors).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        isa.check();
        assert_eq!(x.len(), m * self.k, "x is not m×k");
        assert_eq!(out.len(), m * self.n, "out is not m×n");
        if m == 0 || self.n == 0 {
            return;
        }
        if m == 1 {
            self.gemv(isa, x, out);
        } else {
            blocked_matmul(self, isa, x, m, out);
        }
    }

    fn gemv(&self, isa: Isa, x: &[f32], y: &mut [f32]) {
        let gathered;
        let xp: &[f32] = match &self.order {
            None => x,
            Some(o) => {
                gathered = o
                    .iter()
                    .map(|&c| if c == PAD { 0.0 } else { x[c as usize] })
                    .collect::<Vec<f32>>();
                &gathered
            }
        };
        let xsum: Vec<f32> = self
            .gstart
            .windows(2)
            .map(|w| xp[w[0]..w[1]].iter().sum())
            .collect();
        let tiles = self.n.div_ceil(TILE);
        let per = (tiles / (8 * rayon::current_num_threads())).clamp(1, 4);
        y.par_chunks_mut(per * TILE)
            .enumerate()
            .for_each(|(b, yc)| {
                for (tt, ys) in yc.chunks_mut(TILE).enumerate() {
                    let mut acc = [0f32; TILE];
                    self.tile_gemv(isa, b * per + tt, xp, &xsum, &mut acc);
                    ys.copy_from_slice(&acc[..ys.len()]);
                }
            });
    }

    fn tile_gemv(&self, isa: Isa, t: usize, xp: &[f32], xsum: &[f32], y: &mut [f32; TILE]) {
        match (isa, self.bits) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 4) => {
                // SAFETY: `isa` was checked against the CPU in `matmul_with`.
                unsafe { x86::tile4_avx512(self, t, xp, xsum, y) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4) => {
                // SAFETY: as above.
                unsafe { x86::tile4_avx2(self, t, xp, xsum, y) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2 | Isa::Avx512, _) => {
                // SAFETY: as above (AVX-512F CPUs have AVX2 and FMA).
                unsafe { x86::tile_generic_avx2(self, t, xp, xsum, y) }
            }
            _ => tile_generic(self, t, xp, xsum, y),
        }
    }

    /// Dequantizes rows `16t .. 16t + rows` into `buf` (`[rows, k]`, the
    /// original column order).
    fn dequant_tile(&self, t: usize, rows: usize, buf: &mut [f32]) {
        match self.bits {
            2 => dequant_tile_impl::<2>(self, t, rows, buf),
            3 => dequant_tile_impl::<3>(self, t, rows, buf),
            4 => dequant_tile_impl::<4>(self, t, rows, buf),
            _ => dequant_tile_impl::<8>(self, t, rows, buf),
        }
    }
}

/// Codes of one chunk as f32, `[column][row]`.
#[inline(always)]
fn decode_chunk<const B: usize>(ch: &[u8], q: &mut [[f32; TILE]; CHUNK]) {
    let mask = (1u32 << B) - 1;
    for (i, qi) in q.iter_mut().enumerate() {
        let bit = B * i;
        let (by, sh) = (bit / 8, bit % 8);
        let lo = &ch[TILE * by..TILE * (by + 1)];
        if sh + B <= 8 {
            for j in 0..TILE {
                qi[j] = ((lo[j] as u32 >> sh) & mask) as i32 as f32;
            }
        } else {
            let hi = &ch[TILE * (by + 1)..TILE * (by + 2)];
            for j in 0..TILE {
                qi[j] = (((lo[j] as u32 | (hi[j] as u32) << 8) >> sh) & mask) as i32 as f32;
            }
        }
    }
}

#[inline(always)]
fn tile_generic_impl<const B: usize>(
    m: &QMatrix,
    t: usize,
    xp: &[f32],
    xsum: &[f32],
    y: &mut [f32; TILE],
) {
    let cb = TILE * B;
    let chunks = m.chunks();
    let gn = m.groups();
    let data = &m.data[t * chunks * cb..(t + 1) * chunks * cb];
    let sc = &m.scale[t * gn * TILE..(t + 1) * gn * TILE];
    let mz = &m.mzs[t * gn * TILE..(t + 1) * gn * TILE];
    let mut yy = [0f32; TILE];
    let mut q = [[0f32; TILE]; CHUNK];
    for g in 0..gn {
        let (a, b) = (m.gstart[g] / CHUNK, m.gstart[g + 1] / CHUNK);
        if a == b {
            continue;
        }
        let mut acc = [0f32; TILE];
        for ci in a..b {
            decode_chunk::<B>(&data[ci * cb..(ci + 1) * cb], &mut q);
            let xs = &xp[ci * CHUNK..(ci + 1) * CHUNK];
            for (qi, &xv) in q.iter().zip(xs) {
                for j in 0..TILE {
                    acc[j] += xv * qi[j];
                }
            }
        }
        let xg = xsum[g];
        let (s, z) = (&sc[g * TILE..(g + 1) * TILE], &mz[g * TILE..(g + 1) * TILE]);
        for j in 0..TILE {
            yy[j] += s[j] * acc[j] + z[j] * xg;
        }
    }
    *y = yy;
}

fn tile_generic(m: &QMatrix, t: usize, xp: &[f32], xsum: &[f32], y: &mut [f32; TILE]) {
    match m.bits {
        2 => tile_generic_impl::<2>(m, t, xp, xsum, y),
        3 => tile_generic_impl::<3>(m, t, xp, xsum, y),
        4 => tile_generic_impl::<4>(m, t, xp, xsum, y),
        _ => tile_generic_impl::<8>(m, t, xp, xsum, y),
    }
}

#[inline(always)]
fn dequant_tile_impl<const B: usize>(m: &QMatrix, t: usize, rows: usize, buf: &mut [f32]) {
    let (k, cb, chunks, gn) = (m.k, TILE * B, m.chunks(), m.groups());
    let data = &m.data[t * chunks * cb..(t + 1) * chunks * cb];
    let mut q = [[0f32; TILE]; CHUNK];
    for g in 0..gn {
        let s = &m.scale[(t * gn + g) * TILE..(t * gn + g + 1) * TILE];
        let z = &m.mzs[(t * gn + g) * TILE..(t * gn + g + 1) * TILE];
        for ci in m.gstart[g] / CHUNK..m.gstart[g + 1] / CHUNK {
            decode_chunk::<B>(&data[ci * cb..(ci + 1) * cb], &mut q);
            for (i, qi) in q.iter().enumerate() {
                let col = ci * CHUNK + i;
                let src = match &m.order {
                    None => col,
                    Some(o) if o[col] == PAD => continue,
                    Some(o) => o[col] as usize,
                };
                for j in 0..rows {
                    buf[j * k + src] = s[j] * qi[j] + z[j];
                }
            }
        }
    }
}

/// An f16 weight `[n, k]` (row-major), converted to f32 in the kernels.
#[derive(Debug, Clone)]
pub struct F16Matrix {
    n: usize,
    k: usize,
    data: Vec<u16>,
}

impl F16Matrix {
    /// Wraps f16 bit patterns, `[n, k]` row-major.
    pub fn from_bits(data: Vec<u16>, n: usize, k: usize) -> Result<Self> {
        if Some(data.len()) != n.checked_mul(k) {
            return Err(Error::Quant(format!(
                "{} f16 values for a {n}x{k} matrix",
                data.len()
            )));
        }
        Ok(Self { n, k, data })
    }

    /// Rounds an f32 matrix `[n, k]` to f16.
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::from_bits(
            w.iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect(),
            n,
            k,
        )
    }

    /// Output width `n`.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Input width `k`.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes a product streams.
    pub fn bytes(&self) -> usize {
        2 * self.data.len()
    }

    /// Row `i` as f32 into `out` (`[k]`), e.g. an embedding lookup.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        let r = &self.data[i * self.k..(i + 1) * self.k];
        for (o, &b) in out.iter_mut().zip(r) {
            *o = half::f16::from_bits(b).to_f32();
        }
    }

    /// The weight as f32 `[n, k]`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect()
    }

    /// `out[m×n] = x[m×k] · Wᵀ` with the best kernels of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Isa::detect(), x, m, out)
    }

    /// [`Self::matmul`] with a given kernel level.
    ///
    /// # Panics
    /// When the sizes disagree or the CPU lacks `isa` (programming errors).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        isa.check();
        assert_eq!(x.len(), m * self.k, "x is not m×k");
        assert_eq!(out.len(), m * self.n, "out is not m×n");
        if m == 0 || self.n == 0 {
            return;
        }
        if m > 1 {
            return blocked_matmul(self, isa, x, m, out);
        }
        const BAND: usize = 64;
        let k = self.k;
        out.par_chunks_mut(BAND)
            .zip(self.data.par_chunks(BAND * k.max(1)))
            .for_each(|(ys, w)| match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => {
                    // SAFETY: `isa` was checked against the CPU above.
                    unsafe { x86::f16_rows_avx512(w, k, x, ys) }
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => {
                    // SAFETY: as above.
                    unsafe { x86::f16_rows_avx2(w, k, x, ys) }
                }
                _ => f16_rows_scalar(w, k, x, ys),
            });
    }
}

fn f16_rows_scalar(w: &[u16], k: usize, x: &[f32], ys: &mut [f32]) {
    for (y, r) in ys.iter_mut().zip(w.chunks_exact(k.max(1))) {
        let mut acc = [0f32; 8];
        let mut rc = r.chunks_exact(8);
        let mut xc = x.chunks_exact(8);
        for (a, b) in (&mut rc).zip(&mut xc) {
            for i in 0..8 {
                acc[i] += half::f16::from_bits(a[i]).to_f32() * b[i];
            }
        }
        let tail: f32 = rc
            .remainder()
            .iter()
            .zip(xc.remainder())
            .map(|(&a, &b)| half::f16::from_bits(a).to_f32() * b)
            .sum();
        *y = acc.iter().sum::<f32>() + tail;
    }
}

/// A weight whose rows can be expanded to f32 a band at a time.
trait RowSource: Sync {
    fn n(&self) -> usize;
    fn k(&self) -> usize;
    /// Rows `r0 .. r0 + rows` (`r0` a multiple of 16) as f32 into `buf` `[rows, k]`.
    fn rows_f32(&self, isa: Isa, r0: usize, rows: usize, buf: &mut [f32]);
}

impl RowSource for QMatrix {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn rows_f32(&self, isa: Isa, r0: usize, rows: usize, buf: &mut [f32]) {
        let k = self.k;
        for (i, b) in buf[..rows * k].chunks_mut(TILE * k).enumerate() {
            let t = r0 / TILE + i;
            let r = b.len() / k.max(1);
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512 => {
                    // SAFETY: callers checked `isa` against the CPU.
                    unsafe { x86::dequant_tile_avx2(self, t, r, b) }
                }
                _ => self.dequant_tile(t, r, b),
            }
        }
    }
}

impl RowSource for F16Matrix {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn rows_f32(&self, isa: Isa, r0: usize, rows: usize, buf: &mut [f32]) {
        let src = &self.data[r0 * self.k..(r0 + rows) * self.k];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => {
                // SAFETY: callers checked `isa` against the CPU (both levels imply F16C).
                unsafe { x86::f16_to_f32_avx2(src, &mut buf[..src.len()]) }
            }
            _ => {
                for (o, &b) in buf.iter_mut().zip(src) {
                    *o = half::f16::from_bits(b).to_f32();
                }
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column bands of the output (see `blocked_matmul`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// `out[m×n] = x[m×k] · Wᵀ` for `m > 1`: each task expands a band of `W`'s
/// rows to f32 and multiplies it with `gemm` into its own output columns.
fn blocked_matmul<W: RowSource>(w: &W, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
    let (n, k) = (w.n(), w.k());
    let threads = rayon::current_num_threads();
    // Bands of ≥ 4 per thread, a multiple of 16 rows, at most 256 rows and
    // about 1 MiB of f32 (so the expanded band stays in L2).
    let cap = ((1usize << 18) / k.max(1) / TILE * TILE).clamp(TILE, 256);
    let band = (n.div_ceil(4 * threads).div_ceil(TILE) * TILE).clamp(TILE, cap);
    let ptr = OutPtr(out.as_mut_ptr());
    let bands = n.div_ceil(band);
    (0..bands).into_par_iter().for_each_init(
        || vec![0f32; band * k],
        |buf, b| {
            let r0 = b * band;
            let rows = band.min(n - r0);
            w.rows_f32(isa, r0, rows, buf);
            let p = ptr;
            // SAFETY: the destination is the column band `r0 .. r0 + rows` of
            // the `m × n` row-major `out` (in bounds: r0 + rows ≤ n), which no
            // other task writes; `x` is `m × k` and `buf` holds `rows × k`.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    p.0.add(r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    buf.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 bodies. Each is `unsafe` only because it must run on a CPU
    //! with its target features; memory accesses stay inside the slices,
    //! whose sizes follow from the [`QMatrix`] layout.
    use super::*;
    use std::arch::x86_64::*;

    /// The portable tile body compiled with AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_generic_avx2(
        m: &QMatrix,
        t: usize,
        xp: &[f32],
        xsum: &[f32],
        y: &mut [f32; TILE],
    ) {
        tile_generic(m, t, xp, xsum, y)
    }

    /// The portable dequantization compiled with AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequant_tile_avx2(m: &QMatrix, t: usize, rows: usize, buf: &mut [f32]) {
        m.dequant_tile(t, rows, buf)
    }

    /// f16 → f32 with F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_to_f32_avx2(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        unsafe {
            while i + 8 <= n {
                let v = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(v));
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = half::f16::from_bits(src[j]).to_f32();
        }
    }

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// `ys[r] = w[r]·x` for the f16 rows of `w` (`[ys.len(), k]`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_rows_avx2(w: &[u16], k: usize, x: &[f32], ys: &mut [f32]) {
        let rows = ys.len();
        debug_assert!(w.len() >= rows * k && x.len() >= k);
        let k8 = k / 8 * 8;
        let mut r = 0;
        unsafe {
            let wp = w.as_ptr();
            macro_rules! ld {
                ($row:expr, $c:expr) => {
                    _mm256_cvtph_ps(_mm_loadu_si128(wp.add($row * k + $c) as *const __m128i))
                };
            }
            while r + 4 <= rows {
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                let mut c = 0;
                while c < k8 {
                    let xv = _mm256_loadu_ps(x.as_ptr().add(c));
                    a0 = _mm256_fmadd_ps(ld!(r, c), xv, a0);
                    a1 = _mm256_fmadd_ps(ld!(r + 1, c), xv, a1);
                    a2 = _mm256_fmadd_ps(ld!(r + 2, c), xv, a2);
                    a3 = _mm256_fmadd_ps(ld!(r + 3, c), xv, a3);
                    c += 8;
                }
                for (o, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                    let mut s = hsum256(a);
                    for cc in k8..k {
                        s += half::f16::from_bits(w[(r + o) * k + cc]).to_f32() * x[cc];
                    }
                    ys[r + o] = s;
                }
                r += 4;
            }
            while r < rows {
                let mut a = _mm256_setzero_ps();
                let mut c = 0;
                while c < k8 {
                    a = _mm256_fmadd_ps(ld!(r, c), _mm256_loadu_ps(x.as_ptr().add(c)), a);
                    c += 8;
                }
                let mut s = hsum256(a);
                for cc in k8..k {
                    s += half::f16::from_bits(w[r * k + cc]).to_f32() * x[cc];
                }
                ys[r] = s;
                r += 1;
            }
        }
    }

    /// `ys[r] = w[r]·x` for the f16 rows of `w` (`[ys.len(), k]`).
    #[allow(clippy::incompatible_msrv)] // AVX-512 intrinsics: stable since 1.89; built with 1.95
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f16_rows_avx512(w: &[u16], k: usize, x: &[f32], ys: &mut [f32]) {
        let rows = ys.len();
        debug_assert!(w.len() >= rows * k && x.len() >= k);
        let k16 = k / 16 * 16;
        let mut r = 0;
        unsafe {
            let wp = w.as_ptr();
            macro_rules! ld {
                ($row:expr, $c:expr) => {
                    _mm512_cvtph_ps(_mm256_loadu_si256(wp.add($row * k + $c) as *const __m256i))
                };
            }
            while r < rows {
                let nr = (rows - r).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                let mut c = 0;
                while c < k16 {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(c));
                    if nr == 4 {
                        acc[0] = _mm512_fmadd_ps(ld!(r, c), xv, acc[0]);
                        acc[1] = _mm512_fmadd_ps(ld!(r + 1, c), xv, acc[1]);
                        acc[2] = _mm512_fmadd_ps(ld!(r + 2, c), xv, acc[2]);
                        acc[3] = _mm512_fmadd_ps(ld!(r + 3, c), xv, acc[3]);
                    } else {
                        for (o, a) in acc.iter_mut().enumerate().take(nr) {
                            *a = _mm512_fmadd_ps(ld!(r + o, c), xv, *a);
                        }
                    }
                    c += 16;
                }
                for (o, a) in acc.iter().enumerate().take(nr) {
                    let mut s = _mm512_reduce_add_ps(*a);
                    for cc in k16..k {
                        s += half::f16::from_bits(w[(r + o) * k + cc]).to_f32() * x[cc];
                    }
                    ys[r + o] = s;
                }
                r += nr;
            }
        }
    }

    /// 4-bit tile GEMV, AVX2 + FMA: two 8-row halves, eight accumulators.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // g indexes gstart[g], gstart[g + 1] and xsum[g]
    pub(super) unsafe fn tile4_avx2(
        m: &QMatrix,
        t: usize,
        xp: &[f32],
        xsum: &[f32],
        y: &mut [f32; TILE],
    ) {
        let chunks = m.chunks();
        let gn = m.groups();
        let data = &m.data[t * chunks * 64..(t + 1) * chunks * 64];
        let sc = &m.scale[t * gn * TILE..(t + 1) * gn * TILE];
        let mz = &m.mzs[t * gn * TILE..(t + 1) * gn * TILE];
        debug_assert!(xp.len() >= m.kp && xsum.len() >= gn);
        unsafe {
            let mask = _mm256_set1_epi32(0xF);
            let (mut y0, mut y1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for g in 0..gn {
                let (a, b) = (m.gstart[g] / CHUNK, m.gstart[g + 1] / CHUNK);
                if a == b {
                    continue;
                }
                let z = _mm256_setzero_ps();
                let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                let (mut a4, mut a5, mut a6, mut a7) = (z, z, z, z);
                for ci in a..b {
                    let p = data.as_ptr().add(ci * 64);
                    let xq = xp.as_ptr().add(ci * CHUNK);
                    macro_rules! sub {
                        ($c:expr, $l0:ident, $h0:ident, $l1:ident, $h1:ident) => {{
                            let x0 = _mm256_broadcast_ss(&*xq.add(2 * $c));
                            let x1 = _mm256_broadcast_ss(&*xq.add(2 * $c + 1));
                            let v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                p.add(16 * $c) as *const __m128i
                            ));
                            let v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                p.add(16 * $c + 8) as *const __m128i
                            ));
                            $l0 = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)),
                                x0,
                                $l0,
                            );
                            $h0 = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)),
                                x1,
                                $h0,
                            );
                            $l1 = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_and_si256(v1, mask)),
                                x0,
                                $l1,
                            );
                            $h1 = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)),
                                x1,
                                $h1,
                            );
                        }};
                    }
                    sub!(0, a0, a1, a2, a3);
                    sub!(1, a4, a5, a6, a7);
                    sub!(2, a0, a1, a2, a3);
                    sub!(3, a4, a5, a6, a7);
                }
                let r0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a4, a5));
                let r1 = _mm256_add_ps(_mm256_add_ps(a2, a3), _mm256_add_ps(a6, a7));
                let xs = _mm256_set1_ps(xsum[g]);
                let s = sc.as_ptr().add(g * TILE);
                let zz = mz.as_ptr().add(g * TILE);
                y0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(s),
                    r0,
                    _mm256_fmadd_ps(_mm256_loadu_ps(zz), xs, y0),
                );
                y1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(s.add(8)),
                    r1,
                    _mm256_fmadd_ps(_mm256_loadu_ps(zz.add(8)), xs, y1),
                );
            }
            _mm256_storeu_ps(y.as_mut_ptr(), y0);
            _mm256_storeu_ps(y.as_mut_ptr().add(8), y1);
        }
    }

    /// 4-bit tile GEMV, AVX-512F: one 16-row vector, eight accumulators.
    #[allow(clippy::incompatible_msrv)] // AVX-512 intrinsics: stable since 1.89; built with 1.95
    #[allow(clippy::needless_range_loop)] // g indexes gstart[g], gstart[g + 1] and xsum[g]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile4_avx512(
        m: &QMatrix,
        t: usize,
        xp: &[f32],
        xsum: &[f32],
        y: &mut [f32; TILE],
    ) {
        let chunks = m.chunks();
        let gn = m.groups();
        let data = &m.data[t * chunks * 64..(t + 1) * chunks * 64];
        let sc = &m.scale[t * gn * TILE..(t + 1) * gn * TILE];
        let mz = &m.mzs[t * gn * TILE..(t + 1) * gn * TILE];
        debug_assert!(xp.len() >= m.kp && xsum.len() >= gn);
        unsafe {
            let mask = _mm512_set1_epi32(0xF);
            let mut yv = _mm512_setzero_ps();
            for g in 0..gn {
                let (a, b) = (m.gstart[g] / CHUNK, m.gstart[g + 1] / CHUNK);
                if a == b {
                    continue;
                }
                let mut acc = [_mm512_setzero_ps(); 8];
                for ci in a..b {
                    let p = data.as_ptr().add(ci * 64);
                    let xq = xp.as_ptr().add(ci * CHUNK);
                    for c in 0..4 {
                        let v =
                            _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16 * c) as *const __m128i));
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, mask));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
                        acc[2 * c] =
                            _mm512_fmadd_ps(lo, _mm512_set1_ps(*xq.add(2 * c)), acc[2 * c]);
                        acc[2 * c + 1] =
                            _mm512_fmadd_ps(hi, _mm512_set1_ps(*xq.add(2 * c + 1)), acc[2 * c + 1]);
                    }
                }
                let r = _mm512_add_ps(
                    _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])),
                    _mm512_add_ps(_mm512_add_ps(acc[4], acc[5]), _mm512_add_ps(acc[6], acc[7])),
                );
                let xs = _mm512_set1_ps(xsum[g]);
                yv = _mm512_fmadd_ps(
                    _mm512_loadu_ps(sc.as_ptr().add(g * TILE)),
                    r,
                    _mm512_fmadd_ps(_mm512_loadu_ps(mz.as_ptr().add(g * TILE)), xs, yv),
                );
            }
            _mm512_storeu_ps(y.as_mut_ptr(), yv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// A random quantized layer (codes, scales, zeros, optionally shuffled
    /// `g_idx` as act-order produces).
    fn layer(n: usize, k: usize, bits: u32, gs: Option<usize>, act: bool, seed: u64) -> QLinear {
        let mut r = rng(seed);
        let maxq = (1u64 << bits) - 1;
        let mut g_idx = gptq_core::pack::default_g_idx(k, gs);
        if act {
            for i in (1..k).rev() {
                g_idx.swap(i, (r() % (i as u64 + 1)) as usize);
            }
        }
        let groups = gptq_core::pack::num_groups(k, gs);
        QLinear {
            out_features: n,
            in_features: k,
            bits,
            group_size: gs,
            codes: (0..n * k).map(|_| (r() % (maxq + 1)) as u8).collect(),
            scales: (0..groups * n)
                .map(|_| (r() % 1000) as f32 / 1000.0 * 0.02 + 0.001)
                .collect(),
            zeros: (0..groups * n).map(|_| (r() % (maxq + 1)) as u8).collect(),
            g_idx,
            bias: None,
        }
    }

    /// Reference: `QLinear::dequantize`, then an f64-accumulated product;
    /// also `Σ|x|·s·(q + z)`, the magnitude of the kernels' intermediate
    /// terms (they compute `s·Σx·q` and `s·z·Σx` separately).
    fn reference(q: &QLinear, x: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
        let w = q.dequantize();
        let (n, k) = (q.out_features, q.in_features);
        let mut out = vec![0f32; m * n];
        let mut mag = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut a) = (0f64, 0f64);
                for l in 0..k {
                    let xv = x[i * k + l] as f64;
                    s += xv * w.data()[j * k + l] as f64;
                    let g = q.g_idx[l] as usize * n + j;
                    a += xv.abs()
                        * q.scales[g] as f64
                        * (q.codes[j * k + l] as f64 + q.zeros[g] as f64);
                }
                out[i * n + j] = s as f32;
                mag[i * n + j] = a as f32;
            }
        }
        (out, mag)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Every kernel level this CPU has, every bit width, group size and
        /// act-order, against the dequantized reference.
        #[test]
        fn matches_dequantized_reference(
            n in 1usize..70,
            kq in 1usize..40,
            bits_i in 0usize..4,
            gs_i in 0usize..4,
            act in any::<bool>(),
            m in 1usize..10,
            seed in any::<u64>(),
        ) {
            let bits = [2u32, 3, 4, 8][bits_i];
            let gs = [None, Some(32), Some(64), Some(128)][gs_i];
            // k: odd values where the format allows (qweight packs `k·bits`
            // into 32-bit words, so k must be a multiple of 32/gcd(bits, 32):
            // 16 for 2 bits, 32 for 3, 8 for 4, 4 for 8).
            let unit = match bits { 2 => 16, 3 => 32, 4 => 8, _ => 4 };
            let k = kq * unit;
            let q = layer(n, k, bits, gs, act, seed);
            let qm = QMatrix::from_qlinear(&q).unwrap();
            let mut r = rng(seed ^ 0x5555);
            let x: Vec<f32> = (0..m * k).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let (want, mag) = reference(&q, &x, m);
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; m * n];
                qm.matmul_with(isa, &x, m, &mut got);
                for (idx, ((g, w), a)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    // The kernels sum in another order (per group, then
                    // scaled), split each weight as s·q + (−s·z) instead of
                    // s·(q − z), and the M > 1 path dequantizes to f32 first.
                    // Every term is rounded a bounded number of times
                    // relative to Σ|x|·s·(q + z) (`a`), and f32 sums of ≤ k
                    // terms add ≤ k·2⁻²⁴ relative (the classic γ_k bound), so
                    // (k + 16)·2⁻²³·a is a worst-case bound — a wrong code or
                    // scale moves y by ≥ s·|x| and exceeds it by orders.
                    let bound = (k as f32 + 16.0) * f32::EPSILON * a + 1e-7;
                    prop_assert!((g - w).abs() <= bound,
                        "{isa:?} bits {bits} gs {gs:?} act {act} m {m} n {n} k {k} at {idx}: {g} vs {w} (bound {bound})");
                }
            }
        }

        /// f16 weights: every level against f32 math on the f16 values.
        #[test]
        fn f16_matches_reference(n in 1usize..80, k in 1usize..100, m in 1usize..6, seed in any::<u64>()) {
            let mut r = rng(seed);
            let w: Vec<f32> = (0..n * k).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let fm = F16Matrix::from_f32(&w, n, k).unwrap();
            let wf = fm.to_f32();
            let x: Vec<f32> = (0..m * k).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; m * n];
                fm.matmul_with(isa, &x, m, &mut got);
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut a) = (0f64, 0f64);
                        for l in 0..k {
                            let p = x[i * k + l] as f64 * wf[j * k + l] as f64;
                            s += p;
                            a += p.abs();
                        }
                        // f32 accumulation of k exact products (f16·f32 products
                        // are rounded once): ≤ k·2⁻²⁴·Σ|x·w|, 2e-6·(k/16+1) covers it.
                        let bound = 2e-6 * (k as f64 / 16.0 + 1.0) * (a + 1e-6);
                        prop_assert!((got[i * n + j] as f64 - s).abs() <= bound, "{isa:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_matches_qlinear_and_bytes_are_packed_size() {
        for bits in [2u32, 3, 4, 8] {
            let q = layer(37, 96, bits, Some(32), true, bits as u64);
            let qm = QMatrix::from_qlinear(&q).unwrap();
            let a = qm.dequantize();
            let b = q.dequantize();
            for (x, y) in a.iter().zip(b.data()) {
                // s·q + (−s·z) vs s·(q − z): three roundings vs one, each
                // ≤ 2⁻²⁴·s·2^bits (s ≤ 0.021 in `layer`).
                let bound = 2.0 * f32::EPSILON * 0.021 * (1 << bits) as f32;
                assert!((x - y).abs() <= bound, "{x} {y}");
            }
            // 48 rows (3 tiles) × 96 columns of codes + 2 f32 per (row, group).
            assert_eq!(qm.bytes(), 48 * 96 * bits as usize / 8 + 8 * 48 * 3);
        }
    }

    #[test]
    fn rejects_invalid_layers() {
        let mut q = layer(4, 32, 4, None, false, 1);
        q.codes.pop();
        assert!(QMatrix::from_qlinear(&q).is_err());
        assert!(F16Matrix::from_bits(vec![0; 5], 2, 3).is_err());
    }
}
