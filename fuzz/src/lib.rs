//! Helpers shared by the fuzz targets.

use std::path::PathBuf;

/// A scratch folder private to this fuzzing process (tmpfs when available),
/// created on first use.
pub fn scratch() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("gptq-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
    .clone()
}

/// Writes `bytes` to `name` in the scratch folder and returns the path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write scratch file");
    p
}

/// A fresh, empty scratch sub-folder `name`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = scratch().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch sub-folder");
    d
}

/// The stories260K tokenizer of the repository's test data.
pub fn stories_tokenizer_json() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/tokenizers/stories260k/tokenizer.json");
    std::fs::read_to_string(p).expect("tests/data/tokenizers/stories260k/tokenizer.json")
}

/// Model files holding only a config and a tokenizer.
pub fn files_with(
    config: serde_json::Value,
    tokenizer_json: Option<String>,
    tokenizer_config: Option<serde_json::Value>,
) -> gptq_io::ModelFiles {
    gptq_io::ModelFiles {
        name: "fuzz".into(),
        dir: None,
        config,
        weights: Box::new(
            gptq_io::safetensors::SafetensorsSource::open(&[]).expect("empty source"),
        ),
        tokenizer_json,
        tokenizer_config,
        generation_config: None,
    }
}
