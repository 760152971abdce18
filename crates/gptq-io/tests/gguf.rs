//! GGUF end-to-end tests: the stories260K GGUF v1 against its HF conversion
//! in `shared/`, a synthetic quantized llama built in memory, `convert`
//! round trips, and (when the file is present) SmolLM2-135M-Instruct Q4_1.

use gptq_io::gguf::build::Builder;
use gptq_io::gguf::{self, ConvertDType, GgmlType, MetaValue};
use gptq_io::safetensors::SafetensorsSource;
use gptq_io::source::open_dir;
use gptq_io::WeightSource;
use half::f16;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::Tokenizer;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn stories_gguf() -> PathBuf {
    shared().join("models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf")
}

fn stories_dir() -> PathBuf {
    shared().join("models/stories260K")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("GPTQ_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.dev/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: SmolLM2 GGUF not found at {} (set GPTQ_SMOLLM2_GGUF)",
            p.display()
        );
        None
    }
}

fn assert_same_tensors(got: &dyn WeightSource, want: &dyn WeightSource) {
    assert_eq!(got.names(), want.names());
    for name in want.names() {
        let (a, b) = (got.load_f32(&name).unwrap(), want.load_f32(&name).unwrap());
        assert_eq!(a.shape(), b.shape(), "{name}");
        let bits = |t: &gptq_core::Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&a) == bits(&b), "{name} differs");
    }
}

#[test]
fn stories_tensors_are_bit_identical_to_the_hf_conversion() {
    let m = gguf::open_model(&stories_gguf()).unwrap();
    let want = SafetensorsSource::open_dir(&stories_dir()).unwrap();
    assert_eq!(want.names().len(), 48);
    assert_same_tensors(m.weights.as_ref(), &want);
    // Stored F32 tensors come back raw, un-permuted like load_f32.
    for name in [
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.2.self_attn.k_proj.weight",
        "model.norm.weight",
    ] {
        let (a, b) = (
            m.weights.load_raw(name).unwrap(),
            want.load_raw(name).unwrap(),
        );
        assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape));
        assert!(a.bytes == b.bytes, "{name}");
    }
    assert!(m.weights.load_f32("nope").is_err());
}

#[test]
fn stories_config_matches_the_hf_conversion() {
    let m = gguf::open_model(&stories_gguf()).unwrap();
    let want = read_json(&stories_dir().join("config.json"));
    for (k, v) in want.as_object().unwrap() {
        if k != "transformers_version" {
            assert_eq!(&m.config[k], v, "config field {k}");
        }
    }
    let tc = m.tokenizer_config.unwrap();
    let want_tc = read_json(&stories_dir().join("tokenizer_config.json"));
    for k in [
        "add_bos_token",
        "add_eos_token",
        "bos_token",
        "eos_token",
        "unk_token",
        "model_max_length",
        "added_tokens_decoder",
    ] {
        assert_eq!(tc[k], want_tc[k], "tokenizer_config field {k}");
    }
    let g = m.generation_config.unwrap();
    assert_eq!(
        (g["bos_token_id"].as_u64(), g["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );
}

fn lines_to_check() -> Vec<String> {
    let ts =
        std::fs::read_to_string(shared().join("text/tinystories/tinystories_val.txt")).unwrap();
    let wiki = std::fs::read(shared().join("text/wikitext2/wiki.test.raw")).unwrap();
    let mut cut = 200_000.min(wiki.len());
    while std::str::from_utf8(&wiki[..cut]).is_err() {
        cut -= 1;
    }
    let wiki = std::str::from_utf8(&wiki[..cut]).unwrap();
    ts.lines()
        .chain(wiki.lines())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn stories_tokenizer_matches_the_reference_everywhere() {
    let m = gguf::open_model(&stories_gguf()).unwrap();
    let ours_json = m.tokenizer_json.unwrap();
    let ref_json = std::fs::read_to_string(stories_dir().join("tokenizer.json")).unwrap();
    let (ours_v, ref_v): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&ours_json).unwrap(),
        serde_json::from_str(&ref_json).unwrap(),
    );
    let merges = |v: &serde_json::Value| -> Vec<String> {
        v["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                a => format!("{} {}", a[0].as_str().unwrap(), a[1].as_str().unwrap()),
            })
            .collect()
    };
    assert_eq!(merges(&ours_v), merges(&ref_v), "merges");
    assert_eq!(ours_v["model"]["vocab"], ref_v["model"]["vocab"], "vocab");
    for k in [
        "normalizer",
        "pre_tokenizer",
        "decoder",
        "added_tokens",
        "post_processor",
    ] {
        assert_eq!(ours_v[k], ref_v[k], "{k}");
    }

    let ours = Tokenizer::from_str(&ours_json).unwrap();
    let reference = Tokenizer::from_str(&ref_json).unwrap();
    let lines = lines_to_check();
    assert!(lines.len() > 4000);
    let mut n_tokens = 0;
    for line in &lines {
        let a = ours.encode(line.as_str(), true).unwrap();
        let b = reference.encode(line.as_str(), true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "ids differ on {line:?}");
        assert_eq!(a.get_ids()[0], 1, "BOS");
        n_tokens += a.len();
        let plain = ours.encode(line.as_str(), false).unwrap();
        assert_eq!(
            &ours.decode(plain.get_ids(), true).unwrap(),
            line,
            "round trip"
        );
    }
    assert!(n_tokens > 400_000, "{n_tokens}");
}

#[test]
fn stories_converts_to_an_hf_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stories");
    gguf::convert(&stories_gguf(), &out, ConvertDType::F32, false).unwrap();
    assert!(
        gguf::convert(&stories_gguf(), &out, ConvertDType::F32, false).is_err(),
        "exists"
    );
    let m = open_dir(&out).unwrap();
    let want = SafetensorsSource::open_dir(&stories_dir()).unwrap();
    assert_same_tensors(m.weights.as_ref(), &want);
    assert_eq!(m.config["torch_dtype"], "float32");
    assert_eq!(m.config["tie_word_embeddings"], true);
    let tok = Tokenizer::from_str(m.tokenizer_json.as_deref().unwrap()).unwrap();
    assert_eq!(
        tok.encode("Once upon a time", true).unwrap().get_ids(),
        &[1, 403, 407, 261, 378]
    );
    assert_eq!(m.tokenizer_config.unwrap()["bos_token"], "<s>");
    assert_eq!(m.generation_config.unwrap()["eos_token_id"], 2);

    // f16: matrices rounded to f16, 1-D norms kept f32.
    gguf::convert(&stories_gguf(), &out, ConvertDType::F16, true).unwrap();
    let m = open_dir(&out).unwrap();
    assert_eq!(m.config["torch_dtype"], "float16");
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(m.weights.load_raw(q).unwrap().dtype, gptq_core::DType::F16);
    let want_q: Vec<f32> = want
        .load_f32(q)
        .unwrap()
        .data()
        .iter()
        .map(|&x| f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(m.weights.load_f32(q).unwrap().data(), &want_q[..]);
    assert_eq!(
        m.weights.load_raw("model.norm.weight").unwrap().dtype,
        gptq_core::DType::F32
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "temporary folders left behind"
    );
}

/// Q8_0 blocks of `row`-long rows: `d = max|x| / 127`.
fn q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        out.extend(d.to_le_bytes());
        let id = if d.to_f32() == 0.0 {
            0.0
        } else {
            1.0 / d.to_f32()
        };
        out.extend(
            b.iter()
                .map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    out
}

/// Q4_0 blocks holding nibble `q[i]` per element with scale `d`.
fn q4_0(q: &[u8], d: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for b in q.chunks(32) {
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend((0..16).map(|j| b[j] | (b[j + 16] << 4)));
    }
    out
}

/// A 2-layer llama with hidden 32, 4 heads / 2 kv heads (head_dim 8), ffn 64,
/// vocab 8: q in Q4_0, k in Q8_0, the rest F32/F16, plus q/k biases.
fn tiny_llama(version: u32) -> (Vec<u8>, Vec<u8>) {
    let mut b = Builder::new(version);
    let s = |x: &str| MetaValue::Str(x.into());
    b.meta("general.architecture", s("llama"));
    b.meta("llama.embedding_length", MetaValue::U32(32));
    b.meta("llama.feed_forward_length", MetaValue::U32(64));
    b.meta("llama.block_count", MetaValue::U32(2));
    b.meta("llama.attention.head_count", MetaValue::U32(4));
    b.meta("llama.attention.head_count_kv", MetaValue::U32(2));
    b.meta(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(1e-6),
    );
    b.meta("llama.rope.freq_base", MetaValue::F32(500000.0));
    b.meta("llama.context_length", MetaValue::U64(128));
    let toks = ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab"];
    b.meta("tokenizer.ggml.model", s("llama"));
    b.meta(
        "tokenizer.ggml.tokens",
        MetaValue::Array(toks.iter().map(|t| s(t)).collect()),
    );
    b.meta(
        "tokenizer.ggml.scores",
        MetaValue::Array((0..8).map(|i| MetaValue::F32(-(i as f32))).collect()),
    );
    b.meta(
        "tokenizer.ggml.token_type",
        MetaValue::Array([2, 3, 3, 1, 1, 1, 1, 1].map(MetaValue::I32).to_vec()),
    );
    b.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    b.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    b.meta("tokenizer.chat_template", s("{{ messages }}"));
    let f32s = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    b.tensor_f32("token_embd.weight", &[32, 8], &f32s(256, 0.1));
    let q_nibbles: Vec<u8> = (0..32 * 32).map(|i| (i % 16) as u8).collect();
    let q_bytes = q4_0(&q_nibbles, 0.5);
    let k_bytes = q8_0(&f32s(16 * 32, 0.3));
    for l in 0..2 {
        let n = |p: &str| format!("blk.{l}.{p}");
        b.tensor(
            &n("attn_q.weight"),
            &[32, 32],
            GgmlType::Q4_0,
            q_bytes.clone(),
        );
        b.tensor(
            &n("attn_k.weight"),
            &[32, 16],
            GgmlType::Q8_0,
            k_bytes.clone(),
        );
        b.tensor_f32(
            &n("attn_q.bias"),
            &[32],
            &(0..32).map(|i| i as f32).collect::<Vec<_>>(),
        );
        b.tensor_f32(
            &n("attn_k.bias"),
            &[16],
            &(0..16).map(|i| i as f32).collect::<Vec<_>>(),
        );
        let v16: Vec<u8> = f32s(16 * 32, 0.2)
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        b.tensor(&n("attn_v.weight"), &[32, 16], GgmlType::F16, v16);
        b.tensor_f32(&n("attn_output.weight"), &[32, 32], &f32s(1024, 0.01));
        b.tensor_f32(&n("ffn_gate.weight"), &[32, 64], &f32s(2048, 0.02));
        b.tensor_f32(&n("ffn_up.weight"), &[32, 64], &f32s(2048, 0.03));
        b.tensor_f32(&n("ffn_down.weight"), &[64, 32], &f32s(2048, 0.04));
        b.tensor_f32(&n("attn_norm.weight"), &[32], &[1.0; 32]);
        b.tensor_f32(&n("ffn_norm.weight"), &[32], &[1.0; 32]);
    }
    b.tensor_f32("output_norm.weight", &[32], &[1.0; 32]);
    (b.build(), q_nibbles)
}

#[test]
fn synthetic_quantized_llama_opens_in_every_version() {
    let tmp = tempfile::tempdir().unwrap();
    for version in [1, 2, 3] {
        let (bytes, q_nibbles) = tiny_llama(version);
        let p = tmp.path().join(format!("tiny-v{version}.gguf"));
        std::fs::write(&p, &bytes).unwrap();
        let m = gguf::open_model(&p).unwrap();
        let c = &m.config;
        assert_eq!(c["hidden_size"], 32);
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["head_dim"], 8);
        assert_eq!(c["rms_norm_eps"], 1e-6);
        assert_eq!(c["rope_theta"], 500000.0);
        assert_eq!(c["max_position_embeddings"], 128);
        assert_eq!(c["vocab_size"], 8);
        assert_eq!(c["tie_word_embeddings"], true);
        assert_eq!(c["attention_bias"], true);
        let w = m.weights.as_ref();
        assert!(!w.contains("lm_head.weight"));
        assert_eq!(w.names().len(), 1 + 1 + 2 * 11);
        // q: Q4_0 rows un-permuted with 4 heads; row r of HF comes from GGUF row
        // h*8 + 2*j + i where r = h*8 + 4*i + j.
        let q = w
            .load_f32("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.shape(), &[32, 32]);
        for r in 0..32 {
            let (h, i, j) = (r / 8, (r % 8) / 4, r % 4);
            let src = h * 8 + 2 * j + i;
            let want: Vec<f32> = (0..32)
                .map(|c| (q_nibbles[src * 32 + c] as f32 - 8.0) * 0.5)
                .collect();
            assert_eq!(q.row(r), &want[..], "row {r}");
        }
        let qb = w.load_f32("model.layers.0.self_attn.q_proj.bias").unwrap();
        assert_eq!(&qb.data()[..8], &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
        let kb = w.load_raw("model.layers.0.self_attn.k_proj.bias").unwrap();
        assert_eq!(kb.bytes.len(), 64);
        assert!(
            w.load_raw("model.layers.0.self_attn.k_proj.weight")
                .is_err(),
            "Q8_0 has no raw dtype"
        );
        assert_eq!(
            w.load_raw("model.layers.0.self_attn.v_proj.weight")
                .unwrap()
                .dtype,
            gptq_core::DType::F16
        );
        let k = w
            .load_f32("model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(k.shape(), &[16, 32]);
        assert!(k.data().iter().all(|x| x.abs() <= 1.01));
        let tc = m.tokenizer_config.as_ref().unwrap();
        assert_eq!(tc["chat_template"], "{{ messages }}");
        assert_eq!(tc["model_max_length"], 128);

        let out = tmp.path().join(format!("hf-v{version}"));
        gguf::convert(&p, &out, ConvertDType::F32, false).unwrap();
        let hf = open_dir(&out).unwrap();
        assert_same_tensors(hf.weights.as_ref(), w);
        assert_eq!(
            hf.tokenizer_config.unwrap()["chat_template"],
            "{{ messages }}"
        );
        let tok = Tokenizer::from_str(hf.tokenizer_json.as_deref().unwrap()).unwrap();
        assert_eq!(tok.encode("ab ab", true).unwrap().get_ids(), &[1, 7, 7]);
    }
}

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn unsupported_models_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Builder::new(3);
    b.meta("general.architecture", MetaValue::Str("qwen2".into()));
    let p = write_tmp(tmp.path(), "a.gguf", &b.build());
    let e = gguf::open_model(&p).err().unwrap().to_string();
    assert!(
        e.contains("unsupported GGUF architecture `qwen2`") && e.contains("llama"),
        "{e}"
    );
    assert!(e.contains("a.gguf"), "{e}");

    // A K-quant tensor is named with its type.
    let mut b = Builder::new(3);
    b.meta("general.architecture", MetaValue::Str("llama".into()));
    for (k, v) in [
        ("embedding_length", 256),
        ("feed_forward_length", 256),
        ("block_count", 1),
        ("attention.head_count", 2),
    ] {
        b.meta(&format!("llama.{k}"), MetaValue::U32(v));
    }
    b.tensor_f32("token_embd.weight", &[256, 1], &[0.0; 256]);
    b.tensor("blk.0.ffn_up.weight", &[256, 1], GgmlType(12), vec![0; 144]);
    let p = write_tmp(tmp.path(), "k.gguf", &b.build());
    let e = gguf::open_model(&p).err().unwrap().to_string();
    assert!(
        e.contains("Q4_K") && e.contains("blk.0.ffn_up.weight") && e.contains("not supported"),
        "{e}"
    );

    // An unknown tensor is not silently dropped.
    let mut b = Builder::new(3);
    b.meta("general.architecture", MetaValue::Str("llama".into()));
    for (k, v) in [
        ("embedding_length", 4),
        ("feed_forward_length", 4),
        ("block_count", 1),
        ("attention.head_count", 2),
    ] {
        b.meta(&format!("llama.{k}"), MetaValue::U32(v));
    }
    b.tensor_f32("token_embd.weight", &[4, 1], &[0.0; 4]);
    b.tensor_f32("blk.0.ffn_gate_exps.weight", &[4], &[0.0; 4]);
    let p = write_tmp(tmp.path(), "moe.gguf", &b.build());
    let e = gguf::open_model(&p).err().unwrap().to_string();
    assert!(e.contains("blk.0.ffn_gate_exps.weight"), "{e}");

    let p = write_tmp(tmp.path(), "bad.gguf", b"GGUF\x03\0\0\0");
    let e = gguf::open_model(&p).err().unwrap().to_string();
    assert!(
        e.contains("invalid GGUF file") && e.contains("bad.gguf"),
        "{e}"
    );
}

#[test]
fn smollm2_opens_with_hf_names_and_config() {
    let Some(p) = smollm2() else { return };
    let m = gguf::open_model(&p).unwrap();
    let c = &m.config;
    for (k, v) in [
        ("hidden_size", 576),
        ("intermediate_size", 1536),
        ("num_hidden_layers", 30),
        ("num_attention_heads", 9),
        ("num_key_value_heads", 3),
        ("head_dim", 64),
        ("vocab_size", 49152),
        ("max_position_embeddings", 8192),
        ("bos_token_id", 1),
        ("eos_token_id", 2),
    ] {
        assert_eq!(c[k], v, "{k}");
    }
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["tie_word_embeddings"], true);
    let w = m.weights.as_ref();
    assert_eq!(w.names().len(), 272);
    assert!(!w.contains("lm_head.weight"));
    assert_eq!(w.shape("model.embed_tokens.weight"), Some(vec![49152, 576]));
    assert_eq!(
        w.shape("model.layers.29.self_attn.k_proj.weight"),
        Some(vec![192, 576])
    );
    assert_eq!(
        w.shape("model.layers.0.mlp.down_proj.weight"),
        Some(vec![576, 1536])
    );
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.embed_tokens.weight",
    ] {
        let t = w.load_f32(name).unwrap();
        assert!(t.data().iter().all(|x| x.is_finite()), "{name}");
        let rms = (t.data().iter().map(|x| x * x).sum::<f32>() / t.len() as f32).sqrt();
        assert!(rms > 1e-3 && rms < 10.0, "{name}: rms {rms}");
    }
    let tc = m.tokenizer_config.as_ref().unwrap();
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}

#[test]
fn smollm2_tokenizer_is_sensible() {
    let Some(p) = smollm2() else { return };
    let m = gguf::open_model(&p).unwrap();
    let tok = Tokenizer::from_str(m.tokenizer_json.as_deref().unwrap()).unwrap();
    let enc = tok.encode("What is the capital of France?", true).unwrap();
    assert_eq!(
        enc.get_tokens(),
        &["What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?"]
    );
    let enc = tok.encode("<|im_start|>user\nHi<|im_end|>", true).unwrap();
    assert_eq!(enc.get_ids()[0], 1);
    assert_eq!(enc.get_tokens()[0], "<|im_start|>");
    assert_eq!(*enc.get_ids().last().unwrap(), 2);
    let enc = tok.encode("In 1994, 2,500 people", false).unwrap();
    assert_eq!(
        enc.get_tokens(),
        &["In", "Ġ", "1", "9", "9", "4", ",", "Ġ", "2", ",", "5", "0", "0", "Ġpeople"]
    );
    let wiki = std::fs::read_to_string(shared().join("text/wikitext2/wiki.test.raw")).unwrap();
    let mut digits = 0;
    for line in wiki.lines().filter(|l| !l.trim().is_empty()).take(300) {
        let enc = tok.encode(line, false).unwrap();
        for t in enc.get_tokens() {
            if t.chars().any(|c| c.is_ascii_digit()) {
                assert_eq!(t.chars().count(), 1, "digit token {t:?} in {line:?}");
                digits += 1;
            }
        }
        assert_eq!(
            tok.decode(enc.get_ids(), false).unwrap(),
            line,
            "round trip"
        );
    }
    assert!(digits > 100);
}
