//! `config.json`: the Llama-family and OPT config parsers, rope settings,
//! and model construction from the config against an empty checkpoint (which
//! must fail on the first missing tensor, never allocate from config sizes).
#![no_main]

use gptq_models::{llama::LlamaConfig, opt::OptConfig, rope::Rope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(c) = LlamaConfig::from_json(&v) {
        let _ = Rope::from_config(&v, c.head_dim.min(1 << 16));
    }
    let _ = OptConfig::from_json(&v);
    if let Some(t) = v.get("model_type").and_then(|t| t.as_str()) {
        let _ = gptq_models::arch_for(t);
    }
    let files = gptq_fuzz::files_with(v, None, None);
    assert!(gptq_models::load(&files).is_err(), "loaded without weights");
});
