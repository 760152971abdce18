//! The Llama family: Llama 1–3, Mistral, Qwen2 and SmolLM (`model_type`
//! `llama`, `mistral`, `qwen2`). Pre-norm blocks with RMSNorm, rotary
//! positions, grouped-query attention (q/k/v biases when the checkpoint has
//! them, as Qwen2 does), a SwiGLU MLP, and optionally tied embeddings.
//!
//! Tensor names: `model.embed_tokens`, `model.layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}`,
//! `model.norm`, `lm_head`.

use crate::attention::{positions, SelfAttention, Step};
use crate::config::Cfg;
use crate::rope::Rope;
use crate::{
    ArchSpec, Batch, BlockRunner, CausalLm, Error, KvCache, Linear, ModelInfo, Observer, Result,
    Weights,
};
use gptq_kernels::cpu;
use rayon::prelude::*;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

/// Structure of a Llama-family block for GPTQ. True-sequential order follows
/// the GPTQ reference: attention inputs (k, v, q), then the output
/// projection, then the MLP inputs (up, gate), then `down_proj`.
pub static ARCH: ArchSpec = ArchSpec {
    name: "llama",
    block_prefix: |i| format!("model.layers.{i}."),
    sequential_groups: &[
        &["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        &["self_attn.o_proj"],
        &["mlp.up_proj", "mlp.gate_proj"],
        &["mlp.down_proj"],
    ],
    input_points: &[
        &["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        &["self_attn.o_proj"],
        &["mlp.up_proj", "mlp.gate_proj"],
        &["mlp.down_proj"],
    ],
    // The two RMSNorm outputs.
    stream_points: &[0, 2],
};

/// The fields of `config.json` this file uses.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Head dimension (`head_dim`, else hidden / heads).
    pub head_dim: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Output layer shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's sliding window, when enabled.
    pub sliding_window: Option<usize>,
}

impl LlamaConfig {
    /// Parses and checks the config.
    pub fn from_json(v: &Value) -> Result<Self> {
        let c = Cfg::new(v);
        let hidden_size = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        c.divides(("hidden_size", hidden_size), ("num_attention_heads", heads))?;
        let kv = c.usize_or("num_key_value_heads", heads)?;
        c.divides(("num_attention_heads", heads), ("num_key_value_heads", kv))?;
        let head_dim = c.usize_or("head_dim", hidden_size / heads)?;
        if head_dim % 2 != 0 || head_dim == 0 {
            return Err(Error::Config(format!(
                "`head_dim` ({head_dim}) must be even for rotary embeddings"
            )));
        }
        let act = c.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(Error::Config(format!(
                "hidden_act `{act}` is not supported for Llama-family models (only silu)"
            )));
        }
        let model_type = c.str_or("model_type", "llama")?;
        // Qwen2 keeps `sliding_window` in the config but uses it only when
        // `use_sliding_window` is true; Mistral uses it whenever it is set.
        let sliding_window = match model_type {
            "mistral" => c.opt_usize("sliding_window")?,
            "qwen2" if c.bool_or("use_sliding_window", false)? => {
                return Err(Error::Config(
                    "qwen2 `use_sliding_window: true` is not supported".into(),
                ))
            }
            _ => None,
        };
        let cfg = Self {
            hidden_size,
            intermediate_size: c.usize("intermediate_size")?,
            num_hidden_layers: c.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            vocab_size: c.usize("vocab_size")?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings: c.usize_or("max_position_embeddings", 2048)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
            sliding_window,
        };
        if cfg.vocab_size == 0 || cfg.num_hidden_layers == 0 || cfg.intermediate_size == 0 {
            return Err(Error::Config(
                "vocab_size, num_hidden_layers and intermediate_size must be positive".into(),
            ));
        }
        Ok(cfg)
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// RMSNorm before attention.
    pub input_layernorm: Vec<f32>,
    /// Attention.
    pub attn: SelfAttention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: Vec<f32>,
    /// MLP gate.
    pub gate: Linear,
    /// MLP up.
    pub up: Linear,
    /// MLP down.
    pub down: Linear,
}

/// A Llama-family model.
pub struct Llama {
    /// Parsed config.
    pub cfg: LlamaConfig,
    info: ModelInfo,
    /// Embedding matrix `[vocab, hidden]` (f16 for quantized checkpoints).
    embed: Linear,
    /// Blocks.
    pub blocks: Vec<Block>,
    norm: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
}

impl Block {
    fn load(cfg: &LlamaConfig, w: &Weights<'_>, i: usize) -> Result<Self> {
        let p = (ARCH.block_prefix)(i);
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let lin = |n: &str, i, o| Linear::load(w, &format!("{p}{n}"), i, o);
        Ok(Self {
            input_layernorm: w
                .get(&format!("{p}input_layernorm.weight"), &[h])?
                .into_data(),
            attn: SelfAttention {
                q: lin("self_attn.q_proj", h, cfg.num_attention_heads * d)?,
                k: lin("self_attn.k_proj", h, cfg.num_key_value_heads * d)?,
                v: lin("self_attn.v_proj", h, cfg.num_key_value_heads * d)?,
                o: lin("self_attn.o_proj", cfg.num_attention_heads * d, h)?,
                n_heads: cfg.num_attention_heads,
                n_kv: cfg.num_key_value_heads,
                head_dim: d,
                window: cfg.sliding_window,
            },
            post_attention_layernorm: w
                .get(&format!("{p}post_attention_layernorm.weight"), &[h])?
                .into_data(),
            gate: lin("mlp.gate_proj", h, cfg.intermediate_size)?,
            up: lin("mlp.up_proj", h, cfg.intermediate_size)?,
            down: lin("mlp.down_proj", cfg.intermediate_size, h)?,
        })
    }

    /// Runs the block on the residual stream `x` `[batch·seq, hidden]` in place.
    pub fn forward(
        &self,
        x: &mut [f32],
        step: &Step<'_>,
        rope: &Rope,
        eps: f32,
        cache: &mut [crate::kv_cache::SeqCache],
    ) {
        self.forward_observed(x, step, rope, eps, cache, &mut |_, _| true);
    }

    /// [`Self::forward`], showing each linear layer's input to `observe`
    /// (under its [`ARCH`] name) before the layer runs. When `observe`
    /// returns false the block stops there, leaving `x` partly updated, and
    /// this returns false.
    pub fn forward_observed(
        &self,
        x: &mut [f32],
        step: &Step<'_>,
        rope: &Rope,
        eps: f32,
        cache: &mut [crate::kv_cache::SeqCache],
        observe: Observer<'_>,
    ) -> bool {
        let run = |s, t: &mut Vec<f32>| {
            self.segment(s, x, t, step, rope, eps, cache);
            Ok::<(), std::convert::Infallible>(())
        };
        let Ok(done) = ARCH.run_segments(run, observe);
        done
    }

    /// Segment `s` of the forward (see [`crate::BlockRunner::segment`]):
    /// `x` is the residual stream, `t` the input of the linears at
    /// [`ArchSpec::input_points`]`[s]` once the segment is done.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &self,
        s: usize,
        x: &mut [f32],
        t: &mut Vec<f32>,
        step: &Step<'_>,
        rope: &Rope,
        eps: f32,
        cache: &mut [crate::kv_cache::SeqCache],
    ) {
        let rows = step.batch.batch * step.batch.seq;
        match s {
            // -> k, v, q
            0 => self.stream_input(0, x, t, eps),
            // -> o
            1 => *t = self.attn.attend(t, step, Some(rope), cache),
            // -> up, gate
            2 => {
                let a = self.attn.o.forward(t, rows);
                cpu::add_in_place(x, &a);
                self.stream_input(2, x, t, eps);
            }
            // -> down
            3 => {
                let [mut g, u]: [Vec<f32>; 2] =
                    Linear::forward_many(&[&self.gate, &self.up], t, rows)
                        .try_into()
                        .expect("one output per layer");
                cpu::silu_mul(&mut g, &u);
                *t = g;
            }
            _ => {
                let m = self.down.forward(t, rows);
                cpu::add_in_place(x, &m);
                t.clear();
            }
        }
    }

    /// The input of stream point `p` (0 or 2, [`ArchSpec::stream_points`]):
    /// the residual stream `x` under the sublayer's RMSNorm, into `t`.
    fn stream_input(&self, p: usize, x: &[f32], t: &mut Vec<f32>, eps: f32) {
        let norm = if p == 0 {
            &self.input_layernorm
        } else {
            &self.post_attention_layernorm
        };
        t.resize(x.len(), 0.0);
        cpu::rms_norm(x, norm, eps, t);
    }

    /// The linear layer named `name` (an [`ARCH`] name).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "self_attn.q_proj" => &mut self.attn.q,
            "self_attn.k_proj" => &mut self.attn.k,
            "self_attn.v_proj" => &mut self.attn.v,
            "self_attn.o_proj" => &mut self.attn.o,
            "mlp.gate_proj" => &mut self.gate,
            "mlp.up_proj" => &mut self.up,
            "mlp.down_proj" => &mut self.down,
            _ => return None,
        })
    }
}

impl Llama {
    /// Loads the model from a parsed config and its weights.
    pub fn load(config: &Value, w: &Weights<'_>) -> Result<Self> {
        let cfg = LlamaConfig::from_json(config)?;
        let rope = Rope::from_config(config, cfg.head_dim)?;
        // Quantized checkpoints keep an f16-stored embedding (usually also
        // the tied output layer, which dominates decode bytes) as f16.
        let embed = if w.quant().is_some() {
            Linear::load_f16(w, "model.embed_tokens", cfg.hidden_size, cfg.vocab_size)?
        } else {
            Linear::new(
                Arc::new(w.get(
                    "model.embed_tokens.weight",
                    &[cfg.vocab_size, cfg.hidden_size],
                )?),
                None,
            )
        };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(&cfg, w, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = w.get("model.norm.weight", &[cfg.hidden_size])?.into_data();
        // Tied models usually omit lm_head; an untied one must have it.
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            if w.quant().is_some() {
                Linear::load_f16(w, "lm_head", cfg.hidden_size, cfg.vocab_size)?
            } else {
                Linear::load(w, "lm_head", cfg.hidden_size, cfg.vocab_size)?
            }
        } else {
            if !cfg.tie_word_embeddings {
                tracing::warn!("lm_head.weight is missing; using the tied embedding matrix");
            }
            embed.clone()
        };
        let c = Cfg::new(config);
        let num_params = embed.num_params()
            + blocks
                .iter()
                .map(|b| {
                    2 * cfg.hidden_size
                        + [
                            &b.attn.q, &b.attn.k, &b.attn.v, &b.attn.o, &b.gate, &b.up, &b.down,
                        ]
                        .iter()
                        .map(|l| l.num_params())
                        .sum::<usize>()
                })
                .sum::<usize>()
            + norm.len()
            + if lm_head.shares_weight(&embed) {
                0
            } else {
                lm_head.num_params()
            };
        let info = ModelInfo {
            model_type: c.str_or("model_type", "llama")?.to_string(),
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            num_layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
            bos_token_id: c.token_ids("bos_token_id").first().copied(),
            eos_token_ids: c.token_ids("eos_token_id"),
            num_params,
            num_attention_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim,
        };
        Ok(Self {
            cfg,
            info,
            embed,
            blocks,
            norm,
            // After counting parameters: a converted layer no longer shares
            // the embedding's storage.
            lm_head: lm_head.into_output_layer()?,
            rope,
        })
    }

    /// Embeds a batch: `[batch·seq, hidden]` (padding rows are zero).
    pub fn embed(&self, batch: &Batch<'_>) -> Vec<f32> {
        let h = self.cfg.hidden_size;
        let mut x = vec![0.0f32; batch.batch * batch.seq * h];
        for b in 0..batch.batch {
            for t in 0..batch.lengths[b] {
                let id = batch.tokens[b * batch.seq + t] as usize;
                let r = b * batch.seq + t;
                self.embed.row_into(id, &mut x[r * h..(r + 1) * h]);
            }
        }
        x
    }

    /// The rotary tables' source.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn arch(&self) -> &'static ArchSpec {
        &ARCH
    }

    fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers, batch)
    }

    fn forward_hidden(&self, batch: &Batch<'_>, cache: &mut KvCache) -> Result<Vec<f32>> {
        batch.validate(self.cfg.vocab_size)?;
        if cache.batch() != batch.batch {
            return Err(Error::Input(
                "the KV cache was made for another batch size".into(),
            ));
        }
        let past = cache.lens.clone();
        let pos = positions(batch, &past);
        let mut x = self.embed(batch);
        let eps = self.cfg.rms_norm_eps as f32;
        let step = Step {
            batch,
            pos: &pos,
            past: &past,
        };
        for (l, block) in self.blocks.iter().enumerate() {
            block.forward(&mut x, &step, &self.rope, eps, &mut cache.layers[l]);
        }
        for (b, len) in batch.lengths.iter().enumerate() {
            cache.lens[b] += len;
        }
        let mut out = vec![0.0f32; x.len()];
        cpu::rms_norm(&x, &self.norm, eps, &mut out);
        Ok(out)
    }

    fn logits(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        self.lm_head.forward(hidden, rows)
    }

    fn block_linears(&self, i: usize) -> Vec<(&'static str, &Linear)> {
        let b = &self.blocks[i];
        let by_name = |n: &str| match n {
            "self_attn.q_proj" => &b.attn.q,
            "self_attn.k_proj" => &b.attn.k,
            "self_attn.v_proj" => &b.attn.v,
            "self_attn.o_proj" => &b.attn.o,
            "mlp.gate_proj" => &b.gate,
            "mlp.up_proj" => &b.up,
            "mlp.down_proj" => &b.down,
            other => unreachable!("ARCH names a linear `{other}` that Block lacks"),
        };
        ARCH.linear_layers().map(|n| (n, by_name(n))).collect()
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}

/// A Llama-family model opened layer by layer (see [`crate::layerwise`]).
pub struct LlamaLayers<'a> {
    cfg: LlamaConfig,
    rope: Rope,
    /// The embedding matrix `[vocab, hidden]` in f32, loaded by the first
    /// [`LayerwiseModel::embed`] or [`LayerwiseModel::llama_head`] call and
    /// kept from then on; [`LayerwiseModel::embed_all`] (GPTQ calibration)
    /// loads it only for the call, so it is not resident while the blocks
    /// run.
    ///
    /// [`LayerwiseModel::embed`]: crate::LayerwiseModel::embed
    /// [`LayerwiseModel::llama_head`]: crate::LayerwiseModel::llama_head
    /// [`LayerwiseModel::embed_all`]: crate::LayerwiseModel::embed_all
    embed: std::sync::OnceLock<gptq_core::Tensor>,
    w: Weights<'a>,
}

const EMBED: &str = "model.embed_tokens.weight";

impl<'a> LlamaLayers<'a> {
    /// Parses the config and checks that the embedding matrix is there
    /// with its shape (its values are read when first needed).
    pub fn open(config: &Value, w: Weights<'a>) -> Result<Self> {
        let cfg = LlamaConfig::from_json(config)?;
        let rope = Rope::from_config(config, cfg.head_dim)?;
        w.check_shape(EMBED, &[cfg.vocab_size, cfg.hidden_size])?;
        Ok(Self {
            cfg,
            rope,
            embed: std::sync::OnceLock::new(),
            w,
        })
    }

    /// Reads the embedding matrix from the checkpoint.
    fn load_embed(&self) -> Result<gptq_core::Tensor> {
        self.w
            .get(EMBED, &[self.cfg.vocab_size, self.cfg.hidden_size])
    }

    /// The embedding matrix, loaded once and kept.
    fn embed_table(&self) -> Result<&gptq_core::Tensor> {
        if let Some(t) = self.embed.get() {
            return Ok(t);
        }
        let t = self.load_embed()?;
        Ok(self.embed.get_or_init(|| t))
    }
}

/// The rows of `table` for `tokens` (checked against the vocabulary):
/// `[tokens, hidden]`.
fn embed_rows(table: &gptq_core::Tensor, tokens: &[u32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&t| table.row(t as usize).iter().copied())
        .collect()
}

struct LlamaBlockRunner<'m> {
    block: Block,
    rope: &'m Rope,
    eps: f32,
}

impl BlockRunner for LlamaBlockRunner<'_> {
    fn segment(&self, s: usize, x: &mut [f32], t: &mut Vec<f32>, seq: usize) -> Result<()> {
        crate::layerwise::single_sequence(seq, |step, cache| {
            self.block
                .segment(s, x, t, step, self.rope, self.eps, cache)
        });
        Ok(())
    }

    fn point_input(&self, p: usize, x: &[f32], t: &mut Vec<f32>) -> Result<()> {
        crate::layerwise::check_stream_point(&ARCH, p)?;
        self.block.stream_input(p, x, t, self.eps);
        Ok(())
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.block.linear_mut(name)
    }

    fn arch(&self) -> &'static ArchSpec {
        &ARCH
    }

    fn llama_view(&self) -> Option<crate::LlamaBlockView<'_>> {
        let b = &self.block;
        let a = &b.attn;
        Some(crate::LlamaBlockView {
            input_norm: Cow::Borrowed(&b.input_layernorm),
            post_norm: Cow::Borrowed(&b.post_attention_layernorm),
            eps: self.eps,
            n_heads: a.n_heads,
            n_kv: a.n_kv,
            head_dim: a.head_dim,
            window: a.window,
            inv_freq: Cow::Borrowed(&self.rope.inv_freq),
            linears: vec![
                ("self_attn.q_proj", &a.q),
                ("self_attn.k_proj", &a.k),
                ("self_attn.v_proj", &a.v),
                ("self_attn.o_proj", &a.o),
                ("mlp.gate_proj", &b.gate),
                ("mlp.up_proj", &b.up),
                ("mlp.down_proj", &b.down),
            ],
        })
    }
}

impl crate::LayerwiseModel for LlamaLayers<'_> {
    fn arch(&self) -> &'static ArchSpec {
        &ARCH
    }

    fn num_blocks(&self) -> usize {
        self.cfg.num_hidden_layers
    }

    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        crate::layerwise::check_tokens(tokens, self.cfg.vocab_size)?;
        Ok(embed_rows(self.embed_table()?, tokens))
    }

    fn embed_all(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for s in seqs {
            crate::layerwise::check_tokens(s, self.cfg.vocab_size)?;
        }
        // A table loaded here is dropped on return.
        let loaded;
        let table = match self.embed.get() {
            Some(t) => t,
            None => {
                loaded = self.load_embed()?;
                &loaded
            }
        };
        Ok(seqs.iter().map(|s| embed_rows(table, s)).collect())
    }

    fn block(&self, i: usize) -> Result<Box<dyn BlockRunner + '_>> {
        let block = Block::load(&self.cfg, &self.w, i)?;
        Ok(Box::new(LlamaBlockRunner {
            block,
            rope: &self.rope,
            eps: self.cfg.rms_norm_eps as f32,
        }))
    }

    fn llama_head(&self) -> Result<Option<crate::LlamaHead<'_>>> {
        let (h, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let norm = self.w.get("model.norm.weight", &[h])?.into_data();
        // As `LlamaModel::load`: tied models (and untied ones missing it)
        // use the embedding matrix.
        let lm_head = if !self.cfg.tie_word_embeddings && self.w.contains("lm_head.weight") {
            let l = Linear::load(&self.w, "lm_head", h, v)?;
            std::borrow::Cow::Owned(l.dense_weight().into_owned())
        } else {
            std::borrow::Cow::Borrowed(self.embed_table()?)
        };
        Ok(Some(crate::LlamaHead {
            norm,
            eps: self.cfg.rms_norm_eps as f32,
            lm_head,
        }))
    }

    fn llama_block_raw(
        &self,
        i: usize,
    ) -> Result<Option<crate::LlamaBlockView<'static, crate::RawLinear>>> {
        let c = &self.cfg;
        let p = (ARCH.block_prefix)(i);
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let shapes = [
            ("self_attn.q_proj", h, nh * d),
            ("self_attn.k_proj", h, nkv * d),
            ("self_attn.v_proj", h, nkv * d),
            ("self_attn.o_proj", nh * d, h),
            ("mlp.gate_proj", h, inter),
            ("mlp.up_proj", h, inter),
            ("mlp.down_proj", inter, h),
        ];
        // The seven layers are read (and GPTQ ones unpacked) in parallel.
        let linears = shapes
            .par_iter()
            .map(|&(name, k, n)| {
                let full = format!("{p}{name}");
                let raw = match Linear::read_gptq(&self.w, &full, k, n)? {
                    Some(q) => crate::RawLinear::Gptq(q),
                    None => crate::RawLinear::Dense {
                        weight: self.w.get(&format!("{full}.weight"), &[n, k])?,
                        bias: self
                            .w
                            .get_opt(&format!("{full}.bias"), &[n])?
                            .map(|t| t.into_data()),
                    },
                };
                Ok((name, raw))
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = |n: &str| -> Result<Vec<f32>> {
            Ok(self.w.get(&format!("{p}{n}.weight"), &[h])?.into_data())
        };
        Ok(Some(crate::LlamaBlockView {
            input_norm: Cow::Owned(norm("input_layernorm")?),
            post_norm: Cow::Owned(norm("post_attention_layernorm")?),
            eps: c.rms_norm_eps as f32,
            n_heads: nh,
            n_kv: nkv,
            head_dim: d,
            window: c.sliding_window,
            inv_freq: Cow::Owned(self.rope.inv_freq.clone()),
            linears,
        }))
    }
}
