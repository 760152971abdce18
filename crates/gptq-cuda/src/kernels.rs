//! The kernels in `kernels/w4.cu` and the fused int4 variants the
//! dispatcher chooses from.

/// The activation (and output) type of an int4 product: f16, or bf16 (the
/// kernels with the `_bf` suffix). Weights, scales and biases are stored
/// the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    #[default]
    F16,
    Bf16,
}

impl Dtype {
    /// The suffix of this type's kernel symbols.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F16 => "",
            Dtype::Bf16 => "_bf",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// The fused variants compiled for this type.
    pub fn w4_variants(self) -> &'static [W4Variant] {
        match self {
            Dtype::F16 => W4_VARIANTS,
            Dtype::Bf16 => W4_BF16_VARIANTS,
        }
    }
}

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
    /// The activations go through a shared-memory ring per K split, copied
    /// once for its `rw` warps (symbol suffix `_x`).
    pub sx: bool,
    /// Scales applied in f32 per chunk (symbol suffix `_s`): fewer
    /// instructions per code, for layers whose groups hold whole 64-column
    /// chunks ([`crate::layout::whole_chunk_groups`]).
    pub fs: bool,
}

impl W4Variant {
    pub const fn new(mt: u32, rt: u32, rw: u32, kw: u32, st: u32) -> Self {
        W4Variant {
            mt,
            rt,
            rw,
            kw,
            st,
            sx: false,
            fs: false,
        }
    }

    /// The same with the scales applied in f32 per chunk.
    pub const fn fs(self) -> Self {
        W4Variant { fs: true, ..self }
    }

    /// The same with the scales in the f16/bf16 dequantization (any group
    /// size).
    pub const fn without_fs(self) -> Self {
        W4Variant { fs: false, ..self }
    }

    /// The same with the activations staged in shared memory.
    pub const fn x(mt: u32, rt: u32, rw: u32, kw: u32, st: u32) -> Self {
        W4Variant {
            sx: true,
            ..W4Variant::new(mt, rt, rw, kw, st)
        }
    }

    /// The kernel's symbol (f16).
    pub fn symbol(&self) -> String {
        format!(
            "w4_mma_m{}_r{}_w{}_k{}_s{}{}{}",
            self.mt,
            self.rt,
            self.rw,
            self.kw,
            self.st,
            if self.sx { "_x" } else { "" },
            if self.fs { "_s" } else { "" }
        )
    }

    /// The kernel's symbol for activations of type `dt`.
    pub fn symbol_as(&self, dt: Dtype) -> String {
        self.symbol() + dt.suffix()
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
    /// per stage and row tile; with `sx` also 1024 bytes per stage and n8
    /// tile for each of the `kw / rw` K splits), reused for the cross-warp
    /// reduction.
    pub fn shared_bytes(&self) -> u32 {
        let mut rings = self.kw * self.st * self.rt * 768;
        if self.sx {
            rings += self.kw / self.rw * self.st * self.mt * 1024;
        }
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
    W4Variant::new(1, 1, 1, 8, 6),
    W4Variant::new(1, 1, 1, 8, 8),
    W4Variant::new(1, 1, 1, 16, 4),
    W4Variant::new(1, 2, 1, 8, 4),
    W4Variant::new(1, 1, 2, 8, 6),
    W4Variant::new(1, 1, 4, 8, 6),
    W4Variant::new(2, 1, 1, 8, 6),
    W4Variant::new(2, 1, 2, 8, 6),
    W4Variant::new(2, 2, 1, 8, 4),
    W4Variant::new(2, 2, 2, 8, 4),
    W4Variant::new(4, 1, 1, 8, 4),
    W4Variant::new(4, 1, 2, 8, 4),
    W4Variant::new(4, 2, 2, 8, 4),
    W4Variant::new(4, 2, 4, 8, 4),
    W4Variant::new(8, 1, 2, 8, 4),
    W4Variant::new(8, 1, 4, 8, 4),
    W4Variant::new(8, 2, 2, 8, 3),
    W4Variant::new(8, 2, 4, 4, 4),
    W4Variant::new(8, 2, 4, 8, 3),
    W4Variant::new(2, 4, 1, 8, 4),
    W4Variant::x(2, 2, 4, 8, 4),
    W4Variant::x(2, 2, 4, 16, 3),
    W4Variant::x(2, 1, 4, 8, 6),
    W4Variant::x(2, 2, 2, 8, 4),
    W4Variant::x(2, 1, 2, 8, 6),
    W4Variant::x(2, 4, 2, 8, 3),
    W4Variant::x(4, 2, 4, 8, 4),
    W4Variant::x(4, 1, 4, 8, 4),
    W4Variant::x(8, 2, 4, 8, 3),
    W4Variant::x(8, 1, 4, 8, 4),
    W4Variant::new(1, 1, 1, 16, 4).fs(),
    W4Variant::new(1, 2, 1, 8, 4).fs(),
    W4Variant::new(2, 2, 1, 8, 4).fs(),
    W4Variant::x(2, 2, 2, 8, 4).fs(),
    W4Variant::x(4, 2, 4, 8, 4).fs(),
    W4Variant::new(1, 4, 1, 8, 4),
    W4Variant::new(1, 4, 1, 8, 4).fs(),
];

/// The fused variants compiled for bf16 activations (`W4_KERNEL_BF` in
/// `w4.cu`): the ones [`crate::device::pick_variant`] picks.
pub const W4_BF16_VARIANTS: &[W4Variant] = &[
    W4Variant::new(1, 1, 1, 16, 4),
    W4Variant::new(1, 2, 1, 8, 4),
    W4Variant::new(2, 2, 1, 8, 4),
    W4Variant::new(4, 2, 2, 8, 4),
    W4Variant::new(8, 2, 2, 8, 3),
    W4Variant::new(8, 2, 4, 8, 3),
    W4Variant::x(2, 2, 2, 8, 4),
    W4Variant::x(2, 1, 2, 8, 6),
    W4Variant::x(4, 2, 4, 8, 4),
    W4Variant::new(1, 1, 1, 16, 4).fs(),
    W4Variant::new(2, 2, 1, 8, 4).fs(),
    W4Variant::x(2, 2, 2, 8, 4).fs(),
    W4Variant::new(1, 2, 1, 8, 4).fs(),
    W4Variant::new(1, 4, 1, 8, 4),
    W4Variant::new(1, 4, 1, 8, 4).fs(),
];

/// One instantiation of the tensor-core (wgmma, sm_90a) int4 GEMM for
/// larger batches (`w4_wg_*` in `w4.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgVariant {
    /// Batch rows per block (the wgmma N: 64, 128 or 256).
    pub bm: u32,
    /// Warpgroups per block, splitting K (same rows).
    pub ks: u32,
    /// Groups of 64 output rows (4 row tiles, one per warp) per warpgroup.
    pub rt: u32,
    /// Stages of the cp.async ring (activations and codes).
    pub st: u32,
    /// Pipelined inside each chunk (`_p`): each k tile's wgmma group is
    /// issued as soon as it is dequantized and the next k tile dequantized
    /// while it runs, one wait per chunk (else the whole chunk is
    /// dequantized first, then its wgmmas issued and waited for).
    pub pipe: bool,
    /// Blocks splitting K per output tile (grid z; the same kernel): their
    /// sums meet in a workspace, the last block of a tile stores them.
    pub sk: u32,
    /// Row groups (`_g`): warpgroups side by side on different weight rows
    /// of a block, sharing each K split's activation stages (the
    /// activations cross L2 once per `64·rt·rg` weight rows).
    pub rg: u32,
}

impl WgVariant {
    pub const fn new(bm: u32, ks: u32, rt: u32, st: u32) -> Self {
        WgVariant {
            bm,
            ks,
            rt,
            st,
            pipe: false,
            sk: 1,
            rg: 1,
        }
    }

    /// The same kernel shape with `rg` row groups per block.
    pub const fn grouped(self, rg: u32) -> Self {
        WgVariant { rg, ..self }
    }

    /// The same kernel with K split over `sk` blocks per output tile.
    pub const fn split(self, sk: u32) -> Self {
        WgVariant { sk, ..self }
    }

    /// The variant's name in benchmarks and logs: the kernel's symbol, and
    /// the number of blocks splitting K after its `_z`.
    pub fn label(&self) -> String {
        if self.sk > 1 {
            format!("{}{}", self.symbol(), self.sk)
        } else {
            self.symbol()
        }
    }

    /// The same variant, pipelined.
    pub const fn pipelined(self) -> Self {
        WgVariant { pipe: true, ..self }
    }

    /// The kernel's symbol (f16).
    pub fn symbol(&self) -> String {
        let p = if self.pipe { "_p" } else { "" };
        // K split across blocks: the `_z` kernel (the plain one would
        // ignore grid z and compute every block's whole K).
        let z = if self.sk > 1 { "_z" } else { "" };
        let g = if self.rg > 1 {
            format!("_g{}", self.rg)
        } else {
            String::new()
        };
        format!(
            "w4_wg_b{}_k{}_r{}_s{}{g}{p}{z}",
            self.bm, self.ks, self.rt, self.st
        )
    }

    /// The kernel's symbol for activations of type `dt` (every wgmma
    /// variant is compiled for both).
    pub fn symbol_as(&self, dt: Dtype) -> String {
        self.symbol() + dt.suffix()
    }

    /// 16-row tiles one block covers.
    pub fn tiles(&self) -> usize {
        (4 * self.rt * self.rg) as usize
    }

    /// Batch rows one block covers.
    pub fn rows(&self) -> usize {
        self.bm as usize
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        128 * self.ks * self.rg
    }

    /// Dynamic shared memory, bytes (the layout `w4.cu`'s `wg_xring_bytes`
    /// and `wg_wring_bytes` describe): each K split's activation ring (per
    /// stage `bm` rows × 64 columns f16), each warpgroup's ring of codes and
    /// scales (768 bytes per row tile and stage) and the activation stages'
    /// mbarriers, reused for the sums of K splits 1.. at the end.
    pub fn shared_bytes(&self) -> u32 {
        let xrings = self.ks * self.st * self.bm * 128;
        let wrings = self.ks * self.rg * 4 * self.st * self.rt * 768;
        let barriers = self.ks * self.st * 8;
        let reduce = (self.ks - 1) * self.rg * self.rt * (self.bm / 2) * 128 * 4;
        // One word per row group for the split-K flag (w4.cu's
        // wg_flags_offset), 16 bytes.
        (xrings + wrings + barriers).max(reduce) + 16
    }

    /// The `lbo_sbo` argument: the fixed descriptor fields of the kernel's
    /// shared-memory layout (K-major, 128-byte swizzle): leading offset 1
    /// (unused by that layout), stride 1024 bytes between 8-row groups (in
    /// units of 16 bytes, bits 32–45), swizzle mode 1 (bits 62–63).
    pub fn lbo_sbo(&self) -> u64 {
        let lbo = 1u64;
        let sbo = 1024u64 >> 4;
        (lbo << 16) | (sbo << 32) | (1u64 << 62)
    }
}

/// Every wgmma variant compiled into the module (same list as `w4.cu`).
pub const WG_VARIANTS: &[WgVariant] = &[
    WgVariant::new(64, 2, 2, 4),
    WgVariant::new(64, 4, 2, 3),
    WgVariant::new(64, 2, 4, 4),
    WgVariant::new(128, 2, 2, 4),
    WgVariant::new(128, 3, 1, 3),
    WgVariant::new(64, 4, 1, 4),
    WgVariant::new(128, 2, 2, 4).pipelined(),
    WgVariant::new(256, 2, 1, 3),
    WgVariant::new(256, 2, 1, 2),
    WgVariant::new(256, 1, 1, 3),
    WgVariant::new(64, 4, 1, 4).split(2),
    WgVariant::new(64, 4, 1, 4).split(4),
    WgVariant::new(64, 4, 2, 3).split(2),
    WgVariant::new(64, 4, 2, 3).split(4),
    WgVariant::new(64, 2, 4, 4).split(4),
    WgVariant::new(64, 2, 4, 4).split(8),
    WgVariant::new(128, 3, 1, 3).split(2),
    WgVariant::new(128, 1, 1, 4).grouped(2),
    WgVariant::new(128, 2, 1, 3).grouped(2),
    WgVariant::new(128, 2, 1, 3).grouped(2).split(2),
];

/// The other kernels of the module.
pub const GATHER: &str = "gather_cols";
pub const FILL_U16: &str = "fill_u16";
pub const WG_PREP: &str = "wg_prep_x";

/// `add_bias` (f16 outputs) or `add_bias_bf`.
pub fn add_bias_symbol(dt: Dtype) -> String {
    format!("add_bias{}", dt.suffix())
}

/// `w4_dequant` (the fused layout to f16 weights) or `w4_dequant_bf`.
pub fn w4_dequant_symbol(dt: Dtype) -> String {
    format!("w4_dequant{}", dt.suffix())
}

/// `dequant_b{bits}` (f16 weights) or `dequant_b{bits}_bf`.
pub fn dequant_symbol(bits: u32, dt: Dtype) -> String {
    format!("dequant_b{bits}{}", dt.suffix())
}

/// Every `extern "C"` kernel in `w4.cu` (checked by the NVRTC test).
pub fn all_functions() -> Vec<String> {
    let dts = [Dtype::F16, Dtype::Bf16];
    let mut v: Vec<String> = Vec::new();
    for dt in dts {
        v.extend(dt.w4_variants().iter().map(|w| w.symbol_as(dt)));
        // One kernel serves every split of a variant.
        for w in WG_VARIANTS {
            let s = w.symbol_as(dt);
            if !v.contains(&s) {
                v.push(s);
            }
        }
        v.extend([2, 3, 4, 8].map(|b| dequant_symbol(b, dt)));
        v.push(add_bias_symbol(dt));
        v.push(w4_dequant_symbol(dt));
    }
    v.extend([GATHER, FILL_U16, WG_PREP].map(String::from));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_list_matches_function_list() {
        for v in W4_VARIANTS {
            assert!(all_functions().contains(&v.symbol()), "{v:?}");
            assert!(v.shared_bytes() <= 100 * 1024, "{v:?}");
            assert!(v.kw.is_multiple_of(v.rw), "{v:?}");
            assert!(crate::layout::TILE_PAD.is_multiple_of(v.tiles()), "{v:?}");
        }
        for v in WG_VARIANTS {
            assert!(all_functions().contains(&v.symbol()), "{v:?}");
            // The most a block may have on sm_90 (227 KiB).
            assert!(v.shared_bytes() <= 227 * 1024, "{v:?}");
            assert!([64, 128, 256].contains(&v.bm), "{v:?}");
        }
        let all = all_functions();
        for b in [2, 3, 4, 8] {
            assert!(all.contains(&dequant_symbol(b, Dtype::Bf16)));
        }
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        // Every variant is instantiated in w4.cu by the macro of its kind.
        let src = crate::compile::W4_SOURCE;
        let w4_args = |v: &W4Variant| format!("({}, {}, {}, {}, {})", v.mt, v.rt, v.rw, v.kw, v.st);
        let x = |v: &W4Variant| match (v.sx, v.fs) {
            (false, false) => "",
            (true, false) => "_X",
            (false, true) => "_S",
            (true, true) => "_X_S",
        };
        for v in W4_VARIANTS {
            let mac = format!("W4_KERNEL{}{}", x(v), w4_args(v));
            assert!(src.contains(&mac), "{v:?}");
        }
        for v in W4_BF16_VARIANTS {
            let mac = format!("W4_KERNEL{}_BF{}", x(v), w4_args(v));
            assert!(src.contains(&mac), "{v:?}");
        }
        for v in WG_VARIANTS {
            let mut args = format!("({}, {}, {}, {}", v.bm, v.ks, v.rt, v.st);
            // The macro of the variant's kind, and a symbol naming that
            // macro's kernel (a split variant under the plain kernel's name
            // would compute every block's whole K).
            let g = format!("_g{}", v.rg);
            let (mac, suffix) = match (v.pipe, v.sk > 1, v.rg > 1) {
                (false, false, false) => ("WG_KERNEL", String::new()),
                (true, false, false) => ("WG_KERNEL_P", "_p".to_string()),
                (false, true, false) => ("WG_KERNEL_Z", "_z".to_string()),
                (false, false, true) => ("WG_KERNEL_G", g),
                (false, true, true) => ("WG_KERNEL_GZ", g + "_z"),
                _ => panic!("no such kernel kind: {v:?}"),
            };
            if v.rg > 1 {
                args += &format!(", {}", v.rg);
            }
            args += ")";
            assert!(src.contains(&format!("{mac}{args}")), "{v:?}");
            let plain = format!("w4_wg_b{}_k{}_r{}_s{}", v.bm, v.ks, v.rt, v.st);
            assert_eq!(v.symbol(), plain + &suffix, "{v:?}");
        }
        for b in [2, 3, 4, 8] {
            assert!(src.contains(&format!("DEQUANT_KERNEL({b})")));
        }
        for f in [
            GATHER,
            FILL_U16,
            WG_PREP,
            "add_bias",
            "add_bias_bf",
            "w4_dequant",
            "w4_dequant_bf",
        ] {
            let found = src.contains(&format!("void {f}("));
            assert!(found, "{f} is not defined in w4.cu");
        }
    }
}
