//! The morphogenetic demo: a small host network in plain Rust grows the
//! capacity it lacks through a Kasmina layer's seeds, and learns what to grow.
//!
//! **The task.** Inputs `x ∈ R^H` (Gaussian). The host's first layer is
//! `h = W1 x + b1`, and the target is built on the host's own hidden features:
//! output `k` reads chunk `k` of `h` (the `C` columns seed `k` watches),
//! `y_k = Σ_{j ∈ chunk k} v_j φ_k(h_j) + noise`, with `φ_k` the soft hinge
//! `ln(1 + e^{3z}) / 3` for a few "hard" chunks and the identity elsewhere. The
//! host is `Linear(H→H) → Kasmina(H, S) → Linear(H→S)` with no nonlinearity of its
//! own, so where the target bends, its hidden activation cannot follow. No
//! blueprint computes the soft hinge: the MLP blueprint's `relu(x w) s` has a
//! corner where the hinge is smooth, and the other three are linear in `x`.
//!
//! **The controller** ([`Controller`]) decides from telemetry and losses, never
//! from a clock alone:
//!
//! - *germinate* when the held-out loss has stalled (it improved less than
//!   `plateau` over `patience` epochs) and a dormant seed's gradient pressure
//!   (its chunk's `grad_norm` in the epoch's telemetry) stands `pressure_ratio`
//!   times above the median: the loss gradient the host cannot absorb gathers there.
//!   The seed starts from a neutral initialisation (small random weights, scale 1)
//!   that knows nothing of the target, with a provisional blueprint type;
//! - *TRAINING does the work*: while the seed's forward is still the identity, the
//!   run trains a probe per blueprint type on the side: a copy of the layer in which
//!   only this seed is active, as that type, feeding a copy of the host's output
//!   layer, both trained on the real loss of the epoch's batches. Telemetry cannot
//!   tell which type fits a chunk, so every type is tried. When the best probe stops
//!   improving, the seed grafts with the best type's trained blueprint, is
//!   cancelled and germinated again with the better type (its blueprint kept), or is
//!   cancelled for good when no type lowers the loss below the host's;
//! - *GRAFTING* ramps alpha by the seed's strategy, PERFORMANCE_LINKED or
//!   DRIFT_CONTROLLED in turn, with real signals: the epoch's relative improvement
//!   of the held-out loss, and the drift of the blueprint's weights from their
//!   moving average;
//! - *EVALUATING* keeps a seed whose held-out loss is no worse than when its
//!   grafting began and culls the others; *FINE_TUNING* ends in FOSSILIZED once the
//!   held-out loss stops improving.
//!
//! The host's linears train by SGD; a grafted seed's blueprint trains by SGD on the
//! gradients the layer's own backward returns. The same run with germination off is
//! the baseline the final loss is compared with. Everything is seeded: the same
//! options give the same numbers on the same backend.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use kasmina_core::grafting::weight_drift;
use kasmina_core::{
    Backend, BlueprintType, DType, EpochSignals, ForwardMode, GraftingStrategy, HostData, HostDataMut, KasminaLayer,
    LayerConfig, LayerState, LifecycleState, SeedSignal, TelemetryReport, TransitionEvent,
};

use kasmina::{Error, Result};

/// How the controller judges and when it acts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ControllerConfig {
    /// Epochs the host trains alone before any germination.
    pub warmup_epochs: u32,
    /// Epochs the held-out loss is looked back over to decide whether the host has stalled.
    pub patience: u32,
    /// The host has stalled when its held-out loss improved by less than this fraction over
    /// `patience` epochs.
    pub plateau: f32,
    /// A dormant seed is a candidate when its gradient pressure is at least this multiple of
    /// the median pressure over all seeds.
    pub pressure_ratio: f32,
    /// At most this many seeds between GERMINATED and FINE_TUNING at once.
    pub max_active: usize,
    /// Standard deviation of the random noise added to a blueprint's neutral start (see
    /// [`neutral_start`]).
    pub init_scale: f32,
    /// TRAINING ends once the best probe's loss improved by less than this fraction in an epoch.
    pub probe_tolerance: f32,
    /// ... or after this many epochs of TRAINING.
    pub max_training_epochs: u16,
    /// The best probe must end below the host's own loss by at least this fraction.
    pub min_probe_gain: f32,
    /// Epochs in EVALUATING before the verdict.
    pub evaluating_epochs: u16,
    /// EVALUATING keeps a seed when the held-out loss is at most the loss when its grafting
    /// began times `1 + cull_tolerance`; it culls it otherwise.
    pub cull_tolerance: f32,
    /// FINE_TUNING ends once the held-out loss improved by less than this fraction in an epoch...
    pub tune_tolerance: f32,
    /// ... or after this many epochs.
    pub max_fine_tuning_epochs: u16,
    /// Weight of the old value in the moving average of a blueprint's weights (drift signal).
    pub drift_ema: f32,
    /// Whether TRAINING probes every blueprint type (the default). Without probes the seed
    /// grafts its provisional type after one epoch of TRAINING, and EVALUATING alone judges
    /// it: a culled seed is tried again, after its embargo, with a type not tried yet.
    pub probes: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            warmup_epochs: 3,
            patience: 2,
            plateau: 0.05,
            pressure_ratio: 1.5,
            max_active: 3,
            init_scale: 0.1,
            probe_tolerance: 0.05,
            max_training_epochs: 4,
            min_probe_gain: 0.02,
            evaluating_epochs: 1,
            cull_tolerance: 0.02,
            tune_tolerance: 0.01,
            max_fine_tuning_epochs: 3,
            drift_ema: 0.5,
            probes: true,
        }
    }
}

/// The demo's options.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DemoConfig {
    /// Epochs to train.
    pub epochs: u32,
    /// Training samples.
    pub samples: usize,
    /// Held-out samples the controller judges by (the validation loss).
    pub val_samples: usize,
    /// Held-out samples for the final loss (never seen by the controller).
    pub test_samples: usize,
    /// Minibatch rows.
    pub batch: usize,
    /// H: the width of the hidden activation the layer watches.
    pub hidden: usize,
    /// S: the number of seeds (and of outputs: output `k` reads chunk `k`).
    pub seeds: usize,
    /// The chunks where the target bends (soft hinge); the host is linear everywhere.
    pub hard_chunks: Vec<usize>,
    /// Standard deviation of the target noise.
    pub noise: f32,
    /// SGD learning rate (host linears, blueprints and probes).
    pub lr: f32,
    /// Epochs of a GRAFTING ramp (alpha += 1 / ramp_epochs at a neutral signal).
    pub ramp_epochs: u32,
    /// Epochs of STABILIZATION before the automatic move to EVALUATING.
    pub stabilization_epochs: u16,
    /// Epochs a CULLED seed waits before it may return to DORMANT.
    pub embargo_epochs: u16,
    /// The RNG seed of data, initialization and shuffling.
    pub rng_seed: u64,
    /// Whether the controller may germinate seeds (off = the baseline).
    pub germination: bool,
    /// The controller's settings.
    pub controller: ControllerConfig,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            epochs: 40,
            samples: 4096,
            val_samples: 1024,
            test_samples: 1024,
            batch: 128,
            hidden: 64,
            seeds: 8,
            hard_chunks: vec![1, 4, 6],
            noise: 0.02,
            lr: 0.1,
            ramp_epochs: 5,
            stabilization_epochs: 2,
            embargo_epochs: 4,
            rng_seed: 7,
            germination: true,
            controller: ControllerConfig::default(),
        }
    }
}

impl DemoConfig {
    /// A smaller run for tests and a first look: fewer samples and epochs, still long enough
    /// to reach FOSSILIZED.
    pub fn quick() -> Self {
        Self { epochs: 26, samples: 1536, val_samples: 512, test_samples: 512, ..Self::default() }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.seeds == 0 || self.hidden == 0 || !self.hidden.is_multiple_of(self.seeds) {
            return bad(format!("hidden ({}) must be a positive multiple of seeds ({})", self.hidden, self.seeds));
        }
        if self.batch == 0 || self.samples < self.batch || self.test_samples == 0 || self.val_samples == 0 {
            return bad(format!(
                "need samples ({}) >= batch ({}) > 0 and held-out samples > 0",
                self.samples, self.batch
            ));
        }
        if let Some(k) = self.hard_chunks.iter().find(|k| **k >= self.seeds) {
            return bad(format!("hard chunk {k} is not below seeds ({})", self.seeds));
        }
        if self.epochs == 0 || self.ramp_epochs == 0 {
            return bad("epochs and ramp epochs must be positive".into());
        }
        Ok(())
    }

    fn layer_config(&self) -> Result<LayerConfig> {
        let mut c = LayerConfig::new(self.hidden, self.seeds)?;
        c.grafting.ramp_epochs = self.ramp_epochs;
        c.stabilization_epochs = self.stabilization_epochs;
        c.embargo_epochs = self.embargo_epochs;
        c.validate()?;
        Ok(c)
    }
}

/// One controller decision, with the reason it gives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// The seed.
    pub seed: usize,
    /// The state requested (GERMINATED for a germination).
    pub to: LifecycleState,
    /// For a germination: the blueprint type and the grafting strategy.
    pub blueprint: Option<(BlueprintType, GraftingStrategy)>,
    /// Why, in words.
    pub reason: String,
}

/// What a seed's probes did over one epoch of TRAINING: the mean training loss of the network
/// with the seed active as each blueprint type (in [`BlueprintType::ALL`] order), beside the
/// host's own mean training loss over the same batches.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeResult {
    /// The seed.
    pub seed: usize,
    /// The control's mean training loss over the epoch (the seed an identity, the output
    /// layer's copy trained the same way).
    pub host_loss: f32,
    /// The probes' mean training losses, by blueprint type.
    pub losses: [f32; 4],
}

impl ProbeResult {
    /// The best type and its loss (the first of equal losses; NaN never wins).
    pub fn best(&self) -> (BlueprintType, f32) {
        let mut best = (BlueprintType::ALL[0], f32::INFINITY);
        for (ty, l) in BlueprintType::ALL.iter().zip(self.losses) {
            if l < best.1 {
                best = (*ty, l);
            }
        }
        best
    }
}

/// Where a seed stands with the controller.
#[derive(Debug, Clone, Default)]
struct SeedTrack {
    /// The held-out loss when grafting began.
    loss_at_graft: Option<f32>,
    /// The probes' losses of the previous TRAINING epoch.
    last_probe: Option<[f32; 4]>,
    /// A germination waiting for the seed to return to DORMANT: the better type found by the
    /// probes and the strategy, with the probe's trained blueprint (kept by the run).
    again: Option<(BlueprintType, GraftingStrategy)>,
    /// No blueprint type helped this seed, or it was culled after the probes chose its type:
    /// not germinated again.
    retired: bool,
    /// The types this seed was germinated with.
    tried: Vec<BlueprintType>,
    /// Whether the seed was germinated again with a probe's trained blueprint.
    resumed: bool,
    /// The strategy chosen at the first germination.
    strategy: Option<GraftingStrategy>,
    /// The moving average of the blueprint's weights while GRAFTING (drift signal).
    w_ema: Option<Vec<f32>>,
}

/// The demo's controller: reads the layer's state, the epoch's telemetry report, the losses
/// and the probes' results, and decides germinations and transitions. Pure logic over what it
/// is given; the run applies the decisions to the layer.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControllerConfig,
    seeds: Vec<SeedTrack>,
    germinations: usize,
    val_history: Vec<f32>,
}

/// A blueprint's neutral start, chosen without the target: as close to the identity as its
/// type allows (RESIDUAL `w = 0`; CONV taps `(1, 0, 0)`; MLP `w = 1`, the identity on positive
/// inputs; ATTENTION `w = 0`, a uniform softmax), scale 1, plus `noise` to break the symmetry
/// between the chunk's columns.
pub fn neutral_start(ty: BlueprintType, noise: &[f32]) -> Vec<f32> {
    noise
        .iter()
        .enumerate()
        .map(|(j, e)| {
            let base = match ty {
                BlueprintType::Mlp => 1.0,
                BlueprintType::Conv if j == 0 => 1.0,
                _ => 0.0,
            };
            base + e
        })
        .collect()
}

/// The gradient pressure of each seed: its chunk's gradient norm, discounted by
/// the share of dead inputs (a chunk of dead units has nothing to bend).
pub fn pressure(report: &TelemetryReport) -> Vec<f32> {
    report.seeds.iter().map(|s| s.critical.grad_norm * (1.0 - s.critical.dead_ratio.clamp(0.0, 1.0))).collect()
}

fn median(v: &[f32]) -> f32 {
    let mut s: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f32::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
}

/// `(old - new) / old`: the relative improvement from `old` to `new` (0 when `old` is not positive).
fn improvement(old: f32, new: f32) -> f32 {
    if old > 0.0 && old.is_finite() && new.is_finite() { (old - new) / old } else { 0.0 }
}

impl Controller {
    /// A controller for `num_seeds` seeds.
    pub fn new(cfg: ControllerConfig, num_seeds: usize) -> Self {
        Self { cfg, seeds: vec![SeedTrack::default(); num_seeds], germinations: 0, val_history: Vec::new() }
    }

    /// The epoch signals for `end_epoch` (SPEC 6): every seed's improvement is the epoch's
    /// relative improvement of the held-out loss (`val_loss` is this epoch's); a GRAFTING
    /// seed's drift is the distance of its weights from their moving average, which this call
    /// advances.
    pub fn signals(&mut self, state: &LayerState, val_loss: f32) -> Result<EpochSignals> {
        let imp = self.val_history.last().map_or(0.0, |prev| improvement(*prev, val_loss));
        self.val_history.push(val_loss);
        let ema = self.cfg.drift_ema;
        let mut seeds = Vec::with_capacity(state.num_seeds());
        for (i, t) in self.seeds.iter_mut().enumerate() {
            let mut drift = 0.0;
            if state.seeds.lifecycle[i] == LifecycleState::Grafting {
                let w = state.params.seed_weights(i);
                let avg = t.w_ema.get_or_insert_with(|| w.to_vec());
                drift = weight_drift(w, avg)?;
                avg.iter_mut().zip(w).for_each(|(a, v)| *a = ema * *a + (1.0 - ema) * v);
            } else {
                t.w_ema = None;
            }
            seeds.push(SeedSignal { improvement: imp, drift });
        }
        Ok(EpochSignals { seeds })
    }

    /// Whether the held-out loss has stalled: it improved by less than `plateau` over the last
    /// `patience` epochs.
    fn stalled(&self) -> bool {
        let h = &self.val_history;
        let p = self.cfg.patience as usize;
        h.len() > p && improvement(h[h.len() - 1 - p], h[h.len() - 1]) < self.cfg.plateau
    }

    /// Decisions after `end_epoch`: `state` is the layer's state after the automatic
    /// transitions, `report` the telemetry of the epoch just ended, `val_loss` its held-out
    /// loss (already passed to [`Controller::signals`]), `probes` the probes' results of the
    /// seeds in TRAINING, `germinate` whether new seeds may start.
    pub fn decide(
        &mut self,
        state: &LayerState,
        report: &TelemetryReport,
        val_loss: f32,
        probes: &[ProbeResult],
        germinate: bool,
    ) -> Vec<Decision> {
        use LifecycleState::*;
        let s = state.num_seeds();
        let prev_val = self.val_history.iter().rev().nth(1).copied();
        let mut out = Vec::new();
        let mut active = 0;
        for i in 0..s {
            let eis = state.seeds.lifecycle[i];
            let in_state = state.seeds.epochs_in_state[i];
            let d = |to, reason: String| Decision { seed: i, to, blueprint: None, reason };
            let t = &mut self.seeds[i];
            match eis {
                Germinated => {
                    active += 1;
                    let why = match (t.resumed, self.cfg.probes) {
                        (true, _) => "the probe's trained blueprint; probes again",
                        (false, true) => "neutral start; a probe of every blueprint type",
                        (false, false) => "neutral start; no probes",
                    };
                    out.push(d(Training, why.into()));
                }
                Training if !self.cfg.probes => {
                    active += 1;
                    if in_state >= 1 {
                        t.loss_at_graft = Some(val_loss);
                        let ty = state.seeds.blueprint_type[i].name();
                        out.push(d(Grafting, format!("{ty} as germinated, unprobed; held-out {val_loss:.5}")));
                    }
                }
                Training => {
                    active += 1;
                    let Some(p) = probes.iter().find(|p| p.seed == i) else { continue };
                    let (best_ty, best) = p.best();
                    // Every probe has stopped improving (or the time is up).
                    let converged = t.last_probe.is_some_and(|prev| {
                        prev.iter().zip(p.losses).all(|(a, b)| improvement(*a, b) < self.cfg.probe_tolerance)
                    });
                    t.last_probe = Some(p.losses);
                    if !(converged || in_state >= self.cfg.max_training_epochs) {
                        continue;
                    }
                    let losses = BlueprintType::ALL
                        .iter()
                        .zip(p.losses)
                        .map(|(ty, l)| format!("{} {l:.5}", ty.name()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let current = state.seeds.blueprint_type[i];
                    t.last_probe = None;
                    let bar = p.host_loss * (1.0 - self.cfg.min_probe_gain);
                    // NaN on either side is no gain.
                    if best.partial_cmp(&bar) != Some(std::cmp::Ordering::Less) {
                        t.retired = true;
                        out.push(d(Cancelled, format!("no type beats the host's {:.5} ({losses})", p.host_loss)));
                    } else if best_ty != current {
                        t.again = Some((best_ty, t.strategy.unwrap_or(GraftingStrategy::PerformanceLinked)));
                        out.push(d(Cancelled, format!("{} fits better ({losses}): germinate again", best_ty.name())));
                    } else {
                        t.loss_at_graft = Some(val_loss);
                        out.push(d(
                            Grafting,
                            format!("{} fits best ({losses}); held-out {val_loss:.5}", best_ty.name()),
                        ));
                    }
                }
                Grafting | Stabilization => active += 1,
                Evaluating => {
                    active += 1;
                    if in_state >= self.cfg.evaluating_epochs {
                        let before = t.loss_at_graft.unwrap_or(f32::INFINITY);
                        // A NaN loss counts as worse.
                        if val_loss <= before * (1.0 + self.cfg.cull_tolerance) {
                            out.push(d(FineTuning, format!("held-out {val_loss:.5} vs {before:.5} before grafting")));
                        } else {
                            t.retired = self.cfg.probes || t.tried.len() >= BlueprintType::ALL.len();
                            out.push(d(
                                Culled,
                                format!("held-out {val_loss:.5} is worse than {before:.5} before grafting"),
                            ));
                        }
                    }
                }
                FineTuning => {
                    active += 1;
                    let gain = prev_val.map_or(0.0, |p| improvement(p, val_loss));
                    if in_state >= self.cfg.max_fine_tuning_epochs || (in_state >= 1 && gain < self.cfg.tune_tolerance)
                    {
                        out.push(d(
                            Fossilized,
                            format!("held-out {val_loss:.5}, {:.1}% better in the epoch", 100.0 * gain),
                        ));
                    }
                }
                Dormant => {
                    if let Some((ty, st)) = t.again.take() {
                        active += 1;
                        t.resumed = true;
                        t.tried.push(ty);
                        out.push(Decision {
                            seed: i,
                            to: Germinated,
                            blueprint: Some((ty, st)),
                            reason: format!("again as {}, with the probe's trained blueprint", ty.name()),
                        });
                    }
                }
                _ => {}
            }
        }
        if germinate && report.epoch + 1 >= self.cfg.warmup_epochs && active < self.cfg.max_active && self.stalled() {
            let p = pressure(report);
            let med = median(&p);
            let mut candidates: Vec<usize> = (0..s)
                .filter(|&i| state.seeds.lifecycle[i] == Dormant && !self.seeds[i].retired)
                .filter(|&i| self.seeds[i].again.is_none() && !out.iter().any(|d| d.seed == i))
                .filter(|&i| p[i].is_finite() && p[i] > 0.0 && p[i] >= self.cfg.pressure_ratio * med)
                .collect();
            candidates.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
            // One at a time: the next germination waits for the held-out loss to stall again.
            if let Some(&i) = candidates.first() {
                let n = self.germinations;
                self.germinations += 1;
                // Telemetry does not tell the type: a provisional one in turn (one this seed has not
                // had yet), and the probes decide.
                let t = &mut self.seeds[i];
                let order = (0..4).map(|k| BlueprintType::ALL[3 - (n + k) % 4]);
                let ty = order.clone().find(|ty| !t.tried.contains(ty)).unwrap_or(BlueprintType::Mlp);
                let st = if n.is_multiple_of(2) {
                    GraftingStrategy::PerformanceLinked
                } else {
                    GraftingStrategy::DriftControlled
                };
                t.strategy = Some(st);
                t.tried.push(ty);
                t.resumed = false;
                let ratio = if med > 0.0 { p[i] / med } else { f32::INFINITY };
                out.push(Decision {
                    seed: i,
                    to: Germinated,
                    blueprint: Some((ty, st)),
                    reason: format!(
                        "held-out loss stalled; gradient pressure {:.3e} is {ratio:.1}x the median ({}, {})",
                        p[i],
                        ty.name(),
                        st.name()
                    ),
                });
            }
        }
        out
    }
}

/// What one epoch looked like.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    /// The epoch (0-based).
    pub epoch: u32,
    /// Mean training loss over the epoch's minibatches (`0.5 * mean ‖out - y‖²`).
    pub loss: f32,
    /// The held-out (validation) loss at the end of the epoch, what the controller judges by.
    pub val_loss: f32,
    /// Every seed's state after the epoch and the controller's decisions.
    pub states: Vec<LifecycleState>,
    /// Every seed's alpha at the same moment.
    pub alpha: Vec<f32>,
    /// Every seed's gradient pressure this epoch.
    pub pressure: Vec<f32>,
    /// The probes' results of the seeds in TRAINING this epoch.
    pub probes: Vec<ProbeResult>,
    /// The controller's decisions after this epoch.
    pub decisions: Vec<Decision>,
}

/// The result of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoRun {
    /// The device's id (`cpu`, `cuda:0`...).
    pub device: String,
    /// Whether germination was on.
    pub germination: bool,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// Every lifecycle transition, automatic ones included.
    pub events: Vec<TransitionEvent>,
    /// Loss on the test samples at the end.
    pub final_loss: f32,
    /// Seeds that reached FOSSILIZED.
    pub fossilized: Vec<usize>,
    /// Seeds that were culled.
    pub culled: Vec<usize>,
    /// The layer's final state.
    #[serde(skip)]
    pub state: LayerState,
}

/// A plain dense layer `out = W in + b`, `W[out, in]` row-major.
#[derive(Debug, Clone)]
struct Linear {
    inputs: usize,
    outputs: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Linear {
    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        for r in 0..rows {
            let xi = &x[r * self.inputs..(r + 1) * self.inputs];
            for o in 0..self.outputs {
                let wo = &self.w[o * self.inputs..(o + 1) * self.inputs];
                out[r * self.outputs + o] = self.b[o] + wo.iter().zip(xi).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }

    /// `gx = g W` (when asked), and an SGD step with `dW = gᵀ x`, `db = Σ g`.
    fn backward_step(&mut self, x: &[f32], g: &[f32], rows: usize, gx: Option<&mut [f32]>, lr: f32) {
        if let Some(gx) = gx {
            gx.fill(0.0);
            for r in 0..rows {
                let gxr = &mut gx[r * self.inputs..(r + 1) * self.inputs];
                for o in 0..self.outputs {
                    let go = g[r * self.outputs + o];
                    let wo = &self.w[o * self.inputs..(o + 1) * self.inputs];
                    gxr.iter_mut().zip(wo).for_each(|(a, w)| *a += go * w);
                }
            }
        }
        for r in 0..rows {
            let xi = &x[r * self.inputs..(r + 1) * self.inputs];
            for o in 0..self.outputs {
                let go = g[r * self.outputs + o];
                self.b[o] -= lr * go;
                let wo = &mut self.w[o * self.inputs..(o + 1) * self.inputs];
                wo.iter_mut().zip(xi).for_each(|(w, xv)| *w -= lr * go * xv);
            }
        }
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    // Box-Muller; u1 in (0, 1] so the log is finite.
    let u1: f32 = 1.0 - rng.random::<f32>();
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The target's bend on a hard chunk: the soft hinge `ln(1 + e^(3z)) / 3`, a smooth curve that
/// no blueprint of SPEC 4 computes (the MLP blueprint's relu has a corner, the others are linear).
fn soft_hinge(z: f32) -> f32 {
    let t = 3.0 * z;
    // ln(1 + e^t) without overflow for large t.
    (t.max(0.0) + (-t.abs()).exp().ln_1p()) / 3.0
}

/// The data set (training, validation for the controller, test for the final loss) and the
/// host's starting first layer (the target is built on it).
struct Task {
    x: Vec<f32>,
    y: Vec<f32>,
    x_val: Vec<f32>,
    y_val: Vec<f32>,
    x_test: Vec<f32>,
    y_test: Vec<f32>,
    w1: Linear,
}

fn make_task(cfg: &DemoConfig) -> Task {
    let h = cfg.hidden;
    let c = h / cfg.seeds;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed);
    let scale = 1.0 / (h as f32).sqrt();
    let w1 =
        Linear { inputs: h, outputs: h, w: (0..h * h).map(|_| normal(&mut rng) * scale).collect(), b: vec![0.0; h] };
    let v: Vec<f32> = (0..h).map(|_| normal(&mut rng) / (c as f32).sqrt()).collect();
    let mut hard = vec![false; cfg.seeds];
    for k in &cfg.hard_chunks {
        hard[*k] = true;
    }
    let generate = |n: usize, rng: &mut ChaCha8Rng| {
        let x: Vec<f32> = (0..n * h).map(|_| normal(rng)).collect();
        let mut hid = vec![0.0; n * h];
        w1.forward(&x, n, &mut hid);
        let mut y = vec![0.0; n * cfg.seeds];
        for r in 0..n {
            for k in 0..cfg.seeds {
                let mut acc = 0.0;
                for j in k * c..(k + 1) * c {
                    let z = hid[r * h + j];
                    acc += v[j] * if hard[k] { soft_hinge(z) } else { z };
                }
                y[r * cfg.seeds + k] = acc + cfg.noise * normal(rng);
            }
        }
        (x, y)
    };
    let (x, y) = generate(cfg.samples, &mut rng);
    let (x_test, y_test) = generate(cfg.test_samples, &mut rng);
    let (x_val, y_val) = generate(cfg.val_samples, &mut rng);
    Task { x, y, x_val, y_val, x_test, y_test, w1 }
}

/// Device tensors for one minibatch size.
struct Buffers<B: Backend> {
    x: B::Tensor,
    y: B::Tensor,
    g: B::Tensor,
    dx: B::Tensor,
}

impl<B: Backend> Buffers<B> {
    fn new(backend: &B, rows: usize, h: usize) -> Result<Self> {
        Ok(Self {
            x: backend.alloc(rows, h, DType::F32)?,
            y: backend.alloc(rows, h, DType::F32)?,
            g: backend.alloc(rows, h, DType::F32)?,
            dx: backend.alloc(rows, h, DType::F32)?,
        })
    }
}

/// Host-side scratch of one minibatch: activations and their gradients.
struct Scratch {
    act: Vec<f32>,
    out: Vec<f32>,
    g_out: Vec<f32>,
    g_act: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize, h: usize, s: usize) -> Self {
        Self {
            act: vec![0.0; rows * h],
            out: vec![0.0; rows * s],
            g_out: vec![0.0; rows * s],
            g_act: vec![0.0; rows * h],
        }
    }

    /// `g_out = (out - y) / rows`; returns `0.5 * mean_rows ‖out - y‖²`.
    fn loss_grad(&mut self, y: &[f32], rows: usize) -> f64 {
        let mut l = 0.0f64;
        for ((g, o), t) in self.g_out.iter_mut().zip(&self.out).zip(y) {
            let d = o - t;
            l += (d as f64) * (d as f64);
            *g = d / rows as f32;
        }
        0.5 * l / rows as f64
    }
}

/// The layer's forward on a minibatch already in `bufs.x`, then the output linear: fills
/// `sc.act` and `sc.out`.
fn layer_then_linear<B: Backend>(
    layer: &mut KasminaLayer<&B>,
    l2: &Linear,
    bufs: &mut Buffers<B>,
    sc: &mut Scratch,
    rows: usize,
) -> Result<()> {
    layer.forward(&bufs.x, &mut bufs.y)?;
    layer.backend().read(&bufs.y, HostDataMut::F32(&mut sc.act))?;
    l2.forward(&sc.act, rows, &mut sc.out);
    Ok(())
}

/// The backward of [`layer_then_linear`] with SGD on the output linear: the layer's own
/// backward leaves `dL/dx` in `bufs.dx` and returns its parameter gradients.
fn linear_then_layer_back<B: Backend>(
    layer: &mut KasminaLayer<&B>,
    l2: &mut Linear,
    bufs: &mut Buffers<B>,
    sc: &mut Scratch,
    rows: usize,
    lr: f32,
) -> Result<kasmina_core::ParamGrads> {
    l2.backward_step(&sc.act, &sc.g_out, rows, Some(&mut sc.g_act), lr);
    layer.backend().write(&mut bufs.g, HostData::F32(&sc.g_act))?;
    Ok(layer.backward(&bufs.x, &bufs.g, &mut bufs.dx)?)
}

/// One probe of a seed in TRAINING: a copy of the network's layer in which that seed is active
/// as one blueprint type (FOSSILIZED, so the chunk is the blueprint's output), or left an
/// identity (the control), feeding a copy of the host's output layer. Both learn from the real
/// loss of the epoch's batches while the network itself still sees the seed as an identity;
/// the control gets the same treatment, so a type is judged against it, not against a network
/// whose output layer never had to adapt.
struct Probe<'b, B: Backend> {
    seed: usize,
    /// The type tried; `None` for the control.
    ty: Option<BlueprintType>,
    layer: KasminaLayer<&'b B>,
    l2: Linear,
    loss_sum: f64,
    batches: usize,
}

/// `main` with `seed` active as `ty` with the given blueprint (or as it is, for the control).
fn probe_state(main: &LayerState, seed: usize, ty: Option<BlueprintType>, blueprint: (&[f32], f32)) -> LayerState {
    let mut st = main.clone();
    if let Some(ty) = ty {
        st.seeds.lifecycle[seed] = LifecycleState::Fossilized;
        st.seeds.blueprint_type[seed] = ty;
        st.seeds.alpha[seed] = 1.0;
    }
    st.params.seed_weights_mut(seed).copy_from_slice(blueprint.0);
    st.params.scales[seed] = blueprint.1;
    st
}

impl<'b, B: Backend> Probe<'b, B> {
    fn new(
        backend: &'b B,
        main: &LayerState,
        seed: usize,
        ty: Option<BlueprintType>,
        blueprint: (&[f32], f32),
        l2: &Linear,
    ) -> Result<Self> {
        let layer = KasminaLayer::from_state(backend, probe_state(main, seed, ty, blueprint))?;
        Ok(Self { seed, ty, layer, l2: l2.clone(), loss_sum: 0.0, batches: 0 })
    }

    /// Takes the network's other seeds as they are now (alpha, lifecycle, blueprints), keeping
    /// this probe's own seed and output layer.
    fn resync(&mut self, backend: &'b B, main: &LayerState) -> Result<()> {
        let (w, s) = self.params();
        let st = probe_state(main, self.seed, self.ty, (w, s));
        self.layer = KasminaLayer::from_state(backend, st)?;
        Ok(())
    }

    /// One SGD step on the minibatch in `bufs.x` (targets `y`).
    fn step(&mut self, bufs: &mut Buffers<B>, sc: &mut Scratch, y: &[f32], rows: usize, lr: f32) -> Result<()> {
        layer_then_linear(&mut self.layer, &self.l2, bufs, sc, rows)?;
        self.loss_sum += sc.loss_grad(y, rows);
        self.batches += 1;
        let grads = linear_then_layer_back(&mut self.layer, &mut self.l2, bufs, sc, rows, lr)?;
        if self.ty.is_some() {
            let (w, s) = self.params();
            let c = w.len();
            let w: Vec<f32> = w.iter().zip(&grads.dweights[self.seed * c..]).map(|(w, d)| w - lr * d).collect();
            self.layer.set_seed_params(self.seed, &w, s - lr * grads.dscales[self.seed])?;
        }
        Ok(())
    }

    /// The blueprint's weights and scale.
    fn params(&self) -> (&[f32], f32) {
        let p = &self.layer.state().params;
        (p.seed_weights(self.seed), p.scales[self.seed])
    }

    /// The mean loss since the last call, and a fresh start for the next epoch.
    fn take_loss(&mut self) -> f32 {
        let l = (self.loss_sum / self.batches.max(1) as f64) as f32;
        (self.loss_sum, self.batches) = (0.0, 0);
        l
    }
}

/// The whole network: two host linears around the layer.
struct Net<'b, B: Backend> {
    l1: Linear,
    layer: KasminaLayer<&'b B>,
    l2: Linear,
}

impl<B: Backend> Net<'_, B> {
    /// The loss `0.5 * mean_rows ‖out - y‖²` over a data set, in batches of `rows`.
    fn eval_loss(&mut self, x: &[f32], y: &[f32], bufs: &mut Buffers<B>, rows: usize) -> Result<f32> {
        let (h, s) = (self.l1.outputs, self.l2.outputs);
        let n = x.len() / self.l1.inputs;
        let mut hid = vec![0.0; rows * h];
        let mut sc = Scratch::new(rows, h, s);
        let mut total = 0.0f64;
        let mut start = 0;
        while start + rows <= n {
            self.l1.forward(&x[start * self.l1.inputs..(start + rows) * self.l1.inputs], rows, &mut hid);
            self.layer.backend().write(&mut bufs.x, HostData::F32(&hid))?;
            layer_then_linear(&mut self.layer, &self.l2, bufs, &mut sc, rows)?;
            total += sc.loss_grad(&y[start * s..(start + rows) * s], rows) * rows as f64;
            start += rows;
        }
        Ok((total / start.max(1) as f64) as f32)
    }
}

/// Runs the demo on `backend`. `on_epoch` sees each epoch's record as it ends
/// (for progress and printing). The same config gives the same numbers on the
/// same backend and device.
pub fn run<B: Backend>(backend: B, cfg: &DemoConfig, mut on_epoch: impl FnMut(&EpochRecord)) -> Result<DemoRun> {
    cfg.validate()?;
    let (h, s) = (cfg.hidden, cfg.seeds);
    let c = h / s;
    let task = make_task(cfg);
    let device = backend.info().id();
    let config = cfg.layer_config()?;
    let backend = &backend;
    let layer = KasminaLayer::new(backend, config)?;
    let mut net =
        Net { l1: task.w1.clone(), layer, l2: Linear { inputs: h, outputs: s, w: vec![0.0; s * h], b: vec![0.0; s] } };
    let mut controller = Controller::new(cfg.controller.clone(), s);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed ^ 0x5eed);
    let mut init_rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed ^ 0xb1ee);
    let rows = cfg.batch;
    let mut bufs = Buffers::new(backend, rows, h)?;
    let mut xb = vec![0.0f32; rows * h];
    let mut yb = vec![0.0f32; rows * s];
    let mut hid = vec![0.0; rows * h];
    let mut sc = Scratch::new(rows, h, s);
    let mut order: Vec<usize> = (0..cfg.samples).collect();
    let mut history = Vec::new();
    let mut events = Vec::new();
    let mut probes: Vec<Probe<'_, B>> = Vec::new();
    // A cancelled seed's best probe blueprint, for its germination again as that type.
    let mut carried: Vec<Option<(Vec<f32>, f32)>> = vec![None; s];
    let mut blueprint_ids = 0u16;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        let mut batches = 0usize;
        for batch in order.chunks_exact(rows) {
            for (r, &i) in batch.iter().enumerate() {
                xb[r * h..(r + 1) * h].copy_from_slice(&task.x[i * h..(i + 1) * h]);
                yb[r * s..(r + 1) * s].copy_from_slice(&task.y[i * s..(i + 1) * s]);
            }
            // Forward: host linear, the layer on the device, host linear.
            net.l1.forward(&xb, rows, &mut hid);
            backend.write(&mut bufs.x, HostData::F32(&hid))?;
            layer_then_linear(&mut net.layer, &net.l2, &mut bufs, &mut sc, rows)?;
            loss_sum += sc.loss_grad(&yb, rows);
            batches += 1;
            // Backward: host linear, the layer's own backward, host linear.
            let grads = linear_then_layer_back(&mut net.layer, &mut net.l2, &mut bufs, &mut sc, rows, cfg.lr)?;
            backend.read(&bufs.dx, HostDataMut::F32(&mut hid))?;
            // The probes learn on the same minibatch (the layer's input is still in bufs.x).
            for p in &mut probes {
                p.step(&mut bufs, &mut sc, &yb, rows, cfg.lr)?;
            }
            net.l1.backward_step(&xb, &hid, rows, None, cfg.lr);
            // The blueprints of seeds that blend or replace their chunk learn from
            // the layer's parameter gradients (identity seeds have zero gradients).
            let st = net.layer.state();
            if st.seeds.lifecycle.iter().any(|l| l.forward_mode() != ForwardMode::Identity) {
                let w: Vec<f32> = st.params.weights.iter().zip(&grads.dweights).map(|(w, d)| w - cfg.lr * d).collect();
                let sc2: Vec<f32> = st.params.scales.iter().zip(&grads.dscales).map(|(v, d)| v - cfg.lr * d).collect();
                net.layer.set_params(&w, &sc2)?;
            }
        }
        let loss = (loss_sum / batches.max(1) as f64) as f32;
        let val_rows = rows.min(cfg.val_samples);
        let val_loss = if val_rows == rows {
            net.eval_loss(&task.x_val, &task.y_val, &mut bufs, rows)?
        } else {
            net.eval_loss(&task.x_val, &task.y_val, &mut Buffers::new(backend, val_rows, h)?, val_rows)?
        };
        let results: Vec<ProbeResult> = (0..s)
            .filter_map(|seed| {
                let mine: Vec<&mut Probe<'_, B>> = probes.iter_mut().filter(|p| p.seed == seed).collect();
                if mine.is_empty() {
                    return None;
                }
                let (mut losses, mut host_loss) = ([f32::INFINITY; 4], f32::INFINITY);
                for p in mine {
                    let l = p.take_loss();
                    match BlueprintType::ALL.iter().position(|t| Some(*t) == p.ty) {
                        Some(k) => losses[k] = l,
                        None => host_loss = l,
                    }
                }
                Some(ProbeResult { seed, host_loss, losses })
            })
            .collect();
        let signals = controller.signals(net.layer.state(), val_loss)?;
        let report = net.layer.end_epoch(&signals)?;
        let decisions = controller.decide(net.layer.state(), &report, val_loss, &results, cfg.germination);
        for d in &decisions {
            match (d.to, d.blueprint) {
                (LifecycleState::Germinated, Some((ty, st))) => {
                    blueprint_ids += 1;
                    net.layer.request_germination(d.seed, blueprint_ids, ty, st)?;
                }
                (LifecycleState::Training, _) => {
                    net.layer.transition(d.seed, LifecycleState::Training)?;
                    let ty = net.layer.state().seeds.blueprint_type[d.seed];
                    // Every type from its neutral start (the same noise for all); a seed germinated
                    // again starts its chosen type from the probe that chose it.
                    let noise: Vec<f32> = (0..c).map(|_| cfg.controller.init_scale * normal(&mut init_rng)).collect();
                    let kept = carried[d.seed].take();
                    for t in BlueprintType::ALL {
                        let start = match &kept {
                            Some((kw, ks)) if *t == ty => (kw.clone(), *ks),
                            _ => (neutral_start(*t, &noise), 1.0),
                        };
                        if *t == ty {
                            net.layer.set_seed_params(d.seed, &start.0, start.1)?;
                        }
                        if cfg.controller.probes {
                            let main = net.layer.state();
                            probes.push(Probe::new(backend, main, d.seed, Some(*t), (&start.0, start.1), &net.l2)?);
                        }
                    }
                    if cfg.controller.probes {
                        let (main, w0) = (net.layer.state(), net.layer.state().params.seed_weights(d.seed).to_vec());
                        let s0 = main.params.scales[d.seed];
                        probes.push(Probe::new(backend, main, d.seed, None, (&w0, s0), &net.l2)?);
                    }
                }
                (to, _) => {
                    if net.layer.state().seeds.lifecycle[d.seed] == LifecycleState::Training {
                        // Leaving TRAINING: the chosen type's trained blueprint goes to the layer
                        // (GRAFTING) or is kept for the germination again (a better type).
                        let best = results.iter().find(|r| r.seed == d.seed).map(|r| r.best().0);
                        let current = net.layer.state().seeds.blueprint_type[d.seed];
                        let pick = if to == LifecycleState::Grafting { Some(current) } else { best };
                        if let Some(p) = probes.iter().find(|p| p.seed == d.seed && p.ty.is_some() && p.ty == pick) {
                            let (w, sv) = p.params();
                            let trained = (w.to_vec(), sv);
                            if to == LifecycleState::Grafting {
                                net.layer.set_seed_params(d.seed, &trained.0, trained.1)?;
                            } else {
                                carried[d.seed] = Some(trained);
                            }
                        }
                        probes.retain(|p| p.seed != d.seed);
                    }
                    net.layer.transition(d.seed, to)?;
                }
            }
        }
        for p in &mut probes {
            p.resync(backend, net.layer.state())?;
        }
        let st = net.layer.state();
        let record = EpochRecord {
            epoch,
            loss,
            val_loss,
            states: st.seeds.lifecycle.clone(),
            alpha: st.seeds.alpha.clone(),
            pressure: pressure(&report),
            probes: results,
            decisions,
        };
        on_epoch(&record);
        history.push(record);
        events.extend(net.layer.drain_events());
    }
    let test_rows = rows.min(cfg.test_samples);
    let mut test_bufs = if test_rows == rows { bufs } else { Buffers::new(backend, test_rows, h)? };
    let final_loss = net.eval_loss(&task.x_test, &task.y_test, &mut test_bufs, test_rows)?;
    let st = net.layer.state().clone();
    let in_state = |l: LifecycleState| (0..s).filter(|i| st.seeds.lifecycle[*i] == l).collect::<Vec<_>>();
    let fossilized = in_state(LifecycleState::Fossilized);
    let culled = events.iter().filter(|e| e.to == LifecycleState::Culled).map(|e| e.seed_id).collect::<Vec<usize>>();
    Ok(DemoRun { device, germination: cfg.germination, history, events, final_loss, fossilized, culled, state: st })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasmina_core::Accumulators;
    use kasmina_core::lifecycle::TransitionReason::Requested;

    fn report_with_grad(state: &LayerState, grad_sq: &[f64]) -> TelemetryReport {
        let mut acc = Accumulators::empty(state.num_seeds());
        acc.grad_sq.copy_from_slice(grad_sq);
        TelemetryReport::build(state, &acc).unwrap()
    }

    fn controller(losses: &[f32]) -> (Controller, LayerState) {
        let st = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        let mut c = Controller::new(ControllerConfig { warmup_epochs: 0, ..Default::default() }, 4);
        for l in losses {
            c.signals(&st, *l).unwrap();
        }
        (c, st)
    }

    #[test]
    fn controller_germinates_the_top_pressure_seed_only_once_the_loss_stalls() {
        let r_st = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        let r = report_with_grad(&r_st, &[1.0, 100.0, 1.2, 90.0]);
        let (mut c, st) = controller(&[1.0, 0.5, 0.3]);
        assert!(c.decide(&st, &r, 0.3, &[], true).is_empty(), "the loss still falls fast: no germination");
        let (mut c, st) = controller(&[1.0, 0.99, 0.985]);
        let d = c.decide(&st, &r, 0.985, &[], true);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].seed, d[0].to), (1, LifecycleState::Germinated));
        let (_, strategy) = d[0].blueprint.unwrap();
        assert_eq!(strategy, GraftingStrategy::PerformanceLinked);
        assert!(c.decide(&st, &r, 0.985, &[], false).is_empty());
    }

    fn in_training(seed: usize, ty: BlueprintType) -> LayerState {
        let mut st = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        st.germinate(seed, 1, ty, GraftingStrategy::DriftControlled).unwrap();
        st.transition(seed, LifecycleState::Training, Requested).unwrap();
        st.seeds.epochs_in_state[seed] = 4;
        st
    }

    #[test]
    fn training_ends_with_the_type_whose_probe_fits_best() {
        let (mut c, _) = controller(&[1.0]);
        let st = in_training(2, BlueprintType::Mlp);
        let r = report_with_grad(&st, &[0.0; 4]);
        let probe = |losses| ProbeResult { seed: 2, host_loss: 1.0, losses };
        // MLP (index 2) is best: graft.
        let d = c.decide(&st, &r, 0.9, &[probe([0.95, 0.96, 0.5, 0.97])], false);
        assert_eq!(d[0].to, LifecycleState::Grafting, "{d:?}");
        // CONV is better than the germinated MLP: cancel, then germinate again as CONV.
        let d = c.decide(&st, &r, 0.9, &[probe([0.95, 0.96, 0.5, 0.4])], false);
        assert_eq!(d[0].to, LifecycleState::Cancelled, "{d:?}");
        let dormant = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        let d = c.decide(&dormant, &r, 0.9, &[], false);
        assert_eq!(
            (d[0].seed, d[0].to, d[0].blueprint.map(|b| b.0)),
            (2, LifecycleState::Germinated, Some(BlueprintType::Conv))
        );
        // No type beats the host: cancelled for good.
        let d = c.decide(&st, &r, 0.9, &[probe([0.995, 1.0, 1.1, 0.999])], false);
        assert_eq!(d[0].to, LifecycleState::Cancelled);
        let many = report_with_grad(&dormant, &[1.0, 1.0, 100.0, 1.0]);
        assert!(c.decide(&dormant, &many, 0.9, &[], true).iter().all(|d| d.seed != 2));
    }

    #[test]
    fn controller_culls_a_seed_that_made_the_held_out_loss_worse() {
        let (mut c, _) = controller(&[1.0]);
        let mut st = in_training(2, BlueprintType::Mlp);
        let r = report_with_grad(&st, &[0.0; 4]);
        let probe = ProbeResult { seed: 2, host_loss: 1.0, losses: [0.9, 0.9, 0.5, 0.9] };
        assert_eq!(c.decide(&st, &r, 0.5, &[probe], false)[0].to, LifecycleState::Grafting);
        for to in [LifecycleState::Grafting, LifecycleState::Stabilization, LifecycleState::Evaluating] {
            st.transition(2, to, Requested).unwrap();
        }
        st.seeds.epochs_in_state[2] = 1;
        let mut good = c.clone();
        assert_eq!(good.decide(&st, &r, 0.4, &[], false)[0].to, LifecycleState::FineTuning);
        assert_eq!(c.decide(&st, &r, 0.6, &[], false)[0].to, LifecycleState::Culled);
    }

    #[test]
    fn drift_signal_follows_the_blueprint_weights_from_their_moving_average() {
        let (mut c, _) = controller(&[]);
        let mut st = in_training(1, BlueprintType::Residual);
        st.transition(1, LifecycleState::Grafting, Requested).unwrap();
        st.params.seed_weights_mut(1).copy_from_slice(&[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(c.signals(&st, 1.0).unwrap().seeds[1].drift, 0.0);
        st.params.seed_weights_mut(1).copy_from_slice(&[2.0, 2.0, 2.0, 2.0]);
        let sig = c.signals(&st, 0.8).unwrap();
        assert!((sig.seeds[1].drift - 1.0).abs() < 1e-6, "{sig:?}");
        assert!((sig.seeds[0].improvement - 0.2).abs() < 1e-6 && sig.seeds[0].drift == 0.0);
    }

    #[test]
    fn the_soft_hinge_is_smooth_and_matches_its_formula() {
        for z in [-30.0f32, -1.0, 0.0, 0.5, 30.0] {
            let want = ((1.0f64 + (3.0 * z as f64).exp()).ln() / 3.0) as f32;
            assert!((soft_hinge(z) - want).abs() <= 1e-6 * want.abs().max(1.0), "{z}");
        }
    }
}
