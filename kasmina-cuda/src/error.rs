//! The crate's error type and its conversion into [`kasmina_core::Error`].

use cudarc::driver::DriverError;
use cudarc::driver::sys::cudaError_enum as CuErr;
use kasmina_core::{BackendError, BackendErrorKind};

/// Everything that can go wrong in the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver (libcuda) or no NVRTC library could be loaded, or no device has this ordinal.
    #[error("{0}")]
    Unavailable(String),
    /// A driver API call failed.
    #[error("{what}: {name} ({message})")]
    Driver {
        /// What the backend was doing.
        what: String,
        /// The CUresult's name, e.g. `CUDA_ERROR_OUT_OF_MEMORY`.
        name: String,
        /// The driver's description.
        message: String,
        /// The raw result, to pick the error kind.
        code: u32,
    },
    /// NVRTC rejected the kernel source.
    #[error("NVRTC failed to compile {module}: {log}")]
    Compile {
        /// Which module (dtype and vector width).
        module: String,
        /// NVRTC's log.
        log: String,
    },
    /// A size does not fit what the kernels address (e.g. H >= 2^32).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An option (or the environment variable that sets it) has a value it does not take.
    #[error("invalid CUDA option: {0}")]
    Options(String),
}

impl CudaError {
    /// Wraps a driver error with what the backend was doing.
    pub fn driver(what: impl Into<String>, e: DriverError) -> Self {
        let name = e.error_name().map(|c| c.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
        let message = e.error_string().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        CudaError::Driver { what: what.into(), name, message, code: e.0 as u32 }
    }

    fn kind(&self) -> BackendErrorKind {
        match self {
            CudaError::Unavailable(_) => BackendErrorKind::Unavailable,
            CudaError::Compile { .. } => BackendErrorKind::Compile,
            CudaError::Unsupported(_) | CudaError::Options(_) => BackendErrorKind::Unsupported,
            CudaError::Driver { code, .. } => {
                if *code == CuErr::CUDA_ERROR_OUT_OF_MEMORY as u32 {
                    BackendErrorKind::OutOfMemory
                } else if [
                    CuErr::CUDA_ERROR_NO_DEVICE as u32,
                    CuErr::CUDA_ERROR_INVALID_DEVICE as u32,
                    CuErr::CUDA_ERROR_NOT_INITIALIZED as u32,
                ]
                .contains(code)
                {
                    BackendErrorKind::Unavailable
                } else if [
                    CuErr::CUDA_ERROR_ILLEGAL_ADDRESS as u32,
                    CuErr::CUDA_ERROR_LAUNCH_FAILED as u32,
                    CuErr::CUDA_ERROR_ECC_UNCORRECTABLE as u32,
                    CuErr::CUDA_ERROR_CONTEXT_IS_DESTROYED as u32,
                    CuErr::CUDA_ERROR_DEVICE_UNAVAILABLE as u32,
                ]
                .contains(code)
                {
                    BackendErrorKind::DeviceLost
                } else if [CuErr::CUDA_ERROR_INVALID_PTX as u32, CuErr::CUDA_ERROR_NO_BINARY_FOR_GPU as u32]
                    .contains(code)
                {
                    BackendErrorKind::Compile
                } else {
                    BackendErrorKind::Device
                }
            }
        }
    }
}

impl From<CudaError> for kasmina_core::Error {
    fn from(e: CudaError) -> Self {
        let kind = e.kind();
        kasmina_core::Error::Backend(BackendError::new("cuda", kind, e.to_string()))
    }
}

/// Result with the crate's error.
pub type CudaResult<T> = std::result::Result<T, CudaError>;

/// `.ctx("what")` on driver results.
pub(crate) trait DriverContext<T> {
    /// Converts a driver error, naming what was being done.
    fn ctx(self, what: &str) -> CudaResult<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn ctx(self, what: &str) -> CudaResult<T> {
        self.map_err(|e| CudaError::driver(what, e))
    }
}
