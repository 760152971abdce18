//! The kernels in `kernels/w4.cu` and the fused int4 variants the
//! dispatcher chooses from.

/// One instantiation of the fused int4 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct W4Variant {
    /// n8 tiles of batch rows per block (a block covers `8·mt` rows).
    pub mt: u32,
    /// 16-row tiles of output features per warp.
    pub rt: u32,
    /// Warps side by side on different row tiles.
    pub rw: u32,
    /// Warps per block (`kw / rw` of them splitting K).
    pub kw: u32,
    /// Stages of each warp's cp.async ring.
    pub st: u32,
    /// Zero point and scale applied per 64-column chunk in f32 (groups of
    /// 64 or more only; see `w4.cu`).
    pub fold: bool,
}

impl W4Variant {
    pub const fn new(mt: u32, rt: u32, rw: u32, kw: u32, st: u32) -> Self {
        W4Variant {
            mt,
            rt,
            rw,
            kw,
            st,
            fold: false,
        }
    }

    /// The same variant with the zero point folded out of the inner loop.
    pub const fn folded(self) -> Self {
        W4Variant { fold: true, ..self }
    }

    /// The kernel's symbol.
    pub fn symbol(&self) -> String {
        format!(
            "w4_mma_m{}_r{}_w{}_k{}_s{}{}",
            self.mt,
            self.rt,
            self.rw,
            self.kw,
            self.st,
            if self.fold { "_f" } else { "" }
        )
    }

    /// 16-row tiles one block covers.
    pub fn tiles(&self) -> usize {
        (self.rt * self.rw) as usize
    }

    /// Batch rows one block covers.
    pub fn rows(&self) -> usize {
        8 * self.mt as usize
    }

    /// Dynamic shared memory, bytes: the warps' cp.async rings (768 bytes
    /// per stage and row tile), reused for the cross-warp reduction.
    pub fn shared_bytes(&self) -> u32 {
        let rings = self.kw * self.st * self.rt * 768;
        let reduce = if self.kw > self.rw {
            self.kw * self.rt * self.mt * 4 * 32 * 4
        } else {
            0
        };
        rings.max(reduce)
    }
}

/// Every fused variant compiled into the module (same list as `w4.cu`).
pub const W4_VARIANTS: &[W4Variant] = &[
    W4Variant::new(1, 1, 1, 4, 8),
    W4Variant::new(1, 1, 1, 4, 8).folded(),
    W4Variant::new(1, 1, 1, 8, 6),
    W4Variant::new(1, 1, 1, 8, 6).folded(),
    W4Variant::new(1, 1, 1, 8, 8),
    W4Variant::new(1, 1, 1, 8, 8).folded(),
    W4Variant::new(1, 1, 1, 16, 4),
    W4Variant::new(1, 1, 1, 16, 4).folded(),
    W4Variant::new(1, 2, 1, 8, 4),
    W4Variant::new(1, 2, 1, 8, 4).folded(),
    W4Variant::new(1, 1, 2, 8, 6),
    W4Variant::new(1, 1, 2, 8, 6).folded(),
    W4Variant::new(1, 1, 4, 8, 6),
    W4Variant::new(1, 1, 4, 8, 6).folded(),
    W4Variant::new(2, 1, 1, 8, 6),
    W4Variant::new(2, 1, 1, 8, 6).folded(),
    W4Variant::new(2, 1, 2, 8, 6),
    W4Variant::new(2, 1, 2, 8, 6).folded(),
    W4Variant::new(2, 2, 1, 8, 4),
    W4Variant::new(2, 2, 1, 8, 4).folded(),
    W4Variant::new(2, 2, 2, 8, 4),
    W4Variant::new(2, 2, 2, 8, 4).folded(),
    W4Variant::new(4, 1, 1, 8, 4),
    W4Variant::new(4, 1, 1, 8, 4).folded(),
    W4Variant::new(4, 1, 2, 8, 4),
    W4Variant::new(4, 1, 2, 8, 4).folded(),
    W4Variant::new(4, 2, 2, 8, 4),
    W4Variant::new(4, 2, 2, 8, 4).folded(),
    W4Variant::new(4, 2, 4, 8, 4),
    W4Variant::new(4, 2, 4, 8, 4).folded(),
    W4Variant::new(8, 1, 2, 8, 4),
    W4Variant::new(8, 1, 2, 8, 4).folded(),
    W4Variant::new(8, 1, 4, 8, 4),
    W4Variant::new(8, 1, 4, 8, 4).folded(),
    W4Variant::new(8, 2, 2, 8, 3),
    W4Variant::new(8, 2, 2, 8, 3).folded(),
    W4Variant::new(8, 2, 4, 4, 4),
    W4Variant::new(8, 2, 4, 4, 4).folded(),
    W4Variant::new(8, 2, 4, 8, 3),
    W4Variant::new(8, 2, 4, 8, 3).folded(),
];

/// The other kernels of the module.
pub const GATHER: &str = "gather_cols";
pub const ADD_BIAS: &str = "add_bias";
pub const FILL_U16: &str = "fill_u16";

/// `dequant_b{bits}`.
pub fn dequant_symbol(bits: u32) -> String {
    format!("dequant_b{bits}")
}

/// Every `extern "C"` kernel in `w4.cu` (checked by the NVRTC test).
pub const ALL_FUNCTIONS: &[&str] = &[
    "w4_mma_m1_r1_w1_k4_s8",
    "w4_mma_m1_r1_w1_k4_s8_f",
    "w4_mma_m1_r1_w1_k8_s6",
    "w4_mma_m1_r1_w1_k8_s6_f",
    "w4_mma_m1_r1_w1_k8_s8",
    "w4_mma_m1_r1_w1_k8_s8_f",
    "w4_mma_m1_r1_w1_k16_s4",
    "w4_mma_m1_r1_w1_k16_s4_f",
    "w4_mma_m1_r2_w1_k8_s4",
    "w4_mma_m1_r2_w1_k8_s4_f",
    "w4_mma_m1_r1_w2_k8_s6",
    "w4_mma_m1_r1_w2_k8_s6_f",
    "w4_mma_m1_r1_w4_k8_s6",
    "w4_mma_m1_r1_w4_k8_s6_f",
    "w4_mma_m2_r1_w1_k8_s6",
    "w4_mma_m2_r1_w1_k8_s6_f",
    "w4_mma_m2_r1_w2_k8_s6",
    "w4_mma_m2_r1_w2_k8_s6_f",
    "w4_mma_m2_r2_w1_k8_s4",
    "w4_mma_m2_r2_w1_k8_s4_f",
    "w4_mma_m2_r2_w2_k8_s4",
    "w4_mma_m2_r2_w2_k8_s4_f",
    "w4_mma_m4_r1_w1_k8_s4",
    "w4_mma_m4_r1_w1_k8_s4_f",
    "w4_mma_m4_r1_w2_k8_s4",
    "w4_mma_m4_r1_w2_k8_s4_f",
    "w4_mma_m4_r2_w2_k8_s4",
    "w4_mma_m4_r2_w2_k8_s4_f",
    "w4_mma_m4_r2_w4_k8_s4",
    "w4_mma_m4_r2_w4_k8_s4_f",
    "w4_mma_m8_r1_w2_k8_s4",
    "w4_mma_m8_r1_w2_k8_s4_f",
    "w4_mma_m8_r1_w4_k8_s4",
    "w4_mma_m8_r1_w4_k8_s4_f",
    "w4_mma_m8_r2_w2_k8_s3",
    "w4_mma_m8_r2_w2_k8_s3_f",
    "w4_mma_m8_r2_w4_k4_s4",
    "w4_mma_m8_r2_w4_k4_s4_f",
    "w4_mma_m8_r2_w4_k8_s3",
    "w4_mma_m8_r2_w4_k8_s3_f",
    "gather_cols",
    "add_bias",
    "fill_u16",
    "dequant_b2",
    "dequant_b3",
    "dequant_b4",
    "dequant_b8",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_list_matches_function_list() {
        for v in W4_VARIANTS {
            assert!(ALL_FUNCTIONS.contains(&v.symbol().as_str()), "{v:?}");
            assert!(v.shared_bytes() <= 100 * 1024, "{v:?}");
            assert!(v.kw.is_multiple_of(v.rw), "{v:?}");
            assert!(crate::layout::TILE_PAD.is_multiple_of(v.tiles()), "{v:?}");
        }
        for b in [2, 3, 4, 8] {
            assert!(ALL_FUNCTIONS.contains(&dequant_symbol(b).as_str()));
        }
        let src = crate::compile::W4_SOURCE;
        for f in ALL_FUNCTIONS {
            let found = src.contains(&format!("void {f}("))
                || f.strip_prefix("w4_mma_").is_some_and(|rest| {
                    let p: Vec<&str> = rest.split('_').collect();
                    src.contains(&format!(
                        "W4_KERNEL({}, {}, {}, {}, {})",
                        &p[0][1..],
                        &p[1][1..],
                        &p[2][1..],
                        &p[3][1..],
                        &p[4][1..]
                    ))
                })
                || f.strip_prefix("dequant_b")
                    .is_some_and(|b| src.contains(&format!("DEQUANT_KERNEL({b})")));
            assert!(found, "{f} is not defined in w4.cu");
        }
    }
}
