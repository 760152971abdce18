//! Storage element types of checkpoint tensors and their conversion to f32.

use crate::{Error, Result};
use half::{bf16, f16};
use std::fmt;

/// An element type as stored in a safetensors or GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit signed integer (GPTQ `qweight`, `qzeros`, `g_idx`).
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// 64-bit float.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// The safetensors spelling (`"F32"`, `"BF16"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::F64 => "F64",
        }
    }

    /// Decodes little-endian `bytes` of this dtype into f32 values.
    ///
    /// Works on unaligned input (memory-mapped files give no alignment promise).
    pub fn to_f32(self, bytes: &[u8]) -> Result<Vec<f32>> {
        let n = self.size();
        if !bytes.len().is_multiple_of(n) {
            return Err(Error::RaggedBytes {
                dtype: self,
                len: bytes.len(),
            });
        }
        let out = match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            other => return Err(Error::NotFloat(other)),
        };
        Ok(out)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_float_dtype() {
        let v = [1.5f32, -2.25, 0.0];
        let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(DType::F32.to_f32(&f32b).unwrap(), v);
        let f16b: Vec<u8> = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(DType::F16.to_f32(&f16b).unwrap(), v);
        let bfb: Vec<u8> = v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(DType::BF16.to_f32(&bfb).unwrap(), v);
    }

    #[test]
    fn rejects_ragged_and_integer_input() {
        assert!(DType::F32.to_f32(&[0, 0, 0]).is_err());
        assert!(DType::I32.to_f32(&[0, 0, 0, 0]).is_err());
    }
}
