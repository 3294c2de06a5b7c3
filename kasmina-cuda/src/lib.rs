//! `kasmina-cuda`: the Kasmina seed layer (`../shared/SPEC.md`) on NVIDIA GPUs.
//!
//! [`CudaBackend`] implements [`kasmina_core::Backend`] through cudarc: the CUDA
//! driver API is loaded at run time (so this crate builds and its tests skip on
//! machines without a GPU) and the kernels in `src/kernels/kasmina.cu` are
//! compiled by NVRTC to machine code for the device's architecture, once per
//! machine: the [`cache`] keeps each module on disk, so a later process loads it
//! instead of compiling.
//!
//! - Forward is one fused pass that writes `y` and per-block statistics
//!   partials with 16-byte vector loads, then a small merge kernel adds the
//!   call's moments to the per-seed accumulators in f64, in a fixed order
//!   (Chan's formula, no float atomics): bit-identical telemetry on every run.
//! - Backward is one fused pass writing `dx`, per-block `Σg²` and per-column
//!   parameter-gradient partials, then two small kernels sum them (fixed order).
//! - Per-seed constants (softmax of ATTENTION weights, clamp bands) are derived
//!   once per state change on upload, not per call.
//! - Launch configurations are autotuned once per key and cached on disk
//!   ([`autotune`]).
//! - Small calls (at most 8 MB per tensor), where launch latency dominates,
//!   replay a captured CUDA graph.
//! - When the chunk size is a multiple of the vector width, seed-uniform
//!   kernels run instead of the per-column ones (one seed per thread:
//!   per-thread statistics, CONV neighbours through warp shuffles, far fewer
//!   registers).
//! - Every knob a user can set is a field of [`CudaOptions`]; the library reads
//!   the environment only in [`CudaOptions::from_env`] ([`ENV_VARS`] lists the
//!   variables), which the `kasmina` command and the Python package call.
//!
//! - On compute capability 9.0 a second kernel family, the Hopper path ([`hopper`]):
//!   persistent warp-specialized kernels whose producer warp moves tiles with TMA
//!   (`cp.async.bulk.tensor`, tensor maps built by [`tma`]) through an mbarrier ring,
//!   chosen per key by the autotuner (`Auto`, the default: it times both families once per
//!   key and keeps the faster) or forced with [`CudaOptions::path`].
//!
//! - Memory and streams of the caller: [`CudaBackend::set_stream`] queues the work on a stream
//!   the caller owns (PyTorch's current stream), [`CudaBackend::borrow_tensor`] wraps device
//!   memory the caller owns (a PyTorch tensor) without copying it, [`CudaBackend::use_params`]
//!   takes the blueprint parameters from the caller's device memory (one small kernel,
//!   `kernels/plan.cu`, re-derives the per-seed constants, no host round trip), and
//!   [`CudaBackend::backward_into`] writes the parameter gradients to the caller's buffers.
//!   Nothing in a forward or backward on such memory waits for the device.
//!
//! Without a driver, a device or NVRTC, [`CudaBackend::new`] returns a
//! [`kasmina_core::BackendErrorKind::Unavailable`] error.
#![deny(missing_docs)]

pub mod autotune;
mod backend;
pub mod cache;
mod error;
pub mod kernels;
mod layer;
mod options;
pub mod tma;

pub use autotune::TuneMode;
pub use backend::hopper;
pub use backend::{CudaBackend, CudaPath, CudaTensor};
pub use cache::CacheLocation;
pub use error::CudaError;
pub use layer::CudaLayer;
pub use options::{CudaOptions, ENV_VARS};
