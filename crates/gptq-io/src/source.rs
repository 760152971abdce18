//! Where a model comes from, resolved into one [`ModelFiles`]:
//!
//! 1. a local HF folder (`config.json`, safetensors, tokenizer files);
//! 2. a `.gguf` file (converted in memory: HF names, config, tokenizer);
//! 3. a Hub id `ORG/NAME` found in the HF cache
//!    (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`,
//!    layout `models--ORG--NAME/snapshots/REV/`);
//! 4. the same id downloaded with hf-hub, unless `HF_HUB_OFFLINE=1`.

use crate::safetensors::{shards_of_index, SafetensorsSource};
use crate::{Error, Result, WeightSource};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A model's files, opened: config, lazy weights and tokenizer.
pub struct ModelFiles {
    /// A display name (folder, file or Hub id).
    pub name: String,
    /// The folder the files came from (`None` for a `.gguf` opened in memory).
    pub dir: Option<PathBuf>,
    /// `config.json`.
    pub config: Value,
    /// The tensors under HF names.
    pub weights: Box<dyn WeightSource>,
    /// `tokenizer.json` contents, when present.
    pub tokenizer_json: Option<String>,
    /// `tokenizer_config.json`, when present (chat template, special tokens).
    pub tokenizer_config: Option<Value>,
    /// `generation_config.json`, when present.
    pub generation_config: Option<Value>,
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                hint: String::new(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Opens a local HF folder.
pub fn open_dir(dir: &Path) -> Result<ModelFiles> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::MissingFile {
            path: config_path,
            hint: "; a model folder needs config.json next to its safetensors".into(),
        });
    }
    let config = read_json(&config_path)?;
    if !config.is_object() {
        return Err(Error::Json {
            path: config_path,
            msg: "expected a JSON object".into(),
        });
    }
    let weights = SafetensorsSource::open_dir(dir)?;
    let tok = dir.join("tokenizer.json");
    let tokenizer_json = if tok.is_file() {
        Some(std::fs::read_to_string(&tok).map_err(|e| Error::io(&tok, e))?)
    } else {
        None
    };
    Ok(ModelFiles {
        name: dir.display().to_string(),
        dir: Some(dir.to_path_buf()),
        config,
        weights: Box::new(weights),
        tokenizer_json,
        tokenizer_config: read_json_opt(&dir.join("tokenizer_config.json"))?,
        generation_config: read_json_opt(&dir.join("generation_config.json"))?,
    })
}

/// The HF hub cache folder, following the Python library's variables.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    hf_hub::Cache::from_env().path().clone()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim(),
            "1" | "true" | "TRUE" | "True" | "ON" | "on" | "yes"
        )
    })
}

/// Looks up a Hub id in the cache: the snapshot `refs/main` points at, else
/// the only (or newest) snapshot that holds a `config.json`.
pub fn find_in_cache(cache: &Path, repo_id: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snaps = root.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(root.join("refs").join("main")) {
        let p = snaps.join(rev.trim());
        if p.join("config.json").is_file() {
            return Some(p);
        }
    }
    let mut cands: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| {
            (
                p.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    cands.sort();
    cands.pop().map(|(_, p)| p)
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

/// Downloads the files of `repo_id` needed to run it and returns the snapshot folder.
fn download(repo_id: &str) -> Result<PathBuf> {
    let err = |msg: String| Error::Source {
        spec: repo_id.to_string(),
        msg,
    };
    let cache = hf_hub::Cache::new(hub_cache_dir());
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(true)
        .build()
        .map_err(|e| err(format!("cannot start the Hub client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    // The repository listing with each file's size and, for LFS files, its
    // SHA-256 (`?blobs=true`), to check every download against.
    let listing = repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_string().map_err(|e| e.to_string()))
        .map_err(|e| {
            err(format!(
                "cannot reach the Hugging Face Hub: {e} (set HF_HUB_OFFLINE=1 to use only the cache)"
            ))
        })?;
    let blobs = parse_blob_listing(&listing).map_err(|m| err(format!("Hub listing: {m}")))?;
    let files: Vec<String> = blobs.keys().cloned().collect();
    let has = |f: &str| files.iter().any(|x| x == f);
    let mut wanted: Vec<String> = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "quantize_config.json",
        "special_tokens_map.json",
    ]
    .iter()
    .filter(|f| has(f))
    .map(|f| f.to_string())
    .collect();
    if !has("config.json") {
        return Err(err("the repository has no config.json".into()));
    }
    if has("model.safetensors.index.json") {
        let idx = repo
            .get("model.safetensors.index.json")
            .map_err(|e| err(e.to_string()))?;
        for s in shards_of_index(&idx)? {
            wanted.push(
                s.file_name()
                    .expect("shard file name")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    } else {
        let st: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
            .collect();
        if st.is_empty() {
            return Err(err(
                "the repository has no safetensors weights (pytorch .bin is not supported)".into(),
            ));
        }
        wanted.extend(st.into_iter().cloned());
    }
    let mut dir = None;
    for f in &wanted {
        let p = repo
            .get(f)
            .map_err(|e| err(format!("downloading {f}: {e}")))?;
        if let Some(want) = blobs.get(f) {
            if let Err(m) = verify_blob(&p, want) {
                // Drop the bad copy so that the next run downloads it again.
                if let Ok(blob) = std::fs::canonicalize(&p) {
                    let _ = std::fs::remove_file(blob);
                }
                let _ = std::fs::remove_file(&p);
                return Err(err(format!(
                    "downloading {f}: {m}; the corrupt copy was removed, run again"
                )));
            }
        }
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| err("nothing was downloaded".into()))
}

/// What the Hub says about one file of a repository.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlobInfo {
    /// Size in bytes, when listed.
    pub size: Option<u64>,
    /// Lowercase hex SHA-256 of an LFS file's contents.
    pub sha256: Option<String>,
}

/// Parses the Hub's `GET /api/models/ORG/NAME/revision/REV?blobs=true`
/// answer: `siblings` of `{rfilename, size, lfs: {sha256, size}}`.
pub fn parse_blob_listing(text: &str) -> std::result::Result<BTreeMap<String, BlobInfo>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let sibs = v
        .get("siblings")
        .and_then(Value::as_array)
        .ok_or("no `siblings` list")?;
    let mut out = BTreeMap::new();
    for s in sibs {
        let Some(name) = s.get("rfilename").and_then(Value::as_str) else {
            return Err("a sibling has no `rfilename`".into());
        };
        let lfs = s.get("lfs").filter(|l| l.is_object());
        let sha256 = lfs
            .and_then(|l| l.get("sha256").or_else(|| l.get("oid")))
            .and_then(Value::as_str)
            .map(|h| h.trim_start_matches("sha256:").to_ascii_lowercase())
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let size = s
            .get("size")
            .and_then(Value::as_u64)
            .or_else(|| lfs.and_then(|l| l.get("size")).and_then(Value::as_u64));
        out.insert(name.to_string(), BlobInfo { size, sha256 });
    }
    Ok(out)
}

/// Lowercase hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks a downloaded file against the Hub's size and SHA-256.
pub fn verify_blob(path: &Path, want: &BlobInfo) -> std::result::Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if let Some(size) = want.size {
        if len != size {
            return Err(format!("{len} bytes, but the Hub lists {size}"));
        }
    }
    if let Some(h) = &want.sha256 {
        let got = sha256_file(path).map_err(|e| e.to_string())?;
        if &got != h {
            return Err(format!("SHA-256 {got} differs from the Hub's {h}"));
        }
    }
    Ok(())
}

/// Resolves `spec` (folder, `.gguf` file or Hub id) and opens it.
pub fn open_model(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return open_dir(path);
    }
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return crate::gguf::open_model(path);
        }
        if crate::safetensors::is_torch_checkpoint(path) {
            return Err(Error::Source {
                spec: spec.to_string(),
                msg: crate::safetensors::TORCH_REFUSAL.into(),
            });
        }
        return Err(Error::Source {
            spec: spec.to_string(),
            msg: "is a file; expected a model folder, a .gguf file or a Hub id like ORG/NAME"
                .into(),
        });
    }
    if !looks_like_hub_id(spec) {
        return Err(Error::Source {
            spec: spec.to_string(),
            msg: "no such folder or file, and not a Hub id of the form ORG/NAME".into(),
        });
    }
    let cache = hub_cache_dir();
    if let Some(dir) = find_in_cache(&cache, spec) {
        let mut m = open_dir(&dir)?;
        m.name = spec.to_string();
        return Ok(m);
    }
    if offline() {
        return Err(Error::Source {
            spec: spec.to_string(),
            msg: format!(
                "not in the HF cache ({}) and HF_HUB_OFFLINE is set; download it first or pass a local folder",
                cache.display()
            ),
        });
    }
    let dir = download(spec)?;
    let mut m = open_dir(&dir)?;
    m.name = spec.to_string();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognized() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("./x"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("plain"));
    }

    #[test]
    fn cache_layout_is_found() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("models--org--m");
        std::fs::create_dir_all(root.join("snapshots/abc")).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc\n").unwrap();
        assert_eq!(find_in_cache(d.path(), "org/m"), None, "no config.json yet");
        std::fs::write(root.join("snapshots/abc/config.json"), "{}").unwrap();
        assert_eq!(
            find_in_cache(d.path(), "org/m"),
            Some(root.join("snapshots/abc"))
        );
        assert_eq!(find_in_cache(d.path(), "org/other"), None);
    }

    #[test]
    fn downloads_are_checked_against_the_hub_listing() {
        let listing = r#"{"id": "o/m", "siblings": [
            {"rfilename": "config.json", "size": 5},
            {"rfilename": "model.safetensors", "size": 3, "lfs": {
                "sha256": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
                "size": 3, "pointerSize": 130}},
            {"rfilename": "weird", "lfs": {"sha256": "not-hex"}}]}"#;
        let b = parse_blob_listing(listing).unwrap();
        assert_eq!(b["config.json"].size, Some(5));
        assert_eq!(b["config.json"].sha256, None);
        assert_eq!(b["weird"], BlobInfo::default());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m");
        std::fs::write(&p, "abc").unwrap();
        verify_blob(&p, &b["model.safetensors"]).unwrap();
        std::fs::write(&p, "abd").unwrap();
        let e = verify_blob(&p, &b["model.safetensors"]).unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        std::fs::write(&p, "abcd").unwrap();
        let e = verify_blob(&p, &b["model.safetensors"]).unwrap_err();
        assert!(e.contains("4 bytes, but the Hub lists 3"), "{e}");
        assert!(parse_blob_listing("{}").is_err());
        assert!(parse_blob_listing("[").is_err());
    }

    #[test]
    fn missing_config_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let e = open_dir(d.path()).err().unwrap().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
