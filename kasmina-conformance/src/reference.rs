//! The float64 reference of SPEC sections 4, 5 and 7, written for clarity: one
//! seed and one row at a time, straight from the formulas. It is the oracle of
//! every conformance case, so it favours being obviously right over being fast.
//!
//! Inputs are the values the backend sees, already rounded to the call's dtype
//! and widened to f64. Parameters are the state's f32 values widened to f64
//! ([`Params64`]); the `*_with` variants take them explicitly so tests can
//! perturb them for finite differences. Strict-mode bounds come from
//! [`kasmina_core::state::clamp_bounds`], the same f32 numbers every backend uses.

use kasmina_core::state::clamp_bounds;
use kasmina_core::{BlueprintType, ForwardMode, LayerState, Moments};

/// Blueprint parameters widened to f64 (`weights[S, C]`, `scales[S]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Params64 {
    /// `weights[i * C + j]` belongs to seed `i`.
    pub weights: Vec<f64>,
    /// One scale per seed.
    pub scales: Vec<f64>,
}

impl Params64 {
    /// The parameters of `state`, widened exactly.
    pub fn of(state: &LayerState) -> Self {
        Self {
            weights: state.params.weights.iter().map(|w| *w as f64).collect(),
            scales: state.params.scales.iter().map(|s| *s as f64).collect(),
        }
    }
}

/// What the reference forward produces for `[rows, H]` inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRef {
    /// The output `y[rows, H]`.
    pub y: Vec<f64>,
    /// Telemetry of each seed's input chunk over all rows (f64 Welford, SPEC 5.2).
    pub moments: Vec<Moments>,
    /// Whether strict mode clamped each element (its unclamped value lies outside the band).
    pub clamped: Vec<bool>,
    /// Each element before clamping (equal to `y` where nothing was clamped).
    pub unclamped: Vec<f64>,
}

/// What the reference backward produces (SPEC 7).
#[derive(Debug, Clone, PartialEq)]
pub struct BackwardRef {
    /// `dL/dx[rows, H]`.
    pub dx: Vec<f64>,
    /// `dL/dweights[S, C]`, summed over rows.
    pub dweights: Vec<f64>,
    /// `dL/dscales[S]`, summed over rows.
    pub dscales: Vec<f64>,
    /// The sum of the magnitudes of the terms each `dscales` entry adds up (the same formula on
    /// `|x|`, `|g|`, `|w|`, `|s|`): the scale of the rounding error an f32 sum of them carries,
    /// which cancellation can make far larger than the sum itself.
    pub dscales_abs: Vec<f64>,
    /// `Σ g²` over each seed's chunk in every row (every seed, whatever its state).
    pub grad_sq: Vec<f64>,
}

/// How one seed computes its chunk (SPEC 3, 5.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeedMode {
    /// `y = x`.
    Identity,
    /// `y = (1 - a) x + a t(x)` with `a = clamp(alpha, 0, 1)`.
    Blend(f64),
    /// `y = t(x)` (FOSSILIZED).
    Blueprint,
}

impl SeedMode {
    /// The blend factor `a` used by backward: 0 for identity, 1 for FOSSILIZED.
    pub fn alpha(self) -> f64 {
        match self {
            SeedMode::Identity => 0.0,
            SeedMode::Blend(a) => a,
            SeedMode::Blueprint => 1.0,
        }
    }
}

/// The mode of seed `seed` in `state`.
pub fn seed_mode(state: &LayerState, seed: usize) -> SeedMode {
    match state.seeds.lifecycle[seed].forward_mode() {
        ForwardMode::Identity => SeedMode::Identity,
        ForwardMode::Blend => SeedMode::Blend((state.seeds.alpha[seed] as f64).clamp(0.0, 1.0)),
        ForwardMode::Blueprint => SeedMode::Blueprint,
    }
}

/// The strict-mode band of seed `seed` in f64 (the f32 bounds widened), if any.
pub fn bounds(state: &LayerState, seed: usize) -> Option<(f64, f64)> {
    clamp_bounds(state.config.stability, state.seeds.clamp_mean[seed], state.seeds.clamp_std[seed])
        .map(|(lo, hi)| (lo as f64, hi as f64))
}

/// `softmax(w)` with the maximum subtracted first.
pub fn softmax(w: &[f64]) -> Vec<f64> {
    let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = w.iter().map(|v| (v - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// `relu`, propagating NaN (`relu(NaN)` is not specified by the SPEC; the
/// suite never compares elements where it matters).
pub fn relu(v: f64) -> f64 {
    if v.is_nan() || v > 0.0 { v } else { 0.0 }
}

/// `w_k` of a CONV blueprint: only `w_0..w_2` exist, and only where `k < C`.
fn conv_w(w: &[f64], k: usize) -> f64 {
    if k < 3 { w.get(k).copied().unwrap_or(0.0) } else { 0.0 }
}

/// `x_{j-k}` with `x_{<0} = 0` (causal inside the chunk).
fn x_back(x: &[f64], j: usize, k: usize) -> f64 {
    if j >= k { x[j - k] } else { 0.0 }
}

/// `w_0 x_j + w_1 x_{j-1} + w_2 x_{j-2}`.
fn conv_sum(w: &[f64], x: &[f64], j: usize) -> f64 {
    (0..3).map(|k| conv_w(w, k) * x_back(x, j, k)).sum()
}

/// `t(x)` of SPEC 4 for one row of one seed: `x` is the chunk, `w` its `C` weights, `s` its scale.
pub fn blueprint(kind: BlueprintType, w: &[f64], s: f64, x: &[f64]) -> Vec<f64> {
    let c = x.len();
    match kind {
        BlueprintType::Residual => (0..c).map(|j| x[j] + w[j] * s).collect(),
        BlueprintType::Attention => {
            let p = softmax(w);
            (0..c).map(|j| x[j] * p[j]).collect()
        }
        BlueprintType::Mlp => (0..c).map(|j| relu(x[j] * w[j]) * s).collect(),
        BlueprintType::Conv => (0..c).map(|j| s * conv_sum(w, x, j)).collect(),
    }
}

/// The reference forward of SPEC 5 on `x[rows, H]` with the state's own parameters.
pub fn forward(state: &LayerState, x: &[f64], rows: usize) -> ForwardRef {
    forward_with(state, &Params64::of(state), x, rows)
}

/// The reference forward with explicit f64 parameters.
///
/// # Panics
/// If `x` does not hold `rows * H` values (a bug in the caller, never data).
pub fn forward_with(state: &LayerState, params: &Params64, x: &[f64], rows: usize) -> ForwardRef {
    let h = state.config.hidden_dim;
    let c = state.config.chunk_size();
    let dead_eps = state.config.dead_eps as f64;
    assert_eq!(x.len(), rows * h, "reference forward: x must hold rows * H values");
    let mut out = ForwardRef {
        y: x.to_vec(),
        moments: vec![Moments::empty(); state.num_seeds()],
        clamped: vec![false; x.len()],
        unclamped: x.to_vec(),
    };
    for seed in 0..state.num_seeds() {
        let mode = seed_mode(state, seed);
        let band = bounds(state, seed);
        let kind = state.seeds.blueprint_type[seed];
        let w = &params.weights[seed * c..(seed + 1) * c];
        let s = params.scales[seed];
        for row in 0..rows {
            let start = row * h + seed * c;
            let xs = &x[start..start + c];
            for v in xs {
                out.moments[seed].push(*v, dead_eps);
            }
            let values: Vec<f64> = match mode {
                SeedMode::Identity => continue,
                SeedMode::Blend(a) => {
                    let t = blueprint(kind, w, s, xs);
                    xs.iter().zip(&t).map(|(x, t)| (1.0 - a) * x + a * t).collect()
                }
                SeedMode::Blueprint => blueprint(kind, w, s, xs),
            };
            for (j, v) in values.into_iter().enumerate() {
                let i = start + j;
                out.unclamped[i] = v;
                out.y[i] = v;
                if let Some((lo, hi)) = band {
                    if v < lo {
                        out.y[i] = lo;
                        out.clamped[i] = true;
                    } else if v > hi {
                        out.y[i] = hi;
                        out.clamped[i] = true;
                    }
                }
            }
        }
    }
    out
}

/// The reference backward of SPEC 7 with the state's own parameters.
pub fn backward(state: &LayerState, x: &[f64], g: &[f64], rows: usize) -> BackwardRef {
    backward_with(state, &Params64::of(state), x, g, rows)
}

/// The reference backward with explicit f64 parameters. Elements strict mode
/// clamped in forward pass no gradient (their `g` counts as 0), but `grad_sq`
/// sums the raw `g` of every seed.
///
/// # Panics
/// If `x` or `g` does not hold `rows * H` values (a bug in the caller).
pub fn backward_with(state: &LayerState, params: &Params64, x: &[f64], g: &[f64], rows: usize) -> BackwardRef {
    let h = state.config.hidden_dim;
    let c = state.config.chunk_size();
    let n = state.num_seeds();
    assert_eq!(g.len(), rows * h, "reference backward: g must hold rows * H values");
    let fwd = forward_with(state, params, x, rows);
    let mut out = BackwardRef {
        dx: g.to_vec(),
        dweights: vec![0.0; n * c],
        dscales: vec![0.0; n],
        dscales_abs: vec![0.0; n],
        grad_sq: vec![0.0; n],
    };
    for seed in 0..n {
        let mode = seed_mode(state, seed);
        let a = mode.alpha();
        let kind = state.seeds.blueprint_type[seed];
        let w = &params.weights[seed * c..(seed + 1) * c];
        let s = params.scales[seed];
        for row in 0..rows {
            let start = row * h + seed * c;
            let xs = &x[start..start + c];
            out.grad_sq[seed] += g[start..start + c].iter().map(|v| v * v).sum::<f64>();
            if mode == SeedMode::Identity {
                continue;
            }
            // The gradient reaching each output element; 0 where strict mode clamped it.
            let ge: Vec<f64> = (0..c).map(|j| if fwd.clamped[start + j] { 0.0 } else { g[start + j] }).collect();
            let (dxt, dw, ds) = blueprint_grads(kind, w, s, xs, &ge);
            for j in 0..c {
                out.dx[start + j] = (1.0 - a) * ge[j] + a * dxt[j];
                out.dweights[seed * c + j] += a * dw[j];
            }
            out.dscales[seed] += a * ds;
            let abs = |v: &[f64]| v.iter().map(|e| e.abs()).collect::<Vec<f64>>();
            let (_, _, ds_abs) = blueprint_grads(kind, &abs(w), s.abs(), &abs(xs), &abs(&ge));
            out.dscales_abs[seed] += a * ds_abs;
        }
    }
    out
}

/// For one row of one seed: `Σ_k g_k ∂t_k/∂x_j`, the per-row `∂/∂w_j` terms and
/// the per-row `∂/∂s` term of SPEC 7's table.
pub fn blueprint_grads(kind: BlueprintType, w: &[f64], s: f64, x: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, f64) {
    let c = x.len();
    match kind {
        BlueprintType::Residual => {
            let dx = g.to_vec();
            let dw = (0..c).map(|j| g[j] * s).collect();
            let ds = (0..c).map(|j| g[j] * w[j]).sum();
            (dx, dw, ds)
        }
        BlueprintType::Attention => {
            let p = softmax(w);
            let gxp: f64 = (0..c).map(|k| g[k] * x[k] * p[k]).sum();
            let dx = (0..c).map(|j| g[j] * p[j]).collect();
            let dw = (0..c).map(|j| p[j] * (g[j] * x[j] - gxp)).collect();
            (dx, dw, 0.0)
        }
        BlueprintType::Mlp => {
            let m = |j: usize| if x[j] * w[j] > 0.0 { 1.0 } else { 0.0 };
            let dx = (0..c).map(|j| g[j] * w[j] * s * m(j)).collect();
            let dw = (0..c).map(|j| g[j] * x[j] * s * m(j)).collect();
            let ds = (0..c).map(|j| g[j] * relu(x[j] * w[j])).sum();
            (dx, dw, ds)
        }
        BlueprintType::Conv => {
            let g_at = |k: usize| if k < c { g[k] } else { 0.0 };
            let dx = (0..c).map(|j| s * (0..3).map(|k| conv_w(w, k) * g_at(j + k)).sum::<f64>()).collect();
            let dw = (0..c)
                .map(|k| if k < 3 { s * (0..c).map(|j| g[j] * x_back(x, j, k)).sum::<f64>() } else { 0.0 })
                .collect();
            let ds = (0..c).map(|j| g[j] * conv_sum(w, x, j)).sum();
            (dx, dw, ds)
        }
    }
}

#[cfg(test)]
mod tests;
