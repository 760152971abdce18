//! Layer-by-layer access to a model, for GPTQ: only the embeddings stay
//! resident; each block is loaded from the (memory-mapped) checkpoint when
//! asked for, run on one calibration sequence at a time with its linear
//! inputs shown to an [`Observer`], edited (quantized weights swapped in),
//! and dropped.

use crate::{ArchSpec, Linear, Observer, Result, Weights};
use gptq_io::ModelFiles;
use std::borrow::Cow;

/// One block, loaded.
pub trait BlockRunner: Send + Sync {
    /// Runs segment `s` of the block's forward on one sequence (causal,
    /// positions `0..seq`). The forward is the chain of segments
    /// `0..=P` (`P` = the number of [`ArchSpec::input_points`]); between
    /// them a sequence's state is `x`, the residual stream `[seq, hidden]`,
    /// and `t`, the pending intermediate: after segment `s < P`, `t` is the
    /// input of the linears `input_points[s]`; after segment `P`, `x` is the
    /// block's output and `t` is empty. A state can be copied and resumed
    /// later, which is how GPTQ calibration avoids recomputing the block
    /// from its input for every group of layers.
    fn segment(&self, s: usize, x: &mut [f32], t: &mut Vec<f32>, seq: usize) -> Result<()>;

    /// Recomputes into `t` the input of input point `p`, one of the
    /// architecture's [`ArchSpec::stream_points`], from the residual
    /// stream `x` of a state standing there: bit for bit what the segment
    /// ending at `p` left in `t`.
    fn point_input(&self, p: usize, x: &[f32], t: &mut Vec<f32>) -> Result<()>;

    /// Runs the whole block on `x` in place, showing each linear's input to
    /// `observe`; returns false when `observe` stopped it early.
    fn forward(&self, x: &mut [f32], seq: usize, observe: Observer<'_>) -> Result<bool> {
        self.arch()
            .run_segments(|s, t| self.segment(s, x, t, seq), observe)
    }

    /// The architecture this block belongs to.
    fn arch(&self) -> &'static ArchSpec;
    /// The linear layer `name` (an [`ArchSpec`] name).
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear>;

    /// The block as plain data in the Llama form, for backends that run the
    /// forward themselves (the GPU calibration forward); `None` when the
    /// block is not of that form.
    fn llama_view(&self) -> Option<LlamaBlockView<'_>> {
        None
    }

    /// The block as plain data in the OPT form (see [`OptBlockView`]);
    /// `None` when it is not of that form.
    fn opt_view(&self) -> Option<OptBlockView<'_>> {
        None
    }
}

/// An OPT decoder block as plain data: LayerNorm (scale and shift) →
/// causal multi-head self-attention (no rotary positions; the learned
/// positions were added to the block-0 input) → residual; LayerNorm →
/// `fc2(act(fc1(x)))` → residual. Pre-LN (`pre_ln`, most OPT models) norms
/// each sublayer's input; post-LN (OPT-350m) norms the stream after each
/// residual add instead. All linears carry biases.
#[derive(Debug, Clone)]
pub struct OptBlockView<'a> {
    /// LayerNorm of the attention sublayer: weight and bias `[hidden]`.
    pub attn_norm: (&'a [f32], &'a [f32]),
    /// LayerNorm of the MLP sublayer: weight and bias `[hidden]`.
    pub mlp_norm: (&'a [f32], &'a [f32]),
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Pre-LN (true) or post-LN.
    pub pre_ln: bool,
    /// The MLP activation is ReLU (else GELU).
    pub relu: bool,
    /// Heads (as many key/value heads).
    pub n_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// The six linears under their [`ArchSpec`] names
    /// (`self_attn.{q,k,v,out}_proj`, `fc1`, `fc2`).
    pub linears: Vec<(&'static str, &'a Linear)>,
}

/// A pre-norm decoder block of the Llama form as plain data: RMSNorm →
/// causal self-attention with rotary positions (HF rotate_half) and
/// grouped-query heads → residual; RMSNorm → SwiGLU MLP
/// (`down(silu(gate(x)) · up(x))`) → residual. Linears may carry biases
/// (Qwen2's q/k/v). `L` is how the linears are held: the block's own
/// [`Linear`]s ([`BlockRunner::llama_view`]) or as the checkpoint stores
/// them ([`RawLinear`], [`LayerwiseModel::llama_block_raw`]).
#[derive(Debug, Clone)]
pub struct LlamaBlockView<'a, L = &'a Linear> {
    /// RMSNorm weight before attention `[hidden]`.
    pub input_norm: Cow<'a, [f32]>,
    /// RMSNorm weight before the MLP `[hidden]`.
    pub post_norm: Cow<'a, [f32]>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Sliding attention window, if any.
    pub window: Option<usize>,
    /// Rotary inverse frequencies `[head_dim / 2]`.
    pub inv_freq: Cow<'a, [f32]>,
    /// The seven linears under their [`ArchSpec`] names
    /// (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`).
    pub linears: Vec<(&'static str, L)>,
}

/// A linear layer as the checkpoint stores it.
#[derive(Debug, Clone)]
pub enum RawLinear {
    /// A GPTQ layer ([`Linear::read_gptq`]): codes, scales, zero points,
    /// `g_idx`, bias.
    Gptq(gptq_core::QLinear),
    /// A dense layer: weight `[out, in]` and bias.
    Dense {
        /// `[out, in]`.
        weight: gptq_core::Tensor,
        /// `[out]`.
        bias: Option<Vec<f32>>,
    },
}

impl RawLinear {
    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            RawLinear::Gptq(q) => (q.out_features, q.in_features),
            RawLinear::Dense { weight, .. } => {
                let s = weight.shape();
                (s[0], s.get(1).copied().unwrap_or(0))
            }
        }
    }
}

/// A model opened for layer-by-layer processing.
pub trait LayerwiseModel: Send + Sync {
    /// The architecture's structure.
    fn arch(&self) -> &'static ArchSpec;
    /// Number of blocks.
    fn num_blocks(&self) -> usize;
    /// Width of the residual stream (a block's input rows).
    fn hidden_size(&self) -> usize;
    /// Input of block 0 for one sequence: `[seq, hidden]`.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// The inputs of block 0 for every sequence of `seqs`, each as
    /// [`Self::embed`] gives it. A model may read its embedding matrix for
    /// this call only instead of keeping it resident (GPTQ calibration
    /// embeds all its samples once, then never again).
    fn embed_all(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        seqs.iter().map(|s| self.embed(s)).collect()
    }
    /// Loads block `i` from the checkpoint.
    fn block(&self, i: usize) -> Result<Box<dyn BlockRunner + '_>>;
    /// The final norm and output layer in the Llama form, for backends that
    /// run the head themselves (GPU perplexity); `None` for other forms.
    fn llama_head(&self) -> Result<Option<LlamaHead<'_>>> {
        Ok(None)
    }
    /// Block `i` in the Llama form with its linears as the checkpoint
    /// stores them (GPTQ layers packed, never repacked for the CPU), each
    /// tensor read once; `None` for other forms. For backends that hold
    /// the whole model their own way (GPU generation).
    fn llama_block_raw(&self, _i: usize) -> Result<Option<LlamaBlockView<'static, RawLinear>>> {
        Ok(None)
    }
}

/// The head of a Llama-form model: `logits = RMSNorm(x)·Wᵀ`.
#[derive(Debug)]
pub struct LlamaHead<'a> {
    /// Final RMSNorm weight `[hidden]`.
    pub norm: Vec<f32>,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Output layer `[vocab, hidden]` (the embedding matrix when tied).
    pub lm_head: std::borrow::Cow<'a, gptq_core::Tensor>,
}

/// Opens `files` for layer-by-layer processing.
pub fn layerwise(files: &ModelFiles) -> Result<Box<dyn LayerwiseModel + '_>> {
    let model_type = files
        .config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| crate::Error::Config("missing `model_type`".into()))?;
    // With the quantize config of a GPTQ checkpoint, whose blocks then load
    // their packed layers (GPU evaluation of quantized models).
    let w = Weights::for_files(files)?;
    match model_type {
        "llama" | "mistral" | "qwen2" => {
            Ok(Box::new(crate::llama::LlamaLayers::open(&files.config, w)?))
        }
        "opt" => Ok(Box::new(crate::opt::OptLayers::open(&files.config, w)?)),
        other => Err(crate::Error::UnsupportedModelType {
            model_type: other.to_string(),
        }),
    }
}

/// Runs `f` with the [`Step`](crate::attention::Step) of one unpadded
/// sequence of `seq` tokens at positions `0..seq` and an empty KV cache —
/// how a block runner sees a calibration sample.
pub(crate) fn single_sequence<R>(
    seq: usize,
    f: impl FnOnce(&crate::attention::Step<'_>, &mut [crate::kv_cache::SeqCache]) -> R,
) -> R {
    let tokens = vec![0u32; seq];
    let len = [seq];
    let batch = crate::Batch::single(&tokens, &len);
    let pos: Vec<usize> = (0..seq).collect();
    let step = crate::attention::Step {
        batch: &batch,
        pos: &pos,
        past: &[0],
    };
    let mut cache = [crate::kv_cache::SeqCache::default()];
    f(&step, &mut cache)
}

/// An error unless `p` is one of `arch`'s [`ArchSpec::stream_points`].
pub(crate) fn check_stream_point(arch: &ArchSpec, p: usize) -> Result<()> {
    if arch.stream_points.contains(&p) {
        Ok(())
    } else {
        Err(crate::Error::Input(format!(
            "{}: input point {p} is not computed from the residual stream alone",
            arch.name
        )))
    }
}

/// Validates tokens against a vocabulary.
pub(crate) fn check_tokens(tokens: &[u32], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(crate::Error::Input(format!(
            "token id {t} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}
