//! Round-to-nearest (RTN) quantization: every weight to the nearest point of
//! its row's grid, with no error feedback. The baseline GPTQ is compared
//! against (Frantar et al. 2022, arXiv 2210.17323, §5 "Baselines").
//!
//! This file owns RTN only; it uses the same grid ([`crate::grid`]) and the
//! same group layout as the solver without act-order: column `c` belongs to
//! group `c / group_size`, each group's parameters come from the original
//! weights of its columns (per-channel: one group over the whole row).

use crate::gptq::GptqParams;
use crate::grid::RowGrid;
use crate::{Error, Result};
use gptq_core::{QLinear, Tensor};
use rayon::prelude::*;

/// Quantizes `w` (`[out, in]`) by round-to-nearest with `params`' bits,
/// symmetry, group size and MSE search (`desc_act`, `static_groups`,
/// `damp_percent` and `block_size` do not apply and are ignored).
pub fn rtn_quantize(w: &Tensor, params: &GptqParams) -> Result<QLinear> {
    params.validate()?;
    let (out, inn) = crate::gptq::weight_dims(w)?;
    if w.data().iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: "weight" });
    }
    let grid = params.grid();
    let gs = params.group_size.unwrap_or(inn).min(inn);
    let groups = inn.div_ceil(gs);
    let mut codes = vec![0u8; out * inn];
    let row_params: Vec<Vec<RowGrid>> = codes
        .par_chunks_mut(inn)
        .zip(w.data().par_chunks(inn))
        .map(|(cr, wr)| {
            (0..groups)
                .map(|g| {
                    let cols = g * gs..((g + 1) * gs).min(inn);
                    let p = grid.row_params(&wr[cols.clone()]);
                    for c in cols {
                        cr[c] = grid.code(wr[c], p);
                    }
                    p
                })
                .collect()
        })
        .collect();
    let mut scales = vec![0.0f32; groups * out];
    let mut zeros = vec![0u8; groups * out];
    for (r, ps) in row_params.iter().enumerate() {
        for (g, p) in ps.iter().enumerate() {
            scales[g * out + r] = p.scale;
            zeros[g * out + r] = p.zero as u8;
        }
    }
    let q = QLinear {
        out_features: out,
        in_features: inn,
        bits: params.bits,
        group_size: params.group_size,
        codes,
        scales,
        zeros,
        g_idx: (0..inn).map(|c| (c / gs) as u32).collect(),
        bias: None,
    };
    q.validate()?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::QuantGrid;

    #[test]
    fn rtn_matches_the_grid_per_group() {
        let (out, inn) = (5, 20);
        let w: Vec<f32> = (0..out * inn)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
            .collect();
        let t = Tensor::new(vec![out, inn], w.clone()).unwrap();
        for group_size in [None, Some(8), Some(20), Some(64)] {
            for sym in [false, true] {
                let p = GptqParams {
                    bits: 3,
                    group_size,
                    sym,
                    ..GptqParams::default()
                };
                let q = rtn_quantize(&t, &p).unwrap();
                let gs = group_size.unwrap_or(inn).min(inn);
                assert_eq!(q.num_groups(), inn.div_ceil(gs));
                let grid = QuantGrid::new(3, sym);
                let deq = q.dequantize();
                for r in 0..out {
                    for c in 0..inn {
                        let g = c / gs;
                        let cols = g * gs..((g + 1) * gs).min(inn);
                        let rp = grid.row_params(&w[r * inn..][cols]);
                        assert_eq!(q.g_idx[c] as usize, g);
                        assert_eq!(deq.data()[r * inn + c], grid.quantize(w[r * inn + c], rp));
                    }
                }
            }
        }
    }

    #[test]
    fn rtn_rejects_bad_input() {
        let t = Tensor::new(vec![2, 2], vec![0.0, f32::NAN, 1.0, 2.0]).unwrap();
        assert!(matches!(
            rtn_quantize(&t, &GptqParams::default()),
            Err(Error::NonFinite { .. })
        ));
        let t = Tensor::new(vec![4], vec![0.0; 4]).unwrap();
        assert!(rtn_quantize(&t, &GptqParams::default()).is_err());
        let t = Tensor::new(vec![2, 2], vec![0.0; 4]).unwrap();
        let p = GptqParams {
            bits: 5,
            ..GptqParams::default()
        };
        assert!(matches!(rtn_quantize(&t, &p), Err(Error::InvalidParams(_))));
    }
}
