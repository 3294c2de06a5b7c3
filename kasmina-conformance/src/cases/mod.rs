//! The case groups, and what they share: the context that turns each case
//! into a row (catching errors and panics), the calls through
//! [`KasminaLayer`] with poisoned outputs, state builders, and the
//! comparisons of forward, telemetry and backward against the reference.

mod backward;
mod bad_input;
mod checksum;
mod determinism;
mod forward_modes;
mod poison;
mod randomized;
mod shapes;
mod strict_mode;
mod telemetry;

use std::panic::{AssertUnwindSafe, catch_unwind};

use kasmina_core::backend::HostTensorData;
use kasmina_core::{
    Backend, BlueprintType, DType, Error, KasminaLayer, LayerConfig, LayerState, LifecycleState, Moments, ParamGrads,
};

use crate::check::{Check, reduction_tolerance, tolerance};
use crate::data::{self, Gen};
use crate::reference::{self, BackwardRef, ForwardRef, SeedMode};
use crate::toolkit::{download, upload};
use crate::{CaseResult, Size};

/// Runs one group by name, keeping the rows whose name matches `filter`.
pub(crate) fn run_group<B: Backend>(
    backend: &B,
    size: Size,
    group: &str,
    filter: Option<&str>,
    progress: &mut dyn FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let device = match catch_unwind(AssertUnwindSafe(|| backend.info())) {
        Ok(info) => format!("{} {}", info.id(), info.name),
        Err(p) => format!("unknown device (info() panicked: {})", panic_message(p)),
    };
    let Some(group) = crate::GROUPS.iter().copied().find(|g| *g == group) else {
        let mut chk = Check::new(group.to_string(), None);
        chk.fail("group", format!("unknown case group '{group}' (one of {})", crate::GROUPS.join(", ")));
        let r = chk.finish(&device);
        progress(&r);
        return vec![r];
    };
    let mut ctx = Ctx { backend, size, device, group, filter, progress, results: Vec::new() };
    // `group` is one of GROUPS (checked above), so the fallback never runs; each group's
    // `run` is found as `<group>::run` here, in `cases`.
    crate::__groups!(dispatch group, &mut ctx, ());
    ctx.results
}

/// What a group runs in.
pub(crate) struct Ctx<'a, B: Backend> {
    pub backend: &'a B,
    pub size: Size,
    pub device: String,
    pub group: &'static str,
    filter: Option<&'a str>,
    progress: &'a mut dyn FnMut(&CaseResult),
    pub results: Vec<CaseResult>,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl<B: Backend> Ctx<'_, B> {
    /// The full name of a case of this group.
    pub fn name(&self, case: &str) -> String {
        format!("{}/{}", self.group, case)
    }

    /// Whether rows named `case` (in `dtype`) pass the filter.
    fn wanted(&self, case: &str, dtype: Option<DType>) -> bool {
        match self.filter {
            None => true,
            Some(f) => {
                let full = format!("{}/{}", case, dtype.map_or("", |d| d.name()));
                full.contains(f)
            }
        }
    }

    /// Records a finished check as a row.
    pub fn push(&mut self, chk: Check) {
        if self.wanted(&chk.case, chk.dtype) {
            let r = chk.finish(&self.device);
            (self.progress)(&r);
            self.results.push(r);
        }
    }

    /// Runs one case; an error or a panic inside becomes a failure of the row.
    pub fn case(&mut self, case: &str, dtype: Option<DType>, f: impl FnOnce(&mut Check) -> Result<(), Error>) {
        let mut chk = Check::new(self.name(case), dtype);
        if !self.wanted(&chk.case, dtype) {
            return;
        }
        match catch_unwind(AssertUnwindSafe(|| f(&mut chk))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => chk.fail("error", e.to_string()),
            Err(p) => chk.fail("panic", panic_message(p)),
        }
        self.push(chk);
    }

    /// Runs a case that produces several rows (one per seed...); an error or a
    /// panic becomes one failed row named `case`.
    pub fn cases(&mut self, case: &str, dtype: Option<DType>, f: impl FnOnce(&mut Vec<Check>) -> Result<(), Error>) {
        let mut checks = Vec::new();
        let out = catch_unwind(AssertUnwindSafe(|| f(&mut checks)));
        let err = match out {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(("error", e.to_string())),
            Err(p) => Some(("panic", panic_message(p))),
        };
        for c in checks {
            self.push(c);
        }
        if let Some((what, msg)) = err {
            let mut chk = Check::new(self.name(case), dtype);
            chk.fail(what, msg);
            self.push(chk);
        }
    }

    /// The dtypes the backend runs; a skipped row for each other one.
    pub fn dtypes(&mut self, case: &str) -> Vec<DType> {
        let mut out = Vec::new();
        for d in DType::ALL {
            if self.backend.supports(d) {
                out.push(d);
            } else {
                let name = self.name(case);
                if self.wanted(&name, Some(d)) {
                    let r = CaseResult {
                        device: self.device.clone(),
                        case: name,
                        dtype: Some(d),
                        worst_error: 0.0,
                        tolerance: 0.0,
                        passed: true,
                        detail: format!("skipped: the backend does not support {d}"),
                    };
                    (self.progress)(&r);
                    self.results.push(r);
                }
            }
        }
        out
    }

    /// Whether this is a Full-size run.
    pub fn full(&self) -> bool {
        self.size == Size::Full
    }
}

// ---------------------------------------------------------------- driving

/// A layer on the borrowed backend.
pub(crate) type Layer<'a, B> = KasminaLayer<&'a B>;

/// A layer holding `state` (validated and uploaded by the core).
pub(crate) fn layer<'a, B: Backend>(backend: &'a B, state: &LayerState) -> Result<Layer<'a, B>, Error> {
    KasminaLayer::from_state(backend, state.clone())
}

/// `y = layer(x)` through device tensors, `y` filled with poison first.
pub(crate) fn run_forward<B: Backend>(
    layer: &mut Layer<'_, B>,
    x: &HostTensorData,
    rows: usize,
) -> Result<HostTensorData, Error> {
    let h = layer.config().hidden_dim;
    let dtype = data::dtype(x);
    let xt = upload(layer.backend(), x, rows, h)?;
    let mut yt = upload(layer.backend(), &data::poison(dtype, rows * h), rows, h)?;
    layer.forward(&xt, &mut yt)?;
    download(layer.backend(), &yt)
}

/// `dx` and the parameter gradients through device tensors, `dx` filled with poison first.
pub(crate) fn run_backward<B: Backend>(
    layer: &mut Layer<'_, B>,
    x: &HostTensorData,
    g: &HostTensorData,
    rows: usize,
) -> Result<(HostTensorData, ParamGrads), Error> {
    let h = layer.config().hidden_dim;
    let dtype = data::dtype(x);
    let xt = upload(layer.backend(), x, rows, h)?;
    let gt = upload(layer.backend(), g, rows, h)?;
    let mut dxt = upload(layer.backend(), &data::poison(dtype, rows * h), rows, h)?;
    let grads = layer.backward(&xt, &gt, &mut dxt)?;
    Ok((download(layer.backend(), &dxt)?, grads))
}

// ---------------------------------------------------------------- states

/// What one seed of a built state is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeedSpec {
    pub lifecycle: LifecycleState,
    pub kind: BlueprintType,
    pub alpha: f32,
    /// `(clamp_mean, clamp_std)`, unset when `None`.
    pub clamp: Option<(f32, f32)>,
}

impl SeedSpec {
    pub fn new(lifecycle: LifecycleState, kind: BlueprintType, alpha: f32) -> Self {
        Self { lifecycle, kind, alpha, clamp: None }
    }
}

/// A state of `specs.len()` seeds of `c` columns with random weights in
/// [-1.5, 1.5) and scales of either sign with magnitude in [0.5, 1.5).
pub(crate) fn build_state(config: LayerConfig, specs: &[SeedSpec], rng: &mut Gen) -> Result<LayerState, Error> {
    let mut st = LayerState::new(config)?;
    let c = config.chunk_size();
    for (i, sp) in specs.iter().enumerate() {
        st.seeds.lifecycle[i] = sp.lifecycle;
        st.seeds.blueprint_type[i] = sp.kind;
        st.seeds.blueprint_id[i] = if sp.lifecycle == LifecycleState::Dormant { 0 } else { 1 + (i % 1000) as u16 };
        st.seeds.alpha[i] = sp.alpha;
        st.seeds.epochs_in_state[i] = (i % 7) as u16;
        if let Some((m, s)) = sp.clamp {
            st.seeds.clamp_mean[i] = m;
            st.seeds.clamp_std[i] = s;
        }
        let w = rng.f32s(c, -1.5, 1.5);
        st.params.seed_weights_mut(i).copy_from_slice(&w);
        let s = rng.uniform(0.5, 1.5) as f32;
        st.params.scales[i] = if rng.chance(0.25) { -s } else { s };
    }
    st.validate()?;
    Ok(st)
}

/// Every lifecycle state, and the alpha the suite gives it.
pub(crate) fn state_alpha(l: LifecycleState) -> f32 {
    match l {
        LifecycleState::Grafting => 0.25,
        LifecycleState::Stabilization | LifecycleState::Fossilized => 1.0,
        LifecycleState::Evaluating => 0.5,
        LifecycleState::FineTuning => 0.75,
        // Identity seeds ignore alpha, whatever it is.
        LifecycleState::Culled | LifecycleState::RolledBack => 0.6,
        _ => 0.0,
    }
}

/// One seed per (lifecycle state, blueprint type): 44 seeds.
pub(crate) fn all_modes() -> Vec<SeedSpec> {
    let mut specs = Vec::new();
    for l in LifecycleState::ALL {
        for k in BlueprintType::ALL {
            specs.push(SeedSpec::new(*l, *k, state_alpha(*l)));
        }
    }
    specs
}

// ---------------------------------------------------------------- comparisons

/// Where element `i` of a `[rows, H]` tensor is, for messages.
pub(crate) fn locator(h: usize, c: usize) -> impl Fn(usize) -> String {
    move |i| format!("row {} col {} (seed {})", i / h, i % h, (i % h) / c)
}

/// The elements of `seeds` in a `[rows, H]` tensor: `pred(i)`.
fn in_seeds(h: usize, c: usize, seeds: &[bool]) -> impl Fn(usize) -> bool + '_ {
    move |i| seeds[(i % h) / c]
}

/// Compares a backend output tensor (`y` or `dx`) with the reference on the
/// seeds `sel` selects: identity seeds bit for bit against `identity_of`
/// (the input for `y`, `g` for `dx`), the others by relative L2 in `dtype`'s
/// tolerance. `skip` removes elements from the L2 comparison.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_tensor(
    chk: &mut Check,
    what: &str,
    state: &LayerState,
    sel: &[bool],
    out: &HostTensorData,
    identity_of: &HostTensorData,
    reference: &[f64],
    skip: &dyn Fn(usize) -> bool,
) {
    let h = state.config.hidden_dim;
    let c = state.config.chunk_size();
    let dtype = data::dtype(out);
    let n = reference.len();
    if data::len(out) != n {
        chk.fail(format!("{what} length"), format!("{} values, want {n}", data::len(out)));
        return;
    }
    let identity: Vec<bool> =
        (0..state.num_seeds()).map(|s| sel[s] && reference::seed_mode(state, s) == SeedMode::Identity).collect();
    let other: Vec<bool> = (0..state.num_seeds()).map(|s| sel[s] && !identity[s]).collect();
    let loc = locator(h, c);
    let is_id = in_seeds(h, c, &identity);
    if identity.iter().any(|v| *v) && n > 0 {
        let bad: Vec<usize> =
            (0..n).filter(|i| is_id(*i) && data::bits(out, *i) != data::bits(identity_of, *i)).collect();
        chk.exact(format!("{what} identity bits"), bad.len(), || {
            let i = bad[0];
            format!("{}: got {:#x}, want {:#x}", loc(i), data::bits(out, i), data::bits(identity_of, i))
        });
    }
    let poison = data::poison_bits(dtype);
    let unwritten = (0..n).filter(|i| sel[(i % h) / c] && data::bits(out, *i) == poison).count();
    if unwritten > 0 {
        let first = (0..n).find(|i| sel[(i % h) / c] && data::bits(out, *i) == poison).unwrap_or(0);
        chk.exact(format!("{what} written"), unwritten, || format!("{} still holds the poison", loc(first)));
    }
    if other.iter().any(|v| *v) {
        let o = data::to_f64(out);
        let is_other = in_seeds(h, c, &other);
        chk.l2(what, &o, reference, Some(dtype), tolerance(dtype), |i| is_other(i) && !skip(i), &loc);
    }
}

/// Compares the backend's moments with the reference's for the seeds `sel` selects.
pub(crate) fn check_moments(chk: &mut Check, what: &str, got: &[Moments], want: &[Moments], sel: &[bool]) {
    if got.len() != want.len() {
        chk.fail(format!("{what} seeds"), format!("{} moments, want {}", got.len(), want.len()));
        return;
    }
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        if !sel[s] {
            continue;
        }
        compare_moments(chk, &format!("{what} seed {s}"), g, w);
    }
}

/// One seed's moments: counts exact, min/max exact in f32, mean within the
/// reduction tolerance of `|mean|` plus the data's spread (the larger of its std and its range:
/// an implementation may shift its sums by any element of the data, and the shifted terms are
/// bounded by the range), variance to relative 1e-4 compared as f32 (an f32 overflow to +Inf
/// on both sides matches).
pub(crate) fn compare_moments(chk: &mut Check, what: &str, g: &Moments, w: &Moments) {
    chk.equal(format!("{what} count/dead/nonfinite"), (g.count, g.dead, g.nonfinite), (w.count, w.dead, w.nonfinite));
    chk.equal(format!("{what} min/max"), (g.min as f32, g.max as f32), (w.min as f32, w.max as f32));
    let range = w.max - w.min;
    let spread = if range.is_finite() { w.variance().sqrt().max(range) } else { w.variance().sqrt() };
    let n = w.count as usize;
    chk.close(format!("{what} mean"), g.mean, w.mean, reduction_tolerance(n), reduction_tolerance(n) * spread);
    let (gv, wv) = (g.variance() as f32 as f64, w.variance() as f32 as f64);
    // Below the f32 resolution of the mean a variance carries no information.
    let floor = (f32::EPSILON as f64 * w.mean.abs()).powi(2);
    chk.close(format!("{what} variance"), gv, wv, 1e-4, floor);
}

/// Per-seed selection of every seed.
pub(crate) fn all_seeds(state: &LayerState) -> Vec<bool> {
    vec![true; state.num_seeds()]
}

/// Compares a backend backward (dx and parameter gradients) with the reference
/// on the seeds `sel` selects.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_backward(
    chk: &mut Check,
    state: &LayerState,
    sel: &[bool],
    rows: usize,
    x: &[f64],
    g: &HostTensorData,
    dx: &HostTensorData,
    grads: &ParamGrads,
    bref: &BackwardRef,
) {
    let s_n = state.num_seeds();
    let c = state.config.chunk_size();
    check_tensor(chk, "dx", state, sel, dx, g, &bref.dx, &|_| false);
    if grads.dweights.len() != s_n * c || grads.dscales.len() != s_n || grads.grad_norm.len() != s_n {
        chk.fail(
            "parameter gradient lengths",
            format!(
                "dweights {}, dscales {}, grad_norm {}; want {}, {s_n}, {s_n}",
                grads.dweights.len(),
                grads.dscales.len(),
                grads.grad_norm.len(),
                s_n * c
            ),
        );
        return;
    }
    let identity = |s: usize| reference::seed_mode(state, s) == SeedMode::Identity;
    let nonzero_identity: Vec<usize> = (0..s_n)
        .filter(|s| sel[*s] && identity(*s))
        .filter(|s| grads.dscales[*s] != 0.0 || grads.dweights[s * c..(s + 1) * c].iter().any(|v| *v != 0.0))
        .collect();
    if (0..s_n).any(|s| sel[s] && identity(s)) {
        chk.exact("identity seeds have zero parameter gradients", nonzero_identity.len(), || {
            format!("seed {}", nonzero_identity[0])
        });
    }
    // Parameter-gradient sums of a seed whose input chunk held a NaN or an infinity are not
    // specified (SPEC 7 leaves a non-finite input times a zero mask open): dx and grad_norm are
    // still compared for every seed, the sums only for seeds with finite inputs.
    let x_finite = finite_chunks(state, x, rows);
    let other: Vec<bool> = (0..s_n).map(|s| sel[s] && !identity(s) && x_finite[s]).collect();
    if other.iter().any(|v| *v) {
        let dw: Vec<f64> = grads.dweights.iter().map(|v| *v as f64).collect();
        let ds: Vec<f64> = grads.dscales.iter().map(|v| *v as f64).collect();
        let locw = |i: usize| format!("seed {} weight {}", i / c, i % c);
        chk.l2("dweights", &dw, &bref.dweights, None, reduction_tolerance(rows), |i| other[i / c], &locw);
        // Per seed, within the reduction tolerance of the sum of the magnitudes of its terms
        // (dscales sums g times the blueprint's output over every row; it can cancel to far
        // less than its terms, and an f32 sum's rounding follows the terms).
        let tol = reduction_tolerance(rows * c);
        for s in (0..s_n).filter(|s| other[*s]) {
            chk.close(format!("dscales seed {s}"), ds[s], bref.dscales[s], tol, tol * bref.dscales_abs[s]);
        }
    }
    for s in (0..s_n).filter(|s| sel[*s]) {
        chk.close(
            format!("grad_norm seed {s}"),
            grads.grad_norm[s] as f64,
            bref.grad_sq[s].sqrt(),
            reduction_tolerance(rows * c),
            0.0,
        );
    }
}

/// Per seed, whether every element of its input chunk, in every row, is finite.
pub(crate) fn finite_chunks(state: &LayerState, x: &[f64], rows: usize) -> Vec<bool> {
    let (h, c) = (state.config.hidden_dim, state.config.chunk_size());
    (0..state.num_seeds())
        .map(|s| (0..rows).all(|r| x[r * h + s * c..r * h + (s + 1) * c].iter().all(|v| v.is_finite())))
        .collect()
}

/// Sets `g` to 0 where the reference's unclamped value lies within relative
/// 1e-5 of a strict-mode bound. There f32 (backend) and f64 (reference) may
/// disagree on whether the element was clamped, which would change every
/// gradient the element feeds; with `g = 0` there the answer does not depend
/// on it, and the rest of the tensor is still compared in full. "Relative" is
/// to the larger of the bounds and the terms the value is computed from (the
/// row's chunk of `x` times the seed's largest `|w s|`), since f32 rounding
/// error follows the size of the terms, not of a result that cancelled.
/// Returns how many elements were zeroed.
pub(crate) fn zero_ambiguous(state: &LayerState, x: &[f64], fref: &ForwardRef, g: &mut HostTensorData) -> usize {
    let h = state.config.hidden_dim;
    let c = state.config.chunk_size();
    let rows = fref.unclamped.len().checked_div(h).unwrap_or(0);
    let mut n = 0;
    for seed in 0..state.num_seeds() {
        let Some((lo, hi)) = reference::bounds(state, seed) else { continue };
        if reference::seed_mode(state, seed) == SeedMode::Identity {
            continue;
        }
        let ws = state.params.seed_weights(seed).iter().fold(0.0f64, |m, w| m.max((*w as f64).abs()))
            * (state.params.scales[seed] as f64).abs();
        for row in 0..rows {
            let start = row * h + seed * c;
            let xmax = x[start..start + c].iter().filter(|v| v.is_finite()).fold(0.0f64, |m, v| m.max(v.abs()));
            let scale = lo.abs().max(hi.abs()).max(xmax * ws.max(1.0)).max(f64::MIN_POSITIVE);
            for i in start..start + c {
                let v = fref.unclamped[i];
                if (v - lo).abs() <= 1e-5 * scale || (v - hi).abs() <= 1e-5 * scale {
                    data::set_bits(g, i, 0);
                    n += 1;
                }
            }
        }
    }
    n
}

/// The whole contract on one state and input: forward output, the telemetry
/// of that call, backward output and gradients, `grad_sq` in the
/// accumulators, and the device checksum. `g` is used for backward when given.
pub(crate) fn full_check<B: Backend>(
    backend: &B,
    chk: &mut Check,
    state: &LayerState,
    x: &HostTensorData,
    g: Option<HostTensorData>,
    rows: usize,
) -> Result<(), Error> {
    let mut l = layer(backend, state)?;
    let sel = all_seeds(state);
    let x64 = data::to_f64(x);
    let y = run_forward(&mut l, x, rows)?;
    let fref = reference::forward(state, &x64, rows);
    check_tensor(chk, "y", state, &sel, &y, x, &fref.y, &|_| false);
    let acc = l.accumulators()?;
    check_moments(chk, "telemetry", &acc.moments, &fref.moments, &sel);
    if let Some(mut g) = g {
        zero_ambiguous(state, &x64, &fref, &mut g);
        let (dx, grads) = run_backward(&mut l, x, &g, rows)?;
        let bref = reference::backward(state, &x64, &data::to_f64(&g), rows);
        check_backward(chk, state, &sel, rows, &x64, &g, &dx, &grads, &bref);
        let acc = l.accumulators()?;
        for s in 0..state.num_seeds() {
            let c = state.config.chunk_size();
            chk.close(
                format!("grad_sq seed {s}"),
                acc.grad_sq[s],
                bref.grad_sq[s],
                2.0 * reduction_tolerance(rows * c),
                0.0,
            );
        }
    }
    chk.equal("device checksum", l.device_checksum()?, l.checksum());
    Ok(())
}
