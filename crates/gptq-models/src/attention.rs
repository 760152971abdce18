//! The self-attention sublayer shared by every architecture: projections,
//! optional RoPE, the KV cache and causal attention over each sequence of a
//! right-padded batch.

use crate::kv_cache::SeqCache;
use crate::rope::Rope;
use crate::{Batch, Linear};
use gptq_kernels::cpu::{self, AttentionShape};

/// Q/K/V/O projections and head layout of one block.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// Query projection `[n_heads·d, hidden]`.
    pub q: Linear,
    /// Key projection `[n_kv·d, hidden]`.
    pub k: Linear,
    /// Value projection `[n_kv·d, hidden]`.
    pub v: Linear,
    /// Output projection `[hidden, n_heads·d]`.
    pub o: Linear,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Sliding-window size (Mistral), if any.
    pub window: Option<usize>,
}

/// Where a forward step stands: the batch, each row's absolute position and
/// each sequence's cached length before the step.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The batch being run.
    pub batch: &'a Batch<'a>,
    /// Absolute position of every row (`past[b] + t`).
    pub pos: &'a [usize],
    /// Cached tokens per sequence before this step.
    pub past: &'a [usize],
}

/// Absolute position of every row of a batch: `past[b] + t`.
pub fn positions(batch: &Batch<'_>, past: &[usize]) -> Vec<usize> {
    (0..batch.batch)
        .flat_map(|b| (0..batch.seq).map(move |t| past[b] + t))
        .collect()
}

impl SelfAttention {
    /// Width of a cache row.
    pub fn kv_dim(&self) -> usize {
        self.n_kv * self.head_dim
    }

    /// Runs attention for the normalized input `x` `[batch·seq, hidden]`
    /// up to, not including, the output projection (`[batch·seq, heads·d]`),
    /// appending each sequence's real keys/values to `cache` (one entry per
    /// sequence, holding `past[b]` rows before the call).
    pub fn attend(
        &self,
        x: &[f32],
        step: &Step<'_>,
        rope: Option<&Rope>,
        cache: &mut [SeqCache],
    ) -> Vec<f32> {
        let Step { batch, pos, past } = *step;
        let rows = batch.batch * batch.seq;
        let (d, qw, kw) = (self.head_dim, self.n_heads * self.head_dim, self.kv_dim());
        let [mut q, mut k, v]: [Vec<f32>; 3] =
            Linear::forward_many(&[&self.q, &self.k, &self.v], x, rows)
                .try_into()
                .expect("one output per layer");
        if let Some(rope) = rope {
            let (cos, sin) = rope.tables(pos);
            cpu::rope_rotate_half(&mut q, self.n_heads, d, &cos, &sin);
            cpu::rope_rotate_half(&mut k, self.n_kv, d, &cos, &sin);
        }
        let mut out = vec![0.0f32; rows * qw];
        for b in 0..batch.batch {
            let len = batch.lengths[b];
            let r0 = b * batch.seq;
            let c = &mut cache[b];
            c.k.extend_from_slice(&k[r0 * kw..(r0 + len) * kw]);
            c.v.extend_from_slice(&v[r0 * kw..(r0 + len) * kw]);
            if len == 0 {
                continue;
            }
            let shape = AttentionShape {
                t: len,
                s: past[b] + len,
                n_heads: self.n_heads,
                n_kv: self.n_kv,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                window: self.window,
            };
            cpu::attention(
                &q[r0 * qw..(r0 + len) * qw],
                &c.k,
                &c.v,
                shape,
                &mut out[r0 * qw..(r0 + len) * qw],
            );
        }
        out
    }

    /// [`Self::attend`] followed by the output projection.
    pub fn forward(
        &self,
        x: &[f32],
        step: &Step<'_>,
        rope: Option<&Rope>,
        cache: &mut [SeqCache],
    ) -> Vec<f32> {
        let a = self.attend(x, step, rope, cache);
        self.o.forward(&a, step.batch.batch * step.batch.seq)
    }
}
