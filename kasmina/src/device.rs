//! Naming devices (`cpu`, `wgpu:0`, `cuda:0`), opening them, and listing what
//! this build and this machine can run.

use std::fmt;
use std::str::FromStr;

use kasmina_core::DeviceInfo;

use crate::error::{Error, Result};

/// The backends a build can contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The CPU backend (`kasmina-cpu`, feature `cpu`).
    Cpu,
    /// The wgpu backend (`kasmina-wgpu`, feature `wgpu`): Vulkan, Metal, DX12.
    Wgpu,
    /// The CUDA backend (`kasmina-cuda`, feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Every backend, compiled in or not.
    pub const ALL: [BackendKind; 3] = [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda];

    /// `cpu`, `wgpu`, `cuda`.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub const fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this build contains the backend.
    pub const fn compiled_in(self) -> bool {
        match self {
            BackendKind::Cpu => cfg!(feature = "cpu"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends this build contains.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.compiled_in()).collect()
    }

    /// The error for a backend this build does not contain.
    pub fn not_compiled(self) -> Error {
        Error::NotCompiled { backend: self.name(), feature: self.feature() }
    }

    /// The device indices of this backend on this machine (empty when none is
    /// found); an error when the backend is not compiled in or cannot enumerate.
    pub fn device_indices(self) -> Result<Vec<usize>> {
        match self {
            BackendKind::Cpu => cpu_indices(),
            BackendKind::Wgpu => wgpu_indices(),
            BackendKind::Cuda => cuda_indices(),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "wgpu" | "vulkan" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(Error::DeviceName {
                name: s.to_string(),
                message: "unknown backend (one of cpu, wgpu, cuda)".into(),
            }),
        }
    }
}

/// A device: a backend and an index within it. Written `cpu`, `wgpu:0`, `cuda:1`;
/// a bare backend name means index 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceName {
    /// The backend.
    pub kind: BackendKind,
    /// The device index within the backend (always 0 for the CPU).
    pub index: usize,
}

impl DeviceName {
    /// The CPU.
    pub const CPU: DeviceName = DeviceName { kind: BackendKind::Cpu, index: 0 };

    /// Device `index` of `kind`.
    pub const fn new(kind: BackendKind, index: usize) -> Self {
        Self { kind, index }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BackendKind::Cpu => f.write_str("cpu"),
            k => write!(f, "{}:{}", k.name(), self.index),
        }
    }
}

impl FromStr for DeviceName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: &str| Error::DeviceName { name: s.to_string(), message: message.to_string() };
        let (kind, index) = match s.trim().split_once(':') {
            None => (s, None),
            Some((k, i)) => (k, Some(i)),
        };
        let kind: BackendKind = kind.parse().map_err(|_| bad("unknown backend (write cpu, wgpu:N or cuda:N)"))?;
        let index = match index {
            None => 0,
            Some(i) => {
                i.trim().parse::<usize>().map_err(|_| bad("the index after ':' must be a number, e.g. cuda:0"))?
            }
        };
        if kind == BackendKind::Cpu && index != 0 {
            return Err(bad("there is one CPU device: write `cpu`"));
        }
        Ok(DeviceName { kind, index })
    }
}

impl serde::Serialize for DeviceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether a device can run here.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeviceStatus {
    /// It opened; what it offers.
    Available {
        /// The device's description.
        info: DeviceInfo,
    },
    /// The backend is compiled in but the device cannot run (no driver, no adapter...).
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The backend is not compiled into this build.
    NotCompiled {
        /// The cargo feature to turn on.
        feature: &'static str,
    },
}

/// One row of [`list_devices`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceEntry {
    /// The device (for a backend with no device found, index 0).
    pub device: DeviceName,
    /// Whether and how it runs.
    #[serde(flatten)]
    pub status: DeviceStatus,
}

/// Every backend, and for each compiled-in backend every device found, opened
/// to say what it supports, or why it cannot run.
pub fn list_devices() -> Vec<DeviceEntry> {
    let mut out = Vec::new();
    for kind in BackendKind::ALL {
        if !kind.compiled_in() {
            out.push(DeviceEntry {
                device: DeviceName::new(kind, 0),
                status: DeviceStatus::NotCompiled { feature: kind.feature() },
            });
            continue;
        }
        match kind.device_indices() {
            Err(e) => out.push(DeviceEntry {
                device: DeviceName::new(kind, 0),
                status: DeviceStatus::Unavailable { reason: e.to_string() },
            }),
            Ok(ids) if ids.is_empty() => out.push(DeviceEntry {
                device: DeviceName::new(kind, 0),
                status: DeviceStatus::Unavailable { reason: format!("no {kind} device found on this machine") },
            }),
            Ok(ids) => {
                for i in ids {
                    let device = DeviceName::new(kind, i);
                    let status = match device_info(device) {
                        Ok(info) => DeviceStatus::Available { info },
                        Err(e) => DeviceStatus::Unavailable { reason: e.to_string() },
                    };
                    out.push(DeviceEntry { device, status });
                }
            }
        }
    }
    out
}

/// Opens `device` and returns its description.
pub fn device_info(device: DeviceName) -> Result<DeviceInfo> {
    crate::with_backend!(device, |open| open().map(|b| kasmina_core::Backend::info(&b)))
}

// ---- per-backend hooks; each has a stub for builds without the feature ----

#[cfg(feature = "cpu")]
fn cpu_indices() -> Result<Vec<usize>> {
    Ok(vec![0])
}
#[cfg(not(feature = "cpu"))]
fn cpu_indices() -> Result<Vec<usize>> {
    Err(BackendKind::Cpu.not_compiled())
}

/// Opens the CPU backend.
#[cfg(feature = "cpu")]
#[doc(hidden)]
pub fn open_cpu(device: DeviceName) -> Result<kasmina_cpu::CpuBackend> {
    if device.index != 0 {
        return Err(Error::DeviceName { name: device.to_string(), message: "there is one CPU device".into() });
    }
    Ok(kasmina_cpu::CpuBackend::new()?)
}

#[cfg(feature = "wgpu")]
fn wgpu_indices() -> Result<Vec<usize>> {
    Ok((0..kasmina_wgpu::WgpuBackend::list_adapters().len()).collect())
}
#[cfg(not(feature = "wgpu"))]
fn wgpu_indices() -> Result<Vec<usize>> {
    Err(BackendKind::Wgpu.not_compiled())
}

/// Opens wgpu adapter `device.index`.
#[cfg(feature = "wgpu")]
#[doc(hidden)]
pub fn open_wgpu(device: DeviceName) -> Result<kasmina_wgpu::WgpuBackend> {
    Ok(kasmina_wgpu::WgpuBackend::new(device.index)?)
}

#[cfg(feature = "cuda")]
fn cuda_indices() -> Result<Vec<usize>> {
    Ok((0..kasmina_cuda::CudaBackend::device_count()?).collect())
}
#[cfg(not(feature = "cuda"))]
fn cuda_indices() -> Result<Vec<usize>> {
    Err(BackendKind::Cuda.not_compiled())
}

/// Opens CUDA device `device.index` with the options the environment sets
/// ([`kasmina_cuda::CudaOptions::from_env`]).
#[cfg(feature = "cuda")]
#[doc(hidden)]
pub fn open_cuda(device: DeviceName) -> Result<kasmina_cuda::CudaBackend> {
    let options = kasmina_cuda::CudaOptions::from_env()?;
    Ok(kasmina_cuda::CudaBackend::with_options(device.index, options)?)
}

/// Runs `body` with `open` bound to a closure `Fn() -> kasmina::Result<B>` that
/// opens `device` on its backend `B`: write the body as a call to a function
/// generic over `B: Backend`. The body returns a [`crate::Result`]; a backend
/// not compiled in is an error naming the feature to turn on.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$open:ident| $body:expr) => {{
        let __device: $crate::DeviceName = $device;
        match __device.kind {
            $crate::BackendKind::Cpu => $crate::__with_cpu!(__device, $open, $body),
            $crate::BackendKind::Wgpu => $crate::__with_wgpu!(__device, $open, $body),
            $crate::BackendKind::Cuda => $crate::__with_cuda!(__device, $open, $body),
        }
    }};
}

#[cfg(feature = "cpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cpu {
    ($device:ident, $open:ident, $body:expr) => {{
        let $open = || $crate::device::open_cpu($device);
        let __r: $crate::Result<_> = $body;
        __r
    }};
}
#[cfg(not(feature = "cpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cpu {
    ($device:ident, $open:ident, $body:expr) => {
        $crate::Result::Err($crate::BackendKind::Cpu.not_compiled())
    };
}

#[cfg(feature = "wgpu")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_wgpu {
    ($device:ident, $open:ident, $body:expr) => {{
        let $open = || $crate::device::open_wgpu($device);
        let __r: $crate::Result<_> = $body;
        __r
    }};
}
#[cfg(not(feature = "wgpu"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_wgpu {
    ($device:ident, $open:ident, $body:expr) => {
        $crate::Result::Err($crate::BackendKind::Wgpu.not_compiled())
    };
}

#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cuda {
    ($device:ident, $open:ident, $body:expr) => {{
        let $open = || $crate::device::open_cuda($device);
        let __r: $crate::Result<_> = $body;
        __r
    }};
}
#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cuda {
    ($device:ident, $open:ident, $body:expr) => {
        $crate::Result::Err($crate::BackendKind::Cuda.not_compiled())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print() {
        assert_eq!("cpu".parse::<DeviceName>().unwrap(), DeviceName::CPU);
        assert_eq!("wgpu:1".parse::<DeviceName>().unwrap(), DeviceName::new(BackendKind::Wgpu, 1));
        assert_eq!("CUDA".parse::<DeviceName>().unwrap(), DeviceName::new(BackendKind::Cuda, 0));
        assert_eq!(DeviceName::new(BackendKind::Cuda, 3).to_string(), "cuda:3");
        assert_eq!(DeviceName::CPU.to_string(), "cpu");
        assert!("tpu:0".parse::<DeviceName>().is_err());
        assert!("cuda:x".parse::<DeviceName>().is_err());
        assert!("cpu:1".parse::<DeviceName>().is_err());
    }

    #[test]
    fn a_backend_not_compiled_in_names_its_feature() {
        for kind in BackendKind::ALL.into_iter().filter(|k| !k.compiled_in()) {
            let e = device_info(DeviceName::new(kind, 0)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("--features {}", kind.feature())), "{msg}");
        }
    }
}
