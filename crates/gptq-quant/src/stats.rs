//! Calibration statistics of one layer input, accumulated where the solver
//! runs: the Hessian `H` and, with asymmetric calibration, the cross term
//! `C` (see [`crate::asym`]). [`HostStats`] keeps them in host memory; a GPU
//! backend keeps them on its device and hands the finished matrices back.

use crate::asym::CrossTerm;
use crate::hessian::Hessian;
use crate::Result;

/// `H` (and `C`) of one layer input, fed one calibration sample at a time.
pub trait LayerStats: Send {
    /// One sample of `tokens` tokens: the quantized model's inputs `x_q`
    /// and, when the cross term is kept, the full-precision model's `x_fp`
    /// (both `[tokens, in]` row-major). Same scaling as
    /// [`Hessian::add_batch`] and [`CrossTerm::add_batch`].
    fn add(&mut self, x_q: &[f32], x_fp: Option<&[f32]>, tokens: usize) -> Result<()>;
    /// The finished `H` and `C` (when kept).
    fn finish(self: Box<Self>) -> Result<(Hessian, Option<CrossTerm>)>;
}

/// [`LayerStats`] in host memory (the CPU backend's).
#[derive(Debug, Clone)]
pub struct HostStats {
    h: Hessian,
    c: Option<CrossTerm>,
}

impl HostStats {
    /// Empty statistics of `columns` inputs, with the cross term when `cross`.
    pub fn new(columns: usize, cross: bool) -> Self {
        HostStats {
            h: Hessian::new(columns),
            c: cross.then(|| CrossTerm::new(columns)),
        }
    }
}

impl LayerStats for HostStats {
    fn add(&mut self, x_q: &[f32], x_fp: Option<&[f32]>, tokens: usize) -> Result<()> {
        self.h.add_batch(x_q, tokens)?;
        if let Some(c) = self.c.as_mut() {
            let x_fp = x_fp.ok_or_else(|| {
                crate::Error::InvalidParams("the cross term needs the full-precision inputs".into())
            })?;
            c.add_batch(x_fp, x_q, tokens)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(Hessian, Option<CrossTerm>)> {
        Ok((self.h, self.c))
    }
}
