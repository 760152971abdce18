//! The logical (unpacked) form of a GPTQ-quantized linear layer, shared by
//! the solver that produces it, the packer that stores it and the readers
//! that run it.
//!
//! For a weight `W` of shape `[out, in]`, each input column `i` belongs to
//! the group `g_idx[i]`; each (group, output row) pair has a scale `s` and an
//! integer zero point `z`, and each weight an integer code `q` in
//! `0..2^bits`. The dequantized weight is
//!
//! `Ŵ[o, i] = s[g_idx[i], o] · (q[o, i] − z[g_idx[i], o])`.
//!
//! `z` here is the true zero point (GPTQ "v2" convention); the "v1"
//! checkpoint format stores `z − 1` (a historical off-by-one kept by
//! AutoGPTQ), which only the packer sees.

use crate::{Error, Result, Tensor};

/// Bit widths GPTQ checkpoints support.
pub const SUPPORTED_BITS: &[u32] = &[2, 3, 4, 8];

/// A quantized linear layer, unpacked.
#[derive(Debug, Clone, PartialEq)]
pub struct QLinear {
    /// Output features (rows of `W`).
    pub out_features: usize,
    /// Input features (columns of `W`).
    pub in_features: usize,
    /// Bits per weight.
    pub bits: u32,
    /// Columns per group; `None` is one group for the whole row (per-channel).
    pub group_size: Option<usize>,
    /// Codes `q`, `[out, in]` row-major, each `< 2^bits`.
    pub codes: Vec<u8>,
    /// Scales `s`, `[groups, out]`.
    pub scales: Vec<f32>,
    /// Zero points `z`, `[groups, out]`, each `< 2^bits`.
    pub zeros: Vec<u8>,
    /// Group of each input column, `[in]`.
    pub g_idx: Vec<u32>,
    /// Bias `[out]`, if the layer has one.
    pub bias: Option<Vec<f32>>,
}

impl QLinear {
    /// Number of groups (rows of `scales`/`zeros`).
    pub fn num_groups(&self) -> usize {
        self.scales.len() / self.out_features.max(1)
    }

    /// Checks sizes and ranges; every reader calls this before trusting data.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Quant(msg));
        if !SUPPORTED_BITS.contains(&self.bits) {
            return bad(format!(
                "unsupported bit width {} (supported: 2, 3, 4, 8)",
                self.bits
            ));
        }
        let (o, i) = (self.out_features, self.in_features);
        if self.codes.len() != o * i {
            return bad(format!("{} codes for a {o}x{i} weight", self.codes.len()));
        }
        if self.g_idx.len() != i {
            return bad(format!(
                "g_idx has {} entries for {i} input features",
                self.g_idx.len()
            ));
        }
        let groups = self.num_groups();
        if groups == 0 || self.scales.len() != groups * o || self.zeros.len() != groups * o {
            return bad(format!(
                "scales ({}) and zeros ({}) are not [groups, {o}]",
                self.scales.len(),
                self.zeros.len()
            ));
        }
        if let Some(g) = self.g_idx.iter().find(|&&g| g as usize >= groups) {
            return bad(format!("g_idx entry {g} is not below the {groups} groups"));
        }
        let maxq = (1u32 << self.bits) - 1;
        if self
            .codes
            .iter()
            .chain(&self.zeros)
            .any(|&c| c as u32 > maxq)
        {
            return bad(format!(
                "a code or zero point exceeds {maxq} for {} bits",
                self.bits
            ));
        }
        if let Some(b) = &self.bias {
            if b.len() != o {
                return bad(format!("bias has {} entries for {o} outputs", b.len()));
            }
        }
        Ok(())
    }

    /// The layers stacked along the outputs (rows), as one layer reading
    /// the same input: `[Ŵ₁; Ŵ₂; …]`, biases likewise (zeros for a part
    /// without one when another has one). `None` unless every part has the
    /// same input width, bit width, group size and `g_idx` (the same
    /// groups and act-order permutation; q/k/v and gate/up quantized from
    /// one Hessian have it).
    pub fn stack_rows(parts: &[&QLinear]) -> Option<QLinear> {
        let first = parts.first()?;
        if parts.iter().any(|p| {
            p.in_features != first.in_features
                || p.bits != first.bits
                || p.group_size != first.group_size
                || p.g_idx != first.g_idx
                || p.num_groups() != first.num_groups()
        }) {
            return None;
        }
        let out: usize = parts.iter().map(|p| p.out_features).sum();
        let groups = first.num_groups();
        let mut scales = Vec::with_capacity(groups * out);
        let mut zeros = Vec::with_capacity(groups * out);
        for g in 0..groups {
            for p in parts {
                let o = p.out_features;
                scales.extend_from_slice(&p.scales[g * o..(g + 1) * o]);
                zeros.extend_from_slice(&p.zeros[g * o..(g + 1) * o]);
            }
        }
        let bias = parts.iter().any(|p| p.bias.is_some()).then(|| {
            parts
                .iter()
                .flat_map(|p| match &p.bias {
                    Some(b) => b.clone(),
                    None => vec![0.0; p.out_features],
                })
                .collect()
        });
        Some(QLinear {
            out_features: out,
            in_features: first.in_features,
            bits: first.bits,
            group_size: first.group_size,
            codes: parts.iter().flat_map(|p| p.codes.iter().copied()).collect(),
            scales,
            zeros,
            g_idx: first.g_idx.clone(),
            bias,
        })
    }

    /// The layer with its output rows reordered: row `r` of the result is
    /// row `order[r]` of `self` (codes, scales, zero points and bias move
    /// with their row). `None` unless `order` is a permutation of the rows.
    pub fn permute_rows(&self, order: &[usize]) -> Option<QLinear> {
        let (o, i) = (self.out_features, self.in_features);
        let mut seen = vec![false; o];
        if order.len() != o
            || order
                .iter()
                .any(|&r| r >= o || std::mem::replace(&mut seen[r], true))
        {
            return None;
        }
        let groups = self.num_groups();
        let mut codes = Vec::with_capacity(o * i);
        for &r in order {
            codes.extend_from_slice(&self.codes[r * i..(r + 1) * i]);
        }
        fn per_group<T: Copy>(v: &[T], groups: usize, order: &[usize]) -> Vec<T> {
            let o = order.len();
            (0..groups)
                .flat_map(|g| order.iter().map(move |&r| v[g * o + r]))
                .collect()
        }
        Some(QLinear {
            out_features: o,
            in_features: i,
            bits: self.bits,
            group_size: self.group_size,
            codes,
            scales: per_group(&self.scales, groups, order),
            zeros: per_group(&self.zeros, groups, order),
            g_idx: self.g_idx.clone(),
            bias: self
                .bias
                .as_ref()
                .map(|b| order.iter().map(|&r| b[r]).collect()),
        })
    }

    /// `Ŵ` as an f32 tensor `[out, in]`.
    pub fn dequantize(&self) -> Tensor {
        let (o, i) = (self.out_features, self.in_features);
        let mut w = vec![0.0f32; o * i];
        for r in 0..o {
            for c in 0..i {
                let g = self.g_idx[c] as usize * o + r;
                w[r * i + c] =
                    self.scales[g] * (self.codes[r * i + c] as f32 - self.zeros[g] as f32);
            }
        }
        Tensor::new(vec![o, i], w).expect("sizes checked by construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Permuted rows dequantize to the original rows in the new order;
    /// anything but a permutation is refused.
    #[test]
    fn permuted_rows_dequantize_to_the_moved_rows() {
        let o = 5;
        let q = QLinear {
            out_features: o,
            in_features: 4,
            bits: 4,
            group_size: Some(2),
            codes: (0..o * 4)
                .map(|i| ((i as u8).wrapping_mul(7) ^ 3) % 16)
                .collect(),
            scales: (0..2 * o).map(|i| 0.25 + i as f32).collect(),
            zeros: (0..2 * o).map(|i| (i as u8 * 5) % 16).collect(),
            g_idx: vec![1, 0, 1, 0],
            bias: Some((0..o).map(|r| r as f32 - 2.0).collect()),
        };
        let order = [3, 0, 4, 1, 2];
        let p = q.permute_rows(&order).expect("a permutation");
        let (w, wp) = (q.dequantize(), p.dequantize());
        for (r, &src) in order.iter().enumerate() {
            assert_eq!(
                &wp.data()[r * 4..(r + 1) * 4],
                &w.data()[src * 4..(src + 1) * 4]
            );
            assert_eq!(p.bias.as_ref().unwrap()[r], q.bias.as_ref().unwrap()[src]);
        }
        assert!(q.permute_rows(&[0, 1, 2, 3]).is_none());
        assert!(q.permute_rows(&[0, 1, 2, 3, 3]).is_none());
        assert!(q.permute_rows(&[0, 1, 2, 3, 5]).is_none());
    }

    /// Stacked layers dequantize to the parts' rows one after another;
    /// parts with other groups are refused.
    #[test]
    fn stacked_rows_dequantize_to_the_parts() {
        let layer = |o: usize, seed: u8, bias: bool| QLinear {
            out_features: o,
            in_features: 4,
            bits: 4,
            group_size: Some(2),
            codes: (0..o * 4)
                .map(|i| ((i as u8).wrapping_mul(7) ^ seed) % 16)
                .collect(),
            scales: (0..2 * o).map(|i| 0.5 + i as f32 + seed as f32).collect(),
            zeros: (0..2 * o).map(|i| ((i as u8) + seed) % 16).collect(),
            g_idx: vec![1, 0, 1, 0],
            bias: bias.then(|| vec![seed as f32; o]),
        };
        let (a, b) = (layer(3, 1, true), layer(2, 5, false));
        let s = QLinear::stack_rows(&[&a, &b]).unwrap();
        s.validate().unwrap();
        let (wa, wb, ws) = (a.dequantize(), b.dequantize(), s.dequantize());
        assert_eq!(ws.data(), [wa.data(), wb.data()].concat().as_slice());
        assert_eq!(s.bias.unwrap(), vec![1.0, 1.0, 1.0, 0.0, 0.0]);
        let mut c = layer(2, 5, false);
        c.g_idx = vec![0, 0, 1, 1];
        assert!(QLinear::stack_rows(&[&a, &c]).is_none());
    }

    #[test]
    fn dequantizes_with_groups_and_rejects_bad_sizes() {
        let q = QLinear {
            out_features: 2,
            in_features: 3,
            bits: 4,
            group_size: Some(2),
            codes: vec![0, 1, 15, 8, 8, 8],
            scales: vec![0.5, 1.0, 2.0, 3.0],
            zeros: vec![8, 8, 0, 1],
            g_idx: vec![0, 0, 1],
            bias: None,
        };
        q.validate().unwrap();
        assert_eq!(q.dequantize().data(), &[-4.0, -3.5, 30.0, 0.0, 0.0, 21.0]);
        let mut b = q.clone();
        b.g_idx[2] = 2;
        assert!(b.validate().is_err());
        let mut b = q.clone();
        b.codes[0] = 16;
        assert!(b.validate().is_err());
        let mut b = q;
        b.bits = 5;
        assert!(b.validate().is_err());
    }
}
