//! The Hopper path (compute capability 9.0): TMA tensor maps and warp-specialized,
//! persistent kernels (`kernels/hopper.cu`), a second kernel family beside the portable one.
//!
//! - [`CudaPath`] picks the family: `Portable`, `Hopper` (forced) or `Auto` (the autotuner
//!   times both per key, once, and keeps the faster; the choice is cached like every tuned
//!   configuration). [`crate::CudaOptions::path`] sets it (`KASMINA_CUDA_PATH=portable|hopper|auto`
//!   through [`crate::CudaOptions::from_env`]; default [`CudaPath::DEFAULT`], `Auto`).
//!   Auto's choice: on the first call of a key (operation names of both families, dtype, B, H;
//!   see [`path_op`]) it runs one call of each family (each tunes its own launch
//!   configuration), then times both over the same repetitions and keeps Hopper only when it
//!   is faster by the margin [`HOPPER_MARGIN`] ([`hopper_wins`]); the pick is cached in memory
//!   and in the autotune file, so later calls and processes pay nothing. With
//!   autotuning off Auto runs the portable kernels. Since it times both, Auto loses to
//!   portable only by timing noise (within the margin); [`CudaPath::Portable`] keeps the
//!   portable kernels alone.
//! - Seed-uniform Hopper kernels (`kasmina_hfwdu` / `kasmina_hbwdu`) run where the
//!   chunk size C is a multiple of 8 (every vector width): the portable seed-uniform kernels'
//!   per-thread math, CONV neighbours from the shared-memory tiles.
//! - The Hopper kernels run only where TMA can take the tensors; elsewhere the call runs the
//!   portable kernels, even when `Hopper` is forced (see [`hopper_unsupported_reason`]):
//!   a device that is not compute capability 9.0, a row of `H` elements that is not a
//!   multiple of 16 bytes (`H % 4 != 0` for f32, `H % 8 != 0` for f16/bf16: TMA needs 16-byte
//!   row strides), `B` or `H` of 2^31 or more (TMA coordinates are 32-bit). Which family ran
//!   last is [`CudaBackend::last_path`].
//! - Source: `kernels/kasmina.cu` followed by `kernels/hopper.cu`, compiled by NVRTC for
//!   `sm_90a` (one module per dtype, vector width 16 bytes), so the numerics are the portable
//!   path's and the partials are merged by the portable merge kernels of the same module.
//! - Evidence: [`CudaBackend::hopper_cubin`] returns the machine code the backend loads
//!   (`cuobjdump -sass` on it shows `UTMALDG`, `UTMASTG` and `SYNCS.*`) and
//!   [`CudaBackend::hopper_ptx`] the PTX; the instruction counts, compute-sanitizer runs and
//!   tests with the family forced are in `benches/RESULTS.md`.
//! - Per call, the tensor maps (by address, shape and box) and the blocks per SM (by kernel and
//!   shared memory) are looked up, not recomputed: a map is a pure function of its key, so a
//!   cached one is right by construction.
//!
//! # Where each family wins
//!
//! `benches/RESULTS.md` has the tables (portable, Hopper and Auto over the chunk size, by card).
//! In short: Hopper can win dormant layers in 16-bit types (TMA streams the tiles, and the
//! direct identity kernels store the loaded stage itself); with active seeds its consumer warps
//! are bound by per-element instruction latency at few warps per SM (3-4 blocks of 4 consumer
//! warps), worst for 16-bit types and small C, and the portable seed-uniform kernels stay
//! ahead. Small calls run the portable kernels, whose launches are captured in CUDA graphs.
//! Auto times both once per key and keeps Hopper only when it wins by [`HOPPER_MARGIN`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use kasmina_core::DType;

use super::{CudaBackend, CudaTensor, PARTIAL_BYTES, PartialLayout};
use crate::autotune::{KernelConfig, TuneKey, TuneMode, shape_bucket};
use crate::cache::CacheLocation;
use crate::error::{CudaError, CudaResult, DriverContext};
use crate::kernels::{KERNEL_SOURCE, ModuleSpec, dtype_macro};
use crate::layer::{Acc, CudaLayer};
use crate::tma::{TensorMap, TensorMapSpec};

/// The Hopper kernels' source (compiled after [`KERNEL_SOURCE`], in one program).
pub const HOPPER_SOURCE: &str = include_str!("kernels/hopper.cu");

/// Stages of the shared-memory ring (`KASMINA_HOPPER_STAGES` in the source).
pub const HOPPER_STAGES: u32 = 4;

/// Registers per thread of the active seed-uniform forward (`KASMINA_HOPPER_FWD_REGS` in the
/// source): 96, so 4 blocks of 5 warps fit an SM.
pub const HOPPER_FWD_REGS: u32 = 96;

/// Rows a seed-uniform forward thread loads before processing any (`KASMINA_HOPPER_UNROLL` in
/// the source): 1, which keeps that kernel within [`HOPPER_FWD_REGS`] without spills (NVRTC
/// 13.0 + ptxas sm_90a; an unroll of 2 spills 72 bytes in bf16).
pub const HOPPER_UNROLL: u32 = 1;

/// Threads per block: 4 consumer warps and 1 producer warp.
pub const HOPPER_THREADS: u32 = 160;
/// Consumer threads per block.
const CONSUMERS: u32 = 128;

/// Which kernel family runs forward and backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CudaPath {
    /// The portable kernels (every device).
    Portable,
    /// The Hopper kernels where TMA can take the shape (portable elsewhere, see the module docs).
    Hopper,
    /// Per key, the faster of the two as timed by the autotuner (portable with autotuning off).
    Auto,
}

impl CudaPath {
    /// The default family: `Auto` (it times both families per key and keeps the faster, see
    /// the module docs).
    pub const DEFAULT: CudaPath = CudaPath::Auto;

    /// Parses `portable`, `hopper` or `auto` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(CudaPath::Portable),
            "hopper" => Some(CudaPath::Hopper),
            "auto" => Some(CudaPath::Auto),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            CudaPath::Portable => "portable",
            CudaPath::Hopper => "hopper",
            CudaPath::Auto => "auto",
        }
    }
}

/// Elements per 16 bytes: the Hopper kernels' vector width.
pub fn hopper_vec(dtype: DType) -> u32 {
    16 / dtype.size_bytes() as u32
}

/// Why the Hopper kernels cannot run a `[rows, h]` tensor of `dtype` on a device of
/// compute capability `cc` (None: they can).
pub fn hopper_unsupported_reason(cc: (i32, i32), dtype: DType, rows: usize, h: usize) -> Option<String> {
    if cc != (9, 0) {
        return Some(format!(
            "the Hopper kernels need compute capability 9.0 (sm_90a), this device is {}.{}",
            cc.0, cc.1
        ));
    }
    let es = dtype.size_bytes();
    if !(h * es).is_multiple_of(16) {
        return Some(format!(
            "a row of {h} {dtype} elements is {} bytes, not a multiple of 16: TMA needs 16-byte row strides",
            h * es
        ));
    }
    if rows > i32::MAX as usize || h > i32::MAX as usize {
        return Some(format!("[{rows}, {h}] exceeds TMA's 32-bit coordinates"));
    }
    None
}

/// Columns of one tile (the TMA box width): a power-of-two number of 16-byte vectors,
/// at most 256 elements, no wider than needed for `h`.
pub fn tile_cols(dtype: DType, h: usize) -> u32 {
    let v = hopper_vec(dtype);
    let lanes = (h as u64).div_ceil(v as u64).next_power_of_two().min((256 / v).min(CONSUMERS) as u64) as u32;
    lanes * v
}

/// One launch configuration of the Hopper kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HopperConfig {
    /// Rows of one work unit (a multiple of `box_rows`): the statistics partials' row group.
    pub rows: u32,
    /// Rows of one TMA box (one ring stage).
    pub box_rows: u32,
}

impl HopperConfig {
    /// As stored by the autotuner: `rows` = unit rows, `threads` = box rows, `vec` = the vector
    /// width (the tuner's record type is the portable [`KernelConfig`]; these are never launched
    /// as portable configurations).
    pub fn to_tuner(self, dtype: DType) -> KernelConfig {
        KernelConfig::new(self.rows, self.box_rows, hopper_vec(dtype))
    }

    /// The inverse of [`Self::to_tuner`].
    pub fn from_tuner(k: KernelConfig) -> Self {
        Self { rows: k.rows, box_rows: k.threads }
    }
}

/// Dynamic shared memory of a kernel with `tiles` tiles per stage (input and output), plus
/// the barriers, the column scratch and 128 bytes to align the base (see `hplan` in the source).
pub fn smem_bytes(tiles_per_stage: u32, tw: u32, box_rows: u32, dtype: DType) -> u32 {
    let tile = (box_rows * tw * dtype.size_bytes() as u32).div_ceil(128) * 128;
    128 + 128 + tw * 32 + HOPPER_STAGES * tiles_per_stage * tile
}

/// The tuner's candidates: boxes of about 4, 8 and 16 KiB, units of 4, 16 and 64 boxes.
pub fn hopper_candidates(dtype: DType, rows: usize, h: usize, max_smem: u32) -> Vec<HopperConfig> {
    let tw = tile_cols(dtype, h);
    let row_bytes = tw * dtype.size_bytes() as u32;
    let mut out = Vec::new();
    for tile_bytes in [4096u32, 8192, 16384] {
        let br = (tile_bytes / row_bytes).clamp(1, 256);
        for mult in [4u32, 16, 64] {
            let r = (br * mult).min(4096 / br * br).max(br);
            if (r as usize) > rows.max(1) * 2 && mult > 4 {
                continue;
            }
            let c = HopperConfig { rows: r, box_rows: br };
            if smem_bytes(3, tw, br, dtype) <= max_smem && !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// The configuration with tuning off: 8 KiB boxes, units of 16 boxes.
pub fn hopper_default(dtype: DType, h: usize) -> HopperConfig {
    let tw = tile_cols(dtype, h);
    let br = (8192 / (tw * dtype.size_bytes() as u32)).clamp(1, 256);
    HopperConfig { rows: (br * 16).min(4096 / br * br), box_rows: br }
}

/// The source NVRTC compiles for the Hopper module.
fn full_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| format!("{KERNEL_SOURCE}\n// ---- kernels/hopper.cu\n{HOPPER_SOURCE}"))
}

impl ModuleSpec {
    /// The Hopper module of `dtype` for `sm_90a` (`kernels/kasmina.cu` then `kernels/hopper.cu`).
    pub fn hopper(dtype: DType) -> Self {
        let options = vec![
            "--std=c++17".into(),
            format!("-DKASMINA_DT={}", dtype_macro(dtype)),
            format!("-DKASMINA_V={}", hopper_vec(dtype)),
            format!("-DKASMINA_HOPPER_STAGES={HOPPER_STAGES}"),
            format!("-DKASMINA_HOPPER_FWD_REGS={HOPPER_FWD_REGS}"),
            format!("-DKASMINA_HOPPER_UNROLL={HOPPER_UNROLL}"),
        ];
        Self::new(format!("kasmina_hopper_{}.cu", dtype.name()), full_source(), "sm_90a", options)
    }
}

/// The functions of one loaded Hopper module.
#[derive(Debug)]
pub(crate) struct HopperKernels {
    _module: Arc<CudaModule>,
    fwd: CudaFunction,
    fwd_identity: CudaFunction,
    /// Seed-uniform forwards (C % V == 0).
    fwdu: CudaFunction,
    fwdu_identity: CudaFunction,
    /// Seed-uniform backwards (C % V == 0).
    bwdu: CudaFunction,
    bwdu_identity: CudaFunction,
    /// Identity kernels that store the input stage itself (no staging tile).
    fwdu_direct: CudaFunction,
    bwdu_direct: CudaFunction,
    bwd: CudaFunction,
    bwd_identity: CudaFunction,
    fwd_merge: CudaFunction,
    bwd_colsum: CudaFunction,
    bwd_finalize: CudaFunction,
    /// Largest dynamic shared memory one block may use.
    max_smem: u32,
}

impl HopperKernels {
    fn load(ctx: &Arc<CudaContext>, dtype: DType, cache: &CacheLocation) -> CudaResult<Self> {
        let image = ModuleSpec::hopper(dtype).image(cache)?;
        let module = ctx.load_module(image).ctx("loading the Hopper kernel module")?;
        let f = |name: &str| module.load_function(name).ctx(&format!("loading kernel {name}"));
        let optin = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .ctx("reading the shared memory limit")?
            .max(48 * 1024) as u32;
        let k = Self {
            fwd: f("kasmina_hfwd")?,
            fwd_identity: f("kasmina_hfwd_identity")?,
            fwdu: f("kasmina_hfwdu")?,
            fwdu_identity: f("kasmina_hfwdu_identity")?,
            bwdu: f("kasmina_hbwdu")?,
            bwdu_identity: f("kasmina_hbwdu_identity")?,
            fwdu_direct: f("kasmina_hfwdu_identity_direct")?,
            bwdu_direct: f("kasmina_hbwdu_identity_direct")?,
            bwd: f("kasmina_hbwd")?,
            bwd_identity: f("kasmina_hbwd_identity")?,
            fwd_merge: f("kasmina_fwd_merge")?,
            bwd_colsum: f("kasmina_bwd_colsum")?,
            bwd_finalize: f("kasmina_bwd_finalize")?,
            _module: module,
            max_smem: optin,
        };
        for func in [
            &k.fwd,
            &k.fwd_identity,
            &k.fwdu,
            &k.fwdu_identity,
            &k.bwd,
            &k.bwd_identity,
            &k.bwdu,
            &k.bwdu_identity,
            &k.fwdu_direct,
            &k.bwdu_direct,
        ] {
            func.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                optin as i32,
            )
            .ctx("raising the shared memory limit")?;
        }
        Ok(k)
    }
}

/// (operation, dtype, rows, cols): a picked family or Hopper configuration. The operation
/// names which kernels run (see [`hopper_op`] and [`path_op`]): a dormant layer (identity
/// kernels) and a mixed one (blend kernels) of the same shape are different keys.
type Key = (String, DType, usize, usize);

/// The Hopper kernels' operation name (tuner and memory key): direction, whether the
/// seed-uniform kernels run (`-uniform`) and whether any seed is active (`-identity` kernels
/// otherwise).
pub fn hopper_op(backward: bool, uniform: bool, any_active: bool) -> String {
    format!(
        "hopper-{}{}{}",
        if backward { "backward" } else { "forward" },
        if uniform { "-uniform" } else { "" },
        if any_active { "" } else { "-identity" }
    )
}

/// The operation name of Auto's family choice: both families' operation names (the portable
/// one from the backend's `op_name`, which also says whether its seed-uniform kernels run), so
/// the choice made for one set of kernels is never reused for another (a dormant layer's choice
/// must not decide a mixed layer of the same shape).
pub fn path_op(portable_op: &str, hopper_op: &str) -> String {
    format!("path-{portable_op}+{hopper_op}")
}

/// Auto's rule: the Hopper family must beat the portable one by [`HOPPER_MARGIN`] (a timing
/// tie keeps the portable kernels, so Auto does not lose to portable on noise).
pub fn hopper_wins(portable_ms: f64, hopper_ms: f64) -> bool {
    hopper_ms.is_finite() && (!portable_ms.is_finite() || hopper_ms * HOPPER_MARGIN < portable_ms)
}

/// How much faster (as a factor of time) the Hopper family must be for Auto to pick it.
pub const HOPPER_MARGIN: f64 = 1.02;

/// The Hopper path's per-backend state.
#[derive(Debug)]
pub(crate) struct HopperState {
    pub(crate) path: CudaPath,
    modules: Mutex<HashMap<DType, Arc<HopperKernels>>>,
    /// Per key: the family Auto chose (true: Hopper).
    chosen: Mutex<HashMap<Key, bool>>,
    /// Per key: the Hopper configuration.
    configs: Mutex<HashMap<Key, HopperConfig>>,
    /// The family of the last forward and backward (index 0 / 1).
    last: Mutex<[Option<CudaPath>; 2]>,
    /// Encoded tensor maps by (address, dtype, rows, cols, box rows, box cols): a map is a pure
    /// function of these, so a hit is right by construction (a freed and reused address with
    /// the same shape encodes the same 128 bytes); small calls skip the driver's encoding.
    maps: Mutex<HashMap<MapKey, TensorMap>>,
    /// Blocks per SM by (dtype, kernel, dynamic shared memory bytes), as the driver reported.
    occupancy: Mutex<HashMap<(DType, &'static str, u32), u64>>,
}

/// A cached tensor map's key: (address, dtype, rows, cols, box rows, box cols).
type MapKey = (u64, DType, usize, usize, u32, u32);

/// Cached tensor maps kept at most (the cache is cleared when it is full: a process cycling
/// through many buffers re-encodes, it never grows without bound).
const MAX_CACHED_MAPS: usize = 256;

impl HopperState {
    pub(crate) fn new(path: CudaPath) -> Self {
        Self {
            path,
            modules: Mutex::new(HashMap::new()),
            chosen: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            last: Mutex::new([None, None]),
            maps: Mutex::new(HashMap::new()),
            occupancy: Mutex::new(HashMap::new()),
        }
    }
}

/// Geometry of one Hopper launch.
#[derive(Debug, Clone, Copy)]
struct HGeo {
    tw: u32,
    n_rg: u64,
    n_tiles: u32,
    segs: u32,
    units: u64,
}

impl HGeo {
    fn new(cfg: HopperConfig, dtype: DType, b: usize, h: usize, c: usize, s: usize) -> Self {
        let tw = tile_cols(dtype, h);
        let n_rg = (b as u64).div_ceil(cfg.rows as u64);
        let n_tiles = (h as u64).div_ceil(tw as u64) as u32;
        let segs = (((tw - 1) as usize / c) + 2).min(s) as u32;
        Self { tw, n_rg, n_tiles, segs, units: n_rg * n_tiles as u64 }
    }

    fn layout(&self) -> PartialLayout {
        PartialLayout { n_rg: self.n_rg, n_tiles: self.n_tiles, segs: self.segs, tw: self.tw }
    }

    fn slots(&self) -> usize {
        self.layout().slots()
    }
}

impl CudaBackend {
    /// The kernel family setting of this backend.
    pub fn path(&self) -> CudaPath {
        self.hopper.path
    }

    /// The family (`Portable` or `Hopper`) that ran the last forward (`backward = false`)
    /// or backward call with rows, if any.
    pub fn last_path(&self, backward: bool) -> Option<CudaPath> {
        self.hopper.last.lock().map(|l| l[backward as usize]).unwrap_or(None)
    }

    /// Why the Hopper kernels cannot run `[rows, h]` tensors of `dtype` here (None: they can).
    pub fn hopper_unsupported(&self, dtype: DType, rows: usize, h: usize) -> Option<String> {
        hopper_unsupported_reason(self.cc, dtype, rows, h)
    }

    /// The PTX of the Hopper module of `dtype` (compiled for `sm_90a`; needs only NVRTC).
    pub fn hopper_ptx(dtype: DType) -> kasmina_core::Result<String> {
        Ok(ModuleSpec::hopper(dtype).ptx()?)
    }

    /// The machine code (CUBIN) of the Hopper module of `dtype` as this backend loads it
    /// (through its kernel cache): `cuobjdump -sass` on it shows the TMA and mbarrier
    /// instructions (`UTMALDG`, `UTMASTG`, `SYNCS.*`).
    pub fn hopper_cubin(&self, dtype: DType) -> kasmina_core::Result<Vec<u8>> {
        Ok(ModuleSpec::hopper(dtype).cubin(&self.kernel_cache)?.as_ref().clone())
    }

    /// Registers, local memory and the blocks per SM the driver allows for the Hopper
    /// kernels of `dtype` with their default configuration for hidden size `h`.
    pub fn hopper_resources(&self, dtype: DType, h: usize) -> kasmina_core::Result<String> {
        let k = self.hopper_kernels(dtype)?;
        let cfg = hopper_default(dtype, h);
        let tw = tile_cols(dtype, h);
        let mut out = Vec::new();
        for (name, f, tiles) in [
            ("hopper-forward", &k.fwd, 2),
            ("hopper-forward-identity", &k.fwd_identity, 2),
            ("hopper-forward-uniform", &k.fwdu, 2),
            ("hopper-forward-uniform-identity", &k.fwdu_identity, 2),
            ("hopper-backward", &k.bwd, 3),
            ("hopper-backward-identity", &k.bwd_identity, 3),
            ("hopper-backward-uniform", &k.bwdu, 3),
            ("hopper-backward-uniform-identity", &k.bwdu_identity, 3),
            ("hopper-forward-uniform-identity-direct", &k.fwdu_direct, 1),
            ("hopper-backward-uniform-identity-direct", &k.bwdu_direct, 1),
        ] {
            let regs = f.num_regs().ctx("reading kernel attributes")?;
            let local = f.local_size_bytes().ctx("reading kernel attributes")?;
            let smem = smem_bytes(tiles, tw, cfg.box_rows, dtype);
            let blocks = f
                .occupancy_max_active_blocks_per_multiprocessor(HOPPER_THREADS, smem as usize, None)
                .ctx("reading occupancy")?;
            out.push(format!(
                "{name} {dtype}: {regs} registers, {local} B local, {smem} B shared ({} x {} box), {blocks} blocks/SM",
                cfg.box_rows, tw
            ));
        }
        Ok(out.join("; "))
    }

    /// Encodes a TMA map of device tensor `t` (`[rows, cols]`, dense) with a
    /// `[box_rows, box_cols]` box, zero fill and no swizzle (see [`crate::tma`]).
    pub fn tensor_map(&self, t: &CudaTensor, box_rows: u32, box_cols: u32) -> kasmina_core::Result<TensorMap> {
        let spec = TensorMapSpec::dense(t.dtype, t.rows as u64, t.cols as u64, box_rows, box_cols);
        Ok(spec.encode(self.ptr(t)).map_err(CudaError::from)?)
    }

    /// Whether the seed-uniform Hopper kernels run `layer` (C a multiple of every vector
    /// width, 8), forward and backward alike.
    fn hopper_uniform(&self, layer: &CudaLayer, _backward: bool) -> bool {
        layer.c.is_multiple_of(8)
    }

    /// Whether the identity kernels that store the input stage directly run `layer`.
    fn hopper_direct(&self, layer: &CudaLayer, backward: bool) -> bool {
        self.hopper_uniform(layer, backward) && !layer.any_active()
    }

    fn hopper_op_of(&self, layer: &CudaLayer, backward: bool) -> String {
        let mut op = hopper_op(backward, self.hopper_uniform(layer, backward), layer.any_active());
        if self.hopper_direct(layer, backward) {
            op.push_str("-direct");
        }
        op
    }

    fn hopper_kernels(&self, dtype: DType) -> CudaResult<Arc<HopperKernels>> {
        let mut m = self.hopper.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = m.get(&dtype) {
            return Ok(k.clone());
        }
        let k = Arc::new(HopperKernels::load(&self.ctx, dtype, &self.kernel_cache)?);
        m.insert(dtype, k.clone());
        Ok(k)
    }

    fn set_last(&self, backward: bool, hopper: bool) {
        if let Ok(mut l) = self.hopper.last.lock() {
            l[backward as usize] = Some(if hopper { CudaPath::Hopper } else { CudaPath::Portable });
        }
    }

    /// Decides the family of one call (`run(layer, hopper)` runs it; Auto times both with it,
    /// restoring the accumulators afterwards) and records it for [`Self::last_path`].
    pub(super) fn choose_path(
        &self,
        layer: &mut CudaLayer,
        dtype: DType,
        rows: usize,
        backward: bool,
        run: &mut dyn FnMut(&mut CudaLayer, bool) -> CudaResult<()>,
    ) -> CudaResult<bool> {
        let hopper = self.choose_path_inner(layer, dtype, rows, backward, run)?;
        self.set_last(backward, hopper);
        Ok(hopper)
    }

    fn choose_path_inner(
        &self,
        layer: &mut CudaLayer,
        dtype: DType,
        rows: usize,
        backward: bool,
        run: &mut dyn FnMut(&mut CudaLayer, bool) -> CudaResult<()>,
    ) -> CudaResult<bool> {
        if rows == 0
            || self.hopper.path == CudaPath::Portable
            || self.hopper_unsupported(dtype, rows, layer.h).is_some()
        {
            return Ok(false);
        }
        if self.hopper.path == CudaPath::Hopper {
            return Ok(true);
        }
        let op = path_op(self.op_name(layer, backward), &self.hopper_op_of(layer, backward));
        let key = (op.clone(), dtype, rows, layer.h);
        if let Some(c) = self.hopper.chosen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*c);
        }
        if self.tuner.lock().map(|t| t.mode()).unwrap_or(TuneMode::Off) == TuneMode::Off {
            return Ok(false);
        }
        // The two families as tuner tokens (never launched as configurations).
        let portable = KernelConfig::new(0, 0, 0);
        let hopper = KernelConfig::new(0, 0, 1);
        let cands = [portable, hopper];
        let tkey =
            TuneKey::new(&self.name, self.cc, &op, dtype.name(), &shape_bucket(rows, layer.h), full_source(), &cands);
        // Timed calls add to the accumulators: keep a copy and put it back.
        let saved_acc = self.stream.clone_dtod(&layer.acc).ctx("saving accumulators")?;
        let saved_g2 = self.stream.clone_dtod(&layer.acc_g2).ctx("saving accumulators")?;
        let bytes = rows * layer.h * dtype.size_bytes() * if backward { 3 } else { 2 };
        let reps = Self::tune_reps(bytes);
        // One call of each family first: each tunes its own launch configuration (which locks
        // the tuner), so the timed calls below only find them in memory.
        let warm = run(layer, false).and_then(|_| run(layer, true));
        if let Err(e) = warm {
            self.stream.memcpy_dtod(&saved_acc, &mut layer.acc).ctx("restoring accumulators")?;
            self.stream.memcpy_dtod(&saved_g2, &mut layer.acc_g2).ctx("restoring accumulators")?;
            return Err(e);
        }
        let mut tuner = self.tuner.lock().unwrap_or_else(|p| p.into_inner());
        // Portable is timed first (candidate order); the Hopper time is scaled by the margin,
        // so the tuner's "fastest" is exactly `hopper_wins`.
        let picked = tuner.get_or_tune::<CudaError>(&tkey, &cands, portable, &mut |c| {
            let use_hopper = c.vec == 1;
            let ms = self.time_avg(reps, &mut || run(layer, use_hopper))?;
            Ok(if use_hopper { ms * HOPPER_MARGIN } else { ms })
        });
        drop(tuner);
        self.stream.memcpy_dtod(&saved_acc, &mut layer.acc).ctx("restoring accumulators")?;
        self.stream.memcpy_dtod(&saved_g2, &mut layer.acc_g2).ctx("restoring accumulators")?;
        let use_hopper = picked?.0.vec == 1;
        self.hopper.chosen.lock().unwrap_or_else(|p| p.into_inner()).insert(key, use_hopper);
        Ok(use_hopper)
    }

    /// The Hopper configuration for one call: tuned once per key (the whole call is timed,
    /// the accumulators restored afterwards), then remembered.
    fn hopper_config(
        &self,
        layer: &mut CudaLayer,
        dtype: DType,
        rows: usize,
        backward: bool,
        run: &mut dyn FnMut(&mut CudaLayer, HopperConfig) -> CudaResult<()>,
    ) -> CudaResult<HopperConfig> {
        let op = self.hopper_op_of(layer, backward);
        let key = (op.clone(), dtype, rows, layer.h);
        if let Some(c) = self.hopper.configs.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*c);
        }
        let k = self.hopper_kernels(dtype)?;
        let default = hopper_default(dtype, layer.h);
        let cands: Vec<KernelConfig> =
            hopper_candidates(dtype, rows, layer.h, k.max_smem).into_iter().map(|c| c.to_tuner(dtype)).collect();
        let tkey =
            TuneKey::new(&self.name, self.cc, &op, dtype.name(), &shape_bucket(rows, layer.h), full_source(), &cands);
        let saved_acc = self.stream.clone_dtod(&layer.acc).ctx("saving accumulators")?;
        let saved_g2 = self.stream.clone_dtod(&layer.acc_g2).ctx("saving accumulators")?;
        let bytes = rows * layer.h * dtype.size_bytes() * if backward { 3 } else { 2 };
        let reps = Self::tune_reps(bytes);
        let mut tuner = self.tuner.lock().unwrap_or_else(|p| p.into_inner());
        let picked = tuner.get_or_tune(&tkey, &cands, default.to_tuner(dtype), &mut |c| {
            let cfg = HopperConfig::from_tuner(*c);
            self.time_avg(reps, &mut || run(layer, cfg))
        });
        drop(tuner);
        self.stream.memcpy_dtod(&saved_acc, &mut layer.acc).ctx("restoring accumulators")?;
        self.stream.memcpy_dtod(&saved_g2, &mut layer.acc_g2).ctx("restoring accumulators")?;
        let cfg = HopperConfig::from_tuner(picked?.0);
        self.hopper.configs.lock().unwrap_or_else(|p| p.into_inner()).insert(key, cfg);
        Ok(cfg)
    }

    /// The tensor map of `t` with a `[box_rows, tw]` box, encoded once per address and shape.
    fn tmap(&self, t: &CudaTensor, cfg: HopperConfig, tw: u32) -> CudaResult<TensorMap> {
        let addr = self.ptr(t);
        let key = (addr, t.dtype, t.rows, t.cols, cfg.box_rows, tw);
        if let Some(m) = self.hopper.maps.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*m);
        }
        let spec = TensorMapSpec::dense(t.dtype, t.rows as u64, t.cols as u64, cfg.box_rows, tw);
        let map = spec.encode(addr)?;
        let mut maps = self.hopper.maps.lock().unwrap_or_else(|p| p.into_inner());
        if maps.len() >= MAX_CACHED_MAPS {
            maps.clear();
        }
        maps.insert(key, map);
        Ok(map)
    }

    /// Tensor maps cached so far (see `HopperState::maps`), for tests.
    pub fn hopper_cached_maps(&self) -> usize {
        self.hopper.maps.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn hopper_launch_config(
        &self,
        (dtype, name, f): (DType, &'static str, &CudaFunction),
        units: u64,
        smem: u32,
        max_smem: u32,
    ) -> CudaResult<LaunchConfig> {
        if smem > max_smem {
            return Err(CudaError::Unsupported(format!(
                "the Hopper kernel needs {smem} B of shared memory, the device allows {max_smem}"
            )));
        }
        let okey = (dtype, name, smem);
        let cached = self.hopper.occupancy.lock().unwrap_or_else(|p| p.into_inner()).get(&okey).copied();
        let per_sm = match cached {
            Some(n) => n,
            None => {
                let n = f
                    .occupancy_max_active_blocks_per_multiprocessor(HOPPER_THREADS, smem as usize, None)
                    .ctx("reading occupancy")?
                    .max(1) as u64;
                self.hopper.occupancy.lock().unwrap_or_else(|p| p.into_inner()).insert(okey, n);
                n
            }
        };
        let grid = units.min(self.sms as u64 * per_sm).max(1) as u32;
        Ok(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (HOPPER_THREADS, 1, 1), shared_mem_bytes: smem })
    }

    /// Forward on the Hopper kernels (configuration tuned on first use of the key).
    pub(super) fn hopper_forward(&self, layer: &mut CudaLayer, x: &CudaTensor, y: &mut CudaTensor) -> CudaResult<()> {
        let cfg = self.hopper_config(layer, x.dtype, x.rows, false, &mut |layer, cfg| {
            self.hopper_forward_with(layer, x, y, cfg)
        })?;
        self.hopper_forward_with(layer, x, y, cfg)
    }

    fn hopper_forward_with(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        y: &mut CudaTensor,
        cfg: HopperConfig,
    ) -> CudaResult<()> {
        let k = self.hopper_kernels(x.dtype)?;
        let g = HGeo::new(cfg, x.dtype, x.rows, layer.h, layer.c, layer.s);
        let tmx = self.tmap(x, cfg, g.tw)?;
        let tmy = self.tmap(y, cfg, g.tw)?;
        let direct = self.hopper_direct(layer, false);
        let (name, f) = match (self.hopper_uniform(layer, false), layer.any_active()) {
            (true, false) if direct => ("fwdu_direct", &k.fwdu_direct),
            (true, true) => ("fwdu", &k.fwdu),
            (true, false) => ("fwdu_identity", &k.fwdu_identity),
            (false, true) => ("fwd", &k.fwd),
            (false, false) => ("fwd_identity", &k.fwd_identity),
        };
        // Tiles per stage: input and output staging, or the input alone (direct).
        let tiles = if direct { 1 } else { 2 };
        let smem = smem_bytes(tiles, g.tw, cfg.box_rows, x.dtype);
        let lc = self.hopper_launch_config((x.dtype, name, f), g.units, smem, k.max_smem)?;
        let part = layer.part.ensure(&self.stream, g.slots() * PARTIAL_BYTES)?;
        let (b, h, c, r, br, tw, segs, nt, nu) =
            (x.rows as u64, layer.h as u32, layer.c as u32, cfg.rows, cfg.box_rows, g.tw, g.segs, g.n_tiles, g.units);
        let mut lb = self.stream.launch_builder(f);
        lb.arg(&tmx)
            .arg(&tmy)
            .arg(&*x.buf)
            .arg(&b)
            .arg(&h)
            .arg(&c)
            .arg(&r)
            .arg(&br)
            .arg(&tw)
            .arg(&layer.dead_eps)
            .arg(&layer.consts)
            .arg(&layer.colc)
            .arg(&layer.coef)
            .arg(&mut *part)
            .arg(&segs)
            .arg(&nt)
            .arg(&nu);
        // SAFETY: the arguments match kasmina_hfwd's parameters in order and type (the maps by
        // value, 128 bytes each); the maps describe x and y ([B, H], validated, 16-byte rows);
        // part holds the geometry's slots; the shared memory is what `hplan` carves.
        unsafe { lb.launch(lc) }.ctx("launching kasmina_hfwd")?;
        // The portable merge kernel reads the same partial layout.
        self.merge_fwd_partials(&k.fwd_merge, layer, g.layout())
    }

    /// Backward on the Hopper kernels (configuration tuned on first use of the key).
    pub(super) fn hopper_backward(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        gt: &CudaTensor,
        dx: &mut CudaTensor,
    ) -> CudaResult<()> {
        let cfg = self.hopper_config(layer, x.dtype, x.rows, true, &mut |layer, cfg| {
            self.hopper_backward_with(layer, x, gt, dx, cfg)
        })?;
        self.hopper_backward_with(layer, x, gt, dx, cfg)
    }

    fn hopper_backward_with(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        gt: &CudaTensor,
        dx: &mut CudaTensor,
        cfg: HopperConfig,
    ) -> CudaResult<()> {
        let k = self.hopper_kernels(x.dtype)?;
        let g = HGeo::new(cfg, x.dtype, x.rows, layer.h, layer.c, layer.s);
        let tmx = self.tmap(x, cfg, g.tw)?;
        let tmg = self.tmap(gt, cfg, g.tw)?;
        let tmdx = self.tmap(dx, cfg, g.tw)?;
        let any_active = layer.any_active();
        let direct = self.hopper_direct(layer, true);
        let (name, f) = match (self.hopper_uniform(layer, true), any_active) {
            (true, false) if direct => ("bwdu_direct", &k.bwdu_direct),
            (true, true) => ("bwdu", &k.bwdu),
            (true, false) => ("bwdu_identity", &k.bwdu_identity),
            (false, true) => ("bwd", &k.bwd),
            (false, false) => ("bwd_identity", &k.bwd_identity),
        };
        // Tiles per stage: G, X and dX staging; the direct identity kernel only G.
        let tiles = if direct { 1 } else { 3 };
        let smem = smem_bytes(tiles, g.tw, cfg.box_rows, x.dtype);
        let lc = self.hopper_launch_config((x.dtype, name, f), g.units, smem, k.max_smem)?;
        let pbytes = if any_active { g.n_rg as usize * layer.h * 3 * 4 } else { 16 };
        let (b, h, c, r, br, tw, segs, nt, nu) =
            (x.rows as u64, layer.h as u32, layer.c as u32, cfg.rows, cfg.box_rows, g.tw, g.segs, g.n_tiles, g.units);
        {
            let gpart = layer.gpart.ensure(&self.stream, g.slots() * 4)?;
            let ppart = layer.ppart.ensure(&self.stream, pbytes)?;
            let mut lb = self.stream.launch_builder(f);
            lb.arg(&tmx)
                .arg(&tmg)
                .arg(&tmdx)
                .arg(&*x.buf)
                .arg(&*gt.buf)
                .arg(&b)
                .arg(&h)
                .arg(&c)
                .arg(&r)
                .arg(&br)
                .arg(&tw)
                .arg(&layer.consts)
                .arg(&layer.colc)
                .arg(&layer.coef)
                .arg(gpart)
                .arg(ppart)
                .arg(&segs)
                .arg(&nt)
                .arg(&nu);
            // SAFETY: the arguments match kasmina_hbwd's parameters; the maps describe x, g and dx
            // ([B, H]); gpart holds the geometry's slots, ppart n_rg*H*3 floats when a seed is active.
            unsafe { lb.launch(lc) }.ctx("launching kasmina_hbwd")?;
        }
        self.sum_bwd_partials(&k.bwd_colsum, Some(&k.bwd_finalize), layer, g.layout())
    }
}

// Keeps the accumulator type in view for the save/restore above (its size is what is copied).
const _: () = assert!(std::mem::size_of::<Acc>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        assert_eq!(CudaPath::parse("Hopper"), Some(CudaPath::Hopper));
        assert_eq!(CudaPath::parse(" portable "), Some(CudaPath::Portable));
        assert_eq!(CudaPath::parse("auto"), Some(CudaPath::Auto));
        assert_eq!(CudaPath::parse("tma"), None);
        assert_eq!(CudaPath::Hopper.name(), "hopper");
    }

    /// Auto's keys include the operation, so the family chosen for a dormant layer is never
    /// reused for a mixed layer of the same shape: every kernel set has its own key.
    #[test]
    fn auto_keys_separate_every_kernel_set() {
        let mut ops = std::collections::HashSet::new();
        for backward in [false, true] {
            for active in [false, true] {
                for portable in ["forward", "forward-uniform", "backward-uniform-typed"] {
                    for uniform in [false, true] {
                        assert!(ops.insert(path_op(portable, &hopper_op(backward, uniform, active))));
                    }
                }
            }
        }
        assert_ne!(hopper_op(true, false, false), hopper_op(true, false, true));
        assert_ne!(hopper_op(false, false, true), hopper_op(true, false, true));
        let dormant: Key = (path_op("backward-identity", &hopper_op(true, false, false)), DType::F32, 16384, 8192);
        let mixed: Key = (path_op("backward", &hopper_op(true, false, true)), DType::F32, 16384, 8192);
        assert_ne!(dormant, mixed);
    }

    /// Auto times portable then Hopper through the tuner, the Hopper time scaled by the margin:
    /// the tuner's pick is exactly `hopper_wins`, and a tie keeps portable.
    #[test]
    fn auto_picks_hopper_only_when_clearly_faster() {
        use crate::autotune::{TuneMode, Tuner};
        let cands = [KernelConfig::new(0, 0, 0), KernelConfig::new(0, 0, 1)];
        for (p, h) in [(1.0, 0.5), (1.0, 0.99), (1.0, 1.0), (1.0, 3.0), (0.2, 0.1), (2.0, 1.95), (2.0, 1.9)] {
            let key =
                TuneKey::new("Fake", (9, 0), &path_op("backward", "hopper-backward"), "f32", "b1-h1", "src", &cands);
            let mut t = Tuner::new(None, TuneMode::On);
            let (c, _) = t
                .get_or_tune(&key, &cands, cands[0], &mut |c| -> Result<f64, String> {
                    Ok(if c.vec == 1 { h * HOPPER_MARGIN } else { p })
                })
                .unwrap();
            assert_eq!(c.vec == 1, hopper_wins(p, h), "portable {p} ms, hopper {h} ms");
        }
        assert!(!hopper_wins(1.0, 1.0));
        assert!(!hopper_wins(1.0, 0.99));
        assert!(hopper_wins(1.0, 0.9));
        assert!(!hopper_wins(1.0, f64::NAN));
    }

    #[test]
    fn unsupported_shapes_have_reasons() {
        assert!(hopper_unsupported_reason((8, 0), DType::F32, 16, 1024).unwrap().contains("9.0"));
        assert!(hopper_unsupported_reason((9, 0), DType::F32, 16, 771).unwrap().contains("16"));
        assert!(hopper_unsupported_reason((9, 0), DType::BF16, 16, 12).is_some());
        assert!(hopper_unsupported_reason((9, 0), DType::BF16, 16, 16).is_none());
        assert!(hopper_unsupported_reason((9, 0), DType::F32, 16, 4).is_none());
        assert!(hopper_unsupported_reason((9, 0), DType::F16, 1 << 31, 8).is_some());
    }

    #[test]
    fn tiles_are_power_of_two_vectors_within_a_box() {
        assert_eq!(tile_cols(DType::F32, 8192), 256);
        assert_eq!(tile_cols(DType::BF16, 8192), 256);
        assert_eq!(tile_cols(DType::F32, 12), 16);
        assert_eq!(tile_cols(DType::F32, 4), 4);
        assert_eq!(tile_cols(DType::BF16, 768), 256);
        assert_eq!(tile_cols(DType::F16, 24), 32);
        for dt in DType::ALL {
            for h in [4usize, 8, 16, 24, 48, 64, 200, 512, 768, 4096, 8200] {
                if hopper_unsupported_reason((9, 0), dt, 1, h).is_some() {
                    continue;
                }
                let tw = tile_cols(dt, h);
                let lanes = tw / hopper_vec(dt);
                assert!(lanes.is_power_of_two() && lanes <= CONSUMERS, "{dt} {h}");
                let spec = TensorMapSpec::dense(dt, 1000, h as u64, 16, tw);
                assert_eq!(spec.validate(0), Ok(()), "{dt} {h}");
            }
        }
    }

    #[test]
    fn candidates_fit_shared_memory_and_units_hold_whole_boxes() {
        for dt in DType::ALL {
            for h in [16usize, 768, 8192] {
                let cands = hopper_candidates(dt, 16384, h, 227 * 1024);
                assert!(!cands.is_empty());
                for c in cands.iter().chain([hopper_default(dt, h)].iter()) {
                    assert!(c.rows.is_multiple_of(c.box_rows) && c.rows <= 4096, "{c:?}");
                    assert!((1..=256).contains(&c.box_rows));
                    assert!(smem_bytes(3, tile_cols(dt, h), c.box_rows, dt) <= 227 * 1024);
                    assert_eq!(HopperConfig::from_tuner(c.to_tuner(dt)), *c);
                }
            }
        }
    }

    /// The Hopper module compiles with NVRTC for sm_90a wherever libnvrtc is (no GPU needed).
    #[test]
    fn hopper_module_compiles_with_nvrtc_when_present() {
        // SAFETY: only tries to dlopen libnvrtc by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc not found");
            return;
        }
        for dtype in DType::ALL {
            let src = ModuleSpec::hopper(dtype).ptx().unwrap_or_else(|e| panic!("{dtype}: {e}"));
            assert!(src.contains(".target sm_90a"), "{dtype}");
            for k in [
                "kasmina_hfwd",
                "kasmina_hfwd_identity",
                "kasmina_hfwdu",
                "kasmina_hfwdu_identity",
                "kasmina_hbwd",
                "kasmina_hbwd_identity",
                "kasmina_hbwdu",
                "kasmina_hbwdu_identity",
                "kasmina_hfwdu_identity_direct",
                "kasmina_hbwdu_identity_direct",
            ] {
                assert!(src.contains(&format!(".entry {k}(")), "{dtype} lacks {k}");
            }
            for insn in [
                "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes",
                "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group",
                "mbarrier.try_wait.parity",
                "mbarrier.arrive.expect_tx",
                "fence.proxy.async.shared::cta",
                "cp.async.bulk.wait_group.read",
            ] {
                assert!(src.contains(insn), "{dtype}: no {insn}");
            }
            // The portable merge kernels this path launches, with the parameter counts it passes.
            for (k, n) in [
                ("kasmina_fwd_merge", 8),
                ("kasmina_bwd_colsum", 6),
                ("kasmina_bwd_finalize", 13),
                ("kasmina_hfwd", 17),
                ("kasmina_hfwdu", 17),
                ("kasmina_hbwd", 19),
                ("kasmina_hbwdu", 19),
                ("kasmina_hfwdu_identity_direct", 17),
                ("kasmina_hbwdu_identity_direct", 19),
            ] {
                let start = src.find(&format!(".entry {k}(")).unwrap_or_else(|| panic!("{dtype} lacks {k}"));
                let end = start + src[start..].find(')').unwrap_or(0);
                let params = src[start..end].matches(".param").count();
                assert_eq!(params, n, "{dtype}: {k} takes {params} parameters, the Hopper path passes {n}");
            }
        }
    }
}
