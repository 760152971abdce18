//! Named calibration sets, fetched from the Hugging Face Hub and sampled the
//! way the GPTQ reference scripts (`datautils.py` of IST-DASLab/gptq, which
//! AutoGPTQ/GPTQModel examples copy) sample them.
//!
//! The files are looked up in the HF cache first (`$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, layout
//! `datasets--ORG--NAME/snapshots/REV/FILE`) and downloaded there with
//! hf-hub otherwise, unless `HF_HUB_OFFLINE` is set. Python's `datasets`
//! keeps its own cache (`~/.cache/huggingface/datasets`), which is not read.
//!
//! | name | file | samples |
//! | --- | --- | --- |
//! | `wikitext2` | `Salesforce/wikitext` `wikitext-2-raw-v1/train-00000-of-00001.parquet` | windows of the joined train split |
//! | `c4`, `c4-new` | `allenai/c4` `en/c4-train.00000-of-01024.json.gz` | a window of a random long document each |
//!
//! Both draw with Python's generator ([`PyRandom`]) seeded with `--seed`,
//! so with the same token ids the samples are the reference's.

use crate::pyrandom::PyRandom;
use crate::{Error, Result, Tokenizer};
use std::path::{Path, PathBuf};

/// A calibration set known by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedSet {
    /// WikiText-2 raw, train split (`get_wikitext2`).
    Wikitext2,
    /// C4 English, first train shard (`get_c4`).
    C4,
    /// The reference's `c4_new` (`get_c4_new`): its calibration samples are
    /// drawn exactly as `c4`'s; it differs only in its validation text.
    C4New,
}

/// The names `--dataset` accepts, as listed in help texts.
pub const NAMES: &[&str] = &["wikitext2", "c4", "c4-new"];

/// One file of a dataset repository on the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubFile {
    /// Dataset repository id, `ORG/NAME`.
    pub repo: &'static str,
    /// Branch or commit.
    pub revision: &'static str,
    /// Path of the file in the repository.
    pub path: &'static str,
}

impl NamedSet {
    /// The set called `name` (`wikitext2`, `c4`, `c4-new`; `wikitext-2` and
    /// `c4_new` are accepted too).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "wikitext2" | "wikitext-2" => Some(Self::Wikitext2),
            "c4" => Some(Self::C4),
            "c4-new" | "c4_new" => Some(Self::C4New),
            _ => None,
        }
    }

    /// The set's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wikitext2 => "wikitext2",
            Self::C4 => "c4",
            Self::C4New => "c4-new",
        }
    }

    /// The Hub file the set is read from.
    pub fn hub_file(self) -> HubFile {
        match self {
            // `load_dataset('wikitext', 'wikitext-2-raw-v1', split='train')`,
            // stored on the Hub as parquet since the dataset's conversion.
            Self::Wikitext2 => HubFile {
                repo: "Salesforce/wikitext",
                revision: "main",
                path: "wikitext-2-raw-v1/train-00000-of-00001.parquet",
            },
            // `load_dataset('allenai/c4', data_files={'train':
            // 'en/c4-train.00000-of-01024.json.gz'}, split='train')`.
            Self::C4 | Self::C4New => HubFile {
                repo: "allenai/c4",
                revision: "main",
                path: "en/c4-train.00000-of-01024.json.gz",
            },
        }
    }

    /// Whether this build can read the set's file.
    pub fn readable(self) -> Result<()> {
        if self == Self::Wikitext2 && !cfg!(feature = "parquet") {
            return Err(Error::Input(
                "calibration set `wikitext2` is stored as parquet on the Hub, and this gptq was built \
                 without the `parquet` feature (cargo build --features parquet); or pass the text \
                 as a local file with --dataset FILE (.txt, .jsonl)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Where Hub files are looked for, and whether downloading is allowed.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// The HF hub cache folder.
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE` is set: use only the cache.
    pub offline: bool,
}

impl HubEnv {
    /// From `HF_HUB_CACHE` / `HF_HOME` and `HF_HUB_OFFLINE`, as for models.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "on" | "yes"
            )
        });
        Self {
            cache: gptq_io::source::hub_cache_dir(),
            offline,
        }
    }
}

fn repo_of(file: &HubFile) -> hf_hub::Repo {
    hf_hub::Repo::with_revision(
        file.repo.to_string(),
        hf_hub::RepoType::Dataset,
        file.revision.to_string(),
    )
}

/// Looks `file` up in the HF cache: the snapshot its revision's ref points
/// at, else the newest snapshot that has it.
pub fn find_cached(cache: &Path, file: &HubFile) -> Option<PathBuf> {
    let root = cache.join(repo_of(file).folder_name());
    let snaps = root.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(root.join("refs").join(file.revision)) {
        let p = snaps.join(rev.trim()).join(file.path);
        if p.is_file() {
            return Some(p);
        }
    }
    let p = snaps.join(file.revision).join(file.path);
    if p.is_file() {
        return Some(p);
    }
    let mut cands: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(file.path))
        .filter(|p| p.is_file())
        .map(|p| {
            let t = p.metadata().and_then(|m| m.modified());
            (t.unwrap_or(std::time::UNIX_EPOCH), p)
        })
        .collect();
    cands.sort();
    cands.pop().map(|(_, p)| p)
}

/// The local path of `file`: from the HF cache, else downloaded into it.
/// `set` names the calibration set in errors.
pub fn fetch(file: &HubFile, env: &HubEnv, set: &str) -> Result<PathBuf> {
    if let Some(p) = find_cached(&env.cache, file) {
        return Ok(p);
    }
    let what = format!(
        "calibration set `{set}` needs {} from the Hugging Face Hub dataset {}",
        file.path, file.repo
    );
    let hint = "pass a local file with --dataset FILE";
    if env.offline {
        return Err(Error::Input(format!(
            "{what}, which is not in the HF cache ({}) and HF_HUB_OFFLINE is set; {hint}",
            env.cache.display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(env.cache.clone()))
        .with_progress(true)
        .build()
        .map_err(|e| Error::Input(format!("{what}: cannot start the Hub client: {e}; {hint}")))?;
    tracing::info!(
        "downloading {}/{} into {}",
        file.repo,
        file.path,
        env.cache.display()
    );
    api.repo(repo_of(file)).get(file.path).map_err(|e| {
        Error::Input(format!(
            "{what}, which is not in the HF cache ({}) and could not be downloaded ({e}); {hint}",
            env.cache.display()
        ))
    })
}

/// `nsamples` windows of `seqlen` tokens of one token stream, as the
/// reference's `get_wikitext2`: `random.seed(seed)`, then for each sample
/// `i = random.randint(0, len − seqlen − 1)` and the window `[i, i + seqlen)`.
pub fn corpus_windows(
    ids: &[u32],
    nsamples: usize,
    seqlen: usize,
    rng: &mut PyRandom,
) -> Vec<Vec<u32>> {
    (0..nsamples)
        .map(|_| {
            let i = rng.randint(0, ids.len() - seqlen - 1);
            ids[i..i + seqlen].to_vec()
        })
        .collect()
}

/// `nsamples` windows from random documents, as the reference's `get_c4`
/// (and `get_c4_new`, whose calibration part is the same): `random.seed(seed)`;
/// for each sample, draw documents `i = random.randint(0, ndocs − 1)` and
/// tokenize them (with special tokens, as `tokenizer(text)`) until one has
/// more than `seqlen` tokens, then take the window starting at
/// `random.randint(0, len − seqlen − 1)`. Documents found too short are
/// remembered (their draw still consumes the generator as in the reference)
/// so that a set with no long enough document ends with an error.
pub fn document_windows(
    tok: &Tokenizer,
    docs: &[String],
    nsamples: usize,
    seqlen: usize,
    rng: &mut PyRandom,
    set: &str,
) -> Result<Vec<Vec<u32>>> {
    if docs.is_empty() {
        return Err(Error::Input(format!(
            "calibration set `{set}`: no documents"
        )));
    }
    let mut short = vec![false; docs.len()];
    let mut n_short = 0usize;
    let mut out = Vec::with_capacity(nsamples);
    for _ in 0..nsamples {
        let ids = loop {
            let i = rng.randint(0, docs.len() - 1);
            if short[i] {
                continue;
            }
            let ids = tok.encode(&docs[i], true)?;
            if ids.len() > seqlen {
                break ids;
            }
            short[i] = true;
            n_short += 1;
            if n_short == docs.len() {
                return Err(Error::Input(format!(
                    "calibration set `{set}`: no document has more than {seqlen} tokens; pass a smaller --seqlen"
                )));
            }
        };
        let i = rng.randint(0, ids.len() - seqlen - 1);
        out.push(ids[i..i + seqlen].to_vec());
    }
    Ok(out)
}

/// Draws `nsamples` samples of `set` read from `path` (the set's Hub file
/// or a copy of it).
pub fn samples_from_file(
    tok: &Tokenizer,
    set: NamedSet,
    path: &Path,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    set.readable()?;
    let mut rng = PyRandom::seed(seed);
    match set {
        NamedSet::Wikitext2 => {
            let rows = crate::calib::read_rows(path, "text")?;
            // The reference joins the train rows with " " (the test split,
            // for perplexity, with "\n\n").
            let ids = tok.encode(&rows.join(" "), true)?;
            if ids.len() <= seqlen {
                return Err(Error::Input(format!(
                    "calibration set `wikitext2` ({}): {} tokens, not more than one window of {seqlen}",
                    path.display(),
                    ids.len()
                )));
            }
            Ok(corpus_windows(&ids, nsamples, seqlen, &mut rng))
        }
        NamedSet::C4 | NamedSet::C4New => {
            let docs = crate::calib::read_rows(path, "text")?;
            document_windows(tok, &docs, nsamples, seqlen, &mut rng, set.name())
        }
    }
}

/// Fetches `set` (see [`fetch`]) and draws `nsamples` samples from it.
pub fn samples(
    tok: &Tokenizer,
    set: NamedSet,
    env: &HubEnv,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    set.readable()?;
    let path = fetch(&set.hub_file(), env, set.name())?;
    tracing::info!("calibration set {}: {}", set.name(), path.display());
    samples_from_file(tok, set, &path, nsamples, seqlen, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in NAMES {
            assert_eq!(NamedSet::from_name(n).map(NamedSet::name), Some(*n));
        }
        assert_eq!(NamedSet::from_name("c4_new"), Some(NamedSet::C4New));
        assert_eq!(NamedSet::from_name("ptb"), None);
    }

    #[test]
    fn corpus_windows_follow_python_random() {
        let ids: Vec<u32> = (0..100).collect();
        let mut rng = PyRandom::seed(0);
        let w = corpus_windows(&ids, 3, 10, &mut rng);
        // random.seed(0); [random.randint(0, 89) for _ in range(3)]
        let mut py = PyRandom::seed(0);
        let starts: Vec<u32> = (0..3).map(|_| py.randint(0, 89) as u32).collect();
        for (s, win) in starts.iter().zip(&w) {
            assert_eq!(win, &(*s..*s + 10).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn cache_lookup_follows_the_hf_layout() {
        let d = tempfile::tempdir().unwrap();
        let f = NamedSet::C4.hub_file();
        assert_eq!(find_cached(d.path(), &f), None);
        let root = d.path().join("datasets--allenai--c4");
        let snap = root.join("snapshots/abc123");
        std::fs::create_dir_all(snap.join("en")).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123").unwrap();
        assert_eq!(find_cached(d.path(), &f), None, "ref but no file");
        std::fs::write(snap.join(f.path), b"x").unwrap();
        assert_eq!(find_cached(d.path(), &f), Some(snap.join(f.path)));
        std::fs::write(root.join("refs/main"), "gone\n").unwrap();
        assert_eq!(
            find_cached(d.path(), &f),
            Some(snap.join(f.path)),
            "any snapshot"
        );
    }

    #[test]
    fn offline_without_the_file_says_to_pass_a_file() {
        let d = tempfile::tempdir().unwrap();
        let env = HubEnv {
            cache: d.path().to_path_buf(),
            offline: true,
        };
        let e = fetch(&NamedSet::C4.hub_file(), &env, "c4")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HF_HUB_OFFLINE")
                && e.contains("--dataset FILE")
                && e.contains("allenai/c4"),
            "{e}"
        );
    }

    #[cfg(not(feature = "parquet"))]
    #[test]
    fn wikitext2_without_parquet_is_a_clear_error() {
        let e = NamedSet::Wikitext2.readable().unwrap_err().to_string();
        assert!(
            e.contains("`parquet` feature") && e.contains("--dataset FILE"),
            "{e}"
        );
    }
}
