//! ggml tensor element types: their ids, names and block geometry (used to
//! validate every tensor's byte size), and dequantization to f32 of the types
//! this crate reads: F32, F16, BF16, Q8_0, Q4_0 and Q4_1.
//!
//! Type ids and block layouts follow ggml (`ggml.h`, `ggml-common.h`) as
//! described by the GGUF spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//! Quantized types store runs of `block_size` consecutive elements of a row
//! (along `ne[0]`) as one fixed-size block:
//!
//! | type | elements | bytes | layout | value |
//! | --- | ---: | ---: | --- | --- |
//! | Q4_0 | 32 | 18 | f16 `d`, 16 bytes of nibbles | `(q - 8) * d` |
//! | Q4_1 | 32 | 20 | f16 `d`, f16 `m`, 16 bytes of nibbles | `q * d + m` |
//! | Q8_0 | 32 | 34 | f16 `d`, 32 × i8 | `q * d` |
//!
//! In the nibble types, byte `j` holds element `j` in its low nibble and
//! element `j + 16` in its high nibble.

use half::{bf16, f16};
use std::fmt;

/// A ggml tensor type id as stored in a GGUF tensor info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// Name, elements per block and bytes per block of each known ggml type id.
/// Ids 4 and 5 (the removed Q4_2/Q4_3) and 31–33 (removed Q4_0_4_4 etc.) are absent.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// IEEE binary32.
    pub const F32: GgmlType = GgmlType(0);
    /// IEEE binary16.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit, symmetric, blocks of 32.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 4-bit with a minimum, blocks of 32.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// 8-bit, symmetric, blocks of 32.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);

    fn entry(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        TYPES.iter().find(|t| t.0 == self.0)
    }

    /// The ggml name (`"Q4_0"`), or `None` for an unknown id.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|t| t.1)
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown id.
    pub fn block(self) -> Option<(usize, usize)> {
        self.entry().map(|t| (t.2, t.3))
    }

    /// True when [`dequantize`] can read this type.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Self::F32 | Self::F16 | Self::BF16 | Self::Q8_0 | Self::Q4_0 | Self::Q4_1
        )
    }

    /// The safetensors dtype with the same storage, for unquantized floats.
    pub fn plain_dtype(self) -> Option<gptq_core::DType> {
        match self {
            Self::F32 => Some(gptq_core::DType::F32),
            Self::F16 => Some(gptq_core::DType::F16),
            Self::BF16 => Some(gptq_core::DType::BF16),
            _ => None,
        }
    }

    /// Bytes taken by a tensor of this type with dims `ne` (innermost first).
    /// Errors when the type is unknown, the row length is not a whole number
    /// of blocks, or the size overflows.
    pub fn nbytes(self, ne: &[u64]) -> Result<usize, String> {
        let (bs, ts) = self
            .block()
            .ok_or_else(|| format!("unknown ggml type id {}", self.0))?;
        let numel = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("dims {ne:?} overflow"))?;
        let row = ne.first().copied().unwrap_or(1);
        if row % bs as u64 != 0 {
            return Err(format!(
                "row length {row} is not a multiple of the {self} block size {bs}"
            ));
        }
        (numel / bs)
            .checked_mul(ts)
            .ok_or_else(|| format!("dims {ne:?} overflow"))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// The list of supported type names, for messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n` elements of type `ty` stored in `bytes` (exactly the
/// tensor's bytes) to f32, in storage order.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    if !ty.is_supported() {
        return Err(format!(
            "tensor type {ty} is not supported (supported: {SUPPORTED})"
        ));
    }
    let (bs, ts) = ty
        .block()
        .ok_or_else(|| format!("unknown ggml type id {}", ty.0))?;
    if !n.is_multiple_of(bs) {
        return Err(format!(
            "{n} elements is not a whole number of {ty} blocks of {bs}"
        ));
    }
    let want = (n / bs)
        .checked_mul(ts)
        .ok_or_else(|| format!("{n} elements overflow"))?;
    if bytes.len() != want {
        return Err(format!(
            "{n} {ty} elements need {want} bytes but {} were given",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| (i32::from(q & 0x0f) - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        _ => {
            return Err(format!(
                "tensor type {ty} is not supported (supported: {SUPPORTED})"
            ))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_block_matches_hand_computed_values() {
        // d = 0.5; byte j = (low = j, high = 15 - j).
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(v[8], 0.0); // (8 - 8) * 0.5
        assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(v[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(v[31], -4.0); // high nibble of byte 15 = 0
        let want: Vec<f32> = (0..16)
            .map(|j| (j as f32 - 8.0) * 0.5)
            .chain((0..16).map(|j| (15.0 - j as f32 - 8.0) * 0.5))
            .collect();
        assert_eq!(v, want);
    }

    #[test]
    fn q4_1_block_matches_hand_computed_values() {
        // d = 0.25, m = -1; byte j = (low = j, high = 3).
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let v = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[4], 0.0);
        assert_eq!(v[15], 2.75);
        assert!(v[16..].iter().all(|&x| x == -0.25));
    }

    #[test]
    fn q8_0_blocks_match_hand_computed_values() {
        let mut b = Vec::new();
        for d in [2.0f32, -0.5] {
            b.extend(h(d));
            b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        }
        let v = dequantize(GgmlType::Q8_0, &b, 64).unwrap();
        assert_eq!(v[0], -32.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 30.0);
        assert_eq!(v[32], 8.0);
        assert_eq!(v[63], -7.5);
    }

    #[test]
    fn plain_floats_decode() {
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &b, 2).unwrap(), [1.5, -2.0]);
        let b: Vec<u8> = [h(1.5), h(-2.0)].concat();
        assert_eq!(dequantize(GgmlType::F16, &b, 2).unwrap(), [1.5, -2.0]);
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &b, 2).unwrap(), [1.5, -2.0]);
    }

    #[test]
    fn sizes_and_errors() {
        assert_eq!(GgmlType::Q4_0.nbytes(&[64, 3]).unwrap(), 2 * 3 * 18);
        assert_eq!(GgmlType(12).nbytes(&[256, 2]).unwrap(), 2 * 144);
        assert!(GgmlType::Q4_0
            .nbytes(&[48])
            .unwrap_err()
            .contains("multiple"));
        assert!(GgmlType(99)
            .nbytes(&[1])
            .unwrap_err()
            .contains("unknown ggml type id 99"));
        assert!(GgmlType::F32
            .nbytes(&[u64::MAX, 2])
            .unwrap_err()
            .contains("overflow"));
        let e = dequantize(GgmlType(12), &[0; 144], 256).unwrap_err();
        assert!(e.contains("Q4_K") && e.contains("not supported"), "{e}");
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32)
            .unwrap_err()
            .contains("need 34 bytes"));
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
    }
}
