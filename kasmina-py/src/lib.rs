//! `kasmina._kasmina`: the native half of the `kasmina` Python package.
//!
//! One class, `Layer`, holds a [`KasminaLayer`] on the CPU or on a CUDA device and
//! runs it on memory PyTorch owns: activations are read and written in place
//! through the tensors' data pointers (host memory on the CPU, device memory on
//! the GPU), on PyTorch's current CUDA stream, and the blueprint parameters are
//! read from the module's own `nn.Parameter`s at every forward (the optimizer
//! updates them in place). Nothing in a forward or backward copies an activation
//! or waits for the device.
//!
//! The Python half (`python/kasmina`) validates tensors (shape, dtype, device,
//! contiguity) before any pointer reaches this module, registers the custom ops,
//! and owns the parameters; this module checks again what it relies on (lengths,
//! alignment, non-overlapping outputs) and never panics on bad input: every error
//! becomes a `kasmina.KasminaError` subclass.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use half::{bf16, f16};
use kasmina_core::{
    Backend, BlueprintType, DType, Error as CoreError, GraftingStrategy, HostData, HostDataMut, KasminaLayer,
    LayerConfig, LayerState, LifecycleState, SeedSignal, TelemetryReport, snapshot,
};
use kasmina_core::{EpochSignals, ForwardMode, TransitionEvent};
use kasmina_cpu::CpuBackend;
use kasmina_cuda::{CudaBackend, CudaOptions};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// A layer on one of the backends this wheel carries (CUDA is loaded at run time).
enum Engine {
    Cpu(Box<KasminaLayer<CpuBackend>>),
    Cuda(Box<KasminaLayer<CudaBackend>>),
}

/// Runs `$body` with `$l` bound to the layer, whatever its backend.
macro_rules! on_layer {
    ($engine:expr, $l:ident => $body:expr) => {
        match $engine {
            Engine::Cpu($l) => $body,
            Engine::Cuda($l) => $body,
        }
    };
}

/// Where a layer lives: `cpu` or CUDA device `ordinal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Cpu,
    Cuda(usize),
}

impl Place {
    fn parse(device: &str) -> Result<Self, CoreError> {
        let d = device.trim().to_ascii_lowercase();
        if d == "cpu" {
            return Ok(Place::Cpu);
        }
        if d == "cuda" {
            return Ok(Place::Cuda(0));
        }
        if let Some(n) = d.strip_prefix("cuda:")
            && let Ok(i) = n.parse::<usize>()
        {
            return Ok(Place::Cuda(i));
        }
        Err(CoreError::InvalidValue {
            what: "device".into(),
            message: format!("'{device}' is not a device this package runs on (cpu, cuda, cuda:N)"),
        })
    }
}

/// The process's CPU backend: one rayon pool shared by every layer.
fn cpu_backend() -> Result<CpuBackend, CoreError> {
    static CPU: OnceLock<Mutex<Option<CpuBackend>>> = OnceLock::new();
    let mut slot = lock(CPU.get_or_init(Default::default));
    if let Some(b) = slot.as_ref() {
        return Ok(b.clone());
    }
    let b = CpuBackend::new()?;
    *slot = Some(b.clone());
    Ok(b)
}

/// The process's CUDA backend of device `ordinal` (its context, compiled kernels and
/// autotuner are shared by every layer on that device; each layer has its own clone).
fn cuda_backend(ordinal: usize) -> Result<CudaBackend, CoreError> {
    static CUDA: OnceLock<Mutex<HashMap<usize, CudaBackend>>> = OnceLock::new();
    let mut map = lock(CUDA.get_or_init(Default::default));
    if let Some(b) = map.get(&ordinal) {
        return Ok(b.clone());
    }
    let b = CudaBackend::with_options(ordinal, CudaOptions::from_env()?)?;
    map.insert(ordinal, b.clone());
    Ok(b)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A core error as the `kasmina` exception of its kind (see `python/kasmina/errors.py`).
fn py_err(e: CoreError) -> PyErr {
    let class = match &e {
        CoreError::Config(_) => "ConfigError",
        CoreError::Transition(_) => "TransitionError",
        CoreError::Snapshot(_) => "SnapshotError",
        CoreError::OutOfMemory { .. } => "OutOfMemoryError",
        CoreError::Backend(b) if b.kind == kasmina_core::BackendErrorKind::Unavailable => "DeviceUnavailableError",
        CoreError::Backend(_) => "BackendError",
        CoreError::DeviceIntegrity { .. } => "DeviceIntegrityError",
        _ => "InvalidArgumentError",
    };
    let msg = e.to_string();
    Python::attach(|py| match py.import("kasmina.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => PyErr::from_type(cls.cast_into().unwrap_or_else(|_| py.get_type::<PyRuntimeError>()), msg),
        Err(_) => PyRuntimeError::new_err(msg),
    })
}

type PyRes<T> = PyResult<T>;

trait OrPy<T> {
    fn py(self) -> PyRes<T>;
}

impl<T, E: Into<CoreError>> OrPy<T> for Result<T, E> {
    fn py(self) -> PyRes<T> {
        self.map_err(|e| py_err(e.into()))
    }
}

fn invalid(what: &str, message: impl Into<String>) -> CoreError {
    CoreError::InvalidValue { what: what.into(), message: message.into() }
}

/// The activation dtype of a code the Python side passes (0 f32, 1 f16, 2 bf16).
fn dtype_of(code: u8) -> Result<DType, CoreError> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        _ => Err(invalid("dtype", format!("code {code} (0 f32, 1 f16, 2 bf16)"))),
    }
}

/// One buffer the caller hands over: its address and its length in bytes.
#[derive(Debug, Clone, Copy)]
struct Buf {
    what: &'static str,
    addr: usize,
    bytes: usize,
}

impl Buf {
    fn new(what: &'static str, addr: usize, elems: usize, elem_bytes: usize) -> Result<Self, CoreError> {
        let bytes = elems
            .checked_mul(elem_bytes)
            .filter(|b| addr.checked_add(*b).is_some())
            .ok_or_else(|| invalid(what, format!("{elems} elements at {addr:#x} overflow the address space")))?;
        if bytes > 0 && addr == 0 {
            return Err(invalid(what, "null data pointer"));
        }
        if !addr.is_multiple_of(elem_bytes) {
            return Err(invalid(what, format!("address {addr:#x} is not aligned to its {elem_bytes}-byte elements")));
        }
        Ok(Self { what, addr, bytes })
    }

    fn end(&self) -> usize {
        self.addr + self.bytes
    }
}

/// Checks that every output is disjoint from every other buffer (inputs may alias each other).
fn check_disjoint(outputs: &[Buf], inputs: &[Buf]) -> Result<(), CoreError> {
    for (k, o) in outputs.iter().enumerate() {
        for other in outputs[k + 1..].iter().chain(inputs) {
            if o.bytes > 0 && other.bytes > 0 && o.addr < other.end() && other.addr < o.end() {
                return Err(invalid(o.what, format!("overlaps {} (outputs need their own memory)", other.what)));
            }
        }
    }
    Ok(())
}

/// A host slice of `n` elements of `dtype` at `addr`.
///
/// # Safety
/// `addr` must address `n` initialised elements of `dtype` that stay valid and are not
/// written for the returned lifetime (checked by [`Buf::new`] for null and alignment).
unsafe fn host_in<'a>(addr: usize, n: usize, dtype: DType) -> HostData<'a> {
    // SAFETY: the caller's contract; an empty slice takes a dangling, aligned pointer.
    unsafe {
        match dtype {
            DType::F32 => HostData::F32(slice(addr, n)),
            DType::F16 => HostData::F16(slice::<f16>(addr, n)),
            DType::BF16 => HostData::BF16(slice::<bf16>(addr, n)),
        }
    }
}

/// A mutable host slice of `n` elements of `dtype` at `addr`.
///
/// # Safety
/// As [`host_in`], and nothing else may read or write the memory for the lifetime.
unsafe fn host_out<'a>(addr: usize, n: usize, dtype: DType) -> HostDataMut<'a> {
    // SAFETY: the caller's contract.
    unsafe {
        match dtype {
            DType::F32 => HostDataMut::F32(slice_mut(addr, n)),
            DType::F16 => HostDataMut::F16(slice_mut::<f16>(addr, n)),
            DType::BF16 => HostDataMut::BF16(slice_mut::<bf16>(addr, n)),
        }
    }
}

/// # Safety
/// See [`host_in`].
unsafe fn slice<'a, T>(addr: usize, n: usize) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    // SAFETY: the caller's contract (non-null, aligned, n valid elements).
    unsafe { std::slice::from_raw_parts(addr as *const T, n) }
}

/// # Safety
/// See [`host_out`].
unsafe fn slice_mut<'a, T>(addr: usize, n: usize) -> &'a mut [T] {
    if n == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract (non-null, aligned, n valid elements, exclusive).
    unsafe { std::slice::from_raw_parts_mut(addr as *mut T, n) }
}

/// The seeds a list of transitions returned to DORMANT: the core reset their parameters
/// (weights 0, scale 1), which the Python side mirrors into its `nn.Parameter`s.
fn reset_seeds(events: &[TransitionEvent]) -> Vec<usize> {
    let mut ids: Vec<usize> = events.iter().filter(|e| e.to == LifecycleState::Dormant).map(|e| e.seed_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One Kasmina layer on the CPU or a CUDA device, driven by the `kasmina.KasminaLayer`
/// module. Addresses are plain integers (`Tensor.data_ptr()`); the Python side has
/// checked shapes, dtypes, devices and contiguity before calling.
#[pyclass(module = "kasmina._kasmina", name = "Layer")]
struct Layer {
    engine: Mutex<Inner>,
    place: Place,
}

/// What the module keeps behind its lock.
struct Inner {
    engine: Engine,
    /// Whether the device-side parameter constants may differ from the caller's parameters
    /// (a state upload wrote the host copy's since the last forward): the next backward
    /// then takes the parameters again before it runs.
    params_stale: bool,
    /// Where [`Layer::identity_backward`] lets the CPU kernel write the `dx` it does not need
    /// (grow-only, 4-byte aligned words).
    scratch: Vec<u32>,
}

/// Opens `place`'s backend (on `stream` for CUDA) and builds a layer holding `state`.
fn open(place: Place, state: LayerState, stream: usize) -> Result<Engine, CoreError> {
    match place {
        Place::Cpu => Ok(Engine::Cpu(Box::new(KasminaLayer::from_state(cpu_backend()?, state)?))),
        Place::Cuda(i) => {
            let mut b = cuda_backend(i)?;
            // SAFETY: `stream` is PyTorch's current stream of this device (0: the legacy
            // default stream), which PyTorch keeps alive while it queues work on it; the layer
            // is created on it so its memory is freed in its order.
            unsafe { b.set_stream(stream as cudarc::driver::sys::CUstream)? };
            Ok(Engine::Cuda(Box::new(KasminaLayer::from_state(b, state)?)))
        }
    }
}

/// A validated configuration of `hidden_dim` x `num_seeds` from the JSON the Python
/// `LayerConfig` writes (its fields over the SPEC defaults; unknown fields are errors).
fn parse_config(hidden_dim: usize, num_seeds: usize, json: Option<&str>) -> Result<LayerConfig, CoreError> {
    let mut value = match json {
        Some(j) => serde_json::from_str::<serde_json::Value>(j).map_err(|e| invalid("config", e.to_string()))?,
        None => serde_json::json!({}),
    };
    let obj = value.as_object_mut().ok_or_else(|| invalid("config", "expected a JSON object"))?;
    obj.insert("hidden_dim".into(), hidden_dim.into());
    obj.insert("num_seeds".into(), num_seeds.into());
    let known = serde_json::to_value(LayerConfig::default()).map_err(|e| invalid("config", e.to_string()))?;
    if let Some(known) = known.as_object()
        && let Some(bad) = obj.keys().find(|k| !known.contains_key(*k))
    {
        return Err(invalid("config", format!("unknown field '{bad}'")));
    }
    let config: LayerConfig = serde_json::from_value(value).map_err(|e| invalid("config", e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// `(weights, scales)` of a layer of `S` seeds of `C` columns at host addresses.
///
/// # Safety
/// The addresses must hold `S * C` and `S` f32 values, unchanged while the slices live.
unsafe fn host_params<'a>(
    s: usize,
    c: usize,
    weights: usize,
    scales: usize,
) -> Result<(&'a [f32], &'a [f32]), CoreError> {
    let (w, sc) = (Buf::new("weights", weights, s * c, 4)?, Buf::new("scales", scales, s, 4)?);
    // SAFETY: the caller's contract; null and alignment checked above.
    Ok(unsafe { (slice(w.addr, s * c), slice(sc.addr, s)) })
}

impl Inner {
    /// Runs a state-changing request on the layer (with its CUDA stream set), noting that the
    /// device's parameter constants now follow the host copy; returns the seeds whose
    /// parameters the core reset (they returned to DORMANT).
    fn request(
        &mut self,
        stream: usize,
        f: impl FnOnce(&mut Engine) -> Result<(), CoreError>,
    ) -> Result<Vec<usize>, CoreError> {
        set_stream(&mut self.engine, stream)?;
        let before = on_layer!(&self.engine, l => l.events().len());
        f(&mut self.engine)?;
        self.params_stale = true;
        Ok(on_layer!(&self.engine, l => reset_seeds(&l.events()[before..])))
    }
}

/// Points a CUDA layer at PyTorch's current stream (nothing on the CPU).
fn set_stream(engine: &mut Engine, stream: usize) -> Result<(), CoreError> {
    if let Engine::Cuda(l) = engine {
        let (b, _) = l.parts_mut();
        // SAFETY: `stream` is PyTorch's current stream of the layer's device (see `open`).
        unsafe { b.set_stream(stream as cudarc::driver::sys::CUstream)? };
    }
    Ok(())
}

/// The buffers of one forward or backward call, as addresses, and the call's shape.
struct Call {
    rows: usize,
    dtype: DType,
    /// Activation inputs (x, and g for the backward).
    inputs: Vec<usize>,
    /// Activation outputs (y, or dx).
    outputs: Vec<usize>,
    /// Parameter gradient outputs of a backward (`dweights`, `dscales`).
    grads: Option<(usize, usize)>,
    weights: usize,
    scales: usize,
    stream: usize,
}

const IN_NAMES: [&str; 2] = ["x", "g"];

impl Call {
    /// Checks every address against the layer's shape: lengths, alignment, outputs disjoint.
    fn check(&self, h: usize, s: usize, c: usize) -> Result<usize, CoreError> {
        let n = self.rows.checked_mul(h).ok_or_else(|| invalid("rows", format!("{} x {h} overflows", self.rows)))?;
        let es = self.dtype.size_bytes();
        let mut ins = Vec::new();
        for (k, a) in self.inputs.iter().enumerate() {
            ins.push(Buf::new(IN_NAMES[k], *a, n, es)?);
        }
        ins.push(Buf::new("weights", self.weights, s * c, 4)?);
        ins.push(Buf::new("scales", self.scales, s, 4)?);
        let mut outs = Vec::new();
        for a in &self.outputs {
            outs.push(Buf::new(if self.grads.is_some() { "dx" } else { "y" }, *a, n, es)?);
        }
        if let Some((dw, ds)) = self.grads {
            outs.push(Buf::new("dweights", dw, s * c, 4)?);
            outs.push(Buf::new("dscales", ds, s, 4)?);
        }
        check_disjoint(&outs, &ins)?;
        Ok(n)
    }

    /// Runs the call (a forward when `grads` is `None`, else a backward) on `inner`.
    fn run(&self, inner: &mut Inner) -> Result<(), CoreError> {
        let backward = self.grads.is_some();
        let refresh = !backward || inner.params_stale;
        let engine = &mut inner.engine;
        let (h, s, c) =
            on_layer!(&*engine, l => (l.config().hidden_dim, l.config().num_seeds, l.config().chunk_size()));
        let n = self.check(h, s, c)?;
        let dt = self.dtype;
        match engine {
            Engine::Cpu(l) => {
                let (b, dev) = l.parts_mut();
                // SAFETY: the Python side hands over live, contiguous tensors of these sizes and
                // dtypes (checked again above: lengths, alignment, disjoint outputs); the GIL-free
                // section holds references to them until this returns.
                unsafe {
                    let (w, sc) = host_params(s, c, self.weights, self.scales)?;
                    b.set_params(dev, w, sc)?;
                    let x = host_in(self.inputs[0], n, dt);
                    match self.grads {
                        None => b.forward_slices(dev, x, host_out(self.outputs[0], n, dt))?,
                        Some((dw, ds)) => b.backward_slices(
                            dev,
                            x,
                            host_in(self.inputs[1], n, dt),
                            host_out(self.outputs[0], n, dt),
                            Some((slice_mut(dw, s * c), slice_mut(ds, s))),
                        )?,
                    }
                }
            }
            Engine::Cuda(l) => {
                let (b, dev) = l.parts_mut();
                // SAFETY: as above, for device memory of the layer's device: the tensors live
                // until PyTorch's stream has run the work queued here (the caching allocator
                // reuses memory in stream order), and `stream` is that stream.
                unsafe {
                    b.set_stream(self.stream as cudarc::driver::sys::CUstream)?;
                    let x = b.borrow_tensor(self.inputs[0] as u64, self.rows, h, dt)?;
                    let mut out = b.borrow_tensor(self.outputs[0] as u64, self.rows, h, dt)?;
                    let (w, sc) = (self.weights as u64, self.scales as u64);
                    match self.grads {
                        // A forward always takes the parameters (small calls in the same launch).
                        None => b.forward_with_params(dev, &x, &mut out, w, sc)?,
                        Some((dw, ds)) => {
                            if refresh {
                                b.use_params(dev, w, sc)?;
                            }
                            let g = b.borrow_tensor(self.inputs[1] as u64, self.rows, h, dt)?;
                            b.backward_into(dev, &x, &g, &mut out, dw as u64, ds as u64)?
                        }
                    }
                }
            }
        }
        if refresh {
            inner.params_stale = false;
        }
        Ok(())
    }
}

/// The epoch's per-seed report (SPEC 5.2), as `end_epoch` or `telemetry` made it.
#[pyclass(module = "kasmina._kasmina", name = "Report", frozen)]
struct Report {
    report: TelemetryReport,
    /// Each seed's alpha while the statistics were gathered.
    alpha: Vec<f32>,
}

/// One seed's line of a [`Report`] (SPEC 5.2: the f32 tier as is, the f16 tier widened).
#[pyclass(module = "kasmina._kasmina", name = "SeedReport", frozen)]
struct SeedReport {
    /// The seed's id.
    #[pyo3(get)]
    seed_id: usize,
    /// Its lifecycle state's raw value (see the `lifecycle` property).
    lifecycle_raw: u8,
    /// Its blend factor while the statistics were gathered.
    #[pyo3(get)]
    alpha: f32,
    /// Finite elements seen.
    #[pyo3(get)]
    count: u64,
    /// Finite elements with `|x| < dead_eps`.
    #[pyo3(get)]
    dead: u64,
    /// Mean of the finite elements (f16 tier, saturated).
    #[pyo3(get)]
    mean: f32,
    /// `m2 / count`.
    #[pyo3(get)]
    variance: f32,
    /// Smallest finite element (+inf when none).
    #[pyo3(get)]
    min: f32,
    /// Largest finite element (-inf when none).
    #[pyo3(get)]
    max: f32,
    /// `dead / (count + nonfinite)`.
    #[pyo3(get)]
    dead_ratio: f32,
    /// NaN and ±inf elements seen.
    #[pyo3(get)]
    nonfinite: u32,
    /// `|mean| / sqrt(variance + snr_eps)` (f16 tier, saturated).
    #[pyo3(get)]
    snr: f32,
    /// `sqrt(Σ g²)` over the epoch's backward calls.
    #[pyo3(get)]
    grad_norm: f32,
}

impl SeedReport {
    fn new(r: &kasmina_core::SeedReport, alpha: f32) -> Self {
        Self {
            seed_id: r.seed_id,
            lifecycle_raw: r.lifecycle.raw(),
            alpha,
            count: r.count,
            dead: r.dead,
            mean: r.normal.mean.to_f32(),
            variance: r.critical.variance,
            min: r.critical.min,
            max: r.critical.max,
            dead_ratio: r.critical.dead_ratio,
            nonfinite: r.critical.nonfinite,
            snr: r.normal.snr.to_f32(),
            grad_norm: r.critical.grad_norm,
        }
    }
}

fn lifecycle_enum(py: Python<'_>, raw: u8) -> PyRes<Py<PyAny>> {
    Ok(py.import("kasmina.enums")?.getattr("LifecycleState")?.call1((raw,))?.unbind())
}

#[pymethods]
impl Report {
    /// The epoch the statistics belong to.
    #[getter]
    fn epoch(&self) -> u32 {
        self.report.epoch
    }

    /// One [`SeedReport`] per seed, by seed id.
    #[getter]
    fn seeds(&self) -> Vec<SeedReport> {
        (0..self.report.seeds.len()).map(|i| self.seed(i)).collect()
    }

    /// The report as the JSON the `kasmina` command writes (`forward --telemetry`).
    fn to_json(&self) -> String {
        self.report.to_json()
    }

    fn __len__(&self) -> usize {
        self.report.seeds.len()
    }

    fn __getitem__(&self, i: isize) -> PyRes<SeedReport> {
        let n = self.report.seeds.len() as isize;
        let k = if i < 0 { i + n } else { i };
        if !(0..n).contains(&k) {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!("seed {i} of a {n}-seed report")));
        }
        Ok(self.seed(k as usize))
    }

    fn __repr__(&self) -> String {
        format!("Report(epoch={}, seeds={})", self.report.epoch, self.report.seeds.len())
    }
}

impl Report {
    fn seed(&self, i: usize) -> SeedReport {
        SeedReport::new(&self.report.seeds[i], self.alpha.get(i).copied().unwrap_or(0.0))
    }
}

#[pymethods]
impl SeedReport {
    /// Its lifecycle state (`kasmina.LifecycleState`) when the report was made.
    #[getter]
    fn lifecycle(&self, py: Python<'_>) -> PyRes<Py<PyAny>> {
        lifecycle_enum(py, self.lifecycle_raw)
    }

    fn __repr__(&self) -> String {
        format!(
            "SeedReport(seed_id={}, lifecycle={}, alpha={}, count={}, mean={}, variance={}, grad_norm={})",
            self.seed_id,
            LifecycleState::from_raw(self.lifecycle_raw).map(|l| l.to_string()).unwrap_or_default(),
            self.alpha,
            self.count,
            self.mean,
            self.variance,
            self.grad_norm
        )
    }
}

#[pymethods]
impl Layer {
    /// A layer of `num_seeds` dormant seeds over `hidden_dim` columns on `device`
    /// (`cpu`, `cuda`, `cuda:N`), with the config's JSON over the SPEC defaults. On CUDA,
    /// `stream` is PyTorch's current stream of that device.
    #[new]
    #[pyo3(signature = (hidden_dim, num_seeds, device, config_json=None, stream=0))]
    fn new(
        py: Python<'_>,
        hidden_dim: usize,
        num_seeds: usize,
        device: &str,
        config_json: Option<&str>,
        stream: usize,
    ) -> PyRes<Self> {
        let place = Place::parse(device).py()?;
        let state = LayerState::new(parse_config(hidden_dim, num_seeds, config_json).py()?).py()?;
        Self::with_state(py, place, state, stream)
    }

    /// A layer from a snapshot's bytes (verified: checksums, shapes, enums).
    #[staticmethod]
    #[pyo3(signature = (data, device, stream=0))]
    fn from_bytes(py: Python<'_>, data: &[u8], device: &str, stream: usize) -> PyRes<Self> {
        let place = Place::parse(device).py()?;
        let state = snapshot::from_bytes(data).py()?;
        Self::with_state(py, place, state, stream)
    }

    /// A layer from a snapshot file (verified).
    #[staticmethod]
    #[pyo3(signature = (path, device, stream=0))]
    fn load(py: Python<'_>, path: std::path::PathBuf, device: &str, stream: usize) -> PyRes<Self> {
        let place = Place::parse(device).py()?;
        let state = py.detach(|| snapshot::load(&path)).py()?;
        Self::with_state(py, place, state, stream)
    }

    /// The snapshot bytes of the host state (SPEC 2.2).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyBytes>> {
        let bytes = on_layer!(&self.inner().engine, l => snapshot::to_bytes(l.state())).py()?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Writes the host state as a snapshot, atomically.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyRes<()> {
        py.detach(|| on_layer!(&self.inner().engine, l => l.save(&path))).py()
    }

    /// `cpu` or `cuda:N`.
    #[getter]
    fn device(&self) -> String {
        match self.place {
            Place::Cpu => "cpu".into(),
            Place::Cuda(i) => format!("cuda:{i}"),
        }
    }

    /// The backend's description of its device.
    fn device_name(&self) -> String {
        on_layer!(&self.inner().engine, l => l.backend().info().name)
    }

    /// The layer's configuration as JSON.
    fn config_json(&self) -> PyRes<String> {
        on_layer!(&self.inner().engine, l => serde_json::to_string(l.config()))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// `y = layer(x)` on `rows` rows of `dtype` (0 f32, 1 f16, 2 bf16) at addresses `x`
    /// and `y`, with the parameters at `weights` / `scales`; adds the call's statistics.
    #[pyo3(signature = (x, y, rows, dtype, weights, scales, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        py: Python<'_>,
        x: usize,
        y: usize,
        rows: usize,
        dtype: u8,
        weights: usize,
        scales: usize,
        stream: usize,
    ) -> PyRes<()> {
        let dtype = dtype_of(dtype).py()?;
        let call = Call { rows, dtype, inputs: vec![x], outputs: vec![y], grads: None, weights, scales, stream };
        py.detach(|| call.run(&mut self.inner())).py()
    }

    /// `dx` and the parameter gradients (`dweights`, `dscales`) of a backward call from
    /// `g = dL/dy`; adds `Σ g²` to the accumulators.
    #[pyo3(signature = (x, g, dx, dweights, dscales, rows, dtype, weights, scales, stream=0))]
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        py: Python<'_>,
        x: usize,
        g: usize,
        dx: usize,
        dweights: usize,
        dscales: usize,
        rows: usize,
        dtype: u8,
        weights: usize,
        scales: usize,
        stream: usize,
    ) -> PyRes<()> {
        let dtype = dtype_of(dtype).py()?;
        let grads = Some((dweights, dscales));
        let call = Call { rows, dtype, inputs: vec![x, g], outputs: vec![dx], grads, weights, scales, stream };
        py.detach(|| call.run(&mut self.inner())).py()
    }

    /// The backward of a CPU layer whose seeds are all identities, from `g` (`rows * H`
    /// elements of `dtype` at host address `g`) alone: adds `Σ g²` to the accumulators. `dx = g`
    /// is the caller's to pass on; the kernel's own copy goes to scratch memory and its (zero)
    /// parameter gradients to the layer. Identity seeds do not read `x`, so `g` stands in for it.
    #[pyo3(signature = (g, rows, dtype))]
    fn identity_backward(&self, py: Python<'_>, g: usize, rows: usize, dtype: u8) -> PyRes<()> {
        let dtype = dtype_of(dtype).py()?;
        py.detach(|| {
            let mut guard = self.inner();
            let Inner { engine, scratch, .. } = &mut *guard;
            let Engine::Cpu(l) = engine else {
                return Err(invalid("identity_backward", "only CPU layers take this path"));
            };
            let h = l.config().hidden_dim;
            let n = rows.checked_mul(h).ok_or_else(|| invalid("rows", format!("{rows} x {h} overflows")))?;
            let es = dtype.size_bytes();
            let g = Buf::new("g", g, n, es)?;
            let words = (n * es).div_ceil(4);
            if scratch.len() < words {
                scratch.clear();
                scratch.try_reserve_exact(words).map_err(|_| CoreError::OutOfMemory {
                    what: "identity backward scratch".into(),
                    bytes: words as u128 * 4,
                })?;
                scratch.resize(words, 0);
            }
            let (b, dev) = l.parts_mut();
            // SAFETY: `g` is a live, contiguous tensor of `n` elements of `dtype` (the Python side
            // checked it; null and alignment checked above) that stays alive during this call;
            // the scratch holds at least `n` elements, 4-byte aligned, and is not `g`.
            unsafe {
                let gd = host_in(g.addr, n, dtype);
                b.backward_slices(dev, gd, gd, host_out(scratch.as_mut_ptr() as usize, n, dtype), None)
            }
        })
        .py()
    }

    /// Whether every seed is an identity seed now (SPEC 5.1: the forward is `y = x` bit for
    /// bit, the backward `dx = g` with zero parameter gradients).
    fn identity(&self) -> bool {
        let inner = self.inner();
        on_layer!(&inner.engine, l => l.state().seeds.lifecycle.iter().all(|s| s.forward_mode() == ForwardMode::Identity))
    }

    /// Makes the host state's parameters those at host addresses `weights` (`S * C` f32)
    /// and `scales` (`S` f32), e.g. before a snapshot, a checksum or `end_epoch`.
    #[pyo3(signature = (weights, scales, stream=0))]
    fn set_params(&self, py: Python<'_>, weights: usize, scales: usize, stream: usize) -> PyRes<()> {
        py.detach(|| {
            let mut inner = self.inner();
            inner
                .request(stream, |e| {
                    on_layer!(e, l => {
                        let (s, c) = (l.config().num_seeds, l.config().chunk_size());
                        // SAFETY: the Python side passes contiguous f32 CPU tensors of these sizes.
                        let (w, sc) = unsafe { host_params(s, c, weights, scales)? };
                        l.set_params(w, sc)
                    })
                })
                .map(|_| ())
        })
        .py()
    }

    /// The host state's parameters as little-endian f32 bytes: `(weights, scales)`.
    fn params<'py>(&self, py: Python<'py>) -> (Bound<'py, PyBytes>, Bound<'py, PyBytes>) {
        let inner = self.inner();
        let p = on_layer!(&inner.engine, l => &l.state().params);
        let w: Vec<u8> = p.weights.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s: Vec<u8> = p.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        (PyBytes::new(py, &w), PyBytes::new(py, &s))
    }

    /// DORMANT -> GERMINATED with a blueprint (raw enum values).
    #[pyo3(signature = (seed_id, blueprint_id, blueprint_type, strategy, stream=0))]
    fn germinate(
        &self,
        py: Python<'_>,
        seed_id: usize,
        blueprint_id: u16,
        blueprint_type: u8,
        strategy: u8,
        stream: usize,
    ) -> PyRes<Vec<usize>> {
        let ty = BlueprintType::from_raw(blueprint_type).py()?;
        let st = GraftingStrategy::from_raw(strategy).py()?;
        py.detach(|| {
            self.inner().request(stream, |e| on_layer!(e, l => l.request_germination(seed_id, blueprint_id, ty, st)))
        })
        .py()
    }

    /// A controller's transition (raw lifecycle value); returns the seeds reset to DORMANT.
    #[pyo3(signature = (seed_id, to, stream=0))]
    fn transition(&self, py: Python<'_>, seed_id: usize, to: u8, stream: usize) -> PyRes<Vec<usize>> {
        let to = LifecycleState::from_raw(to).py()?;
        py.detach(|| self.inner().request(stream, |e| on_layer!(e, l => l.transition(seed_id, to)))).py()
    }

    /// GERMINATED or TRAINING -> CANCELLED.
    #[pyo3(signature = (seed_id, stream=0))]
    fn cancel(&self, py: Python<'_>, seed_id: usize, stream: usize) -> PyRes<Vec<usize>> {
        py.detach(|| self.inner().request(stream, |e| on_layer!(e, l => l.cancel_germination(seed_id)))).py()
    }

    /// Sets a seed's alpha (clamped to [0, 1]; NaN is an error).
    #[pyo3(signature = (seed_id, alpha, stream=0))]
    fn set_alpha(&self, py: Python<'_>, seed_id: usize, alpha: f32, stream: usize) -> PyRes<()> {
        py.detach(|| self.inner().request(stream, |e| on_layer!(e, l => l.set_alpha(seed_id, alpha))).map(|_| ())).py()
    }

    /// Ends the epoch (SPEC 6) with per-seed `(improvement, drift)` signals (none, or one
    /// per seed). Returns the epoch's report and the seeds reset to DORMANT.
    #[pyo3(signature = (signals=None, stream=0))]
    fn end_epoch(
        &self,
        py: Python<'_>,
        signals: Option<Vec<(f32, f32)>>,
        stream: usize,
    ) -> PyRes<(Report, Vec<usize>)> {
        let signals = EpochSignals {
            seeds: signals
                .unwrap_or_default()
                .into_iter()
                .map(|(improvement, drift)| SeedSignal { improvement, drift })
                .collect(),
        };
        py.detach(|| {
            let mut inner = self.inner();
            let alpha = on_layer!(&inner.engine, l => l.state().seeds.alpha.clone());
            let mut report = None;
            let reset = inner.request(stream, |e| {
                report = Some(on_layer!(e, l => l.end_epoch(&signals))?);
                Ok(())
            })?;
            let report = report.ok_or_else(|| invalid("end_epoch", "no report"))?;
            Ok::<_, CoreError>((Report { report, alpha }, reset))
        })
        .py()
    }

    /// The report of the statistics since the last `end_epoch`, without ending the epoch.
    #[pyo3(signature = (stream=0))]
    fn telemetry(&self, py: Python<'_>, stream: usize) -> PyRes<Report> {
        py.detach(|| {
            let mut inner = self.inner();
            set_stream(&mut inner.engine, stream)?;
            on_layer!(&inner.engine, l => Ok::<_, CoreError>(Report {
                report: l.telemetry()?,
                alpha: l.state().seeds.alpha.clone()
            }))
        })
        .py()
    }

    /// The host state as a dict of per-seed lists (raw enum values) and layer fields.
    fn state<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyDict>> {
        let inner = self.inner();
        let st = on_layer!(&inner.engine, l => l.state());
        let d = PyDict::new(py);
        let seeds = &st.seeds;
        d.set_item("epoch", st.epoch)?;
        d.set_item("schema_version", st.schema_version())?;
        d.set_item("hidden_dim", st.config.hidden_dim)?;
        d.set_item("num_seeds", st.config.num_seeds)?;
        d.set_item("lifecycle", seeds.lifecycle.iter().map(|v| v.raw()).collect::<Vec<_>>())?;
        d.set_item("blueprint_id", seeds.blueprint_id.clone())?;
        d.set_item("blueprint_type", seeds.blueprint_type.iter().map(|v| v.raw()).collect::<Vec<_>>())?;
        d.set_item("grafting_strategy", seeds.grafting_strategy.iter().map(|v| v.raw()).collect::<Vec<_>>())?;
        d.set_item("alpha", seeds.alpha.clone())?;
        d.set_item("epochs_in_state", seeds.epochs_in_state.clone())?;
        d.set_item("last_update_epoch", seeds.last_update_epoch.clone())?;
        d.set_item("clamp_mean", seeds.clamp_mean.clone())?;
        d.set_item("clamp_std", seeds.clamp_std.clone())?;
        Ok(d)
    }

    /// Takes the transitions recorded since the last call: `(seed, from, to, epoch, reason)`.
    fn drain_events(&self) -> Vec<(usize, u8, u8, u32, String)> {
        let mut inner = self.inner();
        let events = on_layer!(&mut inner.engine, l => l.drain_events());
        events.into_iter().map(|e| (e.seed_id, e.from.raw(), e.to.raw(), e.epoch, format!("{:?}", e.reason))).collect()
    }

    /// CRC-32 of the host state (SPEC 2.1), or with `kernel` its kernel checksum: the state with
    /// the constants the kernels derive from it.
    #[pyo3(signature = (kernel=false))]
    fn checksum(&self, kernel: bool) -> u32 {
        on_layer!(&self.inner().engine, l => if kernel { l.kernel_checksum() } else { l.checksum() })
    }

    /// [`Layer::checksum`] of what the device holds, read back from the device.
    #[pyo3(signature = (stream=0, kernel=false))]
    fn device_checksum(&self, py: Python<'_>, stream: usize, kernel: bool) -> PyRes<u32> {
        py.detach(|| {
            let mut inner = self.inner();
            set_stream(&mut inner.engine, stream)?;
            on_layer!(&inner.engine, l => if kernel { l.device_kernel_checksum() } else { l.device_checksum() })
        })
        .py()
    }
}

impl Layer {
    fn with_state(py: Python<'_>, place: Place, state: LayerState, stream: usize) -> PyRes<Self> {
        let engine = py.detach(|| open(place, state, stream)).py()?;
        Ok(Self { engine: Mutex::new(Inner { engine, params_stale: true, scratch: Vec::new() }), place })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.engine)
    }
}

/// The snapshot of the benchmark harness's layer state (`kasmina bench`'s seed mix `mix`,
/// `dormant` or `mixed`, drawn with its seed), so the PyTorch side times the same layer.
#[pyfunction]
fn bench_snapshot<'py>(py: Python<'py>, hidden_dim: usize, num_seeds: usize, mix: &str) -> PyRes<Bound<'py, PyBytes>> {
    let mix: kasmina_benches::SeedMix = mix.parse().map_err(|e: String| py_err(invalid("mix", e)))?;
    let config = LayerConfig::new(hidden_dim, num_seeds).map_err(|e| py_err(e.into()))?;
    let state = kasmina_benches::bench_state(config, mix, 1).py()?;
    Ok(PyBytes::new(py, &snapshot::to_bytes(&state).py()?))
}

/// `kasmina bench` of one case, in this process: the harness's forward and backward records
/// (device-timed median of single calls, back-to-back per-call time, the device's own copy of
/// the same bytes in the same run) as JSON, on `device` with the backend's own stream.
#[pyfunction]
#[pyo3(signature = (device, b, h, s, dtype, mix, reps=30, warmup_s=kasmina_benches::WARMUP_SECONDS))]
#[allow(clippy::too_many_arguments)]
fn native_bench(
    py: Python<'_>,
    device: &str,
    b: usize,
    h: usize,
    s: usize,
    dtype: u8,
    mix: &str,
    reps: usize,
    warmup_s: f64,
) -> PyRes<String> {
    let mix: kasmina_benches::SeedMix = mix.parse().map_err(|e: String| py_err(invalid("mix", e)))?;
    let spec = kasmina_benches::BenchSpec { b, h, s, dtype: dtype_of(dtype).py()?, mix, reps, warmup: 3, warmup_s };
    let place = Place::parse(device).py()?;
    let records = py
        .detach(|| match place {
            Place::Cpu => kasmina_benches::run_bench(&cpu_backend()?, &spec),
            Place::Cuda(i) => kasmina_benches::run_bench(&cuda_backend(i)?, &spec),
        })
        .py()?;
    serde_json::to_string(&records).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// Whether the CUDA driver can be loaded and sees a device (no context is created).
#[pyfunction]
fn cuda_device_count() -> usize {
    CudaBackend::device_count().unwrap_or(0)
}

/// The native module. Its import installs the diagnostics set-up the `kasmina` command uses
/// ([`kasmina_benches::init_diagnostics`]).
#[pymodule]
fn _kasmina(m: &Bound<'_, PyModule>) -> PyResult<()> {
    kasmina_benches::init_diagnostics();
    m.add_class::<Layer>()?;
    m.add_class::<Report>()?;
    m.add_class::<SeedReport>()?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(bench_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(native_bench, m)?)?;
    m.add("SCHEMA_VERSION", kasmina_core::SCHEMA_VERSION)?;
    Ok(())
}
