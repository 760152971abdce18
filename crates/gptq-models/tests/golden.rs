//! Forward pass against golden logits made with transformers 5.17 (see
//! `tests/data/README.md` and `scripts/fixtures/make_golden.py`).
//!
//! Tolerance: the goldens are float64 runs of the same weights; an f32
//! forward differs by accumulated rounding. The script measured transformers'
//! own f32-vs-f64 difference at 2.3e-6..1.1e-5 on these models (logit std
//! ≈ 1.5), so 1e-4 absolute (10× that) catches any real mistake — a wrong
//! bias, scale or rotary layout moves logits by > 0.01.

use gptq_io::safetensors::SafetensorsSource;
use gptq_io::WeightSource;
use gptq_models::{load, Batch, CausalLm};
use std::path::PathBuf;

const TOL: f32 = 1e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ids(src: &SafetensorsSource, name: &str) -> (Vec<usize>, Vec<u32>) {
    let raw = src.load_raw(name).unwrap();
    let v = raw
        .bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    (raw.shape, v)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `[batch, seq]` ids through the model (no padding) and returns logits.
fn run(model: &dyn CausalLm, shape: &[usize], tokens: &[u32]) -> Vec<f32> {
    let (b, t) = (shape[0], shape[1]);
    let lengths = vec![t; b];
    let batch = Batch {
        tokens,
        batch: b,
        seq: t,
        lengths: &lengths,
    };
    let mut cache = model.new_cache(b);
    let h = model.forward_hidden(&batch, &mut cache).unwrap();
    model.logits(&h, b * t)
}

fn check_model_dir(dir: PathBuf) {
    let files = gptq_io::source::open_dir(&dir).unwrap();
    let model = load(&files).unwrap();
    let golden = SafetensorsSource::open(&[dir.join("golden.safetensors")]).unwrap();
    let (shape, tokens) = ids(&golden, "input_ids");
    let want = golden.load_f32("logits").unwrap();
    let got = run(model.as_ref(), &shape, &tokens);
    let d = max_diff(&got, want.data());
    assert!(d < TOL, "{}: max |Δlogit| = {d}", dir.display());

    // Padding: the short sequence, batched with row 0 and right-padded,
    // must give its own golden logits and leave row 0 unchanged.
    let (sshape, short) = ids(&golden, "input_ids_short");
    let want_short = golden.load_f32("logits_short").unwrap();
    let (t, ts, v) = (shape[1], sshape[1], model.info().vocab_size);
    let mut tokens2 = tokens[..t].to_vec();
    tokens2.extend(&short);
    tokens2.extend(std::iter::repeat_n(0u32, t - ts));
    let lengths = [t, ts];
    let batch = Batch {
        tokens: &tokens2,
        batch: 2,
        seq: t,
        lengths: &lengths,
    };
    let mut cache = model.new_cache(2);
    let h = model.forward_hidden(&batch, &mut cache).unwrap();
    let l = model.logits(&h, 2 * t);
    assert!(
        max_diff(&l[..t * v], &want.data()[..t * v]) < TOL,
        "padded batch changed row 0"
    );
    assert!(
        max_diff(&l[t * v..(t + ts) * v], want_short.data()) < TOL,
        "padded row differs"
    );

    // KV cache: feeding row 0 token by token gives the same logits.
    let mut cache = model.new_cache(1);
    for (i, &tk) in tokens[..t].iter().enumerate() {
        let one = [tk];
        let h = model
            .forward_hidden(&Batch::single(&one, &[1]), &mut cache)
            .unwrap();
        let l = model.logits(&h, 1);
        let d = max_diff(&l, &want.data()[i * v..(i + 1) * v]);
        assert!(d < TOL, "{}: step {i} with cache: {d}", dir.display());
    }
}

macro_rules! golden_model {
    ($name:ident, $dir:literal) => {
        #[test]
        fn $name() {
            check_model_dir(repo().join("tests/data/models").join($dir));
        }
    };
}

golden_model!(opt_pre_ln, "opt-preln");
golden_model!(opt_post_ln_with_projections, "opt-postln-proj");
golden_model!(qwen2_with_qkv_bias, "qwen2-bias");
golden_model!(mistral, "mistral");
golden_model!(llama3_rope_scaling, "llama3-rope");
golden_model!(llama_linear_rope_tied, "llama-linear-rope");

#[test]
fn stories260k_matches_transformers() {
    let dir = repo().join("../shared/data/models/stories260K");
    let files = gptq_io::source::open_dir(&dir).unwrap();
    let model = load(&files).unwrap();
    let golden =
        SafetensorsSource::open(&[repo().join("tests/data/stories260k/golden.safetensors")])
            .unwrap();
    let (shape, tokens) = ids(&golden, "input_ids");
    let want = golden.load_f32("logits").unwrap();
    let got = run(model.as_ref(), &shape, &tokens);
    let d = max_diff(&got, want.data());
    assert!(d < TOL, "max |Δlogit| = {d}");
}

#[test]
fn unsupported_model_type_lists_the_supported_ones() {
    let dir = repo().join("tests/data/models/mistral");
    let mut files = gptq_io::source::open_dir(&dir).unwrap();
    files.config["model_type"] = "gpt_neox".into();
    let e = load(&files).err().unwrap().to_string();
    assert!(
        e.contains("gpt_neox") && e.contains("llama") && e.contains("opt"),
        "{e}"
    );
}

#[test]
fn missing_config_field_is_named() {
    let dir = repo().join("tests/data/models/mistral");
    let mut files = gptq_io::source::open_dir(&dir).unwrap();
    files.config.as_object_mut().unwrap().remove("hidden_size");
    let e = load(&files).err().unwrap().to_string();
    assert!(e.contains("hidden_size"), "{e}");
}

/// Layer-by-layer processing (what GPTQ uses) reproduces the golden logits:
/// embeddings → every block loaded on its own → final norm → output layer.
#[test]
fn layerwise_blocks_reproduce_golden_logits() {
    use gptq_kernels::cpu;
    for (dir, llama) in [("mistral", true), ("opt-preln", false)] {
        let dir = repo().join("tests/data/models").join(dir);
        let files = gptq_io::source::open_dir(&dir).unwrap();
        let lw = gptq_models::layerwise(&files).unwrap();
        let golden = SafetensorsSource::open(&[dir.join("golden.safetensors")]).unwrap();
        let (shape, tokens) = ids(&golden, "input_ids");
        let want = golden.load_f32("logits").unwrap();
        let t = shape[1];
        let mut x = lw.embed(&tokens[..t]).unwrap();
        let mut seen = Vec::new();
        for i in 0..lw.num_blocks() {
            let b = lw.block(i).unwrap();
            let mut obs = |n: &'static str, _: &[f32]| {
                if i == 0 {
                    seen.push(n);
                }
                true
            };
            assert!(b.forward(&mut x, t, &mut obs).unwrap());
        }
        assert_eq!(
            seen,
            lw.arch().linear_layers().collect::<Vec<_>>(),
            "observer order"
        );
        let w = &files.weights;
        let h = lw.hidden_size();
        let mut normed = vec![0.0; x.len()];
        let head = if llama {
            let g = w.load_f32("model.norm.weight").unwrap();
            cpu::rms_norm(&x, g.data(), 1e-5, &mut normed);
            w.load_f32("lm_head.weight").unwrap()
        } else {
            let g = w.load_f32("model.decoder.final_layer_norm.weight").unwrap();
            let b = w.load_f32("model.decoder.final_layer_norm.bias").unwrap();
            cpu::layer_norm(&x, Some(g.data()), Some(b.data()), h, 1e-5, &mut normed);
            w.load_f32("model.decoder.embed_tokens.weight").unwrap()
        };
        let v = head.shape()[0];
        let mut logits = vec![0.0; t * v];
        cpu::matmul_nt(&normed, head.data(), t, h, v, &mut logits);
        let d = max_diff(&logits, &want.data()[..t * v]);
        assert!(d < TOL, "{}: {d}", dir.display());

        // Stopping early: the observer sees the first group and nothing after.
        let b = lw.block(0).unwrap();
        let mut x0 = lw.embed(&tokens[..t]).unwrap();
        let first = lw.arch().sequential_groups[0];
        let mut n_seen = 0;
        let mut stop = |n: &'static str, inp: &[f32]| {
            assert_eq!(inp.len(), t * h);
            assert!(first.contains(&n), "{n} observed after the stop");
            n_seen += 1;
            n_seen < first.len()
        };
        assert!(!b.forward(&mut x0, t, &mut stop).unwrap());
    }
}

/// `embed_all` (GPTQ calibration; the Llama form reads its embedding matrix
/// for that call only) gives each sequence exactly what `embed` gives,
/// before and after `embed` has loaded and kept the matrix, and refuses
/// tokens outside the vocabulary.
#[test]
fn embed_all_matches_embed() {
    for dir in ["mistral", "opt-preln"] {
        let dir = repo().join("tests/data/models").join(dir);
        let files = gptq_io::source::open_dir(&dir).unwrap();
        let lw = gptq_models::layerwise(&files).unwrap();
        let golden = SafetensorsSource::open(&[dir.join("golden.safetensors")]).unwrap();
        let (shape, tokens) = ids(&golden, "input_ids");
        let t = shape[1];
        let seqs = vec![tokens[..t].to_vec(), tokens[1..t].to_vec(), vec![]];
        let first = lw.embed_all(&seqs).unwrap();
        let one: Vec<Vec<f32>> = seqs.iter().map(|s| lw.embed(s).unwrap()).collect();
        let again = lw.embed_all(&seqs).unwrap();
        let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|x| x.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&first), bits(&one), "{}", dir.display());
        assert_eq!(bits(&again), bits(&one), "{}", dir.display());
        assert!(lw.embed_all(&[vec![u32::MAX]]).is_err());
    }
}
