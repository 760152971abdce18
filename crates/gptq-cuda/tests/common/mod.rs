//! Helpers shared by the GPU test files.

#![allow(dead_code)]

use std::path::PathBuf;

/// The stories260K folder: `GPTQ_STORIES_DIR`, else `../shared`'s.
pub fn stories() -> PathBuf {
    std::env::var_os("GPTQ_STORIES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/models/stories260K")
        })
}

/// The repo's small test models (`tests/data/models`): `GPTQ_TEST_MODELS`,
/// else found from this crate's folder.
pub fn test_models() -> PathBuf {
    std::env::var_os("GPTQ_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/models")
        })
}

/// `n` deterministic token ids below `vocab` (an LCG from `seed`).
pub fn tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Sequences of the given lengths, cut from one stream of [`tokens`].
pub fn samples(lens: &[usize], vocab: u32) -> Vec<Vec<u32>> {
    let all = tokens(lens.iter().sum(), vocab, 0x2545_f491_4f6c_dd1d);
    let mut rest = all.as_slice();
    lens.iter()
        .map(|&l| {
            let (a, b) = rest.split_at(l);
            rest = b;
            a.to_vec()
        })
        .collect()
}

/// ‖a − b‖ / ‖b‖.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}
