//! GPTQ checkpoints: the quantize config, a streaming sharded writer and a
//! reader of quantized linear layers.
//!
//! A GPTQ checkpoint is an HF model folder whose quantized linear layers `L`
//! are stored as `L.qweight`, `L.qzeros`, `L.scales`, `L.g_idx` (and `L.bias`)
//! instead of `L.weight` — see [`gptq_core::pack`] for the tensor layout —
//! with the quantization settings in `quantize_config.json` and, identically,
//! under `quantization_config` in `config.json`. transformers, vLLM and
//! GPTQModel load such folders unchanged.
//!
//! - [`QuantizeConfig`]: the settings, read from either file (unknown fields
//!   are kept and written back) including GPTQModel's `dynamic` per-module
//!   rules.
//! - [`CheckpointWriter`]: accepts tensors one at a time, spills them to a
//!   temporary file and cuts a shard whenever the next tensor would pass
//!   `max_shard_size`, so memory stays at one tensor; [`CheckpointWriter::finish`]
//!   writes the index, configs and tokenizer files and renames the folder
//!   into place ([`crate::atomic::AtomicDir`]). [`write_checkpoint`] wraps it.
//! - [`read_qlinear`]: one layer back as a validated [`QLinear`].

use crate::atomic::{write_file, write_file_with, AtomicDir};
use crate::{Error, RawTensor, Result, WeightSource};
use gptq_core::pack::{self, Format, Packed};
use gptq_core::quant::SUPPORTED_BITS;
use gptq_core::{DType, QLinear, Tensor};
use half::f16;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The quantizer name written to `meta.quantizer`.
pub const QUANTIZER: &str = concat!("gptq-rs:", env!("CARGO_PKG_VERSION"));

/// File name of the standalone quantize config.
pub const QUANTIZE_CONFIG_FILE: &str = "quantize_config.json";

// ============================================================================
// Quantize config
// ============================================================================

/// GPTQ quantization settings, as in `quantize_config.json` (AutoGPTQ /
/// GPTQModel) and `config.json`'s `quantization_config` (transformers).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeConfig {
    /// Bits per weight (2, 3, 4 or 8).
    pub bits: u32,
    /// Columns per group; −1 is one group per output row (per-channel).
    pub group_size: i64,
    /// Hessian dampening, as a fraction of the mean diagonal.
    pub damp_percent: f64,
    /// Activation order (columns quantized by decreasing Hessian diagonal).
    pub desc_act: bool,
    /// Groups fixed before the activation-order permutation.
    pub static_groups: bool,
    /// Symmetric grid (zero point `2^(bits−1)`).
    pub sym: bool,
    /// Quantize a block's linears group by group from already-quantized inputs.
    pub true_sequential: bool,
    /// Whether `lm_head` is quantized.
    pub lm_head: bool,
    /// `"gptq"` (v1, zero points stored minus one) or `"gptq_v2"`.
    pub checkpoint_format: String,
    /// Always `"gptq"` here.
    pub quant_method: String,
    /// AutoGPTQ's field; kept for compatibility.
    pub model_name_or_path: Option<String>,
    /// AutoGPTQ's field; kept for compatibility.
    pub model_file_base_name: Option<String>,
    /// GPTQModel's per-module overrides, in file order (first match wins).
    pub dynamic: Vec<DynamicRule>,
    /// The `meta` object (`quantizer`, `uri`, ...).
    pub meta: Map<String, Value>,
    /// Fields this crate does not interpret, written back unchanged.
    pub extra: Map<String, Value>,
}

/// Effective settings of one module after the `dynamic` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Bits per weight.
    pub bits: u32,
    /// Columns per group; `None` is per-channel.
    pub group_size: Option<usize>,
    /// Symmetric grid.
    pub sym: bool,
    /// Activation order.
    pub desc_act: bool,
}

/// One entry of GPTQModel's `dynamic` map.
///
/// Keys are Python regular expressions matched with `re.match` against the
/// full module name (anchored at the start only), optionally prefixed with
/// `+:` (apply the overrides) or `-:` (do not quantize the module). The first
/// matching entry decides. Patterns are compiled by a small built-in
/// backtracking matcher (literals, `.`, classes `[...]`, `\d \w \s` and
/// their negations, escapes, groups `(...)` / `(?:...)` / `(?P<n>...)`,
/// alternation `|`, anchors `^ $ \A \Z`, greedy and lazy `* + ? {n,m}`);
/// lookarounds, backreferences and inline flags are refused with an error
/// when the config is read.
#[derive(Debug, Clone)]
pub struct DynamicRule {
    /// The key as written (with its `+:` / `-:` prefix, if any).
    pub key: String,
    /// The pattern without the prefix.
    pub pattern: String,
    /// `-:` rule: matching modules are not quantized.
    pub negative: bool,
    /// The override object (`bits`, `group_size`, `sym`, `desc_act`, ...).
    pub overrides: Map<String, Value>,
    regex: mini_regex::Regex,
}

impl PartialEq for DynamicRule {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.overrides == other.overrides
    }
}

impl DynamicRule {
    /// Parses one `dynamic` entry.
    pub fn new(key: &str, overrides: Map<String, Value>) -> Result<Self, String> {
        let (negative, pattern) = if let Some(p) = key.strip_prefix("-:") {
            (true, p)
        } else if let Some(p) = key.strip_prefix("+:") {
            (false, p)
        } else {
            (false, key)
        };
        let regex =
            mini_regex::Regex::new(pattern).map_err(|e| format!("dynamic rule `{key}`: {e}"))?;
        let rule = Self {
            key: key.to_string(),
            pattern: pattern.to_string(),
            negative,
            overrides,
            regex,
        };
        // Check the overrides' types now rather than at load time.
        rule.apply(LayerSpec {
            bits: 4,
            group_size: None,
            sym: true,
            desc_act: false,
        })
        .map_err(|e| format!("dynamic rule `{key}`: {e}"))?;
        Ok(rule)
    }

    /// True when the pattern matches the start of `module`.
    pub fn matches(&self, module: &str) -> bool {
        self.regex.match_start(module)
    }

    fn apply(&self, mut spec: LayerSpec) -> Result<LayerSpec, String> {
        let o = &self.overrides;
        if let Some(v) = o.get("bits") {
            spec.bits = as_u32(v).ok_or("`bits` must be a non-negative integer")?;
            check_bits(spec.bits)?;
        }
        if let Some(v) = o.get("group_size") {
            spec.group_size = group_size_opt(v.as_i64().ok_or("`group_size` must be an integer")?)?;
        }
        if let Some(v) = o.get("sym") {
            spec.sym = v.as_bool().ok_or("`sym` must be a boolean")?;
        }
        if let Some(v) = o.get("desc_act") {
            spec.desc_act = v.as_bool().ok_or("`desc_act` must be a boolean")?;
        }
        Ok(spec)
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn check_bits(bits: u32) -> Result<(), String> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "bits {bits} is not supported (supported: 2, 3, 4, 8)"
        ))
    }
}

fn group_size_opt(g: i64) -> Result<Option<usize>, String> {
    match g {
        -1 => Ok(None),
        g if g > 0 => Ok(Some(g as usize)),
        g => Err(format!("group_size {g} must be -1 or positive")),
    }
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self::new(4, Some(128))
    }
}

impl QuantizeConfig {
    /// A config with AutoGPTQ's defaults for everything but bits and group size.
    pub fn new(bits: u32, group_size: Option<usize>) -> Self {
        Self {
            bits,
            group_size: group_size.map_or(-1, |g| g as i64),
            damp_percent: 0.01,
            desc_act: false,
            static_groups: false,
            sym: true,
            true_sequential: true,
            lm_head: false,
            checkpoint_format: Format::V1.checkpoint_format().to_string(),
            quant_method: "gptq".to_string(),
            model_name_or_path: None,
            model_file_base_name: None,
            dynamic: Vec::new(),
            meta: Map::new(),
            extra: Map::new(),
        }
    }

    /// The group size, `None` for per-channel.
    pub fn group_size(&self) -> Option<usize> {
        usize::try_from(self.group_size).ok().filter(|&g| g > 0)
    }

    /// The zero-point format of `checkpoint_format`.
    pub fn format(&self) -> Result<Format, String> {
        Format::from_checkpoint_format(&self.checkpoint_format).ok_or_else(|| {
            format!(
                "checkpoint_format `{}` is not supported (supported: gptq, gptq_v2)",
                self.checkpoint_format
            )
        })
    }

    /// Checks every field this crate interprets.
    pub fn validate(&self) -> Result<(), String> {
        if !self.quant_method.eq_ignore_ascii_case("gptq") {
            return Err(format!(
                "quant_method `{}` is not supported (only gptq)",
                self.quant_method
            ));
        }
        check_bits(self.bits)?;
        group_size_opt(self.group_size)?;
        self.format()?;
        if !(0.0..1.0).contains(&self.damp_percent) {
            return Err(format!(
                "damp_percent {} is not in [0, 1)",
                self.damp_percent
            ));
        }
        Ok(())
    }

    /// The settings of module `name` (e.g. `model.layers.0.mlp.up_proj`)
    /// after the `dynamic` rules; `None` when a `-:` rule excludes it.
    pub fn layer(&self, name: &str) -> Option<LayerSpec> {
        let base = LayerSpec {
            bits: self.bits,
            group_size: self.group_size(),
            sym: self.sym,
            desc_act: self.desc_act,
        };
        match self.dynamic.iter().find(|r| r.matches(name)) {
            None => Some(base),
            Some(r) if r.negative => None,
            // Types were checked when the rule was parsed.
            Some(r) => Some(r.apply(base).unwrap_or(base)),
        }
    }

    /// Parses a `quantize_config.json` text (or a `quantization_config`
    /// object), keeping the order of the `dynamic` rules.
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let raw: OrderedQc = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::from_ordered(raw)
    }

    /// Parses an already-parsed JSON object. `serde_json` maps are sorted, so
    /// `dynamic` rules come in key order here; prefer [`Self::from_json_str`].
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or("the quantize config is not a JSON object")?;
        let mut fields = obj.clone();
        let dynamic = match fields.remove("dynamic") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.into_iter().collect()),
            Some(_) => return Err("`dynamic` must be an object".into()),
        };
        Self::from_ordered(OrderedQc { fields, dynamic })
    }

    fn from_ordered(raw: OrderedQc) -> Result<Self, String> {
        let mut f = raw.fields;
        let mut meta = match f.remove("meta") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err("`meta` must be an object".into()),
        };
        // Newer GPTQModel keeps some settings only under `meta`.
        let mut take = |k: &str| f.remove(k).or_else(|| meta.get(k).cloned());
        let bits = match take("bits") {
            Some(v) => as_u32(&v).ok_or("`bits` must be a non-negative integer")?,
            None => return Err("missing `bits`".into()),
        };
        let int = |v: Option<Value>, k: &str, d: i64| -> Result<i64, String> {
            v.map_or(Ok(d), |v| {
                v.as_i64().ok_or(format!("`{k}` must be an integer"))
            })
        };
        let boolean = |v: Option<Value>, k: &str, d: bool| -> Result<bool, String> {
            match v {
                None | Some(Value::Null) => Ok(d),
                Some(v) => v.as_bool().ok_or(format!("`{k}` must be a boolean")),
            }
        };
        let string = |v: Option<Value>, k: &str| -> Result<Option<String>, String> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("`{k}` must be a string")),
            }
        };
        let group_size = int(take("group_size"), "group_size", -1)?;
        let damp_percent = match take("damp_percent") {
            None | Some(Value::Null) => 0.01,
            Some(v) => v.as_f64().ok_or("`damp_percent` must be a number")?,
        };
        let desc_act = boolean(take("desc_act"), "desc_act", false)?;
        let static_groups = boolean(take("static_groups"), "static_groups", false)?;
        let sym = boolean(take("sym"), "sym", true)?;
        let true_sequential = boolean(take("true_sequential"), "true_sequential", true)?;
        let lm_head = boolean(take("lm_head"), "lm_head", false)?;
        let ckpt = string(take("checkpoint_format"), "checkpoint_format")?;
        let fmt = string(take("format"), "format")?;
        let checkpoint_format = match (ckpt, fmt) {
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => "gptq".to_string(),
        };
        let checkpoint_format = if boolean(take("is_marlin_format"), "is_marlin_format", false)? {
            "marlin".to_string()
        } else {
            checkpoint_format
        };
        let quant_method = string(take("quant_method"), "quant_method")?
            .or(string(take("method"), "method")?)
            .unwrap_or_else(|| "gptq".into());
        if let Some(p) = string(take("pack_dtype"), "pack_dtype")? {
            if p != "int32" {
                return Err(format!("pack_dtype `{p}` is not supported (only int32)"));
            }
        }
        let model_name_or_path = string(take("model_name_or_path"), "model_name_or_path")?;
        let model_file_base_name = string(take("model_file_base_name"), "model_file_base_name")?;
        let dynamic = raw
            .dynamic
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| match v {
                Value::Object(m) => DynamicRule::new(&k, m),
                Value::Null => DynamicRule::new(&k, Map::new()),
                _ => Err(format!("dynamic rule `{k}`: overrides must be an object")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The mirrored settings are regenerated on write.
        for k in ["damp_percent", "static_groups", "true_sequential"] {
            meta.remove(k);
        }
        let qc = Self {
            bits,
            group_size,
            damp_percent,
            desc_act,
            static_groups,
            sym,
            true_sequential,
            lm_head,
            checkpoint_format,
            quant_method,
            model_name_or_path,
            model_file_base_name,
            dynamic,
            meta,
            extra: f,
        };
        qc.validate()?;
        Ok(qc)
    }

    /// Pretty JSON for `quantize_config.json`.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("serializable")
    }

    /// This config with `meta.quantizer` set to this crate ([`QUANTIZER`]).
    pub fn stamped(&self) -> Self {
        let mut q = self.clone();
        q.meta
            .insert("quantizer".into(), Value::Array(vec![QUANTIZER.into()]));
        q
    }
}

impl Serialize for QuantizeConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("bits", &self.bits)?;
        m.serialize_entry("group_size", &self.group_size)?;
        m.serialize_entry("desc_act", &self.desc_act)?;
        m.serialize_entry("sym", &self.sym)?;
        m.serialize_entry("lm_head", &self.lm_head)?;
        m.serialize_entry("quant_method", &self.quant_method)?;
        m.serialize_entry("checkpoint_format", &self.checkpoint_format)?;
        m.serialize_entry("pack_dtype", "int32")?;
        m.serialize_entry("damp_percent", &self.damp_percent)?;
        m.serialize_entry("static_groups", &self.static_groups)?;
        m.serialize_entry("true_sequential", &self.true_sequential)?;
        m.serialize_entry("model_name_or_path", &self.model_name_or_path)?;
        m.serialize_entry("model_file_base_name", &self.model_file_base_name)?;
        if !self.dynamic.is_empty() {
            m.serialize_entry("dynamic", &DynamicSer(&self.dynamic))?;
        }
        let mut meta = self.meta.clone();
        meta.insert("damp_percent".into(), self.damp_percent.into());
        meta.insert("static_groups".into(), self.static_groups.into());
        meta.insert("true_sequential".into(), self.true_sequential.into());
        m.serialize_entry("meta", &meta)?;
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for QuantizeConfig {
    /// Same as [`QuantizeConfig::from_json_str`]: order of `dynamic` kept,
    /// unknown fields kept, every interpreted field checked.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = OrderedQc::deserialize(d)?;
        Self::from_ordered(raw).map_err(serde::de::Error::custom)
    }
}

/// The `dynamic` rules, serialized in order.
struct DynamicSer<'a>(&'a [DynamicRule]);

impl Serialize for DynamicSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for r in self.0 {
            m.serialize_entry(&r.key, &r.overrides)?;
        }
        m.end()
    }
}

/// A quantize-config object with its `dynamic` entries in document order.
struct OrderedQc {
    fields: Map<String, Value>,
    dynamic: Option<Vec<(String, Value)>>,
}

/// A JSON object's entries in document order.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = a.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for OrderedQc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedQc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a quantize config object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<OrderedQc, A::Error> {
                let mut qc = OrderedQc {
                    fields: Map::new(),
                    dynamic: None,
                };
                while let Some(k) = a.next_key::<String>()? {
                    if k == "dynamic" {
                        qc.dynamic = a.next_value::<Option<Ordered>>()?.map(|o| o.0);
                    } else {
                        let v = a.next_value::<Value>()?;
                        qc.fields.insert(k, v);
                    }
                }
                Ok(qc)
            }
        }
        d.deserialize_map(V)
    }
}

/// The `quantization_config` of a `config.json` text, order kept.
struct ConfigQc(Option<OrderedQc>);

impl<'de> Deserialize<'de> for ConfigQc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConfigQc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a config object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<ConfigQc, A::Error> {
                let mut qc = None;
                while let Some(k) = a.next_key::<String>()? {
                    if k == "quantization_config" {
                        qc = a.next_value::<Option<OrderedQc>>()?;
                    } else {
                        a.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ConfigQc(qc))
            }
        }
        d.deserialize_map(V)
    }
}

fn json_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Json {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// The `quant_method` (or GPTQModel's `method`) of a quantization config
/// object, when it names one other than GPTQ.
fn other_method(v: &Value) -> Option<String> {
    let m = v
        .get("quant_method")
        .or_else(|| v.get("method"))
        .and_then(Value::as_str)?;
    (!m.eq_ignore_ascii_case("gptq")).then(|| m.to_string())
}

/// The GPTQ quantize config of a model folder: `config.json`'s
/// `quantization_config` (what transformers and vLLM use; re-read from the
/// file text so the `dynamic` rules keep their order), else
/// `quantize_config.json`. `None` for an unquantized model, and for one
/// quantized with another method (AWQ, bitsandbytes, FP8, ...: logged as a
/// warning; its packed tensors are then refused when a layer is loaded, so
/// `inspect` still works on it). A GPTQ config this crate cannot honour
/// (bits 5-7, `marlin`/`bitblas` checkpoint formats, a malformed field or
/// `dynamic` rule) is an error.
pub fn quantize_config_of(dir: &Path, config: &Value) -> Result<Option<QuantizeConfig>> {
    let config_path = dir.join("config.json");
    if let Some(qc) = config.get("quantization_config").filter(|v| !v.is_null()) {
        if let Some(m) = other_method(qc) {
            tracing::warn!(
                "{}: quantization method `{m}` is not GPTQ; its quantized layers cannot be loaded",
                config_path.display()
            );
            return Ok(None);
        }
        let parsed = if config_path.is_file() {
            let text = read_text(&config_path)?;
            match serde_json::from_str::<ConfigQc>(&text) {
                Ok(ConfigQc(Some(raw))) => QuantizeConfig::from_ordered(raw),
                _ => QuantizeConfig::from_value(qc),
            }
        } else {
            QuantizeConfig::from_value(qc)
        };
        return parsed
            .map(Some)
            .map_err(|m| json_err(&config_path, format!("quantization_config: {m}")));
    }
    let p = dir.join(QUANTIZE_CONFIG_FILE);
    if !p.is_file() {
        return Ok(None);
    }
    let text = read_text(&p)?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        if let Some(m) = other_method(&v) {
            tracing::warn!(
                "{}: quantization method `{m}` is not GPTQ; its quantized layers cannot be loaded",
                p.display()
            );
            return Ok(None);
        }
    }
    QuantizeConfig::from_json_str(&text)
        .map(Some)
        .map_err(|m| json_err(&p, m))
}

/// The GPTQ quantize config of opened model files: [`quantize_config_of`]
/// their folder, or for files without one (a `.gguf`, a test) the
/// `quantization_config` of their config alone.
pub fn quantize_config_for(files: &crate::ModelFiles) -> Result<Option<QuantizeConfig>> {
    if let Some(dir) = &files.dir {
        return quantize_config_of(dir, &files.config);
    }
    match files.config.get("quantization_config") {
        None | Some(Value::Null) => Ok(None),
        Some(qc) if other_method(qc).is_some() => Ok(None),
        Some(qc) => QuantizeConfig::from_value(qc)
            .map(Some)
            .map_err(|m| Error::Json {
                path: PathBuf::from("config.json"),
                msg: format!("quantization_config: {m}"),
            }),
    }
}

// ============================================================================
// Writer
// ============================================================================

/// A tensor to write: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// `numel × dtype.size()` bytes, little-endian, row-major.
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// Checks that `bytes` matches `dtype` and `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Self> {
        let t = Self {
            dtype,
            shape,
            bytes,
        };
        t.check("tensor")?;
        Ok(t)
    }

    fn check(&self, name: &str) -> Result<()> {
        let n = self
            .shape
            .iter()
            .try_fold(self.dtype.size(), |a, &d| a.checked_mul(d));
        if n != Some(self.bytes.len()) {
            return Err(Error::Core(gptq_core::Error::Quant(format!(
                "tensor `{name}`: {} bytes do not hold {} {:?}",
                self.bytes.len(),
                self.dtype,
                self.shape
            ))));
        }
        Ok(())
    }

    /// f32 values stored as f16 (how non-quantized weights are written).
    pub fn f16_from_f32(shape: Vec<usize>, v: &[f32]) -> Result<Self> {
        let bytes = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        Self::new(DType::F16, shape, bytes)
    }

    /// A tensor stored as f16.
    pub fn f16_from_tensor(t: &Tensor) -> Self {
        Self::f16_from_f32(t.shape().to_vec(), t.data()).expect("a tensor's size matches its shape")
    }

    /// f16 values.
    pub fn f16(shape: Vec<usize>, v: &[f16]) -> Result<Self> {
        Self::new(
            DType::F16,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// i32 values.
    pub fn i32(shape: Vec<usize>, v: &[i32]) -> Result<Self> {
        Self::new(
            DType::I32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// A tensor as stored in a source checkpoint, unchanged.
    pub fn from_raw(r: RawTensor) -> Self {
        Self {
            dtype: r.dtype,
            shape: r.shape,
            bytes: r.bytes,
        }
    }
}

/// The checkpoint tensors of a packed layer under `prefix`
/// (`{prefix}.qweight`, `.qzeros`, `.scales`, `.g_idx`, `.bias`).
pub fn packed_tensors(prefix: &str, p: &Packed) -> Vec<(String, TensorData)> {
    let n = |s: &str| format!("{prefix}.{s}");
    let mut v = vec![
        (
            n("qweight"),
            TensorData::i32(p.qweight_shape.to_vec(), &p.qweight),
        ),
        (
            n("qzeros"),
            TensorData::i32(p.qzeros_shape.to_vec(), &p.qzeros),
        ),
        (
            n("scales"),
            TensorData::f16(p.scales_shape.to_vec(), &p.scales),
        ),
        (n("g_idx"), TensorData::i32(vec![p.g_idx.len()], &p.g_idx)),
    ];
    if let Some(b) = &p.bias {
        v.push((n("bias"), TensorData::f16(vec![b.len()], b)));
    }
    v.into_iter()
        .map(|(k, t)| (k, t.expect("a Packed's shapes match its data")))
        .collect()
}

/// An extra file for the output folder (tokenizer, generation config, ...).
#[derive(Debug, Clone)]
pub enum ExtraFile {
    /// Copy this file under its own name.
    Copy(PathBuf),
    /// Write these bytes under this name.
    Bytes {
        /// File name (no folders).
        name: String,
        /// Contents.
        bytes: Vec<u8>,
    },
}

/// Files of an HF folder that a quantized copy should carry over.
pub const AUXILIARY_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// The [`AUXILIARY_FILES`] present in `dir`, as [`ExtraFile::Copy`].
pub fn auxiliary_files(dir: &Path) -> Vec<ExtraFile> {
    AUXILIARY_FILES
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .map(ExtraFile::Copy)
        .collect()
}

struct Pending {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// Offset in the spill file.
    at: u64,
    len: u64,
}

/// A GPTQ checkpoint being written, tensor by tensor.
///
/// Each [`add`](Self::add)ed tensor is appended to a spill file in the
/// temporary output folder and dropped from memory; when the next tensor
/// would take the current shard past `max_shard_size` (a lone larger tensor
/// gets a shard of its own), the shard file is written — header, then the
/// spilled bytes ordered by element size and name, as the reference writer
/// orders them — and the spill file is reset. Memory stays at one tensor and
/// the temporary disk overhead at one shard. [`finish`](Self::finish) names
/// the shards (`model.safetensors`, or `model-0000k-of-0000N.safetensors`
/// with `model.safetensors.index.json`), writes `quantize_config.json`,
/// `config.json` and the extra files, and renames the folder into place.
/// Dropped before `finish` (an error, a panic), it leaves nothing behind.
pub struct CheckpointWriter {
    dir: AtomicDir,
    max_shard_size: Option<u64>,
    spill: Option<BufWriter<File>>,
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// Tensor names of each written shard.
    shards: Vec<Vec<String>>,
    seen: HashSet<String>,
    total_size: u64,
}

const SPILL: &str = ".spill";
const RESERVED: &[&str] = &[
    "config.json",
    QUANTIZE_CONFIG_FILE,
    "model.safetensors",
    "model.safetensors.index.json",
];

fn shard_tmp(k: usize) -> String {
    format!(".shard-{k:05}.safetensors")
}

impl CheckpointWriter {
    /// Starts writing `out_dir` (refused if it exists and `overwrite` is false).
    /// `max_shard_size` bounds each shard's tensor bytes; `None` writes one file.
    pub fn create(out_dir: &Path, overwrite: bool, max_shard_size: Option<u64>) -> Result<Self> {
        Ok(Self {
            dir: AtomicDir::create(out_dir, overwrite)?,
            max_shard_size: max_shard_size.map(|m| m.max(1)),
            spill: None,
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
            seen: HashSet::new(),
            total_size: 0,
        })
    }

    /// Adds one tensor (any dtype; non-quantized weights are usually f16).
    pub fn add(&mut self, name: impl Into<String>, t: TensorData) -> Result<()> {
        let name = name.into();
        if name.is_empty() || name == "__metadata__" {
            return Err(self.err(format!("`{name}` is not a valid tensor name")));
        }
        t.check(&name)?;
        if !self.seen.insert(name.clone()) {
            return Err(self.err(format!("tensor `{name}` was added twice")));
        }
        let len = t.bytes.len() as u64;
        if let Some(max) = self.max_shard_size {
            if !self.pending.is_empty() && self.pending_bytes + len > max {
                self.flush_shard()?;
            }
        }
        let spill_path = self.dir.path(SPILL);
        if self.spill.is_none() {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&spill_path)
                .map_err(|e| Error::io(&spill_path, e))?;
            self.spill = Some(BufWriter::with_capacity(1 << 20, f));
        }
        let w = self.spill.as_mut().expect("opened above");
        w.write_all(&t.bytes)
            .map_err(|e| Error::io(&spill_path, e))?;
        self.pending.push(Pending {
            name,
            dtype: t.dtype,
            shape: t.shape,
            at: self.pending_bytes,
            len,
        });
        self.pending_bytes += len;
        self.total_size += len;
        Ok(())
    }

    /// Adds the tensors of a packed layer under `prefix`.
    pub fn add_packed(&mut self, prefix: &str, p: &Packed) -> Result<()> {
        for (n, t) in packed_tensors(prefix, p) {
            self.add(n, t)?;
        }
        Ok(())
    }

    /// Number of shards written so far.
    pub fn shards_written(&self) -> usize {
        self.shards.len()
    }

    fn err(&self, msg: String) -> Error {
        Error::Safetensors {
            path: self.dir.path(""),
            msg,
        }
    }

    fn flush_shard(&mut self) -> Result<()> {
        let spill_path = self.dir.path(SPILL);
        let Some(w) = self.spill.take() else {
            return Ok(());
        };
        let mut spill = w
            .into_inner()
            .map_err(|e| Error::io(&spill_path, e.into_error()))?;
        let mut order: Vec<&Pending> = self.pending.iter().collect();
        order.sort_by(|a, b| {
            b.dtype
                .size()
                .cmp(&a.dtype.size())
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut header = Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut off = 0u64;
        for p in &order {
            header.insert(
                p.name.clone(),
                serde_json::json!({
                    "dtype": p.dtype.as_str(),
                    "shape": p.shape,
                    "data_offsets": [off, off + p.len],
                }),
            );
            off += p.len;
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
        while !(8 + h.len()).is_multiple_of(8) {
            h.push(b' ');
        }
        let k = self.shards.len() + 1;
        let dest = self.dir.path(&shard_tmp(k));
        write_file_with(&dest, |out| {
            out.write_all(&(h.len() as u64).to_le_bytes())?;
            out.write_all(&h)?;
            for p in &order {
                spill.seek(SeekFrom::Start(p.at))?;
                let n = std::io::copy(&mut (&mut spill).take(p.len), out)?;
                if n != p.len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "spill file is shorter than expected",
                    ));
                }
            }
            Ok(())
        })?;
        drop(spill);
        fs::remove_file(&spill_path).map_err(|e| Error::io(&spill_path, e))?;
        self.shards
            .push(self.pending.drain(..).map(|p| p.name).collect());
        self.pending_bytes = 0;
        Ok(())
    }

    /// Completes the checkpoint: the last shard, shard names and index,
    /// `quantize_config.json`, `config.json` (the source config with
    /// `quantization_config` set and `torch_dtype` float16), the extra files;
    /// then renames the folder into place.
    pub fn finish(
        mut self,
        config_json: &Value,
        qcfg: &QuantizeConfig,
        extra_files: &[ExtraFile],
    ) -> Result<()> {
        let qpath = self.dir.path(QUANTIZE_CONFIG_FILE);
        qcfg.validate().map_err(|m| json_err(&qpath, m))?;
        let base = config_json.as_object().ok_or_else(|| {
            json_err(
                &self.dir.path("config.json"),
                "source config is not an object",
            )
        })?;
        if !self.pending.is_empty() {
            self.flush_shard()?;
        }
        if self.shards.is_empty() {
            return Err(self.err("no tensors were written".into()));
        }
        let n = self.shards.len();
        if n == 1 {
            let from = self.dir.path(&shard_tmp(1));
            let to = self.dir.path("model.safetensors");
            fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        } else {
            let mut weight_map = BTreeMap::new();
            for (i, names) in self.shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
                let to = self.dir.path(&file);
                fs::rename(self.dir.path(&shard_tmp(i + 1)), &to).map_err(|e| Error::io(&to, e))?;
                for name in names {
                    weight_map.insert(name.clone(), file.clone());
                }
            }
            let index = serde_json::json!({
                "metadata": {"total_size": self.total_size},
                "weight_map": weight_map,
            });
            write_file(
                &self.dir.path("model.safetensors.index.json"),
                serde_json::to_string_pretty(&index)
                    .expect("json")
                    .as_bytes(),
            )?;
        }
        let qcfg = qcfg.stamped();
        write_file(&qpath, qcfg.to_json_string().as_bytes())?;
        let config = serde_json::to_string_pretty(&ConfigOut { base, qcfg: &qcfg }).expect("json");
        write_file(&self.dir.path("config.json"), config.as_bytes())?;
        let mut names = HashSet::new();
        for f in extra_files {
            let (name, dest) = match f {
                ExtraFile::Copy(p) => {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (name.clone(), self.dir.path(&name))
                }
                ExtraFile::Bytes { name, .. } => (name.clone(), self.dir.path(name)),
            };
            if name.is_empty()
                || name.contains(['/', '\\'])
                || name.starts_with('.')
                || RESERVED.contains(&name.as_str())
                || name.ends_with(".safetensors")
                || !names.insert(name.clone())
            {
                return Err(Error::io(
                    &dest,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "extra file name is empty, repeated or would replace a checkpoint file",
                    ),
                ));
            }
            match f {
                ExtraFile::Copy(p) => {
                    crate::atomic::copy_file(p, &dest)?;
                }
                ExtraFile::Bytes { bytes, .. } => write_file(&dest, bytes)?,
            }
        }
        self.dir.commit()
    }
}

/// `config.json` of the output: the source config with `quantization_config`
/// and the dtype replaced, keys sorted.
struct ConfigOut<'a> {
    base: &'a Map<String, Value>,
    qcfg: &'a QuantizeConfig,
}

impl Serialize for ConfigOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        enum E<'a> {
            V(&'a Value),
            S(&'static str),
            Q(&'a QuantizeConfig),
        }
        let mut entries: BTreeMap<&str, E> = self
            .base
            .iter()
            .map(|(k, v)| (k.as_str(), E::V(v)))
            .collect();
        entries.insert("quantization_config", E::Q(self.qcfg));
        entries.insert("torch_dtype", E::S("float16"));
        if entries.contains_key("dtype") {
            entries.insert("dtype", E::S("float16"));
        }
        let mut m = s.serialize_map(Some(entries.len()))?;
        for (k, v) in entries {
            match v {
                E::V(v) => m.serialize_entry(k, v)?,
                E::S(v) => m.serialize_entry(k, v)?,
                E::Q(v) => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

/// Writes a whole checkpoint with a [`CheckpointWriter`]: `tensors` are
/// consumed one at a time (pass an iterator that produces them lazily to
/// keep memory at one tensor).
pub fn write_checkpoint(
    out_dir: &Path,
    overwrite: bool,
    config_json: &Value,
    qcfg: &QuantizeConfig,
    tensors: impl IntoIterator<Item = (String, TensorData)>,
    extra_files: &[ExtraFile],
    max_shard_size: Option<u64>,
) -> Result<()> {
    let mut w = CheckpointWriter::create(out_dir, overwrite, max_shard_size)?;
    for (name, t) in tensors {
        w.add(name, t)?;
    }
    w.finish(config_json, qcfg, extra_files)
}

// ============================================================================
// Reader
// ============================================================================

fn quant_err(prefix: &str, msg: impl std::fmt::Display) -> Error {
    Error::Core(gptq_core::Error::Quant(format!("`{prefix}`: {msg}")))
}

fn core_msg(e: gptq_core::Error) -> String {
    match e {
        gptq_core::Error::Quant(m) => m,
        e => e.to_string(),
    }
}

fn load_i32(src: &dyn WeightSource, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<i32>)> {
    let r = src.load_raw(name)?;
    if r.dtype != DType::I32 || r.shape.len() != rank {
        return Err(Error::WrongDType {
            name: name.to_string(),
            dtype: format!("{} {:?}", r.dtype, r.shape),
            wanted: if rank == 2 {
                "a 2-d I32 tensor"
            } else {
                "a 1-d I32 tensor"
            },
        });
    }
    let v = r
        .bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((r.shape, v))
}

fn load_float(src: &dyn WeightSource, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let r = src.load_raw(name)?;
    if !matches!(r.dtype, DType::F16 | DType::BF16 | DType::F32) {
        return Err(Error::WrongDType {
            name: name.to_string(),
            dtype: r.dtype.to_string(),
            wanted: "F16, BF16 or F32",
        });
    }
    let v = r.dtype.to_f32(&r.bytes)?;
    Ok((r.shape, v))
}

/// Reads the GPTQ layer `prefix` (e.g. `model.layers.0.self_attn.q_proj`):
/// `None` when `{prefix}.qweight` is absent. Checks dtypes (I32 `qweight`,
/// `qzeros`, `g_idx`; F16, BF16 or F32 `scales` and `bias`), every shape
/// against the others and against the group size the config gives this
/// module, and validates the result. A missing `g_idx` (old checkpoints)
/// means column order.
pub fn read_qlinear(
    src: &dyn WeightSource,
    prefix: &str,
    qcfg: &QuantizeConfig,
) -> Result<Option<QLinear>> {
    let name = |s: &str| format!("{prefix}.{s}");
    if !src.contains(&name("qweight")) {
        return Ok(None);
    }
    let spec = qcfg.layer(prefix).ok_or_else(|| {
        quant_err(
            prefix,
            "the checkpoint holds GPTQ tensors but a `-:` dynamic rule of the quantize config excludes this module",
        )
    })?;
    let format = qcfg.format().map_err(|m| quant_err(prefix, m))?;
    let bits = spec.bits;
    let (qw_shape, qweight) = load_i32(src, &name("qweight"), 2)?;
    let (qz_shape, qzeros) = load_i32(src, &name("qzeros"), 2)?;
    let (sc_shape, scales) = load_float(src, &name("scales"))?;
    let (rows, out) = (qw_shape[0], qw_shape[1]);
    // An empty qweight would let the other dims be anything (no bytes back
    // them), so sizes derived from it could be absurd.
    if rows == 0 || out == 0 {
        return Err(quant_err(prefix, format!("qweight {qw_shape:?} is empty")));
    }
    let inp = rows
        .checked_mul(32)
        .filter(|r| r.is_multiple_of(bits as usize))
        .ok_or_else(|| {
            quant_err(
                prefix,
                format!("qweight {qw_shape:?} does not hold whole {bits}-bit input rows"),
            )
        })?
        / bits as usize;
    let groups = sc_shape.first().copied().unwrap_or(0);
    if sc_shape != [groups, out] {
        return Err(quant_err(
            prefix,
            format!("scales {sc_shape:?} is not [groups, {out}] for qweight {qw_shape:?}"),
        ));
    }
    let zero_words = out
        .checked_mul(bits as usize)
        .filter(|b| b.is_multiple_of(32))
        .map(|b| b / 32);
    if zero_words.is_none_or(|w| qz_shape != [groups, w]) {
        return Err(quant_err(
            prefix,
            format!(
                "qzeros {qz_shape:?} is not [{groups}, {out}·{bits}/32] for scales {sc_shape:?}"
            ),
        ));
    }
    let want = pack::num_groups(inp, spec.group_size);
    if groups != want {
        return Err(quant_err(
            prefix,
            format!(
                "{groups} groups, but {inp} inputs with group size {:?} need {want}",
                spec.group_size
            ),
        ));
    }
    let g_idx = if src.contains(&name("g_idx")) {
        let (gs, g) = load_i32(src, &name("g_idx"), 1)?;
        if gs != [inp] {
            return Err(quant_err(prefix, format!("g_idx {gs:?} is not [{inp}]")));
        }
        pack::check_g_idx(&g, groups).map_err(|e| quant_err(prefix, core_msg(e)))?
    } else {
        pack::default_g_idx(inp, spec.group_size)
    };
    let bias = if src.contains(&name("bias")) {
        let (bs, b) = load_float(src, &name("bias"))?;
        if bs != [out] {
            return Err(quant_err(prefix, format!("bias {bs:?} is not [{out}]")));
        }
        Some(b)
    } else {
        None
    };
    let q = QLinear {
        out_features: out,
        in_features: inp,
        bits,
        group_size: spec.group_size,
        codes: pack::unpack_qweight(&qweight, bits, out, inp)
            .map_err(|e| quant_err(prefix, core_msg(e)))?,
        scales,
        zeros: pack::unpack_qzeros(&qzeros, bits, groups, out, format)
            .map_err(|e| quant_err(prefix, core_msg(e)))?,
        g_idx,
        bias,
    };
    q.validate().map_err(|e| quant_err(prefix, core_msg(e)))?;
    Ok(Some(q))
}

// ============================================================================
// A small regular-expression matcher for `dynamic` rules
// ============================================================================

mod mini_regex {
    //! Matcher for the Python-`re` subset used in GPTQModel `dynamic` keys:
    //! a parser to a small syntax tree, compiled to a Thompson NFA and run
    //! breadth-first, so no pattern can take exponential time (a
    //! backtracking matcher hung on `(.*)*x`-like keys) and counted repeats
    //! are bounded by the program size cap.

    #[derive(Debug, Clone)]
    enum Item {
        Range(char, char),
        Digit(bool),
        Word(bool),
        Space(bool),
    }

    impl Item {
        fn matches(&self, c: char) -> bool {
            match *self {
                Item::Range(a, b) => a <= c && c <= b,
                Item::Digit(neg) => c.is_ascii_digit() != neg,
                Item::Word(neg) => (c.is_alphanumeric() || c == '_') != neg,
                Item::Space(neg) => c.is_whitespace() != neg,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Node {
        Char(char),
        Any,
        Class(Vec<Item>, bool),
        Start,
        End,
        Group(Vec<Vec<Node>>),
        Repeat {
            node: Box<Node>,
            min: u32,
            max: Option<u32>,
        },
    }

    /// A compiled pattern.
    #[derive(Debug, Clone)]
    pub struct Regex {
        prog: Vec<Inst>,
    }

    struct Parser {
        c: Vec<char>,
        i: usize,
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.c.get(self.i).copied()
        }

        fn alts(&mut self, depth: usize) -> Result<Vec<Vec<Node>>, String> {
            let mut alts = vec![self.seq(depth)?];
            while self.peek() == Some('|') {
                self.i += 1;
                alts.push(self.seq(depth)?);
            }
            Ok(alts)
        }

        fn seq(&mut self, depth: usize) -> Result<Vec<Node>, String> {
            let mut seq = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                let atom = self.atom(depth)?;
                seq.push(self.quantified(atom)?);
            }
            Ok(seq)
        }

        fn number(&mut self) -> Option<u32> {
            let s = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            self.c[s..self.i].iter().collect::<String>().parse().ok()
        }

        /// `{n}`, `{n,}`, `{,m}`, `{n,m}` at `self.i` (on `{`), else `None`
        /// with the position unchanged (Python then reads `{` literally).
        fn braces(&mut self) -> Option<(u32, Option<u32>)> {
            let save = self.i;
            self.i += 1;
            let lo = self.number();
            let r = if self.peek() == Some(',') {
                self.i += 1;
                let hi = self.number();
                (self.peek() == Some('}')).then_some((lo.unwrap_or(0), hi))
            } else {
                lo.filter(|_| self.peek() == Some('}'))
                    .map(|n| (n, Some(n)))
            };
            match r {
                Some(r) if r.1.is_none_or(|h| h >= r.0) => {
                    self.i += 1;
                    Some(r)
                }
                _ => {
                    self.i = save;
                    None
                }
            }
        }

        fn quantified(&mut self, mut atom: Node) -> Result<Node, String> {
            loop {
                let (min, max) = match self.peek() {
                    Some('*') => {
                        self.i += 1;
                        (0, None)
                    }
                    Some('+') => {
                        self.i += 1;
                        (1, None)
                    }
                    Some('?') => {
                        self.i += 1;
                        (0, Some(1))
                    }
                    Some('{') => match self.braces() {
                        Some(r) => r,
                        None => return Ok(atom),
                    },
                    _ => return Ok(atom),
                };
                if matches!(atom, Node::Start | Node::End | Node::Repeat { .. }) {
                    return Err(format!("nothing to repeat at position {}", self.i));
                }
                // Lazy `?`: the same matches exist (only their length differs).
                if self.peek() == Some('?') {
                    self.i += 1;
                }
                if self.peek() == Some('+') {
                    return Err("possessive quantifiers are not supported".into());
                }
                atom = Node::Repeat {
                    node: Box::new(atom),
                    min,
                    max,
                };
                // A further quantifier would repeat a repeat: refused above.
            }
        }

        fn escape(&mut self, in_class: bool) -> Result<Result<Item, char>, String> {
            let c = self.peek().ok_or("pattern ends with a backslash")?;
            self.i += 1;
            Ok(match c {
                'd' => Ok(Item::Digit(false)),
                'D' => Ok(Item::Digit(true)),
                'w' => Ok(Item::Word(false)),
                'W' => Ok(Item::Word(true)),
                's' => Ok(Item::Space(false)),
                'S' => Ok(Item::Space(true)),
                'n' => Err('\n'),
                't' => Err('\t'),
                'r' => Err('\r'),
                'b' if in_class => Err('\u{8}'),
                c if c.is_ascii_alphanumeric() => {
                    return Err(format!("escape `\\{c}` is not supported"))
                }
                c => Err(c),
            })
        }

        fn class(&mut self) -> Result<Node, String> {
            let neg = self.peek() == Some('^');
            if neg {
                self.i += 1;
            }
            let mut items = Vec::new();
            let mut first = true;
            loop {
                let c = self.peek().ok_or("unterminated character class")?;
                self.i += 1;
                if c == ']' && !first {
                    break;
                }
                first = false;
                let lo = if c == '\\' {
                    match self.escape(true)? {
                        Ok(item) => {
                            items.push(item);
                            continue;
                        }
                        Err(ch) => ch,
                    }
                } else {
                    c
                };
                if self.peek() == Some('-') && self.c.get(self.i + 1).is_some_and(|&n| n != ']') {
                    self.i += 1;
                    let h = self.peek().ok_or("unterminated character class")?;
                    self.i += 1;
                    let hi = if h == '\\' {
                        match self.escape(true)? {
                            Ok(_) => return Err("a class shorthand cannot end a range".into()),
                            Err(ch) => ch,
                        }
                    } else {
                        h
                    };
                    if hi < lo {
                        return Err(format!("bad character range {lo}-{hi}"));
                    }
                    items.push(Item::Range(lo, hi));
                } else {
                    items.push(Item::Range(lo, lo));
                }
            }
            Ok(Node::Class(items, neg))
        }

        fn atom(&mut self, depth: usize) -> Result<Node, String> {
            let c = self.peek().expect("caller checked");
            self.i += 1;
            Ok(match c {
                '.' => Node::Any,
                '^' => Node::Start,
                '$' => Node::End,
                '[' => self.class()?,
                '*' | '+' | '?' => {
                    return Err(format!("nothing to repeat at position {}", self.i - 1))
                }
                '(' => {
                    if depth > 64 {
                        return Err("groups are nested too deeply".into());
                    }
                    if self.peek() == Some('?') {
                        self.i += 1;
                        match self.peek() {
                            Some(':') => self.i += 1,
                            Some('P') if self.c.get(self.i + 1) == Some(&'<') => {
                                while self.peek().is_some_and(|c| c != '>') {
                                    self.i += 1;
                                }
                                self.i += 1;
                            }
                            _ => {
                                return Err(
                                    "lookarounds, inline flags and other `(?...)` groups are not supported"
                                        .into(),
                                )
                            }
                        }
                    }
                    let alts = self.alts(depth + 1)?;
                    if self.peek() != Some(')') {
                        return Err("missing `)`".into());
                    }
                    self.i += 1;
                    Node::Group(alts)
                }
                '\\' => match self.peek() {
                    Some('A') => {
                        self.i += 1;
                        Node::Start
                    }
                    Some('Z') => {
                        self.i += 1;
                        Node::End
                    }
                    _ => match self.escape(false)? {
                        Ok(item) => Node::Class(vec![item], false),
                        Err(ch) => Node::Char(ch),
                    },
                },
                c => Node::Char(c),
            })
        }
    }

    /// One instruction of the compiled pattern (a Thompson NFA).
    #[derive(Debug, Clone)]
    enum Inst {
        Char(char),
        Any,
        Class(Vec<Item>, bool),
        Start,
        End,
        /// Try both targets.
        Split(usize, usize),
        Jmp(usize),
        Match,
    }

    /// Most instructions a pattern may compile to (counted repeats are
    /// expanded); module-name patterns need a few hundred at most.
    const MAX_PROGRAM: usize = 20_000;

    struct Compiler {
        prog: Vec<Inst>,
    }

    impl Compiler {
        fn push(&mut self, i: Inst) -> Result<usize, String> {
            if self.prog.len() >= MAX_PROGRAM {
                return Err(format!(
                    "pattern is too large (more than {MAX_PROGRAM} steps once repeats are expanded)"
                ));
            }
            self.prog.push(i);
            Ok(self.prog.len() - 1)
        }

        fn alts(&mut self, alts: &[Vec<Node>]) -> Result<(), String> {
            let Some((last, init)) = alts.split_last() else {
                return Ok(());
            };
            let mut jumps = Vec::new();
            for a in init {
                let split = self.push(Inst::Split(0, 0))?;
                self.seq(a)?;
                jumps.push(self.push(Inst::Jmp(0))?);
                let next = self.prog.len();
                self.prog[split] = Inst::Split(split + 1, next);
            }
            self.seq(last)?;
            let end = self.prog.len();
            for j in jumps {
                self.prog[j] = Inst::Jmp(end);
            }
            Ok(())
        }

        fn seq(&mut self, nodes: &[Node]) -> Result<(), String> {
            nodes.iter().try_for_each(|n| self.node(n))
        }

        fn node(&mut self, n: &Node) -> Result<(), String> {
            match n {
                Node::Char(c) => self.push(Inst::Char(*c)).map(drop),
                Node::Any => self.push(Inst::Any).map(drop),
                Node::Class(items, neg) => self.push(Inst::Class(items.clone(), *neg)).map(drop),
                Node::Start => self.push(Inst::Start).map(drop),
                Node::End => self.push(Inst::End).map(drop),
                Node::Group(alts) => self.alts(alts),
                Node::Repeat { node, min, max } => {
                    // A node that compiles to nothing (`()`) repeats to nothing.
                    let start = self.prog.len();
                    self.node(node)?;
                    if self.prog.len() == start {
                        return Ok(());
                    }
                    self.prog.truncate(start);
                    // Greedy and lazy only change which match is found, not
                    // whether one exists, which is all `re.match` needs here.
                    for _ in 0..*min {
                        self.node(node)?;
                    }
                    match max {
                        None => {
                            let split = self.push(Inst::Split(0, 0))?;
                            self.node(node)?;
                            self.push(Inst::Jmp(split))?;
                            let next = self.prog.len();
                            self.prog[split] = Inst::Split(split + 1, next);
                        }
                        Some(max) => {
                            let mut splits = Vec::new();
                            for _ in *min..*max {
                                splits.push(self.push(Inst::Split(0, 0))?);
                                self.node(node)?;
                            }
                            let end = self.prog.len();
                            for sp in splits {
                                self.prog[sp] = Inst::Split(sp + 1, end);
                            }
                        }
                    }
                    Ok(())
                }
            }
        }
    }

    /// Adds thread `pc` and everything reachable from it without reading a
    /// character at position `i` of a string of `len` characters.
    fn add(
        prog: &[Inst],
        list: &mut Vec<usize>,
        seen: &mut [bool],
        pc: usize,
        i: usize,
        len: usize,
    ) {
        let mut stack = vec![pc];
        while let Some(pc) = stack.pop() {
            if seen[pc] {
                continue;
            }
            seen[pc] = true;
            match prog[pc] {
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Inst::Jmp(a) => stack.push(a),
                Inst::Start => {
                    if i == 0 {
                        stack.push(pc + 1)
                    }
                }
                Inst::End => {
                    if i == len {
                        stack.push(pc + 1)
                    }
                }
                _ => list.push(pc),
            }
        }
    }

    impl Regex {
        /// Compiles `pattern`, or says what is unsupported.
        pub fn new(pattern: &str) -> Result<Self, String> {
            let mut p = Parser {
                c: pattern.chars().collect(),
                i: 0,
            };
            let alts = p.alts(0)?;
            if p.i != p.c.len() {
                return Err(format!("unbalanced `)` at position {}", p.i));
            }
            let mut c = Compiler { prog: Vec::new() };
            c.alts(&alts)?;
            c.push(Inst::Match)?;
            Ok(Self { prog: c.prog })
        }

        /// Python `re.match`: a match starting at the beginning of `s`
        /// (it need not reach the end). Linear in `s` times the pattern size
        /// (a breadth-first NFA simulation, no backtracking).
        pub fn match_start(&self, s: &str) -> bool {
            let s: Vec<char> = s.chars().collect();
            let prog = &self.prog;
            let mut seen = vec![false; prog.len()];
            let mut cur = Vec::new();
            add(prog, &mut cur, &mut seen, 0, 0, s.len());
            for i in 0..=s.len() {
                if cur.iter().any(|&pc| matches!(prog[pc], Inst::Match)) {
                    return true;
                }
                let Some(&c) = s.get(i) else { break };
                seen.iter_mut().for_each(|x| *x = false);
                let mut next = Vec::new();
                for &pc in &cur {
                    let ok = match &prog[pc] {
                        Inst::Char(x) => *x == c,
                        Inst::Any => c != '\n',
                        Inst::Class(items, neg) => items.iter().any(|it| it.matches(c)) != *neg,
                        _ => false,
                    };
                    if ok {
                        add(prog, &mut next, &mut seen, pc + 1, i + 1, s.len());
                    }
                }
                if next.is_empty() {
                    return false;
                }
                cur = next;
            }
            false
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Regex;

        fn m(p: &str, s: &str) -> bool {
            Regex::new(p).unwrap().match_start(s)
        }

        #[test]
        fn python_match_semantics() {
            let name = "model.layers.18.mlp.gate_proj";
            assert!(m(r".*\.18\..*gate.*", name));
            assert!(!m(r".*\.1\..*", name));
            assert!(m("model.layers.18", name), "prefix match");
            assert!(!m("layers", name), "anchored at the start");
            assert!(m(r"model\.layers\.\d+\.mlp\.(gate|up)_proj$", name));
            assert!(!m(r"model\.layers\.\d+\.mlp\.(down|up)_proj$", name));
            assert!(m(r"model\.layers\.1[0-9]\.", name));
            assert!(!m(r"model\.layers\.[^1]", name));
            assert!(m(r"(?:model)\.layers\.\d{2}\.", name));
            assert!(!m(r"model\.layers\.\d{3}\.", name));
            assert!(m(r"^model\.layers\.(?P<n>\d+)\.mlp\.gate_proj\Z", name));
            assert!(m(r".*?proj$", name));
            assert!(m(r"(a*)*model", name), "empty repeats terminate");
            assert!(m(r"[\w.]+_proj", name));
            assert!(m("lm_head", "lm_head"));
            assert!(m("", name));
        }

        /// Patterns that made the old backtracking matcher take exponential
        /// time or overflow the stack now answer at once.
        #[test]
        fn pathological_patterns_are_fast_and_bounded() {
            let name = "model.layers.17.self_attn.q_proj.weight.extra.long.name";
            let t = std::time::Instant::now();
            assert!(!m(r"(.*)*z", name));
            assert!(!m(r"(a|a)*b", &"a".repeat(60)));
            assert!(!m(r"(.*.*)*=", name));
            assert!(m(r"(a?){4000}", "aaa"));
            assert!(m(r"(){100}model", name));
            assert!(m(r"(){4000000000}model", name));
            assert!(t.elapsed() < std::time::Duration::from_secs(2));
            // Counted repeats are expanded under a size cap.
            assert!(Regex::new(r"((a{1000}){1000}){1000}").is_err());
            assert!(Regex::new(r"(a?){4000000000}").is_err());
        }

        #[test]
        fn unsupported_syntax_is_refused() {
            for p in [
                r"(?=model)",
                r"(?i)model",
                r"(a)\1",
                r"*a",
                r"a**",
                r"(a",
                r"a)",
                r"[a",
                r"\b",
                r"a++",
            ] {
                assert!(Regex::new(p).is_err(), "{p}");
            }
            // `{` that is not a quantifier is a literal, as in Python.
            assert!(m(r"a{x", "a{x"));
        }
    }
}

// ============================================================================
// Tests
// ============================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::open_dir;
    use gptq_core::pack::{pack, round_to_f16};

    fn qlinear(
        seed: u64,
        bits: u32,
        gs: Option<usize>,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> QLinear {
        let mut s = seed | 1;
        let mut r = move |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        let groups = pack::num_groups(inp, gs);
        let mut g_idx = pack::default_g_idx(inp, gs);
        for i in (1..inp).rev() {
            g_idx.swap(i, r(i as u64 + 1) as usize); // act-order
        }
        QLinear {
            out_features: out,
            in_features: inp,
            bits,
            group_size: gs,
            codes: (0..out * inp).map(|_| r(1 << bits) as u8).collect(),
            scales: (0..groups * out)
                .map(|_| (r(1000) as f32 + 1.0) * 3.1e-4)
                .collect(),
            zeros: (0..groups * out).map(|_| r(1 << bits) as u8).collect(),
            g_idx,
            bias: bias.then(|| (0..out).map(|_| r(100) as f32 * 0.013 - 0.5).collect()),
        }
    }

    fn source_config() -> Value {
        serde_json::json!({"model_type": "llama", "hidden_size": 64, "torch_dtype": "bfloat16",
                           "architectures": ["LlamaForCausalLM"]})
    }

    #[test]
    fn sharded_checkpoint_round_trips_through_open_dir() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("q");
        let src_dir = root.path().join("src");
        fs::create_dir(&src_dir).unwrap();
        fs::write(src_dir.join("tokenizer.json"), "{}").unwrap();
        fs::write(src_dir.join("tokenizer_config.json"), "{}").unwrap();

        let mut qcfg = QuantizeConfig::new(4, Some(32));
        qcfg.desc_act = true;
        let a = qlinear(1, 4, Some(32), 64, 128, true);
        let b = qlinear(2, 4, Some(32), 128, 64, false);
        let pa = pack(&a, Format::V1).unwrap();
        let pb = pack(&b, Format::V1).unwrap();
        let norm: Vec<f32> = (0..64).map(|i| i as f32 * 0.25).collect();
        let mut tensors = packed_tensors("model.layers.0.self_attn.q_proj", &pa);
        tensors.extend(packed_tensors("model.layers.0.mlp.down_proj", &pb));
        tensors.push((
            "model.norm.weight".into(),
            TensorData::f16_from_f32(vec![64], &norm).unwrap(),
        ));
        // Small enough that the tensors need two shards.
        let total: u64 = tensors.iter().map(|(_, t)| t.bytes.len() as u64).sum();
        let max = total * 2 / 3;
        write_checkpoint(
            &out,
            false,
            &source_config(),
            &qcfg,
            tensors,
            &auxiliary_files(&src_dir),
            Some(max),
        )
        .unwrap();

        let index: Value =
            serde_json::from_slice(&fs::read(out.join("model.safetensors.index.json")).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], total);
        let files: HashSet<&str> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            files,
            HashSet::from([
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ])
        );
        assert!(!out.join("model.safetensors").exists());
        assert!(
            out.join("tokenizer.json").is_file() && out.join("tokenizer_config.json").is_file()
        );
        let leftovers: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Each shard is a valid safetensors file with format=pt metadata.
        let shard = crate::safetensors::SafetensorsFile::open(
            &out.join("model-00001-of-00002.safetensors"),
        )
        .unwrap();
        assert_eq!(
            shard.header().metadata.get("format").map(String::as_str),
            Some("pt")
        );

        let config: Value =
            serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["torch_dtype"], "float16");
        assert_eq!(config["model_type"], "llama");
        assert_eq!(config["quantization_config"]["bits"], 4);
        assert_eq!(config["quantization_config"]["group_size"], 32);
        assert_eq!(config["quantization_config"]["checkpoint_format"], "gptq");
        assert_eq!(
            config["quantization_config"]["meta"]["quantizer"][0],
            QUANTIZER
        );
        let qc_file: Value =
            serde_json::from_slice(&fs::read(out.join(QUANTIZE_CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(qc_file, config["quantization_config"]);

        let m = open_dir(&out).unwrap();
        let got_cfg = &quantize_config_for(&m)
            .unwrap()
            .expect("quantize config found");
        assert_eq!(got_cfg.bits, 4);
        assert!(got_cfg.desc_act);
        let ra = read_qlinear(
            m.weights.as_ref(),
            "model.layers.0.self_attn.q_proj",
            got_cfg,
        )
        .unwrap()
        .unwrap();
        let rb = read_qlinear(m.weights.as_ref(), "model.layers.0.mlp.down_proj", got_cfg)
            .unwrap()
            .unwrap();
        assert_eq!(ra, round_to_f16(&a));
        assert_eq!(rb, round_to_f16(&b));
        assert!(
            read_qlinear(m.weights.as_ref(), "model.layers.0.mlp.up_proj", got_cfg)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            m.weights.load_f32("model.norm.weight").unwrap().data(),
            &norm[..]
        );

        // An existing folder is refused without overwrite, replaced with it.
        let one = || {
            vec![(
                "x".to_string(),
                TensorData::f16_from_f32(vec![1], &[1.0]).unwrap(),
            )]
        };
        let e =
            write_checkpoint(&out, false, &source_config(), &qcfg, one(), &[], None).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        write_checkpoint(&out, true, &source_config(), &qcfg, one(), &[], None).unwrap();
        assert!(out.join("model.safetensors").is_file());
        assert!(!out.join("model.safetensors.index.json").exists());
    }

    fn dir_entries(p: &Path) -> Vec<String> {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn errors_leave_no_partial_folder() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("q");
        let qcfg = QuantizeConfig::new(4, Some(32));
        let good = || {
            (
                "a".to_string(),
                TensorData::f16_from_f32(vec![4], &[1.0; 4]).unwrap(),
            )
        };
        // A bad tensor after a full shard has been written.
        let bad = (
            "b".to_string(),
            TensorData {
                dtype: DType::F32,
                shape: vec![3],
                bytes: vec![0; 8],
            },
        );
        let e = write_checkpoint(
            &out,
            false,
            &source_config(),
            &qcfg,
            vec![good(), bad],
            &[],
            Some(4),
        );
        assert!(e.is_err());
        assert!(
            dir_entries(root.path()).is_empty(),
            "{:?}",
            dir_entries(root.path())
        );
        // A duplicate name.
        let e = write_checkpoint(
            &out,
            false,
            &source_config(),
            &qcfg,
            vec![good(), good()],
            &[],
            None,
        );
        assert!(e.unwrap_err().to_string().contains("twice"));
        assert!(dir_entries(root.path()).is_empty());
        // A writer dropped mid-way (e.g. the quantizer failed).
        {
            let mut w = CheckpointWriter::create(&out, false, Some(4)).unwrap();
            w.add("a", good().1).unwrap();
            w.add("c", good().1).unwrap();
            assert_eq!(w.shards_written(), 1);
        }
        assert!(dir_entries(root.path()).is_empty());
        // A missing extra file fails at finish, also cleanly.
        let e = write_checkpoint(
            &out,
            false,
            &source_config(),
            &qcfg,
            vec![good()],
            &[ExtraFile::Copy(root.path().join("nope.json"))],
            None,
        );
        assert!(e.is_err());
        assert!(dir_entries(root.path()).is_empty());
        // An extra file may not replace a checkpoint file.
        let e = write_checkpoint(
            &out,
            false,
            &source_config(),
            &qcfg,
            vec![good()],
            &[ExtraFile::Bytes {
                name: "config.json".into(),
                bytes: b"{}".to_vec(),
            }],
            None,
        );
        assert!(e.is_err());
        assert!(dir_entries(root.path()).is_empty());
    }

    #[test]
    fn quantize_config_reads_autogptq_gptqmodel_and_config_json() {
        // AutoGPTQ's quantize_config.json.
        let q = QuantizeConfig::from_json_str(
            r#"{"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": false,
                "static_groups": false, "sym": true, "true_sequential": true,
                "model_name_or_path": null, "model_file_base_name": "model",
                "quant_method": "gptq", "checkpoint_format": "gptq"}"#,
        )
        .unwrap();
        assert_eq!(
            (q.bits, q.group_size(), q.format().unwrap()),
            (4, Some(128), Format::V1)
        );
        assert_eq!(q.model_file_base_name.as_deref(), Some("model"));
        // GPTQModel's, with meta-only settings, unknown fields and dynamic rules.
        let text = r#"{"bits": 4, "group_size": -1, "desc_act": true, "sym": false,
            "lm_head": false, "quant_method": "gptq", "checkpoint_format": "gptq_v2",
            "pack_dtype": "int32", "future_field": [1, 2],
            "dynamic": {
                "-:.*\\.mlp\\.down_proj": {},
                "+:.*\\.18\\..*gate.*": {"bits": 8, "group_size": 64},
                ".*\\.1\\..*": {"bits": 2}
            },
            "meta": {"quantizer": ["gptqmodel:2.2.0"], "uri": "https://github.com/modelcloud/gptqmodel",
                     "damp_percent": 0.05, "static_groups": true, "true_sequential": false}}"#;
        let q = QuantizeConfig::from_json_str(text).unwrap();
        assert_eq!(q.group_size(), None);
        assert_eq!(q.format().unwrap(), Format::V2);
        assert_eq!(q.damp_percent, 0.05);
        assert!(q.static_groups && !q.true_sequential && q.desc_act && !q.sym);
        assert_eq!(q.extra["future_field"], serde_json::json!([1, 2]));
        let keys: Vec<&str> = q.dynamic.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![r"-:.*\.mlp\.down_proj", r"+:.*\.18\..*gate.*", r".*\.1\..*"]
        );
        assert_eq!(q.layer("model.layers.3.mlp.down_proj"), None);
        let base = q.layer("model.layers.3.mlp.up_proj").unwrap();
        assert_eq!((base.bits, base.group_size, base.sym), (4, None, false));
        let g = q.layer("model.layers.18.mlp.gate_proj").unwrap();
        assert_eq!((g.bits, g.group_size), (8, Some(64)));
        assert_eq!(q.layer("model.layers.1.self_attn.q_proj").unwrap().bits, 2);
        // First match wins: layer 18's down_proj is excluded by the first rule.
        assert_eq!(q.layer("model.layers.18.mlp.down_proj"), None);

        // Written and read back: same config, rule order kept.
        let again: QuantizeConfig = serde_json::from_str(&q.to_json_string()).unwrap();
        assert_eq!(again, q);
        let keys2: Vec<&str> = again.dynamic.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys2, keys);

        // From config.json in a folder, order kept; quantize_config.json as fallback.
        let d = tempfile::tempdir().unwrap();
        let cfg_text = format!(r#"{{"model_type": "llama", "quantization_config": {text}}}"#);
        fs::write(d.path().join("config.json"), &cfg_text).unwrap();
        let cfg: Value = serde_json::from_str(&cfg_text).unwrap();
        let got = quantize_config_of(d.path(), &cfg).unwrap().unwrap();
        assert_eq!(got, q);
        let plain = serde_json::json!({"model_type": "llama"});
        assert!(quantize_config_of(d.path(), &plain).unwrap().is_none());
        fs::write(
            d.path().join(QUANTIZE_CONFIG_FILE),
            r#"{"bits": 8, "group_size": 32}"#,
        )
        .unwrap();
        let got = quantize_config_of(d.path(), &plain).unwrap().unwrap();
        assert_eq!((got.bits, got.group_size(), got.sym), (8, Some(32), true));

        // Errors name the problem.
        for (text, want) in [
            (r#"{"bits": 5}"#, "bits 5"),
            (r#"{"group_size": 128}"#, "missing `bits`"),
            (r#"{"bits": 4, "group_size": 0}"#, "group_size 0"),
            (r#"{"bits": 4, "quant_method": "awq"}"#, "awq"),
            (r#"{"bits": 4, "checkpoint_format": "marlin"}"#, "marlin"),
            (r#"{"bits": 4, "is_marlin_format": true}"#, "marlin"),
            (r#"{"bits": 4, "pack_dtype": "int64"}"#, "int64"),
            (r#"{"bits": 4, "dynamic": {"(?=x)": {}}}"#, "not supported"),
            (r#"{"bits": 4, "dynamic": {"x": {"bits": 6}}}"#, "bits 6"),
            (r#"{"bits": "4"}"#, "`bits`"),
        ] {
            let e = QuantizeConfig::from_json_str(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let awq = serde_json::json!({"quantization_config": {"quant_method": "awq", "bits": 4}});
        let none = tempfile::tempdir().unwrap();
        assert!(quantize_config_of(none.path(), &awq).unwrap().is_none());
        let bad = serde_json::json!({"quantization_config": {"quant_method": "gptq", "bits": 6}});
        let e = quantize_config_of(none.path(), &bad).unwrap_err();
        assert!(e.to_string().contains("quantization_config: bits 6"), "{e}");
    }

    /// A source of raw tensors for reader tests.
    struct Mem(BTreeMap<String, RawTensor>);

    impl WeightSource for Mem {
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.get(name).map(|t| t.shape.clone())
        }
        fn load_f32(&self, name: &str) -> Result<Tensor> {
            let t = self.load_raw(name)?;
            Ok(Tensor::new(t.shape, t.dtype.to_f32(&t.bytes)?)?)
        }
        fn load_raw(&self, name: &str) -> Result<RawTensor> {
            self.0
                .get(name)
                .cloned()
                .ok_or_else(|| Error::MissingTensor {
                    name: name.to_string(),
                })
        }
    }

    fn mem_of(prefix: &str, p: &Packed) -> Mem {
        Mem(packed_tensors(prefix, p)
            .into_iter()
            .map(|(n, t)| {
                (
                    n,
                    RawTensor {
                        dtype: t.dtype,
                        shape: t.shape,
                        bytes: t.bytes,
                    },
                )
            })
            .collect())
    }

    #[test]
    fn reader_validates_dtypes_and_shapes() {
        let qcfg = QuantizeConfig::new(3, Some(32));
        let q = qlinear(5, 3, Some(32), 32, 64, true);
        let p = pack(&q, Format::V1).unwrap();
        let l = "l";
        let ok = mem_of(l, &p);
        assert_eq!(
            read_qlinear(&ok, l, &qcfg).unwrap().unwrap(),
            round_to_f16(&q)
        );

        // v2 config reading a v1 checkpoint gives different zero points.
        let mut v2 = qcfg.clone();
        v2.checkpoint_format = "gptq_v2".into();
        let z = read_qlinear(&ok, l, &v2).unwrap().unwrap().zeros;
        assert_ne!(z, q.zeros);

        // Wrong group size in the config.
        let e = read_qlinear(&ok, l, &QuantizeConfig::new(3, Some(64))).unwrap_err();
        assert!(e.to_string().contains("groups"), "{e}");
        // Wrong bits in the config.
        assert!(read_qlinear(&ok, l, &QuantizeConfig::new(4, Some(32))).is_err());

        let mutate = |f: &dyn Fn(&mut Mem)| {
            let mut m = mem_of(l, &p);
            f(&mut m);
            read_qlinear(&m, l, &qcfg).unwrap_err().to_string()
        };
        let e = mutate(&|m| m.0.get_mut("l.qweight").unwrap().dtype = DType::F32);
        assert!(e.contains("I32"), "{e}");
        let e = mutate(&|m| m.0.get_mut("l.scales").unwrap().dtype = DType::I32);
        assert!(e.contains("F16"), "{e}");
        let e = mutate(&|m| {
            let t = m.0.get_mut("l.scales").unwrap();
            t.shape = vec![1, 64 * 32];
        });
        assert!(e.contains("groups") || e.contains("scales"), "{e}");
        let e = mutate(&|m| {
            let t = m.0.get_mut("l.g_idx").unwrap();
            t.bytes[..4].copy_from_slice(&7i32.to_le_bytes());
        });
        assert!(e.contains("g_idx"), "{e}");
        let e = mutate(&|m| {
            m.0.get_mut("l.bias").unwrap().shape = vec![16, 2];
        });
        assert!(e.contains("bias"), "{e}");
        let e = mutate(&|m| {
            m.0.get_mut("l.qzeros").unwrap().shape = vec![2, 3, 1];
        });
        assert!(e.contains("I32"), "{e}");

        // No g_idx: column order. Scales may be F32 (read without f16 rounding).
        let mut m = mem_of(l, &p);
        m.0.remove("l.g_idx");
        let q2 = read_qlinear(&m, l, &qcfg).unwrap().unwrap();
        assert_eq!(q2.g_idx, pack::default_g_idx(64, Some(32)));
        let mut m = mem_of(l, &p);
        let s32: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        m.0.insert(
            "l.scales".into(),
            RawTensor {
                dtype: DType::F32,
                shape: vec![2, 32],
                bytes: s32,
            },
        );
        assert_eq!(
            read_qlinear(&m, l, &qcfg).unwrap().unwrap().scales,
            q.scales
        );

        // Excluded by a dynamic rule but present: refused.
        let mut ex = qcfg.clone();
        ex.dynamic
            .push(DynamicRule::new("-:l", Map::new()).unwrap());
        assert!(read_qlinear(&ok, l, &ex)
            .unwrap_err()
            .to_string()
            .contains("excludes"));
    }
}
