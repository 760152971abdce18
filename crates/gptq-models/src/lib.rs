//! Model architectures of `gptq`, one file each, and their CPU forward pass.
//!
//! An architecture file ([`llama`], [`opt`]) owns three things:
//! 1. its config, parsed from `config.json` (both the transformers 4.x keys
//!    and the 5.x `rope_parameters` spelling);
//! 2. its [`ArchSpec`]: how blocks are named, which linear layers a block has,
//!    and their true-sequential groups (the order GPTQ quantizes them in);
//! 3. its forward pass, built from the shared pieces here: [`Linear`],
//!    [`attention::SelfAttention`], the [`KvCache`], and the kernels of
//!    `gptq-kernels`.
//!
//! [`load`] reads `model_type` and builds the matching [`CausalLm`].
#![deny(missing_docs)]

pub mod attention;
mod config;
pub mod kv_cache;
pub mod layerwise;
pub mod linear;
pub mod llama;
pub mod opt;
pub mod rope;
mod weights;

pub use kv_cache::KvCache;
pub use layerwise::{
    layerwise, BlockRunner, LayerwiseModel, LlamaBlockView, LlamaHead, OptBlockView, RawLinear,
};
pub use linear::Linear;
pub use weights::Weights;

use gptq_io::ModelFiles;

/// Errors of model construction and the forward pass.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `config.json` lacks a field or has a wrong value.
    #[error("config.json: {0}")]
    Config(String),
    /// `model_type` names an architecture this build does not implement.
    #[error("config.json: unsupported model_type `{model_type}` (supported: {})", SUPPORTED_MODEL_TYPES.join(", "))]
    UnsupportedModelType {
        /// The value found.
        model_type: String,
    },
    /// A weight's shape disagrees with the config.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?} from config.json")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        got: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// Bad forward input (token id out of range, sequence too long, ...).
    #[error("{0}")]
    Input(String),
    /// A file-level error while reading weights.
    #[error(transparent)]
    Io(#[from] gptq_io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sees the input `[rows, in]` of each linear layer, by [`ArchSpec`] name,
/// before the layer runs; returning false stops the block there.
pub type Observer<'o> = &'o mut dyn FnMut(&'static str, &[f32]) -> bool;

/// Every `model_type` value [`load`] accepts.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "opt"];

/// What an architecture declares about its structure, for GPTQ.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    /// Name of the architecture family.
    pub name: &'static str,
    /// Prefix of block `i`'s tensors, e.g. `model.layers.3.`.
    pub block_prefix: fn(usize) -> String,
    /// Linear layers of one block (names relative to the block prefix),
    /// grouped in true-sequential order: each group is quantized from the
    /// inputs produced by the already-quantized groups before it.
    pub sequential_groups: &'static [&'static [&'static str]],
    /// The block's forward as a chain of segments: after segment `i` the
    /// linears `input_points[i]` read one shared input (in forward order);
    /// the final segment, `input_points.len()`, finishes the block. Every
    /// linear appears exactly once. See [`BlockRunner::segment`].
    pub input_points: &'static [&'static [&'static str]],
    /// The input points whose input is a function of the residual stream
    /// alone (its norm, or the stream itself): a state standing there can
    /// be kept as the stream and its input recomputed by
    /// [`BlockRunner::point_input`].
    pub stream_points: &'static [usize],
}

impl ArchSpec {
    /// Runs a block's forward as its chain of segments `0..=P`
    /// (`segment(s, t)` runs segment `s`; `t` is the pending intermediate),
    /// showing `t` to `observe` under the names of each input point;
    /// returns `Ok(false)` as soon as `observe` does.
    pub fn run_segments<E>(
        &self,
        mut segment: impl FnMut(usize, &mut Vec<f32>) -> std::result::Result<(), E>,
        observe: Observer<'_>,
    ) -> std::result::Result<bool, E> {
        let mut t = Vec::new();
        for s in 0..=self.input_points.len() {
            segment(s, &mut t)?;
            for &n in self.input_points.get(s).copied().unwrap_or_default() {
                if !observe(n, &t) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The input point (index into [`Self::input_points`]) of linear `name`.
    pub fn point_of(&self, name: &str) -> Option<usize> {
        self.input_points.iter().position(|p| p.contains(&name))
    }

    /// All linear layers of a block, in true-sequential order.
    pub fn linear_layers(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sequential_groups
            .iter()
            .flat_map(|g| g.iter().copied())
    }
}

/// Facts about a loaded model that callers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `model_type` from the config.
    pub model_type: String,
    /// Vocabulary size (rows of the output layer).
    pub vocab_size: usize,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (a config may list several).
    pub eos_token_ids: Vec<u32>,
    /// Parameter count of the weights in memory.
    pub num_params: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// A batch of right-padded token sequences: `tokens` is `[batch, seq]`
/// row-major, and row `b` holds `lengths[b] ≤ seq` real tokens followed by
/// padding (any id; it is never read).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Token ids, `[batch, seq]`.
    pub tokens: &'a [u32],
    /// Number of sequences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// Real length of each sequence.
    pub lengths: &'a [usize],
}

impl<'a> Batch<'a> {
    /// A batch of one unpadded sequence.
    pub fn single(tokens: &'a [u32], len: &'a [usize; 1]) -> Self {
        Batch {
            tokens,
            batch: 1,
            seq: tokens.len(),
            lengths: len,
        }
    }

    pub(crate) fn validate(&self, vocab: usize) -> Result<()> {
        if self.tokens.len() != self.batch * self.seq || self.lengths.len() != self.batch {
            return Err(Error::Input("batch sizes disagree".into()));
        }
        if self.lengths.iter().any(|&l| l > self.seq) {
            return Err(Error::Input(
                "a sequence is longer than the padded length".into(),
            ));
        }
        for b in 0..self.batch {
            for &t in &self.tokens[b * self.seq..b * self.seq + self.lengths[b]] {
                if t as usize >= vocab {
                    return Err(Error::Input(format!(
                        "token id {t} is outside the vocabulary of {vocab}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A causal language model running on the CPU in f32.
pub trait CausalLm: Send + Sync {
    /// Facts about the model.
    fn info(&self) -> &ModelInfo;
    /// The architecture's structure (blocks, linears, true-sequential groups).
    fn arch(&self) -> &'static ArchSpec;
    /// An empty KV cache for `batch` sequences.
    fn new_cache(&self, batch: usize) -> KvCache;
    /// Runs the batch after the cached context and returns the final hidden
    /// states `[batch·seq, d]` (rows of padding positions are unspecified);
    /// the cache grows by each sequence's real length.
    fn forward_hidden(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Vec<f32>>;
    /// Logits `[rows, vocab]` of final hidden states `[rows, d]`.
    fn logits(&self, hidden: &[f32], rows: usize) -> Vec<f32>;
    /// The linear layers of block `i` under their [`ArchSpec`] names, in
    /// true-sequential order.
    fn block_linears(&self, i: usize) -> Vec<(&'static str, &Linear)>;
    /// The output layer.
    fn lm_head(&self) -> &Linear;
}

/// Builds the model `files` describes, loading its weights as f32 (GPTQ
/// layers of a quantized checkpoint are dequantized at load time).
pub fn load(files: &ModelFiles) -> Result<Box<dyn CausalLm>> {
    let model_type = files
        .config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::Config("missing `model_type`".into()))?;
    let w = Weights::for_files(files)?;
    match model_type {
        "llama" | "mistral" | "qwen2" => Ok(Box::new(llama::Llama::load(&files.config, &w)?)),
        "opt" => Ok(Box::new(opt::Opt::load(&files.config, &w)?)),
        other => Err(Error::UnsupportedModelType {
            model_type: other.to_string(),
        }),
    }
}

/// The [`ArchSpec`] for a `model_type`, without loading weights.
pub fn arch_for(model_type: &str) -> Result<&'static ArchSpec> {
    match model_type {
        "llama" | "mistral" | "qwen2" => Ok(&llama::ARCH),
        "opt" => Ok(&opt::ARCH),
        other => Err(Error::UnsupportedModelType {
            model_type: other.to_string(),
        }),
    }
}
