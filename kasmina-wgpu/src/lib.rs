//! `kasmina-wgpu`: the Kasmina seed layer on any wgpu adapter (Vulkan preferred;
//! Mesa's lavapipe in CI, the H100 through Vulkan for performance).
//!
//! - [`WgpuBackend`] implements [`kasmina_core::Backend`] with WGSL compute
//!   shaders (`src/shaders/*.wgsl`): forward output and telemetry (SPEC 5),
//!   backward dx, parameter gradients and gradient telemetry (SPEC 7), in f32,
//!   f16 and bf16 (16-bit values are packed two per `u32` and converted in the
//!   shader, so no adapter feature is needed: bf16 by shifts, f16 with WGSL's
//!   core `unpack2x16float` where it is exact (normal numbers, zeros) and
//!   integer arithmetic elsewhere, and an integer round-to-nearest-even encoder).
//!   Each storage word is loaded and decoded once per element.
//! - Reductions are two-stage and deterministic: per-workgroup partials, then a
//!   merge in a fixed order (Chan's formula for moments). Parameter-gradient
//!   sums are compensated (two-sum pairs through every stage: rows in a tile,
//!   tiles, columns), so sums of hundreds of thousands of cancelling terms keep
//!   f32 accuracy in the result. Telemetry partials are
//!   Welford states of `x - K` with a per-seed shift `K` (the seed's first
//!   element of row 0 at the first forward after a reset), so f32 keeps the
//!   variance of data with `|mean| / std = 1e4`. The final merge runs on the
//!   device, so a forward never waits on the host.
//! - A workgroup handles one (seed, row-block) tile. Where a chunk row is a
//!   whole number of 16-byte groups (C * element size a multiple of 16), each
//!   forward invocation reads and writes one `vec4<u32>` per row (4 f32 or 8
//!   halves), two rows per step with the next two already loading; other
//!   shapes go word by word ([`WgpuOptions::scalar_tile_loads`] forces that).
//!   Activations are bound as `array<vec4<u32>>` (tensors are padded to 16
//!   bytes). One kernel serves every seed; [`WgpuOptions::split_tile_kernels`]
//!   runs identity and blueprint tiles through two (measured slower on the H100).
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
//! are created once per layer / per dtype and reused; scratch grows only. The
//! uniforms are written only when the call's plan changes, and the bind groups
//! of the last forward and the last backward are reused while a call binds the
//! same tensors, so a repeated call allocates nothing on the device.
//!
//! Timing (`Backend::time_ms`) uses timestamp queries written into the same
//! command buffers as the timed work (start before the first command, end after
//! the last), so host-side recording and submission gaps are not counted; the
//! copy yardstick is timed the same way. [`WgpuOptions::separate_submit_timing`] puts the
//! timestamps in submissions of their own instead, for comparison. The library reads no
//! environment variable: every knob is a field of [`WgpuOptions`].
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
