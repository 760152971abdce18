//! GGUF (v1/v2/v3, every metadata and tensor type): the header parser over
//! arbitrary bytes, then the whole model path — architecture, HF names,
//! config, tokenizer reconstruction — and every tensor dequantized.
#![no_main]

use gptq_io::gguf::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_header(data) else { return };
    for t in &h.tensors {
        assert!(t.start >= h.data_start && t.start + t.nbytes <= data.len());
    }
    let p = gptq_fuzz::scratch_file("m.gguf", data);
    let Ok(m) = gptq_io::gguf::open_model(&p) else {
        return;
    };
    if let Some(tok) = &m.tokenizer_json {
        // The rebuilt tokenizer must be valid JSON.
        serde_json::from_str::<serde_json::Value>(tok).expect("tokenizer.json is JSON");
    }
    for name in m.weights.names() {
        let shape = m.weights.shape(&name).expect("listed");
        if let Ok(t) = m.weights.load_f32(&name) {
            assert_eq!(t.shape(), &shape[..]);
        }
        let _ = m.weights.load_raw(&name);
    }
});
