//! Tokenizer loading: `tokenizer.json` (and a `tokenizer_config.json` after
//! a NUL byte) through `gptq_infer::Tokenizer`, then an encode/decode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tok, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(tok) = std::str::from_utf8(tok) else {
        return;
    };
    let tc = serde_json::from_slice(rest).ok();
    let files = gptq_fuzz::files_with(
        serde_json::json!({"eos_token_id": [2, 3]}),
        Some(tok.to_string()),
        tc,
    );
    let Ok(t) = gptq_infer::Tokenizer::from_model(&files) else {
        return;
    };
    if let Ok(ids) = t.encode("Once upon a time, 123 héllo <s>\n", true) {
        let _ = t.decode(&ids, true);
        let _ = t.decode(&ids, false);
    }
    let _ = t.vocab_size();
});
