//! The CUDA C source, its NVRTC compilation and the module caches.
//!
//! `kernels/kasmina.cu` is compiled to machine code (CUBIN) once per (architecture, dtype,
//! vector width) and machine: [`ModuleSpec::cubin`] keeps it in a process-wide map (a second
//! backend or layer does not compile again) and in the disk cache ([`crate::cache`]: a later
//! process loads it instead of compiling). Each module holds the fused kernels of one dtype
//! and vector width plus the small merge kernels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use std::ffi::CString;

use cudarc::nvrtc::Ptx;
use cudarc::nvrtc::result as nvrtc_result;
use kasmina_core::DType;

use crate::autotune::DEFAULT_UNROLL;
use crate::cache::{CacheKey, CacheLocation, EntryError};
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

/// The source's dtype macro (`-DKASMINA_DT=...`) of `dtype`.
pub(crate) fn dtype_macro(dtype: DType) -> &'static str {
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

/// One kernel module to compile: its source, name (which says its dtype and vector width),
/// target architecture and NVRTC options (every define included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The module's name in NVRTC's messages and the kernel cache (`kasmina_f32_v4.cu`).
    pub name: String,
    source: &'static str,
    /// The architecture compiled for (`sm_90`).
    pub arch: &'static str,
    /// NVRTC options besides the architecture.
    pub options: Vec<String>,
}

impl ModuleSpec {
    /// A module of `source`.
    pub(crate) fn new(name: String, source: &'static str, arch: &'static str, options: Vec<String>) -> Self {
        Self { name, source, arch, options }
    }

    /// The portable module of one dtype and vector width (`kernels/plan.cu` and
    /// `kernels/kasmina.cu`).
    pub fn portable(arch: &'static str, dtype: DType, vec: u32) -> Self {
        let options =
            vec!["--std=c++17".into(), format!("-DKASMINA_DT={}", dtype_macro(dtype)), format!("-DKASMINA_V={vec}")];
        Self::new(format!("kasmina_{}_v{vec}.cu", dtype.name()), KERNEL_SOURCE, arch, options)
    }

    /// The parameter-plan module (`kernels/plan.cu`).
    pub fn plan(arch: &'static str) -> Self {
        Self::new("kasmina_plan.cu".into(), PLAN_SOURCE, arch, vec!["--std=c++17".into()])
    }

    /// The source NVRTC compiles.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The disk cache key of this compile with the NVRTC and driver of this process.
    pub fn cache_key(&self) -> CudaResult<CacheKey> {
        Ok(CacheKey::new(&self.name, self.source, self.arch, &self.options, nvrtc_version()?, driver_version()))
    }

    /// The module's PTX (a fresh compile, no cache): what the kernels compile to, for reading.
    pub fn ptx(&self) -> CudaResult<String> {
        let out = self.compile(false)?;
        Ok(out.ptx)
    }

    /// The module's machine code (CUBIN) for its architecture: from this process's memory,
    /// else from the disk `cache` (see [`crate::cache`]), else compiled by NVRTC now and stored
    /// there for later processes.
    pub fn cubin(&self, cache: &CacheLocation) -> CudaResult<Arc<Vec<u8>>> {
        // One slot per module: threads that need the same module wait for one compile.
        let slot = image_memory()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((self.name.clone(), self.arch))
            .or_default()
            .clone();
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cubin = Arc::new(self.load_or_compile(cache)?);
        *slot = Some(cubin.clone());
        Ok(cubin)
    }

    fn load_or_compile(&self, cache: &CacheLocation) -> CudaResult<Vec<u8>> {
        let dir = cache.kernel_dir();
        let key = self.cache_key()?;
        if let Some(dir) = &dir {
            match crate::cache::read_entry(dir, &key) {
                Ok(bytes) => {
                    tracing::debug!("{} for {}: loaded from the kernel cache {}", self.name, self.arch, dir.display());
                    return Ok(bytes);
                }
                Err(EntryError::Missing) => {}
                Err(EntryError::Unusable(why)) => tracing::warn!(
                    "ignoring the kernel cache entry {} ({why}); compiling it again",
                    dir.join(key.file_name()).display()
                ),
            }
        }
        let out = self.compile(true)?;
        let cubin = out.cubin.ok_or_else(|| CudaError::Compile {
            module: self.name.clone(),
            log: format!("NVRTC produced no machine code for {}", self.arch),
        })?;
        if let Some(dir) = &dir {
            match crate::cache::write_entry(dir, &key, &cubin) {
                Ok(path) => tracing::debug!("{} cached at {}", self.name, path.display()),
                Err(e) => tracing::warn!(
                    "cannot write the kernel cache in {} ({e}); later processes compile {} again",
                    dir.display(),
                    self.name
                ),
            }
        }
        Ok(cubin)
    }

    /// The image to load into a context (see [`ModuleSpec::cubin`]).
    pub(crate) fn image(&self, cache: &CacheLocation) -> CudaResult<Ptx> {
        Ok(Ptx::from_binary(self.cubin(cache)?.as_ref().clone()))
    }

    /// Compiles with NVRTC; with `cubin`, the machine code too. Reports the compile and its time
    /// through `tracing` (the command-line program shows them on a terminal).
    fn compile(&self, cubin: bool) -> CudaResult<Compiled> {
        nvrtc_present()?;
        let name = &self.name;
        let err = |log: String| CudaError::Compile { module: name.clone(), log };
        let src = CString::new(self.source).map_err(|_| err("the source holds a NUL byte".into()))?;
        let cname = CString::new(name.as_str()).map_err(|_| err("the name holds a NUL byte".into()))?;
        let mut options = vec![format!("--gpu-architecture={}", self.arch)];
        options.extend(self.options.iter().cloned());
        if options.iter().any(|o| o.contains('\0')) {
            return Err(err("an option holds a NUL byte".into()));
        }
        if cubin {
            tracing::info!(
                "compiling {name} for {} (first use on this machine; cached for later processes)",
                self.arch
            );
        }
        let start = std::time::Instant::now();
        let prog = nvrtc_result::create_program(&src, Some(&cname)).map_err(|e| err(e.to_string()))?;
        let prog = Program(prog);
        // SAFETY: `prog` was created above and is destroyed only by `Program`'s drop; the
        // options hold no NUL byte (checked above).
        if let Err(e) = unsafe { nvrtc_result::compile_program(prog.0, &options) } {
            // SAFETY: as above; the log is NUL-terminated text NVRTC wrote.
            let log = unsafe { nvrtc_result::get_program_log(prog.0) }
                .map(|l| l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect::<Vec<u8>>())
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            return Err(err(format!("{e}: {log}")));
        }
        // SAFETY: as above, after a successful compile.
        let ptx = unsafe { nvrtc_result::get_ptx(prog.0) }.map_err(|e| err(e.to_string()))?;
        let ptx = String::from_utf8_lossy(&ptx.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect::<Vec<u8>>())
            .into_owned();
        let cubin = if cubin { Some(prog.cubin().map_err(|e| err(e.to_string()))?) } else { None };
        if cubin.is_some() {
            tracing::info!("compiled {name} in {:.1} s", start.elapsed().as_secs_f64());
        }
        Ok(Compiled { ptx, cubin })
    }
}

/// What one NVRTC compile gave.
struct Compiled {
    ptx: String,
    cubin: Option<Vec<u8>>,
}

/// An NVRTC program, destroyed on drop.
struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Program {
    /// The compiled program's CUBIN.
    fn cubin(&self) -> Result<Vec<u8>, cudarc::nvrtc::result::NvrtcError> {
        let mut size = 0usize;
        // SAFETY: the program was compiled successfully; the size pointer is valid.
        unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(self.0, &mut size).result()? };
        let mut out = vec![0u8; size];
        // SAFETY: `out` holds the `size` bytes NVRTC reported.
        unsafe { cudarc::nvrtc::sys::nvrtcGetCUBIN(self.0, out.as_mut_ptr().cast()).result()? };
        Ok(out)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here.
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

/// Compiled modules of this process (CUBIN) by (module name, architecture); a slot is empty
/// while its module is being compiled (or after a failed compile).
type ImageMemory = Mutex<HashMap<(String, &'static str), Arc<Mutex<Option<Arc<Vec<u8>>>>>>>;

fn image_memory() -> &'static ImageMemory {
    static MEMORY: OnceLock<ImageMemory> = OnceLock::new();
    MEMORY.get_or_init(Default::default)
}

fn nvrtc_present() -> CudaResult<()> {
    // SAFETY: only tries to dlopen libnvrtc by its usual names; nothing is called yet.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Unavailable(
            "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit's NVRTC or add its lib folder \
             (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> CudaResult<(i32, i32)> {
    nvrtc_present()?;
    static VERSION: OnceLock<(i32, i32)> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(*v);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); both pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Unavailable(format!("NVRTC does not report its version: {e}")))?;
    Ok(*VERSION.get_or_init(|| (major, minor)))
}

/// The CUDA driver's version (`cuDriverGetVersion`, e.g. 13000), None without a driver.
pub fn driver_version() -> Option<i32> {
    static VERSION: OnceLock<Option<i32>> = OnceLock::new();
    *VERSION.get_or_init(|| {
        // SAFETY: only tries to dlopen libcuda by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return None;
        }
        let mut v = 0;
        // SAFETY: the driver library is loaded; the pointer is valid. cuDriverGetVersion
        // needs no cuInit.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
    })
}

/// Load stages of the warp-per-seed forward (`kasmina_fwdu_ws*`, `KASMINA_WS_STAGES` in the
/// source): each thread keeps its 16-byte vectors of two more row batches in flight through
/// `cp.async` into shared memory (sm_80 on, 16-byte vectors and the default unroll; other
/// launches load directly).
pub const WS_LOAD_STAGES: u32 = 3;

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
    pub(crate) fn load(ctx: &Arc<CudaContext>, arch: &'static str, cache: &CacheLocation) -> CudaResult<Self> {
        let image = ModuleSpec::plan(arch).image(cache)?;
        let module = ctx.load_module(image).ctx("loading the plan module")?;
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
    /// Seed-uniform forward with 8 rows in flight per thread (`KernelConfig::unroll == 8`).
    pub fwdu_u8: CudaFunction,
    /// Seed-uniform identity forward with 8 rows in flight per thread.
    pub fwdu_identity_u8: CudaFunction,
    /// Active seed-uniform forward with one seed per warp (C / V a power of two below 32).
    pub fwdu_ws: CudaFunction,
    /// `fwdu_ws` with 8 rows in flight per thread.
    pub fwdu_u8_ws: CudaFunction,
    /// Seed-uniform backward (active seeds) with one branch per blueprint type on finite rows.
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
    /// Loads one module into `ctx` (compiled, or taken from memory or the disk `cache`, see
    /// [`ModuleSpec::cubin`]).
    pub fn load(
        ctx: &Arc<CudaContext>,
        arch: &'static str,
        dtype: DType,
        vec: u32,
        cache: &CacheLocation,
    ) -> CudaResult<Self> {
        let image = ModuleSpec::portable(arch, dtype, vec).image(cache)?;
        let module = ctx.load_module(image).ctx("loading the kernel module")?;
        let f = |name: &str| module.load_function(name).ctx(&format!("loading kernel {name}"));
        let k = Self {
            fwd: f("kasmina_fwd")?,
            fwd_identity: f("kasmina_fwd_identity")?,
            bwd: f("kasmina_bwd")?,
            bwd_identity: f("kasmina_bwd_identity")?,
            fwdu: f("kasmina_fwdu")?,
            fwdu_identity: f("kasmina_fwdu_identity")?,
            fwdu_u8: f("kasmina_fwdu_u8")?,
            fwdu_identity_u8: f("kasmina_fwdu_identity_u8")?,
            fwdu_ws: f("kasmina_fwdu_ws")?,
            fwdu_u8_ws: f("kasmina_fwdu_u8_ws")?,
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
        // Staged loads need more than the default 48 KiB of dynamic shared memory.
        k.fwdu_ws
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                stage_layout_bytes(UNIFORM_MAX_THREADS, WS_LOAD_STAGES) as i32,
            )
            .ctx("raising the shared memory limit")?;
        Ok(k)
    }
}

/// Bytes of one statistics partial (`Partial` in `kasmina.cu`).
pub(crate) const PARTIAL_BYTES: u32 = 32;
/// Most threads per block of the seed-uniform kernels (their launch bounds).
pub(crate) const UNIFORM_MAX_THREADS: u32 = 256;

/// Dynamic shared memory of a warp-per-seed forward launch of `threads` threads that stages
/// its loads ([`WS_LOAD_STAGES`]): the per-thread partials, then the stage slots. `None` when
/// the launch loads directly (vectors other than 16 bytes, unroll 8, before sm_80).
pub(crate) fn staged_shared_bytes(threads: u32, vec_bytes: u32, unroll: u32, cc: (i32, i32)) -> Option<u32> {
    (vec_bytes == 16 && unroll == DEFAULT_UNROLL && cc.0 >= 8).then(|| stage_layout_bytes(threads, WS_LOAD_STAGES))
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

    fn nvrtc_here() -> bool {
        // SAFETY: only tries to dlopen libnvrtc by its usual names.
        let here = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        if !here {
            eprintln!("skipped: libnvrtc not found");
        }
        here
    }

    /// Compiles every module with NVRTC when the library is present (no GPU needed).
    #[test]
    fn every_module_compiles_with_nvrtc_when_present() {
        if !nvrtc_here() {
            return;
        }
        for dtype in DType::ALL {
            for &v in vector_widths(dtype) {
                let src = ModuleSpec::portable("sm_80", dtype, v).ptx().unwrap_or_else(|e| panic!("{dtype} v{v}: {e}"));
                for k in [
                    "kasmina_fwd",
                    "kasmina_bwd",
                    "kasmina_fwdu",
                    "kasmina_fwdu_identity",
                    "kasmina_fwdu_u8",
                    "kasmina_fwdu_identity_u8",
                    "kasmina_fwdu_ws",
                    "kasmina_fwdu_u8_ws",
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
        let plan = ModuleSpec::plan("sm_80").ptx().unwrap_or_else(|e| panic!("plan: {e}"));
        assert!(plan.contains(".entry kasmina_plan("), "the plan module lacks kasmina_plan");
    }

    /// The disk cache end to end with NVRTC (no GPU): a compile stores an entry, a new process
    /// (here: the process map emptied) loads it instead of compiling, and a corrupt entry is
    /// compiled again and replaced.
    #[test]
    fn compiled_modules_go_through_the_disk_cache() {
        if !nvrtc_here() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = CacheLocation::Path(dir.path().join("kernels"));
        // An architecture no other test of this process compiles the plan module for.
        let spec = ModuleSpec::plan("sm_86");
        let forget =
            || image_memory().lock().unwrap_or_else(|p| p.into_inner()).remove(&(spec.name.clone(), spec.arch));
        let first = spec.cubin(&cache).expect("compile");
        assert!(first.starts_with(b"\x7fELF"), "a CUBIN is an ELF image");
        let entry = dir.path().join("kernels").join(spec.cache_key().expect("key").file_name());
        let stored = std::fs::read(&entry).expect("the compile wrote its entry");
        // From the disk: the same bytes, and the entry is not rewritten.
        forget();
        let t0 = std::fs::metadata(&entry).and_then(|m| m.modified()).expect("mtime");
        assert_eq!(spec.cubin(&cache).expect("cached"), first);
        assert_eq!(std::fs::metadata(&entry).and_then(|m| m.modified()).expect("mtime"), t0);
        // A damaged entry is ignored, compiled again and replaced by a whole one.
        let mut bad = stored.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&entry, &bad).expect("damage");
        forget();
        assert_eq!(spec.cubin(&cache).expect("rebuilt"), first);
        assert_eq!(std::fs::read(&entry).expect("entry"), stored);
        // Off: nothing is written.
        let off = ModuleSpec::plan("sm_87");
        off.cubin(&CacheLocation::Off).expect("compile without a cache");
        assert_eq!(std::fs::read_dir(dir.path().join("kernels")).expect("list").count(), 1);
    }
}
