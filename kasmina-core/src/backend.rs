//! The [`Backend`] trait every device implements, and the plain data that
//! crosses it (dtypes, host slices, device info, accumulators, gradients).
//!
//! A backend owns device memory and kernels, nothing else: no lifecycle rule,
//! no schedule, no report formula. [`crate::KasminaLayer`] validates every
//! request before it reaches a backend, so a backend may assume shapes and
//! dtypes were checked, but it must still return errors rather than panic.

use half::{bf16, f16};

use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::state::LayerState;
use crate::telemetry::Moments;

/// Activation dtype. Arithmetic is f32 whatever the storage (SPEC 5.1).
///
/// Deliberately exhaustive (not `#[non_exhaustive]`), like the SPEC's enums (lifecycle states,
/// blueprint types, grafting strategies, whose values a snapshot stores): every backend and
/// tool matches on it without a wildcard, so a new variant fails to compile wherever it is not
/// handled yet instead of reaching a run-time "unsupported" arm. Adding one is a breaking
/// change of the crate's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// `f32`, `f16`, `bf16`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(format!("unknown dtype '{s}' (one of f32, f16, bf16)")),
        }
    }
}

/// A borrowed host slice of activations in one of the dtypes.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values.
    F16(&'a [f16]),
    /// bf16 values.
    BF16(&'a [bf16]),
}

/// A mutable host slice of activations in one of the dtypes.
#[derive(Debug)]
pub enum HostDataMut<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// f16 values.
    F16(&'a mut [f16]),
    /// bf16 values.
    BF16(&'a mut [bf16]),
}

impl HostData<'_> {
    /// The dtype.
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::F16(v) => bytemuck::cast_slice(v),
            HostData::BF16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Element `i` widened to f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            HostData::F32(v) => v[i],
            HostData::F16(v) => v[i].to_f32(),
            HostData::BF16(v) => v[i].to_f32(),
        }
    }
}

impl HostDataMut<'_> {
    /// The dtype.
    pub fn dtype(&self) -> DType {
        match self {
            HostDataMut::F32(_) => DType::F32,
            HostDataMut::F16(_) => DType::F16,
            HostDataMut::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostDataMut::F32(v) => v.len(),
            HostDataMut::F16(v) => v.len(),
            HostDataMut::BF16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes, mutable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            HostDataMut::F32(v) => bytemuck::cast_slice_mut(v),
            HostDataMut::F16(v) => bytemuck::cast_slice_mut(v),
            HostDataMut::BF16(v) => bytemuck::cast_slice_mut(v),
        }
    }

    /// A shared view.
    pub fn as_ref(&self) -> HostData<'_> {
        match self {
            HostDataMut::F32(v) => HostData::F32(v),
            HostDataMut::F16(v) => HostData::F16(v),
            HostDataMut::BF16(v) => HostData::BF16(v),
        }
    }
}

/// An owned host tensor `[rows, cols]` in one dtype (for tools, tests and the CLI).
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensorData {
    /// f32 values.
    F32(Vec<f32>),
    /// f16 values.
    F16(Vec<f16>),
    /// bf16 values.
    BF16(Vec<bf16>),
}

impl HostTensorData {
    /// `len` elements of `dtype` rounded from `values` (round to nearest even).
    pub fn from_f32(dtype: DType, values: &[f32]) -> Self {
        match dtype {
            DType::F32 => HostTensorData::F32(values.to_vec()),
            DType::F16 => HostTensorData::F16(values.iter().map(|v| f16::from_f32(*v)).collect()),
            DType::BF16 => HostTensorData::BF16(values.iter().map(|v| bf16::from_f32(*v)).collect()),
        }
    }

    /// `len` zeros of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        match dtype {
            DType::F32 => HostTensorData::F32(vec![0.0; len]),
            DType::F16 => HostTensorData::F16(vec![f16::ZERO; len]),
            DType::BF16 => HostTensorData::BF16(vec![bf16::ZERO; len]),
        }
    }

    /// The values widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let v = self.view();
        (0..v.len()).map(|i| v.get_f32(i)).collect()
    }

    /// A borrowed view.
    pub fn view(&self) -> HostData<'_> {
        match self {
            HostTensorData::F32(v) => HostData::F32(v),
            HostTensorData::F16(v) => HostData::F16(v),
            HostTensorData::BF16(v) => HostData::BF16(v),
        }
    }

    /// A mutable view.
    pub fn view_mut(&mut self) -> HostDataMut<'_> {
        match self {
            HostTensorData::F32(v) => HostDataMut::F32(v),
            HostTensorData::F16(v) => HostDataMut::F16(v),
            HostTensorData::BF16(v) => HostDataMut::BF16(v),
        }
    }
}

/// What a backend tells about its device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// `cpu`, `wgpu`, `cuda`.
    pub backend: &'static str,
    /// Device index within the backend.
    pub index: usize,
    /// The device's own name (e.g. "NVIDIA H100 80GB HBM3").
    pub name: String,
    /// Dtypes the device runs natively.
    pub dtypes: Vec<DType>,
    /// Features in use or available (`avx2`, `subgroups`, `tma`, ...).
    pub features: Vec<String>,
}

impl DeviceInfo {
    /// `backend:index`, e.g. `cuda:0`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.backend, self.index)
    }
}

/// Which seeds changed since the last upload.
#[derive(Debug, Clone, Copy)]
pub enum StateChange<'a> {
    /// Everything (layer-wide fields included).
    All,
    /// Only these seeds' state and parameters, plus the layer-wide fields (epoch).
    Seeds(&'a [usize]),
}

/// Per-seed accumulators a backend holds between `end_epoch`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulators {
    /// Forward statistics of each seed's input chunk.
    pub moments: Vec<Moments>,
    /// `Σ g²` of each seed's chunk over every backward call.
    pub grad_sq: Vec<f64>,
}

impl Accumulators {
    /// Nothing seen, for `num_seeds` seeds.
    pub fn empty(num_seeds: usize) -> Self {
        Self { moments: vec![Moments::empty(); num_seeds], grad_sq: vec![0.0; num_seeds] }
    }

    /// Checks both arrays have `num_seeds` entries.
    pub fn check_len(&self, num_seeds: usize) -> Result<()> {
        if self.moments.len() != num_seeds || self.grad_sq.len() != num_seeds {
            return Err(Error::shape(
                "accumulators",
                format!("{num_seeds} seeds"),
                format!("{} moments and {} gradient sums", self.moments.len(), self.grad_sq.len()),
            ));
        }
        Ok(())
    }

    /// `sqrt(Σ g²)` of one seed, as reported (SPEC 7).
    pub fn grad_norm(&self, seed: usize) -> f32 {
        self.grad_sq[seed].max(0.0).sqrt() as f32
    }
}

/// Parameter gradients of one backward call (SPEC 7), summed over all rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGrads {
    /// `dweights[S, C]`, row-major.
    pub dweights: Vec<f32>,
    /// `dscales[S]`.
    pub dscales: Vec<f32>,
    /// `sqrt(Σ g²)` per seed, of this call alone.
    pub grad_norm: Vec<f32>,
}

/// A device tensor's shape and dtype.
pub trait DeviceTensor {
    /// Rows (B).
    fn rows(&self) -> usize;
    /// Columns (H).
    fn cols(&self) -> usize;
    /// Storage dtype.
    fn dtype(&self) -> DType;
}

/// Implements [`DeviceTensor`] for a tensor type with `rows`, `cols` (usize) and `dtype`
/// ([`DType`]) fields, as every in-tree backend's tensor has.
#[macro_export]
macro_rules! impl_device_tensor {
    ($t:ty) => {
        impl $crate::DeviceTensor for $t {
            fn rows(&self) -> usize {
                self.rows
            }
            fn cols(&self) -> usize {
                self.cols
            }
            fn dtype(&self) -> $crate::DType {
                self.dtype
            }
        }
    };
}

/// One device that can run Kasmina layers.
///
/// Tensors and layer state live on the device between calls: a training loop
/// uploads `x` once, runs `forward` and `backward` on device tensors and reads
/// back only what it needs. All arithmetic follows `../shared/SPEC.md`
/// sections 5 and 7; statistics are deterministic (fixed reduction order).
pub trait Backend {
    /// A device tensor `[rows, cols]` of one dtype.
    type Tensor: DeviceTensor;
    /// A layer's device-side state: the SoA state and parameters, the
    /// accumulators, the gradients of the last backward, scratch space.
    type Layer;

    /// The device this backend runs on.
    fn info(&self) -> DeviceInfo;

    /// Whether `dtype` runs on this device.
    fn supports(&self, dtype: DType) -> bool {
        self.info().dtypes.contains(&dtype)
    }

    /// Allocates a tensor `[rows, cols]` of `dtype` (contents unspecified).
    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<Self::Tensor>;

    /// Copies host data into a tensor; `data` has `rows * cols` elements of the tensor's dtype.
    fn write(&self, tensor: &mut Self::Tensor, data: HostData<'_>) -> Result<()>;

    /// Copies a tensor to the host; `out` has `rows * cols` elements of the tensor's dtype.
    fn read(&self, tensor: &Self::Tensor, out: HostDataMut<'_>) -> Result<()>;

    /// Allocates a layer's device state from `state` (validated by the caller).
    fn create_layer(&self, state: &LayerState) -> Result<Self::Layer>;

    /// Brings the device copy up to date with `state` for the seeds in `changed`.
    fn upload(&self, layer: &mut Self::Layer, state: &LayerState, changed: StateChange<'_>) -> Result<()>;

    /// `y = layer(x)` (SPEC 5.1) and adds this call's statistics of `x` to the
    /// accumulators (SPEC 5.2). `x` and `y` are `[B, H]` of the same dtype.
    fn forward(&self, layer: &mut Self::Layer, x: &Self::Tensor, y: &mut Self::Tensor) -> Result<()>;

    /// `dx` from `g = dL/dy` (SPEC 7); keeps this call's parameter gradients
    /// (read with [`Backend::param_grads`]) and adds `Σ g²` per seed to the accumulators.
    fn backward(
        &self,
        layer: &mut Self::Layer,
        x: &Self::Tensor,
        g: &Self::Tensor,
        dx: &mut Self::Tensor,
    ) -> Result<()>;

    /// The parameter gradients of the last backward call (zeros before any).
    fn param_grads(&self, layer: &Self::Layer) -> Result<ParamGrads>;

    /// The accumulators since the last reset.
    fn accumulators(&self, layer: &Self::Layer) -> Result<Accumulators>;

    /// Clears the accumulators.
    fn reset_accumulators(&self, layer: &mut Self::Layer) -> Result<()>;

    /// CRC-32 (SPEC 2.1) of the state as the device holds it, read back from the device.
    fn checksum(&self, layer: &Self::Layer) -> Result<u32>;

    /// CRC-32 ([`crate::plan::kernel_crc`]) of what the kernels read for `seeds` (ids below
    /// `num_seeds`, in this order): the raw records, weights and derived constants
    /// ([`crate::SeedPlan`], ATTENTION's softmax), read back from the device into their
    /// canonical form. A backend that keeps further constants derived from these checks them
    /// against a derivation from what it read back and returns
    /// [`crate::Error::DeviceIntegrity`] when they disagree.
    fn kernel_checksum(&self, layer: &Self::Layer, seeds: &[usize]) -> Result<u32>;

    /// Device-to-device copy of `src` into `dst` (same shape and dtype), the
    /// device's own copy path (a multithreaded memcpy, `copy_buffer_to_buffer`,
    /// `cuMemcpyDtoD`): the bandwidth yardstick benchmarks compare against.
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()>;

    /// The name of a second copy path, a plain kernel of the backend's own, where the device's
    /// copy engine ([`Backend::copy`]) is not always the fastest way to move bytes through the
    /// device (Vulkan's `copy_buffer_to_buffer` on some GPUs); `None` (the default) when there is
    /// none. Benchmarks measure both and take the faster as their yardstick.
    fn kernel_copy_name(&self) -> Option<&'static str> {
        None
    }

    /// Copies `src` into `dst` (same shape and dtype) with the kernel of
    /// [`Backend::kernel_copy_name`]; an `Unsupported` error when the backend has none.
    fn kernel_copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()> {
        let _ = (src, dst);
        let name = self.info().backend;
        Err(BackendError::new(name, BackendErrorKind::Unsupported, "this backend has no kernel copy").into())
    }

    /// Prepares now what the first calls in `dtypes` would otherwise prepare on the way (the
    /// CUDA backend compiles its kernel modules, in parallel, into its kernel cache), so a
    /// program that knows its dtypes pays that up front, once. A no-op (the default) where
    /// nothing is compiled.
    fn prepare(&self, dtypes: &[DType]) -> Result<()> {
        let _ = dtypes;
        Ok(())
    }

    /// Blocks until all work queued on the device is finished (for timing).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Milliseconds the device spends on the work `f` queues. The default is the
    /// wall clock between two [`Backend::synchronize`] calls; GPU backends
    /// override it with device timers (CUDA events, timestamp queries).
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let t = std::time::Instant::now();
        f()?;
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

/// A shared reference to a backend is a backend, so several layers (or a
/// benchmark and a layer) can share one device: `KasminaLayer<&CpuBackend>`.
impl<T: Backend + ?Sized> Backend for &T {
    type Tensor = T::Tensor;
    type Layer = T::Layer;

    fn info(&self) -> DeviceInfo {
        (**self).info()
    }
    fn supports(&self, dtype: DType) -> bool {
        (**self).supports(dtype)
    }
    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<Self::Tensor> {
        (**self).alloc(rows, cols, dtype)
    }
    fn write(&self, tensor: &mut Self::Tensor, data: HostData<'_>) -> Result<()> {
        (**self).write(tensor, data)
    }
    fn read(&self, tensor: &Self::Tensor, out: HostDataMut<'_>) -> Result<()> {
        (**self).read(tensor, out)
    }
    fn create_layer(&self, state: &LayerState) -> Result<Self::Layer> {
        (**self).create_layer(state)
    }
    fn upload(&self, layer: &mut Self::Layer, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        (**self).upload(layer, state, changed)
    }
    fn forward(&self, layer: &mut Self::Layer, x: &Self::Tensor, y: &mut Self::Tensor) -> Result<()> {
        (**self).forward(layer, x, y)
    }
    fn backward(
        &self,
        layer: &mut Self::Layer,
        x: &Self::Tensor,
        g: &Self::Tensor,
        dx: &mut Self::Tensor,
    ) -> Result<()> {
        (**self).backward(layer, x, g, dx)
    }
    fn param_grads(&self, layer: &Self::Layer) -> Result<ParamGrads> {
        (**self).param_grads(layer)
    }
    fn accumulators(&self, layer: &Self::Layer) -> Result<Accumulators> {
        (**self).accumulators(layer)
    }
    fn reset_accumulators(&self, layer: &mut Self::Layer) -> Result<()> {
        (**self).reset_accumulators(layer)
    }
    fn checksum(&self, layer: &Self::Layer) -> Result<u32> {
        (**self).checksum(layer)
    }

    fn kernel_checksum(&self, layer: &Self::Layer, seeds: &[usize]) -> Result<u32> {
        (**self).kernel_checksum(layer, seeds)
    }
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()> {
        (**self).copy(src, dst)
    }
    fn kernel_copy_name(&self) -> Option<&'static str> {
        (**self).kernel_copy_name()
    }
    fn kernel_copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) -> Result<()> {
        (**self).kernel_copy(src, dst)
    }
    fn prepare(&self, dtypes: &[DType]) -> Result<()> {
        (**self).prepare(dtypes)
    }
    fn synchronize(&self) -> Result<()> {
        (**self).synchronize()
    }
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        (**self).time_ms(f)
    }
}
