//! Named calibration sets under `HF_HUB_OFFLINE=1` with an empty cache, and
//! a file whose name is also a set name. Its own test binary with one test,
//! since it sets environment variables and the working directory.

use gptq_infer::calib::CalibSource;
use gptq_infer::hub_data::{self, HubEnv, NamedSet};

#[test]
fn offline_empty_cache_and_file_precedence() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_HUB_CACHE", cache.path());
    let env = HubEnv::from_env();
    assert!(env.offline);
    assert_eq!(env.cache, cache.path());
    for set in [NamedSet::C4, NamedSet::C4New, NamedSet::Wikitext2] {
        let e = hub_data::fetch(&set.hub_file(), &env, set.name())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HF_HUB_OFFLINE is set")
                && e.contains("pass a local file with --dataset FILE")
                && e.contains(&cache.path().display().to_string()),
            "{e}"
        );
    }
    // A cached copy is used offline.
    let f = NamedSet::C4.hub_file();
    let snap = cache.path().join("datasets--allenai--c4/snapshots/0123abc");
    std::fs::create_dir_all(snap.join("en")).unwrap();
    std::fs::write(snap.join(f.path), b"").unwrap();
    assert_eq!(hub_data::fetch(&f, &env, "c4").unwrap(), snap.join(f.path));

    // `--dataset c4` where ./c4 exists: the file wins.
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    assert!(matches!(
        CalibSource::from_spec("c4", "text"),
        CalibSource::Named(NamedSet::C4)
    ));
    std::fs::write(dir.path().join("c4"), "text").unwrap();
    assert!(matches!(
        CalibSource::from_spec("c4", "text"),
        CalibSource::File { .. }
    ));
}
