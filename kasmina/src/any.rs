//! [`AnyLayer`]: a Kasmina layer on a device chosen at run time, for programs that take the
//! device from a flag or a config file and work with host slices, with no generic code and no
//! macro. Generic code over [`Backend`] (one monomorphized copy per backend, device tensors
//! kept on the device) stays available through [`AnyLayer::backend_layer_mut`] or
//! [`crate::with_backend!`].
// A build without backends compiles (no layer can be made there, so every method's only arm is
// unreachable and its arguments go unused).
#![cfg_attr(
    not(any(feature = "cpu", feature = "wgpu", feature = "cuda")),
    allow(unused_imports, unused_variables, unreachable_code)
)]

use std::path::Path;

use kasmina_core::{
    Accumulators, Backend, BlueprintType, DeviceInfo, EpochSignals, GraftingStrategy, HostData, HostDataMut,
    KasminaLayer, LayerConfig, LayerState, LifecycleState, ParamGrads, TelemetryReport, TransitionEvent,
};

use crate::device::{BackendKind, DeviceName};
use crate::error::Result;

/// A [`KasminaLayer`] on one of the backends compiled into this build.
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "a process holds a handful of layers, each moved rarely; boxing would add an indirection to every call"
)]
pub enum BackendLayer {
    /// On the CPU backend.
    #[cfg(feature = "cpu")]
    Cpu(KasminaLayer<kasmina_cpu::CpuBackend>),
    /// On a wgpu adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(KasminaLayer<kasmina_wgpu::WgpuBackend>),
    /// On a CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(KasminaLayer<kasmina_cuda::CudaBackend>),
}

/// Runs `$body` with `$l` bound to the inner `KasminaLayer` of `$layer` (a `BackendLayer`,
/// or a reference to one), whatever its backend.
macro_rules! each {
    ($layer:expr, |$l:ident| $body:expr) => {
        match $layer {
            #[cfg(feature = "cpu")]
            BackendLayer::Cpu($l) => $body,
            #[cfg(feature = "wgpu")]
            BackendLayer::Wgpu($l) => $body,
            #[cfg(feature = "cuda")]
            BackendLayer::Cuda($l) => $body,
            // No constructor exists in a build without backends, so no value reaches here.
            #[cfg(not(any(feature = "cpu", feature = "wgpu", feature = "cuda")))]
            _ => unreachable!("no backend is compiled into this build"),
        }
    };
}

/// A Kasmina layer whose device is chosen at run time ([`DeviceName`]: `cpu`, `wgpu:0`,
/// `cuda:0`), with the host-side API of [`KasminaLayer`]: lifecycle, parameters, forward and
/// backward on host slices, telemetry, snapshots.
///
/// ```no_run
/// use kasmina::{AnyLayer, EpochSignals, HostData, HostDataMut, LayerConfig};
///
/// let device = std::env::args().nth(1).unwrap_or_else(|| "cpu".into()).parse()?;
/// let mut layer = AnyLayer::new(device, LayerConfig::new(64, 8)?)?;
/// let (x, mut y) = (vec![0.5f32; 4 * 64], vec![0.0f32; 4 * 64]);
/// layer.forward_host(HostData::F32(&x), HostDataMut::F32(&mut y))?;
/// let report = layer.end_epoch(&EpochSignals::none())?;
/// println!("{} on {}: seed 0 mean {}", layer.config().hidden_dim, layer.device(), report.seeds[0].normal.mean);
/// # Ok::<(), kasmina::Error>(())
/// ```
pub struct AnyLayer {
    device: DeviceName,
    layer: BackendLayer,
}

impl AnyLayer {
    /// A layer of dormant seeds on `device`.
    pub fn new(device: DeviceName, config: LayerConfig) -> Result<Self> {
        Self::from_state(device, LayerState::new(config)?)
    }

    /// A layer in `state` (validated) on `device`.
    pub fn from_state(device: DeviceName, state: LayerState) -> Result<Self> {
        let layer = match device.kind {
            BackendKind::Cpu => Self::cpu(device, state)?,
            BackendKind::Wgpu => Self::wgpu(device, state)?,
            BackendKind::Cuda => Self::cuda(device, state)?,
        };
        Ok(Self { device, layer })
    }

    /// A layer from a snapshot file (checksummed; see [`kasmina_core::snapshot`]) on `device`.
    pub fn load(device: DeviceName, path: impl AsRef<Path>) -> Result<Self> {
        Self::from_state(device, kasmina_core::snapshot::load(path)?)
    }

    #[cfg(feature = "cpu")]
    fn cpu(device: DeviceName, state: LayerState) -> Result<BackendLayer> {
        Ok(BackendLayer::Cpu(KasminaLayer::from_state(crate::device::open_cpu(device)?, state)?))
    }
    #[cfg(not(feature = "cpu"))]
    fn cpu(_: DeviceName, _: LayerState) -> Result<BackendLayer> {
        Err(BackendKind::Cpu.not_compiled())
    }

    #[cfg(feature = "wgpu")]
    fn wgpu(device: DeviceName, state: LayerState) -> Result<BackendLayer> {
        Ok(BackendLayer::Wgpu(KasminaLayer::from_state(crate::device::open_wgpu(device)?, state)?))
    }
    #[cfg(not(feature = "wgpu"))]
    fn wgpu(_: DeviceName, _: LayerState) -> Result<BackendLayer> {
        Err(BackendKind::Wgpu.not_compiled())
    }

    #[cfg(feature = "cuda")]
    fn cuda(device: DeviceName, state: LayerState) -> Result<BackendLayer> {
        Ok(BackendLayer::Cuda(KasminaLayer::from_state(crate::device::open_cuda(device)?, state)?))
    }
    #[cfg(not(feature = "cuda"))]
    fn cuda(_: DeviceName, _: LayerState) -> Result<BackendLayer> {
        Err(BackendKind::Cuda.not_compiled())
    }

    /// The device the layer runs on.
    pub fn device(&self) -> DeviceName {
        self.device
    }

    /// The device's description (name, supported dtypes...).
    pub fn info(&self) -> DeviceInfo {
        each!(&self.layer, |l| l.backend().info())
    }

    /// The layer with its backend type, for code generic over [`Backend`] (device tensors).
    pub fn backend_layer(&self) -> &BackendLayer {
        &self.layer
    }

    /// [`AnyLayer::backend_layer`], mutable.
    pub fn backend_layer_mut(&mut self) -> &mut BackendLayer {
        &mut self.layer
    }

    /// The host copy of the state (the source of truth; the device mirrors it).
    pub fn state(&self) -> &LayerState {
        each!(&self.layer, |l| l.state())
    }

    /// The layer's configuration.
    pub fn config(&self) -> &LayerConfig {
        each!(&self.layer, |l| l.config())
    }

    /// Writes the state to `path` (atomic, checksummed).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        each!(&self.layer, |l| Ok(l.save(path)?))
    }

    /// The lifecycle transitions since the last [`AnyLayer::drain_events`].
    pub fn events(&self) -> &[TransitionEvent] {
        each!(&self.layer, |l| l.events())
    }

    /// Takes the recorded transitions.
    pub fn drain_events(&mut self) -> Vec<TransitionEvent> {
        each!(&mut self.layer, |l| l.drain_events())
    }

    /// Germinates dormant seed `seed_id` with a blueprint and a grafting strategy.
    pub fn request_germination(
        &mut self,
        seed_id: usize,
        blueprint_id: u16,
        blueprint_type: BlueprintType,
        strategy: GraftingStrategy,
    ) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.request_germination(seed_id, blueprint_id, blueprint_type, strategy)?))
    }

    /// Moves seed `seed_id` to `to` (a legal transition of SPEC 3, or an error).
    pub fn transition(&mut self, seed_id: usize, to: LifecycleState) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.transition(seed_id, to)?))
    }

    /// Cancels a germinated seed that has not started grafting.
    pub fn cancel_germination(&mut self, seed_id: usize) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.cancel_germination(seed_id)?))
    }

    /// Sets one seed's blueprint weights (`C` values) and scale.
    pub fn set_seed_params(&mut self, seed_id: usize, weights: &[f32], scale: f32) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.set_seed_params(seed_id, weights, scale)?))
    }

    /// Sets every blueprint weight (`S * C`) and scale (`S`).
    pub fn set_params(&mut self, weights: &[f32], scales: &[f32]) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.set_params(weights, scales)?))
    }

    /// Sets seed `seed_id`'s blend factor (clamped to [0, 1]; NaN is an error).
    pub fn set_alpha(&mut self, seed_id: usize, alpha: f32) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.set_alpha(seed_id, alpha)?))
    }

    /// The forward pass on host data (`B * H` elements in, the same out), statistics included.
    pub fn forward_host(&mut self, x: HostData<'_>, y: HostDataMut<'_>) -> Result<()> {
        each!(&mut self.layer, |l| Ok(l.forward_host(x, y)?))
    }

    /// The backward pass on host data: `dx` and the parameter gradients.
    pub fn backward_host(&mut self, x: HostData<'_>, g: HostData<'_>, dx: HostDataMut<'_>) -> Result<ParamGrads> {
        each!(&mut self.layer, |l| Ok(l.backward_host(x, g, dx)?))
    }

    /// The statistics accumulated since the last epoch ended.
    pub fn accumulators(&self) -> Result<Accumulators> {
        each!(&self.layer, |l| Ok(l.accumulators()?))
    }

    /// The telemetry report of the current epoch so far (nothing is reset).
    pub fn telemetry(&self) -> Result<TelemetryReport> {
        each!(&self.layer, |l| Ok(l.telemetry()?))
    }

    /// Ends the epoch: the telemetry report, then one lifecycle step with `signals`.
    pub fn end_epoch(&mut self, signals: &EpochSignals) -> Result<TelemetryReport> {
        each!(&mut self.layer, |l| Ok(l.end_epoch(signals)?))
    }

    /// CRC32 of the host state (SPEC 2.3).
    pub fn checksum(&self) -> u32 {
        each!(&self.layer, |l| l.checksum())
    }

    /// CRC32 of the state as the device holds it (equal to [`AnyLayer::checksum`] when in sync).
    pub fn device_checksum(&self) -> Result<u32> {
        each!(&self.layer, |l| Ok(l.device_checksum()?))
    }
}

impl std::fmt::Debug for AnyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyLayer").field("device", &self.device).field("config", self.config()).finish()
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::device::DeviceName;

    /// The same germination, grafting and parameters on either layer type.
    macro_rules! graft_mlp {
        ($l:expr, $seed:expr) => {{
            $l.request_germination($seed, 7, BlueprintType::Mlp, GraftingStrategy::FixedRamp).unwrap();
            $l.transition($seed, LifecycleState::Training).unwrap();
            $l.transition($seed, LifecycleState::Grafting).unwrap();
            $l.set_alpha($seed, 0.5).unwrap();
            $l.set_seed_params($seed, &[0.25; 8], 1.5).unwrap();
        }};
    }

    #[test]
    fn a_runtime_chosen_layer_matches_the_typed_one() {
        let cfg = LayerConfig::new(32, 4).unwrap();
        let mut any = AnyLayer::new(DeviceName::CPU, cfg).unwrap();
        let mut typed = KasminaLayer::new(kasmina_cpu::CpuBackend::new().unwrap(), cfg).unwrap();
        graft_mlp!(any, 1);
        graft_mlp!(typed, 1);
        let x: Vec<f32> = (0..3 * 32).map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0).collect();
        let (mut ya, mut yt) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        any.forward_host(HostData::F32(&x), HostDataMut::F32(&mut ya)).unwrap();
        typed.forward_host(HostData::F32(&x), HostDataMut::F32(&mut yt)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ya), bits(&yt));
        // Seed 1 is active: its chunk (columns 8..16) differs from the input somewhere.
        assert!((0..3).any(|r| (8..16).any(|c| ya[r * 32 + c] != x[r * 32 + c])));
        assert_eq!(any.checksum(), typed.checksum());
        assert_eq!(any.device_checksum().unwrap(), any.checksum());
        let ra = any.end_epoch(&EpochSignals::none()).unwrap();
        let rt = typed.end_epoch(&EpochSignals::none()).unwrap();
        assert_eq!(ra, rt);
        assert_eq!(ra.seeds[1].count, 3 * 8);
        assert_eq!(any.state().seeds.lifecycle, typed.state().seeds.lifecycle);
        assert_eq!(any.checksum(), typed.checksum());
        assert_eq!(any.device(), DeviceName::CPU);
    }

    #[test]
    fn a_backend_not_compiled_in_or_a_bad_call_is_an_error_and_the_layer_keeps_its_state() {
        let cfg = LayerConfig::new(32, 4).unwrap();
        for kind in BackendKind::ALL.into_iter().filter(|k| !k.compiled_in()) {
            let e = AnyLayer::new(DeviceName::new(kind, 0), cfg).unwrap_err();
            assert!(e.to_string().contains(&format!("--features {}", kind.feature())), "{e}");
        }
        let mut any = AnyLayer::new(DeviceName::CPU, cfg).unwrap();
        let before = any.checksum();
        assert!(any.transition(0, LifecycleState::Fossilized).is_err());
        assert!(any.set_seed_params(9, &[0.0; 8], 1.0).is_err());
        let x = vec![0f32; 31];
        let mut y = vec![0f32; 31];
        assert!(any.forward_host(HostData::F32(&x), HostDataMut::F32(&mut y)).is_err());
        assert_eq!(any.checksum(), before);
    }
}
