//! Perplexity with the GPTQ paper's protocol: the whole text tokenized once,
//! cut into non-overlapping windows of `seqlen` tokens (the tail shorter than
//! a window is dropped), each window scored on its own from an empty cache
//! (the first token of a window is context only), and
//! `ppl = exp(mean NLL over all scored tokens)`.

use crate::{Error, Result};
use gptq_kernels::cpu::log_sum_exp;
use gptq_models::{Batch, CausalLm};
use std::time::Instant;

/// Rows of logits computed at once (bounds memory: rows × vocab f32).
const LOGIT_ROWS: usize = 128;

/// Evaluation settings.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Window length in tokens.
    pub seqlen: usize,
    /// Score only the first `max_windows` windows.
    pub max_windows: Option<usize>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalResult {
    /// Perplexity.
    pub ppl: f64,
    /// Mean negative log-likelihood (nats per token).
    pub mean_nll: f64,
    /// Windows scored.
    pub windows: usize,
    /// Window length.
    pub seqlen: usize,
    /// Tokens in the whole tokenized text.
    pub text_tokens: usize,
    /// Tokens scored (windows × (seqlen − 1)).
    pub scored_tokens: usize,
    /// Wall time of the forward passes, seconds.
    pub seconds: f64,
    /// Tokens processed per second (windows × seqlen / seconds).
    pub tokens_per_second: f64,
}

/// Summed NLL of `targets` given hidden states `[rows, d]` (row `i` predicts
/// `targets[i]`).
pub fn nll_sum(model: &dyn CausalLm, hidden: &[f32], targets: &[u32]) -> f64 {
    let d = hidden.len() / targets.len().max(1);
    let v = model.info().vocab_size;
    let mut total = 0.0f64;
    for (c, tgt) in targets.chunks(LOGIT_ROWS).enumerate() {
        let h = &hidden[c * LOGIT_ROWS * d..(c * LOGIT_ROWS + tgt.len()) * d];
        let logits = model.logits(h, tgt.len());
        for (row, &t) in logits.chunks(v).zip(tgt) {
            total += log_sum_exp(row) - row[t as usize] as f64;
        }
    }
    total
}

/// How many windows of `opts.seqlen` tokens `ids` gives (checked against
/// the model's `max_positions`); one place for the CPU and GPU evaluations.
pub fn window_count(ids: &[u32], opts: EvalOptions, max_positions: usize) -> Result<usize> {
    let seqlen = opts.seqlen;
    if seqlen < 2 {
        return Err(Error::Input(format!(
            "--seqlen must be at least 2, got {seqlen}"
        )));
    }
    if seqlen > max_positions {
        return Err(Error::Input(format!(
            "--seqlen {seqlen} exceeds the model's max_position_embeddings ({max_positions})"
        )));
    }
    if ids.is_empty() {
        return Err(Error::Input("the evaluation text is empty".into()));
    }
    let windows = ids.len() / seqlen;
    if windows == 0 {
        return Err(Error::Input(format!(
            "the evaluation text has {} tokens, shorter than one window of {seqlen}; pass a smaller --seqlen or a longer text",
            ids.len()
        )));
    }
    Ok(match opts.max_windows {
        Some(m) => windows.min(m.max(1)),
        None => windows,
    })
}

impl EvalResult {
    /// The result of scoring `windows` windows of `seqlen` tokens (out of a
    /// text of `text_tokens`) with summed NLL `nll` in `seconds`.
    pub fn new(nll: f64, windows: usize, seqlen: usize, text_tokens: usize, seconds: f64) -> Self {
        let scored = windows * (seqlen - 1);
        let mean_nll = nll / scored.max(1) as f64;
        EvalResult {
            ppl: mean_nll.exp(),
            mean_nll,
            windows,
            seqlen,
            text_tokens,
            scored_tokens: scored,
            seconds,
            tokens_per_second: (windows * seqlen) as f64 / seconds.max(1e-9),
        }
    }
}

/// Scores `ids`; `progress(done, total, running_ppl)` is called after each window.
pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    opts: EvalOptions,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<EvalResult> {
    let seqlen = opts.seqlen;
    let windows = window_count(ids, opts, model.info().max_position_embeddings)?;
    let start = Instant::now();
    let mut nll = 0.0f64;
    for w in 0..windows {
        let win = &ids[w * seqlen..(w + 1) * seqlen];
        let len = [seqlen];
        let mut cache = model.new_cache(1);
        let hidden = model.forward_hidden(&Batch::single(win, &len), &mut cache)?;
        let d = hidden.len() / seqlen;
        nll += nll_sum(model, &hidden[..(seqlen - 1) * d], &win[1..]);
        progress(
            w + 1,
            windows,
            (nll / ((w + 1) * (seqlen - 1)) as f64).exp(),
        );
    }
    Ok(EvalResult::new(
        nll,
        windows,
        seqlen,
        ids.len(),
        start.elapsed().as_secs_f64(),
    ))
}
