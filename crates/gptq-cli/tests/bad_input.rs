//! The bad-input contract of the `gptq` binary, table-driven: every broken
//! input below must end with exactly one `error:` line on stderr naming the
//! problem, the documented exit status (README: 2 bad input or usage, 3 an
//! I/O failure, 130 interrupted), no panic, and no output or temporary file
//! left behind.
//!
//! Fixtures are built in temp dirs from the tiny Llama of
//! `tests/data/models/llama-linear-rope` (vocab 128) with a word-level
//! tokenizer written here, so the whole file runs in seconds and needs
//! nothing from `../shared`.

use gptq_core::DType;
use gptq_io::gguf::build::Builder;
use gptq_io::gguf::{GgmlType, MetaValue};
use gptq_io::safetensors::{parse_header, serialize, TensorOut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BAD_INPUT: i32 = 2;
const IO_FAILURE: i32 = 3;
const INTERRUPTED: i32 = 130;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gptq_cmd(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptq"));
    c.args(args)
        .env("RUST_LOG", "warn")
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_BACKTRACE");
    c
}

fn gptq(args: &[String]) -> Output {
    gptq_cmd(args).output().expect("run gptq")
}

/// Words of the fixture tokenizer; ids 1..=LETTERS.len() (0 is `<unk>`).
const LETTERS: &str = "abcdefghijklmnopqrstuvwxyz";

fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for (i, c) in LETTERS.chars().enumerate() {
        vocab.insert(c.to_string(), (i + 1).into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// `n` space-separated letters, deterministic.
fn calib_text(n: usize) -> String {
    let l: Vec<char> = LETTERS.chars().collect();
    (0..n)
        .map(|i| l[(i * 7 + i / 3) % l.len()].to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tiny Llama with a tokenizer, in `root/model`; a calibration text in
/// `root/calib.txt`.
fn tiny(root: &Path) -> PathBuf {
    let src = repo().join("tests/data/models/llama-linear-rope");
    let m = root.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), m.join(f)).unwrap();
    }
    std::fs::write(m.join("tokenizer.json"), tokenizer_json()).unwrap();
    std::fs::write(root.join("calib.txt"), calib_text(2000)).unwrap();
    m
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `quantize MODEL -o OUT` with the fixture's calibration text, small settings.
fn quantize_args(model: &Path, root: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "quantize",
        &s(model),
        "-o",
        &s(&root.join("out")),
        "--dataset",
        &s(&root.join("calib.txt")),
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--group-size",
        "-1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn inspect(model: &Path) -> Vec<String> {
    vec!["inspect".into(), s(model)]
}

fn eval(model: &Path, root: &Path) -> Vec<String> {
    vec![
        "eval".into(),
        s(model),
        "--dataset".into(),
        s(&root.join("calib.txt")),
        "--seqlen".into(),
        "32".into(),
        "--max-windows".into(),
        "1".into(),
    ]
}

fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Rewrites the safetensors header of `p` through `f` (data kept as is).
fn edit_header(p: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..8 + n]).unwrap();
    f(&mut h);
    let mut hb = serde_json::to_vec(&h).unwrap();
    while !hb.len().is_multiple_of(8) {
        hb.push(b' ');
    }
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend(hb);
    out.extend(&b[8 + n..]);
    std::fs::write(p, out).unwrap();
}

/// Writes `value` into element 5 of tensor `name` of the f32 file `p`.
fn poke_f32(p: &Path, name: &str, value: f32) {
    let mut b = std::fs::read(p).unwrap();
    let h = parse_header(&b).unwrap();
    let at = h.data_start + h.tensors[name].begin + 5 * 4;
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(p, b).unwrap();
}

/// Splits the fixture's `model.safetensors` into two shards with an index
/// whose `weight_map` the caller then edits.
fn shard(m: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = m.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    let h = parse_header(&b).unwrap();
    let mut parts: [Vec<TensorOut>; 2] = [Vec::new(), Vec::new()];
    let mut map = serde_json::Map::new();
    for (i, (name, e)) in h.tensors.iter().enumerate() {
        let k = i % 2;
        parts[k].push(TensorOut {
            name: name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes: b[h.data_start + e.begin..h.data_start + e.end]
                .to_vec()
                .into(),
        });
        map.insert(
            name.clone(),
            format!("model-0000{}-of-00002.safetensors", k + 1).into(),
        );
    }
    for (k, t) in parts.iter().enumerate() {
        std::fs::write(
            m.join(format!("model-0000{}-of-00002.safetensors", k + 1)),
            serialize(t, &BTreeMap::new()),
        )
        .unwrap();
    }
    std::fs::remove_file(&p).unwrap();
    let mut index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    edit(&mut index);
    std::fs::write(
        m.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A small llama GGUF (architecture metadata and one tensor).
fn gguf_builder() -> Builder {
    let mut b = Builder::new(3);
    b.meta("general.architecture", MetaValue::Str("llama".into()));
    b.meta("llama.block_count", MetaValue::U32(1));
    b.meta("llama.embedding_length", MetaValue::U32(8));
    b.meta("llama.feed_forward_length", MetaValue::U32(16));
    b.meta("llama.attention.head_count", MetaValue::U32(2));
    b.meta("llama.context_length", MetaValue::U32(32));
    b.tensor_f32("token_embd.weight", &[8, 4], &[0.5; 32]);
    b
}

fn write_gguf(root: &Path, bytes: &[u8]) -> PathBuf {
    let p = root.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every file under `dir` with its size, sorted.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
                out.push((p, 0));
            } else {
                out.push((p, md.len()));
            }
        }
    }
    out.sort();
    out
}

/// Checks the contract on one finished run.
fn check(name: &str, o: &Output, code: i32, want: &str) -> Result<(), String> {
    let err = String::from_utf8_lossy(&o.stderr);
    let mut problems = Vec::new();
    if o.status.code() != Some(code) {
        problems.push(format!("exit status {:?}, want {code}", o.status.code()));
    }
    if err.contains("panicked at") || err.contains("RUST_BACKTRACE") {
        problems.push("panicked".into());
    }
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    if lines.len() != 1 {
        problems.push(format!("{} `error:` lines", lines.len()));
    } else if !lines[0].to_lowercase().contains(&want.to_lowercase()) {
        problems.push(format!("`{want}` not in the message"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{name}: {}\n--- stderr:\n{err}",
            problems.join("; ")
        ))
    }
}

/// One broken input: `setup` builds it under a fresh temp dir and returns
/// the arguments; the run must fail with `code` and a message holding `want`.
struct Case {
    name: &'static str,
    setup: fn(&Path) -> Vec<String>,
    code: i32,
    want: &'static str,
}

macro_rules! case {
    ($name:literal, $code:expr, $want:literal, |$root:ident| $body:expr) => {
        Case {
            name: $name,
            setup: |$root: &Path| $body,
            code: $code,
            want: $want,
        }
    };
}

fn cases() -> Vec<Case> {
    vec![
        // --- model folder and config.json ---
        case!("missing config.json", BAD_INPUT, "config.json", |r| {
            let m = tiny(r);
            std::fs::remove_file(m.join("config.json")).unwrap();
            inspect(&m)
        }),
        case!("config.json not JSON", BAD_INPUT, "invalid json", |r| {
            let m = tiny(r);
            std::fs::write(m.join("config.json"), "{\"model_type\": ").unwrap();
            eval(&m, r)
        }),
        case!("config.json not an object", BAD_INPUT, "object", |r| {
            let m = tiny(r);
            std::fs::write(m.join("config.json"), "[1, 2]").unwrap();
            inspect(&m)
        }),
        case!(
            "unsupported architecture",
            BAD_INPUT,
            "unsupported model_type `gpt_neox`",
            |r| {
                let m = tiny(r);
                edit_json(&m.join("config.json"), |v| {
                    v["model_type"] = "gpt_neox".into()
                });
                quantize_args(&m, r, &[])
            }
        ),
        case!("missing model_type", BAD_INPUT, "model_type", |r| {
            let m = tiny(r);
            edit_json(&m.join("config.json"), |v| {
                v.as_object_mut().unwrap().remove("model_type");
            });
            eval(&m, r)
        }),
        case!(
            "config hidden_size disagrees with tensors",
            BAD_INPUT,
            "shape",
            |r| {
                let m = tiny(r);
                edit_json(&m.join("config.json"), |v| v["hidden_size"] = 96.into());
                quantize_args(&m, r, &[])
            }
        ),
        case!(
            "config has more layers than the checkpoint",
            BAD_INPUT,
            "model.layers.2",
            |r| {
                let m = tiny(r);
                edit_json(&m.join("config.json"), |v| {
                    v["num_hidden_layers"] = 3.into()
                });
                eval(&m, r)
            }
        ),
        case!("absurd config sizes", BAD_INPUT, "config", |r| {
            let m = tiny(r);
            edit_json(&m.join("config.json"), |v| {
                v["vocab_size"] = 1_000_000_000_000_000u64.into();
                v["max_position_embeddings"] = 1_000_000_000_000u64.into();
            });
            eval(&m, r)
        }),
        case!(
            "negative config field",
            BAD_INPUT,
            "non-negative integer",
            |r| {
                let m = tiny(r);
                edit_json(&m.join("config.json"), |v| {
                    v["intermediate_size"] = (-96).into()
                });
                eval(&m, r)
            }
        ),
        case!("corrupt tokenizer.json", BAD_INPUT, "tokenizer", |r| {
            let m = tiny(r);
            std::fs::write(m.join("tokenizer.json"), "{\"model\": {\"type\": \"BPE\"").unwrap();
            quantize_args(&m, r, &[])
        }),
        // --- safetensors ---
        case!("truncated safetensors", BAD_INPUT, "outside", |r| {
            let m = tiny(r);
            let p = m.join("model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            eval(&m, r)
        }),
        case!(
            "safetensors shorter than its length prefix",
            BAD_INPUT,
            "shorter than the 8-byte",
            |r| {
                let m = tiny(r);
                std::fs::write(m.join("model.safetensors"), [1u8, 2, 3, 4]).unwrap();
                inspect(&m)
            }
        ),
        case!("empty safetensors", BAD_INPUT, "0 bytes", |r| {
            let m = tiny(r);
            std::fs::write(m.join("model.safetensors"), []).unwrap();
            inspect(&m)
        }),
        case!("header length u64::MAX", BAD_INPUT, "header length", |r| {
            let m = tiny(r);
            let p = m.join("model.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            std::fs::write(&p, b).unwrap();
            eval(&m, r)
        }),
        case!(
            "header length past the end",
            BAD_INPUT,
            "runs past the end",
            |r| {
                let m = tiny(r);
                let p = m.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len() as u64;
                b[..8].copy_from_slice(&n.to_le_bytes());
                std::fs::write(&p, b).unwrap();
                inspect(&m)
            }
        ),
        case!("header not JSON", BAD_INPUT, "not valid json", |r| {
            let m = tiny(r);
            let mut b = 16u64.to_le_bytes().to_vec();
            b.extend(b"\xff\xfe not json!!   "); // 16 bytes, as the length says
            std::fs::write(m.join("model.safetensors"), b).unwrap();
            inspect(&m)
        }),
        case!("overlapping tensors", BAD_INPUT, "overlap", |r| {
            let m = tiny(r);
            edit_header(&m.join("model.safetensors"), |h| {
                let e = h["model.norm.weight"]["data_offsets"].clone();
                let other = h
                    .iter()
                    .find(|(k, v)| k.ends_with("input_layernorm.weight") && v["data_offsets"] != e)
                    .map(|(k, _)| k.clone())
                    .unwrap();
                h[&other]["data_offsets"] = e;
            });
            eval(&m, r)
        }),
        case!("offsets out of range", BAD_INPUT, "outside", |r| {
            let m = tiny(r);
            edit_header(&m.join("model.safetensors"), |h| {
                h["model.norm.weight"]["data_offsets"] =
                    serde_json::json!([1_000_000_000u64, 1_000_000_192u64]);
            });
            inspect(&m)
        }),
        case!("offsets reversed", BAD_INPUT, "outside", |r| {
            let m = tiny(r);
            edit_header(&m.join("model.safetensors"), |h| {
                let o = h["model.norm.weight"]["data_offsets"].clone();
                h["model.norm.weight"]["data_offsets"] = serde_json::json!([o[1], o[0]]);
            });
            inspect(&m)
        }),
        case!("shape disagrees with byte span", BAD_INPUT, "needs", |r| {
            let m = tiny(r);
            edit_header(&m.join("model.safetensors"), |h| {
                h["model.norm.weight"]["shape"] = serde_json::json!([49]);
            });
            inspect(&m)
        }),
        case!("absurd shape", BAD_INPUT, "overflows", |r| {
            let m = tiny(r);
            edit_header(&m.join("model.safetensors"), |h| {
                h["model.norm.weight"]["shape"] =
                    serde_json::json!([4_611_686_018_427_387_904u64, 8]);
            });
            inspect(&m)
        }),
        case!(
            "unknown dtype",
            BAD_INPUT,
            "unsupported dtype `F8_E4M3`",
            |r| {
                let m = tiny(r);
                edit_header(&m.join("model.safetensors"), |h| {
                    h["model.norm.weight"]["dtype"] = "F8_E4M3".into();
                    h["model.norm.weight"]["shape"] = serde_json::json!([192]);
                });
                inspect(&m)
            }
        ),
        case!(
            "integer dtype for a weight",
            BAD_INPUT,
            "cannot be read as floating point",
            |r| {
                let m = tiny(r);
                edit_header(&m.join("model.safetensors"), |h| {
                    h["model.norm.weight"]["dtype"] = "I32".into();
                });
                eval(&m, r)
            }
        ),
        case!("NaN weight", BAD_INPUT, "non-finite", |r| {
            let m = tiny(r);
            poke_f32(
                &m.join("model.safetensors"),
                "model.layers.0.self_attn.q_proj.weight",
                f32::NAN,
            );
            quantize_args(&m, r, &[])
        }),
        case!("Inf weight", BAD_INPUT, "non-finite", |r| {
            let m = tiny(r);
            poke_f32(
                &m.join("model.safetensors"),
                "model.layers.1.mlp.up_proj.weight",
                f32::INFINITY,
            );
            quantize_args(&m, r, &[])
        }),
        case!(
            "tensor in two shards",
            BAD_INPUT,
            "more than one shard",
            |r| {
                let m = tiny(r);
                shard(&m, |_| {});
                std::fs::copy(
                    m.join("model-00001-of-00002.safetensors"),
                    m.join("model-00002-of-00002.safetensors"),
                )
                .unwrap();
                inspect(&m)
            }
        ),
        // --- sharded index ---
        case!(
            "index path escapes with ..",
            BAD_INPUT,
            "not a plain file name",
            |r| {
                let m = tiny(r);
                shard(&m, |v| {
                    v["weight_map"]["model.norm.weight"] = "../x.safetensors".into()
                });
                inspect(&m)
            }
        ),
        case!(
            "index absolute path",
            BAD_INPUT,
            "not a plain file name",
            |r| {
                let m = tiny(r);
                shard(&m, |v| {
                    v["weight_map"]["model.norm.weight"] = "/etc/passwd.safetensors".into()
                });
                inspect(&m)
            }
        ),
        case!(
            "index names a non-safetensors file",
            BAD_INPUT,
            "not a .safetensors file",
            |r| {
                let m = tiny(r);
                shard(&m, |v| {
                    v["weight_map"]["model.norm.weight"] = "config.json".into()
                });
                inspect(&m)
            }
        ),
        case!(
            "index names a missing shard",
            BAD_INPUT,
            "gone.safetensors",
            |r| {
                let m = tiny(r);
                shard(&m, |v| {
                    v["weight_map"]["model.norm.weight"] = "gone.safetensors".into()
                });
                eval(&m, r)
            }
        ),
        case!("index not JSON", BAD_INPUT, "invalid json", |r| {
            let m = tiny(r);
            shard(&m, |_| {});
            std::fs::write(m.join("model.safetensors.index.json"), "{\"weight_map\":").unwrap();
            inspect(&m)
        }),
        case!("index without weight_map", BAD_INPUT, "weight_map", |r| {
            let m = tiny(r);
            shard(&m, |v| v["weight_map"] = serde_json::json!([1, 2]));
            inspect(&m)
        }),
        // --- PyTorch pickles ---
        case!(
            "folder with only pytorch_model.bin",
            BAD_INPUT,
            "convert the model to safetensors",
            |r| {
                let m = tiny(r);
                std::fs::rename(m.join("model.safetensors"), m.join("pytorch_model.bin")).unwrap();
                quantize_args(&m, r, &[])
            }
        ),
        case!(".bin file as MODEL", BAD_INPUT, "unpickling", |r| {
            let p = r.join("pytorch_model.bin");
            std::fs::write(&p, b"PK\x03\x04 fake zip").unwrap();
            vec!["inspect".into(), s(&p)]
        }),
        case!(".pt file as MODEL", BAD_INPUT, "safetensors", |r| {
            let p = r.join("model.pt");
            std::fs::write(&p, b"\x80\x02 fake pickle").unwrap();
            vec!["eval".into(), s(&p)]
        }),
        // --- GGUF ---
        case!("truncated GGUF", BAD_INPUT, "invalid gguf", |r| {
            let b = gguf_builder().build();
            vec!["inspect".into(), s(&write_gguf(r, &b[..b.len() - 40]))]
        }),
        case!("GGUF bad magic", BAD_INPUT, "bad magic", |r| {
            let mut b = gguf_builder().build();
            b[..4].copy_from_slice(b"GGML");
            vec!["inspect".into(), s(&write_gguf(r, &b))]
        }),
        case!(
            "GGUF unsupported version",
            BAD_INPUT,
            "unsupported gguf version 9",
            |r| {
                let mut b = gguf_builder().build();
                b[4..8].copy_from_slice(&9u32.to_le_bytes());
                vec!["inspect".into(), s(&write_gguf(r, &b))]
            }
        ),
        case!("GGUF absurd tensor count", BAD_INPUT, "tensor count", |r| {
            let mut b = gguf_builder().build();
            b[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
            vec!["inspect".into(), s(&write_gguf(r, &b))]
        }),
        case!(
            "GGUF tensor offset out of range",
            BAD_INPUT,
            "out of range",
            |r| {
                let mut g = gguf_builder();
                g.raw_tensor(
                    "output_norm.weight",
                    &[8],
                    GgmlType::F32,
                    1 << 20,
                    vec![0; 32],
                );
                vec!["inspect".into(), s(&write_gguf(r, &g.build()))]
            }
        ),
        case!("GGUF convert of a broken file", BAD_INPUT, "gguf", |r| {
            let p = write_gguf(r, b"GGUF\x03\x00\x00\x00 too short");
            vec!["convert".into(), s(&p), s(&r.join("out"))]
        }),
        // --- quantize settings ---
        case!(
            "unsupported bit width",
            BAD_INPUT,
            "unsupported bit width 5",
            |r| {
                let m = tiny(r);
                quantize_args(&m, r, &["--bits", "5"])
            }
        ),
        case!("group size 0", BAD_INPUT, "group-size", |r| {
            let m = tiny(r);
            quantize_args(&m, r, &["--group-size", "0"])
        }),
        case!("GPU memory limit 0", BAD_INPUT, "max-gpu-memory", |r| {
            let m = tiny(r);
            quantize_args(&m, r, &["--max-gpu-memory", "0"])
        }),
        case!(
            "eval GPU memory limit 0",
            BAD_INPUT,
            "max-gpu-memory",
            |r| {
                let m = tiny(r);
                let mut a = eval(&m, r);
                a.extend([
                    "--device".into(),
                    "cuda".into(),
                    "--max-gpu-memory".into(),
                    "0".into(),
                ]);
                a
            }
        ),
        case!(
            "bad quantize_config.json",
            BAD_INPUT,
            "bits 6 is not supported",
            |r| {
                let m = tiny(r);
                let c = r.join("qc.json");
                std::fs::write(&c, r#"{"bits": 6, "group_size": 128}"#).unwrap();
                quantize_args(&m, r, &["--config", &s(&c)])
            }
        ),
        case!(
            "already quantized model",
            BAD_INPUT,
            "already quantized",
            |r| {
                let m = tiny(r);
                edit_json(
                    &m.join("config.json"),
                    |v| {
                        v["quantization_config"] = serde_json::json!({"bits": 4, "group_size": 128, "quant_method": "gptq"})
                    },
                );
                quantize_args(&m, r, &[])
            }
        ),
        // --- calibration data ---
        case!("empty calibration file", BAD_INPUT, "empty", |r| {
            let m = tiny(r);
            std::fs::write(r.join("calib.txt"), "").unwrap();
            quantize_args(&m, r, &[])
        }),
        case!(
            "too-short calibration text",
            BAD_INPUT,
            "not more than one window",
            |r| {
                let m = tiny(r);
                std::fs::write(r.join("calib.txt"), "a b c").unwrap();
                quantize_args(&m, r, &[])
            }
        ),
        case!("missing calibration file", BAD_INPUT, "not found", |r| {
            let m = tiny(r);
            std::fs::remove_file(r.join("calib.txt")).unwrap();
            quantize_args(&m, r, &[])
        }),
        case!("calibration file not UTF-8", BAD_INPUT, "not utf-8", |r| {
            let m = tiny(r);
            std::fs::write(r.join("calib.txt"), b"a b \xff\xfe c d").unwrap();
            quantize_args(&m, r, &[])
        }),
        case!(
            "calibration jsonl with a bad line",
            BAD_INPUT,
            "invalid json",
            |r| {
                let m = tiny(r);
                let p = r.join("c.jsonl");
                std::fs::write(&p, "{\"text\": \"a b c\"}\n{\"text\": \n").unwrap();
                let mut a = quantize_args(&m, r, &[]);
                let i = a.iter().position(|x| x == "--dataset").unwrap();
                a[i + 1] = s(&p);
                a
            }
        ),
        case!(
            "calibration jsonl without the text field",
            BAD_INPUT,
            "--text-field",
            |r| {
                let m = tiny(r);
                let p = r.join("c.jsonl");
                std::fs::write(&p, "{\"content\": \"a b c\"}\n").unwrap();
                let mut a = quantize_args(&m, r, &[]);
                let i = a.iter().position(|x| x == "--dataset").unwrap();
                a[i + 1] = s(&p);
                a
            }
        ),
        case!(
            "no calibration data",
            BAD_INPUT,
            "no calibration data",
            |r| {
                let m = tiny(r);
                vec!["quantize".into(), s(&m), "-o".into(), s(&r.join("out"))]
            }
        ),
        // --- outputs ---
        case!("output folder exists", BAD_INPUT, "exists", |r| {
            let m = tiny(r);
            std::fs::create_dir(r.join("out")).unwrap();
            std::fs::write(r.join("out/keep.txt"), "mine").unwrap();
            quantize_args(&m, r, &[])
        }),
        case!(
            "output under a regular file",
            IO_FAILURE,
            "not a directory",
            |r| {
                let m = tiny(r);
                std::fs::write(r.join("file"), "x").unwrap();
                let mut a = quantize_args(&m, r, &[]);
                let i = a.iter().position(|x| x == "-o").unwrap();
                a[i + 1] = s(&r.join("file/out"));
                a
            }
        ),
        case!(
            "convert into an existing folder",
            BAD_INPUT,
            "exists",
            |r| {
                let mut g = gguf_builder();
                g.meta("x", MetaValue::U8(1));
                let p = write_gguf(r, &g.build());
                std::fs::create_dir(r.join("out")).unwrap();
                vec!["convert".into(), s(&p), s(&r.join("out"))]
            }
        ),
        case!(
            "eval --json into a missing folder's file",
            IO_FAILURE,
            "not a directory",
            |r| {
                let m = tiny(r);
                std::fs::write(r.join("file"), "x").unwrap();
                let mut a = eval(&m, r);
                a.extend(["--json".into(), s(&r.join("file/r.json"))]);
                a
            }
        ),
    ]
}

#[test]
fn broken_inputs_fail_cleanly_and_leave_nothing() {
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let d = tempfile::tempdir().unwrap();
        let args = (c.setup)(d.path());
        let before = listing(d.path());
        let o = gptq(&args);
        if let Err(e) = check(c.name, &o, c.code, c.want) {
            failures.push(e);
        }
        let after = listing(d.path());
        if after != before {
            failures.push(format!(
                "{}: files changed: before {before:?}, after {after:?}",
                c.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases broke the contract:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_fixture_quantizes_when_nothing_is_broken() {
    // The control: the same fixture and arguments succeed, so each case
    // above fails for its own breakage.
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path());
    let o = gptq(&quantize_args(&m, d.path(), &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.path().join("out/model.safetensors").is_file());
    let e = gptq(&eval(&d.path().join("out"), d.path()));
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
}

#[test]
fn disk_full_is_an_io_error_and_leaves_nothing() {
    // RLIMIT_FSIZE (`ulimit -f`, 512- or 1024-byte blocks) makes any write
    // past 8 KiB fail with EFBIG; gptq ignores SIGXFSZ so the error surfaces.
    let d = tempfile::tempdir().unwrap();
    let m = tiny(d.path());
    let args = quantize_args(&m, d.path(), &[]);
    let before = listing(d.path());
    let mut script = String::from("ulimit -f 8 && exec \"$0\"");
    for i in 0..args.len() {
        script.push_str(&format!(" \"${{{}}}\"", i + 1));
    }
    let o = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_gptq"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    check("disk full", &o, IO_FAILURE, "file too large").unwrap();
    assert_eq!(listing(d.path()), before, "partial output left");
}

/// A random Llama big enough that quantizing it takes seconds.
fn slow_model(root: &Path) -> PathBuf {
    let m = tiny(root);
    let (h, f, layers, vocab) = (256usize, 768usize, 4usize, 128usize);
    edit_json(&m.join("config.json"), |v| {
        v["hidden_size"] = h.into();
        v["intermediate_size"] = f.into();
        v["num_hidden_layers"] = layers.into();
        v["num_attention_heads"] = 4.into();
        v["num_key_value_heads"] = 4.into();
        v["head_dim"] = 64.into();
        v["vocab_size"] = vocab.into();
    });
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut t = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).to_le_bytes()
            })
            .collect();
        TensorOut {
            name,
            dtype: DType::F32,
            shape,
            bytes: bytes.into(),
        }
    };
    let mut ts = vec![
        t("model.embed_tokens.weight".into(), vec![vocab, h]),
        t("model.norm.weight".into(), vec![h]),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            ts.push(t(format!("{p}.self_attn.{n}.weight"), vec![h, h]));
        }
        ts.push(t(format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
        ts.push(t(format!("{p}.mlp.up_proj.weight"), vec![f, h]));
        ts.push(t(format!("{p}.mlp.down_proj.weight"), vec![h, f]));
        ts.push(t(format!("{p}.input_layernorm.weight"), vec![h]));
        ts.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    std::fs::write(
        m.join("model.safetensors"),
        serialize(&ts, &BTreeMap::new()),
    )
    .unwrap();
    m
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_quantize_leaves_no_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let m = slow_model(d.path());
    let mut args = quantize_args(&m, d.path(), &[]);
    for (flag, v) in [("--nsamples", "256"), ("--seqlen", "128")] {
        let i = args.iter().position(|x| x == flag).unwrap();
        args[i + 1] = v.into();
    }
    let before = listing(d.path());
    let mut child = gptq_cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output folder exists, i.e. writing has begun.
    let tmp = d.path().join(format!(".out.tmp-{}", child.id()));
    let t0 = Instant::now();
    while !tmp.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "temp folder never appeared"
        );
        if child.try_wait().unwrap().is_some() {
            panic!("quantize ended before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: sends SIGINT to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    check("ctrl-c", &o, INTERRUPTED, "interrupted").unwrap();
    assert!(!d.path().join("out").exists(), "partial OUT_DIR");
    // The progress folder stays on purpose, for `--resume` (tests/resume.rs).
    let after: Vec<_> = listing(d.path())
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().contains("out.gptq-resume"))
        .collect();
    assert_eq!(after, before, "temporary files left");
}
