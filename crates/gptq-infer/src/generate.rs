//! Autoregressive generation with a KV cache: greedy (temperature 0) or
//! temperature + nucleus (top-p) sampling from a seeded generator.

use crate::{Result, Tokenizer};
use gptq_models::{Batch, CausalLm};

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct SamplingOptions {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass (1 disables).
    pub top_p: f32,
    /// Generator seed.
    pub seed: u64,
    /// Keep generating after an end-of-sequence token (benchmarks).
    pub ignore_eos: bool,
}

/// SplitMix64 (Steele et al. 2014): small, seedable, good enough for sampling.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], opts: &SamplingOptions, rng: &mut Rng) -> u32 {
    if opts.temperature <= 0.0 {
        // Greedy: the first maximum, as torch.argmax.
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = opts.temperature as f64;
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - m) / t).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.iter_mut().for_each(|x| x.1 /= z);
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = p.len();
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, x) in p.iter().enumerate() {
            acc += x.1;
            if acc >= opts.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let p = &p[..keep];
    let z: f64 = p.iter().map(|x| x.1).sum();
    let mut u = rng.uniform() * z;
    for x in p {
        u -= x.1;
        if u <= 0.0 {
            return x.0 as u32;
        }
    }
    p[p.len() - 1].0 as u32
}

/// Incremental detokenization: each step decodes a window that starts at
/// the piece before the last one shown (context for a token's leading space)
/// rather than the whole output, so a step's work does not grow with the
/// output. Text is held back while it ends in an incomplete UTF-8 sequence
/// (bytes split over tokens), except at the end.
#[derive(Debug, Default)]
pub struct TextStream {
    /// First token of the window.
    prefix: usize,
    /// Tokens up to here are shown.
    read: usize,
}

impl TextStream {
    /// The text that `ids` (the whole output so far, grown since the last
    /// call) adds, if any is complete; `last` flushes what is held back.
    pub fn next(&mut self, tok: &Tokenizer, ids: &[u32], last: bool) -> Result<Option<String>> {
        if self.read > ids.len() {
            return Err(crate::Error::Input("the output shrank".into()));
        }
        let before = tok.decode(&ids[self.prefix..self.read], true)?;
        let now = tok.decode(&ids[self.prefix..], true)?;
        if now.len() > before.len()
            && now.starts_with(&before)
            && (last || !now.ends_with('\u{FFFD}'))
        {
            self.prefix = self.read;
            self.read = ids.len();
            return Ok(Some(now[before.len()..].to_string()));
        }
        Ok(None)
    }
}

/// Statistics of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub new_tokens: usize,
    /// Prompt processing time, seconds.
    pub prefill_seconds: f64,
    /// Decode time, seconds.
    pub decode_seconds: f64,
}

/// A model with its KV cache that continues one sequence: the CPU model
/// ([`CpuDecoder`]) or a GPU one (`gptq_cuda::GpuDecoder`).
pub trait Decoder {
    /// The longest sequence (context and new tokens) it runs.
    fn max_positions(&self) -> usize;
    /// Runs `tokens` after the cached context (which grows by them) and
    /// returns the last token's logits `[vocab]`.
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
}

/// A CPU [`CausalLm`] and its KV cache as a [`Decoder`].
pub struct CpuDecoder<'m> {
    model: &'m dyn CausalLm,
    cache: gptq_models::KvCache,
}

impl<'m> CpuDecoder<'m> {
    /// An empty context.
    pub fn new(model: &'m dyn CausalLm) -> Self {
        Self {
            model,
            cache: model.new_cache(1),
        }
    }
}

impl Decoder for CpuDecoder<'_> {
    fn max_positions(&self) -> usize {
        self.model.info().max_position_embeddings
    }

    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(crate::Error::Input("no tokens to run".into()));
        }
        let len = [n];
        let h = self
            .model
            .forward_hidden(&Batch::single(tokens, &len), &mut self.cache)?;
        let d = h.len() / n;
        Ok(self.model.logits(&h[(n - 1) * d..], 1))
    }
}

/// Generates after `prompt` with the CPU model (see [`generate_with`]).
pub fn generate(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &SamplingOptions,
    on_text: impl FnMut(&str),
) -> Result<(Vec<u32>, GenerateStats)> {
    generate_with(&mut CpuDecoder::new(model), tok, prompt, opts, on_text)
}

/// Generates after `prompt` with a fresh `decoder`, calling `on_text` with
/// each new piece of decoded text as soon as it is complete (UTF-8
/// sequences split over byte tokens are held back until whole). Returns all
/// new ids.
pub fn generate_with(
    decoder: &mut dyn Decoder,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &SamplingOptions,
    mut on_text: impl FnMut(&str),
) -> Result<(Vec<u32>, GenerateStats)> {
    if prompt.is_empty() {
        return Err(crate::Error::Input(
            "the prompt encodes to no tokens".into(),
        ));
    }
    let maxp = decoder.max_positions();
    if prompt.len() >= maxp {
        return Err(crate::Error::Input(format!(
            "the prompt has {} tokens, the model's limit is {maxp}",
            prompt.len()
        )));
    }
    let mut rng = Rng::new(opts.seed);
    let t0 = std::time::Instant::now();
    let mut logits = decoder.next_logits(prompt)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut out: Vec<u32> = Vec::new();
    let mut stream = TextStream::default();
    let budget = opts.max_new_tokens.min(maxp - prompt.len());
    for _ in 0..budget {
        let next = sample(&logits, opts, &mut rng);
        if !opts.ignore_eos && tok.eos_ids.contains(&next) {
            break;
        }
        out.push(next);
        if let Some(piece) = stream.next(tok, &out, false)? {
            on_text(&piece);
        }
        if out.len() == budget {
            break;
        }
        logits = decoder.next_logits(&[next])?;
    }
    if let Some(piece) = stream.next(tok, &out, true)? {
        on_text(&piece);
    }
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        new_tokens: out.len(),
        prefill_seconds: prefill,
        decode_seconds: t1.elapsed().as_secs_f64(),
    };
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let o = SamplingOptions {
            max_new_tokens: 1,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            ignore_eos: false,
        };
        assert_eq!(sample(&[0.0, 2.0, 2.0, 1.0], &o, &mut Rng::new(0)), 1);
    }

    #[test]
    fn top_p_excludes_the_tail_and_seed_repeats() {
        let o = SamplingOptions {
            max_new_tokens: 1,
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
            ignore_eos: false,
        };
        let logits = [5.0f32, 0.0, 0.0, 0.0];
        let mut r = Rng::new(1);
        for _ in 0..100 {
            assert_eq!(sample(&logits, &o, &mut r), 0);
        }
        let o = SamplingOptions { top_p: 1.0, ..o };
        let a: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..50).map(|_| sample(&[0.0; 4], &o, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(7);
            (0..50).map(|_| sample(&[0.0; 4], &o, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
    }
}
