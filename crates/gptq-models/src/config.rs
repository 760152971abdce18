//! Typed access to `config.json` fields with errors that name the field.

use crate::{Error, Result};
use serde_json::Value;

/// Largest size a config field may hold (2^31): far above any real
/// dimension, vocabulary or context length, small enough that products of
/// two sizes fit in 64 bits.
pub(crate) const MAX_SIZE: usize = 1 << 31;

/// A view of `config.json` for one architecture.
pub(crate) struct Cfg<'a> {
    pub v: &'a Value,
}

impl<'a> Cfg<'a> {
    pub fn new(v: &'a Value) -> Self {
        Self { v }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.v.get(key).filter(|x| !x.is_null())
    }

    /// A size field: a non-negative integer no larger than [`MAX_SIZE`], so
    /// sums and products of a few sizes cannot overflow and nothing is
    /// allocated from an absurd value.
    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(Error::Config(format!("missing `{key}`"))),
            Some(x) => {
                let v = x
                    .as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| {
                        Error::Config(format!("`{key}` must be a non-negative integer, found {x}"))
                    })?;
                if v > MAX_SIZE {
                    return Err(Error::Config(format!(
                        "`{key}` is {v}, larger than any model could use (limit {MAX_SIZE})"
                    )));
                }
                Ok(v)
            }
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.get(key).is_none() {
            Ok(default)
        } else {
            self.usize(key)
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.usize(key).map(Some)
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| Error::Config(format!("`{key}` must be a number, found {x}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_bool()
                .ok_or_else(|| Error::Config(format!("`{key}` must be true or false, found {x}"))),
        }
    }

    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_str()
                .ok_or_else(|| Error::Config(format!("`{key}` must be a string, found {x}"))),
        }
    }

    /// A token id field that may be a number or a list of numbers.
    pub fn token_ids(&self, key: &str) -> Vec<u32> {
        match self.get(key) {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    }

    /// Checks that `a` is a positive multiple of `b`.
    pub fn divides(&self, a: (&str, usize), b: (&str, usize)) -> Result<()> {
        if b.1 == 0 || a.1 == 0 || !a.1.is_multiple_of(b.1) {
            return Err(Error::Config(format!(
                "`{}` ({}) must be a positive multiple of `{}` ({})",
                a.0, a.1, b.0, b.1
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused() {
        let v = serde_json::json!({"a": 4096, "b": 1u64 << 40, "c": -1, "d": u64::MAX});
        let c = Cfg::new(&v);
        assert_eq!(c.usize("a").unwrap(), 4096);
        assert!(c.usize("b").unwrap_err().to_string().contains("limit"));
        assert!(c.usize("c").is_err());
        assert!(c.usize("d").is_err());
    }
}
