//! `gptq quantize --resume`: a run killed with SIGKILL at random points and
//! resumed (possibly killed again) writes a checkpoint bit-identical to an
//! uninterrupted run; resuming with other settings, or rerunning without
//! `--resume` over a run's progress, is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn quantize_cmd(out: &Path, calib: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptq"));
    c.arg("quantize")
        .arg(shared().join("models/stories260K"))
        .arg("-o")
        .arg(out)
        .args(["--bits", "4", "--group-size", "32", "--nsamples", "24"])
        .args(["--seqlen", "256", "--desc-act", "--dataset"])
        .arg(calib)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(out: &Path, calib: &Path, extra: &[&str]) -> Output {
    quantize_cmd(out, calib, extra).output().expect("run gptq")
}

fn work_dir(out: &Path) -> PathBuf {
    out.with_file_name(format!(
        "{}.gptq-resume",
        out.file_name().unwrap().to_string_lossy()
    ))
}

fn blocks_saved(out: &Path) -> usize {
    std::fs::read_dir(work_dir(out))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("block-"))
                .count()
        })
        .unwrap_or(0)
}

/// Every file of the checkpoint; `quantize_report.json` holds timings and is
/// the one file expected to differ.
fn checkpoint_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "quantize_report.json")
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    v.sort();
    v
}

/// SplitMix64, for reproducible "random" kill points.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Starts a run and SIGKILLs it once `after_blocks` blocks are saved plus a
/// further `delay`; returns whether it was killed before it finished.
fn run_and_kill(
    out: &Path,
    calib: &Path,
    extra: &[&str],
    after_blocks: usize,
    delay: Duration,
) -> bool {
    let mut child = quantize_cmd(out, calib, extra).spawn().expect("spawn gptq");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if blocks_saved(out) >= after_blocks || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    killed
}

#[test]
fn killed_runs_resume_to_a_bit_identical_checkpoint() {
    if !shared().join("models/stories260K").exists() {
        eprintln!("skipping: ../shared/data/models/stories260K not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A short calibration text keeps each run to a second or two.
    let text = std::fs::read_to_string(shared().join("text/brown/brown.txt")).unwrap();
    let calib = tmp.path().join("calib.txt");
    std::fs::write(&calib, &text[..200_000]).unwrap();

    let reference = tmp.path().join("reference");
    let o = run(&reference, &calib, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !work_dir(&reference).exists(),
        "progress folder left behind"
    );
    let want = checkpoint_files(&reference);

    // stories260K has 5 blocks. Kill points: after k saved blocks plus a
    // random delay of up to 30 ms; trials 3 and 4 also kill the resumed run.
    let mut rng = 0x5eed_u64;
    let mut kills = 0;
    for trial in 0..4 {
        let out = tmp.path().join(format!("run{trial}"));
        let k = (next(&mut rng) % 5) as usize;
        let delay = Duration::from_millis(next(&mut rng) % 30);
        let killed = run_and_kill(&out, &calib, &[], k, delay);
        kills += killed as usize;
        if trial >= 2 {
            let k2 = k + 1 + (next(&mut rng) % 2) as usize;
            run_and_kill(&out, &calib, &["--resume"], k2, Duration::ZERO);
        }
        assert!(
            !out.exists(),
            "trial {trial}: a killed run left {}",
            out.display()
        );
        let o = run(&out, &calib, &["--resume"]);
        assert!(
            o.status.success(),
            "trial {trial} (killed: {killed}, after {k} blocks): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !work_dir(&out).exists(),
            "trial {trial}: progress folder left behind"
        );
        let got = checkpoint_files(&out);
        assert_eq!(
            got.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            want.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        for ((n, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                a == b,
                "trial {trial} (killed after {k} blocks): {n} differs"
            );
        }
    }
    // The kill points are early enough that most trials interrupt a run.
    assert!(kills >= 1, "no trial interrupted a run");
}

#[test]
fn resume_is_refused_for_other_settings_and_progress_is_not_discarded_silently() {
    if !shared().join("models/stories260K").exists() {
        eprintln!("skipping: ../shared/data/models/stories260K not found");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(shared().join("text/brown/brown.txt")).unwrap();
    let calib = tmp.path().join("calib.txt");
    std::fs::write(&calib, &text[..200_000]).unwrap();
    let out = tmp.path().join("out");
    // Leave progress behind: kill after two blocks.
    run_and_kill(&out, &calib, &[], 2, Duration::ZERO);
    if !work_dir(&out).exists() {
        eprintln!("skipping: the run finished before it could be killed");
        return;
    }
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Same command without --resume: refused, progress kept.
    let o = run(&out, &calib, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("--resume"), "{}", err(&o));
    assert!(work_dir(&out).exists());
    // Other settings: refused.
    let o = run(&out, &calib, &["--resume", "--damp-percent", "0.05"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("other settings"), "{}", err(&o));
    assert!(!out.exists());
    // --overwrite starts over and succeeds.
    let o = run(&out, &calib, &["--overwrite"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!work_dir(&out).exists());
}
