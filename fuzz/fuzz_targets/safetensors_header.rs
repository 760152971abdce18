//! The safetensors header parser over arbitrary file contents, then every
//! accepted tensor read through the mmap reader and converted to f32.
#![no_main]

use gptq_io::safetensors::{parse_header, SafetensorsSource};
use gptq_io::WeightSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_header(data) else { return };
    let mut spans = Vec::new();
    for e in h.tensors.values() {
        assert!(e.begin <= e.end && h.data_start + e.end <= data.len());
        let numel: usize = e.shape.iter().product();
        assert_eq!(numel * e.dtype.size(), e.end - e.begin);
        if e.end > e.begin {
            spans.push((e.begin, e.end));
        }
    }
    spans.sort();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlap accepted"
    );
    let p = gptq_fuzz::scratch_file("h.safetensors", data);
    let src = SafetensorsSource::open(&[p]).expect("parse_header accepted it");
    for name in src.names() {
        let raw = src.load_raw(&name).expect("listed tensor");
        assert_eq!(raw.shape, src.shape(&name).expect("shape"));
        if let Ok(t) = src.load_f32(&name) {
            assert_eq!(t.data().len(), raw.shape.iter().product::<usize>());
        }
    }
});
