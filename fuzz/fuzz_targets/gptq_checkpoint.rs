//! The GPTQ layer reader (`read_qlinear`) over a safetensors file whose
//! tensors (`qweight`, `qzeros`, `scales`, `g_idx`, `bias`) have arbitrary
//! dtypes, shapes — absurd ones included, with empty data — and contents,
//! under an arbitrary bits / group size / format / `dynamic` config.
#![no_main]

use arbitrary::Arbitrary;
use gptq_core::DType;
use gptq_io::gptq::{read_qlinear, QuantizeConfig};
use gptq_io::safetensors::{serialize, SafetensorsSource, TensorOut};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Debug, Arbitrary)]
struct Part {
    present: bool,
    dtype: u8,
    /// Dims: small ones mostly, any u64 sometimes.
    dims: Vec<Dim>,
    fill: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Dim {
    Small(u8),
    Any(u64),
}

#[derive(Debug, Arbitrary)]
struct Input {
    bits: u8,
    group: i16,
    v2: bool,
    desc_act: bool,
    dynamic: Option<(String, u8, i16)>,
    parts: [Part; 5],
}

const DTYPES: &[DType] = &[
    DType::I32,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::I64,
    DType::I8,
    DType::U8,
    DType::F64,
];
const NAMES: [&str; 5] = ["qweight", "qzeros", "scales", "g_idx", "bias"];
const PREFIX: &str = "model.layers.0.mlp.up_proj";

fuzz_target!(|inp: Input| {
    let mut qc = serde_json::json!({
        "bits": inp.bits % 10,
        "group_size": inp.group,
        "desc_act": inp.desc_act,
        "checkpoint_format": if inp.v2 { "gptq_v2" } else { "gptq" },
    });
    if let Some((pat, bits, group)) = &inp.dynamic {
        qc["dynamic"] =
            serde_json::json!({ pat.as_str(): {"bits": bits % 10, "group_size": group} });
    }
    let Ok(qcfg) = QuantizeConfig::from_value(&qc) else {
        return;
    };
    let mut tensors = Vec::new();
    for (part, name) in inp.parts.iter().zip(NAMES) {
        if !part.present && name != "qweight" {
            continue;
        }
        let dtype = DTYPES[part.dtype as usize % DTYPES.len()];
        let shape: Vec<usize> = part
            .dims
            .iter()
            .take(4)
            .map(|d| match *d {
                Dim::Small(x) => x as usize,
                Dim::Any(x) => x as usize,
            })
            .collect();
        let Some(nbytes) = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 20)
        else {
            return;
        };
        let bytes: Vec<u8> = (0..nbytes)
            .map(|i| {
                part.fill
                    .get(i % part.fill.len().max(1))
                    .copied()
                    .unwrap_or(0)
                    ^ (i as u8)
            })
            .collect();
        tensors.push(TensorOut {
            name: format!("{PREFIX}.{name}"),
            dtype,
            shape,
            bytes: bytes.into(),
        });
    }
    let file = serialize(&tensors, &BTreeMap::new());
    let p = gptq_fuzz::scratch_file("q.safetensors", &file);
    let src = SafetensorsSource::open(&[p]).expect("serialized files parse");
    if let Ok(Some(q)) = read_qlinear(&src, PREFIX, &qcfg) {
        q.validate().expect("read layers are valid");
        let _ = q.dequantize();
    }
});
