//! Per-layer, per-sequence key/value cache: rows of `n_kv·head_dim` values
//! appended as tokens are processed.

/// Keys and values of one layer for one sequence, `[len, kv_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
}

/// The cache of a whole model for a batch of sequences.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `layers[l][b]`.
    pub layers: Vec<Vec<SeqCache>>,
    /// Tokens cached per sequence.
    pub lens: Vec<usize>,
}

impl KvCache {
    /// An empty cache.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![vec![SeqCache::default(); batch]; num_layers],
            lens: vec![0; batch],
        }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Drops everything cached for sequence `b` past `len` tokens.
    pub fn truncate(&mut self, b: usize, len: usize, kv_dim: usize) {
        for l in &mut self.layers {
            l[b].k.truncate(len * kv_dim);
            l[b].v.truncate(len * kv_dim);
        }
        self.lens[b] = self.lens[b].min(len);
    }
}
