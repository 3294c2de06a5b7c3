//! [`KasminaLayer`]: the logical API by seed id, generic over any [`Backend`].
//!
//! The layer keeps the authoritative host copy of the state, validates every
//! request, applies the lifecycle rules of [`crate::state`], and uploads only
//! the seeds that changed. On an error nothing changes: host and device stay
//! in step.

use std::path::Path;

use crate::backend::{Accumulators, Backend, DType, DeviceTensor, HostData, HostDataMut, ParamGrads, StateChange};
use crate::blueprint::{BlueprintType, GraftingStrategy};
use crate::config::LayerConfig;
use crate::error::{Error, Result};
use crate::grafting::EpochSignals;
use crate::lifecycle::{LifecycleState, TransitionEvent, TransitionReason};
use crate::state::LayerState;
use crate::telemetry::TelemetryReport;
use crate::{checksum, plan, snapshot};

/// One Kasmina layer on one backend.
pub struct KasminaLayer<B: Backend> {
    backend: B,
    device: B::Layer,
    state: LayerState,
    events: Vec<TransitionEvent>,
}

impl<B: Backend> std::fmt::Debug for KasminaLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KasminaLayer")
            .field("device", &self.backend.info().id())
            .field("config", &self.state.config)
            .field("epoch", &self.state.epoch)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> KasminaLayer<B> {
    /// A layer of dormant seeds on `backend`.
    pub fn new(backend: B, config: LayerConfig) -> Result<Self> {
        Self::from_state(backend, LayerState::new(config)?)
    }

    /// A layer holding `state` (validated first), e.g. one loaded from a snapshot.
    pub fn from_state(backend: B, state: LayerState) -> Result<Self> {
        state.validate()?;
        let device = backend.create_layer(&state)?;
        let layer = Self { backend, device, state, events: Vec::new() };
        layer.verify_device(&layer.state, StateChange::All, "after creating the layer")?;
        Ok(layer)
    }

    /// Loads and verifies a snapshot onto `backend`.
    pub fn load(backend: B, path: impl AsRef<Path>) -> Result<Self> {
        Self::from_state(backend, snapshot::load(path)?)
    }

    /// Saves a snapshot atomically, once the device's copy is checked against the host's
    /// ([`KasminaLayer::verify_device`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.verify_device(&self.state, StateChange::All, "before saving")?;
        snapshot::save(&self.state, path)
    }

    /// Compares the device's kernel checksum of the seeds in `changed` with the host's for
    /// `state` ([`crate::plan::kernel_checksum`]): [`Error::DeviceIntegrity`] when they differ.
    /// Runs after every upload and before every save; `what` names the occasion.
    pub fn verify_device(&self, state: &LayerState, changed: StateChange<'_>, what: &str) -> Result<()> {
        let all: Vec<usize>;
        let seeds = match changed {
            StateChange::All => {
                all = (0..state.num_seeds()).collect();
                &all[..]
            }
            StateChange::Seeds(list) => list,
        };
        let host = plan::kernel_checksum(state, seeds);
        let device = self.backend.kernel_checksum(&self.device, seeds)?;
        if host == device {
            return Ok(());
        }
        let which = match changed {
            StateChange::All => "every seed".to_string(),
            StateChange::Seeds(list) => format!("seeds {list:?}"),
        };
        Err(Error::DeviceIntegrity {
            backend: self.backend.info().backend,
            what: format!("{which} {what}"),
            device,
            host,
        })
    }

    /// Uploads `next`'s seeds in `changed` and checks what the device then holds. When the
    /// check fails, the device gets the current state back (as far as it takes it) and the
    /// error is returned: the host state stays what it was.
    fn upload_checked(&mut self, next: &LayerState, changed: StateChange<'_>, what: &str) -> Result<()> {
        self.backend.upload(&mut self.device, next, changed)?;
        if let Err(e) = self.verify_device(next, changed, what) {
            // Best effort: the error that matters is the integrity failure.
            let _ = self.backend.upload(&mut self.device, &self.state, StateChange::All);
            return Err(e);
        }
        Ok(())
    }

    /// The host copy of the state.
    pub fn state(&self) -> &LayerState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.state.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The device-side layer state (for backend-specific tools).
    pub fn device_layer(&self) -> &B::Layer {
        &self.device
    }

    /// The backend and the device-side layer together, for backend-specific entry
    /// points the generic API does not cover (borrowed host or device buffers, a
    /// caller's stream, parameters owned by a training framework). The host state
    /// stays authoritative for everything such calls do not set.
    pub fn parts_mut(&mut self) -> (&mut B, &mut B::Layer) {
        (&mut self.backend, &mut self.device)
    }

    /// Every transition since the layer was made (or since [`Self::drain_events`]).
    pub fn events(&self) -> &[TransitionEvent] {
        &self.events
    }

    /// Takes the event log, leaving it empty.
    pub fn drain_events(&mut self) -> Vec<TransitionEvent> {
        std::mem::take(&mut self.events)
    }

    /// Applies `f` to a copy of the state; on success uploads `changed` and keeps
    /// the copy. On any error (from `f` or the upload) nothing changes.
    fn mutate<T>(&mut self, changed: StateChange<'_>, f: impl FnOnce(&mut LayerState) -> Result<T>) -> Result<T> {
        let mut next = self.state.clone();
        let out = f(&mut next)?;
        next.validate()?;
        self.upload_checked(&next, changed, "after an upload")?;
        self.state = next;
        Ok(out)
    }

    /// DORMANT -> GERMINATED with a blueprint (SPEC 3).
    pub fn request_germination(
        &mut self,
        seed_id: usize,
        blueprint_id: u16,
        blueprint_type: BlueprintType,
        strategy: GraftingStrategy,
    ) -> Result<()> {
        let ev = self
            .mutate(StateChange::Seeds(&[seed_id]), |s| s.germinate(seed_id, blueprint_id, blueprint_type, strategy))?;
        self.events.push(ev);
        Ok(())
    }

    /// A transition requested by the controller (SPEC 3).
    pub fn transition(&mut self, seed_id: usize, to: LifecycleState) -> Result<()> {
        let ev =
            self.mutate(StateChange::Seeds(&[seed_id]), |s| s.transition(seed_id, to, TransitionReason::Requested))?;
        self.events.push(ev);
        Ok(())
    }

    /// GERMINATED or TRAINING -> CANCELLED.
    pub fn cancel_germination(&mut self, seed_id: usize) -> Result<()> {
        let ev = self.mutate(StateChange::Seeds(&[seed_id]), |s| {
            s.transition(seed_id, LifecycleState::Cancelled, TransitionReason::Cancellation)
        })?;
        self.events.push(ev);
        Ok(())
    }

    /// Sets one seed's blueprint weights (`C` values) and scale, e.g. after an optimizer step.
    pub fn set_seed_params(&mut self, seed_id: usize, weights: &[f32], scale: f32) -> Result<()> {
        self.mutate(StateChange::Seeds(&[seed_id]), |s| {
            if seed_id >= s.num_seeds() {
                return Err(Error::SeedOutOfRange { seed_id, num_seeds: s.num_seeds() });
            }
            let c = s.config.chunk_size();
            if weights.len() != c {
                return Err(Error::shape(format!("weights of seed {seed_id}"), c, weights.len()));
            }
            s.params.seed_weights_mut(seed_id).copy_from_slice(weights);
            s.params.scales[seed_id] = scale;
            Ok(())
        })
    }

    /// Sets every seed's parameters at once (`weights[S, C]`, `scales[S]`).
    pub fn set_params(&mut self, weights: &[f32], scales: &[f32]) -> Result<()> {
        self.mutate(StateChange::All, |s| {
            if weights.len() != s.params.weights.len() {
                return Err(Error::shape("weights", s.params.weights.len(), weights.len()));
            }
            if scales.len() != s.params.scales.len() {
                return Err(Error::shape("scales", s.params.scales.len(), scales.len()));
            }
            s.params.weights.copy_from_slice(weights);
            s.params.scales.copy_from_slice(scales);
            Ok(())
        })
    }

    /// Sets a seed's alpha directly (clamped to [0, 1]); for controllers and tests
    /// that place a seed mid-ramp. NaN is an error.
    pub fn set_alpha(&mut self, seed_id: usize, alpha: f32) -> Result<()> {
        if alpha.is_nan() {
            return Err(Error::InvalidValue { what: format!("alpha of seed {seed_id}"), message: "NaN".into() });
        }
        self.mutate(StateChange::Seeds(&[seed_id]), |s| {
            if seed_id >= s.num_seeds() {
                return Err(Error::SeedOutOfRange { seed_id, num_seeds: s.num_seeds() });
            }
            s.seeds.alpha[seed_id] = alpha.clamp(0.0, 1.0);
            Ok(())
        })
    }

    fn check_tensor(&self, what: &str, t: &B::Tensor, rows: usize, dtype: DType) -> Result<()> {
        let h = self.state.config.hidden_dim;
        if t.cols() != h || t.rows() != rows {
            return Err(Error::shape(what, format!("[{rows}, {h}]"), format!("[{}, {}]", t.rows(), t.cols())));
        }
        if t.dtype() != dtype {
            return Err(Error::DType { what: what.to_string(), expected: dtype, got: t.dtype() });
        }
        Ok(())
    }

    /// `y = layer(x)` on device tensors, accumulating telemetry (SPEC 5).
    pub fn forward(&mut self, x: &B::Tensor, y: &mut B::Tensor) -> Result<()> {
        self.check_tensor("x", x, x.rows(), x.dtype())?;
        self.check_tensor("y", y, x.rows(), x.dtype())?;
        self.backend.forward(&mut self.device, x, y)
    }

    /// `dx` from `g` on device tensors; returns this call's parameter gradients (SPEC 7).
    pub fn backward(&mut self, x: &B::Tensor, g: &B::Tensor, dx: &mut B::Tensor) -> Result<ParamGrads> {
        self.check_tensor("x", x, x.rows(), x.dtype())?;
        self.check_tensor("g", g, x.rows(), x.dtype())?;
        self.check_tensor("dx", dx, x.rows(), x.dtype())?;
        self.backend.backward(&mut self.device, x, g, dx)?;
        self.backend.param_grads(&self.device)
    }

    fn host_rows(&self, what: &str, len: usize) -> Result<usize> {
        let h = self.state.config.hidden_dim;
        if !len.is_multiple_of(h) {
            return Err(Error::shape(what, format!("a multiple of H = {h} elements"), format!("{len} elements")));
        }
        Ok(len / h)
    }

    fn upload_host(&self, what: &str, data: HostData<'_>, rows: usize) -> Result<B::Tensor> {
        if self.host_rows(what, data.len())? != rows {
            return Err(Error::shape(what, rows * self.state.config.hidden_dim, data.len()));
        }
        let mut t = self.backend.alloc(rows, self.state.config.hidden_dim, data.dtype())?;
        self.backend.write(&mut t, data)?;
        Ok(t)
    }

    fn check_out(&self, what: &str, out: &HostDataMut<'_>, rows: usize, dtype: DType) -> Result<()> {
        if out.dtype() != dtype {
            return Err(Error::DType { what: what.to_string(), expected: dtype, got: out.dtype() });
        }
        if out.len() != rows * self.state.config.hidden_dim {
            return Err(Error::shape(what, rows * self.state.config.hidden_dim, out.len()));
        }
        Ok(())
    }

    /// Forward on host slices (uploads, runs, downloads). `x` and `y` hold
    /// `B * H` elements of the same dtype.
    pub fn forward_host(&mut self, x: HostData<'_>, y: HostDataMut<'_>) -> Result<()> {
        let rows = self.host_rows("x", x.len())?;
        self.check_out("y", &y, rows, x.dtype())?;
        let xt = self.upload_host("x", x, rows)?;
        let mut yt = self.backend.alloc(rows, self.state.config.hidden_dim, x.dtype())?;
        self.backend.forward(&mut self.device, &xt, &mut yt)?;
        self.backend.read(&yt, y)
    }

    /// Backward on host slices; returns this call's parameter gradients.
    pub fn backward_host(&mut self, x: HostData<'_>, g: HostData<'_>, dx: HostDataMut<'_>) -> Result<ParamGrads> {
        let rows = self.host_rows("x", x.len())?;
        if g.dtype() != x.dtype() {
            return Err(Error::DType { what: "g".into(), expected: x.dtype(), got: g.dtype() });
        }
        self.check_out("dx", &dx, rows, x.dtype())?;
        let xt = self.upload_host("x", x, rows)?;
        let gt = self.upload_host("g", g, rows)?;
        let mut dxt = self.backend.alloc(rows, self.state.config.hidden_dim, x.dtype())?;
        self.backend.backward(&mut self.device, &xt, &gt, &mut dxt)?;
        self.backend.read(&dxt, dx)?;
        self.backend.param_grads(&self.device)
    }

    /// The raw accumulators since the last `end_epoch`.
    pub fn accumulators(&self) -> Result<Accumulators> {
        let acc = self.backend.accumulators(&self.device)?;
        acc.check_len(self.state.num_seeds())?;
        Ok(acc)
    }

    /// The report of the statistics since the last `end_epoch`, without resetting them.
    pub fn telemetry(&self) -> Result<TelemetryReport> {
        TelemetryReport::build(&self.state, &self.accumulators()?)
    }

    /// Ends the epoch (SPEC 6): consolidates the report, resets the accumulators,
    /// updates strict-mode clamp statistics, advances alpha, applies the automatic
    /// transitions and increments the epoch. Returns the report of the epoch ended.
    pub fn end_epoch(&mut self, signals: &EpochSignals) -> Result<TelemetryReport> {
        signals.check_len(self.state.num_seeds())?;
        let acc = self.accumulators()?;
        let report = TelemetryReport::build(&self.state, &acc)?;
        let mut next = self.state.clone();
        let events = next.advance_epoch(&acc, signals)?;
        next.validate()?;
        self.upload_checked(&next, StateChange::All, "after the end of an epoch")?;
        // The accumulators are reset only once the new state is on the device, so a
        // failed upload leaves the epoch's statistics in place for a retry.
        self.backend.reset_accumulators(&mut self.device)?;
        self.state = next;
        self.events.extend(events);
        Ok(report)
    }

    /// The host's checksum of the state (SPEC 2.1).
    pub fn checksum(&self) -> u32 {
        checksum::checksum(&self.state)
    }

    /// The checksum of the state the device holds, read back from the device.
    pub fn device_checksum(&self) -> Result<u32> {
        self.backend.checksum(&self.device)
    }

    /// The host's kernel checksum of every seed: the state with the constants the kernels
    /// derive from it ([`crate::plan::kernel_checksum`]).
    pub fn kernel_checksum(&self) -> u32 {
        let all: Vec<usize> = (0..self.state.num_seeds()).collect();
        plan::kernel_checksum(&self.state, &all)
    }

    /// The kernel checksum of every seed as the device holds it, read back from the device
    /// ([`Backend::kernel_checksum`]).
    pub fn device_kernel_checksum(&self) -> Result<u32> {
        let all: Vec<usize> = (0..self.state.num_seeds()).collect();
        self.backend.kernel_checksum(&self.device, &all)
    }
}
