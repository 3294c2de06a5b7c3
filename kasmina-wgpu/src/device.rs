//! Adapter discovery, device setup, error capture and readback helpers.

use std::sync::{Arc, Mutex};

use crate::error::{Result, WgpuError};

/// One adapter as `kasmina devices` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterDesc {
    /// Index to pass to [`crate::WgpuBackend::new`].
    pub index: usize,
    /// The adapter's name (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// The graphics API (`vulkan`, `gl`, `metal`, `dx12`).
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub device_type: String,
    /// Driver name and version, as the driver reports them.
    pub driver: String,
    /// Features that matter to Kasmina (`subgroups`, `shader-f16`, `timestamp-query`, ...).
    pub features: Vec<String>,
}

/// The backends to enumerate: `WGPU_BACKEND` when set, else every compiled-in one.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    // Vulkan first: on the H100 wgpu also sees a GL adapter, which is slower and lacks features.
    match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal | wgpu::Backend::Dx12 => 1,
        wgpu::Backend::Gl => 2,
        _ => 3,
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

/// Adapters in the order [`crate::WgpuBackend::new`] indexes them: Vulkan first,
/// then discrete before integrated before CPU; ties keep the driver's order.
pub(crate) fn sorted_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends()));
    adapters.retain(|a| a.get_info().backend != wgpu::Backend::Noop);
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (backend_rank(i.backend), type_rank(i.device_type))
    });
    adapters
}

pub(crate) fn feature_names(f: wgpu::Features) -> Vec<String> {
    let mut out = Vec::new();
    let named = [
        (wgpu::Features::SUBGROUP, "subgroups"),
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS, "timestamp-query-inside-encoders"),
        (wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "timestamp-query-inside-passes"),
    ];
    for (flag, name) in named {
        if f.contains(flag) {
            out.push(name.to_string());
        }
    }
    out
}

pub(crate) fn describe(index: usize, a: &wgpu::Adapter) -> AdapterDesc {
    let i = a.get_info();
    AdapterDesc {
        index,
        name: i.name.clone(),
        backend: i.backend.to_str().to_string(),
        device_type: match i.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_string(),
        driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
        features: feature_names(a.features()),
    }
}

/// The device and queue plus what the error callbacks recorded.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The adapter runs `unpack2x16float` (`DownlevelFlags::SHADER_F16_IN_F32`).
    pub f16_in_f32: bool,
    pub lost: Arc<Mutex<Option<String>>>,
    pub uncaptured: Arc<Mutex<Option<String>>>,
    /// Grow-only MAP_READ buffer for readbacks.
    staging: Mutex<Option<wgpu::Buffer>>,
    /// While `time_ms` measures: where its timestamps go (see [`Capture`]).
    capture: Mutex<Option<Capture>>,
}

/// Timestamps recorded in the same command buffers as the timed work.
///
/// A timestamp in a submission of its own lands on the GPU long before the
/// next submission's work does (the host still has to record and submit it),
/// so the gap would be timed as if it were work. While a capture is active,
/// the first work encoder gets the start timestamp ahead of its commands, and
/// the last one is held back (`deferred`) so the end timestamp can be appended
/// to it; any other queue operation submits the held encoder first, which
/// keeps the queue order of every write, copy and dispatch unchanged.
pub(crate) struct Capture {
    queries: wgpu::QuerySet,
    start_pending: bool,
    deferred: Option<wgpu::CommandEncoder>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn map_error(e: wgpu::Error, during: &str) -> WgpuError {
    match e {
        wgpu::Error::OutOfMemory { source } => WgpuError::OutOfMemory(format!("{during}: {source}")),
        wgpu::Error::Validation { description, .. } => WgpuError::Device(format!("{during}: {description}")),
        wgpu::Error::Internal { description, .. } => WgpuError::Device(format!("{during}: {description}")),
    }
}

impl Gpu {
    /// Opens `adapter` with its own limits (not wgpu's defaults) and the
    /// optional features Kasmina uses.
    pub fn open(adapter: &wgpu::Adapter) -> std::result::Result<Gpu, WgpuError> {
        let wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("kasmina"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| WgpuError::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let l = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&l) = Some(format!("{reason:?}: {msg}"));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let u = uncaptured.clone();
        // The default handler panics; errors outside our scopes are kept and reported instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut g = lock(&u);
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }));
        let f16_in_f32 = adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        Ok(Gpu {
            device,
            queue,
            limits,
            features,
            f16_in_f32,
            lost,
            uncaptured,
            staging: Mutex::new(None),
            capture: Mutex::new(None),
        })
    }

    /// Fails with `DeviceLost` (or the recorded uncaptured error) if the device is gone.
    pub fn check(&self) -> Result<()> {
        if let Some(msg) = lock(&self.lost).clone() {
            return Err(WgpuError::DeviceLost(msg).into());
        }
        if let Some(msg) = lock(&self.uncaptured).take() {
            return Err(WgpuError::Device(msg).into());
        }
        Ok(())
    }

    /// Runs `f` inside out-of-memory, validation and internal error scopes and
    /// turns anything they caught into a typed error.
    pub fn scoped<T>(&self, during: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errs = [pollster::block_on(val.pop()), pollster::block_on(internal.pop()), pollster::block_on(oom.pop())];
        // Out of memory wins: it is the one a caller can act on.
        let mut first = None;
        for e in errs.into_iter().flatten() {
            let e = map_error(e, during);
            if matches!(e, WgpuError::OutOfMemory(_)) || first.is_none() {
                first = Some(e);
            }
        }
        if let Some(e) = first {
            return Err(e.into());
        }
        self.check()?;
        Ok(out)
    }

    /// Submits the encoder a capture holds back, if any.
    pub fn flush(&self) {
        let held = lock(&self.capture).as_mut().and_then(|c| c.deferred.take());
        if let Some(enc) = held {
            self.queue.submit([enc.finish()]);
        }
    }

    /// Records work with `record` into a new command encoder and submits it,
    /// or, during a capture, holds it back (with the start timestamp first if
    /// it is the capture's first work). Runs inside error scopes.
    pub fn submit_work(&self, label: &str, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<()> {
        let mut inner = Ok(());
        self.scoped(label, || {
            let mut guard = lock(&self.capture);
            if let Some(held) = guard.as_mut().and_then(|c| c.deferred.take()) {
                self.queue.submit([held.finish()]);
            }
            let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
            let mut stamped = false;
            if let Some(c) = guard.as_mut()
                && c.start_pending
            {
                enc.write_timestamp(&c.queries, 0);
                c.start_pending = false;
                stamped = true;
            }
            inner = record(&mut enc);
            match guard.as_mut() {
                Some(c) if inner.is_ok() => c.deferred = Some(enc),
                // Nothing of a failed recording is submitted; the start timestamp
                // (if it went into this encoder) goes ahead of the next work instead.
                Some(c) => c.start_pending |= stamped,
                None if inner.is_ok() => {
                    self.queue.submit([enc.finish()]);
                }
                None => {}
            }
        })?;
        inner
    }

    /// Starts a capture: timestamp 0 of `queries` goes ahead of the next work.
    pub fn begin_capture(&self, queries: &wgpu::QuerySet) {
        self.flush();
        *lock(&self.capture) = Some(Capture { queries: queries.clone(), start_pending: true, deferred: None });
    }

    /// Ends a capture: timestamp 1 goes after the last work (in the same
    /// command buffer), then both are resolved into `resolve`.
    pub fn end_capture(&self, resolve: &wgpu::Buffer) -> Result<()> {
        let Some(c) = lock(&self.capture).take() else {
            return Err(WgpuError::Device("no timestamp capture in progress".into()).into());
        };
        self.scoped("timestamp", || {
            let mut enc = c.deferred.unwrap_or_else(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timestamp") })
            });
            if c.start_pending {
                enc.write_timestamp(&c.queries, 0);
            }
            enc.write_timestamp(&c.queries, 1);
            enc.resolve_query_set(&c.queries, 0..2, resolve, 0);
            self.queue.submit([enc.finish()]);
        })
    }

    /// Abandons a capture (after an error), submitting what it held back.
    pub fn cancel_capture(&self) {
        if let Some(enc) = lock(&self.capture).take().and_then(|c| c.deferred) {
            self.queue.submit([enc.finish()]);
        }
    }

    /// Blocks until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| kasmina_core::Error::from(WgpuError::Device(format!("poll: {e}"))))?;
        self.check()
    }

    /// Copies `size` bytes of `src` at `offset` to the host.
    pub fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut guard = lock(&self.staging);
        let need = size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        if guard.as_ref().is_none_or(|b| b.size() < need) {
            let buf = self.scoped("allocating a readback buffer", || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kasmina readback"),
                    size: need,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            *guard = Some(buf);
        }
        let Some(staging) = guard.as_ref() else {
            return Err(WgpuError::Device("readback buffer missing".into()).into());
        };
        self.flush();
        self.scoped("copying to the readback buffer", || {
            let mut enc =
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
            enc.copy_buffer_to_buffer(src, offset, staging, 0, need);
            self.queue.submit([enc.finish()]);
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let slice = staging.slice(0..need);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(WgpuError::Device(format!("mapping the readback buffer: {e}")).into()),
            Err(_) => return Err(WgpuError::DeviceLost("the readback never completed".into()).into()),
        }
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| kasmina_core::Error::from(WgpuError::Device(format!("mapped range: {e}"))))?;
            view[..size as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Writes `data` at `offset` of `dst`, padding to the 4-byte copy alignment.
    pub fn write_bytes(&self, dst: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush();
        self.scoped("writing a buffer", || {
            if data.len().is_multiple_of(4) {
                self.queue.write_buffer(dst, offset, data);
            } else {
                let mut v = data.to_vec();
                v.resize(data.len().next_multiple_of(4), 0);
                self.queue.write_buffer(dst, offset, &v);
            }
        })
    }

    /// A storage buffer of `size` bytes (rounded up to 4, at least 4).
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        if size > self.limits.max_buffer_size {
            return Err(WgpuError::Unsupported(format!(
                "{label} needs a buffer of {size} bytes; this adapter's max_buffer_size is {}",
                self.limits.max_buffer_size
            ))
            .into());
        }
        self.scoped(&format!("allocating {label} ({size} bytes)"), || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })
    }
}
