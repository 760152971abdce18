//! Calibration readers: a `.txt` or `.jsonl` file (first byte picks) of
//! arbitrary contents sampled with the stories260K tokenizer.
#![no_main]

use gptq_infer::calib::{samples, CalibSource};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tok() -> &'static gptq_infer::Tokenizer {
    static T: OnceLock<gptq_infer::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let f = gptq_fuzz::files_with(
            serde_json::json!({}),
            Some(gptq_fuzz::stories_tokenizer_json()),
            None,
        );
        gptq_infer::Tokenizer::from_model(&f).expect("stories260K tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ext = ["txt", "jsonl", "ndjson", "parquet"][(sel & 3) as usize];
    let nsamples = ((sel >> 2) & 7) as usize;
    let seqlen = [0usize, 1, 4, 16, 64, 1 << 40][((sel >> 5) % 6) as usize];
    let p = gptq_fuzz::scratch_file(&format!("c.{ext}"), body);
    let field = if sel & 0x80 != 0 { "content" } else { "text" };
    let mut src = vec![CalibSource::File {
        path: p,
        text_field: field.into(),
    }];
    if sel & 0x10 != 0 {
        src.push(CalibSource::Texts(vec![
            String::from_utf8_lossy(body).into_owned()
        ]));
    }
    if let Ok(s) = samples(tok(), &src, nsamples, seqlen, u64::from(sel)) {
        assert!(s.iter().all(|w| !w.is_empty() && w.len() <= seqlen));
    }
});
