//! A linear layer `y = x·Wᵀ + b` with `W` stored `[out, in]` as in HF
//! checkpoints.

use crate::{Result, Weights};
use gptq_kernels::cpu;
use std::sync::Arc;

/// A dense linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight `[out, in]`, shared when tied (embeddings ↔ output layer).
    pub weight: Arc<gptq_core::Tensor>,
    /// Optional bias `[out]`.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// Loads `{name}.weight` `[out, in]` and, if present, `{name}.bias`.
    pub fn load(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = Arc::new(w.get(&format!("{name}.weight"), &[out_dim, in_dim])?);
        let bias = w
            .get_opt(&format!("{name}.bias"), &[out_dim])?
            .map(|t| t.into_data());
        Ok(Self { weight, bias })
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `[rows, in] → [rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.out_dim(), self.in_dim());
        let mut out = vec![0.0f32; rows * n];
        cpu::matmul_nt(x, self.weight.data(), rows, k, n, &mut out);
        if let Some(b) = &self.bias {
            cpu::add_bias(&mut out, b);
        }
        out
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.as_ref().map_or(0, Vec::len)
    }
}
