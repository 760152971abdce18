//! Safetensors: a validating header parser, a memory-mapped lazy reader for
//! single and sharded checkpoints, and an atomic writer.
//!
//! Format (<https://github.com/huggingface/safetensors>): an 8-byte
//! little-endian header length `N`, `N` bytes of JSON mapping each tensor name
//! to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the
//! byte after the header) plus an optional `__metadata__` string map, then the
//! data. The header is validated before any tensor is trusted: size cap,
//! known dtypes, checked `numel × size == end − begin`, offsets inside the
//! file and non-overlapping.

use crate::{Error, RawTensor, Result, WeightSource};
use gptq_core::{DType, Tensor};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest header accepted (the reference implementation uses the same cap).
pub const MAX_HEADER_SIZE: usize = 100_000_000;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub begin: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

/// A parsed, validated safetensors header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section from the start of the file (8 + N).
    pub data_start: usize,
}

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "I32" => DType::I32,
        "I64" => DType::I64,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "F64" => DType::F64,
        _ => return None,
    })
}

/// Parses and validates the header of a safetensors file whose complete
/// contents are `file` (only the header and the total length are read).
/// Errors are plain messages; callers attach the path.
pub fn parse_header(file: &[u8]) -> std::result::Result<Header, String> {
    if file.len() < 8 {
        return Err(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            file.len()
        ));
    }
    let n = u64::from_le_bytes(file[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_SIZE as u64 {
        return Err(format!(
            "header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit"
        ));
    }
    let n = n as usize;
    let data_start = 8 + n;
    if data_start > file.len() {
        return Err(format!(
            "header length {n} runs past the end of the {}-byte file",
            file.len()
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&file[8..data_start])
        .map_err(|e| format!("header is not valid JSON: {e}"))?;
    let obj = json.as_object().ok_or("header is not a JSON object")?;
    let data_len = file.len() - data_start;
    let mut header = Header {
        data_start,
        ..Header::default()
    };
    for (name, v) in obj {
        if name == "__metadata__" {
            let m = v.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in m {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("__metadata__ value `{k}` is not a string"))?;
                header.metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let e = v
            .as_object()
            .ok_or_else(|| format!("tensor `{name}`: entry is not an object"))?;
        let dtype_s = e
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format!("tensor `{name}`: missing dtype"))?;
        let dtype = parse_dtype(dtype_s)
            .ok_or_else(|| format!("tensor `{name}`: unsupported dtype `{dtype_s}`"))?;
        let shape: Vec<usize> = e
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor `{name}`: missing shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("tensor `{name}`: shape is not a list of sizes"))?;
        let offs = e
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("tensor `{name}`: data_offsets is not a pair"))?;
        let begin = offs[0].as_u64().and_then(|x| usize::try_from(x).ok());
        let end = offs[1].as_u64().and_then(|x| usize::try_from(x).ok());
        let (Some(begin), Some(end)) = (begin, end) else {
            return Err(format!("tensor `{name}`: data_offsets are not sizes"));
        };
        if begin > end || end > data_len {
            return Err(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] are outside the {data_len}-byte data section"
            ));
        }
        let nbytes = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
        if nbytes != end - begin {
            return Err(format!(
                "tensor `{name}`: {dtype} {shape:?} needs {nbytes} bytes but data_offsets span {}",
                end - begin
            ));
        }
        header.tensors.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape,
                begin,
                end,
            },
        );
    }
    let mut spans: Vec<(usize, usize, &str)> = header
        .tensors
        .iter()
        .filter(|(_, e)| e.end > e.begin)
        .map(|(n, e)| (e.begin, e.end, n.as_str()))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2));
        }
    }
    Ok(header)
}

/// One memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header: Header,
}

impl SafetensorsFile {
    /// Maps and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us would
        // fault, which every mmap-based loader (incl. the reference) accepts.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let header = parse_header(&mmap).map_err(|msg| Error::Safetensors {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of tensor `name`.
    pub fn bytes(&self, name: &str) -> Option<(&TensorEntry, &[u8])> {
        let e = self.header.tensors.get(name)?;
        let s = self.header.data_start;
        Some((e, &self.mmap[s + e.begin..s + e.end]))
    }
}

/// A checkpoint made of one or more safetensors files.
pub struct SafetensorsSource {
    files: Vec<Arc<SafetensorsFile>>,
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens the given files (all validated up front). A tensor name present
    /// in two files is an error.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in paths {
            let f = SafetensorsFile::open(p)?;
            for name in f.header.tensors.keys() {
                if index.insert(name.clone(), files.len()).is_some() {
                    return Err(Error::Safetensors {
                        path: p.clone(),
                        msg: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
            files.push(Arc::new(f));
        }
        Ok(Self { files, index })
    }

    /// Opens the checkpoint of an HF folder: `model.safetensors`, or the shards
    /// listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Self::open(&[single]);
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Self::open(&shards_of_index(&index)?);
        }
        // Some checkpoints use other names (e.g. `gptq_model-4bit-128g.safetensors`).
        let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        others.sort();
        if others.is_empty() {
            if let Some(pickle) = torch_checkpoint_in(dir) {
                return Err(Error::Safetensors {
                    path: pickle,
                    msg: TORCH_REFUSAL.into(),
                });
            }
            return Err(Error::MissingFile {
                path: single,
                hint: "; expected model.safetensors or model.safetensors.index.json".into(),
            });
        }
        Self::open(&others)
    }

    fn get(&self, name: &str) -> Result<(&TensorEntry, &[u8])> {
        let i = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })?;
        Ok(self.files[*i]
            .bytes(name)
            .expect("index points at the file holding the tensor"))
    }

    /// The `__metadata__` of the first file.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.files
            .first()
            .map(|f| f.header.metadata.clone())
            .unwrap_or_default()
    }
}

/// Why PyTorch pickle checkpoints are refused, and what to do instead.
pub const TORCH_REFUSAL: &str = "PyTorch pickle checkpoints (.bin/.pt/.pth) are not loaded because unpickling can run arbitrary code; convert the model to safetensors first (e.g. `model.save_pretrained(dir, safe_serialization=True)` in transformers)";

/// True when `path` names a PyTorch pickle checkpoint (`.bin`, `.pt`, `.pth`,
/// `.ckpt`), which is never opened.
pub fn is_torch_checkpoint(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["bin", "pt", "pth", "ckpt"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// The first PyTorch checkpoint file (or index) in `dir`, if any.
fn torch_checkpoint_in(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            is_torch_checkpoint(p)
                || p.file_name()
                    .is_some_and(|n| n == "pytorch_model.bin.index.json")
        })
        .collect();
    v.sort();
    v.into_iter().next()
}

/// True when `name` is a bare file name that stays inside the folder it is
/// joined to: one normal path component, no separators of any platform, no
/// drive or NUL, not `.` or `..`.
pub fn is_plain_file_name(name: &str) -> bool {
    let mut comps = Path::new(name).components();
    matches!(
        (comps.next(), comps.next()),
        (Some(std::path::Component::Normal(c)), None) if c == std::ffi::OsStr::new(name)
    ) && !name.contains(['/', '\\', ':', '\0'])
}

/// The shard file names listed by the text of a `model.safetensors.index.json`,
/// sorted and deduplicated. Each must be a plain `.safetensors` file name
/// ([`is_plain_file_name`]): an index cannot point outside its folder.
pub fn parse_index(text: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("missing `weight_map` object")?;
    let mut shards: Vec<String> = Vec::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| format!("weight_map entry `{name}` is not a file name"))?;
        if !is_plain_file_name(f) {
            return Err(format!(
                "shard name `{f}` is not a plain file name inside the model folder"
            ));
        }
        if !f.ends_with(".safetensors") {
            return Err(format!("shard `{f}` is not a .safetensors file"));
        }
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    if shards.is_empty() {
        return Err("`weight_map` lists no shards".into());
    }
    shards.sort();
    Ok(shards)
}

/// The shard files named by a `model.safetensors.index.json`, in order.
pub fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let shards = parse_index(&text).map_err(|msg| Error::Json {
        path: index.into(),
        msg,
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

impl WeightSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).ok().map(|(e, _)| e.shape.clone())
    }

    fn load_f32(&self, name: &str) -> Result<Tensor> {
        let (e, bytes) = self.get(name)?;
        let data = e.dtype.to_f32(bytes).map_err(|_| Error::WrongDType {
            name: name.to_string(),
            dtype: e.dtype.to_string(),
            wanted: "floating point",
        })?;
        Ok(Tensor::new(e.shape.clone(), data)?)
    }

    fn load_raw(&self, name: &str) -> Result<RawTensor> {
        let (e, bytes) = self.get(name)?;
        Ok(RawTensor {
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes: bytes.to_vec(),
        })
    }
}

/// A tensor to be written: name, dtype, shape and little-endian bytes.
pub struct TensorOut<'a> {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes (`numel × dtype.size()` of them).
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// Serializes tensors into safetensors bytes: header (names sorted, padded with
/// spaces to a multiple of 8) then data in name order.
pub fn serialize(tensors: &[TensorOut<'_>], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut order: Vec<&TensorOut> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map"),
        );
    }
    let mut off = 0usize;
    for t in &order {
        let end = off + t.bytes.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + off);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for t in &order {
        out.extend_from_slice(&t.bytes);
    }
    out
}

/// Writes a safetensors file atomically.
pub fn write(
    path: &Path,
    tensors: &[TensorOut<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    crate::atomic::write_file(path, &serialize(tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> TensorOut<'static> {
        TensorOut {
            name: name.into(),
            dtype: DType::F32,
            shape,
            bytes: v
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write(
            &p,
            &[
                f32_tensor("b", vec![2], &[3.0, 4.0]),
                f32_tensor("a", vec![1, 2], &[1.0, 2.0]),
            ],
            &meta,
        )
        .unwrap();
        let s = SafetensorsSource::open(&[p]).unwrap();
        assert_eq!(s.names(), vec!["a", "b"]);
        assert_eq!(s.load_f32("b").unwrap().data(), &[3.0, 4.0]);
        assert_eq!(s.shape("a"), Some(vec![1, 2]));
        assert_eq!(s.metadata().get("format").map(String::as_str), Some("pt"));
        assert!(matches!(s.load_f32("c"), Err(Error::MissingTensor { .. })));
    }

    #[test]
    fn sharded_checkpoint_opens_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("model-00001-of-00002.safetensors"),
            &[f32_tensor("a", vec![2], &[1.0, 2.0])],
            &BTreeMap::new(),
        )
        .unwrap();
        write(
            &d.join("model-00002-of-00002.safetensors"),
            &[f32_tensor("b", vec![1], &[3.0])],
            &BTreeMap::new(),
        )
        .unwrap();
        let index = r#"{"metadata": {"total_size": 12}, "weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
        let s = SafetensorsSource::open_dir(d).unwrap();
        assert_eq!(s.names(), vec!["a", "b"]);
        assert_eq!(s.load_f32("b").unwrap().data(), &[3.0]);
        // An index pointing outside the folder is refused.
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "../x.safetensors"}}"#,
        )
        .unwrap();
        let e = SafetensorsSource::open_dir(d).err().unwrap().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
        // A missing shard is named.
        std::fs::write(
            d.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "gone.safetensors"}}"#,
        )
        .unwrap();
        let e = SafetensorsSource::open_dir(d).err().unwrap().to_string();
        assert!(e.contains("gone.safetensors"), "{e}");
    }

    #[test]
    fn half_precision_tensors_read_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let vals = [1.5f32, -0.25];
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let t = |n: &str, dt, b: Vec<u8>| TensorOut {
            name: n.into(),
            dtype: dt,
            shape: vec![2],
            bytes: b.into(),
        };
        write(
            &p,
            &[t("h", DType::F16, f16b), t("b", DType::BF16, bf16b)],
            &BTreeMap::new(),
        )
        .unwrap();
        let s = SafetensorsSource::open(&[p]).unwrap();
        assert_eq!(s.load_f32("h").unwrap().data(), &vals);
        assert_eq!(s.load_f32("b").unwrap().data(), &vals);
    }

    fn with_header(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data));
        v
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases = [
            (vec![1, 2, 3], "shorter"),
            (
                {
                    let mut v = u64::MAX.to_le_bytes().to_vec();
                    v.push(0);
                    v
                },
                "exceeds",
            ),
            (
                {
                    let mut v = 100u64.to_le_bytes().to_vec();
                    v.extend_from_slice(b"{}");
                    v
                },
                "past the end",
            ),
            (with_header("[1]", 0), "not a JSON object"),
            (with_header("{oops", 0), "not valid JSON"),
            (
                with_header(
                    r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
                    4,
                ),
                "unsupported dtype",
            ),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                    4,
                ),
                "needs 8 bytes",
            ),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#,
                    4,
                ),
                "outside",
            ),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                    4,
                ),
                "outside",
            ),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
                    8,
                ),
                "overlap",
            ),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#,
                    0,
                ),
                "overflows",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_header(&bytes).unwrap_err();
            assert!(err.contains(want), "expected `{want}` in `{err}`");
        }
    }

    proptest! {
        /// Any byte string either parses into a header whose every tensor lies
        /// inside the file, or is rejected with a message; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(h) = parse_header(&bytes) {
                for e in h.tensors.values() {
                    prop_assert!(h.data_start + e.end <= bytes.len());
                }
            }
        }

        /// Serialized tensors parse back to the same names, shapes and bytes.
        #[test]
        fn serialize_parse_round_trip(
            shapes in proptest::collection::vec(proptest::collection::vec(0usize..5, 0..3), 0..5)
        ) {
            let tensors: Vec<TensorOut> = shapes.iter().enumerate().map(|(i, s)| {
                let n: usize = s.iter().product();
                f32_tensor(&format!("t{i}"), s.clone(), &(0..n).map(|x| x as f32).collect::<Vec<_>>())
            }).collect();
            let bytes = serialize(&tensors, &BTreeMap::new());
            let h = parse_header(&bytes).unwrap();
            prop_assert_eq!(h.tensors.len(), tensors.len());
            for t in &tensors {
                let e = &h.tensors[&t.name];
                prop_assert_eq!(&e.shape, &t.shape);
                prop_assert_eq!(&bytes[h.data_start + e.begin..h.data_start + e.end], &t.bytes[..]);
            }
        }

        /// Truncating a valid file anywhere is rejected, never a panic.
        #[test]
        fn truncation_is_rejected(cut in 0usize..64) {
            let bytes = serialize(&[f32_tensor("w", vec![4, 4], &[1.0; 16])], &BTreeMap::new());
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(parse_header(&bytes[..cut]).is_err());
        }
    }
}
