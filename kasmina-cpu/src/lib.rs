//! `kasmina-cpu`: the Kasmina seed layer on the CPU.
//!
//! [`CpuBackend`] implements [`kasmina_core::Backend`] for f32, f16 and bf16
//! activations held in [`CpuTensor`]s (64-byte aligned host memory).
//!
//! - **SIMD**: the kernels are written once over a small vector trait and
//!   instantiated for AVX-512 (16 lanes), AVX2 + FMA + F16C (8 lanes), AArch64
//!   NEON (4 lanes) and a portable scalar fallback, chosen at runtime
//!   ([`SimdLevel::detect`]; [`CpuBackend::with_options`] forces one). f16 and
//!   bf16 are converted in vector registers (F16C, NEON `fcvtl`/`fcvtn`; u16
//!   shifts and round-to-nearest-even bit arithmetic for bf16, or AVX512_BF16's
//!   `vcvtneps2bf16` where the CPU has it: [`SimdLevel::Avx512Bf16`]).
//! - **Threads**: rows are split into fixed blocks (a function of the shape,
//!   not of the thread count) run on a rayon pool owned by the backend; block
//!   partials are merged in block order, so telemetry and parameter gradients
//!   are bit-identical for any number of threads (see [`layer`]).
//! - **Memory**: identity seeds are a raw copy fused with their telemetry, so a
//!   layer of dormant seeds reads `x` and writes `y` once. Large outputs whose
//!   chunks are 64-byte aligned are written with non-temporal stores. Per-seed
//!   constants (softmax of ATTENTION weights, `w * s`, clamp bounds) are computed
//!   at upload; scratch lives in the layer, so steady-state calls do not allocate.
//! - **Borrowed memory**: [`CpuBackend::forward_slices`] and [`CpuBackend::backward_slices`] run
//!   on the caller's own host buffers (a PyTorch CPU tensor's storage) without copying them, and
//!   [`CpuBackend::set_params`] takes the blueprint parameters from the caller.
//! - **Telemetry**: per-block f32 sums of `x - K` (K near the seed's mean),
//!   merged in f64 with Chan's formula; the `kernels` module docs give the accuracy argument.
//!
//! Fixed tuning (measurements in `benches/RESULTS.md`): outputs from 8 MiB use non-temporal
//! stores; the forward visits each seed 4 rows at a time (8 for f16/bf16), the backward 4,
//! which fixes the f32 summation order, so results are bit-identical across thread counts;
//! software prefetch only where the hardware prefetchers cannot follow (the chunks of `x`
//! that the backward of active seeds reads). The library reads no environment variable.
//!
//! ```
//! use kasmina_core::{Backend, DType, HostTensorData, KasminaLayer, LayerConfig};
//! use kasmina_cpu::CpuBackend;
//!
//! let backend = CpuBackend::new()?;
//! let mut layer = KasminaLayer::new(backend, LayerConfig::new(8, 2)?)?;
//! let x = HostTensorData::from_f32(DType::F32, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
//! let mut y = HostTensorData::zeros(DType::F32, 8);
//! layer.forward_host(x.view(), y.view_mut())?;
//! assert_eq!(y, x); // dormant seeds are an identity
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod dispatch;
pub mod error;
mod kernels;
pub mod layer;
mod simd;
mod tensor;

use kasmina_core::{
    Accumulators, Backend, DType, DeviceInfo, DeviceTensor, HostData, HostDataMut, LayerState, ParamGrads, Result,
    StateChange,
};
use rayon::prelude::*;

pub use error::CpuError;
pub use layer::CpuLayer;
pub use simd::SimdLevel;
pub use tensor::CpuTensor;

use dispatch::Isa;
use kernels::{BF16, BwdPartial, Dt, F16, F32};

/// Outputs at least this large (bytes) use non-temporal stores (when aligned): they
/// would not stay in cache anyway, and streaming them skips the read-for-ownership.
const NT_MIN_BYTES: usize = 8 << 20;

/// The CPU backend: a rayon thread pool and a SIMD level.
///
/// Cloning is cheap and shares the thread pool, so many layers (or a process-wide
/// binding such as the Python package) run on one pool instead of one per layer.
#[derive(Clone)]
pub struct CpuBackend {
    pool: std::sync::Arc<rayon::ThreadPool>,
    threads: usize,
    level: SimdLevel,
    isa: Isa,
    name: String,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend").field("threads", &self.threads).field("simd", &self.level).finish()
    }
}

impl CpuBackend {
    /// A backend with one thread per available core and the best SIMD level of this CPU.
    pub fn new() -> Result<CpuBackend> {
        Self::with_options(0, SimdLevel::detect())
    }

    /// A backend with `threads` worker threads (0 = one per available core).
    pub fn with_threads(threads: usize) -> Result<CpuBackend> {
        Self::with_options(threads, SimdLevel::detect())
    }

    /// A backend with `threads` threads (0 = one per core) and a given SIMD level
    /// (an error when this CPU does not support it).
    pub fn with_options(threads: usize, level: SimdLevel) -> Result<CpuBackend> {
        let isa = Isa::new(level).ok_or(CpuError::UnsupportedSimd(level))?;
        let threads =
            if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kasmina-cpu-{i}"))
            .build()
            .map_err(|e| CpuError::ThreadPool(e.to_string()))?;
        Ok(CpuBackend { pool: std::sync::Arc::new(pool), threads, level, isa, name: cpu_name() })
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The SIMD level in use.
    pub fn simd_level(&self) -> SimdLevel {
        self.level
    }

    /// `y = layer(x)` on borrowed host memory (SPEC 5), the zero-copy path of
    /// bindings that hand over their own buffers (a PyTorch CPU tensor's storage):
    /// `x` and `y` hold `B * H` elements of the same dtype, rows of `H`, no
    /// alignment required (64-byte aligned outputs are streamed past the cache).
    pub fn forward_slices(&self, layer: &mut CpuLayer, x: HostData<'_>, y: HostDataMut<'_>) -> Result<()> {
        let rows = Self::check_slices(layer, &[("x", x), ("y", y.as_ref())])?;
        let (xb, mut y) = (x.as_bytes(), y);
        let yb = y.as_bytes_mut();
        match x.dtype() {
            DType::F32 => self.forward_typed::<F32>(layer, cast(xb)?, cast_mut(yb)?, rows),
            DType::F16 => self.forward_typed::<F16>(layer, cast(xb)?, cast_mut(yb)?, rows),
            DType::BF16 => self.forward_typed::<BF16>(layer, cast(xb)?, cast_mut(yb)?, rows),
        }
        Ok(())
    }

    /// `dx` from `g = dL/dy` on borrowed host memory (SPEC 7), like
    /// [`CpuBackend::forward_slices`]. The call's parameter gradients go to
    /// `grads` when given (`dweights[S, C]` and `dscales[S]` of the caller, e.g.
    /// the `.grad` buffers of a training framework), else to the layer (read
    /// with [`Backend::param_grads`]); `Σ g²` is added to the accumulators.
    pub fn backward_slices(
        &self,
        layer: &mut CpuLayer,
        x: HostData<'_>,
        g: HostData<'_>,
        dx: HostDataMut<'_>,
        grads: Option<(&mut [f32], &mut [f32])>,
    ) -> Result<()> {
        let rows = Self::check_slices(layer, &[("x", x), ("g", g), ("dx", dx.as_ref())])?;
        if let Some((dw, ds)) = &grads {
            if dw.len() != layer.s * layer.c {
                return Err(kasmina_core::Error::shape("dweights", layer.s * layer.c, dw.len()));
            }
            if ds.len() != layer.s {
                return Err(kasmina_core::Error::shape("dscales", layer.s, ds.len()));
            }
        }
        let (xb, gb, mut dx) = (x.as_bytes(), g.as_bytes(), dx);
        let db = dx.as_bytes_mut();
        match x.dtype() {
            DType::F32 => self.backward_typed::<F32>(layer, cast(xb)?, cast(gb)?, cast_mut(db)?, rows),
            DType::F16 => self.backward_typed::<F16>(layer, cast(xb)?, cast(gb)?, cast_mut(db)?, rows),
            DType::BF16 => self.backward_typed::<BF16>(layer, cast(xb)?, cast(gb)?, cast_mut(db)?, rows),
        }
        if let Some((dw, ds)) = grads {
            dw.copy_from_slice(&layer.grads.dweights);
            ds.copy_from_slice(&layer.grads.dscales);
        }
        Ok(())
    }

    /// Replaces the blueprint parameters the layer computes with (`weights[S, C]`,
    /// `scales[S]`), re-deriving the constants of the seeds whose parameters
    /// changed. For bindings whose framework owns the parameters (and its
    /// optimizer updates them in place): the host [`LayerState`] is not touched,
    /// so the device checksum follows these values until the next upload.
    pub fn set_params(&self, layer: &mut CpuLayer, weights: &[f32], scales: &[f32]) -> Result<()> {
        layer.set_params(weights, scales)
    }

    /// Rows of the borrowed buffers `bufs` (every one `rows * H` elements of one dtype).
    fn check_slices(layer: &CpuLayer, bufs: &[(&str, HostData<'_>)]) -> Result<usize> {
        let (first, x) = bufs[0];
        if !x.len().is_multiple_of(layer.h) {
            return Err(kasmina_core::Error::shape(
                first,
                format!("a multiple of H = {} elements", layer.h),
                format!("{} elements", x.len()),
            ));
        }
        for (what, b) in &bufs[1..] {
            if b.dtype() != x.dtype() {
                return Err(kasmina_core::Error::DType { what: (*what).into(), expected: x.dtype(), got: b.dtype() });
            }
            if b.len() != x.len() {
                return Err(kasmina_core::Error::shape(*what, x.len(), b.len()));
            }
        }
        Ok(x.len() / layer.h)
    }

    fn check_tensor(what: &str, t: &CpuTensor, rows: usize, h: usize, dtype: DType) -> Result<()> {
        if t.cols() != h || t.rows() != rows {
            return Err(kasmina_core::Error::shape(
                what,
                format!("[{rows}, {h}]"),
                format!("[{}, {}]", t.rows(), t.cols()),
            ));
        }
        if t.dtype() != dtype {
            return Err(kasmina_core::Error::DType { what: what.into(), expected: dtype, got: t.dtype() });
        }
        Ok(())
    }

    fn forward_typed<D: Dt>(&self, layer: &mut CpuLayer, x: &[D::Raw], y: &mut [D::Raw], rows: usize) {
        let h = layer.h;
        let rpb = layer::rows_per_block(rows, h);
        let nblocks = rows.div_ceil(rpb);
        layer.ensure_fwd(nblocks);
        layer.ensure_threads(self.pool.current_num_threads());
        let nt = use_nt::<D>(y, layer.c);
        let isa = self.isa;
        let s = layer.s;
        {
            let (plan, scratch, parts) = layer.split();
            let parts = &mut parts.fwd[..nblocks * s];
            let block = |(b, (yb, out)): (usize, (&mut [D::Raw], &mut [kasmina_core::Moments]))| {
                let xb = &x[b * rpb * h..b * rpb * h + yb.len()];
                let mut sc = lock_scratch(scratch);
                // SAFETY: `xb` and `yb` hold the same whole rows of H elements;
                // the scratch was sized for this layer's S and C.
                unsafe { dispatch::forward::<D>(isa, nt, &plan, xb, yb, &mut sc, out) };
            };
            match nblocks {
                0 => {}
                // One block: the calling thread runs it (waking the pool would cost more).
                1 => block((0, (y, parts))),
                _ => self.pool.install(|| {
                    y.par_chunks_mut(rpb * h).zip(parts.par_chunks_mut(s)).enumerate().for_each(block);
                }),
            }
        }
        layer.merge_forward(nblocks);
    }

    fn backward_typed<D: Dt>(&self, layer: &mut CpuLayer, x: &[D::Raw], g: &[D::Raw], dx: &mut [D::Raw], rows: usize) {
        let h = layer.h;
        let rpb = layer::rows_per_block(rows, h);
        let nblocks = rows.div_ceil(rpb);
        layer.ensure_bwd(nblocks);
        layer.ensure_threads(self.pool.current_num_threads());
        let nt = use_nt::<D>(dx, layer.c);
        let isa = self.isa;
        let (s, cp) = (layer.s, layer.cp);
        {
            let (plan, scratch, parts) = layer.split();
            let cols = &mut parts.col[..nblocks * s * cp];
            let scals = &mut parts.scal[..nblocks * s * 4];
            let gsqs = &mut parts.gsq[..nblocks * s];
            type Slots<'a, R> = (((&'a mut [R], &'a mut [f32]), &'a mut [f64]), &'a mut [f64]);
            let block = |(b, (((db, col), scal), gsq)): (usize, Slots<'_, D::Raw>)| {
                let range = b * rpb * h..b * rpb * h + db.len();
                let mut sc = lock_scratch(scratch);
                let part = BwdPartial { col, scal, gsq };
                // SAFETY: `x`, `g` and `db` cover the same whole rows; scratch and
                // partials were sized for this layer's S, C and block count.
                unsafe { dispatch::backward::<D>(isa, nt, &plan, &x[range.clone()], &g[range], db, &mut sc, part) };
            };
            match nblocks {
                0 => {}
                // One block: the calling thread runs it (waking the pool would cost more).
                1 => block((0, (((dx, cols), scals), gsqs))),
                _ => self.pool.install(|| {
                    dx.par_chunks_mut(rpb * h)
                        .zip(cols.par_chunks_mut(s * cp))
                        .zip(scals.par_chunks_mut(s * 4))
                        .zip(gsqs.par_chunks_mut(s))
                        .enumerate()
                        .for_each(block);
                }),
            }
        }
        layer.merge_backward(nblocks);
    }
}

/// The elements' bytes as the kernels' raw values (f32 bits or u16).
fn cast<T: bytemuck::Pod>(b: &[u8]) -> Result<&[T]> {
    bytemuck::try_cast_slice(b).map_err(|e| CpuError::Layout(e.to_string()).into())
}

/// The elements' bytes as the kernels' raw values, mutable.
fn cast_mut<T: bytemuck::Pod>(b: &mut [u8]) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(b).map_err(|e| CpuError::Layout(e.to_string()).into())
}

/// Locks a free per-thread scratch: the one of the current pool thread (each
/// runs one block at a time, so it is uncontended); any free one otherwise.
fn lock_scratch(
    scratch: &[std::sync::Mutex<kernels::ThreadScratch>],
) -> std::sync::MutexGuard<'_, kernels::ThreadScratch> {
    let n = scratch.len();
    let start = rayon::current_thread_index().unwrap_or(0) % n;
    for k in 0..n {
        if let Ok(g) = scratch[(start + k) % n].try_lock() {
            return g;
        }
    }
    scratch[start].lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether to stream the output: large, 64-byte aligned, and every chunk a
/// whole number of 64-byte lines (so every vector store is aligned).
fn use_nt<D: Dt>(out: &[D::Raw], c: usize) -> bool {
    let esize = std::mem::size_of::<D::Raw>();
    std::mem::size_of_val(out) >= NT_MIN_BYTES
        && (out.as_ptr() as usize).is_multiple_of(64)
        && (c * esize).is_multiple_of(64)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Layer = CpuLayer;

    fn info(&self) -> DeviceInfo {
        let mut features = self.level.features();
        features.push(format!("threads={}", self.threads));
        DeviceInfo {
            backend: "cpu",
            index: 0,
            name: format!("{} ({} threads, {:?})", self.name, self.threads, self.level),
            dtypes: DType::ALL.to_vec(),
            features,
        }
    }

    fn supports(&self, _dtype: DType) -> bool {
        true
    }

    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<CpuTensor> {
        Ok(CpuTensor::zeros(rows, cols, dtype)?)
    }

    fn write(&self, tensor: &mut CpuTensor, data: HostData<'_>) -> Result<()> {
        if data.dtype() != tensor.dtype() {
            return Err(kasmina_core::Error::DType {
                what: "write".into(),
                expected: tensor.dtype(),
                got: data.dtype(),
            });
        }
        if data.len() != tensor.len() {
            return Err(kasmina_core::Error::shape("write", tensor.len(), data.len()));
        }
        tensor.as_bytes_mut().copy_from_slice(data.as_bytes());
        Ok(())
    }

    fn read(&self, tensor: &CpuTensor, mut out: HostDataMut<'_>) -> Result<()> {
        if out.dtype() != tensor.dtype() {
            return Err(kasmina_core::Error::DType { what: "read".into(), expected: tensor.dtype(), got: out.dtype() });
        }
        if out.len() != tensor.len() {
            return Err(kasmina_core::Error::shape("read", tensor.len(), out.len()));
        }
        out.as_bytes_mut().copy_from_slice(tensor.as_bytes());
        Ok(())
    }

    fn create_layer(&self, state: &LayerState) -> Result<CpuLayer> {
        state.validate()?;
        CpuLayer::new(state, self.pool.current_num_threads())
    }

    fn upload(&self, layer: &mut CpuLayer, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        layer.upload(state, changed)
    }

    fn forward(&self, layer: &mut CpuLayer, x: &CpuTensor, y: &mut CpuTensor) -> Result<()> {
        let rows = x.rows();
        Self::check_tensor("x", x, rows, layer.h, x.dtype())?;
        Self::check_tensor("y", y, rows, layer.h, x.dtype())?;
        self.forward_slices(layer, x.view(), y.view_mut())
    }

    fn backward(&self, layer: &mut CpuLayer, x: &CpuTensor, g: &CpuTensor, dx: &mut CpuTensor) -> Result<()> {
        let rows = x.rows();
        Self::check_tensor("x", x, rows, layer.h, x.dtype())?;
        Self::check_tensor("g", g, rows, layer.h, x.dtype())?;
        Self::check_tensor("dx", dx, rows, layer.h, x.dtype())?;
        self.backward_slices(layer, x.view(), g.view(), dx.view_mut(), None)
    }

    fn param_grads(&self, layer: &CpuLayer) -> Result<ParamGrads> {
        Ok(layer.grads.clone())
    }

    fn accumulators(&self, layer: &CpuLayer) -> Result<Accumulators> {
        Ok(layer.acc.clone())
    }

    fn reset_accumulators(&self, layer: &mut CpuLayer) -> Result<()> {
        layer.acc = Accumulators::empty(layer.s);
        Ok(())
    }

    fn checksum(&self, layer: &CpuLayer) -> Result<u32> {
        Ok(layer.checksum())
    }

    fn kernel_checksum(&self, layer: &CpuLayer, seeds: &[usize]) -> Result<u32> {
        layer.kernel_checksum(seeds)
    }

    fn copy(&self, src: &CpuTensor, dst: &mut CpuTensor) -> Result<()> {
        if src.rows() != dst.rows() || src.cols() != dst.cols() {
            return Err(kasmina_core::Error::shape(
                "copy destination",
                format!("[{}, {}]", src.rows(), src.cols()),
                format!("[{}, {}]", dst.rows(), dst.cols()),
            ));
        }
        if src.dtype() != dst.dtype() {
            return Err(kasmina_core::Error::DType {
                what: "copy destination".into(),
                expected: src.dtype(),
                got: dst.dtype(),
            });
        }
        let s = src.as_bytes();
        let d = dst.as_bytes_mut();
        // One contiguous piece per thread, cut on 64-byte lines.
        let piece = s.len().div_ceil(self.threads).div_ceil(64).max(1) * 64;
        self.pool.install(|| {
            d.par_chunks_mut(piece).zip(s.par_chunks(piece)).for_each(|(d, s)| d.copy_from_slice(s));
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
