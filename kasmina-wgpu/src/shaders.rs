//! WGSL sources and their variants.
//!
//! The kernels live in `shaders/kasmina.wgsl`; each pipeline variant prepends one
//! dtype file (how activations are stored and converted) and one reduction file
//! (subgroup shuffles or workgroup memory). f16 is converted in integer
//! arithmetic (exact decode, round-to-nearest-even encode), so it needs no
//! `SHADER_F16`; the decoder takes WGSL's core `unpack2x16float` for words whose
//! halves are normal numbers or zeros (exact on every implementation), and the
//! encoder has a short path for results in f16's normal range. (naga 30 cannot
//! bitcast a `u32` to `vec2<f16>`, and WGSL leaves the rounding of a native
//! f32 -> f16 conversion, and `pack2x16float` out of range, to the
//! implementation.) WGSL declarations are order-free, so concatenation is all the "linking" needed; the only textual substitution is
//! the subgroup built-ins in the entry points' parameter lists.

use kasmina_core::DType;

const KASMINA: &str = include_str!("shaders/kasmina.wgsl");
const DTYPE_F32: &str = include_str!("shaders/dtype_f32.wgsl");
const DTYPE_F16: &str = include_str!("shaders/dtype_f16.wgsl");
const DTYPE_BF16: &str = include_str!("shaders/dtype_bf16.wgsl");
const HALF_COMMON: &str = include_str!("shaders/half_common.wgsl");
const F16_ENCODE: &str = include_str!("shaders/f16_encode.wgsl");
const REDUCE_SHARED: &str = include_str!("shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("shaders/reduce_subgroup.wgsl");

const SG_PARAMS: &str = ", @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_size) sg_size: u32, \
     @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) sg_count: u32";
const SG_INIT: &str = "SG_LANE = sg_lane; SG_SIZE = sg_size; SG_ID = sg_id; SG_COUNT = sg_count;";

/// Every `.wgsl` file, by name (for tests and tools).
pub const FILES: &[(&str, &str)] = &[
    ("kasmina.wgsl", KASMINA),
    ("dtype_f32.wgsl", DTYPE_F32),
    ("dtype_f16.wgsl", DTYPE_F16),
    ("dtype_bf16.wgsl", DTYPE_BF16),
    ("half_common.wgsl", HALF_COMMON),
    ("f16_encode.wgsl", F16_ENCODE),
    ("reduce_shared.wgsl", REDUCE_SHARED),
    ("reduce_subgroup.wgsl", REDUCE_SUBGROUP),
];

/// The kernel entry points, in the order the pipelines are built.
pub const ENTRY_POINTS: &[&str] = &[
    "fwd_prep",
    "fwd_tile",
    "fwd_tile_id",
    "fwd_tile_bp",
    "fwd_flat",
    "fwd_merge",
    "bwd_tile",
    "bwd_tile_id",
    "bwd_tile_bp",
    "bwd_flat",
    "bwd_colmerge",
    "bwd_final",
];

/// One compiled flavour of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Storage dtype of the activations.
    pub dtype: DType,
    /// Reduce with subgroup shuffles (needs `SUBGROUP`) instead of workgroup memory.
    pub subgroups: bool,
    /// f16 only: decode words with `unpack2x16float` where that is exact
    /// (normal numbers and zeros), the integer decoder elsewhere; `false` uses
    /// the integer decoder for everything (`WgpuOptions::f16_integer_decode`, for
    /// comparison). Both give the same bits.
    pub half_unpack: bool,
}

impl Variant {
    /// Every variant the backend can build (what the naga tests validate).
    pub fn all() -> Vec<Variant> {
        let mut out = Vec::new();
        for dtype in DType::ALL {
            for subgroups in [false, true] {
                for half_unpack in [true, false] {
                    if half_unpack || dtype == DType::F16 {
                        out.push(Variant { dtype, subgroups, half_unpack });
                    }
                }
            }
        }
        out
    }

    /// The naga capabilities the variant needs.
    pub fn capabilities(&self) -> naga::valid::Capabilities {
        let mut caps = naga::valid::Capabilities::empty();
        if self.subgroups {
            caps |= naga::valid::Capabilities::SUBGROUP;
        }
        if self.half_unpack && self.dtype == DType::F16 {
            // unpack2x16float (wgpu: `DownlevelFlags::SHADER_F16_IN_F32`, no f16 extension).
            caps |= naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        }
        caps
    }

    /// The full WGSL source of the variant.
    pub fn source(&self) -> String {
        let mut src = String::new();
        match self.dtype {
            DType::F32 => src.push_str(DTYPE_F32),
            DType::F16 if !self.half_unpack => {
                let (a, rest) = DTYPE_F16.split_once("/*F16_UNPACK_BEGIN*/").unwrap_or((DTYPE_F16, ""));
                let b = rest.split_once("/*F16_UNPACK_END*/").map_or("", |(_, b)| b);
                src.push_str(a);
                src.push_str(b);
                src.push_str(HALF_COMMON);
                src.push_str(F16_ENCODE);
            }
            DType::F16 => {
                src.push_str(DTYPE_F16);
                src.push_str(HALF_COMMON);
                src.push_str(F16_ENCODE);
            }
            DType::BF16 => {
                src.push_str(DTYPE_BF16);
                src.push_str(HALF_COMMON);
            }
        }
        src.push_str(if self.subgroups { REDUCE_SUBGROUP } else { REDUCE_SHARED });
        let (params, init) = if self.subgroups { (SG_PARAMS, SG_INIT) } else { ("", "") };
        src.push_str(&KASMINA.replace("/*SG_PARAMS*/", params).replace("/*SG_INIT*/", init));
        src
    }

    /// Parses and validates the variant with naga, as wgpu would.
    pub fn validate(&self) -> Result<(), String> {
        let src = self.source();
        let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), self.capabilities())
            .validate(&module)
            .map_err(|e| e.emit_to_string(&src))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_parses_and_validates_with_naga() {
        for v in Variant::all() {
            if let Err(e) = v.validate() {
                panic!("{v:?} failed naga validation:\n{e}");
            }
        }
    }

    #[test]
    fn every_variant_has_every_entry_point() {
        for v in Variant::all() {
            let src = v.source();
            let module = naga::front::wgsl::parse_str(&src).unwrap();
            for ep in ENTRY_POINTS {
                assert!(module.entry_points.iter().any(|e| e.name == *ep), "{v:?} lacks {ep}");
            }
        }
    }

    #[test]
    fn subgroup_variant_needs_the_capability() {
        let v = Variant { dtype: DType::F32, subgroups: true, half_unpack: true };
        let src = v.source();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let r = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module);
        assert!(r.is_err(), "subgroup variant validated without SUBGROUP");
    }

    #[test]
    fn the_integer_f16_variant_has_no_unpack() {
        let v = Variant { dtype: DType::F16, subgroups: false, half_unpack: false };
        assert!(!v.source().contains("unpack2x16float("));
        let v = Variant { dtype: DType::F16, subgroups: false, half_unpack: true };
        assert!(v.source().contains("unpack2x16float("));
    }

    #[test]
    fn every_file_is_used() {
        let all: String = Variant::all().iter().map(|v| v.source()).collect();
        for (name, text) in FILES {
            let first = text.lines().find(|l| l.starts_with("fn ") || l.starts_with("const ")).unwrap_or("");
            assert!(all.contains(first), "{name} is not part of any variant");
        }
    }
}
