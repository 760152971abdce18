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
//!   `F_j = Σ_i q[j, i] << (bits·i)` (`bits` bytes), and byte `c` of `F_j`
//!   sits at offset `byte_offset(bits, j, c) = 64·⌊c/4⌋ + min(bits, 4)·j
//!   + c mod 4`: rows are consecutive, and each row's bytes come in 32-bit
//!   words, one vector of 16 words per word index. For 4 bits a 64-byte load
//!   is one 32-bit lane per row holding its 8 codes (columns `2c` and
//!   `2c + 1` in the low and high nibble of byte `c`); for 8 bits two loads,
//!   columns 0–3 and 4–7. Shift-and-mask gives one column per lane for the
//!   f32 kernels, and the lanes are already the `4 × u8` groups the int8 dot
//!   products (`vpdpbusd`, `vpmaddubsw`) take.
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
//! - With [`Activations::Int8`] (the CLI's default) 4- and 8-bit products
//!   quantize each activation row to int8 in blocks of 32 and run integer
//!   dot products instead, for any `M` (module `qint8`: AVX-512 VNNI, AVX2);
//!   [`QMatrix::matmul_many`] runs layers that share an input in one loop.
//!
//! [`F16Matrix`] holds an f16 weight (the tied embedding / output layer) and
//! converts it in-kernel (F16C / AVX-512F), with the same two regimes.

pub use super::qint8::Activations;
use super::qint8::{self, QuantX};
use gptq_core::{Error, QLinear, Result};
use rayon::prelude::*;

/// Rows per tile.
pub(super) const TILE: usize = 16;
/// Columns per chunk (groups are padded to a multiple of this).
pub(super) const CHUNK: usize = 8;
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
    /// The level the kernels use: the best this CPU supports, or a lower
    /// one named by `GPTQ_CPU_ISA` (`scalar`, `avx2`; for comparisons).
    /// Decided once per process.
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::best();
            let asked = std::env::var("GPTQ_CPU_ISA").ok();
            match asked.as_deref().map(str::trim) {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if best != Isa::Scalar => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// The best level this CPU supports.
    fn best() -> Self {
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
        let best = Self::best();
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
                        data[base + byte_offset(bits as usize, j, c)] = (f >> (8 * c)) as u8;
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

    /// An f16 weight rounded to 8 bits, symmetrically per row and group of
    /// `group` columns (every row when `None`): `scale = max|w|/127`, zero
    /// point 128, codes in 1..=255 — for running an f16 output layer with the
    /// int8 kernels at half the bytes (llama.cpp keeps its output layers at
    /// 6–8 bits likewise). The rounding error is at most `scale/2` per weight.
    pub fn from_f16_int8(f: &F16Matrix, group: Option<usize>) -> Result<Self> {
        let (n, k) = (f.out_dim(), f.in_dim());
        let gs = group.unwrap_or(k).max(1);
        let groups = k.div_ceil(gs).max(1);
        let mut codes = vec![0u8; n * k];
        let mut scales = vec![0f32; groups * n];
        let per_row: Vec<Vec<f32>> = codes
            .par_chunks_mut(k.max(1))
            .enumerate()
            .map(|(r, c)| {
                let mut w = vec![0f32; k];
                f.row_into(r, &mut w);
                let mut s = vec![0f32; groups];
                for (g, (wc, cc)) in w.chunks(gs).zip(c.chunks_mut(gs)).enumerate() {
                    let amax = wc.iter().fold(0f32, |a, v| a.max(v.abs()));
                    s[g] = amax / 127.0;
                    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    for (q, v) in cc.iter_mut().zip(wc) {
                        *q = ((v * inv).round().clamp(-127.0, 127.0) + 128.0) as u8;
                    }
                }
                s
            })
            .collect();
        for (r, s) in per_row.iter().enumerate() {
            for (g, &v) in s.iter().enumerate() {
                scales[g * n + r] = v;
            }
        }
        let q = QLinear {
            out_features: n,
            in_features: k,
            bits: 8,
            group_size: group,
            codes,
            scales,
            zeros: vec![128; groups * n],
            g_idx: (0..k).map(|c| (c / gs) as u32).collect(),
            bias: None,
        };
        Self::from_qlinear(&q)
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

    /// Start of each group in padded columns.
    pub(super) fn gstart(&self) -> &[usize] {
        &self.gstart
    }

    /// Padded column count.
    pub(super) fn kp(&self) -> usize {
        self.kp
    }

    /// The packed codes.
    pub(super) fn data(&self) -> &[u8] {
        &self.data
    }

    /// Tile `t`'s `scale` and `−scale·zero`, `[group][16]` each.
    pub(super) fn tile_scales(&self, t: usize) -> (&[f32], &[f32]) {
        let gn = self.groups() * TILE;
        (
            &self.scale[t * gn..(t + 1) * gn],
            &self.mzs[t * gn..(t + 1) * gn],
        )
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

    /// `out[m×n] = x[m×k] · Ŵᵀ` with the best kernels of this CPU and the
    /// process-wide activation mode ([`qint8::activations`]).
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_act(Isa::detect(), qint8::activations(), x, m, out)
    }

    /// [`Self::matmul`] with a given kernel level and f32 activations.
    ///
    /// # Panics
    /// When the sizes disagree or the CPU lacks `isa` (programming errors).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_act(isa, Activations::F32, x, m, out)
    }

    /// [`Self::matmul`] with a given kernel level and activation mode. With
    /// [`Activations::Int8`] the integer kernels run when `isa` has one for
    /// this bit width (else the f32 ones).
    ///
    /// # Panics
    /// When the sizes disagree or the CPU lacks `isa` (programming errors).
    pub fn matmul_act(&self, isa: Isa, act: Activations, x: &[f32], m: usize, out: &mut [f32]) {
        isa.check();
        assert_eq!(x.len(), m * self.k, "x is not m×k");
        assert_eq!(out.len(), m * self.n, "out is not m×n");
        if m == 0 || self.n == 0 {
            return;
        }
        let int = match act {
            Activations::Int8 => qint8::int_kernel(isa, self.bits),
            Activations::F32 => None,
        };
        match (m, int) {
            (1, _) => self.gemv(isa, int, x, out),
            (_, Some(k)) => self.int_matmul(k, x, m, out),
            (_, None) => blocked_matmul(self, isa, x, m, out),
        }
    }

    /// Runs `f(t, y_t)` for every row tile, in parallel bands.
    fn for_tiles(&self, y: &mut [f32], f: impl Fn(usize, &mut [f32; TILE]) + Sync) {
        let tiles = self.n.div_ceil(TILE);
        let per = (tiles / (8 * rayon::current_num_threads())).clamp(1, 4);
        y.par_chunks_mut(per * TILE)
            .enumerate()
            .for_each(|(b, yc)| {
                for (tt, ys) in yc.chunks_mut(TILE).enumerate() {
                    let mut acc = [0f32; TILE];
                    f(b * per + tt, &mut acc);
                    ys.copy_from_slice(&acc[..ys.len()]);
                }
            });
    }

    /// `outs[i] = x · Ŵ_iᵀ` (`[m, n_i]`) for matrices that share the input
    /// `x` (`[m, k]`: a block's q/k/v or gate/up projections), with the
    /// process-wide activation mode. With int8 activations the products run
    /// in one parallel loop and each activation row is quantized once per
    /// distinct column layout; otherwise one [`Self::matmul`] each.
    ///
    /// # Panics
    /// When the sizes disagree (programming errors).
    pub fn matmul_many(mats: &[&QMatrix], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
        assert_eq!(mats.len(), outs.len(), "one output per matrix");
        let isa = Isa::detect();
        let kernels: Option<Vec<qint8::IntKernel>> = match qint8::activations() {
            Activations::Int8 => mats
                .iter()
                .map(|q| qint8::int_kernel(isa, q.bits))
                .collect(),
            Activations::F32 => None,
        };
        let Some(kernels) = kernels.filter(|_| m > 0 && mats.len() > 1) else {
            for (q, o) in mats.iter().zip(outs.iter_mut()) {
                q.matmul(x, m, o);
            }
            return;
        };
        for (q, o) in mats.iter().zip(outs.iter()) {
            assert_eq!(x.len(), m * q.k, "x is not m×k");
            assert_eq!(o.len(), m * q.n, "out is not m×n");
        }
        // Quantized rows per matrix, shared between equal column layouts.
        let mut qx: Vec<std::sync::Arc<Vec<QuantX>>> = Vec::with_capacity(mats.len());
        for (i, q) in mats.iter().enumerate() {
            let same = (0..i).find(|&j| mats[j].same_columns(q));
            qx.push(match same {
                Some(j) => qx[j].clone(),
                None => std::sync::Arc::new(
                    x.par_chunks(q.k)
                        .map(|r| QuantX::new(q, &q.gather(r)))
                        .collect(),
                ),
            });
        }
        // Work items: bands of up to 4 tiles of every matrix.
        let items: Vec<(usize, usize)> = mats
            .iter()
            .enumerate()
            .flat_map(|(i, q)| (0..q.n.div_ceil(TILE)).step_by(4).map(move |t| (i, t)))
            .collect();
        let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        items.into_par_iter().for_each_init(
            || vec![[0f32; TILE]; m],
            |acc, (i, t0)| {
                let (q, p) = (mats[i], ptrs[i]);
                for t in t0..(t0 + 4).min(q.n.div_ceil(TILE)) {
                    let rows = TILE.min(q.n - t * TILE);
                    qint8::tile_rows(kernels[i], q, t, &qx[i], acc);
                    for (r, a) in acc.iter().enumerate() {
                        // SAFETY: row r, columns 16t .. 16t + rows of matrix
                        // i's m × n output (in bounds); tile t of matrix i
                        // belongs to this item alone.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                a.as_ptr(),
                                p.0.add(r * q.n + t * TILE),
                                rows,
                            );
                        }
                    }
                }
            },
        );
    }

    /// True when `other` takes its input columns in the same padded order
    /// and groups (so an activation quantized for one serves both).
    fn same_columns(&self, other: &QMatrix) -> bool {
        (self.bits == 4) == (other.bits == 4)
            && self.k == other.k
            && self.gstart == other.gstart
            && self.order == other.order
    }

    /// `x` (`[k]`) in the padded column order.
    fn gather<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        match &self.order {
            None => x.into(),
            Some(o) => o
                .iter()
                .map(|&c| if c == PAD { 0.0 } else { x[c as usize] })
                .collect::<Vec<f32>>()
                .into(),
        }
    }

    /// `out[m×n] = x̂[m×k] · Ŵᵀ` with integer kernel `kern`: every row of
    /// `x` is quantized once, then each task takes a band of row tiles (its
    /// codes stay in L1) and runs it against every activation row.
    fn int_matmul(&self, kern: qint8::IntKernel, x: &[f32], m: usize, out: &mut [f32]) {
        let n = self.n;
        let qxs: Vec<QuantX> = x
            .par_chunks(self.k)
            .map(|r| QuantX::new(self, &self.gather(r)))
            .collect();
        let tiles = n.div_ceil(TILE);
        let ptr = OutPtr(out.as_mut_ptr());
        (0..tiles).into_par_iter().for_each_init(
            || vec![[0f32; TILE]; m],
            |acc, t| {
                let p = ptr;
                let rows = TILE.min(n - t * TILE);
                qint8::tile_rows(kern, self, t, &qxs, acc);
                for (i, a) in acc.iter().enumerate() {
                    // SAFETY: row i, columns 16t .. 16t + rows of the m × n
                    // `out` (in bounds: i < m, 16t + rows ≤ n); tile t is
                    // this task's alone.
                    unsafe {
                        std::ptr::copy_nonoverlapping(a.as_ptr(), p.0.add(i * n + t * TILE), rows);
                    }
                }
            },
        );
        debug_assert_eq!(qxs.len(), m);
    }

    fn gemv(&self, isa: Isa, int: Option<qint8::IntKernel>, x: &[f32], y: &mut [f32]) {
        let xp = self.gather(x);
        let xp: &[f32] = &xp;
        if let Some(k) = int {
            let qx = QuantX::new(self, xp);
            return self.for_tiles(y, |t, acc| qint8::tile(k, self, t, &qx, acc));
        }
        let xsum: Vec<f32> = self
            .gstart
            .windows(2)
            .map(|w| xp[w[0]..w[1]].iter().sum())
            .collect();
        self.for_tiles(y, |t, acc| self.tile_gemv(isa, t, xp, &xsum, acc));
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

/// Where byte `c` of row `j`'s code field sits in a chunk (module docs).
#[inline(always)]
pub(super) const fn byte_offset(bits: usize, j: usize, c: usize) -> usize {
    let w = if bits < 4 { bits } else { 4 };
    4 * TILE * (c / 4) + w * j + c % 4
}

/// Row `j`'s code field `F_j` in a chunk of `bits`-bit codes.
#[inline(always)]
pub(super) fn code_field(bits: usize, ch: &[u8], j: usize) -> u64 {
    let mut f = 0u64;
    for c in 0..bits {
        f |= (ch[byte_offset(bits, j, c)] as u64) << (8 * c);
    }
    f
}

/// Codes of one chunk as f32, `[column][row]`.
#[inline(always)]
fn decode_chunk<const B: usize>(ch: &[u8], q: &mut [[f32; TILE]; CHUNK]) {
    let mask = (1u64 << B) - 1;
    for j in 0..TILE {
        let f = code_field(B, ch, j);
        for (i, qi) in q.iter_mut().enumerate() {
            qi[j] = ((f >> (B * i)) & mask) as u32 as f32;
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

    /// 4-bit tile GEMV, AVX2 + FMA: two 8-row halves (one 32-bit lane per
    /// row), eight accumulators.
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
                    let v0 = _mm256_loadu_si256(p as *const __m256i);
                    let v1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
                    macro_rules! col {
                        ($i:literal, $lo:ident, $hi:ident) => {{
                            let xv = _mm256_broadcast_ss(&*xq.add($i));
                            let q0 = _mm256_and_si256(_mm256_srli_epi32::<{ 4 * $i }>(v0), mask);
                            let q1 = _mm256_and_si256(_mm256_srli_epi32::<{ 4 * $i }>(v1), mask);
                            $lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q0), xv, $lo);
                            $hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q1), xv, $hi);
                        }};
                    }
                    col!(0, a0, a1);
                    col!(1, a2, a3);
                    col!(2, a4, a5);
                    col!(3, a6, a7);
                    col!(4, a0, a1);
                    col!(5, a2, a3);
                    col!(6, a4, a5);
                    col!(7, a6, a7);
                }
                let r0 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a4, a6));
                let r1 = _mm256_add_ps(_mm256_add_ps(a1, a3), _mm256_add_ps(a5, a7));
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
                    let v = _mm512_loadu_si512(data.as_ptr().add(ci * 64) as *const __m512i);
                    let xq = xp.as_ptr().add(ci * CHUNK);
                    macro_rules! col {
                        ($i:literal) => {{
                            let q = _mm512_and_si512(_mm512_srli_epi32::<{ 4 * $i }>(v), mask);
                            acc[$i] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(q),
                                _mm512_set1_ps(*xq.add($i)),
                                acc[$i],
                            );
                        }};
                    }
                    col!(0);
                    col!(1);
                    col!(2);
                    col!(3);
                    col!(4);
                    col!(5);
                    col!(6);
                    col!(7);
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Int8 activations: the activation is quantized in blocks (each
        /// value within half a step of the input), and every integer kernel
        /// — the portable one and this CPU's — gives `x̂·Ŵᵀ` up to f32
        /// rounding. Random activations with a few outliers per row, so
        /// blocks get different scales.
        #[test]
        fn int8_kernels_compute_the_quantized_activation_product(
            n in 1usize..70,
            kq in 1usize..40,
            eight in any::<bool>(),
            gs_i in 0usize..4,
            act in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let bits = if eight { 8 } else { 4 };
            let k = kq * if eight { 4 } else { 8 };
            let gs = [None, Some(32), Some(64), Some(128)][gs_i];
            let q = layer(n, k, bits, gs, act, seed);
            let qm = QMatrix::from_qlinear(&q).unwrap();
            let mut r = rng(seed ^ 0x7777);
            let x: Vec<f32> = (0..k)
                .map(|_| {
                    let v = (r() % 2001) as f32 / 1000.0 - 1.0;
                    if r().is_multiple_of(16) { 20.0 * v } else { v }
                })
                .collect();
            let src = |p: usize| match &qm.order {
                None => Some(p),
                Some(o) => (o[p] != PAD).then_some(o[p] as usize),
            };
            let xp: Vec<f32> = (0..qm.kp).map(|p| src(p).map_or(0.0, |c| x[c])).collect();
            let qx = QuantX::new(&qm, &xp);
            let xh = qx.dequantized(&qm);
            let mut xhat = vec![0f32; k];
            for (p, &v) in xh.iter().enumerate() {
                if let Some(c) = src(p) {
                    xhat[c] = v;
                }
            }
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in x.iter().zip(&xhat) {
                // Half a step of the block (≤ the row's largest value / 254)
                // plus the f32 rounding of dx·q.
                prop_assert!((a - b).abs() <= amax / 254.0 * (1.0 + 1e-5), "{a} -> {b}");
            }
            let (want, mag) = reference(&q, &xhat, 1);
            let mut kernels = vec![qint8::IntKernel::Scalar];
            kernels.extend(Isa::available().into_iter().filter_map(|i| qint8::int_kernel(i, bits)));
            for kern in kernels {
                let mut got = vec![f32::NAN; qm.n.div_ceil(TILE) * TILE];
                for (t, y) in got.chunks_mut(TILE).enumerate() {
                    let mut acc = [0f32; TILE];
                    qint8::tile(kern, &qm, t, &qx, &mut acc);
                    y.copy_from_slice(&acc);
                }
                for (idx, ((g, w), a)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    // The integer sums are exact; what remains is f32
                    // rounding of the scaled block sums, bounded as in
                    // `matches_dequantized_reference` (plus one rounding of
                    // dx·I per block: 32 more units).
                    let bound = (k as f32 + 48.0) * f32::EPSILON * a + 1e-7;
                    prop_assert!((g - w).abs() <= bound,
                        "{kern:?} bits {bits} gs {gs:?} act {act} n {n} k {k} at {idx}: {g} vs {w} (bound {bound})");
                }
            }
            // Through the public entry, M = 1, 2 and 5 (rows x, −x, x, …;
            // the x̂ of −x is −x̂ exactly; 5 rows take the 4-row kernels
            // once plus one row): int8 where the CPU has a kernel.
            let sign = |i: usize| if i.is_multiple_of(2) { 1.0 } else { -1.0 };
            let x5: Vec<f32> = (0..5).flat_map(|i| x.iter().map(move |v| sign(i) * v)).collect();
            for isa in Isa::available() {
                let exact = qint8::int_kernel(isa, bits).is_some();
                let w = if exact { want.clone() } else { reference(&q, &x, 1).0 };
                for m in [1, 2, 5] {
                    let mut got = vec![f32::NAN; m * n];
                    qm.matmul_act(isa, Activations::Int8, &x5[..m * k], m, &mut got);
                    for (idx, g) in got.iter().enumerate() {
                        let (sign, j) = (sign(idx / n), idx % n);
                        let bound = (k as f32 + 48.0) * f32::EPSILON * mag[j] * 8.0 + 1e-6;
                        prop_assert!((g - sign * w[j]).abs() <= bound, "{isa:?} m {m}: {g} vs {}", sign * w[j]);
                    }
                }
            }
        }
    }

    #[test]
    fn f16_to_int8_rows_round_within_half_a_step() {
        let mut r = rng(3);
        let (n, k) = (37, 200);
        let w: Vec<f32> = (0..n * k)
            .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let f = F16Matrix::from_f32(&w, n, k).unwrap();
        let wf = f.to_f32();
        for group in [None, Some(64)] {
            let q = QMatrix::from_f16_int8(&f, group).unwrap();
            assert_eq!(q.bits(), 8);
            let d = q.dequantize();
            let gs = group.unwrap_or(k);
            for row in 0..n {
                for (g, cols) in (0..k).collect::<Vec<_>>().chunks(gs).enumerate() {
                    let amax = cols.iter().fold(0f32, |a, &c| a.max(wf[row * k + c].abs()));
                    for &c in cols {
                        let e = (d[row * k + c] - wf[row * k + c]).abs();
                        assert!(
                            e <= amax / 254.0 * (1.0 + 1e-5) + 1e-7,
                            "row {row} group {g}: {e}"
                        );
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
