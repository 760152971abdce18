//! llama.cpp → Hugging Face: tensor names, the q/k row un-permutation and
//! the `config.json` of a GGUF model, for the architectures this crate
//! supports (see [`SUPPORTED_ARCHS`]).
//!
//! Spec of the metadata keys (`{arch}.embedding_length`, ...):
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! llama.cpp's converter permutes the rows of `attn_q`/`attn_k` (weights and
//! biases) from HF's rotate-half RoPE layout into the interleaved layout of the
//! original Meta checkpoints: per head, HF rows `[0..d/2)` and `[d/2..d)` are
//! interleaved. [`unpermute_rows`] undoes that, as
//! `w.reshape(n_head, d/2, 2, in).swapaxes(1, 2).reshape(rows, in)`, with
//! `n_head` = attention heads for q and key/value heads for k.

use super::reader::{GgufFile, Header, MetaValue, TensorInfo};
use serde_json::{json, Value};

/// GGUF `general.architecture` values this crate converts.
pub const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// GGUF tensors that are dropped on purpose (no HF equivalent needed).
const IGNORED: &[&str] = &["rope_freqs.weight"];

/// One GGUF tensor served under an HF name.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The HF name (`model.layers.0.self_attn.q_proj.weight`).
    pub hf: String,
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub gguf: String,
    /// When set, rows are un-permuted with this many heads.
    pub unpermute_heads: Option<usize>,
}

/// Which head count un-permutes a tensor: q uses the attention heads, k the
/// key/value heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// Not permuted.
    None,
    /// `num_attention_heads`.
    Query,
    /// `num_key_value_heads`.
    Key,
}

/// Maps a llama-architecture GGUF tensor name to its HF name. `None` for
/// names with no HF llama equivalent.
pub fn hf_name(gguf: &str) -> Option<(String, Heads)> {
    let plain = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(p) = plain {
        return Some((p.to_string(), Heads::None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, heads) = match part {
        "attn_norm" => ("input_layernorm", Heads::None),
        "ffn_norm" => ("post_attention_layernorm", Heads::None),
        "attn_q" => ("self_attn.q_proj", Heads::Query),
        "attn_k" => ("self_attn.k_proj", Heads::Key),
        "attn_v" => ("self_attn.v_proj", Heads::None),
        "attn_output" => ("self_attn.o_proj", Heads::None),
        "ffn_gate" => ("mlp.gate_proj", Heads::None),
        "ffn_up" => ("mlp.up_proj", Heads::None),
        "ffn_down" => ("mlp.down_proj", Heads::None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), heads))
}

/// Undoes llama.cpp's q/k row permutation: `data` holds `rows` rows of equal
/// length (any element type; for bytes, a row is its bytes).
pub fn unpermute_rows<T: Copy>(data: &[T], rows: usize, n_head: usize) -> Result<Vec<T>, String> {
    if rows == 0
        || n_head == 0
        || !rows.is_multiple_of(2 * n_head)
        || !data.len().is_multiple_of(rows)
    {
        return Err(format!(
            "cannot un-permute {rows} rows ({} values) into {n_head} heads of an even size",
            data.len()
        ));
    }
    let cols = data.len() / rows;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = h * head_dim + j * 2 + i;
                out.extend_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// Model hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.embedding_length`.
    pub hidden_size: u64,
    /// `{arch}.feed_forward_length`.
    pub intermediate_size: u64,
    /// `{arch}.block_count`.
    pub num_layers: u64,
    /// `{arch}.attention.head_count`.
    pub num_heads: u64,
    /// `{arch}.attention.head_count_kv` (default: `num_heads`).
    pub num_kv_heads: u64,
    /// `{arch}.attention.key_length`, else `hidden_size / num_heads`.
    pub head_dim: u64,
    /// `{arch}.attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f64,
    /// `{arch}.rope.freq_base` (default 10000).
    pub rope_theta: f64,
    /// `{arch}.context_length`.
    pub context_length: Option<u64>,
}

fn meta_u64(h: &Header, key: &str) -> Result<Option<u64>, String> {
    match h.get(key) {
        None => Ok(None),
        Some(MetaValue::Array(a)) => {
            // Some files store per-layer values; accept them when all agree.
            let vals: Option<Vec<u64>> = a.iter().map(MetaValue::as_u64).collect();
            match vals.as_deref() {
                Some([first, rest @ ..]) if rest.iter().all(|v| v == first) => Ok(Some(*first)),
                _ => Err(format!(
                    "metadata `{key}` varies per layer, which is not supported"
                )),
            }
        }
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("metadata `{key}` is not a non-negative integer")),
    }
}

fn required(h: &Header, key: &str) -> Result<u64, String> {
    match meta_u64(h, key)? {
        Some(0) => Err(format!("metadata `{key}` is 0")),
        Some(v) => Ok(v),
        None => Err(format!("missing metadata `{key}`")),
    }
}

/// The architecture, checked against [`SUPPORTED_ARCHS`].
pub fn architecture(h: &Header) -> Result<String, String> {
    let arch = h
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or("missing metadata `general.architecture`")?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(format!(
            "unsupported GGUF architecture `{arch}` (supported: {})",
            SUPPORTED_ARCHS.join(", ")
        ));
    }
    Ok(arch.to_string())
}

impl LlamaParams {
    /// Reads and checks the hyper-parameters.
    pub fn from_header(h: &Header) -> Result<Self, String> {
        let arch = architecture(h)?;
        let k = |s: &str| format!("{arch}.{s}");
        let hidden_size = required(h, &k("embedding_length"))?;
        let num_heads = required(h, &k("attention.head_count"))?;
        let num_kv_heads = meta_u64(h, &k("attention.head_count_kv"))?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "{num_heads} attention heads are not a multiple of {num_kv_heads} key/value heads"
            ));
        }
        let head_dim = match meta_u64(h, &k("attention.key_length"))? {
            Some(d) if d > 0 => d,
            _ if hidden_size % num_heads == 0 => hidden_size / num_heads,
            _ => {
                return Err(format!(
                    "hidden size {hidden_size} is not a multiple of {num_heads} heads"
                ))
            }
        };
        let f = |key: String| -> Result<Option<f64>, String> {
            h.get(&key)
                .map(|v| {
                    v.as_f64()
                        .ok_or(format!("metadata `{key}` is not a number"))
                })
                .transpose()
        };
        Ok(Self {
            hidden_size,
            intermediate_size: required(h, &k("feed_forward_length"))?,
            num_layers: required(h, &k("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f(k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_theta: f(k("rope.freq_base"))?.unwrap_or(10000.0),
            context_length: meta_u64(h, &k("context_length"))?,
            arch,
        })
    }
}

/// The GGUF tensors served under HF names, in file order. Unknown tensors
/// are an error (a silently dropped weight would give a wrong model).
pub fn tensor_map(h: &Header, p: &LlamaParams) -> Result<Vec<Mapped>, String> {
    let mut out = Vec::new();
    for t in &h.tensors {
        if IGNORED.contains(&t.name.as_str()) {
            tracing::warn!("ignoring GGUF tensor `{}` (no HF equivalent)", t.name);
            continue;
        }
        let (hf, heads) = hf_name(&t.name).ok_or_else(|| {
            format!(
                "tensor `{}` has no Hugging Face {} equivalent",
                t.name, p.arch
            )
        })?;
        if let Some(layer) = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
        {
            if layer.parse::<u64>().map_or(true, |l| l >= p.num_layers) {
                return Err(format!(
                    "tensor `{}` is past the {} layers of the model",
                    t.name, p.num_layers
                ));
            }
        }
        let unpermute_heads = match heads {
            Heads::None => None,
            Heads::Query => Some(p.num_heads as usize),
            Heads::Key => Some(p.num_kv_heads as usize),
        };
        if let Some(n) = unpermute_heads {
            let rows = t.shape().first().copied().unwrap_or(0);
            if t.ne.len() > 2 || rows % (2 * n) != 0 {
                return Err(format!(
                    "tensor `{}` with shape {:?} does not split into {n} heads of an even size",
                    t.name,
                    t.shape()
                ));
            }
        }
        out.push(Mapped {
            hf,
            gguf: t.name.clone(),
            unpermute_heads,
        });
    }
    if !out.iter().any(|m| m.gguf == "token_embd.weight") {
        return Err("missing tensor `token_embd.weight`".into());
    }
    Ok(out)
}

/// True when the model has no `output.weight`, or one stored identically to
/// `token_embd.weight` (as llama2.c exports do).
pub fn tied_embeddings(f: &GgufFile) -> bool {
    let h = f.header();
    let (Some(out), Some(emb)) = (h.tensor("output.weight"), h.tensor("token_embd.weight")) else {
        return true;
    };
    let same = |a: &TensorInfo, b: &TensorInfo| a.ne == b.ne && a.ggml_type == b.ggml_type;
    same(out, emb) && f.bytes(out) == f.bytes(emb)
}

fn token_id(h: &Header, key: &str) -> Option<u64> {
    h.get(key).and_then(MetaValue::as_u64)
}

/// The vocabulary size: rows of the embedding, else the token list length.
pub fn vocab_size(h: &Header) -> Option<u64> {
    h.tensor("token_embd.weight")
        .and_then(|t| t.ne.get(1).copied())
        .or_else(|| {
            h.get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(|a| a.len() as u64)
        })
}

/// The HF `config.json` of a llama-architecture GGUF.
pub fn llama_config(f: &GgufFile, p: &LlamaParams) -> Value {
    let h = f.header();
    let mut c = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_layers,
        "num_attention_heads": p.num_heads,
        "num_key_value_heads": p.num_kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": vocab_size(h),
        "max_position_embeddings": p.context_length.unwrap_or(2048),
        "rms_norm_eps": p.rms_norm_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": rope_scaling(h, &p.arch),
        "hidden_act": "silu",
        "attention_bias": h.tensor("blk.0.attn_q.bias").is_some(),
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": tied_embeddings(f),
        "torch_dtype": "float32",
        "use_cache": true,
    });
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = token_id(h, key) {
            c[field] = json!(id);
        }
    }
    c
}

fn rope_scaling(h: &Header, arch: &str) -> Value {
    let kind = h
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(MetaValue::as_str);
    let factor = h
        .get(&format!("{arch}.rope.scaling.factor"))
        .and_then(MetaValue::as_f64);
    match (kind, factor) {
        (Some("linear"), Some(f)) if f != 1.0 => {
            json!({"type": "linear", "rope_type": "linear", "factor": f})
        }
        (Some("none") | None, _) => Value::Null,
        (Some(k), _) => {
            tracing::warn!("GGUF rope scaling `{k}` is not carried into config.json");
            Value::Null
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        let n = |s: &str| hf_name(s);
        assert_eq!(
            n("token_embd.weight"),
            Some(("model.embed_tokens.weight".into(), Heads::None))
        );
        assert_eq!(
            n("blk.12.attn_q.weight"),
            Some((
                "model.layers.12.self_attn.q_proj.weight".into(),
                Heads::Query
            ))
        );
        assert_eq!(
            n("blk.0.attn_k.bias"),
            Some(("model.layers.0.self_attn.k_proj.bias".into(), Heads::Key))
        );
        assert_eq!(
            n("blk.3.ffn_norm.weight").unwrap().0,
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            n("blk.3.attn_norm.weight").unwrap().0,
            "model.layers.3.input_layernorm.weight"
        );
        assert_eq!(
            n("blk.3.attn_output.weight").unwrap().0,
            "model.layers.3.self_attn.o_proj.weight"
        );
        assert_eq!(
            n("blk.3.ffn_down.weight").unwrap().0,
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(n("output.weight").unwrap().0, "lm_head.weight");
        for bad in [
            "blk.x.attn_q.weight",
            "blk.01.attn_q.weight",
            "blk.0.attn_q.scale",
            "blk.0.ffn_gate_exps.weight",
            "foo",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(rows, in)
        let (n_head, head_dim, cols) = (3usize, 4usize, 2usize);
        let rows = n_head * head_dim;
        let hf: Vec<u32> = (0..(rows * cols) as u32).collect();
        let mut permuted = Vec::new();
        for h in 0..n_head {
            for j in 0..head_dim / 2 {
                for i in 0..2 {
                    let src = h * head_dim + i * head_dim / 2 + j;
                    permuted.extend_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, rows, n_head).unwrap(), hf);
        // A bias is one value per row.
        let b: Vec<u32> = (0..8).collect();
        assert_eq!(
            unpermute_rows(&b, 8, 2).unwrap(),
            vec![0, 2, 1, 3, 4, 6, 5, 7]
        );
        assert!(unpermute_rows(&b, 8, 3).is_err());
        assert!(unpermute_rows(&b, 0, 1).is_err());
    }
}
