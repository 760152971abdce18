//! Named, shape-checked weight loading under a prefix (the role of candle's
//! `VarBuilder::pp`).

use crate::{Error, Result};
use gptq_core::Tensor;
use gptq_io::gptq::QuantizeConfig;
use gptq_io::WeightSource;

/// A view of a checkpoint under a name prefix, with the GPTQ quantize config
/// of a quantized checkpoint.
#[derive(Clone)]
pub struct Weights<'a> {
    src: &'a dyn WeightSource,
    quant: Option<std::sync::Arc<QuantizeConfig>>,
}

impl<'a> Weights<'a> {
    /// Wraps the source of an unquantized checkpoint.
    pub fn new(src: &'a dyn WeightSource) -> Self {
        Self { src, quant: None }
    }

    /// Wraps the source of a GPTQ checkpoint quantized with `qcfg`.
    pub fn with_quant(src: &'a dyn WeightSource, qcfg: QuantizeConfig) -> Self {
        Self {
            src,
            quant: Some(std::sync::Arc::new(qcfg)),
        }
    }

    /// Wraps the source of `files`, with their GPTQ quantize config if they
    /// hold a quantized checkpoint.
    pub fn for_files(files: &'a gptq_io::ModelFiles) -> Result<Self> {
        Ok(match gptq_io::gptq::quantize_config_for(files)? {
            Some(q) => Self::with_quant(files.weights.as_ref(), q),
            None => Self::new(files.weights.as_ref()),
        })
    }

    /// The underlying source.
    pub fn source(&self) -> &'a dyn WeightSource {
        self.src
    }

    /// The quantize config, for a GPTQ checkpoint.
    pub fn quant(&self) -> Option<&QuantizeConfig> {
        self.quant.as_deref()
    }

    /// True when `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(name)
    }

    /// Loads `name` and checks its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.check_shape(name, shape)?;
        let t = self.src.load_f32(name)?;
        if let Some(i) = t.data().iter().position(|x| !x.is_finite()) {
            return Err(Error::Input(format!(
                "tensor `{name}` holds a non-finite value at index {i}"
            )));
        }
        Ok(t)
    }

    /// Checks that `name` exists with shape `shape`, without reading it.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        let got = self
            .src
            .shape(name)
            .ok_or_else(|| gptq_io::Error::MissingTensor {
                name: name.to_string(),
            })?;
        if got != shape {
            return Err(Error::Shape {
                name: name.to_string(),
                got,
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// Loads `name` if present.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
