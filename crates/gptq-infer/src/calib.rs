//! Calibration data for GPTQ: where the text comes from and how samples are
//! drawn from it.
//!
//! Sources: plain-text files, JSON-lines files (a `text` field or another
//! named one), and lists of strings (like `GPTQConfig(dataset=[...])`).
//! Sampling follows the GPTQ reference for a text corpus: the sources are
//! joined with "\n\n", tokenized once, and `nsamples` windows of `seqlen`
//! tokens start at seeded uniform offsets. A list of strings instead gives
//! one sample per string (truncated to `seqlen`), as transformers does; with
//! both, the strings come first and windows fill up to `nsamples`.

use crate::generate::Rng;
use crate::{Error, Result, Tokenizer};
use std::path::Path;

/// Where calibration text comes from.
#[derive(Debug, Clone)]
pub enum CalibSource {
    /// A `.txt` (as is) or `.jsonl` (one JSON object per line) file.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// JSON-lines field holding the text.
        text_field: String,
    },
    /// Strings given on the command line, one sample each.
    Texts(Vec<String>),
}

/// Reads a corpus file into rows of text.
fn read_rows(path: &Path, text_field: &str) -> Result<Vec<String>> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Input(format!("calibration file {name}: not found")),
        std::io::ErrorKind::InvalidData => {
            Error::Input(format!("calibration file {name}: not UTF-8 text"))
        }
        _ => Error::Input(format!("calibration file {name}: {e}")),
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "jsonl" | "ndjson" => {
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::Input(format!("{name}:{}: invalid JSON: {e}", i + 1)))?;
                let t = v.get(text_field).and_then(|t| t.as_str()).ok_or_else(|| {
                    Error::Input(format!("{name}:{}: no string field `{text_field}` (choose one with --text-field)", i + 1))
                })?;
                rows.push(t.to_string());
            }
            Ok(rows)
        }
        "parquet" => Err(Error::Input(format!(
            "{name}: parquet calibration files need a build with the `parquet` feature; pass .txt or .jsonl"
        ))),
        _ => Ok(vec![text]),
    }
}

/// Draws calibration samples (token windows) from `sources`.
pub fn samples(
    tok: &Tokenizer,
    sources: &[CalibSource],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if sources.is_empty() {
        return Err(Error::Input(
            "no calibration data: pass --dataset FILE or --calib-text TEXT".into(),
        ));
    }
    if nsamples == 0 || seqlen == 0 {
        return Err(Error::Input(
            "--nsamples and --seqlen must be positive".into(),
        ));
    }
    let mut corpus: Vec<String> = Vec::new();
    let mut out: Vec<Vec<u32>> = Vec::new();
    for s in sources {
        match s {
            CalibSource::File { path, text_field } => corpus.extend(read_rows(path, text_field)?),
            CalibSource::Texts(texts) => {
                for t in texts {
                    let mut ids = tok.encode(t, true)?;
                    ids.truncate(seqlen);
                    if ids.is_empty() {
                        return Err(Error::Input(
                            "a --calib-text string encodes to no tokens".into(),
                        ));
                    }
                    out.push(ids);
                }
            }
        }
    }
    if !corpus.is_empty() {
        let text = corpus.join("\n\n");
        if text.trim().is_empty() {
            return Err(Error::Input("the calibration text is empty".into()));
        }
        let ids = tok.encode(&text, true)?;
        if ids.len() <= seqlen {
            return Err(Error::Input(format!(
                "the calibration text has {} tokens, not more than one window of {seqlen}; pass more text or a smaller --seqlen",
                ids.len()
            )));
        }
        let mut rng = Rng::new(seed);
        // The reference draws i = randint(0, len − seqlen − 1), inclusive.
        let starts = (ids.len() - seqlen) as u64;
        // Strings given as samples count towards nsamples; windows fill the rest.
        for _ in 0..nsamples.saturating_sub(out.len()) {
            let i = (rng.next_u64() % starts) as usize;
            out.push(ids[i..i + seqlen].to_vec());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/tokenizers/stories260k");
        let files = gptq_io::ModelFiles {
            name: "t".into(),
            dir: None,
            config: serde_json::json!({}),
            weights: Box::new(gptq_io::safetensors::SafetensorsSource::open(&[]).unwrap()),
            tokenizer_json: Some(std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()),
            tokenizer_config: None,
            generation_config: None,
        };
        Tokenizer::from_model(&files).unwrap()
    }

    #[test]
    fn windows_are_seeded_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.txt");
        std::fs::write(&p, "Once upon a time there was a cat. ".repeat(50)).unwrap();
        let src = [CalibSource::File {
            path: p,
            text_field: "text".into(),
        }];
        let t = tok();
        let a = samples(&t, &src, 5, 16, 0).unwrap();
        let b = samples(&t, &src, 5, 16, 0).unwrap();
        let c = samples(&t, &src, 5, 16, 1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|s| s.len() == 16));
    }

    #[test]
    fn strings_are_samples_and_bad_input_is_named() {
        let t = tok();
        let s = samples(
            &t,
            &[CalibSource::Texts(vec![
                "Hello there".into(),
                "A cat".into(),
            ])],
            128,
            8,
            0,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        let e = samples(&t, &[], 4, 8, 0).unwrap_err().to_string();
        assert!(e.contains("no calibration data"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("short.txt");
        std::fs::write(&p, "tiny").unwrap();
        let e = samples(
            &t,
            &[CalibSource::File {
                path: p,
                text_field: "text".into(),
            }],
            4,
            64,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not more than one window"), "{e}");
        let p = d.path().join("x.jsonl");
        std::fs::write(&p, "{\"content\": \"hi\"}\n").unwrap();
        let e = samples(
            &t,
            &[CalibSource::File {
                path: p,
                text_field: "text".into(),
            }],
            4,
            64,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--text-field"), "{e}");
    }
}
