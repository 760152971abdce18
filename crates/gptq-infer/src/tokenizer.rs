//! The model's tokenizer (`tokenizer.json`, read by the `tokenizers` crate)
//! and the special tokens from its config files.

use crate::{Error, Result};
use gptq_io::ModelFiles;

/// A loaded tokenizer with the ids generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end generation (from generation_config, config and
    /// tokenizer_config, deduplicated).
    pub eos_ids: Vec<u32>,
    /// BOS token string, for chat templates.
    pub bos_token: Option<String>,
    /// EOS token string, for chat templates.
    pub eos_token: Option<String>,
}

fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// Parses `tokenizer.json` with the `tokenizers` crate, defensively: the
/// text must first be valid JSON (tokenizers 0.23 panics instead of failing
/// on, e.g., a raw control character inside a `decoder` — found by fuzzing),
/// and any panic left inside the library is caught (with the panic message
/// silenced) and returned as an error.
fn parse_tokenizer_json(json: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(json).map_err(|e| e.to_string())?;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>());
    std::panic::set_hook(hook);
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the tokenizers library failed on it (malformed tokenizer)".into()),
    }
}

impl Tokenizer {
    /// Loads the tokenizer of `files`.
    pub fn from_model(files: &ModelFiles) -> Result<Self> {
        let json = files.tokenizer_json.as_deref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{}: no tokenizer.json found (the model folder needs one)",
                files.name
            ))
        })?;
        let inner = parse_tokenizer_json(json).map_err(|e| {
            Error::Tokenizer(format!("{}: tokenizer.json does not load: {e}", files.name))
        })?;
        let tc = files.tokenizer_config.as_ref();
        let bos_token = token_str(tc.and_then(|t| t.get("bos_token")));
        let eos_token = token_str(tc.and_then(|t| t.get("eos_token")));
        let mut eos_ids = ids_of(
            files
                .generation_config
                .as_ref()
                .and_then(|g| g.get("eos_token_id")),
        );
        eos_ids.extend(ids_of(files.config.get("eos_token_id")));
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            inner,
            eos_ids,
            bos_token,
            eos_token,
        })
    }

    /// Encodes `text`; `special` adds what the tokenizer's post-processor
    /// adds (BOS for Llama-style tokenizers), as transformers does by default.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens when asked.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(json: &str) -> ModelFiles {
        ModelFiles {
            name: "t".into(),
            dir: None,
            config: serde_json::json!({}),
            weights: Box::new(gptq_io::safetensors::SafetensorsSource::open(&[]).unwrap()),
            tokenizer_json: Some(json.into()),
            tokenizer_config: None,
            generation_config: None,
        }
    }

    /// Fuzzing regression (fuzz/ `tokenizer` target): a raw control
    /// character in a decoder made tokenizers 0.23.2 panic
    /// (`decoders/mod.rs:90`, "Helper"); it is now a clean error.
    #[test]
    fn control_character_in_decoder_is_an_error_not_a_panic() {
        let json = "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \
            \"added_tokens\": [], \"normalizer\": null, \"pre_tokenizer\": null, \
            \"post_processor\": null, \"decoder\": {\"type\": \"Seq\u{1}\u{0}\u{0}\u{12}e\", \
            \"decoders\": [{\"type\": \"Fuse\"}]}, \
            \"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0}, \"unk_token\": \"a\"}}";
        let e = Tokenizer::from_model(&files(json)).err().expect("refused");
        assert!(e.to_string().contains("does not load"), "{e}");
    }

    #[test]
    fn not_json_is_an_error() {
        for bad in ["", "{", "[1]", "{\"model\": 3}"] {
            assert!(Tokenizer::from_model(&files(bad)).is_err(), "{bad}");
        }
    }
}
