//! Packing of a [`QLinear`] into the tensors of a GPTQ checkpoint, and back.
//!
//! For a linear layer `L` with `in` inputs, `out` outputs, `b` bits and `G`
//! groups, a checkpoint holds (AutoGPTQ / GPTQModel / transformers / vLLM):
//!
//! | tensor      | dtype | shape                | content                              |
//! |-------------|-------|----------------------|--------------------------------------|
//! | `L.qweight` | I32   | `[in·b/32, out]`     | codes, packed along the input dim    |
//! | `L.qzeros`  | I32   | `[G, out·b/32]`      | zero points, packed along the output dim |
//! | `L.scales`  | F16   | `[G, out]`           | scales                               |
//! | `L.g_idx`   | I32   | `[in]`               | group of each input column           |
//! | `L.bias`    | F16   | `[out]`              | bias, when the layer has one         |
//!
//! **Bit layout.** Each packed column of `qweight` (and each packed row of
//! `qzeros`) is a little-endian bit stream of 32-bit words: element `r` sits
//! at bit offset `b·r` of the stream, i.e. in word `b·r / 32` at shift
//! `b·r mod 32`. For 2, 4 and 8 bits that is simply `32/b` elements per word.
//! For 3 bits, 32 elements fill 3 words and elements 10 and 21 straddle word
//! boundaries (element 10: bits 30–31 of word 0 and bit 0 of word 1; element
//! 21: bit 31 of word 1 and bits 0–1 of word 2). This is exactly AutoGPTQ's
//! 3-bit layout (its `pack` writes 10 values, the split value 10, 10 values
//! shifted by 1, the split value 21, 10 values shifted by 2) and GPTQModel's
//! `_pack_cols_3bit`/`_unpack_rows_3bit`.
//!
//! **Zero-point formats.** [`Format::V2`] (`checkpoint_format: "gptq_v2"`)
//! stores the true zero points. [`Format::V1`] (`"gptq"`, the default that
//! AutoGPTQ, transformers and vLLM expect) stores `z − 1`, and this module
//! converts exactly as GPTQModel does when it writes and loads v1:
//!
//! - 2, 4 and 8 bits: **word-wise wrapping arithmetic** on the packed words —
//!   v2→v1 subtracts the packed all-ones pattern (`0x55555555`, `0x11111111`,
//!   `0x01010101`) from every `qzeros` word, v1→v2 adds it back.
//! - 3 bits: **field-wise** modular arithmetic — each 3-bit field is decoded,
//!   shifted by ∓1 modulo 8 and re-packed (word-wise arithmetic is not
//!   meaningful when fields straddle words).
//!
//! Both are exact inverses, so `unpack(pack(q, V1), V1)` is lossless for every
//! zero point, including `z = 0`.
//!
//! **The `z = 0` caveat of v1.** An asymmetric group whose values are all
//! `≥ 0` gets the zero point `z = 0`, and `z − 1 = −1` does not fit a field.
//! For 2/4/8 bits the word-wise subtraction stores the field as all ones
//! (`0xF` for 4 bits) and *borrows* from the next field up, which then holds
//! `z_next − 2`. GPTQModel's loader adds the pattern back word-wise and
//! recovers both fields exactly, but readers that decode fields one at a time
//! and add 1 (AutoGPTQ's kernels, exllama, vLLM's `gptq` kernel with
//! `use_v2_format = false`) read `2^b` for that zero point and `z_next − 1`
//! for its neighbour. For 3 bits the field holds `7` and there is no borrow,
//! so only that zero point is misread (as `8`). Symmetric quantization
//! (`z = 2^(b−1)`) never hits this. [`v1_zero_point_conflicts`] counts the
//! affected zero points so a writer can warn or choose [`Format::V2`].
//!
//! **Scales and bias are rounded to f16** by [`pack`], as in every GPTQ
//! checkpoint; [`unpack`] returns those rounded values, so
//! `unpack(pack(q)).dequantize()` equals [`round_to_f16`]`(q).dequantize()`,
//! not `q.dequantize()`.

use crate::quant::{QLinear, SUPPORTED_BITS};
use crate::{Error, Result};
use half::f16;

/// How zero points are stored in `qzeros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `checkpoint_format: "gptq"`: stores `z − 1` (AutoGPTQ, transformers, vLLM).
    #[default]
    V1,
    /// `checkpoint_format: "gptq_v2"`: stores the true zero point `z`.
    V2,
}

impl Format {
    /// Parses a `checkpoint_format` value (`"gptq"` or `"gptq_v2"`, any case).
    pub fn from_checkpoint_format(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gptq" => Some(Format::V1),
            "gptq_v2" => Some(Format::V2),
            _ => None,
        }
    }

    /// The `checkpoint_format` value of this format.
    pub fn checkpoint_format(self) -> &'static str {
        match self {
            Format::V1 => "gptq",
            Format::V2 => "gptq_v2",
        }
    }
}

/// The checkpoint tensors of one quantized linear layer (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    /// Bits per weight.
    pub bits: u32,
    /// `qweight`, row-major.
    pub qweight: Vec<i32>,
    /// `[in·bits/32, out]`.
    pub qweight_shape: [usize; 2],
    /// `qzeros`, row-major, in the format given to [`pack`].
    pub qzeros: Vec<i32>,
    /// `[groups, out·bits/32]`.
    pub qzeros_shape: [usize; 2],
    /// `scales`, row-major.
    pub scales: Vec<f16>,
    /// `[groups, out]`.
    pub scales_shape: [usize; 2],
    /// `g_idx`, `[in]`.
    pub g_idx: Vec<i32>,
    /// `bias`, `[out]`, stored as f16 like the scales.
    pub bias: Option<Vec<f16>>,
}

/// Number of groups of a layer with `in_features` inputs:
/// `ceil(in / group_size)`, or 1 for per-channel (`None`).
pub fn num_groups(in_features: usize, group_size: Option<usize>) -> usize {
    match group_size {
        Some(g) if g > 0 => in_features.div_ceil(g),
        _ => 1,
    }
}

/// The `g_idx` of a layer quantized in column order: `i / group_size`
/// (all zeros for per-channel).
pub fn default_g_idx(in_features: usize, group_size: Option<usize>) -> Vec<u32> {
    match group_size {
        Some(g) if g > 0 => (0..in_features).map(|i| (i / g) as u32).collect(),
        _ => vec![0; in_features],
    }
}

/// `q` with scales and bias rounded to f16: what [`unpack`]`(`[`pack`]`(q))` returns.
pub fn round_to_f16(q: &QLinear) -> QLinear {
    let r = |x: &f32| f16::from_f32(*x).to_f32();
    QLinear {
        scales: q.scales.iter().map(r).collect(),
        bias: q.bias.as_ref().map(|b| b.iter().map(r).collect()),
        ..q.clone()
    }
}

/// Number of zero points equal to 0: in [`Format::V1`] these are stored
/// losslessly for GPTQModel but misread by per-field readers (module docs).
pub fn v1_zero_point_conflicts(q: &QLinear) -> usize {
    q.zeros.iter().filter(|&&z| z == 0).count()
}

fn err(msg: String) -> Error {
    Error::Quant(msg)
}

fn check_bits(bits: u32) -> Result<()> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(err(format!(
            "unsupported bit width {bits} (supported: 2, 3, 4, 8)"
        )))
    }
}

/// Checks that `n` values of `bits` bits fill whole 32-bit words.
fn check_packable(what: &str, n: usize, bits: u32) -> Result<usize> {
    let total = n
        .checked_mul(bits as usize)
        .ok_or_else(|| err(format!("{what} = {n} overflows")))?;
    if !total.is_multiple_of(32) {
        return Err(err(format!(
            "{what} = {n} times {bits} bits is not a multiple of 32, so it cannot be packed into int32 words"
        )));
    }
    Ok(total / 32)
}

/// The packed pattern of a field of value 1 in every position of a word
/// (2, 4 and 8 bits only).
fn ones_pattern(bits: u32) -> u32 {
    (0..32 / bits).fold(0u32, |acc, k| acc | (1 << (bits * k)))
}

/// Packs `values` (each `< 2^bits`) into a little-endian bit stream of
/// 32-bit words, calling `emit(word_index, word)` for each word: the GPTQ
/// word layout along one column, also used by kernels' repacked layouts.
/// The number of values times `bits` must be a multiple of 32.
pub fn pack_stream(values: impl Iterator<Item = u32>, bits: u32, mut emit: impl FnMut(usize, u32)) {
    let (mut acc, mut nbits, mut w) = (0u64, 0u32, 0usize);
    for v in values {
        acc |= (v as u64) << nbits;
        nbits += bits;
        if nbits >= 32 {
            emit(w, acc as u32);
            w += 1;
            acc >>= 32;
            nbits -= 32;
        }
    }
    debug_assert_eq!(nbits, 0, "callers pass whole words");
}

/// Unpacks a little-endian bit stream of words into fields of `bits` bits,
/// calling `emit(field_index, value)`.
fn unpack_stream(words: impl Iterator<Item = u32>, bits: u32, mut emit: impl FnMut(usize, u8)) {
    let mask = (1u64 << bits) - 1;
    let (mut acc, mut nbits, mut r) = (0u64, 0u32, 0usize);
    for word in words {
        acc |= (word as u64) << nbits;
        nbits += 32;
        while nbits >= bits {
            emit(r, (acc & mask) as u8);
            r += 1;
            acc >>= bits;
            nbits -= bits;
        }
    }
}

/// Packs codes `[out, in]` into `qweight` `[in·bits/32, out]`.
pub fn pack_qweight(codes: &[u8], bits: u32, out: usize, inp: usize) -> Result<Vec<i32>> {
    check_bits(bits)?;
    let rows = check_packable("in_features", inp, bits)?;
    check_packable("out_features", out, bits)?;
    if codes.len() != out * inp {
        return Err(err(format!(
            "{} codes for a {out}x{inp} weight",
            codes.len()
        )));
    }
    let maxq = (1u32 << bits) - 1;
    if let Some(c) = codes.iter().find(|&&c| c as u32 > maxq) {
        return Err(err(format!("code {c} exceeds {maxq} for {bits} bits")));
    }
    let mut qweight = vec![0i32; rows * out];
    for o in 0..out {
        let col = codes[o * inp..(o + 1) * inp].iter().map(|&c| c as u32);
        pack_stream(col, bits, |w, word| qweight[w * out + o] = word as i32);
    }
    Ok(qweight)
}

/// Unpacks `qweight` `[in·bits/32, out]` into codes `[out, in]`.
pub fn unpack_qweight(qweight: &[i32], bits: u32, out: usize, inp: usize) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let rows = check_packable("in_features", inp, bits)?;
    if qweight.len() != rows * out {
        return Err(err(format!(
            "qweight holds {} words, expected [{rows}, {out}] for {inp} inputs at {bits} bits",
            qweight.len()
        )));
    }
    let mut codes = vec![0u8; out * inp];
    for o in 0..out {
        let col = (0..rows).map(|w| qweight[w * out + o] as u32);
        let row = &mut codes[o * inp..(o + 1) * inp];
        unpack_stream(col, bits, |r, v| row[r] = v);
    }
    Ok(codes)
}

/// Packs true zero points `[groups, out]` into `qzeros` `[groups, out·bits/32]`
/// in `format` (v1 conversion as in GPTQModel; see the module docs).
pub fn pack_qzeros(
    zeros: &[u8],
    bits: u32,
    groups: usize,
    out: usize,
    format: Format,
) -> Result<Vec<i32>> {
    check_bits(bits)?;
    let cols = check_packable("out_features", out, bits)?;
    if zeros.len() != groups * out {
        return Err(err(format!(
            "{} zero points for [{groups}, {out}]",
            zeros.len()
        )));
    }
    let maxq = (1u32 << bits) - 1;
    if let Some(z) = zeros.iter().find(|&&z| z as u32 > maxq) {
        return Err(err(format!(
            "zero point {z} exceeds {maxq} for {bits} bits"
        )));
    }
    // 3-bit v1: shift each field by −1 modulo 8 before packing.
    let field_shift = if format == Format::V1 && bits == 3 {
        maxq
    } else {
        0
    };
    let word_sub = if format == Format::V1 && bits != 3 {
        ones_pattern(bits)
    } else {
        0
    };
    let mut qzeros = vec![0i32; groups * cols];
    for g in 0..groups {
        let row = zeros[g * out..(g + 1) * out]
            .iter()
            .map(|&z| (z as u32 + field_shift) & maxq);
        let dst = &mut qzeros[g * cols..(g + 1) * cols];
        pack_stream(row, bits, |w, word| {
            dst[w] = word.wrapping_sub(word_sub) as i32
        });
    }
    Ok(qzeros)
}

/// Unpacks `qzeros` `[groups, out·bits/32]` stored in `format` into true zero
/// points `[groups, out]`.
pub fn unpack_qzeros(
    qzeros: &[i32],
    bits: u32,
    groups: usize,
    out: usize,
    format: Format,
) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let cols = check_packable("out_features", out, bits)?;
    if qzeros.len() != groups * cols {
        return Err(err(format!(
            "qzeros holds {} words, expected [{groups}, {cols}] for {out} outputs at {bits} bits",
            qzeros.len()
        )));
    }
    let maxq = (1u32 << bits) - 1;
    let field_shift = if format == Format::V1 && bits == 3 {
        1
    } else {
        0
    };
    let word_add = if format == Format::V1 && bits != 3 {
        ones_pattern(bits)
    } else {
        0
    };
    let mut zeros = vec![0u8; groups * out];
    for g in 0..groups {
        let words = qzeros[g * cols..(g + 1) * cols]
            .iter()
            .map(|&w| (w as u32).wrapping_add(word_add));
        let dst = &mut zeros[g * out..(g + 1) * out];
        unpack_stream(words, bits, |r, v| {
            dst[r] = ((v as u32 + field_shift) & maxq) as u8
        });
    }
    Ok(zeros)
}

/// Packs `q` into checkpoint tensors with zero points in `format`.
///
/// Errors (never panics) when `q` is invalid, when `in·bits` or `out·bits`
/// is not a multiple of 32, when the number of groups is not
/// `ceil(in / group_size)` (what every loader allocates), or when a scale or
/// bias value does not fit f16.
pub fn pack(q: &QLinear, format: Format) -> Result<Packed> {
    q.validate()?;
    let (out, inp, bits) = (q.out_features, q.in_features, q.bits);
    let groups = q.num_groups();
    let want = num_groups(inp, q.group_size);
    if groups != want {
        return Err(err(format!(
            "{groups} groups, but {inp} inputs with group size {:?} need {want}",
            q.group_size
        )));
    }
    let to_f16 = |what: &str, v: &[f32]| -> Result<Vec<f16>> {
        v.iter()
            .map(|&x| {
                let h = f16::from_f32(x);
                if h.is_finite() {
                    Ok(h)
                } else {
                    Err(err(format!("{what} value {x} does not fit f16")))
                }
            })
            .collect()
    };
    Ok(Packed {
        bits,
        qweight: pack_qweight(&q.codes, bits, out, inp)?,
        qweight_shape: [inp * bits as usize / 32, out],
        qzeros: pack_qzeros(&q.zeros, bits, groups, out, format)?,
        qzeros_shape: [groups, out * bits as usize / 32],
        scales: to_f16("scale", &q.scales)?,
        scales_shape: [groups, out],
        g_idx: q.g_idx.iter().map(|&g| g as i32).collect(),
        bias: q.bias.as_deref().map(|b| to_f16("bias", b)).transpose()?,
    })
}

/// Checks `g_idx` values against the group count and converts them.
pub fn check_g_idx(g_idx: &[i32], groups: usize) -> Result<Vec<u32>> {
    g_idx
        .iter()
        .map(|&g| {
            if g >= 0 && (g as usize) < groups {
                Ok(g as u32)
            } else {
                Err(err(format!("g_idx entry {g} is not in 0..{groups}")))
            }
        })
        .collect()
}

/// Unpacks checkpoint tensors whose zero points are stored in `format` into
/// a [`QLinear`] of `out_features × in_features` (scales and bias are the
/// stored f16 values). Every shape is checked against the others; the result
/// is validated.
pub fn unpack(
    p: &Packed,
    group_size: Option<usize>,
    format: Format,
    out_features: usize,
    in_features: usize,
) -> Result<QLinear> {
    let (out, inp, bits) = (out_features, in_features, p.bits);
    check_bits(bits)?;
    let rows = check_packable("in_features", inp, bits)?;
    let cols = check_packable("out_features", out, bits)?;
    if p.qweight_shape != [rows, out] {
        return Err(err(format!(
            "qweight shape {:?} is not [{rows}, {out}] for a {out}x{inp} layer at {bits} bits",
            p.qweight_shape
        )));
    }
    let groups = p.qzeros_shape[0];
    let want = num_groups(inp, group_size);
    if groups != want {
        return Err(err(format!(
            "qzeros has {groups} groups, but {inp} inputs with group size {group_size:?} need {want}"
        )));
    }
    if p.qzeros_shape != [groups, cols] || p.scales_shape != [groups, out] {
        return Err(err(format!(
            "qzeros {:?} / scales {:?} are not [{groups}, {cols}] / [{groups}, {out}]",
            p.qzeros_shape, p.scales_shape
        )));
    }
    if p.scales.len() != groups * out {
        return Err(err(format!(
            "{} scales for [{groups}, {out}]",
            p.scales.len()
        )));
    }
    if p.g_idx.len() != inp {
        return Err(err(format!(
            "g_idx has {} entries for {inp} inputs",
            p.g_idx.len()
        )));
    }
    let q = QLinear {
        out_features: out,
        in_features: inp,
        bits,
        group_size,
        codes: unpack_qweight(&p.qweight, bits, out, inp)?,
        scales: p.scales.iter().map(|s| s.to_f32()).collect(),
        zeros: unpack_qzeros(&p.qzeros, bits, groups, out, format)?,
        g_idx: check_g_idx(&p.g_idx, groups)?,
        bias: p
            .bias
            .as_ref()
            .map(|b| b.iter().map(|x| x.to_f32()).collect()),
    };
    q.validate()?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small deterministic generator for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_qlinear(
        seed: u64,
        bits: u32,
        group_size: Option<usize>,
        out: usize,
        inp: usize,
        act_order: bool,
        bias: bool,
    ) -> QLinear {
        let mut r = Rng(seed | 1);
        let maxq = 1u64 << bits;
        let groups = num_groups(inp, group_size);
        let mut g_idx = default_g_idx(inp, group_size);
        if act_order {
            for i in (1..inp).rev() {
                let j = r.below(i as u64 + 1) as usize;
                g_idx.swap(i, j);
            }
        }
        QLinear {
            out_features: out,
            in_features: inp,
            bits,
            group_size,
            codes: (0..out * inp).map(|_| r.below(maxq) as u8).collect(),
            scales: (0..groups * out)
                .map(|_| (r.below(10_000) as f32 + 1.0) * 1.37e-5)
                .collect(),
            zeros: (0..groups * out).map(|_| r.below(maxq) as u8).collect(),
            g_idx,
            bias: bias.then(|| {
                (0..out)
                    .map(|_| r.below(2001) as f32 / 1000.0 - 1.0)
                    .collect()
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// pack → unpack is the identity up to f16 rounding of scales and
        /// bias, for every bit width, group size, g_idx order and format,
        /// zero points of 0 included.
        #[test]
        fn pack_unpack_round_trip(
            seed in any::<u64>(),
            bits in prop::sample::select(vec![2u32, 3, 4, 8]),
            gs in prop::sample::select(vec![None, Some(32usize), Some(64), Some(128)]),
            out_blocks in 1usize..3,
            in_blocks in 1usize..9,
            act_order in any::<bool>(),
            bias in any::<bool>(),
            v2 in any::<bool>(),
        ) {
            let (out, inp) = (32 * out_blocks, 32 * in_blocks);
            let q = random_qlinear(seed, bits, gs, out, inp, act_order, bias);
            q.validate().unwrap();
            let format = if v2 { Format::V2 } else { Format::V1 };
            let p = pack(&q, format).unwrap();
            prop_assert_eq!(p.qweight_shape, [inp * bits as usize / 32, out]);
            prop_assert_eq!(p.qzeros_shape, [num_groups(inp, gs), out * bits as usize / 32]);
            let back = unpack(&p, gs, format, out, inp).unwrap();
            prop_assert_eq!(&back, &round_to_f16(&q));
            let (a, b) = (back.dequantize(), round_to_f16(&q).dequantize());
            prop_assert_eq!(a.data(), b.data());
            // The codes do not depend on the format; only qzeros does.
            let other = pack(&q, if v2 { Format::V1 } else { Format::V2 }).unwrap();
            prop_assert_eq!(&other.qweight, &p.qweight);
        }
    }

    #[test]
    fn four_bit_word_by_hand() {
        // One column of 8 inputs with codes 1..=8 is the word 0x87654321.
        let mut q = random_qlinear(7, 4, None, 8, 8, false, false);
        for o in 0..8 {
            for i in 0..8 {
                q.codes[o * 8 + i] = (i + 1) as u8;
            }
        }
        q.zeros = vec![8; 8];
        let p = pack(&q, Format::V2).unwrap();
        assert_eq!(p.qweight_shape, [1, 8]);
        assert!(p.qweight.iter().all(|&w| w as u32 == 0x8765_4321));
        // Symmetric 4-bit: z = 8 in every field; v1 stores 7 in every field.
        assert_eq!(p.qzeros, vec![0x8888_8888u32 as i32]);
        let p1 = pack(&q, Format::V1).unwrap();
        assert_eq!(p1.qzeros, vec![0x7777_7777]);
    }

    #[test]
    fn three_bit_words_by_hand() {
        // Fields 0, 10, 21 and 31 of one column: 7, 5 (straddles words 0/1),
        // 6 (straddles words 1/2) and 7.
        let mut q = random_qlinear(9, 3, None, 32, 32, false, false);
        q.codes.iter_mut().for_each(|c| *c = 0);
        for (i, v) in [(0, 7), (10, 5), (21, 6), (31, 7)] {
            q.codes[i] = v; // output row 0
        }
        let p = pack(&q, Format::V2).unwrap();
        assert_eq!(p.qweight_shape, [3, 32]);
        let col0: Vec<u32> = (0..3).map(|w| p.qweight[w * 32] as u32).collect();
        // word 0: 7 at bits 0-2, low two bits of 5 (0b01) at bits 30-31;
        // word 1: high bit of 5 at bit 0, low bit of 6 (0) at bit 31;
        // word 2: high two bits of 6 (0b11) at bits 0-1, 7 at bits 29-31.
        assert_eq!(col0, vec![0x4000_0007, 0x0000_0001, 0xE000_0003]);
        assert!((1..32).all(|o| (0..3).all(|w| p.qweight[w * 32 + o] == 0)));
    }

    /// AutoGPTQ's 3-bit scheme as described in its `pack`: per 32 values,
    /// word 0 takes values 0-9 at 3j and the low 2 bits of value 10 at 30;
    /// word 1 the high bit of value 10, values 11-20 at 3j+1 and the low bit
    /// of value 21 at 31; word 2 the high 2 bits of value 21 and values 22-31
    /// at 3j+2.
    fn autogptq_3bit(vals: &[u32; 32]) -> [u32; 3] {
        let mut w = [0u32; 3];
        for j in 0..10 {
            w[0] |= vals[j] << (3 * j);
            w[1] |= vals[11 + j] << (3 * j + 1);
            w[2] |= vals[22 + j] << (3 * j + 2);
        }
        w[0] |= vals[10] << 30;
        w[1] |= (vals[10] >> 2) & 1;
        w[1] |= vals[21] << 31;
        w[2] |= (vals[21] >> 1) & 3;
        w
    }

    #[test]
    fn three_bit_layout_equals_autogptq() {
        let mut r = Rng(12345);
        for _ in 0..200 {
            let vals: [u32; 32] = std::array::from_fn(|_| r.below(8) as u32);
            let mut ours = [0u32; 3];
            pack_stream(vals.iter().copied(), 3, |i, w| ours[i] = w);
            assert_eq!(ours, autogptq_3bit(&vals));
            let mut back = [0u8; 32];
            unpack_stream(ours.iter().copied(), 3, |i, v| back[i] = v);
            assert!(back.iter().zip(&vals).all(|(&b, &v)| b as u32 == v));
        }
    }

    #[test]
    fn v1_stores_zero_minus_one_and_z0_borrows() {
        // 4 bits, one group, 8 outputs. Zero points 9, 9, ... : v1 fields are 8.
        let mut q = random_qlinear(3, 4, None, 8, 8, false, false);
        q.zeros = vec![9; 8];
        assert_eq!(
            pack(&q, Format::V1).unwrap().qzeros,
            vec![0x8888_8888u32 as i32]
        );

        // z = [0, 5, 1, 1, 1, 1, 1, 1] (an asymmetric group with z = 0).
        q.zeros = vec![0, 5, 1, 1, 1, 1, 1, 1];
        let v2 = pack(&q, Format::V2).unwrap();
        assert_eq!(v2.qzeros, vec![0x1111_1150]);
        let v1 = pack(&q, Format::V1).unwrap();
        // 0x11111150 − 0x11111111: field 0 wraps to 0xF and borrows from field 1.
        assert_eq!(v1.qzeros, vec![0x0000_003F]);
        // GPTQModel-style (word-wise) reading recovers the zero points exactly.
        assert_eq!(unpack(&v1, None, Format::V1, 8, 8).unwrap().zeros, q.zeros);
        // A per-field reader (`field + 1`, as AutoGPTQ / exllama / vLLM do)
        // reads 16 for field 0 and 4 instead of 5 for field 1.
        let per_field: Vec<u32> = (0..8).map(|k| ((0x3Fu32 >> (4 * k)) & 0xF) + 1).collect();
        assert_eq!(per_field, vec![16, 4, 1, 1, 1, 1, 1, 1]);
        assert_eq!(v1_zero_point_conflicts(&q), 1);

        // 3 bits: field-wise, z = 0 is stored as 7 and neighbours are untouched.
        let mut q3 = random_qlinear(5, 3, None, 32, 32, false, false);
        q3.zeros = vec![4; 32];
        q3.zeros[0] = 0;
        let p3 = pack(&q3, Format::V1).unwrap();
        let fields = unpack_qzeros(&p3.qzeros, 3, 1, 32, Format::V2).unwrap();
        assert_eq!(fields[0], 7);
        assert!(fields[1..].iter().all(|&f| f == 3));
        assert_eq!(
            unpack(&p3, None, Format::V1, 32, 32).unwrap().zeros,
            q3.zeros
        );
    }

    #[test]
    fn scales_are_rounded_to_f16() {
        let mut q = random_qlinear(11, 4, Some(32), 8, 64, false, true);
        q.scales[0] = 1.0 + 1e-4; // not representable in f16
        let back = unpack(&pack(&q, Format::V1).unwrap(), Some(32), Format::V1, 8, 64).unwrap();
        assert_eq!(back.scales[0], 1.0);
        assert_eq!(back, round_to_f16(&q));
        q.scales[0] = 1e6;
        assert!(pack(&q, Format::V1)
            .unwrap_err()
            .to_string()
            .contains("f16"));
    }

    #[test]
    fn bad_sizes_are_errors() {
        // in·bits not a multiple of 32 (20 · 4 = 80).
        let mut q = random_qlinear(1, 4, None, 8, 20, false, false);
        let e = pack(&q, Format::V1).unwrap_err().to_string();
        assert!(e.contains("in_features = 20"), "{e}");
        // out·bits not a multiple of 32 (3 bits, 16 outputs).
        q = random_qlinear(1, 3, None, 16, 32, false, false);
        let e = pack(&q, Format::V1).unwrap_err().to_string();
        assert!(e.contains("out_features = 16"), "{e}");
        // Group count disagreeing with the group size.
        q = random_qlinear(1, 4, Some(32), 8, 64, false, false);
        q.group_size = Some(64);
        assert!(pack(&q, Format::V1).is_err());
        // Unpack with shapes that disagree.
        q = random_qlinear(1, 4, Some(32), 8, 64, true, false);
        let p = pack(&q, Format::V2).unwrap();
        assert!(unpack(&p, Some(32), Format::V2, 8, 32).is_err());
        assert!(unpack(&p, Some(32), Format::V2, 16, 64).is_err());
        assert!(unpack(&p, Some(16), Format::V2, 8, 64).is_err());
        let mut bad = p.clone();
        bad.g_idx[3] = -1;
        assert!(unpack(&bad, Some(32), Format::V2, 8, 64).is_err());
        bad = p.clone();
        bad.g_idx[3] = 2;
        assert!(unpack(&bad, Some(32), Format::V2, 8, 64).is_err());
        bad = p.clone();
        bad.scales.pop();
        assert!(unpack(&bad, Some(32), Format::V2, 8, 64).is_err());
        bad = p;
        bad.bits = 5;
        assert!(unpack(&bad, Some(32), Format::V2, 8, 64).is_err());
    }

    #[test]
    fn formats_parse() {
        assert_eq!(Format::from_checkpoint_format("gptq"), Some(Format::V1));
        assert_eq!(Format::from_checkpoint_format("GPTQ_V2"), Some(Format::V2));
        assert_eq!(Format::from_checkpoint_format("marlin"), None);
        assert_eq!(Format::V2.checkpoint_format(), "gptq_v2");
        assert_eq!(ones_pattern(2), 0x5555_5555);
        assert_eq!(ones_pattern(4), 0x1111_1111);
        assert_eq!(ones_pattern(8), 0x0101_0101);
    }
}
