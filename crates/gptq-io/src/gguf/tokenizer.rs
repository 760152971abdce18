//! Hugging Face tokenizer files rebuilt from GGUF tokenizer metadata:
//! `tokenizer.json` (for the `tokenizers` library and transformers),
//! `tokenizer_config.json` and `generation_config.json`.
//!
//! Spec of the `tokenizer.ggml.*` keys:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Two models:
//!
//! - `llama` (sentencepiece BPE with byte fallback): BPE over the token list,
//!   merges derived from the vocabulary and scores as transformers'
//!   `SentencePieceExtractor` derives them (every split of a piece into two
//!   pieces of the vocabulary, ranked by the piece's score, highest first),
//!   `byte_fallback`, a `▁`-prefix/space normalizer, no pre-tokenizer and the
//!   matching decoder.
//! - `gpt2` (byte-level BPE): the stored merges, a ByteLevel pre-tokenizer
//!   preceded by the split that `tokenizer.ggml.pre` names (single digits for
//!   `smollm`, the Llama 3 regex for `llama-bpe`).
//!
//! Tokens of type control (3) and unknown (2) become special added tokens,
//! user-defined ones (4) plain added tokens.

use super::reader::{Header, MetaValue};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `tokenizer.ggml.model` values this module rebuilds.
pub const SUPPORTED_MODELS: &[&str] = &["llama", "gpt2"];

const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer regex (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer metadata of a GGUF file, checked.
#[derive(Debug, Clone)]
pub struct Vocab<'a> {
    /// `tokenizer.ggml.model`.
    pub model: &'a str,
    /// `tokenizer.ggml.pre`, when present.
    pub pre: Option<&'a str>,
    /// The tokens, by id.
    pub tokens: Vec<&'a str>,
    /// Scores by id (empty when absent).
    pub scores: Vec<f32>,
    /// Token types by id (1 = normal when absent).
    pub types: Vec<i64>,
    /// `tokenizer.ggml.merges` (gpt2 models).
    pub merges: Vec<&'a str>,
    /// Whether a BOS token is prepended.
    pub add_bos: bool,
    /// Whether an EOS token is appended.
    pub add_eos: bool,
    /// Whether sentencepiece adds a leading `▁`.
    pub add_space_prefix: bool,
}

fn strings<'a>(h: &'a Header, key: &str) -> Result<Option<Vec<&'a str>>, String> {
    let Some(v) = h.get(key) else { return Ok(None) };
    let a = v
        .as_array()
        .ok_or_else(|| format!("metadata `{key}` is not an array"))?;
    a.iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| format!("metadata `{key}` holds a non-string"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn flag(h: &Header, key: &str, default: bool) -> bool {
    h.get(key).and_then(MetaValue::as_bool).unwrap_or(default)
}

impl<'a> Vocab<'a> {
    /// Reads the tokenizer metadata; `None` when the file has none.
    pub fn from_header(h: &'a Header) -> Result<Option<Self>, String> {
        let Some(model) = h.get("tokenizer.ggml.model") else {
            return Ok(None);
        };
        let model = model
            .as_str()
            .ok_or("metadata `tokenizer.ggml.model` is not a string")?;
        if !SUPPORTED_MODELS.contains(&model) {
            return Err(format!(
                "unsupported tokenizer model `{model}` (supported: {})",
                SUPPORTED_MODELS.join(", ")
            ));
        }
        let tokens = strings(h, "tokenizer.ggml.tokens")?
            .ok_or("missing metadata `tokenizer.ggml.tokens`")?;
        if tokens.is_empty() {
            return Err("metadata `tokenizer.ggml.tokens` is empty".into());
        }
        let n = tokens.len();
        let scores: Vec<f32> = match h.get("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_f64().map(|f| f as f32))
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|s| s.len() == n)
                .ok_or_else(|| format!("metadata `tokenizer.ggml.scores` is not {n} numbers"))?,
        };
        let types: Vec<i64> = match h.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(MetaValue::as_i64).collect::<Option<Vec<_>>>())
                .filter(|s| s.len() == n)
                .ok_or_else(|| {
                    format!("metadata `tokenizer.ggml.token_type` is not {n} integers")
                })?,
        };
        let merges = strings(h, "tokenizer.ggml.merges")?.unwrap_or_default();
        let spm = model == "llama";
        if !spm && merges.is_empty() {
            return Err("gpt2 tokenizer without `tokenizer.ggml.merges`".into());
        }
        if spm && scores.is_empty() {
            return Err("llama tokenizer without `tokenizer.ggml.scores`".into());
        }
        Ok(Some(Self {
            model,
            pre: h.get("tokenizer.ggml.pre").and_then(MetaValue::as_str),
            tokens,
            scores,
            types,
            merges,
            add_bos: flag(h, "tokenizer.ggml.add_bos_token", spm),
            add_eos: flag(h, "tokenizer.ggml.add_eos_token", false),
            add_space_prefix: flag(h, "tokenizer.ggml.add_space_prefix", spm),
        }))
    }

    fn token(&self, h: &Header, key: &str) -> Option<&'a str> {
        let id = h.get(key).and_then(MetaValue::as_u64)?;
        usize::try_from(id)
            .ok()
            .and_then(|i| self.tokens.get(i).copied())
    }

    /// `token → first id` (later duplicates are unreachable and dropped).
    fn ids(&self) -> HashMap<&'a str, u32> {
        let mut m = HashMap::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            m.entry(*t).or_insert(i as u32);
        }
        m
    }

    fn vocab_json(&self) -> Value {
        let mut v = Map::new();
        for (t, i) in self.ids() {
            v.insert(t.to_string(), json!(i));
        }
        Value::Object(v)
    }

    fn added_tokens(&self) -> Vec<Value> {
        self.types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TYPE_CONTROL || t == TYPE_UNKNOWN || t == TYPE_USER_DEFINED)
            .map(|(i, &t)| {
                json!({
                    "id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": t != TYPE_USER_DEFINED,
                })
            })
            .collect()
    }

    /// Sentencepiece merges: every split of each piece into two pieces of the
    /// vocabulary, pieces in id order and splits by (left id, right id), then
    /// stably sorted by the piece's score, highest first.
    pub fn spm_merges(&self) -> Vec<(&'a str, &'a str)> {
        let ids = self.ids();
        let mut all: Vec<(f32, &'a str, &'a str)> = Vec::new();
        let mut local = Vec::new();
        for (i, piece) in self.tokens.iter().enumerate() {
            if ids.get(piece) != Some(&(i as u32)) {
                continue; // a duplicate piece
            }
            local.clear();
            for (at, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(at);
                if let (Some(&il), Some(&ir)) = (ids.get(l), ids.get(r)) {
                    local.push((il, ir, l, r));
                }
            }
            local.sort_by_key(|x| (x.0, x.1));
            let s = self.scores.get(i).copied().unwrap_or(0.0);
            all.extend(local.iter().map(|&(_, _, l, r)| (s, l, r)));
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().map(|(_, l, r)| (l, r)).collect()
    }

    fn gpt2_merges(&self) -> Vec<(&'a str, &'a str)> {
        let ids = self.ids();
        let mut out = Vec::with_capacity(self.merges.len());
        let mut dropped = 0usize;
        for m in &self.merges {
            match m.split_once(' ') {
                Some((l, r))
                    if ids.contains_key(l)
                        && ids.contains_key(r)
                        && ids.contains_key(format!("{l}{r}").as_str()) =>
                {
                    out.push((l, r))
                }
                _ => dropped += 1,
            }
        }
        if dropped > 0 {
            tracing::warn!("dropped {dropped} GGUF merges whose pieces are not in the vocabulary");
        }
        out
    }

    fn template(&self, bos: Option<&str>, eos: Option<&str>) -> Value {
        let bos = bos.filter(|_| self.add_bos);
        let eos = eos.filter(|_| self.add_eos);
        if bos.is_none() && eos.is_none() {
            return Value::Null;
        }
        let ids = self.ids();
        let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let special1 = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 1}});
        let (mut single, mut pair) = (Vec::new(), Vec::new());
        let mut map = Map::new();
        for t in bos.iter().chain(eos.iter()) {
            map.insert(
                t.to_string(),
                json!({"id": t, "ids": [ids.get(t)], "tokens": [t]}),
            );
        }
        single.extend(bos.map(special));
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        single.extend(eos.map(special));
        pair.extend(single.iter().cloned());
        pair.extend(bos.map(special1));
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        pair.extend(eos.map(special1));
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": map})
    }

    fn spm_json(&self, h: &Header) -> Value {
        let unk = self
            .token(h, "tokenizer.ggml.unknown_token_id")
            .or_else(|| {
                self.types
                    .iter()
                    .position(|&t| t == TYPE_UNKNOWN)
                    .map(|i| self.tokens[i])
            })
            .or_else(|| self.tokens.iter().copied().find(|t| *t == "<unk>"));
        let mut normalizers = Vec::new();
        if self.add_space_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": self.template(self.token(h, "tokenizer.ggml.bos_token_id"), self.token(h, "tokenizer.ggml.eos_token_id")),
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": self.vocab_json(), "merges": self.spm_merges(),
            },
        })
    }

    fn gpt2_json(&self, h: &Header) -> Value {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let (pre, ignore_merges) = match self.pre.unwrap_or("default") {
            "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
            "smollm" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                false,
            ),
            "llama-bpe" | "llama3" => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                    byte_level(false)]}),
                true,
            ),
            other => {
                tracing::warn!("GGUF pre-tokenizer `{other}` is not known; using GPT-2's byte-level split, so ids may differ from llama.cpp");
                (byte_level(true), false)
            }
        };
        let bl_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        let post = match self.template(
            self.token(h, "tokenizer.ggml.bos_token_id"),
            self.token(h, "tokenizer.ggml.eos_token_id"),
        ) {
            Value::Null => bl_post,
            t => json!({"type": "Sequence", "processors": [bl_post, t]}),
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": self.added_tokens(),
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": self.vocab_json(), "merges": self.gpt2_merges(),
            },
        })
    }

    /// The `tokenizer.json` contents.
    pub fn tokenizer_json(&self, h: &Header) -> String {
        let v = if self.model == "llama" {
            self.spm_json(h)
        } else {
            self.gpt2_json(h)
        };
        v.to_string()
    }

    /// The `tokenizer_config.json` value (`model_max_length` from the context length).
    pub fn tokenizer_config(&self, h: &Header, model_max_length: Option<u64>) -> Value {
        let spm = self.model == "llama";
        let mut decoder = Map::new();
        for t in self.added_tokens() {
            let id = t["id"].to_string();
            let mut t = t;
            if let Some(o) = t.as_object_mut() {
                o.remove("id");
            }
            decoder.insert(id, t);
        }
        let class = if spm {
            "LlamaTokenizer"
        } else if self.add_bos {
            "PreTrainedTokenizerFast" // GPT2TokenizerFast refuses add_bos_token
        } else {
            "GPT2Tokenizer"
        };
        let mut c = json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "added_tokens_decoder": decoder,
            "bos_token": self.token(h, "tokenizer.ggml.bos_token_id"),
            "eos_token": self.token(h, "tokenizer.ggml.eos_token_id"),
            "unk_token": self.token(h, "tokenizer.ggml.unknown_token_id")
                .or_else(|| if spm { self.types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| self.tokens[i]) } else { None }),
            "pad_token": self.token(h, "tokenizer.ggml.padding_token_id"),
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
            "tokenizer_class": class,
        });
        if spm {
            c["legacy"] = json!(true);
            c["sp_model_kwargs"] = json!({});
            c["spaces_between_special_tokens"] = json!(false);
            c["use_default_system_prompt"] = json!(false);
        } else {
            c["add_prefix_space"] = json!(false);
        }
        if let Some(t) = h.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
            c["chat_template"] = json!(t);
        }
        c
    }
}

/// The `generation_config.json` value (BOS/EOS/pad ids that are present).
pub fn generation_config(h: &Header) -> Value {
    let mut c = Map::new();
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = h.get(key).and_then(MetaValue::as_u64) {
            c.insert(field.into(), json!(id));
        }
    }
    Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::super::build::Builder;
    use super::super::reader::parse_header;
    use super::*;
    use std::str::FromStr;

    fn strs(v: &[&str]) -> MetaValue {
        MetaValue::Array(v.iter().map(|s| MetaValue::Str(s.to_string())).collect())
    }

    fn spm_header() -> Header {
        let toks = [
            "<unk>", "<s>", "</s>", "<0x41>", "▁", "a", "b", "ab", "▁ab", "c",
        ];
        let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.25, -4.0];
        let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1];
        let mut b = Builder::new(3);
        b.meta("tokenizer.ggml.model", MetaValue::Str("llama".into()));
        b.meta("tokenizer.ggml.tokens", strs(&toks));
        b.meta(
            "tokenizer.ggml.scores",
            MetaValue::Array(scores.iter().map(|&s| MetaValue::F32(s)).collect()),
        );
        b.meta(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
        );
        b.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
        b.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
        parse_header(&b.build()).unwrap()
    }

    #[test]
    fn spm_merges_follow_scores() {
        let h = spm_header();
        let v = Vocab::from_header(&h).unwrap().unwrap();
        // "▁ab" (score -0.25) splits as ▁+ab; "ab" (-0.5) as a+b.
        assert_eq!(v.spm_merges(), vec![("▁", "ab"), ("a", "b")]);
    }

    #[test]
    fn spm_tokenizer_loads_and_round_trips() {
        let h = spm_header();
        let v = Vocab::from_header(&h).unwrap().unwrap();
        let tok = tokenizers::Tokenizer::from_str(&v.tokenizer_json(&h)).unwrap();
        let enc = tok.encode("ab abc A", true).unwrap();
        // <s> ▁ab ▁ab c ▁ A(byte) ; "▁" then byte fallback for "A".
        assert_eq!(enc.get_ids(), &[1, 8, 8, 9, 4, 3]);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "ab abc A");
        let cfg = v.tokenizer_config(&h, Some(64));
        assert_eq!(cfg["bos_token"], "<s>");
        assert_eq!(cfg["unk_token"], "<unk>");
        assert_eq!(cfg["add_bos_token"], true);
        assert_eq!(cfg["added_tokens_decoder"]["1"]["content"], "<s>");
        assert_eq!(
            generation_config(&h),
            json!({"bos_token_id": 1, "eos_token_id": 2})
        );
    }

    #[test]
    fn gpt2_tokenizer_splits_digits_for_smollm() {
        let mut b = Builder::new(3);
        // Byte-level pieces: "Ġ" is the space byte.
        let mut toks = vec!["<|endoftext|>", "<|im_start|>"];
        let singles: Vec<String> = ('a'..='z').chain('0'..='9').map(String::from).collect();
        toks.extend(singles.iter().map(String::as_str));
        toks.extend(["Ġ", "12", "ab", "Ġab"]);
        b.meta("tokenizer.ggml.model", MetaValue::Str("gpt2".into()));
        b.meta("tokenizer.ggml.pre", MetaValue::Str("smollm".into()));
        b.meta("tokenizer.ggml.tokens", strs(&toks));
        let types: Vec<MetaValue> = (0..toks.len())
            .map(|i| MetaValue::I32(if i < 2 { 3 } else { 1 }))
            .collect();
        b.meta("tokenizer.ggml.token_type", MetaValue::Array(types));
        b.meta(
            "tokenizer.ggml.merges",
            strs(&["1 2", "a b", "Ġ ab", "x missing"]),
        );
        b.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
        let h = parse_header(&b.build()).unwrap();
        let v = Vocab::from_header(&h).unwrap().unwrap();
        assert!(!v.add_bos);
        let tok = tokenizers::Tokenizer::from_str(&v.tokenizer_json(&h)).unwrap();
        let ids = |s: &str| tok.encode(s, true).unwrap().get_ids().to_vec();
        let id = |t: &str| toks.iter().position(|x| *x == t).unwrap() as u32;
        assert_eq!(
            ids("ab 12"),
            vec![id("ab"), id("Ġ"), id("1"), id("2")],
            "digits split one by one"
        );
        assert_eq!(ids("<|im_start|>ab"), vec![1, id("ab")]);
        assert_eq!(tok.decode(&ids("ab ab 12"), false).unwrap(), "ab ab 12");
        assert_eq!(
            v.tokenizer_config(&h, None)["tokenizer_class"],
            "GPT2Tokenizer"
        );
    }

    #[test]
    fn unsupported_tokenizer_model_is_named() {
        let mut b = Builder::new(3);
        b.meta("tokenizer.ggml.model", MetaValue::Str("t5".into()));
        let h = parse_header(&b.build()).unwrap();
        let e = Vocab::from_header(&h).unwrap_err();
        assert!(e.contains("`t5`") && e.contains("llama, gpt2"), "{e}");
    }
}
