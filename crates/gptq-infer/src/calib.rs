//! Calibration data for GPTQ: where the text comes from and how samples are
//! drawn from it.
//!
//! Sources: plain-text files, JSON-lines files (a `text` field or another
//! named one), either gzip-compressed (`.gz`), parquet files (a string
//! column; feature `parquet`), named sets fetched from the Hugging Face Hub
//! (`wikitext2`, `c4`, `c4-new`: see [`crate::hub_data`]), and lists of
//! strings (like `GPTQConfig(dataset=[...])`).
//!
//! Sampling follows the GPTQ reference for a text corpus: the file sources
//! are joined with "\n\n", tokenized once, and windows of `seqlen` tokens
//! start at seeded uniform offsets. A named set is sampled as the reference
//! samples it. A list of strings instead gives one sample per string
//! (truncated to `seqlen`), as transformers does. The strings come first;
//! the rest of `nsamples` is split evenly between the file corpus and each
//! named set, in that order.

use crate::generate::Rng;
use crate::hub_data::{self, HubEnv, NamedSet};
use crate::{Error, Result, Tokenizer};
use std::io::{BufRead, Read};
use std::path::Path;

/// Where calibration text comes from.
#[derive(Debug, Clone)]
pub enum CalibSource {
    /// A `.txt` (as is), `.jsonl`/`.ndjson` (one JSON object per line; also
    /// `.json.gz` as C4 ships it) or `.parquet` file; `.gz` is decompressed.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// JSON-lines field or parquet column holding the text.
        text_field: String,
    },
    /// A named set from the Hugging Face Hub.
    Named(NamedSet),
    /// Strings given on the command line, one sample each.
    Texts(Vec<String>),
}

impl CalibSource {
    /// A `--dataset` value: an existing file, else a set name, else a file
    /// (reported missing when read).
    pub fn from_spec(spec: &str, text_field: &str) -> Self {
        let path = Path::new(spec);
        match NamedSet::from_name(spec) {
            Some(set) if !path.is_file() => Self::Named(set),
            _ => Self::File {
                path: path.to_path_buf(),
                text_field: text_field.to_string(),
            },
        }
    }
}

/// Reads JSON lines, keeping the string field `text_field` of each object.
fn jsonl_rows(reader: impl BufRead, name: &str, text_field: &str) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Error::Input(format!("{name}:{}: not UTF-8 text", i + 1))
            }
            _ => Error::Input(format!("{name}: {e}")),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let mut v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::Input(format!("{name}:{}: invalid JSON: {e}", i + 1)))?;
        match v.get_mut(text_field).map(serde_json::Value::take) {
            Some(serde_json::Value::String(t)) => rows.push(t),
            _ => {
                return Err(Error::Input(format!(
                    "{name}:{}: no string field `{text_field}` (choose one with --text-field)",
                    i + 1
                )))
            }
        }
    }
    Ok(rows)
}

/// Reads a corpus file into rows of text.
pub(crate) fn read_rows(path: &Path, text_field: &str) -> Result<Vec<String>> {
    let name = path.display().to_string();
    let lower = name.to_ascii_lowercase();
    let gz = lower.ends_with(".gz");
    let inner = if gz {
        &lower[..lower.len() - 3]
    } else {
        &lower[..]
    };
    let ext = inner.rsplit_once('.').map_or("", |(_, e)| e);
    if ext == "parquet" {
        if gz {
            return Err(Error::Input(format!(
                "{name}: gzip-compressed parquet is not read; decompress it first"
            )));
        }
        #[cfg(feature = "parquet")]
        return crate::pq::string_column(path, text_field);
        #[cfg(not(feature = "parquet"))]
        return Err(Error::Input(format!(
            "{name}: parquet calibration files need a build with the `parquet` feature \
             (cargo build --features parquet); pass .txt or .jsonl"
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            let names = if path.components().count() == 1 {
                format!(" (and not a named set: {})", hub_data::NAMES.join(", "))
            } else {
                String::new()
            };
            Error::Input(format!("calibration file {name}: not found{names}"))
        }
        _ => Error::Input(format!("calibration file {name}: {e}")),
    })?;
    let reader: Box<dyn BufRead> = if gz {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::new(file),
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    // `.json.gz` is JSON lines in C4 and most Hub datasets.
    if matches!(ext, "jsonl" | "ndjson") || (gz && ext == "json") {
        return jsonl_rows(reader, &name, text_field);
    }
    let mut text = String::new();
    let mut reader = reader;
    reader
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Error::Input(format!("calibration file {name}: not UTF-8 text"))
            }
            _ => Error::Input(format!("calibration file {name}: {e}")),
        })?;
    Ok(vec![text])
}

/// Draws calibration samples (token windows) from `sources`, fetching named
/// sets with the HF settings of the environment.
pub fn samples(
    tok: &Tokenizer,
    sources: &[CalibSource],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    samples_with(tok, sources, nsamples, seqlen, seed, &HubEnv::from_env())
}

/// [`samples`] with explicit Hub settings.
pub fn samples_with(
    tok: &Tokenizer,
    sources: &[CalibSource],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    env: &HubEnv,
) -> Result<Vec<Vec<u32>>> {
    if sources.is_empty() {
        return Err(Error::Input(format!(
            "no calibration data: pass --dataset NAME|FILE (names: {}) or --calib-text TEXT",
            hub_data::NAMES.join(", ")
        )));
    }
    if nsamples == 0 || seqlen == 0 {
        return Err(Error::Input(
            "--nsamples and --seqlen must be positive".into(),
        ));
    }
    // Fail before any reading or download if a named set cannot be read.
    for s in sources {
        if let CalibSource::Named(set) = s {
            set.readable()?;
        }
    }
    let mut corpus: Option<Vec<String>> = None;
    let mut named: Vec<NamedSet> = Vec::new();
    let mut out: Vec<Vec<u32>> = Vec::new();
    for s in sources {
        match s {
            CalibSource::File { path, text_field } => corpus
                .get_or_insert_with(Vec::new)
                .extend(read_rows(path, text_field)?),
            CalibSource::Named(set) => named.push(*set),
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
    // Strings given as samples count towards nsamples; the fill sources
    // (the file corpus, then each named set) share the rest evenly.
    let rest = nsamples.saturating_sub(out.len());
    let fills = corpus.is_some() as usize + named.len();
    let share = |j: usize| rest / fills + usize::from(j < rest % fills);
    let mut j = 0;
    if let Some(corpus) = corpus {
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
        for _ in 0..share(j) {
            let i = (rng.next_u64() % starts) as usize;
            out.push(ids[i..i + seqlen].to_vec());
        }
        j += 1;
    }
    for set in named {
        let n = share(j);
        j += 1;
        if n > 0 {
            out.extend(hub_data::samples(tok, set, env, n, seqlen, seed)?);
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

    fn gz(path: &Path, text: &str) {
        use std::io::Write;
        let f = std::fs::File::create(path).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    }

    /// C4-like JSON lines: `n` documents, every third one long.
    fn c4_lines(n: usize) -> String {
        (0..n)
            .map(|i| {
                let text = if i % 3 == 0 {
                    format!("Doc {i}. ") + &"Once upon a time there was a cat. ".repeat(20)
                } else {
                    format!("Short {i}.")
                };
                serde_json::json!({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x"})
                    .to_string()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn gzip_json_lines_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c4-train.00000-of-01024.json.gz");
        gz(&p, &c4_lines(7));
        let rows = read_rows(&p, "text").unwrap();
        assert_eq!(rows.len(), 7);
        assert!(rows[1] == "Short 1.", "{:?}", rows[1]);
        let p2 = d.path().join("x.txt.gz");
        gz(&p2, "plain text");
        assert_eq!(read_rows(&p2, "text").unwrap(), ["plain text"]);
        let bad = d.path().join("bad.jsonl.gz");
        std::fs::write(&bad, "not gzip").unwrap();
        let e = read_rows(&bad, "text").unwrap_err().to_string();
        assert!(e.contains("bad.jsonl.gz"), "{e}");
        let e = read_rows(&p, "content").unwrap_err().to_string();
        assert!(e.contains(":1: no string field `content`"), "{e}");
    }

    #[test]
    fn specs_are_names_or_files() {
        assert!(matches!(
            CalibSource::from_spec("c4", "text"),
            CalibSource::Named(NamedSet::C4)
        ));
        assert!(matches!(
            CalibSource::from_spec("c4-new", "text"),
            CalibSource::Named(NamedSet::C4New)
        ));
        assert!(matches!(
            CalibSource::from_spec("wikitext2", "text"),
            CalibSource::Named(NamedSet::Wikitext2)
        ));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c4");
        std::fs::write(&f, "x").unwrap();
        let spec = f.to_str().unwrap();
        assert!(matches!(
            CalibSource::from_spec(spec, "t"),
            CalibSource::File { .. }
        ));
        let e = samples(
            &tok(),
            &[CalibSource::from_spec("nope.txt", "text")],
            4,
            8,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not found") && e.contains("c4-new"), "{e}");
    }

    #[test]
    fn c4_draws_windows_of_long_documents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c4.json.gz");
        gz(&p, &c4_lines(30));
        let t = tok();
        let a = hub_data::samples_from_file(&t, NamedSet::C4, &p, 6, 32, 0).unwrap();
        let b = hub_data::samples_from_file(&t, NamedSet::C4New, &p, 6, 32, 0).unwrap();
        let c = hub_data::samples_from_file(&t, NamedSet::C4, &p, 6, 32, 1).unwrap();
        assert_eq!(a, b, "c4_new calibration is c4's");
        assert_ne!(a, c);
        assert_eq!(a.len(), 6);
        assert!(a.iter().all(|s| s.len() == 32));
        // Reproduce the reference loop with Python's generator directly.
        let docs = read_rows(&p, "text").unwrap();
        let mut py = crate::pyrandom::PyRandom::seed(0);
        for want in &a {
            let ids = loop {
                let i = py.randint(0, docs.len() - 1);
                let ids = t.encode(&docs[i], true).unwrap();
                if ids.len() > 32 {
                    break ids;
                }
            };
            let s = py.randint(0, ids.len() - 32 - 1);
            assert_eq!(&ids[s..s + 32], &want[..]);
        }
        let e = hub_data::samples_from_file(&t, NamedSet::C4, &p, 2, 4096, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no document has more than 4096 tokens"), "{e}");
    }

    #[test]
    fn fill_sources_share_nsamples() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.txt");
        std::fs::write(&p, "Once upon a time there was a cat. ".repeat(50)).unwrap();
        let f = CalibSource::File {
            path: p,
            text_field: "text".into(),
        };
        let texts = CalibSource::Texts(vec!["Hello there".into()]);
        let t = tok();
        let s = samples(&t, &[f.clone(), texts], 5, 16, 0).unwrap();
        assert_eq!(s.len(), 5);
        // Offline without a cached copy, a named set is one clear error.
        let env = HubEnv {
            cache: d.path().join("empty-cache"),
            offline: true,
        };
        let e = samples_with(&t, &[f, CalibSource::Named(NamedSet::C4)], 5, 16, 0, &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HF_HUB_OFFLINE") && e.contains("--dataset FILE"),
            "{e}"
        );
    }

    #[cfg(feature = "parquet")]
    #[test]
    fn parquet_files_and_wikitext2_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("train-00000-of-00001.parquet");
        let row = "Once upon a time there was a cat. ".repeat(5);
        let rows: Vec<Option<&str>> = (0..20)
            .map(|i| {
                if i % 4 == 0 {
                    Some("")
                } else {
                    Some(row.as_str())
                }
            })
            .collect();
        crate::pq::tests::write_fixture(&p, &rows, parquet::basic::Compression::SNAPPY);
        let t = tok();
        let src = [CalibSource::File {
            path: p.clone(),
            text_field: "text".into(),
        }];
        assert_eq!(samples(&t, &src, 4, 16, 0).unwrap().len(), 4);
        let bad = [CalibSource::File {
            path: p.clone(),
            text_field: "n".into(),
        }];
        let e = samples(&t, &bad, 4, 16, 0).unwrap_err().to_string();
        assert!(e.contains("not a string column"), "{e}");
        // wikitext2: the rows joined with " ", windows at Python's offsets.
        let w = hub_data::samples_from_file(&t, NamedSet::Wikitext2, &p, 3, 16, 0).unwrap();
        let all: Vec<String> = rows.iter().flatten().map(|s| s.to_string()).collect();
        let ids = t.encode(&all.join(" "), true).unwrap();
        let mut py = crate::pyrandom::PyRandom::seed(0);
        for want in &w {
            let s = py.randint(0, ids.len() - 16 - 1);
            assert_eq!(&ids[s..s + 16], &want[..]);
        }
    }

    #[cfg(not(feature = "parquet"))]
    #[test]
    fn parquet_needs_the_feature() {
        let e = read_rows(Path::new("x.parquet"), "text")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`parquet` feature"), "{e}");
        let e = samples(&tok(), &[CalibSource::Named(NamedSet::Wikitext2)], 4, 8, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`parquet` feature"), "{e}");
    }
}
