//! The CUDA C source, its NVRTC compilation and the per-process module cache.
//!
//! `kernels/kasmina.cu` is compiled once per (architecture, dtype, vector width)
//! and process: PTX is kept in a process-wide map, so a second backend on the
//! same kind of device (or a second layer) does not compile again. Each module
//! holds the two fused kernels of one dtype and vector width plus the small
//! merge kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
use kasmina_core::DType;

use crate::autotune::DEFAULT_UNROLL;
use crate::error::{CudaError, CudaResult, DriverContext};

/// The kernel source (SPEC 5 and 7), compiled at run time: the parameter plan's device code
/// (`kernels/plan.cu`, which the fused small forward calls) in front of `kernels/kasmina.cu`.
pub const KERNEL_SOURCE: &str = concat!(include_str!("kernels/plan.cu"), "\n", include_str!("kernels/kasmina.cu"));

/// The parameter-plan kernel's source (kernel constants from device-resident parameters).
pub const PLAN_SOURCE: &str = include_str!("kernels/plan.cu");

/// Vector widths the source instantiates for a dtype (elements per thread and load).
pub fn vector_widths(dtype: DType) -> &'static [u32] {
    match dtype {
        DType::F32 => &[4, 2, 1],
        DType::F16 | DType::BF16 => &[8, 4, 2, 1],
    }
}

/// The widest vector (16 bytes when possible) whose width divides `h`, so rows stay aligned.
pub fn widest_vector(dtype: DType, h: usize) -> u32 {
    vector_widths(dtype).iter().copied().find(|v| h.is_multiple_of(*v as usize)).unwrap_or(1)
}

fn dtype_macro(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "DF32",
        DType::F16 => "DF16",
        DType::BF16 => "DBF16",
    }
}

/// The NVRTC architecture name for a compute capability.
pub fn arch_name(cc: (i32, i32)) -> &'static str {
    match cc {
        (7, 0) => "sm_70",
        (7, 2) => "sm_72",
        (7, 5) => "sm_75",
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (9, 0) => "sm_90",
        (10, 0) => "sm_100",
        (10, 3) => "sm_103",
        (12, 0) => "sm_120",
        (major, minor) => {
            // Unknown devices are rare and named once per process: leaking the name is fine.
            static OTHER: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
            let mut m = OTHER.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
            m.entry((major, minor)).or_insert_with(|| Box::leak(format!("sm_{major}{minor}").into_boxed_str()))
        }
    }
}

type PtxKey = (&'static str, DType, u32);

fn ptx_cache() -> &'static Mutex<HashMap<PtxKey, Ptx>> {
    static CACHE: OnceLock<Mutex<HashMap<PtxKey, Ptx>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Build switches of the portable module read from the environment, for measuring kernel
/// variants without a rebuild: `KASMINA_CUDA_STREAMING=on` compiles the seed-uniform forward with
/// evict-first (`.cs`) activation loads and stores, `KASMINA_CUDA_FWDU_MINB=<n>` sets the active
/// seed-uniform forward's minimum blocks per SM (its `__launch_bounds__`, 3 by default),
/// `KASMINA_CUDA_PREFETCH=<n>` has it prefetch into L2 the rows `n` load batches ahead,
/// `KASMINA_CUDA_STAGES=<n>` (see [`load_stages`]) stages its loads through shared memory,
/// `KASMINA_CUDA_WS_STAGES=<n>` (see [`ws_load_stages`]) sets the warp-per-seed forward's stages,
/// `KASMINA_CUDA_ROWS_FIRST=on` orders its blocks row groups first instead of tiles first.
fn experiment_defines() -> Vec<String> {
    let mut out = Vec::new();
    if crate::backend::env_on("KASMINA_CUDA_STREAMING") {
        out.push("-DKASMINA_CS".to_string());
    }
    if let Some(n) = std::env::var("KASMINA_CUDA_PREFETCH").ok().and_then(|v| v.parse::<u32>().ok()) {
        out.push(format!("-DKASMINA_PF={}", n.clamp(1, 8)));
    }
    let st = load_stages();
    if st >= 2 {
        out.push(format!("-DKASMINA_STAGES={st}"));
    }
    out.push(format!("-DKASMINA_WS_STAGES={}", ws_load_stages()));
    if rows_first() {
        out.push("-DKASMINA_ROWS_FIRST".to_string());
    }
    if let Some(n) = std::env::var("KASMINA_CUDA_FWDU_MINB").ok().and_then(|v| v.parse::<u32>().ok()) {
        out.push(format!("-DKASMINA_FWDU_MINB={}", n.clamp(1, 8)));
    }
    out
}

/// Load stages of the seed-uniform forward (`KASMINA_CUDA_STAGES=<n>`, 2 to 4; 0 when unset or
/// off): with n stages each thread keeps its 16-byte vectors of n - 1 row batches in flight
/// through `cp.async` into shared memory while it processes the current one (sm_80 on, 16-byte
/// vectors and the default unroll only; other launches load directly).
///
/// Read once per process, like the PTX cache it shapes: the launches size their shared memory
/// by the same value the modules were compiled with, and no call reads the environment.
pub fn load_stages() -> u32 {
    static STAGES: OnceLock<u32> = OnceLock::new();
    *STAGES.get_or_init(|| stages_from_env("KASMINA_CUDA_STAGES", 0))
}

/// A stage count from environment variable `name`: 2 to 4 (larger values give 4), 0 for 0 or 1,
/// `default` when unset or unreadable.
fn stages_from_env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(default, |n| if n >= 2 { n.min(4) } else { 0 })
}

/// Load stages of the warp-per-seed forward (`kasmina_fwdu_ws*`, see [`load_stages`]): 3 by
/// default, `KASMINA_CUDA_WS_STAGES=<n>` (2 to 4) for another count, 0 or 1 for direct loads.
/// On the H100 the staged loads make the large mixed forward faster than direct loads (most
/// for bf16, C = 64); the identity forward gains nothing from staging, so
/// `KASMINA_CUDA_STAGES` stays off by default for the other kernels.
///
/// Read once per process (see [`load_stages`]).
pub fn ws_load_stages() -> u32 {
    static STAGES: OnceLock<u32> = OnceLock::new();
    *STAGES.get_or_init(|| stages_from_env("KASMINA_CUDA_WS_STAGES", 3))
}

/// Whether the seed-uniform forward's blocks go row groups first (`KASMINA_CUDA_ROWS_FIRST=on`,
/// grid (row groups, tiles)) instead of tiles first (grid (tiles, row groups), the default:
/// the blocks resident at once then cover whole rows).
///
/// Read once per process (see [`load_stages`]).
pub fn rows_first() -> bool {
    static ROWS_FIRST: OnceLock<bool> = OnceLock::new();
    *ROWS_FIRST.get_or_init(|| crate::backend::env_on("KASMINA_CUDA_ROWS_FIRST"))
}

/// Compiles (or takes from the process cache) the PTX of one module.
pub fn compile(arch: &'static str, dtype: DType, vec: u32) -> CudaResult<Ptx> {
    let key = (arch, dtype, vec);
    if let Some(p) = ptx_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    let options = ["--std=c++17".into(), format!("-DKASMINA_DT={}", dtype_macro(dtype)), format!("-DKASMINA_V={vec}")]
        .into_iter()
        .chain(experiment_defines())
        .collect();
    let ptx = nvrtc(KERNEL_SOURCE, format!("kasmina_{}_v{vec}.cu", dtype.name()), arch, options)?;
    ptx_cache().lock().unwrap_or_else(|p| p.into_inner()).insert(key, ptx.clone());
    Ok(ptx)
}

/// Compiles `source` (named `name` in NVRTC's messages) for `arch` with `options`; reports the
/// compile and its time through `tracing` (the command-line program shows them on a terminal).
pub(crate) fn nvrtc(source: &str, name: String, arch: &'static str, options: Vec<String>) -> CudaResult<Ptx> {
    // SAFETY: only tries to dlopen libnvrtc by its usual names; nothing is called yet.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::Unavailable(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit's NVRTC or add its lib folder \
             (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let opts = CompileOptions { arch: Some(arch), options, name: Some(name.clone()), ..Default::default() };
    tracing::info!("compiling {name} for {arch} (first use in this process)");
    let start = std::time::Instant::now();
    let ptx = compile_ptx_with_opts(source, opts).map_err(|e| CudaError::Compile {
        module: name.clone(),
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })?;
    tracing::info!("compiled {name} in {:.1} s", start.elapsed().as_secs_f64());
    Ok(ptx)
}

/// The parameter-plan kernel (`kernels/plan.cu`), loaded into one context.
#[derive(Debug)]
pub(crate) struct PlanKernel {
    /// Keeps the module loaded.
    _module: Arc<CudaModule>,
    /// `kasmina_plan`: one block per seed.
    pub plan: CudaFunction,
}

impl PlanKernel {
    /// Compiles `kernels/plan.cu` for `arch` and loads it into `ctx`.
    pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &'static str) -> CudaResult<Self> {
        let ptx = nvrtc(PLAN_SOURCE, "kasmina_plan.cu".into(), arch, vec!["--std=c++17".into()])?;
        let module = ctx.load_module(ptx).ctx("loading the plan module")?;
        let plan = module.load_function("kasmina_plan").ctx("loading kernel kasmina_plan")?;
        Ok(Self { _module: module, plan })
    }
}

/// The functions of one loaded module.
#[derive(Debug)]
pub struct Kernels {
    /// Keeps the module loaded.
    _module: Arc<CudaModule>,
    /// Fused forward: output and per-block statistics partials.
    pub fwd: CudaFunction,
    /// The forward when every seed is identity (statistics and a copy).
    pub fwd_identity: CudaFunction,
    /// Fused backward: dx, per-block Σg² and per-column parameter partials.
    pub bwd: CudaFunction,
    /// The backward when every seed is identity (dx = g and Σg²).
    pub bwd_identity: CudaFunction,
    /// Seed-uniform forward (C % V == 0: a thread's columns lie in one seed).
    pub fwdu: CudaFunction,
    /// Seed-uniform identity forward.
    pub fwdu_identity: CudaFunction,
    /// Seed-uniform forward that also merges the statistics (small calls).
    pub fwdu_fused: CudaFunction,
    /// Seed-uniform identity forward that also merges the statistics (small calls).
    pub fwdu_identity_fused: CudaFunction,
    /// Seed-uniform forward with 8 rows in flight per thread (`KernelConfig::unroll == 8`).
    pub fwdu_u8: CudaFunction,
    /// Seed-uniform identity forward with 8 rows in flight per thread.
    pub fwdu_identity_u8: CudaFunction,
    /// `fwdu_u8` that also merges the statistics (small calls).
    pub fwdu_u8_fused: CudaFunction,
    /// Active seed-uniform forward with one seed per warp (C / V a power of two below 32).
    pub fwdu_ws: CudaFunction,
    /// `fwdu_ws` with 8 rows in flight per thread.
    pub fwdu_u8_ws: CudaFunction,
    /// `fwdu_identity_u8` that also merges the statistics (small calls).
    pub fwdu_identity_u8_fused: CudaFunction,
    /// Seed-uniform backward.
    pub bwdu: CudaFunction,
    /// Seed-uniform backward with one branch per blueprint type on finite rows
    /// (the default; `KASMINA_CUDA_BWD_TYPED=off` takes `bwdu`; same bits).
    pub bwdu_typed: CudaFunction,
    /// Seed-uniform identity backward.
    pub bwdu_identity: CudaFunction,
    /// Merges forward partials into the accumulators (f64, fixed order).
    pub fwd_merge: CudaFunction,
    /// A small forward in one launch, one block per seed.
    pub fwd_seed: CudaFunction,
    /// `fwd_seed` that first derives each seed's constants from the caller's parameters.
    pub fwd_seed_plan: CudaFunction,
    /// A small backward in one launch, one block per seed (dx and the parameter gradients).
    pub bwd_seed: CudaFunction,
    /// Sums backward parameter partials per column.
    pub bwd_colsum: CudaFunction,
    /// Parameter gradients, grad_norm and the Σg² accumulator.
    pub bwd_finalize: CudaFunction,
}

impl Kernels {
    /// Compiles (or reuses the PTX of) and loads one module into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>, arch: &'static str, dtype: DType, vec: u32) -> CudaResult<Self> {
        let ptx = compile(arch, dtype, vec)?;
        let module = ctx.load_module(ptx).ctx("loading the kernel module")?;
        let f = |name: &str| module.load_function(name).ctx(&format!("loading kernel {name}"));
        let k = Self {
            fwd: f("kasmina_fwd")?,
            fwd_identity: f("kasmina_fwd_identity")?,
            bwd: f("kasmina_bwd")?,
            bwd_identity: f("kasmina_bwd_identity")?,
            fwdu: f("kasmina_fwdu")?,
            fwdu_identity: f("kasmina_fwdu_identity")?,
            fwdu_fused: f("kasmina_fwdu_fused")?,
            fwdu_identity_fused: f("kasmina_fwdu_identity_fused")?,
            fwdu_u8: f("kasmina_fwdu_u8")?,
            fwdu_identity_u8: f("kasmina_fwdu_identity_u8")?,
            fwdu_u8_fused: f("kasmina_fwdu_u8_fused")?,
            fwdu_identity_u8_fused: f("kasmina_fwdu_identity_u8_fused")?,
            fwdu_ws: f("kasmina_fwdu_ws")?,
            fwdu_u8_ws: f("kasmina_fwdu_u8_ws")?,
            bwdu: f("kasmina_bwdu")?,
            bwdu_identity: f("kasmina_bwdu_identity")?,
            bwdu_typed: f("kasmina_bwdu_typed")?,
            fwd_merge: f("kasmina_fwd_merge")?,
            fwd_seed: f("kasmina_fwd_seed")?,
            fwd_seed_plan: f("kasmina_fwd_seed_plan")?,
            bwd_seed: f("kasmina_bwd_seed")?,
            bwd_colsum: f("kasmina_bwd_colsum")?,
            bwd_finalize: f("kasmina_bwd_finalize")?,
            _module: module,
        };
        // Staged loads may need more than the default 48 KiB of dynamic shared memory.
        let raise = |funcs: &[&CudaFunction], st: u32| -> CudaResult<()> {
            if st < 2 {
                return Ok(());
            }
            let bytes = stage_layout_bytes(UNIFORM_MAX_THREADS, st);
            for func in funcs {
                func.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .ctx("raising the shared memory limit")?;
            }
            Ok(())
        };
        raise(&[&k.fwdu, &k.fwdu_identity, &k.fwdu_fused, &k.fwdu_identity_fused], load_stages())?;
        raise(&[&k.fwdu_ws], ws_load_stages())?;
        Ok(k)
    }
}

/// Bytes of one statistics partial (`Partial` in `kasmina.cu`).
pub(crate) const PARTIAL_BYTES: u32 = 32;
/// Most threads per block of the seed-uniform kernels (their launch bounds).
pub(crate) const UNIFORM_MAX_THREADS: u32 = 256;

/// Dynamic shared memory of a seed-uniform forward launch of `threads` threads that stages its
/// loads (see [`load_stages`]; [`ws_load_stages`] for the warp-per-seed kernels, `ws`): the
/// per-thread partials, then the stage slots. `None` when the launch loads directly (no stages,
/// vectors other than 16 bytes, unroll 8, before sm_80).
pub(crate) fn staged_shared_bytes(threads: u32, vec_bytes: u32, unroll: u32, cc: (i32, i32), ws: bool) -> Option<u32> {
    let st = if ws { ws_load_stages() } else { load_stages() };
    (st >= 2 && vec_bytes == 16 && unroll == DEFAULT_UNROLL && cc.0 >= 8).then(|| stage_layout_bytes(threads, st))
}

/// Shared memory of `threads` threads with `st` load stages: one partial per thread, then `st`
/// slots of DEFAULT_UNROLL 16-byte vectors per thread (the layout `fwdu_impl` reads). Both the
/// modules' shared-memory limit and each staged launch are sized by it.
fn stage_layout_bytes(threads: u32, st: u32) -> u32 {
    threads * (PARTIAL_BYTES + 16 * DEFAULT_UNROLL * st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widest_vector_divides_the_row() {
        assert_eq!(widest_vector(DType::F32, 8192), 4);
        assert_eq!(widest_vector(DType::F32, 6), 2);
        assert_eq!(widest_vector(DType::F32, 771), 1);
        assert_eq!(widest_vector(DType::BF16, 768), 8);
        assert_eq!(widest_vector(DType::F16, 12), 4);
        assert_eq!(widest_vector(DType::F16, 3), 1);
    }

    #[test]
    fn arch_names_cover_known_and_unknown_devices() {
        assert_eq!(arch_name((9, 0)), "sm_90");
        assert_eq!(arch_name((11, 7)), "sm_117");
        assert_eq!(arch_name((11, 7)), "sm_117");
    }

    /// Compiles every module with NVRTC when the library is present (no GPU needed).
    #[test]
    fn every_module_compiles_with_nvrtc_when_present() {
        // SAFETY: only tries to dlopen libnvrtc by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc not found");
            return;
        }
        for dtype in DType::ALL {
            for &v in vector_widths(dtype) {
                let ptx = compile("sm_80", dtype, v).unwrap_or_else(|e| panic!("{dtype} v{v}: {e}"));
                let src = ptx.to_src();
                for k in [
                    "kasmina_fwd",
                    "kasmina_bwd",
                    "kasmina_fwdu",
                    "kasmina_fwdu_identity",
                    "kasmina_fwdu_fused",
                    "kasmina_fwdu_identity_fused",
                    "kasmina_fwdu_u8",
                    "kasmina_fwdu_identity_u8",
                    "kasmina_fwdu_ws",
                    "kasmina_fwdu_u8_ws",
                    "kasmina_bwdu",
                    "kasmina_bwdu_identity",
                    "kasmina_bwdu_typed",
                    "kasmina_fwd_merge",
                    "kasmina_fwd_seed",
                    "kasmina_fwd_seed_plan",
                    "kasmina_bwd_seed",
                    "kasmina_plan",
                    "kasmina_bwd_colsum",
                    "kasmina_bwd_finalize",
                ] {
                    assert!(src.contains(&format!(".entry {k}(")), "{dtype} v{v} lacks {k}");
                }
            }
        }
        let plan = nvrtc(PLAN_SOURCE, "kasmina_plan.cu".into(), "sm_80", vec!["--std=c++17".into()])
            .unwrap_or_else(|e| panic!("plan: {e}"));
        assert!(plan.to_src().contains(".entry kasmina_plan("), "the plan module lacks kasmina_plan");
    }
}
