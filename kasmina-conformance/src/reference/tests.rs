//! The reference checked against hand-computed values (forward, telemetry,
//! strict mode) and against central finite differences of its own forward
//! (backward), so the oracle itself is trusted for a reason.

use super::*;
use kasmina_core::{LayerConfig, LifecycleState, StabilityMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Three seeds of one blueprint type: seed 0 identity (TRAINING), seed 1 blend
/// (GRAFTING, alpha 0.25), seed 2 FOSSILIZED; every seed has the same weights and scale.
fn three_modes(kind: BlueprintType, w: &[f32], s: f32) -> LayerState {
    let c = w.len();
    let mut st = LayerState::new(LayerConfig::new(3 * c, 3).unwrap()).unwrap();
    let states = [LifecycleState::Training, LifecycleState::Grafting, LifecycleState::Fossilized];
    for (i, l) in states.into_iter().enumerate() {
        st.seeds.lifecycle[i] = l;
        st.seeds.blueprint_type[i] = kind;
        st.params.seed_weights_mut(i).copy_from_slice(w);
        st.params.scales[i] = s;
    }
    st.seeds.alpha = vec![0.5, 0.25, 1.0];
    st
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w} (all: {got:?})");
    }
}

/// Runs the three-mode layer on one row `x` repeated in every seed and checks
/// identity, blend (alpha 0.25) and FOSSILIZED outputs.
fn check_modes(kind: BlueprintType, w: &[f32], s: f32, x: &[f64], blend: &[f64], fossil: &[f64], tol: f64) {
    let st = three_modes(kind, w, s);
    let row: Vec<f64> = [x, x, x].concat();
    let f = forward(&st, &row, 1);
    let c = x.len();
    assert_eq!(&f.y[..c], x, "identity is exact");
    assert_close(&f.y[c..2 * c], blend, tol);
    assert_close(&f.y[2 * c..], fossil, tol);
    assert!(f.clamped.iter().all(|c| !c));
}

#[test]
fn residual_forward_matches_hand_values() {
    // t = x + w s = [1 + 1, 2 - 2, 3 + 4]; blend = 0.75 x + 0.25 t.
    check_modes(
        BlueprintType::Residual,
        &[0.5, -1.0, 2.0],
        2.0,
        &[1.0, 2.0, 3.0],
        &[1.25, 1.5, 4.0],
        &[2.0, 0.0, 7.0],
        0.0,
    );
}

#[test]
fn attention_forward_matches_hand_values() {
    // softmax([0, ln 3, 0]) = [0.2, 0.6, 0.2]; t = x p = [0.2, 1.2, 0.6].
    let ln3 = 3f32.ln();
    check_modes(
        BlueprintType::Attention,
        &[0.0, ln3, 0.0],
        7.0,
        &[1.0, 2.0, 3.0],
        &[0.8, 1.8, 2.4],
        &[0.2, 1.2, 0.6],
        1e-7,
    );
    // Subtracting the max keeps huge weights finite: softmax([1000, 1000]) = [0.5, 0.5].
    assert_eq!(softmax(&[1000.0, 1000.0]), vec![0.5, 0.5]);
}

#[test]
fn mlp_forward_matches_hand_values() {
    // x w = [2, -2, -3]; relu * 0.5 = [1, 0, 0].
    check_modes(
        BlueprintType::Mlp,
        &[2.0, 1.0, -1.0],
        0.5,
        &[1.0, -2.0, 3.0],
        &[1.0, -1.5, 2.25],
        &[1.0, 0.0, 0.0],
        0.0,
    );
}

#[test]
fn conv_forward_matches_hand_values() {
    // t_j = 2 (x_j + 0.5 x_{j-1} - x_{j-2}) = [2, 5, 6, 7]; w_3 = 9 is never used.
    check_modes(
        BlueprintType::Conv,
        &[1.0, 0.5, -1.0, 9.0],
        2.0,
        &[1.0, 2.0, 3.0, 4.0],
        &[1.25, 2.75, 3.75, 4.75],
        &[2.0, 5.0, 6.0, 7.0],
        0.0,
    );
    // C = 1 and C = 2 use only the weights that exist.
    check_modes(BlueprintType::Conv, &[3.0], 1.0, &[2.0], &[0.75 * 2.0 + 0.25 * 6.0], &[6.0], 0.0);
    check_modes(BlueprintType::Conv, &[1.0, 2.0], 1.0, &[1.0, 1.0], &[1.0, 1.5], &[1.0, 3.0], 0.0);
}

#[test]
fn identity_forward_keeps_nan_payloads_and_infinities() {
    let st = three_modes(BlueprintType::Residual, &[1.0], 1.0);
    let nan = f64::from_bits(0x7FF0_0000_DEAD_BEEF);
    let f = forward(&st, &[nan, 1.0, 1.0], 1);
    assert_eq!(f.y[0].to_bits(), nan.to_bits());
    let f = forward(&st, &[f64::NEG_INFINITY, 1.0, 1.0], 1);
    assert_eq!(f.y[0], f64::NEG_INFINITY);
}

#[test]
fn conv_backward_matches_hand_values() {
    // FOSSILIZED (a = 1), x = [1, 2, 3, 4], w = [1, 0.5, -1, 9], s = 2, g = [1, 0, 0, 1].
    let mut st = three_modes(BlueprintType::Conv, &[1.0, 0.5, -1.0, 9.0], 2.0);
    st.seeds.lifecycle[0] = LifecycleState::Fossilized;
    st.seeds.lifecycle[1] = LifecycleState::Fossilized;
    let x = [1.0, 2.0, 3.0, 4.0].repeat(3);
    let g = [1.0, 0.0, 0.0, 1.0].repeat(3);
    let b = backward(&st, &x, &g, 1);
    // dx_j = s (w0 g_j + w1 g_{j+1} + w2 g_{j+2}).
    assert_eq!(&b.dx[..4], &[2.0, -2.0, 1.0, 2.0]);
    // dw_k = s Σ_j g_j x_{j-k}: [2 (1 + 4), 2 (0 + 3), 2 (0 + 2), 0].
    assert_eq!(&b.dweights[..4], &[10.0, 6.0, 4.0, 0.0]);
    // ds = Σ_j g_j (t_j / s) = 1 + 3.5.
    assert_eq!(b.dscales[0], 4.5);
    assert_eq!(b.grad_sq, vec![2.0; 3]);
}

#[test]
fn attention_and_residual_backward_match_hand_values() {
    // ATTENTION, w = [0, 0] -> p = [0.5, 0.5]; x = [1, 3], g = [2, 1], a = 0.25.
    let st = three_modes(BlueprintType::Attention, &[0.0, 0.0], 5.0);
    let x = [1.0, 3.0].repeat(3);
    let g = [2.0, 1.0].repeat(3);
    let b = backward(&st, &x, &g, 1);
    assert_eq!(&b.dx[..2], &[2.0, 1.0], "identity: dx = g");
    assert_eq!(&b.dweights[..2], &[0.0, 0.0], "identity: no parameter gradient");
    // dx = 0.75 g + 0.25 g p = [1.5 + 0.25, 0.75 + 0.125].
    assert_eq!(&b.dx[2..4], &[1.75, 0.875]);
    // Σ g x p = 0.5 (2 + 3) = 2.5; dw_j = a p_j (g_j x_j - 2.5) = 0.25 * 0.5 * [-0.5, 0.5].
    assert_eq!(&b.dweights[2..4], &[-0.0625, 0.0625]);
    assert_eq!(b.dscales, vec![0.0; 3]);
    // RESIDUAL FOSSILIZED, w = [1, -1], s = 3: dx = g, dw = g s, ds = Σ g w.
    let st = three_modes(BlueprintType::Residual, &[1.0, -1.0], 3.0);
    let b = backward(&st, &x, &g, 1);
    assert_eq!(&b.dx[4..], &[2.0, 1.0]);
    assert_eq!(&b.dweights[4..], &[6.0, 3.0]);
    assert_eq!(b.dscales[2], 1.0);
}

#[test]
fn strict_mode_clamps_blend_and_fossilized_outputs_and_zeroes_their_gradient() {
    // k = 1, clamp_mean 0, clamp_std 1: band [-1, 1].
    let mut st = three_modes(BlueprintType::Residual, &[0.0, 0.0, 0.5], 1.0);
    st.config.stability = StabilityMode::Strict { k: 1.0 };
    st.seeds.clamp_mean = vec![0.0; 3];
    st.seeds.clamp_std = vec![1.0; 3];
    let x = [5.0, -3.0, 0.9].repeat(3);
    let f = forward(&st, &x, 1);
    assert_eq!(&f.y[..3], &[5.0, -3.0, 0.9], "identity seeds are never clamped");
    assert_eq!(&f.y[6..], &[1.0, -1.0, 1.0]);
    assert_eq!(&f.clamped[6..], &[true, true, true]);
    assert_eq!(&f.unclamped[6..], &[5.0, -3.0, 1.4]);
    let x = [0.5, -3.0, 0.9].repeat(3);
    let f = forward(&st, &x, 1);
    assert_eq!(&f.y[6..], &[0.5, -1.0, 1.0]);
    assert_eq!(&f.clamped[6..], &[false, true, true]);
    let b = backward(&st, &x, &[1.0; 9], 1);
    assert_eq!(&b.dx[..3], &[1.0; 3]);
    assert_eq!(&b.dx[6..], &[1.0, 0.0, 0.0]);
    assert_eq!(&b.dweights[6..], &[1.0, 0.0, 0.0]);
    assert_eq!(b.dscales[2], 0.0);
    assert_eq!(b.grad_sq, vec![3.0; 3], "grad_sq sums the raw g");
    // Bounds are the f32 numbers of clamp_bounds: mean 0.1, std 0.3, k 6.
    st.config.stability = StabilityMode::strict();
    st.seeds.clamp_mean = vec![0.1; 3];
    st.seeds.clamp_std = vec![0.3; 3];
    let f = forward(&st, &[100.0; 9], 1);
    assert_eq!(f.y[8], (0.1f32 + 6.0f32 * 0.3f32) as f64);
    // Unset statistics (NaN) disable clamping for that seed.
    st.seeds.clamp_std[2] = kasmina_core::CLAMP_UNSET;
    assert_eq!(forward(&st, &[100.0; 9], 1).y[8], 100.5);
}

#[test]
fn telemetry_counts_nonfinite_dead_and_finite_values() {
    let mut st = LayerState::new(LayerConfig::new(8, 2).unwrap()).unwrap();
    st.seeds.lifecycle[1] = LifecycleState::Fossilized;
    let dead_eps = 1e-6f32 as f64;
    let below = f32::from_bits(1e-6f32.to_bits() - 1) as f64;
    // Seed 0: [1, NaN, +Inf, 2] then [0, 1e-7, -Inf, 3]; seed 1: [dead_eps, below, -dead_eps, 4] twice.
    let x = [
        1.0,
        f64::NAN,
        f64::INFINITY,
        2.0,
        dead_eps,
        below,
        -dead_eps,
        4.0,
        0.0,
        1e-7,
        f64::NEG_INFINITY,
        3.0,
        dead_eps,
        below,
        -dead_eps,
        4.0,
    ];
    let f = forward(&st, &x, 2);
    let m = f.moments[0];
    assert_eq!((m.count, m.nonfinite, m.dead), (5, 3, 2));
    assert_eq!((m.min, m.max), (0.0, 3.0));
    let mean = (1.0 + 2.0 + 0.0 + 1e-7 + 3.0) / 5.0;
    assert!((m.mean - mean).abs() < 1e-15);
    let m2: f64 = [1.0, 2.0, 0.0, 1e-7, 3.0].iter().map(|v| (v - mean) * (v - mean)).sum();
    assert!((m.m2 - m2).abs() < 1e-12);
    let m = f.moments[1];
    // |x| < dead_eps is strict: only `below` is dead.
    assert_eq!((m.count, m.nonfinite, m.dead), (8, 0, 2));
    assert_eq!((m.min, m.max), (-dead_eps, 4.0));
    // Nothing seen: the empty moments.
    assert_eq!(forward(&st, &[], 0).moments[0], Moments::empty());
}

/// `L = Σ g y` of the reference forward.
fn loss(state: &LayerState, p: &Params64, x: &[f64], g: &[f64], rows: usize) -> f64 {
    forward_with(state, p, x, rows).y.iter().zip(g).map(|(y, g)| y * g).sum()
}

/// Central differences of `L` in every input, weight and scale against the
/// reference backward, for every blueprint type in blend and FOSSILIZED mode,
/// with and without strict-mode clamping. Elements within a step of a kink
/// (relu, a clamp bound) are skipped.
#[test]
fn backward_matches_central_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (c, rows) = (6, 3);
    let mut checked = 0;
    for strict in [false, true] {
        for kind in BlueprintType::ALL.iter().copied() {
            let mut st = LayerState::new(LayerConfig::new(3 * c, 3).unwrap()).unwrap();
            st.seeds.lifecycle = vec![LifecycleState::Grafting, LifecycleState::Fossilized, LifecycleState::Dormant];
            st.seeds.blueprint_type = vec![kind; 3];
            st.seeds.alpha = vec![0.25, 1.0, 0.0];
            for w in st.params.weights.iter_mut() {
                *w = rng.random_range(-1.5..1.5);
            }
            st.params.scales = (0..3).map(|_| rng.random_range(0.5..2.0)).collect();
            if strict {
                st.config.stability = StabilityMode::Strict { k: 1.0 };
                st.seeds.clamp_mean = vec![0.1; 3];
                st.seeds.clamp_std = vec![0.8; 3];
            }
            let x: Vec<f64> = (0..rows * 3 * c).map(|_| rng.random_range(-2.0..2.0)).collect();
            let g: Vec<f64> = (0..rows * 3 * c).map(|_| rng.random_range(-1.0..1.0)).collect();
            let p = Params64::of(&st);
            let b = backward(&st, &x, &g, rows);
            let fwd = forward(&st, &x, rows);
            if strict {
                assert!(fwd.clamped.iter().any(|c| *c) && fwd.clamped.iter().any(|c| !c), "{kind}");
            }
            let h = 1e-6;
            // A kink within reach of the step makes the difference meaningless.
            let near_kink = |x: &[f64], p: &Params64| {
                let f = forward_with(&st, p, x, rows);
                let band = (0..3).filter_map(|s| bounds(&st, s)).collect::<Vec<_>>();
                let clamp_kink = f
                    .unclamped
                    .iter()
                    .any(|v| band.iter().any(|(lo, hi)| (v - lo).abs() < 1e-4 || (v - hi).abs() < 1e-4));
                let relu_kink =
                    kind == BlueprintType::Mlp && (0..x.len()).any(|i| (x[i] * p.weights[i % (3 * c)]).abs() < 1e-4);
                clamp_kink || relu_kink
            };
            if near_kink(&x, &p) {
                continue;
            }
            checked += 1;
            let check = |what: &str, analytic: f64, plus: f64, minus: f64| {
                let fd = (plus - minus) / (2.0 * h);
                assert!(
                    (fd - analytic).abs() <= 1e-6 * (1.0 + analytic.abs()),
                    "{kind} strict={strict} {what}: finite difference {fd}, backward {analytic}"
                );
            };
            for i in 0..x.len() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                check(&format!("dx[{i}]"), b.dx[i], loss(&st, &p, &xp, &g, rows), loss(&st, &p, &xm, &g, rows));
            }
            for i in 0..p.weights.len() {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp.weights[i] += h;
                pm.weights[i] -= h;
                check(&format!("dw[{i}]"), b.dweights[i], loss(&st, &pp, &x, &g, rows), loss(&st, &pm, &x, &g, rows));
            }
            for i in 0..3 {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp.scales[i] += h;
                pm.scales[i] -= h;
                check(&format!("ds[{i}]"), b.dscales[i], loss(&st, &pp, &x, &g, rows), loss(&st, &pm, &x, &g, rows));
            }
        }
    }
    assert_eq!(checked, 8, "every type and mode was checked (no input near a kink)");
}
