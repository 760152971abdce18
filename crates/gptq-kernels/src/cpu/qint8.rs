//! Int8 activations for the quantized GEMV (`M = 1`, decode).
//!
//! The activation is quantized once per call, symmetrically, in *blocks* of
//! at most 32 columns (4 chunks) inside each weight group: `x̂ = dx·q`,
//! `dx = max|x|/127`, `q = round(x/dx) ∈ [−127, 127]` — the same block size
//! llama.cpp uses for its Q8 activations. A tile's product is then
//! `y[r] = Σ_g scale[g, r]·Σ_b dx_b·I_b[r] + (−scale·zero)[g, r]·Σ_{i∈g} x̂_i`
//! with `I_b[r] = Σ_{i∈b} q_i·code[r, i]` an exact int32 sum (unsigned
//! codes × signed activations: `vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` +
//! `vpmaddwd` with AVX2), so the result equals `x̂·Ŵᵀ` up to f32 rounding
//! (tested), and the only approximation is `x → x̂` (a relative error of at
//! most 2⁻⁸ of each block's largest value).
//!
//! Kernels: 4 and 8 bits with AVX-512 VNNI or AVX2; 2/3 bits and CPUs
//! without AVX2 keep the f32 kernels ([`int_kernel`] says which).

use super::qmatmul::{code_field, Isa, QMatrix, CHUNK, TILE};
use std::sync::atomic::{AtomicU8, Ordering};

/// How the quantized kernels take their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// f32 as they are (exact products with the dequantized weights).
    F32,
    /// Quantized to int8 in blocks of 32 for integer dot products, where
    /// the CPU has such kernels for the layer's bit width.
    Int8,
}

static ACTIVATIONS: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide activation mode of [`QMatrix::matmul`] (default
/// [`Activations::F32`]).
pub fn set_activations(a: Activations) {
    ACTIVATIONS.store(a as u8, Ordering::Relaxed);
}

/// The process-wide activation mode.
pub fn activations() -> Activations {
    match ACTIVATIONS.load(Ordering::Relaxed) {
        0 => Activations::F32,
        _ => Activations::Int8,
    }
}

/// Columns per activation block (4 chunks).
const BLOCK_CHUNKS: usize = 4;

/// An integer kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntKernel {
    /// Portable (the reference of the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
    /// 4 bits, AVX2 `vpmaddubsw`.
    Avx2x4,
    /// 8 bits, AVX2 `vpmaddubsw` on the codes' nibbles.
    Avx2x8,
    /// 4 bits, AVX-512 VNNI `vpdpbusd`.
    Vnni4,
    /// 8 bits, AVX-512 VNNI `vpdpbusd`.
    Vnni8,
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The integer kernel for `bits` at level `isa`, if there is one.
pub(super) fn int_kernel(isa: Isa, bits: u32) -> Option<IntKernel> {
    match (isa, bits) {
        (Isa::Avx512, 4) if has_vnni() => Some(IntKernel::Vnni4),
        (Isa::Avx512, 8) if has_vnni() => Some(IntKernel::Vnni8),
        (Isa::Avx2 | Isa::Avx512, 4) => Some(IntKernel::Avx2x4),
        (Isa::Avx2 | Isa::Avx512, 8) => Some(IntKernel::Avx2x8),
        _ => None,
    }
}

/// True when this CPU runs `bits`-bit products with int8 activations.
pub fn int8_available(bits: u32) -> bool {
    int_kernel(Isa::detect(), bits).is_some()
}

/// Where column `i` of a chunk sits in the arranged activation: for 4 bits
/// the even columns, then the odd ones (the low and high nibbles of the
/// code bytes); for 8 bits the natural order.
#[inline(always)]
fn arranged(bits: u32, i: usize) -> usize {
    if bits == 4 {
        (i % 2) * 4 + i / 2
    } else {
        i
    }
}

/// `v` (|v| ≤ 127 up to rounding) to the nearest integer, halves away from
/// zero, clamped to ±127 — with a truncating conversion, which compiles
/// inline (`f32::round` is a libm call on baseline x86-64).
#[inline(always)]
fn round_i8(v: f32) -> i8 {
    let r = v + 0.5f32.copysign(v);
    (r as i32).clamp(-127, 127) as i8
}

/// An activation row quantized for one [`QMatrix`].
pub(super) struct QuantX {
    /// Codes, `[kp]`, arranged per chunk (see [`arranged`]).
    q: Vec<i8>,
    /// Scale of each block, in group order.
    dx: Vec<f32>,
    /// `Σ x̂` of each group.
    xsum: Vec<f32>,
}

impl QuantX {
    /// Quantizes `xp` (the activation in the matrix's padded column order).
    pub(super) fn new(m: &QMatrix, xp: &[f32]) -> Self {
        let bits = m.bits();
        let gs = m.gstart();
        let mut q = vec![0i8; xp.len()];
        let nblocks: usize = gs
            .windows(2)
            .map(|w| (w[1] - w[0]).div_ceil(BLOCK_CHUNKS * CHUNK))
            .sum();
        let mut dx = Vec::with_capacity(nblocks);
        let mut xsum = Vec::with_capacity(gs.len() - 1);
        for w in gs.windows(2) {
            let mut total = 0f32;
            for c0 in (w[0]..w[1]).step_by(BLOCK_CHUNKS * CHUNK) {
                let c1 = (c0 + BLOCK_CHUNKS * CHUNK).min(w[1]);
                let (xb, qb) = (&xp[c0..c1], &mut q[c0..c1]);
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let mut s = 0i32;
                for (o, &v) in qb.iter_mut().zip(xb) {
                    *o = round_i8(v * inv);
                    s += *o as i32;
                }
                if bits == 4 {
                    for ch in qb.chunks_exact_mut(CHUNK) {
                        let c: [i8; CHUNK] = (&*ch).try_into().expect("a chunk");
                        for (i, v) in c.into_iter().enumerate() {
                            ch[arranged(bits, i)] = v;
                        }
                    }
                }
                dx.push(d);
                total += d * s as f32;
            }
            xsum.push(total);
        }
        Self { q, dx, xsum }
    }

    /// `x̂` in the padded column order (tests).
    #[cfg(test)]
    pub(super) fn dequantized(&self, m: &QMatrix) -> Vec<f32> {
        let mut out = vec![0f32; self.q.len()];
        let mut bi = 0;
        for w in m.gstart().windows(2) {
            let (a, b) = (w[0] / CHUNK, w[1] / CHUNK);
            for c0 in (a..b).step_by(BLOCK_CHUNKS) {
                let cols = c0 * CHUNK..(c0 + BLOCK_CHUNKS).min(b) * CHUNK;
                for (col, o) in cols.clone().zip(&mut out[cols]) {
                    let v = self.q[col / CHUNK * CHUNK + arranged(m.bits(), col % CHUNK)];
                    *o = self.dx[bi] * v as f32;
                }
                bi += 1;
            }
        }
        out
    }
}

/// One 16-row tile of `y = x̂·Ŵᵀ` with integer kernel `k`.
pub(super) fn tile(k: IntKernel, m: &QMatrix, t: usize, qx: &QuantX, y: &mut [f32; TILE]) {
    match k {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `int_kernel` only returns x86 kernels the CPU has.
        IntKernel::Vnni4 => unsafe { x86::tile_vnni::<4, 1>(m, t, [qx], std::array::from_mut(y)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        IntKernel::Vnni8 => unsafe { x86::tile_vnni::<8, 1>(m, t, [qx], std::array::from_mut(y)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        IntKernel::Avx2x4 => unsafe { x86::tile4_avx2::<1>(m, t, [qx], std::array::from_mut(y)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        IntKernel::Avx2x8 => unsafe { x86::tile8_avx2(m, t, qx, y) },
        _ => tile_scalar(m, t, qx, y),
    }
}

/// Activation rows taken together by [`tile_rows`] (VNNI: 32 vector
/// registers; AVX2: 16).
const ROWS: usize = 4;
const AVX2_ROWS: usize = 2;

/// One 16-row tile for every activation row in `qx`, into `y` (`[rows][16]`).
pub(super) fn tile_rows(k: IntKernel, m: &QMatrix, t: usize, qx: &[QuantX], y: &mut [[f32; TILE]]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if k == IntKernel::Avx2x4 {
        done = qx.len() / AVX2_ROWS * AVX2_ROWS;
        for (xc, yc) in qx
            .chunks_exact(AVX2_ROWS)
            .zip(y.chunks_exact_mut(AVX2_ROWS))
        {
            let yr: &mut [[f32; TILE]; AVX2_ROWS] = yc.try_into().expect("chunks of AVX2_ROWS");
            // SAFETY: `int_kernel` only returns x86 kernels the CPU has.
            unsafe { x86::tile4_avx2::<AVX2_ROWS>(m, t, [&xc[0], &xc[1]], yr) }
        }
    }
    if matches!(k, IntKernel::Vnni4 | IntKernel::Vnni8) {
        done = qx.len() / ROWS * ROWS;
        for (xc, yc) in qx.chunks_exact(ROWS).zip(y.chunks_exact_mut(ROWS)) {
            let xr = [&xc[0], &xc[1], &xc[2], &xc[3]];
            let yr: &mut [[f32; TILE]; ROWS] = yc.try_into().expect("chunks of ROWS");
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `int_kernel` only returns x86 kernels the CPU has.
            unsafe {
                if k == IntKernel::Vnni4 {
                    x86::tile_vnni::<4, ROWS>(m, t, xr, yr)
                } else {
                    x86::tile_vnni::<8, ROWS>(m, t, xr, yr)
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (xr, yr);
        }
    }
    for (q, yy) in qx[done..].iter().zip(&mut y[done..]) {
        tile(k, m, t, q, yy);
    }
}

/// The portable body (4 and 8 bits).
fn tile_scalar(m: &QMatrix, t: usize, qx: &QuantX, y: &mut [f32; TILE]) {
    let bits = m.bits() as usize;
    let (cb, chunks, gn) = (TILE * bits, m.kp() / CHUNK, m.gstart().len() - 1);
    let data = &m.data()[t * chunks * cb..(t + 1) * chunks * cb];
    let (sc, mz) = m.tile_scales(t);
    let mask = (1u64 << bits) - 1;
    let mut yy = [0f32; TILE];
    let mut bi = 0;
    for g in 0..gn {
        let (a, b) = (m.gstart()[g] / CHUNK, m.gstart()[g + 1] / CHUNK);
        if a == b {
            continue;
        }
        let mut facc = [0f32; TILE];
        for c0 in (a..b).step_by(BLOCK_CHUNKS) {
            let mut iacc = [0i32; TILE];
            for ci in c0..(c0 + BLOCK_CHUNKS).min(b) {
                let ch = &data[ci * cb..(ci + 1) * cb];
                let xq = &qx.q[ci * CHUNK..(ci + 1) * CHUNK];
                for (j, acc) in iacc.iter_mut().enumerate() {
                    let f = code_field(bits, ch, j);
                    for i in 0..CHUNK {
                        let code = ((f >> (bits * i)) & mask) as i32;
                        *acc += code * xq[arranged(bits as u32, i)] as i32;
                    }
                }
            }
            for (f, &i) in facc.iter_mut().zip(&iacc) {
                *f += i as f32 * qx.dx[bi];
            }
            bi += 1;
        }
        let (s, z) = (&sc[g * TILE..(g + 1) * TILE], &mz[g * TILE..(g + 1) * TILE]);
        for j in 0..TILE {
            yy[j] += s[j] * facc[j] + z[j] * qx.xsum[g];
        }
    }
    *y = yy;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 bodies; `unsafe` only for their target features (memory
    //! accesses stay inside the slices, whose sizes follow from the layout).
    use super::*;
    use std::arch::x86_64::*;

    /// A 32-bit word of the arranged activation codes.
    #[inline(always)]
    unsafe fn xword(q: &[i8], at: usize) -> i32 {
        debug_assert!(at + 4 <= q.len());
        unsafe { (q.as_ptr().add(at) as *const i32).read_unaligned() }
    }

    /// 4- or 8-bit tile with AVX-512 VNNI for `R` activation rows at once
    /// (each chunk's codes are loaded and unpacked once for all of them): 16
    /// weight rows in one vector, one int32 accumulator per activation row
    /// and block, one f32 accumulator per row and group.
    #[allow(clippy::incompatible_msrv)] // AVX-512 intrinsics: stable since 1.89; built with 1.95
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_vnni<const B: usize, const R: usize>(
        m: &QMatrix,
        t: usize,
        qx: [&QuantX; R],
        y: &mut [[f32; TILE]; R],
    ) {
        let cb = TILE * B;
        let (chunks, gn) = (m.kp() / CHUNK, m.gstart().len() - 1);
        let data = &m.data()[t * chunks * cb..(t + 1) * chunks * cb];
        let (sc, mz) = m.tile_scales(t);
        for q in qx {
            debug_assert!(q.q.len() >= chunks * CHUNK && q.xsum.len() >= gn);
        }
        unsafe {
            let mask = _mm512_set1_epi8(0x0F);
            let mut yv = [_mm512_setzero_ps(); R];
            let mut bi = 0;
            for g in 0..gn {
                let (a, b) = (m.gstart()[g] / CHUNK, m.gstart()[g + 1] / CHUNK);
                if a == b {
                    continue;
                }
                let mut facc = [_mm512_setzero_ps(); R];
                let mut c0 = a;
                while c0 < b {
                    let c1 = (c0 + BLOCK_CHUNKS).min(b);
                    let mut acc = [_mm512_setzero_si512(); R];
                    for ci in c0..c1 {
                        let p = data.as_ptr().add(ci * cb);
                        let v = _mm512_loadu_si512(p as *const __m512i);
                        let (w0, w1) = if B == 4 {
                            (
                                _mm512_and_si512(v, mask),
                                _mm512_and_si512(_mm512_srli_epi32::<4>(v), mask),
                            )
                        } else {
                            (v, _mm512_loadu_si512(p.add(64) as *const __m512i))
                        };
                        for r in 0..R {
                            let x0 = _mm512_set1_epi32(xword(&qx[r].q, ci * CHUNK));
                            let x1 = _mm512_set1_epi32(xword(&qx[r].q, ci * CHUNK + 4));
                            acc[r] =
                                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r], w0, x0), w1, x1);
                        }
                    }
                    for r in 0..R {
                        facc[r] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(acc[r]),
                            _mm512_set1_ps(qx[r].dx[bi]),
                            facc[r],
                        );
                    }
                    bi += 1;
                    c0 = c1;
                }
                let s = _mm512_loadu_ps(sc.as_ptr().add(g * TILE));
                let z = _mm512_loadu_ps(mz.as_ptr().add(g * TILE));
                for r in 0..R {
                    yv[r] = _mm512_fmadd_ps(
                        s,
                        facc[r],
                        _mm512_fmadd_ps(z, _mm512_set1_ps(qx[r].xsum[g]), yv[r]),
                    );
                }
            }
            for r in 0..R {
                _mm512_storeu_ps(y[r].as_mut_ptr(), yv[r]);
            }
        }
    }

    /// 4-bit tile with AVX2: two 8-row halves; `vpmaddubsw` products summed
    /// in int16 over a block (≤ 4 chunks × 4 products × 15 × 127 = 30480,
    /// inside int16), widened once per block by `vpmaddwd`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile4_avx2<const R: usize>(
        m: &QMatrix,
        t: usize,
        qx: [&QuantX; R],
        y: &mut [[f32; TILE]; R],
    ) {
        let (chunks, gn) = (m.kp() / CHUNK, m.gstart().len() - 1);
        let data = &m.data()[t * chunks * 64..(t + 1) * chunks * 64];
        let (sc, mz) = m.tile_scales(t);
        for q in qx {
            debug_assert!(q.q.len() >= chunks * CHUNK && q.xsum.len() >= gn);
        }
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            let ones = _mm256_set1_epi16(1);
            let zf = _mm256_setzero_ps();
            // [row][half]
            let mut yv = [[zf; 2]; R];
            let mut bi = 0;
            for g in 0..gn {
                let (a, b) = (m.gstart()[g] / CHUNK, m.gstart()[g + 1] / CHUNK);
                if a == b {
                    continue;
                }
                let mut f = [[zf; 2]; R];
                let mut c0 = a;
                while c0 < b {
                    let c1 = (c0 + BLOCK_CHUNKS).min(b);
                    let zi = _mm256_setzero_si256();
                    let mut acc = [[zi; 2]; R];
                    for ci in c0..c1 {
                        let p = data.as_ptr().add(ci * 64);
                        let v0 = _mm256_loadu_si256(p as *const __m256i);
                        let v1 = _mm256_loadu_si256(p.add(32) as *const __m256i);
                        let lo = [_mm256_and_si256(v0, mask), _mm256_and_si256(v1, mask)];
                        let hi = [
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v0), mask),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v1), mask),
                        ];
                        for r in 0..R {
                            let xe = _mm256_set1_epi32(xword(&qx[r].q, ci * CHUNK));
                            let xo = _mm256_set1_epi32(xword(&qx[r].q, ci * CHUNK + 4));
                            for h in 0..2 {
                                acc[r][h] = _mm256_add_epi16(
                                    acc[r][h],
                                    _mm256_add_epi16(
                                        _mm256_maddubs_epi16(lo[h], xe),
                                        _mm256_maddubs_epi16(hi[h], xo),
                                    ),
                                );
                            }
                        }
                    }
                    for r in 0..R {
                        let d = _mm256_set1_ps(qx[r].dx[bi]);
                        for h in 0..2 {
                            let i = _mm256_madd_epi16(acc[r][h], ones);
                            f[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), d, f[r][h]);
                        }
                    }
                    bi += 1;
                    c0 = c1;
                }
                for r in 0..R {
                    let xs = _mm256_set1_ps(qx[r].xsum[g]);
                    for h in 0..2 {
                        let s = _mm256_loadu_ps(sc.as_ptr().add(g * TILE + 8 * h));
                        let z = _mm256_loadu_ps(mz.as_ptr().add(g * TILE + 8 * h));
                        yv[r][h] = _mm256_fmadd_ps(s, f[r][h], _mm256_fmadd_ps(z, xs, yv[r][h]));
                    }
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(y[r].as_mut_ptr(), yv[r][0]);
                _mm256_storeu_ps(y[r].as_mut_ptr().add(8), yv[r][1]);
            }
        }
    }

    /// 8-bit tile with AVX2. `vpmaddubsw` of a full code (≤ 255) with an
    /// int8 activation could saturate int16, so each code is split into
    /// its nibbles, `q = 16·hi + lo`: nibble products summed in int16 over a
    /// block (≤ 4 chunks × 2 words × 2 products × 15 × 127 = 30480), then
    /// widened by `vpmaddwd` with 1 and 16.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile8_avx2(m: &QMatrix, t: usize, qx: &QuantX, y: &mut [f32; TILE]) {
        let (chunks, gn) = (m.kp() / CHUNK, m.gstart().len() - 1);
        let data = &m.data()[t * chunks * 128..(t + 1) * chunks * 128];
        let (sc, mz) = m.tile_scales(t);
        debug_assert!(qx.q.len() >= chunks * CHUNK && qx.xsum.len() >= gn);
        unsafe {
            let mask = _mm256_set1_epi8(0x0F);
            let (one, sixteen) = (_mm256_set1_epi16(1), _mm256_set1_epi16(16));
            let (mut y0, mut y1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut bi = 0;
            for g in 0..gn {
                let (a, b) = (m.gstart()[g] / CHUNK, m.gstart()[g + 1] / CHUNK);
                if a == b {
                    continue;
                }
                let (mut f0, mut f1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut c0 = a;
                while c0 < b {
                    let c1 = (c0 + BLOCK_CHUNKS).min(b);
                    let z = _mm256_setzero_si256();
                    // [half][lo, hi] int16 accumulators.
                    let mut acc = [[z, z], [z, z]];
                    for ci in c0..c1 {
                        let p = data.as_ptr().add(ci * 128);
                        for w in 0..2 {
                            let xw = _mm256_set1_epi32(xword(&qx.q, ci * CHUNK + 4 * w));
                            for (half, a) in acc.iter_mut().enumerate() {
                                let v =
                                    _mm256_loadu_si256(p.add(64 * w + 32 * half) as *const __m256i);
                                let lo = _mm256_and_si256(v, mask);
                                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                                a[0] = _mm256_add_epi16(a[0], _mm256_maddubs_epi16(lo, xw));
                                a[1] = _mm256_add_epi16(a[1], _mm256_maddubs_epi16(hi, xw));
                            }
                        }
                    }
                    let d = _mm256_set1_ps(qx.dx[bi]);
                    let wide = |a: [__m256i; 2]| {
                        _mm256_cvtepi32_ps(_mm256_add_epi32(
                            _mm256_madd_epi16(a[0], one),
                            _mm256_madd_epi16(a[1], sixteen),
                        ))
                    };
                    f0 = _mm256_fmadd_ps(wide(acc[0]), d, f0);
                    f1 = _mm256_fmadd_ps(wide(acc[1]), d, f1);
                    bi += 1;
                    c0 = c1;
                }
                let xs = _mm256_set1_ps(qx.xsum[g]);
                let s = sc.as_ptr().add(g * TILE);
                let z = mz.as_ptr().add(g * TILE);
                y0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(s),
                    f0,
                    _mm256_fmadd_ps(_mm256_loadu_ps(z), xs, y0),
                );
                y1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(s.add(8)),
                    f1,
                    _mm256_fmadd_ps(_mm256_loadu_ps(z.add(8)), xs, y1),
                );
            }
            _mm256_storeu_ps(y.as_mut_ptr(), y0);
            _mm256_storeu_ps(y.as_mut_ptr().add(8), y1);
        }
    }
}
