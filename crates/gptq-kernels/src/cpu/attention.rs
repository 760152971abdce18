//! Causal multi-head attention with grouped KV heads (GQA), on row-major
//! buffers: queries `[t, n_heads·d]`, keys/values `[s, n_kv·d]` where the
//! first `s − t` keys are the cached past. Query `i` sits at position
//! `s − t + i` and sees keys `j ≤ s − t + i` (and, with a sliding window `w`,
//! only `j > s − t + i − w`).
//!
//! Each (head, block of queries) is one rayon task: scores `Q·Kᵀ` and the
//! weighted sum `P·V` are gemm calls on strided views, and keys past a
//! query block's last causal position are never touched (half the work of a
//! full square at prefill).

use super::matmul::{matmul_strided, Mat, MatMut};
use super::ops::softmax_row;
use super::simd::scale;
use rayon::prelude::*;

/// Query rows per task.
const Q_BLOCK: usize = 64;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// New query rows.
    pub t: usize,
    /// Key rows (cached past + new).
    pub s: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// Sliding window (Mistral), if any.
    pub window: Option<usize>,
}

/// Writes attention output `[t, n_heads·d]` into `out`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape {
        t,
        s,
        n_heads,
        n_kv,
        head_dim: d,
        scale: scale_by,
        window,
    } = shape;
    assert!(s >= t && n_kv > 0 && n_heads % n_kv == 0);
    let (qw, kw) = (n_heads * d, n_kv * d);
    assert_eq!(q.len(), t * qw);
    assert_eq!(k.len(), s * kw);
    assert_eq!(v.len(), s * kw);
    assert_eq!(out.len(), t * qw);
    let past = s - t;
    let group = n_heads / n_kv;
    let n_blocks = t.div_ceil(Q_BLOCK);
    // Each task owns the output of (head h, query block b): a disjoint set of
    // cells, gathered back into `out` afterwards.
    let results: Vec<(usize, usize, Vec<f32>)> = (0..n_heads * n_blocks)
        .into_par_iter()
        .map(|task| {
            let (h, b) = (task / n_blocks, task % n_blocks);
            let kh = h / group;
            let q0 = b * Q_BLOCK;
            let q1 = (q0 + Q_BLOCK).min(t);
            let rows = q1 - q0;
            let k_end = past + q1; // keys visible to the block's last query
            let k_start = match window {
                Some(w) => (past + q0 + 1).saturating_sub(w),
                None => 0,
            };
            let nk = k_end - k_start;
            let mut scores = vec![0.0f32; rows * nk];
            matmul_strided(
                MatMut::row_major(&mut scores, rows, nk),
                Mat {
                    data: &q[q0 * qw + h * d..],
                    rows,
                    cols: d,
                    row_stride: qw,
                    col_stride: 1,
                },
                Mat {
                    data: &k[k_start * kw + kh * d..],
                    rows: d,
                    cols: nk,
                    row_stride: 1,
                    col_stride: kw,
                },
                0.0,
                1,
            );
            // Row r sees keys [lo, hi) of the block's key range: causal end
            // at its own position, window start if any. Softmax runs over
            // exactly that span; the rest of the row is zero.
            for (r, row) in scores.chunks_mut(nk).enumerate() {
                let pos = past + q0 + r;
                let hi = pos + 1 - k_start;
                let lo = match window {
                    Some(w) => (pos + 1).saturating_sub(w).saturating_sub(k_start),
                    None => 0,
                };
                let span = &mut row[lo..hi];
                scale(span, scale_by);
                softmax_row(span);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
            }
            let mut o = vec![0.0f32; rows * d];
            matmul_strided(
                MatMut::row_major(&mut o, rows, d),
                Mat::row_major(&scores, rows, nk),
                Mat {
                    data: &v[k_start * kw + kh * d..],
                    rows: nk,
                    cols: d,
                    row_stride: kw,
                    col_stride: 1,
                },
                0.0,
                1,
            );
            (h, q0, o)
        })
        .collect();
    for (h, q0, o) in results {
        for (r, row) in o.chunks(d).enumerate() {
            out[(q0 + r) * qw + h * d..(q0 + r) * qw + (h + 1) * d].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition, f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], sh: AttentionShape) -> Vec<f32> {
        let AttentionShape {
            t,
            s,
            n_heads,
            n_kv,
            head_dim: d,
            scale,
            window,
        } = sh;
        let mut out = vec![0.0f32; t * n_heads * d];
        for h in 0..n_heads {
            let kh = h / (n_heads / n_kv);
            for i in 0..t {
                let pos = s - t + i;
                let vis: Vec<usize> = (0..s)
                    .filter(|&j| j <= pos && window.is_none_or(|w| j + w > pos))
                    .collect();
                let sc: Vec<f64> = vis
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|x| {
                                q[i * n_heads * d + h * d + x] as f64
                                    * k[j * n_kv * d + kh * d + x] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for x in 0..d {
                    let acc: f64 = vis
                        .iter()
                        .zip(&sc)
                        .map(|(&j, s)| (s - m).exp() / z * v[j * n_kv * d + kh * d + x] as f64)
                        .sum();
                    out[i * n_heads * d + h * d + x] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition_with_past_gqa_and_window() {
        let f = |i: usize, s: u32| {
            ((((i as u32) ^ s).wrapping_mul(2654435761) >> 9) % 2000) as f32 / 1000.0 - 1.0
        };
        for &(t, s, nh, nkv, d, win) in &[
            (5, 5, 2, 1, 4, None),
            (3, 10, 4, 2, 8, None),
            (130, 140, 2, 2, 4, None),
            (70, 70, 2, 1, 4, Some(16)),
            (1, 9, 3, 3, 2, Some(4)),
        ] {
            let sh = AttentionShape {
                t,
                s,
                n_heads: nh,
                n_kv: nkv,
                head_dim: d,
                scale: 0.7,
                window: win,
            };
            let q: Vec<f32> = (0..t * nh * d).map(|i| f(i, 1)).collect();
            let k: Vec<f32> = (0..s * nkv * d).map(|i| f(i, 2)).collect();
            let v: Vec<f32> = (0..s * nkv * d).map(|i| f(i, 3)).collect();
            let mut out = vec![0.0; t * nh * d];
            attention(&q, &k, &v, sh, &mut out);
            let r = naive(&q, &k, &v, sh);
            // f32 softmax and sums over ≤ 140 terms of magnitude ≤ 1: 1e-5 absolute.
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b} for {sh:?}");
            }
        }
    }
}
