//! `model.safetensors.index.json`: every accepted shard name is a plain
//! `.safetensors` file name that stays inside the model folder.
#![no_main]

use gptq_io::safetensors::parse_index;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(shards) = parse_index(text) else {
        return;
    };
    assert!(!shards.is_empty());
    let dir = Path::new("/models/m");
    for s in &shards {
        let p = dir.join(s);
        assert_eq!(p.parent(), Some(dir), "`{s}` escapes the folder");
        assert!(Path::new(s)
            .components()
            .all(|c| matches!(c, Component::Normal(_))));
        assert!(s.ends_with(".safetensors"));
    }
});
