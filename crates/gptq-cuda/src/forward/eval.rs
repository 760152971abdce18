//! Whole-model perplexity on the GPU (Llama family).
//!
//! The evaluation windows are the "calibration sequences" of a
//! [`GpuCalibration`]: they run through every block with the calibration
//! forward (all windows' states on the device, or in chunks under a memory
//! limit; each block's weights uploaded as f16 — GPTQ layers dequantized
//! from their checkpoint values). The head then runs on the device too, in
//! chunks of rows: the final RMSNorm (`blk_rms_norm`, f16 output), the
//! output layer as one f16 cuBLAS GEMM with f32 sums, and each row's
//! negative log-likelihood (`blk_nll`, sums in f64).

use super::*;
use gptq_models::{LayerwiseModel, LlamaHead};
use gptq_pipeline::BlockDevice;

/// Bytes of f32 logits per chunk of rows.
const LOGIT_BYTES: usize = 256 << 20;

/// What [`windows_nll`] measured.
#[derive(Debug, Clone)]
pub struct WindowsNll {
    /// Σ −log p(token) over every scored token.
    pub nll: f64,
    /// Tokens scored (each window's tokens after its first).
    pub scored: usize,
    /// Most device memory in use, bytes.
    pub peak_memory: usize,
}

/// Scores `windows` (each from an empty context: row `i` of a window
/// predicts its token `i + 1`) with `model` on the device of `cal` (a fresh
/// [`GpuCalibration`], with its memory limit if any). `progress(done,
/// total)` is called after each block and after the head.
pub fn windows_nll(
    mut cal: GpuCalibration,
    model: &dyn LayerwiseModel,
    windows: &[&[u32]],
    mut progress: impl FnMut(usize, usize),
) -> Result<WindowsNll> {
    let head = model
        .llama_head()
        .map_err(|e| Error::Unsupported(e.to_string()))?
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "GPU evaluation runs Llama-family models, not {}",
                model.arch().name
            ))
        })?;
    let lens: Vec<usize> = windows.iter().map(|w| w.len()).collect();
    cal.begin(&lens, model.hidden_size(), false)
        .map_err(from_pipeline)?;
    for w in windows {
        let x = model.embed(w).map_err(|e| Error::Shape(e.to_string()))?;
        cal.push_input(&x).map_err(from_pipeline)?;
    }
    let n = model.num_blocks();
    for b in 0..n {
        let block = model.block(b).map_err(|e| Error::Shape(e.to_string()))?;
        cal.load_block(&*block, false).map_err(from_pipeline)?;
        drop(block);
        cal.finish_block().map_err(from_pipeline)?;
        progress(b + 1, n + 1);
    }
    cal.block = None;
    let targets: Vec<u32> = windows
        .iter()
        .flat_map(|w| w.iter().skip(1).copied().chain([u32::MAX]))
        .collect();
    let nll = cal.head_nll(&head, &targets)?;
    progress(n + 1, n + 1);
    Ok(WindowsNll {
        nll,
        scored: lens.iter().map(|l| l.saturating_sub(1)).sum(),
        peak_memory: cal.peak,
    })
}

fn from_pipeline(e: gptq_pipeline::Error) -> Error {
    Error::Shape(e.to_string())
}

impl GpuCalibration {
    /// Σ NLL of the residual stream's rows through `head` against
    /// `targets` (one per token; `u32::MAX` skips a row).
    fn head_nll(&mut self, head: &LlamaHead<'_>, targets: &[u32]) -> Result<f64> {
        let h = self.hidden;
        let shape = head.lm_head.shape();
        if shape.len() != 2 || shape[1] != h || head.norm.len() != h {
            return Err(Error::Shape(format!(
                "the head is {shape:?} with a norm of {}, the stream {h} wide",
                head.norm.len()
            )));
        }
        let vocab = shape[0];
        let tokens: usize = self.all_lens.iter().sum();
        if targets.len() != tokens {
            return Err(Error::Shape(format!(
                "{} targets for {tokens} tokens",
                targets.len()
            )));
        }
        if let Some(t) = targets
            .iter()
            .find(|&&t| t != u32::MAX && t as usize >= vocab)
        {
            return Err(Error::Shape(format!(
                "target {t} is outside the vocabulary of {vocab}"
            )));
        }
        let w = self.upload_f16(head.lm_head.data())?;
        let norm = self.dev.upload(&head.norm)?;
        let rows = (LOGIT_BYTES / (4 * vocab.max(1))).clamp(1, tokens.max(1));
        let a = self.dev.zeros::<u16>(rows * h)?;
        let logits = self.dev.zeros::<f32>(rows * vocab)?;
        let nll = self.dev.zeros::<f32>(rows)?;
        // The stream's rows: on the device, or on the host when chunked.
        let resident = match (&self.chunks, self.lanes.first()) {
            (None, Some(l)) => Some(self.p(&l.x)),
            _ => None,
        };
        let (pw, pn, pa, pl) = (self.p(&w), self.p(&norm), self.p(&a), self.p(&logits));
        let mut total = 0f64;
        for r0 in (0..tokens).step_by(rows) {
            let r = rows.min(tokens - r0);
            let staged;
            let px = match resident {
                Some(p) => p + (r0 * h * 4) as u64,
                None => {
                    staged = self.dev.upload(&self.host_x[0][r0 * h..(r0 + r) * h])?;
                    self.p(&staged)
                }
            };
            let func = |n: &str| self.func(n);
            rms_norm_rows(&self.dev, func, px, 0, pn, head.eps, h, pa, 0, r)?;
            gemm(
                &self.dev,
                (r, vocab, h),
                1.0,
                Mat::f16(pa, h),
                Mat::f16(pw, h).t(),
                0.0,
                Mat::f32(pl, vocab),
                1,
            )?;
            let tg = self.dev.upload(&targets[r0..r0 + r])?;
            let (ptg, pnll, v32) = (self.p(&tg), self.p(&nll), vocab as i32);
            let f = self.func("blk_nll")?;
            let mut l = self.dev.stream.launch_builder(f);
            l.arg(&pl).arg(&v32).arg(&ptg).arg(&pnll);
            unsafe { l.launch(rows_cfg(r, 512)) }.ctx("blk_nll")?;
            let got = self.dev.download(&nll)?;
            for (v, &t) in got[..r].iter().zip(&targets[r0..r0 + r]) {
                if t != u32::MAX {
                    total += *v as f64;
                }
            }
            self.note_memory();
        }
        Ok(total)
    }
}
