//! `kasmina`: the facade over [`kasmina_core`] and the backends compiled into
//! this build. It depends on the core and the enabled backends only; the `kasmina`
//! command lives in the `kasmina-cli` crate.
//!
//! Backends are cargo features: `cpu` (on by default), `wgpu`, `cuda`. A device
//! is named one way everywhere ([`DeviceName`]: `cpu`, `wgpu:0`, `cuda:0`), and
//! [`list_devices`] says what this build and this machine can run. Naming a
//! backend that is not compiled in gives an error that names the feature to turn on.
//!
//! A program that takes its device at run time and works with host data uses
//! [`AnyLayer`]:
//!
//! ```no_run
//! use kasmina::{AnyLayer, DeviceName, LayerConfig};
//!
//! let device: DeviceName = "cpu".parse()?;
//! let layer = AnyLayer::new(device, LayerConfig::new(64, 8)?)?;
//! println!("{}", layer.info().name);
//! # Ok::<(), kasmina::Error>(())
//! ```
//!
//! Code generic over [`Backend`] (device tensors that stay on the device, one
//! monomorphized copy per compiled backend and no per-call `match`) is called once
//! per run through [`with_backend!`]:
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
#![deny(missing_docs)]

pub mod any;
pub mod device;
pub mod error;

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

pub use any::{AnyLayer, BackendLayer};
pub use device::{BackendKind, DeviceEntry, DeviceName, DeviceStatus, list_devices};
pub use error::{Error, Result};
