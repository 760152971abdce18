//! Rotary position embeddings (Su et al. 2021, arXiv 2104.09864) in the HF
//! "rotate_half" layout, with the `rope_scaling` types `default`, `linear`
//! and `llama3` (Llama 3.1's frequency-dependent scaling).
//!
//! Config spellings: transformers 4.x writes `rope_theta` and `rope_scaling`
//! (`type` or `rope_type`); 5.x writes one `rope_parameters` object holding
//! `rope_type`, `rope_theta` and the scaling fields. Both are read.

use crate::{Error, Result};
use serde_json::Value;

/// The inverse frequencies of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `inv_freq[i]` for `i < head_dim/2`, in f32 as transformers computes it.
    pub inv_freq: Vec<f32>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

impl Rope {
    /// Parses the rope settings of `config` for heads of `head_dim`.
    pub fn from_config(config: &Value, head_dim: usize) -> Result<Self> {
        let params = config.get("rope_parameters").filter(|v| v.is_object());
        let scaling = config
            .get("rope_scaling")
            .filter(|v| v.is_object())
            .or(params);
        let theta = num(config, "rope_theta")
            .or_else(|| params.and_then(|p| num(p, "rope_theta")))
            .unwrap_or(10000.0);
        if theta <= 0.0 {
            return Err(Error::Config(format!(
                "rope_theta must be positive, found {theta}"
            )));
        }
        let half = head_dim / 2;
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in f32.
        let mut inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let kind = scaling
            .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let s = scaling.cloned().unwrap_or(Value::Null);
        let need = |k: &str| {
            num(&s, k).ok_or_else(|| Error::Config(format!("rope scaling `{kind}` needs `{k}`")))
        };
        match kind {
            "default" => {}
            "linear" => {
                let f = need("factor")? as f32;
                inv.iter_mut().for_each(|x| *x /= f);
            }
            "llama3" => {
                let factor = need("factor")?;
                let low = need("low_freq_factor")?;
                let high = need("high_freq_factor")?;
                let old = need("original_max_position_embeddings")?;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for x in inv.iter_mut() {
                    let f = *x as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let new = if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    };
                    *x = new as f32;
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "unsupported rope scaling type `{other}` (supported: default, linear, llama3)"
                )))
            }
        }
        Ok(Self { inv_freq: inv })
    }

    /// `cos` and `sin` tables `[positions.len(), head_dim/2]`.
    pub fn tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = f * p as f32; // the angle is an f32 product in transformers too
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_config_spellings() {
        let a = Rope::from_config(&json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}), 8).unwrap();
        let b = Rope::from_config(&json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}}), 8).unwrap();
        assert_eq!(a.inv_freq, b.inv_freq);
        assert_eq!(a.inv_freq[0], 0.5);
    }

    #[test]
    fn llama3_keeps_high_and_divides_low_frequencies() {
        let cfg = json!({"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let r = Rope::from_config(&cfg, 128).unwrap();
        let base = Rope::from_config(&json!({"rope_theta": 500000.0}), 128).unwrap();
        assert_eq!(r.inv_freq[0], base.inv_freq[0]);
        assert!((r.inv_freq[63] - base.inv_freq[63] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_type_is_an_error() {
        let e = Rope::from_config(&json!({"rope_scaling": {"type": "yarn", "factor": 2.0}}), 8)
            .unwrap_err();
        assert!(e.to_string().contains("yarn"));
    }
}
