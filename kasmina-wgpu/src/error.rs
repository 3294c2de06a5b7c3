//! The crate's error enum, converted into [`kasmina_core::Error`] at the boundary.

use kasmina_core::{BackendError, BackendErrorKind};

/// What went wrong on the wgpu side.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WgpuError {
    /// No adapter at this index, or no Vulkan/GL/Metal/DX12 driver at all.
    #[error(
        "no wgpu adapter available: {0} (install a Vulkan driver, e.g. Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
    )]
    Unavailable(String),
    /// The adapter refused to create a device.
    #[error("could not open the device: {0}")]
    RequestDevice(String),
    /// The device is out of memory.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// The device was lost (driver reset, removal, or destroyed).
    #[error("device lost: {0}")]
    DeviceLost(String),
    /// A shader failed to parse, validate or compile.
    #[error("shader compilation failed: {0}")]
    Compile(String),
    /// The device cannot do what was asked (a size beyond its limits).
    #[error("unsupported on this adapter: {0}")]
    Unsupported(String),
    /// A validation or internal error reported by wgpu.
    #[error("device error: {0}")]
    Device(String),
}

impl WgpuError {
    /// The core's kind for this error.
    pub fn kind(&self) -> BackendErrorKind {
        match self {
            WgpuError::Unavailable(_) | WgpuError::RequestDevice(_) => BackendErrorKind::Unavailable,
            WgpuError::OutOfMemory(_) => BackendErrorKind::OutOfMemory,
            WgpuError::DeviceLost(_) => BackendErrorKind::DeviceLost,
            WgpuError::Compile(_) => BackendErrorKind::Compile,
            WgpuError::Unsupported(_) => BackendErrorKind::Unsupported,
            WgpuError::Device(_) => BackendErrorKind::Device,
        }
    }
}

impl From<WgpuError> for kasmina_core::Error {
    fn from(e: WgpuError) -> Self {
        kasmina_core::Error::Backend(BackendError::new("wgpu", e.kind(), e.to_string()))
    }
}

/// Result with the core's error.
pub(crate) type Result<T> = kasmina_core::Result<T>;
