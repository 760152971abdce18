//! `quantize_config.json` and `config.json`'s `quantization_config`: the
//! parser (incl. `dynamic` rules and their regular expressions), validation,
//! per-module lookup, and a write/read round trip.
#![no_main]

use gptq_io::gptq::{quantize_config_of, QuantizeConfig};
use libfuzzer_sys::fuzz_target;

const MODULES: &[&str] = &[
    "model.layers.0.self_attn.q_proj",
    "model.layers.17.mlp.down_proj",
    "model.decoder.layers.3.fc1",
    "lm_head",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = QuantizeConfig::from_json_str(text) {
        q.validate().expect("parsed configs are valid");
        for m in MODULES {
            let _ = q.layer(m);
        }
        let back = QuantizeConfig::from_json_str(&q.to_json_string()).expect("round trip");
        assert_eq!(back.bits, q.bits);
        assert_eq!(back.group_size, q.group_size);
        assert_eq!(back.dynamic.len(), q.dynamic.len());
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = QuantizeConfig::from_value(&v);
        // As `config.json` (with `quantization_config`) of a folder.
        let dir = gptq_fuzz::scratch_dir("qc");
        std::fs::write(dir.join("config.json"), text).expect("write");
        if let Ok(Some(q)) = quantize_config_of(&dir, &v) {
            for m in MODULES {
                let _ = q.layer(m);
            }
        }
    }
});
