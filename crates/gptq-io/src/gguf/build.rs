//! An in-memory GGUF byte builder (versions 1, 2 and 3) for tests and small
//! fixtures: metadata of every value type and tensors of any ggml type with
//! caller-supplied bytes. It writes what the reader expects, laid out as the
//! spec says (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>),
//! and can also write deliberately wrong offsets to exercise validation.

use super::dequant::GgmlType;
use super::reader::{MetaValue, DEFAULT_ALIGNMENT, MAGIC};

struct TensorSpec {
    name: String,
    ne: Vec<u64>,
    ty: GgmlType,
    offset: Option<u64>,
    bytes: Vec<u8>,
}

/// Builds GGUF file bytes.
pub struct Builder {
    version: u32,
    alignment: usize,
    meta: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

impl Builder {
    /// A builder for GGUF `version` (1 writes u32 counts, later versions u64).
    pub fn new(version: u32) -> Self {
        Self {
            version,
            alignment: DEFAULT_ALIGNMENT,
            meta: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets `general.alignment` (and aligns the data accordingly).
    pub fn alignment(&mut self, a: u32) -> &mut Self {
        self.alignment = a.max(1) as usize;
        self.meta("general.alignment", MetaValue::U32(a))
    }

    /// Adds a metadata entry (arrays take their element type from the first
    /// element; an empty array is written as an array of u8).
    pub fn meta(&mut self, key: &str, v: MetaValue) -> &mut Self {
        self.meta.push((key.to_string(), v));
        self
    }

    /// Adds a tensor with dims `ne` (innermost first) and its stored bytes,
    /// placed at the next aligned offset.
    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType, bytes: Vec<u8>) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            offset: None,
            bytes,
        });
        self
    }

    /// Adds an F32 tensor.
    pub fn tensor_f32(&mut self, name: &str, ne: &[u64], data: &[f32]) -> &mut Self {
        self.tensor(
            name,
            ne,
            GgmlType::F32,
            data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// Adds a tensor whose info records `offset` whatever its bytes' real
    /// place (the bytes are still appended to the data section).
    pub fn raw_tensor(
        &mut self,
        name: &str,
        ne: &[u64],
        ty: GgmlType,
        offset: u64,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            offset: Some(offset),
            bytes,
        });
        self
    }

    fn count(&self, out: &mut Vec<u8>, n: usize) {
        if self.version == 1 {
            out.extend((n as u32).to_le_bytes());
        } else {
            out.extend((n as u64).to_le_bytes());
        }
    }

    fn string(&self, out: &mut Vec<u8>, s: &str) {
        self.count(out, s.len());
        out.extend(s.as_bytes());
    }

    fn value(&self, out: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => out.push(*x),
            MetaValue::I8(x) => out.push(*x as u8),
            MetaValue::U16(x) => out.extend(x.to_le_bytes()),
            MetaValue::I16(x) => out.extend(x.to_le_bytes()),
            MetaValue::U32(x) => out.extend(x.to_le_bytes()),
            MetaValue::I32(x) => out.extend(x.to_le_bytes()),
            MetaValue::F32(x) => out.extend(x.to_le_bytes()),
            MetaValue::Bool(x) => out.push(u8::from(*x)),
            MetaValue::Str(s) => self.string(out, s),
            MetaValue::Array(a) => {
                out.extend(a.first().map_or(0, type_id).to_le_bytes());
                self.count(out, a.len());
                for x in a {
                    self.value(out, x);
                }
            }
            MetaValue::U64(x) => out.extend(x.to_le_bytes()),
            MetaValue::I64(x) => out.extend(x.to_le_bytes()),
            MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// The file bytes. The last tensor's data ends the file (no trailing padding).
    pub fn build(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        for t in &self.tensors {
            while data.len() % self.alignment != 0 {
                data.push(0);
            }
            offsets.push(t.offset.unwrap_or(data.len() as u64));
            data.extend(&t.bytes);
        }
        let mut out = MAGIC.to_vec();
        out.extend(self.version.to_le_bytes());
        self.count(&mut out, self.tensors.len());
        self.count(&mut out, self.meta.len());
        for (k, v) in &self.meta {
            self.string(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            self.value(&mut out, v);
        }
        for (t, off) in self.tensors.iter().zip(offsets) {
            self.string(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            for &d in &t.ne {
                if self.version == 1 {
                    out.extend((d as u32).to_le_bytes());
                } else {
                    out.extend(d.to_le_bytes());
                }
            }
            out.extend(t.ty.0.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        while !out.len().is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend(data);
        out
    }
}
