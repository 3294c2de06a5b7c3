//! `kasmina`: the facade over [`kasmina_core`] and the backends compiled into
//! this build, and the library half of the `kasmina` command.
//!
//! Backends are cargo features: `cpu` (on by default), `wgpu`, `cuda`. A device
//! is named one way everywhere ([`DeviceName`]: `cpu`, `wgpu:0`, `cuda:0`), and
//! [`list_devices`] says what this build and this machine can run. Naming a
//! backend that is not compiled in gives an error that names the feature to turn on.
//!
//! A program picks a device at run time and calls a function generic over
//! [`Backend`] once, through [`with_backend!`]:
//!
//! ```no_run
//! use kasmina::{Backend, DeviceName, KasminaLayer, LayerConfig};
//!
//! fn describe<B: Backend>(open: impl Fn() -> kasmina::Result<B>) -> kasmina::Result<String> {
//!     let layer = KasminaLayer::new(open()?, LayerConfig::new(64, 8)?)?;
//!     Ok(layer.backend().info().name)
//! }
//!
//! let device: DeviceName = "cpu".parse()?;
//! let name = kasmina::with_backend!(device, |open| describe(open))?;
//! # Ok::<(), kasmina::Error>(())
//! ```
//!
//! Generic dispatch (one monomorphized copy per compiled backend) rather than an
//! enum over backends keeps every hot loop free of a per-call `match`, and a
//! program that dispatches once at the top of a command needs nothing more.
#![deny(missing_docs)]

pub mod demo;
pub mod device;
pub mod error;
pub mod files;

pub use kasmina_core as core;
pub use kasmina_core::backend::HostTensorData;
pub use kasmina_core::{
    Accumulators, Backend, BlueprintType, DType, DeviceInfo, DeviceTensor, EpochSignals, GraftingConfig,
    GraftingStrategy, HostData, HostDataMut, KasminaLayer, LayerConfig, LayerState, LifecycleState, ParamGrads,
    SeedSignal, StabilityMode, TelemetryReport, TransitionEvent,
};

#[cfg(feature = "cpu")]
pub use kasmina_cpu as cpu;
#[cfg(feature = "cuda")]
pub use kasmina_cuda as cuda;
#[cfg(feature = "wgpu")]
pub use kasmina_wgpu as wgpu;

pub use device::{BackendKind, DeviceEntry, DeviceName, DeviceStatus, list_devices};
pub use error::{Error, Result};
