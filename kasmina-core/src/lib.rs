//! `kasmina-core`: everything about the Kasmina seed layer that is not arithmetic
//! over activations, written once for every backend.
//!
//! The layer watches an activation `X[B, H]` through a lattice of `S` seeds, each
//! owning `C = H / S` contiguous columns (`../shared/SPEC.md`, section 1). This
//! crate holds:
//!
//! - [`config`]: the layer configuration and its validation;
//! - [`lifecycle`]: the eleven lifecycle states, the transition table and the event log;
//! - [`blueprint`]: blueprint types and grafting strategies;
//! - [`state`]: the structure-of-arrays seed state and blueprint parameters;
//! - [`grafting`]: alpha schedules as pure functions;
//! - [`checksum`]: the canonical byte string and its CRC-32;
//! - [`plan`]: the per-seed constants the kernels read, derived once, and their checksum;
//! - [`snapshot`]: safetensors snapshots with atomic writes;
//! - [`telemetry`]: per-seed [`Moments`], Chan's merge, and the report;
//! - [`backend`]: the [`Backend`] trait every device implements;
//! - [`layer`]: [`KasminaLayer`], the logical API on top of any backend.
//!
//! No backend carries a lifecycle rule of its own: they hold device memory and run
//! kernels, and this crate decides everything else.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod blueprint;
pub mod checksum;
pub mod config;
pub mod error;
pub mod grafting;
pub mod layer;
pub mod lifecycle;
pub mod plan;
pub mod snapshot;
pub mod state;
pub mod telemetry;

pub use backend::{
    Accumulators, Backend, DType, DeviceInfo, DeviceTensor, HostData, HostDataMut, HostTensorData, ParamGrads,
    StateChange,
};
pub use blueprint::{BlueprintType, GraftingStrategy};
pub use config::{GraftingConfig, LayerConfig, StabilityMode};
pub use error::{BackendError, BackendErrorKind, ConfigError, Error, Result, SnapshotError, TransitionError};
pub use grafting::{EpochSignals, SeedSignal};
pub use layer::KasminaLayer;
pub use lifecycle::{ForwardMode, LifecycleState, TransitionEvent, TransitionReason};
pub use plan::SeedPlan;
pub use state::{BlueprintParams, LayerState, SeedStates};
pub use telemetry::{CriticalTelemetry, Moments, NormalTelemetry, SeedReport, TelemetryReport};

/// The state schema version this crate writes and reads natively (SPEC 2).
pub const SCHEMA_VERSION: u8 = 1;

/// The quiet NaN (`0x7FC00000`) that marks `clamp_mean` / `clamp_std` as not set (SPEC 2).
pub const CLAMP_UNSET: f32 = f32::from_bits(0x7FC0_0000);
