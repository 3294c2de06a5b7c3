//! `kasmina-wgpu`: the Kasmina seed layer on any wgpu adapter (Vulkan preferred;
//! Mesa's lavapipe in CI, the H100 through Vulkan for performance).
//!
//! - [`WgpuBackend`] implements [`kasmina_core::Backend`] with WGSL compute
//!   shaders (`src/shaders/*.wgsl`): forward output and telemetry (SPEC 5),
//!   backward dx, parameter gradients and gradient telemetry (SPEC 7), in f32,
//!   f16 and bf16 (16-bit values are packed two per `u32` and converted in the
//!   shader in integer arithmetic, so no adapter feature is needed).
//! - Reductions are two-stage and deterministic: per-workgroup partials, then a
//!   merge in a fixed order (Chan's formula for moments). Telemetry partials are
//!   Welford states of `x - K` with a per-seed shift `K` (the seed's first
//!   element of row 0 at the first forward after a reset), so f32 keeps the
//!   variance of data with `|mean| / std = 1e4`. The final merge runs on the
//!   device, so a forward never waits on the host.
//! - Workgroup reductions use subgroup shuffles when the adapter has
//!   `SUBGROUP`, workgroup memory otherwise ([`WgpuOptions::force_shared_memory`]).
//! - Tensors larger than `max_storage_buffer_binding_size` are processed in
//!   slices of whole rows bound at offsets.
//! - Device loss, out-of-memory and validation errors come back as typed
//!   [`kasmina_core::BackendError`]s (every submission runs inside wgpu error
//!   scopes; a device-lost callback and an uncaptured-error handler record the
//!   rest, so nothing panics inside wgpu's default handler).
//!
//! Buffers (state, parameters, accumulators, scratch, uniforms) and pipelines
//! are created once per layer / per dtype and reused; scratch grows only. A
//! call creates one small bind group per row slice (no buffer allocation).
//!
//! Determinism: the tile plan depends only on the shape, the adapter's limits
//! and [`WgpuOptions`], and every reduction runs in a fixed order, so the
//! same input on the same device and options gives bit-identical telemetry and
//! gradients. Outputs (`y`, `dx`) are element-wise and identical across plans.
//!
//! # Testing
//! ```text
//! apt-get install -y mesa-vulkan-drivers libvulkan1   # lavapipe
//! export XDG_RUNTIME_DIR=/tmp
//! cargo test -p kasmina-wgpu
//! ```
//! runs the naga validation of every shader variant, the backend tests and the
//! shared conformance suite three times (default options; workgroup-memory
//! reductions forced; the GPU tile plan). Without an adapter the device tests
//! print why and pass, unless `KASMINA_REQUIRE_GPU=1`. `WGPU_BACKEND=vulkan`
//! restricts the APIs wgpu tries; `VK_DRIVER_FILES` picks a Vulkan driver.
#![deny(missing_docs)]

mod backend;
mod device;
pub mod error;
pub mod shaders;

pub use backend::{WgpuBackend, WgpuLayer, WgpuOptions, WgpuTensor};
pub use device::AdapterDesc;
pub use error::WgpuError;
