//! End-to-end tests of the `gptq` binary: real runs on stories260K (from
//! `../shared`) and the bad-input contract — one `error:` line, exit status 2,
//! no panic, no partial output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared() -> PathBuf {
    repo().join("../shared/data")
}

fn gptq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptq"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gptq")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the bad-input contract and that the message mentions `want`.
/// `--device auto` without a GPU says once that it runs on the CPU.
fn assert_one_cpu_fallback_line(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("running on the CPU"))
            .count(),
        1,
        "{err}"
    );
}

fn assert_clean_error(o: &Output, want: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "exit status; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want one error line: {err}");
    assert!(
        lines[0].to_lowercase().contains(&want.to_lowercase()),
        "`{want}` not in: {err}"
    );
}

fn reference_greedy() -> (Vec<u64>, String) {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(shared().join("models/stories260K-reference.json")).unwrap(),
    )
    .unwrap();
    let g = &v["greedy_from_bos"];
    (
        g["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect(),
        g["text"].as_str().unwrap().into(),
    )
}

#[test]
fn stories260k_greedy_from_bos_matches_reference_from_hf_and_gguf() {
    let (ids, text) = reference_greedy();
    let n = (ids.len() - 1).to_string();
    let hf = gptq(&[
        "generate",
        shared().join("models/stories260K").to_str().unwrap(),
        "--max-new-tokens",
        &n,
    ]);
    assert!(
        hf.status.success(),
        "{}",
        String::from_utf8_lossy(&hf.stderr)
    );
    let gguf_path = shared().join("models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf");
    let gg = gptq(&[
        "generate",
        gguf_path.to_str().unwrap(),
        "--max-new-tokens",
        &n,
    ]);
    assert!(
        gg.status.success(),
        "{}",
        String::from_utf8_lossy(&gg.stderr)
    );
    assert_eq!(stdout(&hf), stdout(&gg), "HF folder and GGUF disagree");
    // The reference text is the decode of the same ids (float64 numpy forward).
    assert_eq!(stdout(&hf).trim_end(), text.trim_end());
    assert!(stdout(&hf).starts_with("Once upon a time, there was a little girl named Lily."));
}

#[test]
fn stories260k_tinystories_perplexity_matches_reference_protocol() {
    // ../shared/data/README.md, variant A: 1,535 windows of 256 tokens, PPL 5.120
    // (float64 numpy). f32 summation differences stay far below the 0.005 rounding.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let o = gptq(&[
        "eval",
        shared().join("models/stories260K").to_str().unwrap(),
        "--dataset",
        shared()
            .join("text/tinystories/tinystories_val.txt")
            .to_str()
            .unwrap(),
        "--seqlen",
        "256",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ppl = v["result"]["ppl"].as_f64().unwrap();
    assert_eq!(v["result"]["windows"].as_u64(), Some(1535));
    assert!((ppl - 5.120).abs() < 0.005, "ppl {ppl}");
}

#[test]
fn convert_writes_a_folder_that_runs_like_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let gguf = shared().join("models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf");
    let o = gptq(&[
        "convert",
        gguf.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let a = gptq(&["generate", out.to_str().unwrap(), "--max-new-tokens", "40"]);
    let b = gptq(&["generate", gguf.to_str().unwrap(), "--max-new-tokens", "40"]);
    assert_eq!(stdout(&a), stdout(&b));
    // A second convert into the same folder is refused without --overwrite.
    let again = gptq(&["convert", gguf.to_str().unwrap(), out.to_str().unwrap()]);
    assert_clean_error(&again, "exists");
}

/// A copy of the stories260K folder in a temp dir, to break in one way.
fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(
            shared().join("models/stories260K").join(f),
            d.path().join(f),
        )
        .unwrap();
    }
    edit(d.path());
    d
}

fn eval_dir(d: &Path) -> Output {
    gptq(&[
        "eval",
        d.to_str().unwrap(),
        "--seqlen",
        "64",
        "--max-windows",
        "1",
    ])
}

#[test]
fn bad_model_folders_fail_cleanly() {
    let d = broken_copy(|p| std::fs::remove_file(p.join("config.json")).unwrap());
    assert_clean_error(&eval_dir(d.path()), "config.json");

    let d = broken_copy(|p| std::fs::write(p.join("config.json"), "{\"model_type\": ").unwrap());
    assert_clean_error(&eval_dir(d.path()), "invalid json");

    let d = broken_copy(|p| {
        let c = std::fs::read_to_string(p.join("config.json"))
            .unwrap()
            .replace("\"llama\"", "\"gpt_neox\"");
        std::fs::write(p.join("config.json"), c).unwrap()
    });
    assert_clean_error(
        &eval_dir(d.path()),
        "unsupported model_type `gpt_neox` (supported: llama",
    );

    let d = broken_copy(|p| {
        let b = std::fs::read(p.join("model.safetensors")).unwrap();
        std::fs::write(p.join("model.safetensors"), &b[..b.len() / 2]).unwrap()
    });
    assert_clean_error(&eval_dir(d.path()), "outside");

    let d = broken_copy(|p| {
        let mut b = std::fs::read(p.join("model.safetensors")).unwrap();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(p.join("model.safetensors"), &b).unwrap()
    });
    assert_clean_error(&eval_dir(d.path()), "header length");

    let d = broken_copy(|p| std::fs::remove_file(p.join("tokenizer.json")).unwrap());
    assert_clean_error(&eval_dir(d.path()), "tokenizer.json");

    let d = broken_copy(|p| {
        let c = std::fs::read_to_string(p.join("config.json"))
            .unwrap()
            .replace("\"hidden_size\": 64", "\"hidden_size\": 32");
        std::fs::write(p.join("config.json"), c).unwrap()
    });
    assert_clean_error(&eval_dir(d.path()), "shape");
}

#[test]
fn bad_gguf_fails_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let b =
        std::fs::read(shared().join("models/stories260K-gguf/tinyllamas-stories-260k-f32.gguf"))
            .unwrap();
    let cut = d.path().join("cut.gguf");
    std::fs::write(&cut, &b[..b.len() / 3]).unwrap();
    let o = gptq(&["eval", cut.to_str().unwrap(), "--seqlen", "64"]);
    assert_clean_error(&o, "gguf");
    let junk = d.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    assert_clean_error(&gptq(&["inspect", junk.to_str().unwrap()]), "gguf");
    let out = d.path().join("out");
    assert_clean_error(
        &gptq(&["convert", junk.to_str().unwrap(), out.to_str().unwrap()]),
        "gguf",
    );
    assert!(!out.exists(), "partial output left behind");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        2,
        "temp files left behind"
    );
}

#[test]
fn bad_eval_text_fails_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let model = shared().join("models/stories260K");
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let o = gptq(&[
        "eval",
        model.to_str().unwrap(),
        "--dataset",
        empty.to_str().unwrap(),
        "--no-special-tokens",
    ]);
    assert_clean_error(&o, "empty");
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Once upon a time").unwrap();
    let o = gptq(&[
        "eval",
        model.to_str().unwrap(),
        "--dataset",
        short.to_str().unwrap(),
        "--seqlen",
        "256",
    ]);
    assert_clean_error(&o, "shorter than one window");
    let o = gptq(&[
        "eval",
        model.to_str().unwrap(),
        "--dataset",
        "no-such-file.txt",
    ]);
    assert_clean_error(&o, "no-such-file.txt");
    let o = gptq(&["eval", model.to_str().unwrap(), "--seqlen", "100000"]);
    assert_clean_error(&o, "max_position_embeddings");
}

#[test]
fn missing_model_and_offline_hub_fail_cleanly() {
    let o = gptq(&["inspect", "/no/such/dir"]);
    assert_clean_error(&o, "no such folder");
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_gptq"))
        .args(["inspect", "some-org/some-model"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", d.path())
        .output()
        .unwrap();
    assert_clean_error(&o, "HF_HUB_OFFLINE");
}

#[test]
fn chat_generation_uses_the_template() {
    // stories260K has no chat template: a clear error, not a crash.
    let o = gptq(&[
        "generate",
        shared().join("models/stories260K").to_str().unwrap(),
        "--chat",
        "--prompt",
        "hi",
    ]);
    assert_clean_error(&o, "chat_template");
}

/// SmolLM2 from `GPTQ_SMOLLM2_GGUF` or `.dev/smollm2/`, if fetched.
fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("GPTQ_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".dev/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipped: SmolLM2 GGUF not found (run scripts/fetch-smollm2.sh .dev/smollm2)");
        None
    }
}

#[test]
fn smollm2_chat_answers_and_gpt2_tokenizer_round_trips() {
    let Some(g) = smollm2() else { return };
    let o = gptq(&[
        "generate",
        g.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
}

#[test]
fn smollm2_first_wikitext_window_is_in_the_expected_range() {
    // One 2048-token window of WikiText-2; the full test set gives ≈ 18–22
    // for this model (see bench/results). A wrong tokenizer pre-split or
    // rotary layout gives hundreds.
    let Some(g) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let o = gptq(&[
        "eval",
        g.to_str().unwrap(),
        "--max-windows",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ppl = v["result"]["ppl"].as_f64().unwrap();
    assert!((5.0..40.0).contains(&ppl), "ppl {ppl}");
}

fn stories() -> String {
    shared()
        .join("models/stories260K")
        .to_str()
        .unwrap()
        .to_string()
}

fn brown() -> String {
    shared()
        .join("text/brown/brown.txt")
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn quantize_8bit_per_channel_writes_a_loadable_checkpoint() {
    // 8 bits pack every stories260K layer (172·8 is a multiple of 32).
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q8");
    let o = gptq(&[
        "quantize",
        &stories(),
        "-o",
        out.to_str().unwrap(),
        "--bits",
        "8",
        "--group-size",
        "-1",
        "--asym",
        "--dataset",
        &brown(),
        "--nsamples",
        "8",
        "--seqlen",
        "128",
        "--format",
        "v2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("35 layers quantized, 0 skipped"),
        "{}",
        stdout(&o)
    );
    for f in [
        "config.json",
        "quantize_config.json",
        "quantize_report.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let qc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(qc["bits"], 8);
    assert_eq!(qc["checkpoint_format"], "gptq_v2");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "gptq");
    // 8-bit per-channel stays close to the original: same greedy story start.
    let a = gptq(&["generate", out.to_str().unwrap(), "--max-new-tokens", "12"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(stdout(&a).starts_with("Once upon a time"), "{}", stdout(&a));
    let i = gptq(&["inspect", out.to_str().unwrap()]);
    assert!(stdout(&i).contains("quantization"), "{}", stdout(&i));
    // Quantizing an already quantized model is refused.
    let again = gptq(&[
        "quantize",
        out.to_str().unwrap(),
        "-o",
        d.path().join("qq").to_str().unwrap(),
        "--dataset",
        &brown(),
    ]);
    assert_clean_error(&again, "already quantized");
}

#[test]
fn quantize_bad_input_fails_cleanly_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o_ = out.to_str().unwrap();
    assert_clean_error(
        &gptq(&["quantize", &stories(), "-o", o_]),
        "no calibration data",
    );
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Once upon a time").unwrap();
    let s_ = short.to_str().unwrap();
    assert_clean_error(
        &gptq(&[
            "quantize",
            &stories(),
            "-o",
            o_,
            "--dataset",
            s_,
            "--seqlen",
            "128",
        ]),
        "not more than one window",
    );
    assert_clean_error(
        &gptq(&[
            "quantize",
            &stories(),
            "-o",
            o_,
            "--dataset",
            s_,
            "--bits",
            "5",
        ]),
        "unsupported bit width",
    );
    assert_clean_error(
        &gptq(&[
            "quantize",
            &stories(),
            "-o",
            o_,
            "--dataset",
            s_,
            "--group-size",
            "0",
        ]),
        "group",
    );
    assert_clean_error(
        &gptq(&[
            "quantize",
            &stories(),
            "-o",
            o_,
            "--dataset",
            s_,
            "--damp-percent",
            "1.5",
        ]),
        "damp",
    );
    assert!(!out.exists());
    // Existing output folder without --overwrite.
    std::fs::create_dir(&out).unwrap();
    assert_clean_error(
        &gptq(&["quantize", &stories(), "-o", o_, "--dataset", &brown()]),
        "exists",
    );
    // Unwritable destination (a path under a regular file).
    let blocker = d.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let bad = blocker.join("out");
    let o = gptq(&[
        "quantize",
        &stories(),
        "-o",
        bad.to_str().unwrap(),
        "--dataset",
        &brown(),
        "--nsamples",
        "2",
        "--seqlen",
        "64",
    ]);
    // An OS I/O failure (ENOTDIR): exit status 3 (README, docs/reliability.md).
    assert_eq!(o.status.code(), Some(3));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    // NaN weights are named, and no output or temp folder is left.
    let m = broken_copy(|p| {
        let mut b = std::fs::read(p.join("model.safetensors")).unwrap();
        let h = gptq_io::safetensors::parse_header(&b).unwrap();
        let at = h.data_start + h.tensors["model.layers.0.self_attn.q_proj.weight"].begin + 40;
        b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(p.join("model.safetensors"), &b).unwrap()
    });
    let out2 = d.path().join("out2");
    let o = gptq(&[
        "quantize",
        m.path().to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--dataset",
        &brown(),
        "--nsamples",
        "2",
        "--seqlen",
        "64",
    ]);
    assert_clean_error(&o, "non-finite");
    assert!(!out2.exists());
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp folders left: {leftovers:?}");
}

#[test]
fn quantize_lists_dense_layers_for_gptqmodel_and_transformers() {
    // stories260K's 172-wide MLP does not pack at 4 bits: those layers stay f16,
    // excluded by `dynamic` rules (GPTQModel) and by `modules_in_block_to_quantize`
    // (transformers/optimum, which ignores `dynamic`).
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q4");
    let o = gptq(&[
        "quantize",
        &stories(),
        "-o",
        out.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--dataset",
        &brown(),
        "--nsamples",
        "4",
        "--seqlen",
        "128",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).contains("20 layers quantized, 15 skipped"),
        "{}",
        stdout(&o)
    );
    let qc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(
        qc["modules_in_block_to_quantize"],
        serde_json::json!([
            ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
            ["self_attn.o_proj"]
        ])
    );
    let rules = qc["dynamic"].as_object().unwrap();
    assert_eq!(rules.len(), 15);
    assert!(rules.contains_key("-:^model\\.layers\\.0\\.mlp\\.up_proj$"));
    let e = gptq(&[
        "eval",
        out.to_str().unwrap(),
        "--dataset",
        shared()
            .join("text/tinystories/tinystories_val.txt")
            .to_str()
            .unwrap(),
        "--seqlen",
        "128",
        "--max-windows",
        "4",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
}

/// Asymmetric calibration is the default, can be switched off by flag or by
/// `--config`, is recorded in `quantize_config.json` (`meta`), and changes
/// the result.
#[test]
fn asym_calib_default_flag_and_config() {
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| -> (serde_json::Value, Vec<u8>) {
        let out = d.path().join(name);
        let o_ = out.to_str().unwrap().to_string();
        let mut args = vec![
            "quantize",
            &stories(),
            "-o",
            &o_,
            "--dataset",
            &brown(),
            "--nsamples",
            "4",
            "--seqlen",
            "64",
            "--bits",
            "8",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = gptq(&refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let qc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("quantize_config.json")).unwrap(),
        )
        .unwrap();
        (qc, std::fs::read(out.join("model.safetensors")).unwrap())
    };
    let (on, w_on) = run("on", &[]);
    assert_eq!(on["meta"]["asym_calibration"], serde_json::json!(true));
    let (off, w_off) = run("off", &["--asym-calib", "false"]);
    assert_eq!(off["meta"]["asym_calibration"], serde_json::json!(false));
    assert_ne!(w_on, w_off, "asymmetric calibration changed nothing");
    // A config file written by an earlier run carries the setting.
    let cfg = d.path().join("qc.json");
    std::fs::write(&cfg, serde_json::to_string(&off).unwrap()).unwrap();
    let (again, w_again) = run("again", &["--config", cfg.to_str().unwrap()]);
    assert_eq!(again["meta"]["asym_calibration"], serde_json::json!(false));
    assert_eq!(w_again, w_off);
}

/// `--device`: a bad value is a usage error; `cuda` on a machine without a
/// usable GPU is one clean error and no output; `auto` there solves on the
/// CPU and says so once.
#[test]
fn quantize_device_flag() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("q");
    let run = |device: &str| {
        gptq(&[
            "quantize",
            &stories(),
            "-o",
            out.to_str().unwrap(),
            "--dataset",
            &brown(),
            "--nsamples",
            "2",
            "--seqlen",
            "64",
            "--bits",
            "8",
            "--device",
            device,
        ])
    };
    let o = run("tpu");
    assert_clean_error(&o, "not auto, cpu, cuda or cuda:N");
    assert!(!out.exists());
    if gptq_cuda::probe_libraries().is_ok() {
        eprintln!("a CUDA driver is present: the no-GPU half of this test does not apply");
        return;
    }
    let o = run("cuda:1");
    assert_clean_error(&o, "cannot use CUDA device 1");
    assert!(!out.exists(), "no output after a device error");
    let o = run("auto");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_one_cpu_fallback_line(&o);
}

/// `generate --device`: `cuda` without a usable GPU is one clean error and
/// prints no text; `auto` there generates on the CPU (the same greedy text
/// as `--device cpu`) and says so once.
#[test]
fn generate_device_flag() {
    let model = stories();
    let run = |device: &str| {
        gptq(&[
            "generate",
            &model,
            "--max-new-tokens",
            "16",
            "--device",
            device,
        ])
    };
    let cpu = run("cpu");
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    if gptq_cuda::probe_libraries().is_ok() {
        eprintln!("a CUDA driver is present: the no-GPU half of this test does not apply");
        return;
    }
    let o = run("cuda");
    assert_clean_error(&o, "cannot use CUDA device 0");
    assert!(o.stdout.is_empty(), "no text after a device error");
    let o = run("auto");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), stdout(&cpu));
    assert_one_cpu_fallback_line(&o);
}
