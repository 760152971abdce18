//! A validating GGUF reader: header, metadata key/values (every value type,
//! nested arrays included), tensor infos, alignment and the memory-mapped
//! data section, for GGUF versions 1, 2 and 3.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Layout,
//! all little-endian:
//!
//! ```text
//! "GGUF"  u32 version  count tensor_count  count kv_count
//! kv_count × (string key, u32 value_type, value)
//! tensor_count × (string name, u32 n_dims, n_dims × count ne, u32 ggml_type, u64 offset)
//! padding to `general.alignment` (default 32), then the data section
//! ```
//!
//! where `count` is u32 in version 1 and u64 from version 2 on, and a string
//! is a `count` length followed by UTF-8 bytes. Tensor offsets are relative to
//! the data section and aligned. `ne` lists dims innermost first, so the
//! row-major (HF) shape is `ne` reversed.
//!
//! Nothing is trusted before it is checked: counts are capped and bounded by
//! the bytes left, all arithmetic is checked, every tensor's byte size comes
//! from its type's block geometry and must lie inside the file, and tensors
//! must not overlap. Malformed input gives an error message, never a panic.

use super::dequant::{dequantize, GgmlType};
use crate::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The four magic bytes at the start of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Most tensors accepted in one file.
pub const MAX_TENSORS: u64 = 4_000_000;
/// Most metadata entries accepted in one file.
pub const MAX_METADATA: u64 = 4_000_000;
/// Most dims of one tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted in metadata.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    Str(String),
    /// Type 9: elements of one type (possibly arrays themselves).
    Array(Vec<MetaValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// An integer value that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer value as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float or integer value as f64. An f32 is widened through its
    /// shortest decimal form, so `1e-5f32` gives `1e-5`, not `9.99999974e-6`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => format!("{v}").parse().ok(),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// A bool value (integers 0/1 are accepted too).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => match self.as_u64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dims innermost first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    /// Byte size of the data.
    pub nbytes: usize,
}

impl TensorInfo {
    /// The row-major shape (dims outermost first, as HF/safetensors list them).
    pub fn shape(&self) -> Vec<usize> {
        // Every dim was checked to fit usize when the header was parsed.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.ne.iter().map(|&d| d as usize).product()
    }
}

/// A parsed, validated GGUF header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data.
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_start: usize,
}

impl Header {
    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "{what} at offset {} runs past the end of the {}-byte file",
                self.pos,
                self.buf.len()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count or length: u32 in v1, u64 later.
    fn count(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn count_width(&self) -> usize {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn bytes_of_string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let at = self.pos;
        let n = self.count(what)?;
        if n > self.left() as u64 {
            return Err(format!(
                "{what} at offset {at} has length {n}, running past the end of the file ({} bytes left)",
                self.left()
            ));
        }
        self.take(n as usize, what)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let b = self.bytes_of_string(what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, String> {
        let what = "metadata value";
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>(what)?[0]),
            1 => MetaValue::I8(self.arr::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("invalid bool value {b} at offset {}", self.pos - 1)),
            },
            8 => MetaValue::Str(self.string("metadata string")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "metadata arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    ));
                }
                let at = self.pos;
                let et = self.u32("array element type")?;
                let n = self.count("array length")?;
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => self.count_width(),
                    9 => 4 + self.count_width(),
                    t => {
                        return Err(format!(
                            "unknown metadata value type {t} in array at offset {at}"
                        ))
                    }
                };
                if n > (self.left() / min) as u64 {
                    return Err(format!(
                        "array at offset {at} claims {n} elements, running past the end of the file ({} bytes left)",
                        self.left()
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr(what)?)),
            t => {
                return Err(format!(
                    "unknown metadata value type {t} at offset {}",
                    self.pos - 4
                ))
            }
        })
    }
}

/// Parses and validates the header of a GGUF file whose complete contents
/// are `file`. Errors are plain lowercase messages; callers attach the path.
pub fn parse_header(file: &[u8]) -> Result<Header, String> {
    if file.len() < 8 {
        return Err(format!(
            "file is {} bytes, too short for a GGUF header",
            file.len()
        ));
    }
    if &file[..4] != MAGIC {
        return Err(format!("bad magic {:02x?}, expected \"GGUF\"", &file[..4]));
    }
    let mut c = Cursor {
        buf: file,
        pos: 4,
        wide: true,
    };
    let version = c.u32("version")?;
    match version {
        1 => c.wide = false,
        2 | 3 => {}
        v if v.swap_bytes() <= 3 && v.swap_bytes() >= 1 => {
            return Err(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unsupported GGUF version {v} (supported: 1, 2, 3)")),
    }
    let n_tensors = c.count("tensor count")?;
    let n_kv = c.count("metadata count")?;
    if n_tensors > MAX_TENSORS {
        return Err(format!(
            "tensor count {n_tensors} exceeds the limit of {MAX_TENSORS}"
        ));
    }
    if n_kv > MAX_METADATA {
        return Err(format!(
            "metadata count {n_kv} exceeds the limit of {MAX_METADATA}"
        ));
    }
    // Each entry needs at least a length-prefixed key and a type.
    if n_kv > (c.left() / (c.count_width() + 4)) as u64 {
        return Err(format!(
            "metadata count {n_kv} runs past the end of the {}-byte file",
            file.len()
        ));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.bytes_of_string("metadata key")?;
        let key = std::str::from_utf8(key)
            .map_err(|_| format!("metadata key at offset {at} is not valid utf-8"))?
            .to_string();
        let ty = c.u32("metadata value type")?;
        let v = c
            .value(ty, 0)
            .map_err(|e| format!("metadata `{key}`: {e}"))?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        // The spec says u32; other integer types are accepted too.
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 30 => a as usize,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    // Each tensor info needs a name length, n_dims, type and offset.
    if n_tensors > (c.left() / (c.count_width() + 16)) as u64 {
        return Err(format!(
            "tensor count {n_tensors} runs past the end of the {}-byte file",
            file.len()
        ));
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut seen = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string("tensor name")?;
        let ctx = |e: String| format!("tensor {i} `{name}`: {e}");
        let n_dims = c.u32("tensor dim count").map_err(ctx)?;
        if n_dims > MAX_DIMS {
            return Err(ctx(format!(
                "{n_dims} dims, more than the {MAX_DIMS} ggml allows"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.count("tensor dim").map_err(ctx)?;
            if d > i64::MAX as u64 || usize::try_from(d).is_err() {
                return Err(ctx(format!("dim {d} is too large")));
            }
            ne.push(d);
        }
        let ggml_type = GgmlType(c.u32("tensor type").map_err(ctx)?);
        let offset = c.u64("tensor offset").map_err(ctx)?;
        let nbytes = ggml_type.nbytes(&ne).map_err(ctx)?;
        if !seen.insert(name.clone()) {
            return Err(format!("tensor name `{name}` appears twice"));
        }
        raw.push((name, ne, ggml_type, offset, nbytes));
    }
    let data_start = c
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| "data section offset overflows".to_string())?;
    let data_len = file.len().saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, ggml_type, offset, nbytes) in raw {
        if offset % alignment as u64 != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let end = offset.checked_add(nbytes as u64);
        if end.is_none_or(|e| e > data_len as u64) {
            return Err(format!(
                "tensor `{name}`: data [{offset}, {offset} + {nbytes}) is outside the {data_len}-byte data section (tensor offset out of range)"
            ));
        }
        tensors.push(TensorInfo {
            name,
            ne,
            ggml_type,
            start: data_start + offset as usize,
            nbytes,
        });
    }
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|t| t.nbytes > 0)
        .map(|t| (t.start, t.start + t.nbytes, t.name.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// A memory-mapped, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl GgufFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us would
        // fault, which every mmap-based loader accepts.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let header = parse_header(&map).map_err(|msg| Error::Gguf {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// An error about this file.
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// The stored bytes of a tensor of this file's header.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        // The range was checked against the file length when parsing.
        &self.map[t.start..t.start + t.nbytes]
    }

    /// Dequantizes tensor `name` to f32 in storage (row-major) order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .header
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
            })?;
        self.dequantize_tensor(t)
    }

    /// Dequantizes a tensor of this file's header to f32 in storage order.
    pub fn dequantize_tensor(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        dequantize(t.ggml_type, self.bytes(t), t.numel())
            .map_err(|e| self.err(format!("tensor `{}`: {e}", t.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::build::Builder;
    use super::*;
    use proptest::prelude::*;

    fn sample(version: u32) -> Vec<u8> {
        let mut b = Builder::new(version);
        b.meta("general.architecture", MetaValue::Str("llama".into()));
        b.meta("a.u8", MetaValue::U8(7));
        b.meta("a.i8", MetaValue::I8(-7));
        b.meta("a.u16", MetaValue::U16(700));
        b.meta("a.i16", MetaValue::I16(-700));
        b.meta("a.u32", MetaValue::U32(70_000));
        b.meta("a.i32", MetaValue::I32(-70_000));
        b.meta("a.f32", MetaValue::F32(1e-5));
        b.meta("a.bool", MetaValue::Bool(true));
        b.meta("a.u64", MetaValue::U64(1 << 40));
        b.meta("a.i64", MetaValue::I64(-(1 << 40)));
        b.meta("a.f64", MetaValue::F64(0.25));
        b.meta(
            "a.strs",
            MetaValue::Array(vec![
                MetaValue::Str("x".into()),
                MetaValue::Str("yz".into()),
            ]),
        );
        b.meta(
            "a.nested",
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
                MetaValue::Array(vec![]),
            ]),
        );
        b.tensor_f32("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        b.tensor_f32("n", &[3], &[7.0, 8.0, 9.0]);
        b.build()
    }

    #[test]
    fn parses_every_value_type_in_each_version() {
        for version in [1, 2, 3] {
            let bytes = sample(version);
            let h = parse_header(&bytes).unwrap();
            assert_eq!(h.version, version);
            assert_eq!(h.alignment, 32);
            assert_eq!(h.data_start % 32, 0);
            let g = |k: &str| h.get(k).unwrap();
            assert_eq!(g("general.architecture").as_str(), Some("llama"));
            assert_eq!(g("a.u8"), &MetaValue::U8(7));
            assert_eq!(g("a.i8").as_i64(), Some(-7));
            assert_eq!(g("a.u16").as_u64(), Some(700));
            assert_eq!(g("a.i16").as_i64(), Some(-700));
            assert_eq!(g("a.u32").as_u64(), Some(70_000));
            assert_eq!(g("a.i32").as_i64(), Some(-70_000));
            assert_eq!(g("a.f32").as_f64(), Some(1e-5));
            assert_eq!(g("a.bool").as_bool(), Some(true));
            assert_eq!(g("a.u64").as_u64(), Some(1 << 40));
            assert_eq!(g("a.i64").as_i64(), Some(-(1 << 40)));
            assert_eq!(g("a.f64").as_f64(), Some(0.25));
            assert_eq!(g("a.strs").as_array().unwrap()[1].as_str(), Some("yz"));
            let nested = g("a.nested").as_array().unwrap();
            assert_eq!(
                nested[0],
                MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)])
            );
            assert_eq!(nested[1], MetaValue::Array(vec![]));
            let w = h.tensor("w").unwrap();
            assert_eq!(w.ne, vec![3, 2]);
            assert_eq!(w.shape(), vec![2, 3]);
            assert_eq!(w.nbytes, 24);
            let data = dequantize(w.ggml_type, &bytes[w.start..w.start + w.nbytes], 6).unwrap();
            assert_eq!(data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            let n = h.tensor("n").unwrap();
            assert_eq!(
                dequantize(n.ggml_type, &bytes[n.start..n.start + n.nbytes], 3).unwrap(),
                [7.0, 8.0, 9.0]
            );
        }
    }

    #[test]
    fn custom_alignment_is_honoured() {
        let mut b = Builder::new(3);
        b.alignment(64);
        b.tensor_f32("a", &[3], &[1.0, 2.0, 3.0]);
        b.tensor_f32("b", &[1], &[4.0]);
        let bytes = b.build();
        let h = parse_header(&bytes).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_start % 64, 0);
        assert_eq!((h.tensor("b").unwrap().start - h.data_start) % 64, 0);
    }

    fn err_of(bytes: &[u8]) -> String {
        parse_header(bytes).unwrap_err()
    }

    #[test]
    fn malformed_files_give_clear_errors() {
        let good = sample(3);
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(err_of(&bad_magic).contains("bad magic"));
        assert!(err_of(&good[..6]).contains("too short"));
        let mut v9 = good.clone();
        v9[4] = 9;
        assert!(err_of(&v9).contains("unsupported GGUF version 9"));
        let mut be = good.clone();
        be[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(err_of(&be).contains("big-endian"));
        // Header claims more metadata than the file holds.
        let mut many = good.clone();
        many[16..24].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert!(
            err_of(&many).contains("metadata count 1000000 runs past the end"),
            "{}",
            err_of(&many)
        );
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err_of(&huge).contains("exceeds the limit"));
        // Header cut short inside the metadata.
        for cut in [24, 40, 100, 200] {
            assert!(
                err_of(&good[..cut]).contains("past the end"),
                "{}",
                err_of(&good[..cut])
            );
        }

        let one = |f: &dyn Fn(&mut Builder)| {
            let mut b = Builder::new(3);
            f(&mut b);
            err_of(&b.build())
        };
        let e = one(&|b| {
            b.raw_tensor("t", &[4], GgmlType::F32, 1 << 20, vec![0; 16]);
        });
        assert!(e.contains("offset out of range"), "{e}");
        let e = one(&|b| {
            b.raw_tensor("t", &[4], GgmlType::F32, 4, vec![0; 16]);
        });
        assert!(e.contains("not a multiple of the alignment"), "{e}");
        let e = one(&|b| {
            b.raw_tensor("t", &[4], GgmlType(99), 0, vec![0; 16]);
        });
        assert!(e.contains("unknown ggml type id 99"), "{e}");
        let e = one(&|b| {
            b.raw_tensor("t", &[1 << 40, 1 << 40], GgmlType::F32, 0, vec![]);
        });
        assert!(e.contains("overflow"), "{e}");
        let e = one(&|b| {
            b.raw_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, 0, vec![0; 4]);
        });
        assert!(e.contains("dims"), "{e}");
        let e = one(&|b| {
            b.raw_tensor("t", &[48], GgmlType::Q4_0, 0, vec![0; 27]);
        });
        assert!(e.contains("block size"), "{e}");
        let e = one(&|b| {
            b.tensor_f32("a", &[8], &[0.0; 8]);
            b.raw_tensor("b", &[4], GgmlType::F32, 0, vec![]);
        });
        assert!(e.contains("overlap"), "{e}");
        let e = one(&|b| {
            b.tensor_f32("a", &[1], &[0.0]);
            b.tensor_f32("a", &[1], &[0.0]);
        });
        assert!(e.contains("appears twice"), "{e}");
        let e = one(&|b| {
            b.meta("general.alignment", MetaValue::U32(48));
        });
        assert!(e.contains("alignment"), "{e}");
        let e = one(&|b| {
            b.meta("k", MetaValue::U8(1));
            b.meta("k", MetaValue::U8(2));
        });
        assert!(e.contains("appears twice"), "{e}");
        let mut deep = MetaValue::U8(0);
        for _ in 0..20 {
            deep = MetaValue::Array(vec![deep]);
        }
        let e = one(&|b| {
            b.meta("deep", deep.clone());
        });
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn bad_value_type_and_bool_are_rejected() {
        let bytes = sample(3);
        // Find the type of "a.bool" (type id 7 right after the key) and corrupt values.
        let key = b"a.bool";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        let mut t = bytes.clone();
        t[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
        assert!(err_of(&t).contains("unknown metadata value type 77"));
        let mut t = bytes.clone();
        t[at + 4] = 2;
        assert!(err_of(&t).contains("invalid bool"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes after a valid magic never panic, and a parsed
        /// header's tensors all lie inside the file.
        #[test]
        fn arbitrary_bytes_never_panic(version in 0u32..5, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = b"GGUF".to_vec();
            bytes.extend(version.to_le_bytes());
            bytes.extend(body);
            if let Ok(h) = parse_header(&bytes) {
                for t in &h.tensors {
                    prop_assert!(t.start + t.nbytes <= bytes.len());
                }
            }
        }

        /// Truncating a valid file inside its header or data is an error.
        #[test]
        fn truncation_is_rejected(version in 1u32..4, cut in 0usize..10_000) {
            let bytes = sample(version);
            let cut = cut % bytes.len();
            prop_assert!(parse_header(&bytes[..cut]).is_err());
        }

        /// Mutating bytes of a valid file never panics; any accepted result
        /// still keeps tensors inside the file and dequantizes cleanly.
        #[test]
        fn mutations_never_panic(version in 1u32..4, edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = sample(version);
            for (i, b) in edits {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            if let Ok(h) = parse_header(&bytes) {
                for t in &h.tensors {
                    prop_assert!(t.start + t.nbytes <= bytes.len());
                    let _ = dequantize(t.ggml_type, &bytes[t.start..t.start + t.nbytes], t.numel());
                }
            }
        }
    }
}
