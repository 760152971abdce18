//! OPT (Zhang et al. 2022, arXiv 2205.01068; `model_type` `opt`): learned
//! absolute positions with an offset of 2, multi-head attention with biases
//! and the query scaled by `head_dim^-1/2`, a ReLU MLP (`fc1`, `fc2`),
//! LayerNorm before (`do_layer_norm_before`, opt-125m and most sizes) or
//! after (opt-350m) each sublayer, and `project_in`/`project_out` when
//! `word_embed_proj_dim` differs from `hidden_size` (opt-350m). The output
//! layer is tied to the token embeddings.
//!
//! Tensor names: `model.decoder.{embed_tokens, embed_positions, project_in,
//! project_out, final_layer_norm}`, `model.decoder.layers.N.{self_attn.{q,k,v,
//! out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}`, `lm_head`.

use crate::attention::{positions, SelfAttention, Step};
use crate::config::Cfg;
use crate::{
    ArchSpec, Batch, BlockRunner, CausalLm, Error, KvCache, Linear, ModelInfo, Observer, Result,
    Weights,
};
use gptq_kernels::cpu;
use serde_json::Value;
use std::sync::Arc;

/// Learned-position offset: OPT's position table has two extra leading rows.
const POSITION_OFFSET: usize = 2;
/// LayerNorm epsilon (fixed in the OPT code, not in the config).
const LN_EPS: f32 = 1e-5;

/// Structure of an OPT block for GPTQ, in the reference's true-sequential order.
pub static ARCH: ArchSpec = ArchSpec {
    name: "opt",
    block_prefix: |i| format!("model.decoder.layers.{i}."),
    sequential_groups: &[
        &["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        &["self_attn.out_proj"],
        &["fc1"],
        &["fc2"],
    ],
    input_points: &[
        &["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
        &["self_attn.out_proj"],
        &["fc1"],
        &["fc2"],
    ],
    // The two LayerNorm outputs (pre-LN) or the stream itself (post-LN).
    stream_points: &[0, 2],
};

/// The fields of `config.json` this file uses.
#[derive(Debug, Clone)]
pub struct OptConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub ffn_dim: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Heads.
    pub num_attention_heads: usize,
    /// Vocabulary.
    pub vocab_size: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Width of the token embeddings (≠ hidden means project_in/out exist).
    pub word_embed_proj_dim: usize,
    /// Pre-LN (true) or post-LN (false).
    pub do_layer_norm_before: bool,
    /// Final LayerNorm present (pre-LN models unless removed).
    pub final_layer_norm: bool,
    /// MLP activation (`relu` or `gelu`).
    pub activation: String,
}

impl OptConfig {
    /// Parses and checks the config.
    pub fn from_json(v: &Value) -> Result<Self> {
        let c = Cfg::new(v);
        let hidden_size = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        c.divides(("hidden_size", hidden_size), ("num_attention_heads", heads))?;
        let activation = c.str_or("activation_function", "relu")?.to_string();
        if !matches!(activation.as_str(), "relu" | "gelu") {
            return Err(Error::Config(format!(
                "OPT activation_function `{activation}` is not supported (relu, gelu)"
            )));
        }
        if !c.bool_or("enable_bias", true)? || !c.bool_or("layer_norm_elementwise_affine", true)? {
            return Err(Error::Config(
                "OPT without biases or LayerNorm affine weights is not supported".into(),
            ));
        }
        let do_layer_norm_before = c.bool_or("do_layer_norm_before", true)?;
        Ok(Self {
            hidden_size,
            ffn_dim: c.usize("ffn_dim")?,
            num_hidden_layers: c.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            vocab_size: c.usize("vocab_size")?,
            max_position_embeddings: c.usize("max_position_embeddings")?,
            word_embed_proj_dim: c.usize_or("word_embed_proj_dim", hidden_size)?,
            do_layer_norm_before,
            final_layer_norm: do_layer_norm_before
                && !c.bool_or("_remove_final_layer_norm", false)?,
            activation,
        })
    }
}

/// A LayerNorm's affine parameters.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Vec<f32>,
    /// Shift.
    pub bias: Vec<f32>,
}

impl LayerNorm {
    fn load(w: &Weights<'_>, name: &str, h: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[h])?.into_data(),
            bias: w.get(&format!("{name}.bias"), &[h])?.into_data(),
        })
    }

    fn apply(&self, x: &[f32], out: &mut [f32]) {
        cpu::layer_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            self.weight.len(),
            LN_EPS,
            out,
        );
    }

    fn apply_in_place(&self, x: &mut [f32]) {
        let mut o = vec![0.0f32; x.len()];
        self.apply(x, &mut o);
        x.copy_from_slice(&o);
    }
}

/// One OPT decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Attention (out_proj is `attn.o`).
    pub attn: SelfAttention,
    /// LayerNorm of the attention sublayer.
    pub self_attn_layer_norm: LayerNorm,
    /// MLP in.
    pub fc1: Linear,
    /// MLP out.
    pub fc2: Linear,
    /// LayerNorm of the MLP sublayer.
    pub final_layer_norm: LayerNorm,
}

/// An OPT model.
pub struct Opt {
    /// Parsed config.
    pub cfg: OptConfig,
    info: ModelInfo,
    embed: Arc<gptq_core::Tensor>,
    positions: gptq_core::Tensor,
    project_in: Option<Linear>,
    project_out: Option<Linear>,
    /// Blocks.
    pub blocks: Vec<Block>,
    final_layer_norm: Option<LayerNorm>,
    lm_head: Linear,
}

impl Block {
    fn load(cfg: &OptConfig, w: &Weights<'_>, i: usize) -> Result<Self> {
        let p = (ARCH.block_prefix)(i);
        let h = cfg.hidden_size;
        let lin = |n: &str, i, o| Linear::load(w, &format!("{p}{n}"), i, o);
        // OPT scales the query by head_dim^-1/2 before the dot product; the
        // shared attention applies the same factor to the scores, so q is
        // used as stored.
        let q = lin("self_attn.q_proj", h, h)?;
        Ok(Self {
            attn: SelfAttention {
                q,
                k: lin("self_attn.k_proj", h, h)?,
                v: lin("self_attn.v_proj", h, h)?,
                o: lin("self_attn.out_proj", h, h)?,
                n_heads: cfg.num_attention_heads,
                n_kv: cfg.num_attention_heads,
                head_dim: h / cfg.num_attention_heads,
                window: None,
            },
            self_attn_layer_norm: LayerNorm::load(w, &format!("{p}self_attn_layer_norm"), h)?,
            fc1: lin("fc1", h, cfg.ffn_dim)?,
            fc2: lin("fc2", cfg.ffn_dim, h)?,
            final_layer_norm: LayerNorm::load(w, &format!("{p}final_layer_norm"), h)?,
        })
    }

    /// Runs the block on the residual stream `x` in place.
    pub fn forward(
        &self,
        x: &mut [f32],
        step: &Step<'_>,
        pre_ln: bool,
        relu: bool,
        cache: &mut [crate::kv_cache::SeqCache],
    ) {
        self.forward_observed(x, step, pre_ln, relu, cache, &mut |_, _| true);
    }

    /// [`Self::forward`], showing each linear layer's input to `observe`
    /// first; stops (returning false) when `observe` returns false.
    pub fn forward_observed(
        &self,
        x: &mut [f32],
        step: &Step<'_>,
        pre_ln: bool,
        relu: bool,
        cache: &mut [crate::kv_cache::SeqCache],
        observe: Observer<'_>,
    ) -> bool {
        let run = |s, t: &mut Vec<f32>| {
            self.segment(s, x, t, step, pre_ln, relu, cache);
            Ok::<(), std::convert::Infallible>(())
        };
        let Ok(done) = ARCH.run_segments(run, observe);
        done
    }

    /// The input of stream point `p` (0: attention, 2: MLP;
    /// [`ArchSpec::stream_points`]) from the residual stream `x`, into `t`:
    /// the normalized stream (pre-LN) or the stream itself (post-LN,
    /// normalized after the residual add).
    fn stream_input(&self, p: usize, x: &[f32], t: &mut Vec<f32>, pre_ln: bool) {
        t.resize(x.len(), 0.0);
        if pre_ln {
            let ln = if p == 0 {
                &self.self_attn_layer_norm
            } else {
                &self.final_layer_norm
            };
            ln.apply(x, t);
        } else {
            t.copy_from_slice(x);
        }
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
        pre_ln: bool,
        relu: bool,
        cache: &mut [crate::kv_cache::SeqCache],
    ) {
        let rows = step.batch.batch * step.batch.seq;
        match s {
            // -> k, v, q
            0 => self.stream_input(0, x, t, pre_ln),
            // -> out_proj
            1 => *t = self.attn.attend(t, step, None, cache),
            // -> fc1
            2 => {
                let a = self.attn.o.forward(t, rows);
                cpu::add_in_place(x, &a);
                if !pre_ln {
                    self.self_attn_layer_norm.apply_in_place(x);
                }
                self.stream_input(2, x, t, pre_ln);
            }
            // -> fc2
            3 => {
                let mut m = self.fc1.forward(t, rows);
                if relu {
                    cpu::relu(&mut m);
                } else {
                    cpu::gelu(&mut m);
                }
                *t = m;
            }
            _ => {
                let m = self.fc2.forward(t, rows);
                cpu::add_in_place(x, &m);
                if !pre_ln {
                    self.final_layer_norm.apply_in_place(x);
                }
                t.clear();
            }
        }
    }

    /// The linear layer named `name` (an [`ARCH`] name).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        Some(match name {
            "self_attn.q_proj" => &mut self.attn.q,
            "self_attn.k_proj" => &mut self.attn.k,
            "self_attn.v_proj" => &mut self.attn.v,
            "self_attn.out_proj" => &mut self.attn.o,
            "fc1" => &mut self.fc1,
            "fc2" => &mut self.fc2,
            _ => return None,
        })
    }
}

impl Opt {
    /// Loads the model from a parsed config and its weights.
    pub fn load(config: &Value, w: &Weights<'_>) -> Result<Self> {
        let cfg = OptConfig::from_json(config)?;
        let (h, e) = (cfg.hidden_size, cfg.word_embed_proj_dim);
        let d = "model.decoder.";
        let embed = Arc::new(w.get(&format!("{d}embed_tokens.weight"), &[cfg.vocab_size, e])?);
        let positions = w.get(
            &format!("{d}embed_positions.weight"),
            &[cfg.max_position_embeddings + POSITION_OFFSET, h],
        )?;
        let (project_in, project_out) = if e != h {
            (
                Some(Linear::load(w, &format!("{d}project_in"), e, h)?),
                Some(Linear::load(w, &format!("{d}project_out"), h, e)?),
            )
        } else {
            (None, None)
        };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(&cfg, w, i))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.final_layer_norm {
            Some(LayerNorm::load(w, &format!("{d}final_layer_norm"), h)?)
        } else {
            None
        };
        let lm_head = Linear::new(embed.clone(), None);
        let c = Cfg::new(config);
        let num_params = embed.len()
            + positions.len()
            + project_in.as_ref().map_or(0, Linear::num_params)
            + project_out.as_ref().map_or(0, Linear::num_params)
            + blocks
                .iter()
                .map(|b| {
                    4 * h
                        + [&b.attn.q, &b.attn.k, &b.attn.v, &b.attn.o, &b.fc1, &b.fc2]
                            .iter()
                            .map(|l| l.num_params())
                            .sum::<usize>()
                })
                .sum::<usize>()
            + final_layer_norm.as_ref().map_or(0, |_| 2 * h);
        let info = ModelInfo {
            model_type: "opt".into(),
            vocab_size: cfg.vocab_size,
            max_position_embeddings: cfg.max_position_embeddings,
            num_layers: cfg.num_hidden_layers,
            hidden_size: h,
            bos_token_id: c.token_ids("bos_token_id").first().copied(),
            eos_token_ids: c.token_ids("eos_token_id"),
            num_params,
            num_attention_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        };
        Ok(Self {
            cfg,
            info,
            embed,
            positions,
            project_in,
            project_out,
            blocks,
            final_layer_norm,
            lm_head,
        })
    }

    /// Embeds a batch (token + learned position embeddings): `[batch·seq, hidden]`.
    pub fn embed(&self, batch: &Batch<'_>, pos: &[usize]) -> Result<Vec<f32>> {
        let (h, e) = (self.cfg.hidden_size, self.cfg.word_embed_proj_dim);
        let rows = batch.batch * batch.seq;
        let mut tok = vec![0.0f32; rows * e];
        for b in 0..batch.batch {
            for t in 0..batch.lengths[b] {
                let r = b * batch.seq + t;
                let id = batch.tokens[r] as usize;
                tok[r * e..(r + 1) * e].copy_from_slice(self.embed.row(id));
            }
        }
        let mut x = match &self.project_in {
            Some(p) => p.forward(&tok, rows),
            None => tok,
        };
        for b in 0..batch.batch {
            for t in 0..batch.lengths[b] {
                let r = b * batch.seq + t;
                let p = pos[r];
                if p >= self.cfg.max_position_embeddings {
                    return Err(Error::Input(format!(
                        "position {p} is past OPT's {} learned positions",
                        self.cfg.max_position_embeddings
                    )));
                }
                let pe = self.positions.row(p + POSITION_OFFSET);
                for (v, pv) in x[r * h..(r + 1) * h].iter_mut().zip(pe) {
                    *v += pv;
                }
            }
        }
        Ok(x)
    }
}

impl CausalLm for Opt {
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
        let mut x = self.embed(batch, &pos)?;
        let relu = self.cfg.activation == "relu";
        let step = Step {
            batch,
            pos: &pos,
            past: &past,
        };
        for (l, block) in self.blocks.iter().enumerate() {
            block.forward(
                &mut x,
                &step,
                self.cfg.do_layer_norm_before,
                relu,
                &mut cache.layers[l],
            );
        }
        for (b, len) in batch.lengths.iter().enumerate() {
            cache.lens[b] += len;
        }
        if let Some(ln) = &self.final_layer_norm {
            ln.apply_in_place(&mut x);
        }
        Ok(match &self.project_out {
            Some(p) => p.forward(&x, batch.batch * batch.seq),
            None => x,
        })
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
            "self_attn.out_proj" => &b.attn.o,
            "fc1" => &b.fc1,
            "fc2" => &b.fc2,
            other => unreachable!("ARCH names a linear `{other}` that Block lacks"),
        };
        ARCH.linear_layers().map(|n| (n, by_name(n))).collect()
    }

    fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}

/// An OPT model opened layer by layer (see [`crate::layerwise`]).
pub struct OptLayers<'a> {
    cfg: OptConfig,
    embed: gptq_core::Tensor,
    positions: gptq_core::Tensor,
    project_in: Option<Linear>,
    w: Weights<'a>,
}

impl<'a> OptLayers<'a> {
    /// Parses the config and loads the embeddings (and `project_in`) only.
    pub fn open(config: &Value, w: Weights<'a>) -> Result<Self> {
        let cfg = OptConfig::from_json(config)?;
        let (h, e) = (cfg.hidden_size, cfg.word_embed_proj_dim);
        let embed = w.get("model.decoder.embed_tokens.weight", &[cfg.vocab_size, e])?;
        let positions = w.get(
            "model.decoder.embed_positions.weight",
            &[cfg.max_position_embeddings + POSITION_OFFSET, h],
        )?;
        let project_in = if e != h {
            Some(Linear::load(&w, "model.decoder.project_in", e, h)?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            embed,
            positions,
            project_in,
            w,
        })
    }
}

struct OptBlockRunner {
    block: Block,
    pre_ln: bool,
    relu: bool,
}

impl BlockRunner for OptBlockRunner {
    fn segment(&self, s: usize, x: &mut [f32], t: &mut Vec<f32>, seq: usize) -> Result<()> {
        crate::layerwise::single_sequence(seq, |step, cache| {
            self.block
                .segment(s, x, t, step, self.pre_ln, self.relu, cache)
        });
        Ok(())
    }

    fn point_input(&self, p: usize, x: &[f32], t: &mut Vec<f32>) -> Result<()> {
        crate::layerwise::check_stream_point(&ARCH, p)?;
        self.block.stream_input(p, x, t, self.pre_ln);
        Ok(())
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        self.block.linear_mut(name)
    }

    fn arch(&self) -> &'static ArchSpec {
        &ARCH
    }

    fn opt_view(&self) -> Option<crate::OptBlockView<'_>> {
        let b = &self.block;
        fn ln(n: &LayerNorm) -> (&[f32], &[f32]) {
            (&n.weight, &n.bias)
        }
        Some(crate::OptBlockView {
            attn_norm: ln(&b.self_attn_layer_norm),
            mlp_norm: ln(&b.final_layer_norm),
            eps: LN_EPS,
            pre_ln: self.pre_ln,
            relu: self.relu,
            n_heads: b.attn.n_heads,
            head_dim: b.attn.head_dim,
            linears: vec![
                ("self_attn.q_proj", &b.attn.q),
                ("self_attn.k_proj", &b.attn.k),
                ("self_attn.v_proj", &b.attn.v),
                ("self_attn.out_proj", &b.attn.o),
                ("fc1", &b.fc1),
                ("fc2", &b.fc2),
            ],
        })
    }
}

impl crate::LayerwiseModel for OptLayers<'_> {
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
        if tokens.len() > self.cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "a calibration sequence of {} tokens is longer than OPT's {} positions",
                tokens.len(),
                self.cfg.max_position_embeddings
            )));
        }
        let tok: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.embed.row(t as usize).iter().copied())
            .collect();
        let mut x = match &self.project_in {
            Some(p) => p.forward(&tok, tokens.len()),
            None => tok,
        };
        let h = self.cfg.hidden_size;
        for (t, row) in x.chunks_mut(h).enumerate() {
            for (v, p) in row.iter_mut().zip(self.positions.row(t + POSITION_OFFSET)) {
                *v += p;
            }
        }
        Ok(x)
    }

    fn block(&self, i: usize) -> Result<Box<dyn BlockRunner + '_>> {
        let block = Block::load(&self.cfg, &self.w, i)?;
        Ok(Box::new(OptBlockRunner {
            block,
            pre_ln: self.cfg.do_layer_norm_before,
            relu: self.cfg.activation == "relu",
        }))
    }
}
