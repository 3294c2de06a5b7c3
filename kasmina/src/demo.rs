//! The morphogenetic demo: a small host network in plain Rust grows the
//! capacity it lacks through a Kasmina layer's seeds.
//!
//! **The task.** Inputs `x ∈ R^H` (Gaussian). The host's first layer is
//! `h = W1 x + b1`, and the target is built on the host's own hidden features:
//! output `k` reads chunk `k` of `h` (the `C` columns seed `k` watches),
//! `y_k = Σ_{j ∈ chunk k} v_j φ_k(h_j) + noise`, with `φ_k = relu` for a few
//! "hard" chunks and the identity elsewhere. The host is
//! `Linear(H→H) → Kasmina(H, S) → Linear(H→S)` with no nonlinearity of its own,
//! so where the target bends, its hidden activation lacks the capacity to follow:
//! the best it can do there is the linear part of `relu` (`h/2`), and the rest
//! stays in the loss.
//!
//! **The controller** ([`Controller`]) reads each epoch's telemetry. The
//! per-seed `grad_norm` is the gradient pressure on a seed's chunk: where the
//! host fits its target, the loss gradient reaching the chunk dies away; where
//! it cannot, it stays. Once the host has fit what it can, the seeds whose
//! pressure stands well above the median are germinated with an MLP blueprint
//! (`t_j = relu(x_j w_j) s`, started at `w = 1, s = 1`, a relu unit), and driven
//! through TRAINING, GRAFTING (their strategy's alpha ramp, advanced by
//! `end_epoch`), STABILIZATION, EVALUATING, FINE_TUNING to FOSSILIZED. A seed
//! whose loss at the end of EVALUATING is worse than when its grafting began is
//! culled. The host's linears train by SGD; the seeds' blueprint parameters
//! train by SGD on the gradients the layer's own backward returns. In TRAINING
//! a seed's forward is still the identity, so the layer gives its blueprint no
//! gradient (SPEC 7): the demo uses that stage to set the blueprint's starting
//! parameters, and learning begins with GRAFTING's blend.
//!
//! The same run with germination switched off gives the baseline the final
//! loss is compared with. Everything is seeded: the same options give the same
//! numbers on the same backend.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use kasmina_core::{
    Backend, BlueprintType, DType, EpochSignals, GraftingStrategy, HostData, HostDataMut, KasminaLayer, LayerConfig,
    LayerState, LifecycleState, TelemetryReport, TransitionEvent,
};

use crate::error::{Error, Result};

/// When the controller acts, and how it judges.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ControllerConfig {
    /// Epochs the host trains alone before any germination.
    pub warmup_epochs: u32,
    /// A dormant seed is germinated when its gradient pressure is at least this
    /// multiple of the median pressure over all seeds.
    pub pressure_ratio: f32,
    /// At most this many seeds between GERMINATED and FINE_TUNING at once.
    pub max_active: usize,
    /// Epochs in TRAINING before GRAFTING.
    pub training_epochs: u16,
    /// Epochs in EVALUATING before the verdict.
    pub evaluating_epochs: u16,
    /// Epochs in FINE_TUNING before FOSSILIZED.
    pub fine_tuning_epochs: u16,
    /// A seed is culled when the loss at the end of EVALUATING exceeds the loss
    /// when its grafting began by more than this fraction.
    pub cull_tolerance: f32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            warmup_epochs: 3,
            pressure_ratio: 2.0,
            max_active: 4,
            training_epochs: 1,
            evaluating_epochs: 2,
            fine_tuning_epochs: 2,
            cull_tolerance: 0.02,
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
    /// Held-out samples for the final loss.
    pub test_samples: usize,
    /// Minibatch rows.
    pub batch: usize,
    /// H: the width of the hidden activation the layer watches.
    pub hidden: usize,
    /// S: the number of seeds (and of outputs: output `k` reads chunk `k`).
    pub seeds: usize,
    /// The chunks where the target bends (relu); the host is linear everywhere.
    pub hard_chunks: Vec<usize>,
    /// Standard deviation of the target noise.
    pub noise: f32,
    /// SGD learning rate (host linears and blueprints).
    pub lr: f32,
    /// Epochs of a GRAFTING ramp (FIXED_RAMP: alpha += 1 / ramp_epochs).
    pub ramp_epochs: u32,
    /// Epochs of STABILIZATION before the automatic move to EVALUATING.
    pub stabilization_epochs: u16,
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
            epochs: 30,
            samples: 4096,
            test_samples: 1024,
            batch: 128,
            hidden: 64,
            seeds: 8,
            hard_chunks: vec![1, 4, 6],
            noise: 0.02,
            lr: 0.1,
            ramp_epochs: 6,
            stabilization_epochs: 2,
            rng_seed: 7,
            germination: true,
            controller: ControllerConfig::default(),
        }
    }
}

impl DemoConfig {
    /// A smaller run for tests and a first look: fewer samples, enough epochs to
    /// reach FOSSILIZED.
    pub fn quick() -> Self {
        Self { epochs: 22, samples: 1024, test_samples: 512, ..Self::default() }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.seeds == 0 || self.hidden == 0 || !self.hidden.is_multiple_of(self.seeds) {
            return bad(format!("hidden ({}) must be a positive multiple of seeds ({})", self.hidden, self.seeds));
        }
        if self.batch == 0 || self.samples < self.batch || self.test_samples == 0 {
            return bad(format!("need samples ({}) >= batch ({}) > 0 and test samples > 0", self.samples, self.batch));
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
    /// Why, in words.
    pub reason: String,
}

/// The demo's controller: reads a telemetry report and the epoch's loss,
/// decides germinations and transitions. Pure logic over the state; the
/// caller applies the decisions to the layer.
#[derive(Debug, Clone)]
pub struct Controller {
    cfg: ControllerConfig,
    loss_at_graft: Vec<Option<f32>>,
    culled: Vec<bool>,
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

impl Controller {
    /// A controller for `num_seeds` seeds.
    pub fn new(cfg: ControllerConfig, num_seeds: usize) -> Self {
        Self { cfg, loss_at_graft: vec![None; num_seeds], culled: vec![false; num_seeds] }
    }

    /// Decisions after `end_epoch`: `state` is the layer's state after the
    /// automatic transitions, `report` the telemetry of the epoch just ended,
    /// `loss` that epoch's training loss, `germinate` whether new seeds may start.
    pub fn decide(
        &mut self,
        state: &LayerState,
        report: &TelemetryReport,
        loss: f32,
        germinate: bool,
    ) -> Vec<Decision> {
        use LifecycleState::*;
        let s = state.num_seeds();
        let mut out = Vec::new();
        let mut active = 0;
        for i in 0..s {
            let eis = state.seeds.epochs_in_state[i];
            let d = |to, reason: String| Decision { seed: i, to, reason };
            match state.seeds.lifecycle[i] {
                Germinated => {
                    active += 1;
                    out.push(d(Training, "blueprint ready: relu unit (w = 1, s = 1)".into()));
                }
                Training => {
                    active += 1;
                    if eis >= self.cfg.training_epochs {
                        self.loss_at_graft[i] = Some(loss);
                        out.push(d(Grafting, format!("start the alpha ramp at loss {loss:.5}")));
                    }
                }
                Grafting | Stabilization => active += 1,
                Evaluating => {
                    active += 1;
                    if eis >= self.cfg.evaluating_epochs {
                        let before = self.loss_at_graft[i].unwrap_or(f32::INFINITY);
                        // A NaN loss counts as worse.
                        let kept = loss <= before * (1.0 + self.cfg.cull_tolerance);
                        if !kept {
                            self.culled[i] = true;
                            out.push(d(Culled, format!("loss {loss:.5} is worse than {before:.5} before grafting")));
                        } else {
                            out.push(d(FineTuning, format!("loss {loss:.5} vs {before:.5} before grafting")));
                        }
                    }
                }
                FineTuning => {
                    active += 1;
                    if eis >= self.cfg.fine_tuning_epochs {
                        out.push(d(Fossilized, "fine-tuning done".into()));
                    }
                }
                _ => {}
            }
        }
        if germinate && report.epoch + 1 >= self.cfg.warmup_epochs && active < self.cfg.max_active {
            let p = pressure(report);
            let med = median(&p);
            let mut candidates: Vec<usize> = (0..s)
                .filter(|&i| state.seeds.lifecycle[i] == Dormant && !self.culled[i])
                .filter(|&i| p[i].is_finite() && p[i] > 0.0 && p[i] >= self.cfg.pressure_ratio * med)
                .collect();
            candidates.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
            for i in candidates.into_iter().take(self.cfg.max_active - active) {
                let ratio = if med > 0.0 { p[i] / med } else { f32::INFINITY };
                out.push(Decision {
                    seed: i,
                    to: Germinated,
                    reason: format!("gradient pressure {:.3e} is {ratio:.1}x the median", p[i]),
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
    /// Every seed's state after the epoch and the controller's decisions.
    pub states: Vec<LifecycleState>,
    /// Every seed's alpha at the same moment.
    pub alpha: Vec<f32>,
    /// Every seed's gradient pressure this epoch.
    pub pressure: Vec<f32>,
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
    /// Loss on the held-out samples at the end.
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

/// The data set and the host's starting first layer (the target is built on it).
struct Task {
    x: Vec<f32>,
    y: Vec<f32>,
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
                    acc += v[j] * if hard[k] { z.max(0.0) } else { z };
                }
                y[r * cfg.seeds + k] = acc + cfg.noise * normal(rng);
            }
        }
        (x, y)
    };
    let (x, y) = generate(cfg.samples, &mut rng);
    let (x_test, y_test) = generate(cfg.test_samples, &mut rng);
    Task { x, y, x_test, y_test, w1 }
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

/// The whole network: two host linears around the layer.
struct Net<B: Backend> {
    l1: Linear,
    layer: KasminaLayer<B>,
    l2: Linear,
}

impl<B: Backend> Net<B> {
    /// The loss `0.5 * mean_rows ‖out - y‖²` over a data set, in batches of `rows`.
    fn eval_loss(&mut self, x: &[f32], y: &[f32], bufs: &mut Buffers<B>, rows: usize) -> Result<f32> {
        let (h, s) = (self.l1.outputs, self.l2.outputs);
        let n = x.len() / self.l1.inputs;
        let (mut hid, mut act, mut out) = (vec![0.0; rows * h], vec![0.0; rows * h], vec![0.0; rows * s]);
        let mut total = 0.0f64;
        let mut start = 0;
        while start + rows <= n {
            self.l1.forward(&x[start * self.l1.inputs..(start + rows) * self.l1.inputs], rows, &mut hid);
            self.layer.backend().write(&mut bufs.x, HostData::F32(&hid))?;
            self.layer.forward(&bufs.x, &mut bufs.y)?;
            self.layer.backend().read(&bufs.y, HostDataMut::F32(&mut act))?;
            self.l2.forward(&act, rows, &mut out);
            let yb = &y[start * s..(start + rows) * s];
            total += out.iter().zip(yb).map(|(o, t)| ((o - t) as f64).powi(2)).sum::<f64>();
            start += rows;
        }
        Ok((0.5 * total / start.max(1) as f64) as f32)
    }
}

/// Runs the demo on `backend`. `on_epoch` sees each epoch's record as it ends
/// (for progress and printing). The same config gives the same numbers on the
/// same backend and device.
pub fn run<B: Backend>(backend: B, cfg: &DemoConfig, mut on_epoch: impl FnMut(&EpochRecord)) -> Result<DemoRun> {
    cfg.validate()?;
    let h = cfg.hidden;
    let s = cfg.seeds;
    let c = h / s;
    let task = make_task(cfg);
    let device = backend.info().id();
    let layer = KasminaLayer::new(backend, cfg.layer_config()?)?;
    let mut net =
        Net { l1: task.w1.clone(), layer, l2: Linear { inputs: h, outputs: s, w: vec![0.0; s * h], b: vec![0.0; s] } };
    let mut controller = Controller::new(cfg.controller.clone(), s);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed ^ 0x5eed);
    let rows = cfg.batch;
    let mut bufs = Buffers::new(net.layer.backend(), rows, h)?;
    let (mut xb, mut yb) = (vec![0.0f32; rows * h], vec![0.0f32; rows * s]);
    let (mut hid, mut act, mut out) = (vec![0.0; rows * h], vec![0.0; rows * h], vec![0.0; rows * s]);
    let (mut g_out, mut g_act, mut g_hid) = (vec![0.0; rows * s], vec![0.0; rows * h], vec![0.0; rows * h]);
    let mut order: Vec<usize> = (0..cfg.samples).collect();
    let mut history = Vec::new();
    let mut events = Vec::new();
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
            net.layer.backend().write(&mut bufs.x, HostData::F32(&hid))?;
            net.layer.forward(&bufs.x, &mut bufs.y)?;
            net.layer.backend().read(&bufs.y, HostDataMut::F32(&mut act))?;
            net.l2.forward(&act, rows, &mut out);
            let mut l = 0.0f64;
            for ((g, o), t) in g_out.iter_mut().zip(&out).zip(&yb) {
                let d = o - t;
                l += (d as f64) * (d as f64);
                *g = d / rows as f32;
            }
            loss_sum += 0.5 * l / rows as f64;
            batches += 1;
            // Backward: host linear, the layer's own backward, host linear.
            net.l2.backward_step(&act, &g_out, rows, Some(&mut g_act), cfg.lr);
            net.layer.backend().write(&mut bufs.g, HostData::F32(&g_act))?;
            let grads = net.layer.backward(&bufs.x, &bufs.g, &mut bufs.dx)?;
            net.layer.backend().read(&bufs.dx, HostDataMut::F32(&mut g_hid))?;
            net.l1.backward_step(&xb, &g_hid, rows, None, cfg.lr);
            // The blueprints of seeds that blend or replace their chunk learn from
            // the layer's parameter gradients (identity seeds have zero gradients).
            let st = net.layer.state();
            if st.seeds.lifecycle.iter().any(|l| l.forward_mode() != kasmina_core::ForwardMode::Identity) {
                let w: Vec<f32> = st.params.weights.iter().zip(&grads.dweights).map(|(w, d)| w - cfg.lr * d).collect();
                let sc: Vec<f32> = st.params.scales.iter().zip(&grads.dscales).map(|(v, d)| v - cfg.lr * d).collect();
                net.layer.set_params(&w, &sc)?;
            }
        }
        let loss = (loss_sum / batches.max(1) as f64) as f32;
        let report = net.layer.end_epoch(&EpochSignals::none())?;
        let decisions = controller.decide(net.layer.state(), &report, loss, cfg.germination);
        for d in &decisions {
            match d.to {
                LifecycleState::Germinated => {
                    net.layer.request_germination(d.seed, 1, BlueprintType::Mlp, GraftingStrategy::FixedRamp)?
                }
                LifecycleState::Training => {
                    net.layer.transition(d.seed, LifecycleState::Training)?;
                    net.layer.set_seed_params(d.seed, &vec![1.0; c], 1.0)?;
                }
                to => net.layer.transition(d.seed, to)?,
            }
        }
        let st = net.layer.state();
        let record = EpochRecord {
            epoch,
            loss,
            states: st.seeds.lifecycle.clone(),
            alpha: st.seeds.alpha.clone(),
            pressure: pressure(&report),
            decisions,
        };
        on_epoch(&record);
        history.push(record);
        events.extend(net.layer.drain_events());
    }
    let test_rows = rows.min(cfg.test_samples);
    let mut test_bufs = if test_rows == rows { bufs } else { Buffers::new(net.layer.backend(), test_rows, h)? };
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

    fn report_with_grad(state: &LayerState, grad_sq: &[f64]) -> TelemetryReport {
        let mut acc = Accumulators::empty(state.num_seeds());
        acc.grad_sq.copy_from_slice(grad_sq);
        TelemetryReport::build(state, &acc).unwrap()
    }

    #[test]
    fn controller_germinates_seeds_well_above_the_median_pressure() {
        let st = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        let mut c = Controller::new(ControllerConfig { warmup_epochs: 0, ..Default::default() }, 4);
        let r = report_with_grad(&st, &[1.0, 100.0, 1.2, 0.9]);
        let d = c.decide(&st, &r, 1.0, true);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].seed, d[0].to), (1, LifecycleState::Germinated));
        assert!(c.decide(&st, &r, 1.0, false).is_empty());
    }

    #[test]
    fn controller_culls_a_seed_that_made_the_loss_worse() {
        let mut st = LayerState::new(LayerConfig::new(16, 4).unwrap()).unwrap();
        let mut c = Controller::new(ControllerConfig::default(), 4);
        st.germinate(2, 1, BlueprintType::Mlp, GraftingStrategy::FixedRamp).unwrap();
        let r = report_with_grad(&st, &[0.0; 4]);
        use kasmina_core::lifecycle::TransitionReason::Requested;
        st.transition(2, LifecycleState::Training, Requested).unwrap();
        st.seeds.epochs_in_state[2] = 1;
        let d = c.decide(&st, &r, 0.5, false);
        assert_eq!(d[0].to, LifecycleState::Grafting);
        for to in [LifecycleState::Grafting, LifecycleState::Stabilization, LifecycleState::Evaluating] {
            st.transition(2, to, Requested).unwrap();
        }
        st.seeds.epochs_in_state[2] = 2;
        let mut good = c.clone();
        assert_eq!(good.decide(&st, &r, 0.4, false)[0].to, LifecycleState::FineTuning);
        assert_eq!(c.decide(&st, &r, 0.6, false)[0].to, LifecycleState::Culled);
    }
}
