//! [`CudaBackend`]: the [`Backend`] trait on one NVIDIA GPU.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use kasmina_core::checksum::{RawHeader, RawSeed, crc32_of_seeds};
use kasmina_core::plan::{KernelSeed, kernel_crc};
use kasmina_core::{
    Accumulators, Backend, DType, DeviceInfo, Error, HostData, HostDataMut, LayerState, Moments, ParamGrads,
    StateChange,
};

use crate::autotune::{DEFAULT_UNROLL, KernelConfig, TuneKey, Tuner, shape_bucket};
use crate::cache::CacheLocation;
use crate::error::{CudaError, CudaResult, DriverContext};
use crate::kernels::{KERNEL_SOURCE, Kernels, ModuleSpec, PlanKernel, arch_name, vector_widths, widest_vector};
use crate::layer::{
    Acc, ColCoef, CudaLayer, GraphKey, Scratch, SeedConst, SeedDerived, SeedRecord, derive, plan_of, seed_const,
    seed_record,
};
use crate::options::CudaOptions;

// ---- Hopper path: TMA + warp-specialized kernels, see hopper.rs.
#[path = "hopper.rs"]
pub mod hopper;
pub use hopper::CudaPath;
// ---- end Hopper path

type Result<T> = std::result::Result<T, Error>;

/// Size of the kernels' `Partial` struct.
const PARTIAL_BYTES: usize = crate::kernels::PARTIAL_BYTES as usize;
/// Largest tile (threads x vector width): keeps the forward's shared memory at 32 KiB.
const MAX_TILE: u32 = 1024;
/// Rows per block are capped so per-lane counters fit 16 bits.
const MAX_ROWS_PER_BLOCK: u32 = 4096;
/// The tuner's name for the active seed-uniform forward where one seed per warp may run.
const OP_FORWARD_WS: &str = "forward-uniform-ws";
/// Calls moving at most this many bytes per tensor replay a captured CUDA graph:
/// there launch latency, not bandwidth, sets the time.
const GRAPH_MAX_BYTES: usize = 8 << 20;
/// Captured graphs kept per layer before the cache is cleared.
const MAX_GRAPHS: usize = 32;
/// Most threads per block of the seed-uniform kernels (their `__launch_bounds__`).
const UNIFORM_MAX_THREADS: u32 = crate::kernels::UNIFORM_MAX_THREADS;
/// Forward calls with at most this many bytes of activation per seed run one block per seed
/// (`kasmina_fwd_seed`): output, statistics and their merge in one launch.
const SEEDWISE_MAX_BYTES: usize = 32 << 10;
/// Small forwards that take the caller's parameters ([`CudaBackend::forward_with_params`]) derive
/// the seed constants inside the forward's blocks up to this chunk size (shared memory: C * 20
/// bytes); larger chunks launch the parameter plan first.
const PLAN_FUSE_MAX_C: usize = 1024;
/// Small backwards (within [`SEEDWISE_MAX_BYTES`] per seed) run one block per seed
/// (`kasmina_bwd_seed`) up to this chunk size (shared memory: C * 4 * L bytes for L row lanes).
const SEED_BWD_MAX_C: usize = 512;
/// Threads of a one-block-per-seed backward.
const SEED_BWD_THREADS: u32 = 256;

/// (operation, dtype, rows, cols, chunk size) of a picked launch configuration (the chunk size
/// sets the warp-per-seed forward's tiles, hence its candidates).
type PickKey = (&'static str, DType, usize, usize, usize);

/// The loaded portable modules by (dtype, vector width).
type Modules = HashMap<(DType, u32), Arc<Kernels>>;

/// A device tensor `[rows, cols]` in one dtype: memory the backend allocated, or
/// memory it borrows from the caller ([`CudaBackend::borrow_tensor`]), which it
/// never frees.
#[derive(Debug)]
pub struct CudaTensor {
    /// Dropped by hand: freed when owned, released untouched when borrowed.
    buf: std::mem::ManuallyDrop<CudaSlice<u8>>,
    borrowed: bool,
    rows: usize,
    cols: usize,
    dtype: DType,
}

impl Drop for CudaTensor {
    fn drop(&mut self) {
        // SAFETY: `buf` is taken exactly once, here, and never used again.
        let buf = unsafe { std::mem::ManuallyDrop::take(&mut self.buf) };
        if self.borrowed {
            // The caller owns the memory: forget the handle without freeing it.
            let _ = buf.leak();
        } else {
            drop(buf);
        }
    }
}

impl CudaTensor {
    /// Whether the memory belongs to the caller (see [`CudaBackend::borrow_tensor`]).
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }

    /// Bytes the tensor's elements occupy.
    pub fn num_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype.size_bytes()
    }
}

kasmina_core::impl_device_tensor!(CudaTensor);

/// The Kasmina layer on one NVIDIA GPU, through the CUDA driver API (loaded at
/// run time) and kernels compiled by NVRTC for the device's architecture.
///
/// All work goes to one stream, in order; tensors and layer state stay on the
/// device between calls. The stream is the backend's own, or a caller's
/// ([`CudaBackend::set_stream`], e.g. PyTorch's current stream). Clones are cheap
/// and share the context, the compiled modules and the autotuner; each clone has
/// its own stream setting. The fused kernels' launch configuration is autotuned
/// once per key and cached on disk (see [`crate::autotune`]).
///
/// Everything a user can set is a field of [`CudaOptions`] ([`CudaBackend::with_options`]);
/// the backend reads no environment variable.
#[derive(Clone)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Whether `stream` belongs to the caller ([`CudaBackend::set_stream`]): no graph of
    /// the backend's own is captured on it (the caller may be capturing one).
    borrowed_stream: bool,
    ordinal: usize,
    name: String,
    cc: (i32, i32),
    arch: &'static str,
    sms: u32,
    modules: Arc<Mutex<Modules>>,
    /// The parameter-plan kernel (compiled on first use, see [`CudaBackend::use_params`]).
    plan: Arc<Mutex<Option<Arc<PlanKernel>>>>,
    tuner: Arc<Mutex<Tuner>>,
    /// Configurations already picked, by exact (op, dtype, rows, cols): the per-call fast path.
    picked: Arc<Mutex<HashMap<PickKey, KernelConfig>>>,
    /// Whether small calls replay CUDA graphs ([`CudaOptions::graphs`]).
    graphs: bool,
    /// Where compiled modules are kept between processes ([`CudaOptions::kernel_cache`]).
    kernel_cache: CacheLocation,
    /// Whether small forwards run one block per seed ([`CudaBackend::with_seedwise`]).
    seedwise: bool,
    /// Whether active seed-uniform forwards with short seed rows run one seed per warp
    /// ([`CudaBackend::with_seedwarp`]).
    seedwarp: bool,
    /// The Hopper path: kernel family setting, its modules and picks (see `hopper.rs`).
    hopper: Arc<hopper::HopperState>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

fn driver_present() -> CudaResult<()> {
    // SAFETY: only tries to dlopen libcuda by its usual names; nothing is called yet.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Unavailable(
            "no CUDA driver on this machine (libcuda.so could not be loaded): the CUDA backend needs an \
             NVIDIA GPU and its driver"
                .into(),
        ))
    }
}

/// Checks a caller's device address: non-null when `bytes > 0`, a multiple of `align`.
fn check_device_address(what: &str, ptr: u64, bytes: usize, align: u64) -> CudaResult<()> {
    if bytes > 0 && ptr == 0 {
        return Err(CudaError::Unsupported(format!("{what}: null device address for {bytes} bytes")));
    }
    if !ptr.is_multiple_of(align) {
        return Err(CudaError::Unsupported(format!(
            "{what}: device address {ptr:#x} is not {align}-byte aligned (the kernels move {align}-byte \
             values); pass memory that starts on a {align}-byte boundary (e.g. a fresh copy)"
        )));
    }
    Ok(())
}

fn unavailable_if_no_device(e: CudaError) -> CudaError {
    match e {
        CudaError::Driver { ref name, .. }
            if name.contains("NO_DEVICE") || name.contains("INVALID_DEVICE") || name.contains("NOT_INITIALIZED") =>
        {
            CudaError::Unavailable(format!("no usable CUDA device: {e}"))
        }
        other => other,
    }
}

/// Whether a seed's row of `c` columns is `c / vec` threads, a power of two below 32, so a warp
/// can take whole rows of one seed (the kernels' `ws_applies`).
fn ws_applies(c: usize, vec: u32) -> bool {
    let v = vec as usize;
    v > 0 && c.is_multiple_of(v) && (1..32).contains(&(c / v)) && (c / v).is_power_of_two()
}

/// Where a forward/backward launch's blocks and partials go.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cfg: KernelConfig,
    /// The warp-per-seed mapping (`kasmina_fwdu_ws`): tiles of `threads / 32` whole seeds.
    ws: bool,
    tw: u32,
    n_rg: u64,
    n_tiles: u32,
    segs: u32,
}

impl Geometry {
    fn new(cfg: KernelConfig, b: usize, h: usize, c: usize, s: usize) -> CudaResult<Self> {
        Self::with_mapping(cfg, b, h, c, s, false)
    }

    /// `ws`: the warp-per-seed forward (one seed per warp, [`ws_applies`] holds for `c`).
    fn with_mapping(cfg: KernelConfig, b: usize, h: usize, c: usize, s: usize, ws: bool) -> CudaResult<Self> {
        let tw = if ws { (cfg.threads / 32) * c as u32 } else { cfg.threads * cfg.vec };
        let n_rg = (b as u64).div_ceil(cfg.rows as u64);
        let n_tiles = (h as u64).div_ceil(tw as u64);
        if n_rg > i32::MAX as u64 || n_tiles > 65535 {
            return Err(CudaError::Unsupported(format!(
                "a [{b}, {h}] tensor needs {n_rg} x {n_tiles} blocks with {cfg}, beyond the grid limits"
            )));
        }
        // A warp-per-seed tile holds exactly threads / 32 seeds; other tiles may cut seeds.
        let segs = if ws { cfg.threads / 32 } else { (((tw - 1) as usize / c) + 2).min(s) as u32 };
        Ok(Self { cfg, ws, tw, n_rg, n_tiles: n_tiles as u32, segs })
    }

    /// The launch: `shared_per_item` bytes of shared memory per column, or per thread for
    /// the seed-uniform kernels.
    fn launch(&self, shared_per_item: u32, uniform: bool) -> LaunchConfig {
        // The warp-per-seed kernel reduces with shuffles alone.
        let items = if self.ws {
            0
        } else if uniform {
            self.cfg.threads
        } else {
            self.tw
        };
        LaunchConfig {
            grid_dim: (self.n_rg as u32, self.n_tiles, 1),
            block_dim: (self.cfg.threads, 1, 1),
            shared_mem_bytes: items * shared_per_item,
        }
    }

    fn layout(&self) -> PartialLayout {
        PartialLayout { n_rg: self.n_rg, n_tiles: self.n_tiles, segs: self.segs, tw: self.tw }
    }

    fn slots(&self) -> usize {
        self.layout().slots()
    }
}

/// Where one call's statistics partials lie, in the layout both kernel families write and the
/// merge kernels of either module read: row groups x column tiles (of `tw` columns) x seed
/// segments.
#[derive(Debug, Clone, Copy)]
struct PartialLayout {
    n_rg: u64,
    n_tiles: u32,
    segs: u32,
    tw: u32,
}

impl PartialLayout {
    fn slots(self) -> usize {
        self.n_rg as usize * self.n_tiles as usize * self.segs as usize
    }
}

impl CudaBackend {
    /// Opens device `ordinal` with the default [`CudaOptions`]. Without a driver, a device or
    /// NVRTC this is a [`kasmina_core::BackendErrorKind::Unavailable`] error (never a panic).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Self::with_options(ordinal, CudaOptions::default())
    }

    /// Opens device `ordinal` with `options` (kernel family, autotuning, caches, graphs; see
    /// [`CudaOptions::from_env`] for the environment's).
    pub fn with_options(ordinal: usize, options: CudaOptions) -> Result<CudaBackend> {
        Ok(Self::open(ordinal, options)?)
    }

    /// Registers and local memory (bytes per thread) of the fused forward and backward
    /// kernels of one dtype and vector width, as the driver compiled them.
    pub fn kernel_resources(&self, dtype: DType, vec: u32) -> Result<String> {
        let k = self.kernels(dtype, vec)?;
        let mut out = Vec::new();
        for (name, f) in [
            ("forward", &k.fwd),
            ("forward-identity", &k.fwd_identity),
            ("backward", &k.bwd),
            ("backward-identity", &k.bwd_identity),
            ("forward-uniform", &k.fwdu),
            ("forward-uniform-identity", &k.fwdu_identity),
            ("forward-uniform-unroll8", &k.fwdu_u8),
            ("forward-uniform-identity-unroll8", &k.fwdu_identity_u8),
            ("forward-uniform-warp-per-seed", &k.fwdu_ws),
            ("forward-uniform-warp-per-seed-unroll8", &k.fwdu_u8_ws),
            ("backward-uniform-typed", &k.bwdu_typed),
            ("backward-uniform-identity", &k.bwdu_identity),
        ] {
            let regs = f.num_regs().ctx("reading kernel attributes")?;
            let local = f.local_size_bytes().ctx("reading kernel attributes")?;
            out.push(format!("{name} {dtype} v{vec}: {regs} registers, {local} B local"));
        }
        Ok(out.join("; "))
    }

    /// How many keys this backend has tuned by timing (not read from memory or the cache file).
    pub fn tuned_keys(&self) -> usize {
        self.tuner.lock().map(|t| t.tuned_count()).unwrap_or(0)
    }

    /// The number of CUDA devices (0 errors with `Unavailable` when there is no driver).
    pub fn device_count() -> Result<usize> {
        driver_present()?;
        let n = CudaContext::device_count().ctx("counting CUDA devices").map_err(unavailable_if_no_device)?;
        Ok(n.max(0) as usize)
    }

    fn open(ordinal: usize, options: CudaOptions) -> CudaResult<Self> {
        driver_present()?;
        // SAFETY: only tries to dlopen libnvrtc by its usual names.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::Unavailable(
                "the CUDA driver is here but NVRTC (libnvrtc.so) is not: add the CUDA toolkit's lib folder \
                 (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let count = CudaContext::device_count().ctx("counting CUDA devices").map_err(unavailable_if_no_device)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::Unavailable(format!(
                "CUDA device {ordinal} does not exist ({count} device(s) found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).ctx("creating a CUDA context").map_err(unavailable_if_no_device)?;
        // SAFETY: every allocation and launch of this backend goes to the one stream
        // created below, in order, so cudarc's cross-stream event tracking is not needed
        // (and it would add event calls to every launch and break graph capture).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx("creating a CUDA stream")?;
        let name = ctx.name().ctx("reading the device name")?;
        let cc = ctx.compute_capability().ctx("reading the compute capability")?;
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ctx("reading the SM count")?
            .max(1) as u32;
        Ok(Self {
            ctx,
            stream,
            borrowed_stream: false,
            ordinal,
            name,
            cc,
            arch: arch_name(cc),
            sms,
            modules: Default::default(),
            plan: Default::default(),
            tuner: Arc::new(Mutex::new(
                Tuner::new(options.autotune_cache.autotune_file(), options.autotune).with_log(options.autotune_log),
            )),
            picked: Default::default(),
            graphs: options.graphs,
            kernel_cache: options.kernel_cache,
            seedwise: true,
            seedwarp: true,
            hopper: Arc::new(hopper::HopperState::new(options.path)),
        })
    }

    /// Whether small forwards (at most 32 KiB of activation per seed) run in one launch with one
    /// block per seed (the default); `false` sends them
    /// through the tuned row-group kernels and the merge kernel like larger calls.
    pub fn with_seedwise(mut self, on: bool) -> Self {
        self.seedwise = on;
        self
    }

    /// Whether active forwards whose seed rows are short (C / V threads, a power of two below
    /// 32) map one seed to each warp, several rows at a time (the default); `false` keeps one
    /// row per warp, which then spans several
    /// seeds. Same results either way.
    pub fn with_seedwarp(mut self, on: bool) -> Self {
        self.seedwarp = on;
        self
    }

    /// The kernel modules calls in `dtypes` may need on this device: every vector width of
    /// each dtype, the parameter plan, and each dtype's Hopper module where that family may run
    /// (compute capability 9.0, family not [`CudaPath::Portable`]).
    pub fn modules_for(&self, dtypes: &[DType]) -> Vec<ModuleSpec> {
        let mut specs = vec![ModuleSpec::plan(self.arch)];
        for &dtype in dtypes {
            specs.extend(vector_widths(dtype).iter().map(|&v| ModuleSpec::portable(self.arch, dtype, v)));
            if self.cc == (9, 0) && self.hopper.path != CudaPath::Portable {
                specs.push(ModuleSpec::hopper(dtype));
            }
        }
        specs
    }

    /// Compiles (or finds in the kernel cache) every module of [`CudaBackend::modules_for`]
    /// `dtypes`, several at once (one thread per core), so later calls only load them.
    pub fn precompile(&self, dtypes: &[DType]) -> CudaResult<()> {
        let specs = self.modules_for(dtypes);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, specs.len().max(1));
        let cache = &self.kernel_cache;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let mine: Vec<&ModuleSpec> = specs.iter().skip(w).step_by(workers).collect();
                    scope.spawn(move || mine.into_iter().try_for_each(|spec| spec.cubin(cache).map(|_| ())))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().map_err(|_| CudaError::Unsupported("a kernel compile thread panicked".into()))?
            })
        })
    }

    /// The device's compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Queues this backend's work on `stream`, a stream of this device's primary context
    /// owned by the caller (PyTorch's `torch.cuda.current_stream().cuda_stream`; null is the
    /// legacy default stream). Work queued on the previous stream runs first (the new stream
    /// waits on an event; the host does not wait), except when the new stream is capturing a
    /// graph, whose caller orders earlier work itself. No graph of the backend's own is captured
    /// on a caller's stream, and autotuning or growing a layer's memory is refused while the
    /// caller captures one. Setting the same stream again costs nothing.
    ///
    /// Layers are best created with the stream they will run on already set: their memory is
    /// then freed in that stream's order. A layer used on several streams waits for the device
    /// when it is dropped.
    ///
    /// # Safety
    /// `stream` must be null or a valid stream of this device's primary context, and stay
    /// valid while this backend, or memory allocated through it, is in use.
    pub unsafe fn set_stream(&mut self, stream: cudarc::driver::sys::CUstream) -> Result<()> {
        if self.borrowed_stream && self.stream.cu_stream() == stream {
            return Ok(());
        }
        // SAFETY: the caller vouches for `stream` (see above).
        let next = unsafe { self.ctx.wrap_borrowed_stream(stream) };
        // A stream that is capturing a graph cannot wait on work outside it; the caller ordered
        // that work before the capture began (torch.cuda.graph synchronizes the device first).
        if next.cu_stream() != self.stream.cu_stream() && !crate::layer::is_capturing(&next)? {
            next.join(&self.stream).ctx("ordering the new stream after the previous one")?;
        }
        self.stream = next;
        self.borrowed_stream = true;
        Ok(())
    }

    /// The raw handle of the stream this backend queues work on.
    pub fn stream_handle(&self) -> cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    /// A tensor over `rows * cols` elements of `dtype` at device address `ptr`, memory the
    /// caller owns (a PyTorch CUDA tensor's `data_ptr()`): kernels read or write it in place
    /// and dropping the tensor leaves the memory alone. The address must be 16-byte aligned
    /// (the kernels move 16-byte vectors); an unaligned one is an error, never a fault.
    ///
    /// # Safety
    /// `ptr` must address at least `rows * cols` elements of `dtype` in this device's memory
    /// (any context of the device), valid and not written by anything else for as long as the
    /// tensor and the work queued with it live.
    pub unsafe fn borrow_tensor(&self, ptr: u64, rows: usize, cols: usize, dtype: DType) -> Result<CudaTensor> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| CudaError::Unsupported(format!("a [{rows}, {cols}] {dtype} tensor is too large")))?;
        check_device_address("tensor", ptr, bytes, 16)?;
        // SAFETY: the caller vouches for the memory; the handle is leaked, not freed, on drop.
        let buf = unsafe { self.stream.upgrade_device_ptr::<u8>(ptr, bytes) };
        Ok(CudaTensor { buf: std::mem::ManuallyDrop::new(buf), borrowed: true, rows, cols, dtype })
    }

    /// Takes the blueprint parameters from device memory the caller owns: `weights` holds
    /// `S * C` and `scales` `S` f32 values (a PyTorch module's parameters, which its optimizer
    /// updates in place). One small kernel on the stream (`kernels/plan.cu`) re-derives every
    /// seed's kernel constants from them, so the forward and backward queued after it compute
    /// with these values, and the device's copy of the parameters (what the device checksum
    /// covers) becomes theirs. No host round trip. While every seed is an identity nothing reads
    /// the parameters: no kernel is launched and the device copy stays as the last upload left it.
    ///
    /// # Safety
    /// `weights` and `scales` must address `S * C` and `S` f32 values in this device's memory,
    /// unchanged until the work queued here has run.
    pub unsafe fn use_params(&self, layer: &mut CudaLayer, weights: u64, scales: u64) -> Result<()> {
        self.enter(layer);
        check_device_address("weights", weights, layer.s * layer.c * 4, 4)?;
        check_device_address("scales", scales, layer.s * 4, 4)?;
        if !layer.any_active() {
            // Identity seeds read no parameter: nothing to derive (a state upload that activates a
            // seed writes its constants from the host copy, and the next call takes these again).
            return Ok(());
        }
        let k = self.plan_kernel()?;
        let threads = ((layer.c as u32).div_ceil(32) * 32).clamp(32, 256);
        let cfg = LaunchConfig { grid_dim: (layer.s as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let c = layer.c as u32;
        let mut lb = self.stream.launch_builder(&k.plan);
        lb.arg(&weights)
            .arg(&scales)
            .arg(&c)
            .arg(&mut layer.consts)
            .arg(&mut layer.coef)
            .arg(&mut layer.colc)
            .arg(&mut layer.records)
            .arg(&mut layer.weights);
        // SAFETY: the arguments match kasmina_plan's parameters; the caller vouched for weights
        // (S*C floats) and scales (S floats); consts, records hold S records, coef and colc H
        // entries and the layer's weights S*C floats; one block of whole warps per seed.
        unsafe { lb.launch(cfg) }.map_err(|e| CudaError::driver("launching kasmina_plan", e))?;
        Ok(())
    }

    /// [`Backend::forward`] with the blueprint parameters taken from device memory the caller
    /// owns, as [`CudaBackend::use_params`] then a forward, with the same results. Small calls
    /// (one block per seed, chunks of at most 1024 columns) derive the constants inside the
    /// forward's own blocks: one launch for the whole call.
    ///
    /// # Safety
    /// As [`CudaBackend::use_params`].
    pub unsafe fn forward_with_params(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        y: &mut CudaTensor,
        weights: u64,
        scales: u64,
    ) -> Result<()> {
        self.enter(layer);
        Self::check_layer_tensor(layer, "x", x, x.rows, x.dtype)?;
        Self::check_layer_tensor(layer, "y", y, x.rows, x.dtype)?;
        if !(layer.any_active() && layer.c <= PLAN_FUSE_MAX_C && self.seedwise_applies(layer, x)) {
            // SAFETY: the caller vouches for the parameters (same contract).
            unsafe { self.use_params(layer, weights, scales)? };
            return Ok(self.forward_impl(layer, x, y)?);
        }
        check_device_address("weights", weights, layer.s * layer.c * 4, 4)?;
        check_device_address("scales", scales, layer.s * 4, 4)?;
        let (cfg, mut launch) = Self::seedwise_launch(x.rows, layer.c, layer.s, x.dtype);
        launch.shared_mem_bytes = (layer.c * 20) as u32;
        let k = self.kernels(x.dtype, cfg.vec)?;
        let (b, h, c) = (x.rows as u64, layer.h as u32, layer.c as u32);
        let mut lb = self.stream.launch_builder(&k.fwd_seed_plan);
        lb.arg(&*x.buf)
            .arg(&mut *y.buf)
            .arg(&b)
            .arg(&h)
            .arg(&c)
            .arg(&layer.dead_eps)
            .arg(&weights)
            .arg(&scales)
            .arg(&mut layer.consts)
            .arg(&mut layer.coef)
            .arg(&mut layer.colc)
            .arg(&mut layer.records)
            .arg(&mut layer.weights)
            .arg(&mut layer.acc);
        // SAFETY: the arguments match kasmina_fwd_seed_plan's parameters in order and type; x and y
        // hold B*H elements of the dtype, the caller vouched for weights (S*C floats) and scales (S);
        // consts, records and acc hold S records, coef and colc H entries, the layer's weights S*C
        // floats; the vector width divides C; one block of whole warps per seed, C * 20 bytes of
        // dynamic shared memory (at most 20 KiB).
        unsafe { lb.launch(launch) }.ctx("launching kasmina_fwd_seed_plan")?;
        Ok(())
    }

    /// Whether a call on `x` runs one block per seed: small enough ([`SEEDWISE_MAX_BYTES`] per
    /// seed), with rows, and the Hopper family not forced.
    fn seedwise_applies(&self, layer: &CudaLayer, x: &CudaTensor) -> bool {
        self.seedwise
            && x.rows > 0
            && self.hopper.path != CudaPath::Hopper
            && Self::seedwise_fits(x.rows, layer.c, x.dtype)
    }

    /// [`Backend::backward`] writing this call's parameter gradients to device memory the
    /// caller owns (`dweights`: `S * C` f32, `dscales`: `S` f32, e.g. fresh PyTorch tensors that
    /// autograd then accumulates into `.grad`) instead of the layer's own buffers.
    ///
    /// # Safety
    /// `dweights` and `dscales` must address `S * C` and `S` writable f32 values in this
    /// device's memory, not used by anything else until the work queued here has run.
    pub unsafe fn backward_into(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        g: &CudaTensor,
        dx: &mut CudaTensor,
        dweights: u64,
        dscales: u64,
    ) -> Result<()> {
        check_device_address("dweights", dweights, layer.s * layer.c * 4, 4)?;
        check_device_address("dscales", dscales, layer.s * 4, 4)?;
        layer.grad_dst = Some((dweights, dscales));
        let out = self.backward(layer, x, g, dx);
        layer.grad_dst = None;
        out
    }

    /// The parameter-plan kernel, compiled and loaded on first use.
    fn plan_kernel(&self) -> CudaResult<Arc<PlanKernel>> {
        let mut p = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = p.as_ref() {
            return Ok(k.clone());
        }
        let k = Arc::new(PlanKernel::load(&self.ctx, self.arch, &self.kernel_cache)?);
        *p = Some(k.clone());
        Ok(k)
    }

    /// The kernels of one dtype and vector width (compiled on first use).
    fn kernels(&self, dtype: DType, vec: u32) -> CudaResult<Arc<Kernels>> {
        let mut m = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = m.get(&(dtype, vec)) {
            return Ok(k.clone());
        }
        let k = Arc::new(Kernels::load(&self.ctx, self.arch, dtype, vec, &self.kernel_cache)?);
        m.insert((dtype, vec), k.clone());
        Ok(k)
    }

    /// Threads that cover `h` columns with vector `v` without idle warps, at most `max`.
    fn threads_for(h: usize, v: u32, max: u32) -> u32 {
        let need = (h as u64).div_ceil(v as u64).div_ceil(32) * 32;
        (need.clamp(32, max as u64)) as u32
    }

    /// Most threads per block for vector `v`: the per-column kernels keep a tile within
    /// `MAX_TILE` columns (their shared memory is per column), the seed-uniform ones need
    /// only their launch bounds (shared memory per thread).
    fn max_threads(v: u32, uniform: bool) -> u32 {
        if uniform { UNIFORM_MAX_THREADS } else { (MAX_TILE / v).min(256) }
    }

    /// The built-in configuration (used with autotuning off).
    fn default_config(&self, dtype: DType, b: usize, h: usize) -> KernelConfig {
        let vec = widest_vector(dtype, h);
        let cap = (MAX_TILE / vec).min(256);
        let threads = Self::threads_for(h, vec, cap);
        let tiles = (h as u64).div_ceil((threads * vec) as u64);
        // Enough blocks for 4 per SM before rows per block grow to 32.
        let want_blocks = 4 * self.sms as u64;
        let rows = ((b as u64 * tiles).div_ceil(want_blocks)).clamp(1, 32) as u32;
        KernelConfig { rows, threads, vec, unroll: DEFAULT_UNROLL }
    }

    /// Candidates timed by the autotuner: rows per block x threads x vector width (x unroll
    /// for the seed-uniform forward), see [`TuneOptions`] for what goes beyond the base set.
    /// `ws_c`: the chunk size C when the operation is the warp-per-seed forward.
    fn candidates(
        &self,
        dtype: DType,
        b: usize,
        h: usize,
        uniform: bool,
        forward: bool,
        ws_c: Option<usize>,
    ) -> Vec<KernelConfig> {
        Self::candidate_set(dtype, b, h, self.sms, uniform, forward, true, ws_c)
    }

    /// [`Self::candidates`] for a device of `sms` SMs; `extra`: beyond the base set.
    #[allow(clippy::too_many_arguments)]
    fn candidate_set(
        dtype: DType,
        b: usize,
        h: usize,
        sms: u32,
        uniform: bool,
        forward: bool,
        extra: bool,
        ws_c: Option<usize>,
    ) -> Vec<KernelConfig> {
        let widest = widest_vector(dtype, h);
        let extra = extra && uniform;
        let vecs: Vec<u32> =
            vector_widths(dtype).iter().copied().filter(|v| *v <= widest && *v * 2 >= widest).collect();
        let unrolls: &[u32] = if extra && forward { &[DEFAULT_UNROLL, 8] } else { &[DEFAULT_UNROLL] };
        let mut out = Vec::new();
        for &vec in &vecs {
            let cap = if extra { Self::max_threads(vec, true) } else { (MAX_TILE / vec).min(256) };
            let mut threads: Vec<u32> =
                [128u32, 256].iter().map(|t| Self::threads_for(h, vec, (*t).min(cap))).collect();
            threads.dedup();
            for &t in &threads {
                let mut rows_set: Vec<u32> = vec![4, 16, 32, 64, 128, 256];
                if extra {
                    // Rows that split the work evenly over m blocks per SM, in the tiles the
                    // kernel will run: threads / 32 whole seeds where one seed per warp applies
                    // (on the H100 the bf16 C = 64 forward got rows balanced for the row
                    // mapping's 4x wider tiles: 4.04 waves at 6 blocks per SM).
                    let cols = match ws_c {
                        Some(c) if ws_applies(c, vec) => (t / 32) as u64 * c as u64,
                        _ => (t * vec) as u64,
                    };
                    let tiles = (h as u64).div_ceil(cols);
                    for m in [3u64, 4, 6, 8, 12] {
                        let r = (b as u64 * tiles).div_ceil(sms.max(1) as u64 * m);
                        if (8..=MAX_ROWS_PER_BLOCK as u64).contains(&r) {
                            rows_set.push(r as u32);
                        }
                    }
                }
                rows_set.sort_unstable();
                rows_set.dedup();
                for &unroll in unrolls {
                    for &rows in &rows_set {
                        if rows as usize > b.max(4) * 2 {
                            continue;
                        }
                        out.push(KernelConfig { rows, threads: t, vec, unroll });
                    }
                }
            }
        }
        out.dedup();
        out
    }

    /// `uniform`: the seed-uniform kernels run this configuration (see `uses_uniform`).
    fn check_cfg(cfg: &KernelConfig, dtype: DType, h: usize, uniform: bool) -> CudaResult<()> {
        let ok = vector_widths(dtype).contains(&cfg.vec)
            && h.is_multiple_of(cfg.vec as usize)
            && cfg.threads.is_multiple_of(32)
            && (32..=1024).contains(&cfg.threads)
            && (cfg.threads * cfg.vec <= MAX_TILE || (uniform && cfg.threads <= UNIFORM_MAX_THREADS))
            && (cfg.unroll == DEFAULT_UNROLL || (cfg.unroll == 8 && uniform))
            && (1..=MAX_ROWS_PER_BLOCK).contains(&cfg.rows);
        if ok { Ok(()) } else { Err(CudaError::Unsupported(format!("invalid launch configuration {cfg}"))) }
    }

    /// Average milliseconds of `f` over a few runs, after one warm-up, with CUDA events.
    fn time_avg(&self, reps: usize, f: &mut dyn FnMut() -> CudaResult<()>) -> CudaResult<f64> {
        crate::layer::refuse_while_capturing(&self.stream, "autotuning a launch configuration")?;
        f()?;
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event")?;
        let end = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event")?;
        start.record(&self.stream).ctx("recording an event")?;
        for _ in 0..reps {
            f()?;
        }
        end.record(&self.stream).ctx("recording an event")?;
        let ms = start.elapsed_ms(&end).ctx("reading event time")?;
        Ok(ms as f64 / reps as f64)
    }

    fn tune_reps(bytes: usize) -> usize {
        // At least 5 calls even for the largest tensors: candidates a few percent apart must
        // not be ordered by noise (the whole tuning of a key stays well under a second).
        ((64usize << 20) / bytes.max(1)).clamp(5, 20)
    }

    /// The launch configuration for one operation on a layer of chunk size `c`: tuned once per
    /// key, then remembered.
    fn pick(
        &self,
        op: &'static str,
        dtype: DType,
        (b, h, c): (usize, usize, usize),
        time: &mut dyn FnMut(&KernelConfig) -> CudaResult<f64>,
    ) -> CudaResult<KernelConfig> {
        if let Some(cfg) = self.picked.lock().unwrap_or_else(|p| p.into_inner()).get(&(op, dtype, b, h, c)) {
            return Ok(*cfg);
        }
        // The op names say which kernels run (see op_name).
        let (uniform, forward) = (op.contains("uniform"), op.starts_with("forward"));
        let ws_c = (op == OP_FORWARD_WS).then_some(c);
        let cands = self.candidates(dtype, b, h, uniform, forward, ws_c);
        let default = self.default_config(dtype, b, h);
        let key = TuneKey::new(&self.name, self.cc, op, dtype.name(), &shape_bucket(b, h), KERNEL_SOURCE, &cands);
        let mut tuner = self.tuner.lock().unwrap_or_else(|p| p.into_inner());
        let (cfg, _) = tuner.get_or_tune(&key, &cands, default, time)?;
        drop(tuner);
        self.picked.lock().unwrap_or_else(|p| p.into_inner()).insert((op, dtype, b, h, c), cfg);
        Ok(cfg)
    }

    /// Whether the seed-uniform kernels run `cfg` on `layer`: each thread's columns must lie in
    /// one seed (C a multiple of the vector width) and the block fit their launch bounds.
    fn uses_uniform(&self, layer: &CudaLayer, cfg: &KernelConfig) -> bool {
        layer.c.is_multiple_of(cfg.vec as usize) && cfg.threads <= UNIFORM_MAX_THREADS
    }

    /// Whether the forward of `layer` with `cfg` runs one seed per warp (`kasmina_fwdu_ws`):
    /// active seeds, the seed-uniform kernels and short seed rows.
    fn uses_ws(&self, layer: &CudaLayer, cfg: &KernelConfig) -> bool {
        self.seedwarp && layer.any_active() && self.uses_uniform(layer, cfg) && ws_applies(layer.c, cfg.vec)
    }

    /// The forward's geometry for `cfg` (see [`Self::uses_ws`]; row mapping where the narrower
    /// warp-per-seed tiles would exceed the grid's tile limit).
    fn fwd_geometry(&self, layer: &CudaLayer, cfg: KernelConfig, rows: usize) -> CudaResult<Geometry> {
        if self.uses_ws(layer, &cfg)
            && let Ok(g) = Geometry::with_mapping(cfg, rows, layer.h, layer.c, layer.s, true)
        {
            return Ok(g);
        }
        Geometry::new(cfg, rows, layer.h, layer.c, layer.s)
    }

    /// The tuner's operation name: the uniform kernels are tuned apart from the per-column ones.
    fn op_name(&self, layer: &CudaLayer, backward: bool) -> &'static str {
        // Whether uniform applies can depend on the vector width; C % 8 == 0 covers every width.
        let uni = layer.c.is_multiple_of(8);
        match (backward, layer.any_active(), uni) {
            (false, true, false) => "forward",
            (false, false, false) => "forward-identity",
            (true, true, false) => "backward",
            (true, false, false) => "backward-identity",
            // Tuned apart: the warp-per-seed kernels run for some vector widths (see uses_ws).
            (false, true, true) if self.seedwarp && (ws_applies(layer.c, 8) || ws_applies(layer.c, 4)) => OP_FORWARD_WS,
            (false, true, true) => "forward-uniform",
            (false, false, true) => "forward-uniform-identity",
            (true, true, true) => "backward-uniform-typed",
            (true, false, true) => "backward-uniform-identity",
        }
    }

    fn check_layer_tensor(layer: &CudaLayer, what: &str, t: &CudaTensor, rows: usize, dtype: DType) -> Result<()> {
        if t.cols != layer.h || t.rows != rows {
            return Err(Error::shape(what, format!("[{rows}, {}]", layer.h), format!("[{}, {}]", t.rows, t.cols)));
        }
        if t.dtype != dtype {
            return Err(Error::DType { what: what.to_string(), expected: dtype, got: t.dtype });
        }
        Ok(())
    }

    fn check_sizes(layer: &CudaLayer) -> CudaResult<()> {
        if layer.h > i32::MAX as usize {
            return Err(CudaError::Unsupported(format!("hidden_dim {} is at least 2^31", layer.h)));
        }
        Ok(())
    }

    /// The fused forward kernel alone (output + partials): idempotent, so the tuner can time it.
    fn launch_fwd_main(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        y: &mut CudaTensor,
        cfg: KernelConfig,
    ) -> CudaResult<Geometry> {
        Self::check_cfg(&cfg, x.dtype, layer.h, self.uses_uniform(layer, &cfg))?;
        let k = self.kernels(x.dtype, cfg.vec)?;
        let uni = self.uses_uniform(layer, &cfg);
        let g = self.fwd_geometry(layer, cfg, x.rows)?;
        let u8 = uni && cfg.unroll == 8;
        let f = match (uni, layer.any_active()) {
            _ if g.ws && u8 => &k.fwdu_u8_ws,
            _ if g.ws => &k.fwdu_ws,
            (false, true) => &k.fwd,
            (false, false) => &k.fwd_identity,
            (true, true) if u8 => &k.fwdu_u8,
            (true, false) if u8 => &k.fwdu_identity_u8,
            (true, true) => &k.fwdu,
            (true, false) => &k.fwdu_identity,
        };
        let part = layer.part.ensure(&self.stream, g.slots() * PARTIAL_BYTES)?;
        let (b, h, c, r, segs) = (x.rows as u64, layer.h as u32, layer.c as u32, cfg.rows, g.segs);
        let mut lb = self.stream.launch_builder(f);
        lb.arg(&*x.buf)
            .arg(&mut *y.buf)
            .arg(&b)
            .arg(&h)
            .arg(&c)
            .arg(&r)
            .arg(&layer.dead_eps)
            .arg(&layer.consts)
            .arg(&layer.colc)
            .arg(&layer.coef)
            .arg(part)
            .arg(&segs);
        // The warp-per-seed forward's staged loads (WS_LOAD_STAGES): the threads' partials, then
        // their stage slots.
        let mut lc = g.launch(PARTIAL_BYTES as u32, uni);
        let vec_bytes = cfg.vec * x.dtype.size_bytes() as u32;
        if g.ws
            && let Some(bytes) = crate::kernels::staged_shared_bytes(cfg.threads, vec_bytes, cfg.unroll, self.cc)
        {
            lc.shared_mem_bytes = bytes;
        }
        if uni {
            // The seed-uniform forward's blocks go tiles first: (tiles, row groups), the row groups
            // split over y and z (at most 65535 each; n_rg < 2^31 per Geometry::new).
            let (y, z) = (g.n_rg.min(65535), g.n_rg.div_ceil(65535));
            lc.grid_dim = (g.n_tiles, y as u32, z as u32);
        }
        // SAFETY: the arguments match kasmina_fwd's parameters in order and type; x and y
        // hold B*H elements of the module's dtype, consts S records, colc and coef H entries, and
        // part the geometry's slots; H is a multiple of the vector width (check_cfg).
        // The uniform kernels take the same arguments, with one shared Partial per thread. The
        // warp-per-seed ones (g.ws: C / V a power of two below 32, tiles of threads / 32 seeds,
        // segs = threads / 32) take the same arguments and no shared memory unless they stage
        // their loads (16-byte vectors, default unroll, sm_80 on): then they read WS_LOAD_STAGES
        // slots after the threads' partials, within the bytes staged_shared_bytes gave here.
        unsafe { lb.launch(lc) }.ctx("launching kasmina_fwd")?;
        Ok(g)
    }

    fn launch_fwd_merge(&self, layer: &mut CudaLayer, dtype: DType, g: &Geometry) -> CudaResult<()> {
        let k = self.kernels(dtype, g.cfg.vec)?;
        self.merge_fwd_partials(&k.fwd_merge, layer, g.layout())
    }

    /// Launches `merge` (`kasmina_fwd_merge` of either family's module) over a forward's partials
    /// laid out as `p`, adding the call's moments to the layer's accumulators.
    fn merge_fwd_partials(&self, merge: &CudaFunction, layer: &mut CudaLayer, p: PartialLayout) -> CudaResult<()> {
        let part = layer.part.ensure(&self.stream, p.slots() * PARTIAL_BYTES)?;
        let (n_rg, n_tiles, segs, tw, c, s) = (p.n_rg, p.n_tiles, p.segs, p.tw, layer.c as u32, layer.s as u32);
        let mut lb = self.stream.launch_builder(merge);
        lb.arg(&*part).arg(&n_rg).arg(&n_tiles).arg(&segs).arg(&tw).arg(&c).arg(&s).arg(&mut layer.acc);
        // One block per seed; fewer threads when the seed has few partials (a seed spans at
        // most (C - 1) / TW + 2 tiles, one per tile under the warp-per-seed mapping).
        let seed_tiles = ((c.saturating_sub(1) / tw.max(1)) as u64 + 2).min(p.n_tiles as u64);
        let items = p.n_rg.saturating_mul(seed_tiles).min(1 << 20);
        let threads = (items.div_ceil(2).div_ceil(32) * 32).clamp(32, 256) as u32;
        let cfg = LaunchConfig { grid_dim: (s, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match kasmina_fwd_merge; part was written by the forward with this layout.
        unsafe { lb.launch(cfg) }.ctx("launching kasmina_fwd_merge")?;
        Ok(())
    }

    /// The fused backward kernel alone (dx + partials): idempotent, so the tuner can time it.
    fn launch_bwd_main(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        gt: &CudaTensor,
        dx: &mut CudaTensor,
        cfg: KernelConfig,
    ) -> CudaResult<Geometry> {
        Self::check_cfg(&cfg, x.dtype, layer.h, self.uses_uniform(layer, &cfg))?;
        let k = self.kernels(x.dtype, cfg.vec)?;
        let g = Geometry::new(cfg, x.rows, layer.h, layer.c, layer.s)?;
        let pbytes = if layer.any_active() { g.n_rg as usize * layer.h * 3 * 4 } else { 16 };
        let uni = self.uses_uniform(layer, &cfg);
        let f = match (uni, layer.any_active()) {
            (false, true) => &k.bwd,
            (false, false) => &k.bwd_identity,
            (true, true) => &k.bwdu_typed,
            (true, false) => &k.bwdu_identity,
        };
        let gpart = layer.gpart.ensure(&self.stream, g.slots() * 4)?;
        let ppart = layer.ppart.ensure(&self.stream, pbytes)?;
        let (b, h, c, r, segs) = (x.rows as u64, layer.h as u32, layer.c as u32, cfg.rows, g.segs);
        let mut lb = self.stream.launch_builder(f);
        lb.arg(&*x.buf)
            .arg(&*gt.buf)
            .arg(&mut *dx.buf)
            .arg(&b)
            .arg(&h)
            .arg(&c)
            .arg(&r)
            .arg(&layer.consts)
            .arg(&layer.colc)
            .arg(&layer.coef)
            .arg(gpart)
            .arg(ppart)
            .arg(&segs);
        // SAFETY: the arguments match kasmina_bwd's parameters; x, g, dx hold B*H elements;
        // ppart holds n_rg*H*3 floats whenever a seed is active (only active columns are written).
        // (The uniform kernels take the same arguments, with one shared float per thread.)
        unsafe { lb.launch(g.launch(4, uni)) }.ctx("launching kasmina_bwd")?;
        Ok(g)
    }

    /// The per-column sums of the parameter partials and, with `finalize`, the gradients and
    /// the Σg² accumulator (without it the tail is idempotent, for the tuner's timing).
    fn launch_bwd_tail(&self, layer: &mut CudaLayer, dtype: DType, g: &Geometry, finalize: bool) -> CudaResult<()> {
        let k = self.kernels(dtype, g.cfg.vec)?;
        self.sum_bwd_partials(&k.bwd_colsum, finalize.then_some(&k.bwd_finalize), layer, g.layout())
    }

    /// Launches `colsum` (`kasmina_bwd_colsum`) over a backward's parameter partials when a seed is
    /// active, then `finalize` (`kasmina_bwd_finalize`, either family's module) if given, over
    /// partials laid out as `p`.
    fn sum_bwd_partials(
        &self,
        colsum: &CudaFunction,
        finalize: Option<&CudaFunction>,
        layer: &mut CudaLayer,
        p: PartialLayout,
    ) -> CudaResult<()> {
        let any_active = layer.any_active();
        let pbytes = if any_active { p.n_rg as usize * layer.h * 3 * 4 } else { 16 };
        let (n_rg, n_tiles, segs, tw) = (p.n_rg, p.n_tiles, p.segs, p.tw);
        let (h, c, s) = (layer.h as u32, layer.c as u32, layer.s as u32);
        if any_active {
            let ppart = layer.ppart.ensure(&self.stream, pbytes)?;
            let mut lb = self.stream.launch_builder(colsum);
            lb.arg(&*ppart).arg(&n_rg).arg(&h).arg(&c).arg(&layer.consts).arg(&mut layer.colsum);
            let cfg =
                LaunchConfig { grid_dim: ((3 * h).div_ceil(32), 1, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
            // SAFETY: arguments match kasmina_bwd_colsum; ppart holds n_rg*H*3 floats, colsum H*3 doubles.
            unsafe { lb.launch(cfg) }.ctx("launching kasmina_bwd_colsum")?;
        }
        let Some(finalize) = finalize else { return Ok(()) };
        let (dw, ds) = self.grad_targets(layer);
        let gpart = layer.gpart.ensure(&self.stream, p.slots() * 4)?;
        let mut lb = self.stream.launch_builder(finalize);
        lb.arg(&*gpart)
            .arg(&layer.colsum)
            .arg(&n_rg)
            .arg(&n_tiles)
            .arg(&segs)
            .arg(&tw)
            .arg(&c)
            .arg(&layer.consts)
            .arg(&layer.coef)
            .arg(&dw)
            .arg(&ds)
            .arg(&mut layer.gnorm)
            .arg(&mut layer.acc_g2);
        let cfg = LaunchConfig { grid_dim: (s, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: arguments match kasmina_bwd_finalize; every buffer has its documented length
        // (dw and ds: the layer's dweights / dscales, or the caller's, checked by backward_into).
        unsafe { lb.launch(cfg) }.ctx("launching kasmina_bwd_finalize")?;
        Ok(())
    }

    fn write_seed(&self, layer: &mut CudaLayer, state: &LayerState, i: usize) -> CudaResult<()> {
        let c = layer.c;
        let rec = seed_record(state, i);
        let SeedDerived { sc, coef, colc } = seed_const(state, i);
        let rs = std::mem::size_of::<SeedRecord>();
        let cs = std::mem::size_of::<SeedConst>();
        let ks = std::mem::size_of::<ColCoef>();
        let st = &self.stream;
        st.memcpy_htod(bytemuck::bytes_of(&rec), &mut layer.records.slice_mut(i * rs..(i + 1) * rs))
            .ctx("uploading a seed record")?;
        st.memcpy_htod(bytemuck::bytes_of(&sc), &mut layer.consts.slice_mut(i * cs..(i + 1) * cs))
            .ctx("uploading seed constants")?;
        st.memcpy_htod(state.params.seed_weights(i), &mut layer.weights.slice_mut(i * c..(i + 1) * c))
            .ctx("uploading seed weights")?;
        st.memcpy_htod(&coef, &mut layer.coef.slice_mut(i * c..(i + 1) * c)).ctx("uploading seed coefficients")?;
        st.memcpy_htod(
            bytemuck::cast_slice::<ColCoef, u8>(&colc),
            &mut layer.colc.slice_mut(i * c * ks..(i + 1) * c * ks),
        )
        .ctx("uploading column coefficients")?;
        layer.flags[i] = sc.flags;
        Ok(())
    }

    fn write_all(&self, layer: &mut CudaLayer, state: &LayerState) -> CudaResult<()> {
        let s = layer.s;
        let mut recs = Vec::with_capacity(s);
        let mut consts = Vec::with_capacity(s);
        let mut coef = Vec::with_capacity(layer.h);
        let mut colc = Vec::with_capacity(layer.h);
        for i in 0..s {
            recs.push(seed_record(state, i));
            let d = seed_const(state, i);
            consts.push(d.sc);
            coef.extend_from_slice(&d.coef);
            colc.extend_from_slice(&d.colc);
            layer.flags[i] = d.sc.flags;
        }
        let st = &self.stream;
        st.memcpy_htod(bytemuck::cast_slice::<SeedRecord, u8>(&recs), &mut layer.records)
            .ctx("uploading seed records")?;
        st.memcpy_htod(bytemuck::cast_slice::<SeedConst, u8>(&consts), &mut layer.consts)
            .ctx("uploading seed constants")?;
        st.memcpy_htod(&state.params.weights, &mut layer.weights).ctx("uploading weights")?;
        st.memcpy_htod(&coef, &mut layer.coef).ctx("uploading coefficients")?;
        st.memcpy_htod(bytemuck::cast_slice::<ColCoef, u8>(&colc), &mut layer.colc)
            .ctx("uploading column coefficients")?;
        Ok(())
    }

    fn write_header(&self, layer: &mut CudaLayer, state: &LayerState) -> CudaResult<()> {
        let header = [state.schema_version() as u32, layer.h as u32, layer.s as u32, state.epoch];
        self.stream.memcpy_htod(&header, &mut layer.header).ctx("uploading the layer header")
    }

    fn reset_acc(&self, layer: &mut CudaLayer) -> CudaResult<()> {
        let empty = vec![Acc::EMPTY; layer.s];
        self.stream
            .memcpy_htod(bytemuck::cast_slice::<Acc, u8>(&empty), &mut layer.acc)
            .ctx("resetting accumulators")?;
        self.stream.memset_zeros(&mut layer.acc_g2).ctx("resetting gradient accumulators")
    }

    fn check_upload_shape(layer: &CudaLayer, state: &LayerState) -> CudaResult<()> {
        let cfg = &state.config;
        if cfg.hidden_dim != layer.h || cfg.num_seeds != layer.s {
            return Err(CudaError::Unsupported(format!(
                "state has H={} S={}, the device layer H={} S={}",
                cfg.hidden_dim, cfg.num_seeds, layer.h, layer.s
            )));
        }
        Ok(())
    }

    fn create(&self, state: &LayerState) -> CudaResult<CudaLayer> {
        let (h, s) = (state.config.hidden_dim, state.config.num_seeds);
        let c = state.config.chunk_size();
        let st = &self.stream;
        let zeros_u8 = |n: usize| st.alloc_zeros::<u8>(n.max(1)).ctx("allocating layer memory");
        let zeros_f32 = |n: usize| st.alloc_zeros::<f32>(n.max(1)).ctx("allocating layer memory");
        let mut layer = CudaLayer {
            h,
            s,
            c,
            dead_eps: state.config.dead_eps,
            stability: state.config.stability,
            header: st.alloc_zeros::<u32>(4).ctx("allocating layer memory")?,
            records: zeros_u8(s * std::mem::size_of::<SeedRecord>())?,
            weights: zeros_f32(s * c)?,
            consts: zeros_u8(s * std::mem::size_of::<SeedConst>())?,
            coef: zeros_f32(h)?,
            colc: zeros_u8(h * std::mem::size_of::<ColCoef>())?,
            acc: zeros_u8(s * std::mem::size_of::<Acc>())?,
            tune_acc: zeros_u8(s * std::mem::size_of::<Acc>())?,
            acc_g2: st.alloc_zeros::<f64>(s).ctx("allocating layer memory")?,
            dweights: zeros_f32(s * c)?,
            dscales: zeros_f32(s)?,
            gnorm: zeros_f32(s)?,
            colsum: st.alloc_zeros::<f64>(h * 3).ctx("allocating layer memory")?,
            part: Scratch::default(),
            gpart: Scratch::default(),
            ppart: Scratch::default(),
            flags: vec![0; s],
            graphs: Default::default(),
            grad_dst: None,
            home: self.stream.cu_stream() as usize,
            foreign: false,
            ctx: self.ctx.clone(),
        };
        Self::check_sizes(&layer)?;
        self.write_all(&mut layer, state)?;
        self.write_header(&mut layer, state)?;
        self.reset_acc(&mut layer)?;
        Ok(layer)
    }

    fn sync(&self) -> CudaResult<()> {
        self.stream.synchronize().ctx("synchronizing the stream")
    }

    /// The device address of `t`'s first element (for the `*_params` calls, which take
    /// parameters by address, and for interop with other libraries).
    pub fn tensor_address(&self, t: &CudaTensor) -> u64 {
        self.ptr(t)
    }

    fn ptr(&self, t: &CudaTensor) -> u64 {
        let (p, _sync) = t.buf.device_ptr(&self.stream);
        p
    }

    /// Runs `f` (the launches of one call) through a captured CUDA graph: the first call
    /// with a key captures and instantiates it, later ones replay it with one launch. The
    /// caller has made sure nothing in `f` allocates or compiles (that would break capture);
    /// if capture fails anyway, `f` simply runs directly.
    fn graphed(
        &self,
        layer: &mut CudaLayer,
        key: GraphKey,
        f: &mut dyn FnMut(&mut CudaLayer) -> CudaResult<()>,
    ) -> CudaResult<()> {
        let generation = layer.scratch_generation();
        if let Some((g, gen_at)) = layer.graphs.0.get(&key)
            && *gen_at == generation
        {
            return g.launch().ctx("launching a CUDA graph");
        }
        if layer.graphs.0.len() >= MAX_GRAPHS {
            layer.graphs.0.clear();
        }
        let captured = match self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) {
            Ok(()) => {
                let ran = f(layer);
                let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
                match (ran, graph) {
                    (Ok(()), Ok(Some(g))) => Some(g),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match captured {
            Some(g) => {
                g.launch().ctx("launching a CUDA graph")?;
                layer.graphs.0.insert(key, (g, generation));
                Ok(())
            }
            None => f(layer),
        }
    }

    /// Forward on the family [`CudaPath`] picks (Hopper path), else the portable kernels.
    fn forward_impl(&self, layer: &mut CudaLayer, x: &CudaTensor, y: &mut CudaTensor) -> CudaResult<()> {
        if self.seedwise_applies(layer, x) {
            // Launches, not bytes, set the time of small calls: one block per seed, no path choice.
            return self.forward_seedwise(layer, x, y);
        }
        let mut run = |layer: &mut CudaLayer, hopper: bool| {
            if hopper { self.hopper_forward(layer, x, y) } else { self.forward_portable(layer, x, y) }
        };
        let hopper = self.choose_path(layer, x.dtype, x.rows, false, &mut run)?;
        run(layer, hopper)
    }

    fn forward_portable(&self, layer: &mut CudaLayer, x: &CudaTensor, y: &mut CudaTensor) -> CudaResult<()> {
        if x.rows == 0 {
            return Ok(());
        }
        if self.seedwise && Self::seedwise_fits(x.rows, layer.c, x.dtype) {
            return self.forward_seedwise(layer, x, y);
        }
        let bytes = 2 * x.num_bytes();
        let op = self.op_name(layer, false);
        let cfg = self.pick(op, x.dtype, (x.rows, layer.h, layer.c), &mut |cfg| {
            // The whole call (main kernel and merge) is timed, so fewer, larger row groups win
            // where the merge costs more than they do; it merges into a scratch accumulator.
            std::mem::swap(&mut layer.acc, &mut layer.tune_acc);
            let ms = self.time_avg(Self::tune_reps(bytes), &mut || {
                let g = self.launch_fwd_main(layer, x, y, *cfg)?;
                self.launch_fwd_merge(layer, x.dtype, &g)
            });
            std::mem::swap(&mut layer.acc, &mut layer.tune_acc);
            ms
        })?;
        Self::check_cfg(&cfg, x.dtype, layer.h, self.uses_uniform(layer, &cfg))?;
        // Compile / load and size the scratch before any capture.
        self.kernels(x.dtype, cfg.vec)?;
        let g = self.fwd_geometry(layer, cfg, x.rows)?;
        layer.part.ensure(&self.stream, g.slots() * PARTIAL_BYTES)?;
        let dtype = x.dtype;
        let key = GraphKey {
            op: 0,
            ptrs: [self.ptr(x), self.ptr(y), 0],
            rows: x.rows,
            dtype,
            cfg,
            any_active: layer.any_active(),
            dead_eps_bits: layer.dead_eps.to_bits(),
        };
        let mut run = |layer: &mut CudaLayer| {
            self.launch_fwd_main(layer, x, y, cfg)?;
            self.launch_fwd_merge(layer, dtype, &g)
        };
        if self.graphs_on(layer) && x.num_bytes() <= GRAPH_MAX_BYTES {
            self.graphed(layer, key, &mut run)
        } else {
            run(layer)
        }
    }

    /// Whether a forward of `rows` rows and chunks of `c` columns is small enough for one block
    /// per seed ([`SEEDWISE_MAX_BYTES`] per seed).
    fn seedwise_fits(rows: usize, c: usize, dtype: DType) -> bool {
        rows.saturating_mul(c).saturating_mul(dtype.size_bytes()) <= SEEDWISE_MAX_BYTES
    }

    /// The launch of a small forward: one block per seed, as many threads as the chunk has
    /// vectors (32 to 256), the widest vector that divides C.
    fn seedwise_launch(rows: usize, c: usize, s: usize, dtype: DType) -> (KernelConfig, LaunchConfig) {
        let vec = widest_vector(dtype, c);
        let nvec = (rows * c / vec as usize) as u64;
        let threads = (nvec.div_ceil(32) * 32).clamp(32, 256) as u32;
        let launch = LaunchConfig { grid_dim: (s as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        (KernelConfig::new(1, threads, vec), launch)
    }

    /// A small forward in one launch of `kasmina_fwd_seed` (replayed from a CUDA graph).
    fn forward_seedwise(&self, layer: &mut CudaLayer, x: &CudaTensor, y: &mut CudaTensor) -> CudaResult<()> {
        let (cfg, launch) = Self::seedwise_launch(x.rows, layer.c, layer.s, x.dtype);
        let k = self.kernels(x.dtype, cfg.vec)?;
        let key = GraphKey {
            op: 2,
            ptrs: [self.ptr(x), self.ptr(y), 0],
            rows: x.rows,
            dtype: x.dtype,
            cfg,
            any_active: layer.any_active(),
            dead_eps_bits: layer.dead_eps.to_bits(),
        };
        let (b, h, c) = (x.rows as u64, layer.h as u32, layer.c as u32);
        let mut run = |layer: &mut CudaLayer| {
            let mut lb = self.stream.launch_builder(&k.fwd_seed);
            lb.arg(&*x.buf)
                .arg(&mut *y.buf)
                .arg(&b)
                .arg(&h)
                .arg(&c)
                .arg(&layer.dead_eps)
                .arg(&layer.consts)
                .arg(&layer.colc)
                .arg(&layer.coef)
                .arg(&mut layer.acc);
            // SAFETY: the arguments match kasmina_fwd_seed's parameters in order and type; x and y
            // hold B*H elements of the module's dtype, consts and acc S records, colc and coef H
            // entries; the vector width divides C (and so H and every chunk's first column); one
            // block per seed, threads a multiple of 32 up to 256.
            unsafe { lb.launch(launch) }.ctx("launching kasmina_fwd_seed")?;
            Ok(())
        };
        if self.graphs_on(layer) { self.graphed(layer, key, &mut run) } else { run(layer) }
    }

    /// Whether a small backward with chunks of `c` columns runs one block per seed: at most
    /// [`SEED_BWD_MAX_C`] columns and a row of vectors within the block.
    fn seed_bwd_fits(c: usize, dtype: DType) -> bool {
        let vec = widest_vector(dtype, c) as usize;
        c <= SEED_BWD_MAX_C && c / vec <= SEED_BWD_THREADS as usize
    }

    /// A small backward in one launch of `kasmina_bwd_seed`: dx, the parameter gradients and the
    /// gradient statistics (replayed from a CUDA graph on the backend's own stream).
    fn backward_seedwise(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        g: &CudaTensor,
        dx: &mut CudaTensor,
    ) -> CudaResult<()> {
        let vec = widest_vector(x.dtype, layer.c);
        let k = self.kernels(x.dtype, vec)?;
        let lanes = SEED_BWD_THREADS as usize / (layer.c / vec as usize);
        let shared = layer.c * 4 * lanes;
        let launch = LaunchConfig {
            grid_dim: (layer.s as u32, 1, 1),
            block_dim: (SEED_BWD_THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let key = GraphKey {
            op: 3,
            ptrs: [self.ptr(x), self.ptr(g), self.ptr(dx)],
            rows: x.rows,
            dtype: x.dtype,
            cfg: KernelConfig::new(1, SEED_BWD_THREADS, vec),
            any_active: layer.any_active(),
            dead_eps_bits: 0,
        };
        let (b, h, c) = (x.rows as u64, layer.h as u32, layer.c as u32);
        let mut run = |layer: &mut CudaLayer| {
            let (dw, ds) = self.grad_targets(layer);
            let mut lb = self.stream.launch_builder(&k.bwd_seed);
            lb.arg(&*x.buf)
                .arg(&*g.buf)
                .arg(&mut *dx.buf)
                .arg(&b)
                .arg(&h)
                .arg(&c)
                .arg(&layer.consts)
                .arg(&layer.colc)
                .arg(&layer.coef)
                .arg(&dw)
                .arg(&ds)
                .arg(&mut layer.gnorm)
                .arg(&mut layer.acc_g2);
            // SAFETY: the arguments match kasmina_bwd_seed's parameters in order and type; x, g and
            // dx hold B*H elements of the dtype; consts S records, colc and coef H entries; dw and
            // ds S*C and S floats (the layer's, or the caller's, checked by backward_into); gnorm
            // and acc_g2 S; the vector width divides C, C / V <= 256 threads, and the dynamic shared
            // memory is C * 4 * L bytes for L = 256 / (C / V) lanes (at most 1024 V bytes).
            unsafe { lb.launch(launch) }.ctx("launching kasmina_bwd_seed")?;
            Ok(())
        };
        if self.graphs_on(layer) { self.graphed(layer, key, &mut run) } else { run(layer) }
    }

    /// Backward on the family [`CudaPath`] picks (Hopper path), else the portable kernels.
    fn backward_impl(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        g: &CudaTensor,
        dx: &mut CudaTensor,
    ) -> CudaResult<()> {
        if self.seedwise_applies(layer, x) && Self::seed_bwd_fits(layer.c, x.dtype) {
            return self.backward_seedwise(layer, x, g, dx);
        }
        let mut run = |layer: &mut CudaLayer, hopper: bool| {
            if hopper { self.hopper_backward(layer, x, g, dx) } else { self.backward_portable(layer, x, g, dx) }
        };
        let hopper = self.choose_path(layer, x.dtype, x.rows, true, &mut run)?;
        run(layer, hopper)
    }

    fn backward_portable(
        &self,
        layer: &mut CudaLayer,
        x: &CudaTensor,
        g: &CudaTensor,
        dx: &mut CudaTensor,
    ) -> CudaResult<()> {
        if x.rows == 0 {
            return self.clear_grads(layer);
        }
        let bytes = 3 * x.num_bytes();
        let op = self.op_name(layer, true);
        let cfg = self.pick(op, x.dtype, (x.rows, layer.h, layer.c), &mut |cfg| {
            // The main kernel and the column sums of its partials (fewer row groups, fewer partials).
            self.time_avg(Self::tune_reps(bytes), &mut || {
                let geo = self.launch_bwd_main(layer, x, g, dx, *cfg)?;
                self.launch_bwd_tail(layer, x.dtype, &geo, false)
            })
        })?;
        Self::check_cfg(&cfg, x.dtype, layer.h, self.uses_uniform(layer, &cfg))?;
        self.kernels(x.dtype, cfg.vec)?;
        let geo = Geometry::new(cfg, x.rows, layer.h, layer.c, layer.s)?;
        let any_active = layer.any_active();
        let pbytes = if any_active { geo.n_rg as usize * layer.h * 3 * 4 } else { 16 };
        layer.gpart.ensure(&self.stream, geo.slots() * 4)?;
        layer.ppart.ensure(&self.stream, pbytes)?;
        let dtype = x.dtype;
        let key = GraphKey {
            op: 1,
            ptrs: [self.ptr(x), self.ptr(g), self.ptr(dx)],
            rows: x.rows,
            dtype,
            cfg,
            any_active,
            dead_eps_bits: 0,
        };
        let mut run = |layer: &mut CudaLayer| {
            self.launch_bwd_main(layer, x, g, dx, cfg)?;
            self.launch_bwd_tail(layer, dtype, &geo, true)
        };
        if self.graphs_on(layer) && x.num_bytes() <= GRAPH_MAX_BYTES {
            self.graphed(layer, key, &mut run)
        } else {
            run(layer)
        }
    }

    /// Zero gradients for a call without rows: the layer's buffers or the caller's.
    pub(crate) fn clear_grads(&self, layer: &mut CudaLayer) -> CudaResult<()> {
        let st = &self.stream;
        match layer.grad_dst {
            Some((dw, ds)) => {
                let (nw, ns) = (layer.s * layer.c * 4, layer.s * 4);
                // SAFETY: backward_into's caller promised S*C and S f32 values at these addresses.
                unsafe {
                    cudarc::driver::result::memset_d8_async(dw, 0, nw, st.cu_stream()).ctx("clearing gradients")?;
                    cudarc::driver::result::memset_d8_async(ds, 0, ns, st.cu_stream()).ctx("clearing gradients")?;
                }
            }
            None => {
                st.memset_zeros(&mut layer.dweights).ctx("clearing gradients")?;
                st.memset_zeros(&mut layer.dscales).ctx("clearing gradients")?;
            }
        }
        st.memset_zeros(&mut layer.gnorm).ctx("clearing gradients")
    }

    /// The device addresses the next backward writes `dweights` and `dscales` to.
    fn grad_targets(&self, layer: &CudaLayer) -> (u64, u64) {
        layer.grad_dst.unwrap_or_else(|| {
            let (dw, _sync) = layer.dweights.device_ptr(&self.stream);
            let (ds, _sync) = layer.dscales.device_ptr(&self.stream);
            (dw, ds)
        })
    }

    /// Whether this call may capture or replay a graph of the backend's own: not on a
    /// caller's stream (the caller may be capturing one itself), not with caller-owned
    /// gradient buffers (a graph would bake their addresses in).
    fn graphs_on(&self, layer: &CudaLayer) -> bool {
        self.graphs && !self.borrowed_stream && layer.grad_dst.is_none()
    }

    /// Notes work of `layer` on the current stream (see `CudaLayer::foreign`).
    fn enter(&self, layer: &mut CudaLayer) {
        if self.stream.cu_stream() as usize != layer.home {
            layer.foreign = true;
        }
    }

    /// The layer header as the device holds it (schema version, H, S, epoch).
    fn read_header(&self, layer: &CudaLayer) -> CudaResult<RawHeader> {
        let h = self.read_vec(&layer.header, "reading the layer header")?;
        Ok(RawHeader { schema_version: h[0] as u8, hidden_dim: h[1], num_seeds: h[2], epoch: h[3] })
    }

    fn read_vec<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
        what: &str,
    ) -> CudaResult<Vec<T>> {
        let mut out = vec![T::default(); src.len()];
        self.stream.memcpy_dtoh(src, &mut out).ctx(what)?;
        self.sync()?;
        Ok(out)
    }
}

/// The first `n` values of `T` in bytes read back from the device, copied into aligned values
/// (a byte buffer has no alignment to view it in place).
fn pods<T: bytemuck::Pod>(bytes: &[u8], n: usize) -> Vec<T> {
    bytes.chunks_exact(std::mem::size_of::<T>()).take(n).map(bytemuck::pod_read_unaligned::<T>).collect()
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Layer = CudaLayer;

    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            backend: "cuda",
            index: self.ordinal,
            name: self.name.clone(),
            dtypes: DType::ALL.to_vec(),
            features: vec![
                format!("{}", self.arch),
                "nvrtc".into(),
                "vec16".into(),
                match self.tuner.lock().map(|t| t.mode()) {
                    Ok(crate::autotune::TuneMode::Off) => "autotune-off".into(),
                    _ => "autotune".into(),
                },
            ],
        }
    }

    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<CudaTensor> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or_else(|| CudaError::Unsupported(format!("a [{rows}, {cols}] {dtype} tensor is too large")))?;
        // SAFETY: the contents are unspecified by the trait; every element is written by
        // `write`, a kernel or a copy before it is read.
        let buf = unsafe { self.stream.alloc::<u8>(bytes.max(16)) }.ctx("allocating a tensor")?;
        Ok(CudaTensor { buf: std::mem::ManuallyDrop::new(buf), borrowed: false, rows, cols, dtype })
    }

    fn write(&self, tensor: &mut CudaTensor, data: HostData<'_>) -> Result<()> {
        if data.dtype() != tensor.dtype {
            return Err(Error::DType { what: "tensor data".into(), expected: tensor.dtype, got: data.dtype() });
        }
        if data.len() != tensor.rows * tensor.cols {
            return Err(Error::shape("tensor data", tensor.rows * tensor.cols, data.len()));
        }
        let bytes = data.as_bytes();
        if !bytes.is_empty() {
            self.stream.memcpy_htod(bytes, &mut tensor.buf.slice_mut(..bytes.len())).ctx("uploading a tensor")?;
        }
        Ok(())
    }

    fn read(&self, tensor: &CudaTensor, mut out: HostDataMut<'_>) -> Result<()> {
        if out.dtype() != tensor.dtype {
            return Err(Error::DType { what: "tensor output".into(), expected: tensor.dtype, got: out.dtype() });
        }
        if out.len() != tensor.rows * tensor.cols {
            return Err(Error::shape("tensor output", tensor.rows * tensor.cols, out.len()));
        }
        let bytes = out.as_bytes_mut();
        if !bytes.is_empty() {
            let n = bytes.len();
            self.stream.memcpy_dtoh(&tensor.buf.slice(..n), bytes).ctx("downloading a tensor")?;
            self.sync()?;
        }
        Ok(())
    }

    fn create_layer(&self, state: &LayerState) -> Result<CudaLayer> {
        Ok(self.create(state)?)
    }

    fn upload(&self, layer: &mut CudaLayer, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        self.enter(layer);
        Self::check_upload_shape(layer, state)?;
        match changed {
            StateChange::All => self.write_all(layer, state)?,
            StateChange::Seeds(ids) => {
                for &i in ids {
                    if i >= layer.s {
                        return Err(Error::SeedOutOfRange { seed_id: i, num_seeds: layer.s });
                    }
                    self.write_seed(layer, state, i)?;
                }
            }
        }
        layer.stability = state.config.stability;
        layer.dead_eps = state.config.dead_eps;
        self.write_header(layer, state)?;
        Ok(())
    }

    fn forward(&self, layer: &mut CudaLayer, x: &CudaTensor, y: &mut CudaTensor) -> Result<()> {
        self.enter(layer);
        Self::check_layer_tensor(layer, "x", x, x.rows, x.dtype)?;
        Self::check_layer_tensor(layer, "y", y, x.rows, x.dtype)?;
        Ok(self.forward_impl(layer, x, y)?)
    }

    fn backward(&self, layer: &mut CudaLayer, x: &CudaTensor, g: &CudaTensor, dx: &mut CudaTensor) -> Result<()> {
        self.enter(layer);
        Self::check_layer_tensor(layer, "x", x, x.rows, x.dtype)?;
        Self::check_layer_tensor(layer, "g", g, x.rows, x.dtype)?;
        Self::check_layer_tensor(layer, "dx", dx, x.rows, x.dtype)?;
        Ok(self.backward_impl(layer, x, g, dx)?)
    }

    fn param_grads(&self, layer: &CudaLayer) -> Result<ParamGrads> {
        Ok(ParamGrads {
            dweights: self.read_vec(&layer.dweights, "reading dweights")?[..layer.s * layer.c].to_vec(),
            dscales: self.read_vec(&layer.dscales, "reading dscales")?[..layer.s].to_vec(),
            grad_norm: self.read_vec(&layer.gnorm, "reading grad_norm")?[..layer.s].to_vec(),
        })
    }

    fn accumulators(&self, layer: &CudaLayer) -> Result<Accumulators> {
        let raw = self.read_vec(&layer.acc, "reading accumulators")?;
        let accs: &[Acc] = bytemuck::try_cast_slice(&raw[..layer.s * std::mem::size_of::<Acc>()])
            .map_err(|e| CudaError::Unsupported(format!("accumulator layout: {e}")))?;
        let moments = accs
            .iter()
            .map(|a| Moments {
                count: a.n,
                mean: a.mean,
                m2: a.m2,
                min: a.mn,
                max: a.mx,
                dead: a.dead,
                nonfinite: a.nf,
            })
            .collect();
        let grad_sq = self.read_vec(&layer.acc_g2, "reading gradient accumulators")?;
        Ok(Accumulators { moments, grad_sq })
    }

    fn reset_accumulators(&self, layer: &mut CudaLayer) -> Result<()> {
        Ok(self.reset_acc(layer)?)
    }

    fn checksum(&self, layer: &CudaLayer) -> Result<u32> {
        let header = self.read_header(layer)?;
        let recs: Vec<SeedRecord> = pods(&self.read_vec(&layer.records, "reading seed records")?, layer.s);
        let weights = self.read_vec(&layer.weights, "reading weights")?;
        let seeds: Vec<RawSeed> = recs.iter().map(SeedRecord::raw).collect();
        Ok(crc32_of_seeds(header, &seeds, &weights[..layer.s * layer.c]))
    }

    fn kernel_checksum(&self, layer: &CudaLayer, seeds: &[usize]) -> Result<u32> {
        let (s, c) = (layer.s, layer.c);
        if let Some(&bad) = seeds.iter().find(|&&i| i >= s) {
            return Err(Error::SeedOutOfRange { seed_id: bad, num_seeds: s });
        }
        let header = self.read_header(layer)?;
        let records: Vec<SeedRecord> = pods(&self.read_vec(&layer.records, "reading seed records")?, s);
        let consts: Vec<SeedConst> = pods(&self.read_vec(&layer.consts, "reading seed constants")?, s);
        let weights = self.read_vec(&layer.weights, "reading weights")?;
        let coef = self.read_vec(&layer.coef, "reading coefficients")?;
        let colc: Vec<ColCoef> = pods(&self.read_vec(&layer.colc, "reading column coefficients")?, s * c);
        let mut kernel_seeds = Vec::with_capacity(seeds.len());
        for &i in seeds {
            let (w, k) = (&weights[i * c..(i + 1) * c], &coef[i * c..(i + 1) * c]);
            let plan = plan_of(&consts[i]);
            // The flags, coefficients and column coefficients are derived further from the plan
            // and the weights: the device's must be, byte for byte, what those derive to.
            let want = derive(&plan, w);
            let rows: [(&str, &[u8], &[u8]); 3] = [
                ("constant flags", bytemuck::bytes_of(&want.sc.flags), bytemuck::bytes_of(&consts[i].flags)),
                ("coefficients", bytemuck::cast_slice(&want.coef), bytemuck::cast_slice(k)),
                (
                    "column coefficients",
                    bytemuck::cast_slice(&want.colc),
                    bytemuck::cast_slice(&colc[i * c..(i + 1) * c]),
                ),
            ];
            if let Some((what, host, device)) = rows.into_iter().find(|(_, host, device)| host != device) {
                return Err(Error::DeviceIntegrity {
                    backend: "cuda",
                    what: format!("the {what} of seed {i} are not what its weights and constants derive to"),
                    device: crc32fast::hash(device),
                    host: crc32fast::hash(host),
                });
            }
            kernel_seeds.push(KernelSeed { seed_id: i, record: records[i].raw(), weights: w, plan, softmax: k });
        }
        Ok(kernel_crc(header, kernel_seeds))
    }

    fn copy(&self, src: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
        if src.rows != dst.rows || src.cols != dst.cols || src.dtype != dst.dtype {
            return Err(Error::shape(
                "copy destination",
                format!("[{}, {}] {}", src.rows, src.cols, src.dtype),
                format!("[{}, {}] {}", dst.rows, dst.cols, dst.dtype),
            ));
        }
        let n = src.num_bytes();
        if n > 0 {
            self.stream.memcpy_dtod(&src.buf.slice(..n), &mut dst.buf.slice_mut(..n)).ctx("device-to-device copy")?;
        }
        Ok(())
    }

    fn prepare(&self, dtypes: &[DType]) -> Result<()> {
        Ok(self.precompile(dtypes)?)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.sync()?)
    }

    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event")?;
        let end = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).ctx("creating an event")?;
        start.record(&self.stream).ctx("recording an event")?;
        f()?;
        end.record(&self.stream).ctx("recording an event")?;
        let ms = start.elapsed_ms(&end).ctx("reading event time")?;
        Ok(ms as f64)
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    /// The warp-per-seed mapping: where it applies (seed rows of 1 to 16 threads, a power of
    /// two), and its geometry (tiles of whole seeds, one partial segment per warp, every seed
    /// in exactly one tile at segment seed % warps, as the merge kernels compute it).
    #[test]
    fn warp_per_seed_geometry_covers_every_seed_once() {
        assert!(ws_applies(64, 8) && ws_applies(64, 4) && ws_applies(16, 1) && ws_applies(8, 8));
        assert!(!ws_applies(64, 2), "32 threads per seed row: the row mapping is already one seed per warp");
        assert!(!ws_applies(48, 4) && !ws_applies(60, 8) && !ws_applies(256, 8) && !ws_applies(4, 8));
        for (c, s, threads, vec) in
            [(64usize, 128usize, 128u32, 8u32), (32, 18, 256, 4), (8, 5, 64, 8), (16, 40, 96, 1)]
        {
            assert!(ws_applies(c, vec));
            let cfg = KernelConfig::new(7, threads, vec);
            let g = Geometry::with_mapping(cfg, 100, c * s, c, s, true).unwrap();
            let warps = threads / 32;
            assert_eq!((g.tw, g.segs), (warps * c as u32, warps));
            assert_eq!(g.n_tiles as usize, s.div_ceil(warps as usize));
            assert_eq!(g.launch(PARTIAL_BYTES as u32, true).shared_mem_bytes, 0);
            for seed in 0..s {
                // merge_seed_warp: tiles t0..=t1 hold the seed, at segment seed - t * TW / C.
                let (t0, t1) = (seed * c / g.tw as usize, ((seed + 1) * c - 1) / g.tw as usize);
                assert_eq!(t0, t1, "C={c}: seed {seed} spans tiles");
                assert_eq!(seed - t0 * g.tw as usize / c, seed % warps as usize);
            }
        }
    }

    fn uniform_ok(cfg: &KernelConfig, c: usize) -> bool {
        c.is_multiple_of(cfg.vec as usize) && cfg.threads <= UNIFORM_MAX_THREADS
    }

    /// Every candidate the tuner may time is a configuration the launch code accepts for the
    /// kernels that will run it (a rejected one would only be skipped, but must not exist).
    #[test]
    fn every_candidate_passes_the_launch_checks() {
        for dtype in DType::ALL {
            for (b, h, s) in
                [(16384usize, 8192usize, 128usize), (32, 768, 16), (7, 96, 3), (1000, 4096, 1), (64, 12, 3)]
            {
                let c = h / s;
                let uniform = c.is_multiple_of(8);
                for forward in [true, false] {
                    for extra in [true, false] {
                        let cands = CudaBackend::candidate_set(dtype, b, h, 132, uniform, forward, extra, Some(c));
                        assert!(!cands.is_empty());
                        for cfg in &cands {
                            let uni = uniform_ok(cfg, c);
                            CudaBackend::check_cfg(cfg, dtype, h, uni)
                                .unwrap_or_else(|e| panic!("{dtype} {b}x{h} S={s}: {e}"));
                            assert!(cfg.unroll == DEFAULT_UNROLL || (forward && uni), "{cfg}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn extra_candidates_only_for_the_seed_uniform_kernels() {
        let (b, h) = (16384, 8192);
        let base = CudaBackend::candidate_set(DType::BF16, b, h, 132, true, true, false, None);
        let all = CudaBackend::candidate_set(DType::BF16, b, h, 132, true, true, true, None);
        assert!(base.iter().all(|c| all.contains(c)), "the extra set contains the base set");
        // 2048-column bf16 tiles, unroll 8 and rows balanced over 3 blocks per SM (4 tiles).
        assert!(all.iter().any(|c| c.vec == 8 && c.threads == 256));
        assert!(all.iter().any(|c| c.unroll == 8));
        assert!(all.iter().any(|c| c.vec == 8 && c.threads == 256 && c.rows == 166));
        // The warp-per-seed forward (C = 64): rows balanced over its tiles of threads / 32 seeds,
        // 32 tiles of 128 threads, 6 blocks per SM: 16384 * 32 / (132 * 6) rounded up.
        let ws = CudaBackend::candidate_set(DType::BF16, b, h, 132, true, true, true, Some(64));
        assert!(ws.iter().any(|c| c.vec == 8 && c.threads == 128 && c.rows == 662));
        assert!(!all.iter().any(|c| c.vec == 8 && c.threads == 128 && c.rows == 662));
        // A chunk size where no warp-per-seed mapping applies keeps the row mapping's rows.
        assert_eq!(CudaBackend::candidate_set(DType::BF16, b, h, 132, true, true, true, Some(48)), all);
        assert!(base.iter().all(|c| c.threads * c.vec <= MAX_TILE && c.unroll == DEFAULT_UNROLL));
        // The backward has no unroll-8 kernel; the per-column kernels get the base set only.
        let bwd = CudaBackend::candidate_set(DType::BF16, b, h, 132, true, false, true, None);
        assert!(bwd.iter().all(|c| c.unroll == DEFAULT_UNROLL) && bwd.iter().any(|c| c.threads == 256 && c.vec == 8));
        let cols = CudaBackend::candidate_set(DType::BF16, b, h, 132, false, true, true, None);
        assert_eq!(cols, CudaBackend::candidate_set(DType::BF16, b, h, 132, false, true, false, None));
    }
}
