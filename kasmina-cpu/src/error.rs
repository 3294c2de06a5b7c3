//! The crate's error type, converted into [`kasmina_core::Error`] at the trait boundary.

use kasmina_core::{BackendError, BackendErrorKind, Error};

/// What can go wrong on the CPU backend.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A tensor size overflows the address space.
    #[error("tensor [{rows}, {cols}] is too large for this machine's address space")]
    TooLarge {
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
    },
    /// An allocation failed.
    #[error("out of memory allocating {bytes} bytes")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// The rayon thread pool could not be built.
    #[error("cannot start the thread pool: {0}")]
    ThreadPool(String),
    /// A SIMD level was asked for that this CPU does not have.
    #[error("this CPU does not support {0:?}")]
    UnsupportedSimd(crate::SimdLevel),
    /// A state upload does not fit the layer created earlier.
    #[error("state does not match the layer: {0}")]
    StateMismatch(String),
    /// A borrowed buffer cannot be viewed as its elements (misaligned for its dtype).
    #[error("a borrowed buffer is not laid out as its dtype's elements: {0}")]
    Layout(String),
}

impl From<CpuError> for Error {
    fn from(e: CpuError) -> Self {
        let kind = match e {
            CpuError::OutOfMemory { .. } | CpuError::TooLarge { .. } => BackendErrorKind::OutOfMemory,
            CpuError::ThreadPool(_) => BackendErrorKind::Device,
            CpuError::UnsupportedSimd(_) => BackendErrorKind::Unsupported,
            CpuError::StateMismatch(_) | CpuError::Layout(_) => BackendErrorKind::Unsupported,
        };
        Error::Backend(BackendError::new("cpu", kind, e.to_string()))
    }
}
