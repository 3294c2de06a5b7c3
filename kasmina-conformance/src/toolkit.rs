//! What every backend's own tests share with the suite: SPEC 8's tolerances and the relative
//! L2 error, exact views of host tensors (raw bits, values widened to f64), the seeded
//! generator ([`Gen`]), host-device transfers, layer states reached through the lifecycle API
//! ([`drive`], [`mixed_state`]), assertions on telemetry and identity seeds, bit-level keys for
//! determinism checks, and the skip rules of device tests.
//!
//! The assertions panic with the test's `what` in the message: they are for `#[test]`s, where
//! the suite itself turns every failure into a row instead.

mod states;

use kasmina_core::backend::HostTensorData;
use kasmina_core::{Accumulators, Backend, DeviceTensor, Error, ForwardMode, LayerState, Moments, ParamGrads};

pub use crate::check::{reduction_tolerance, tolerance};
pub use crate::data::{Gen, bits, from_f64, set_bits, to_f64};
pub use states::{drive, mixed_state};

/// `‖got − want‖₂ / ‖want‖₂` (the absolute norm's ratio to 1e-300 when `want` is all zero).
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The raw bits of every element (zero-extended for 16-bit dtypes).
pub fn all_bits(t: &HostTensorData) -> Vec<u32> {
    (0..t.view().len()).map(|i| bits(t, i)).collect()
}

/// f32 values (parameter gradients, say) widened to f64, exactly.
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| f64::from(*x)).collect()
}

/// A new `[rows, cols]` device tensor holding `data` (`rows * cols` elements; its dtype).
///
/// # Errors
/// The backend's error from `alloc` or `write`.
pub fn upload<B: Backend>(backend: &B, data: &HostTensorData, rows: usize, cols: usize) -> Result<B::Tensor, Error> {
    let mut t = backend.alloc(rows, cols, data.view().dtype())?;
    backend.write(&mut t, data.view())?;
    Ok(t)
}

/// A device tensor read back to the host, all `rows * cols` elements in its dtype.
///
/// # Errors
/// The backend's error from `read`.
pub fn download<B: Backend>(backend: &B, tensor: &B::Tensor) -> Result<HostTensorData, Error> {
    let mut out = HostTensorData::zeros(tensor.dtype(), tensor.rows() * tensor.cols());
    backend.read(tensor, out.view_mut())?;
    Ok(out)
}

/// Asserts that every element of `out` (a `[rows, H]` tensor of `state`'s layer) in the chunk
/// of an identity seed has the bits of the same element of `src` (`x` for `y`, `g` for `dx`):
/// identity seeds copy, NaN payloads and all (SPEC 5.1, 7).
///
/// # Panics
/// At the first element that differs, naming `what`, the element, its row and seed.
pub fn assert_identity_bits(state: &LayerState, out: &HostTensorData, src: &HostTensorData, what: &str) {
    let (h, c) = (state.config.hidden_dim, state.config.chunk_size());
    let n = out.view().len();
    assert_eq!(n, src.view().len(), "{what}: {n} elements, the source has {}", src.view().len());
    let identity: Vec<bool> = state.seeds.lifecycle.iter().map(|l| l.forward_mode() == ForwardMode::Identity).collect();
    for i in (0..n).filter(|i| identity[(i % h) / c]) {
        let (got, want) = (bits(out, i), bits(src, i));
        assert_eq!(got, want, "{what}: identity element {i} (row {}, seed {}) changed", i / h, (i % h) / c);
    }
}

/// Asserts that a backend's telemetry moments match the reference's, seed by seed: counts
/// (finite, dead, non-finite), min and max exactly, the mean within `1e-5 * (1 + |mean|)` and
/// the variance within `variance_rel` of the reference's (SPEC 5.2 holds it to 1e-4).
///
/// # Panics
/// At the first seed that differs, naming `what`, the seed and the two values.
pub fn assert_moments(got: &[Moments], want: &[Moments], variance_rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: moments of {} seeds, want {}", got.len(), want.len());
    for (i, (m, r)) in got.iter().zip(want).enumerate() {
        assert_eq!((m.count, m.dead, m.nonfinite), (r.count, r.dead, r.nonfinite), "{what}: seed {i} counts");
        assert_eq!((m.min, m.max), (r.min, r.max), "{what}: seed {i} min/max");
        let mean_tol = 1e-5 * (1.0 + r.mean.abs());
        assert!((m.mean - r.mean).abs() <= mean_tol, "{what}: seed {i} mean {} vs {}", m.mean, r.mean);
        let (v, rv) = (m.variance(), r.variance());
        assert!((v - rv).abs() <= variance_rel * rv.max(1e-30), "{what}: seed {i} variance {v} vs {rv}");
    }
}

/// Every field of the accumulators as bits (each seed's count, mean, m2, min, max, dead and
/// non-finite count, then each `grad_sq`): equal keys mean bit-identical telemetry.
pub fn telemetry_bits(acc: &Accumulators) -> Vec<u64> {
    acc.moments
        .iter()
        .flat_map(|m| {
            [m.count, m.mean.to_bits(), m.m2.to_bits(), m.min.to_bits(), m.max.to_bits(), m.dead, m.nonfinite]
        })
        .chain(acc.grad_sq.iter().map(|v| v.to_bits()))
        .collect()
}

/// The parameter gradients as bits (`dweights`, `dscales`, `grad_norm`): equal keys mean
/// bit-identical gradients.
pub fn gradient_bits(grads: &ParamGrads) -> Vec<u32> {
    grads.dweights.iter().chain(&grads.dscales).chain(&grads.grad_norm).map(|v| v.to_bits()).collect()
}

/// The median of `reps` device timings ([`Backend::time_ms`]) of `f`, after three untimed
/// calls that warm the device (clocks, caches, compiled kernels) up.
///
/// # Errors
/// The first error of `f` or of the timing.
pub fn median_ms<B: Backend>(backend: &B, reps: usize, f: &mut dyn FnMut() -> Result<(), Error>) -> Result<f64, Error> {
    for _ in 0..3 {
        f()?;
    }
    let mut t = (0..reps.max(1)).map(|_| backend.time_ms(f)).collect::<Result<Vec<f64>, Error>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// [`median_ms`] of forward calls of `layer` (`x` into `out`) or, with `backward`, of backward
/// calls (`x` and `g` into `out`).
///
/// # Errors
/// The first error of a call or of the timing.
pub fn median_call_ms<B: Backend>(
    backend: &B,
    layer: &mut B::Layer,
    (x, g): (&B::Tensor, &B::Tensor),
    out: &mut B::Tensor,
    backward: bool,
    reps: usize,
) -> Result<f64, Error> {
    median_ms(backend, reps, &mut || {
        if backward { backend.backward(layer, x, g, out) } else { backend.forward(layer, x, out) }
    })
}

/// Whether `KASMINA_REQUIRE_GPU=1`: a device test whose device is missing fails instead of
/// skipping.
pub fn require_gpu() -> bool {
    std::env::var("KASMINA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The backend `opened` holds, or `None` after printing why `test` skips.
///
/// # Panics
/// When the backend is unavailable and [`require_gpu`] holds.
pub fn backend_or_skip<B, E: std::fmt::Display>(test: &str, opened: Result<B, E>) -> Option<B> {
    match opened {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(!require_gpu(), "{test}: KASMINA_REQUIRE_GPU=1 but the backend is unavailable: {e}");
            println!("skipped {test}: {e}");
            None
        }
    }
}

/// Whether the environment variable `var` is `1`, for tests that run only on request (large
/// tensors, timing reports); prints that the test skipped, and how to run it, when not.
pub fn opted_in(var: &str, what: &str) -> bool {
    let on = std::env::var(var).is_ok_and(|v| v == "1");
    if !on {
        println!("skipped: set {var}=1 to {what}");
    }
    on
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use kasmina_core::{BlueprintType, LayerConfig, LifecycleState};

    #[test]
    fn relative_l2_and_bits() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 5.0]) - (9.0f64 + 1.0).sqrt() / 5.0).abs() < 1e-15);
        let t = HostTensorData::BF16(vec![bf16::from_f32(1.0), bf16::from_bits(0x7FC3)]);
        assert_eq!(all_bits(&t), vec![0x3F80, 0x7FC3]);
        assert_eq!(to_f64(&t)[0], 1.0);
        assert_eq!(widen(&[0.1f32]), vec![0.1f32 as f64]);
    }

    #[test]
    fn identity_bits_are_checked_on_identity_seeds_only() {
        // H = 4, S = 2: seed 0 identity, seed 1 FOSSILIZED.
        let mut st = LayerState::new(LayerConfig::new(4, 2).unwrap()).unwrap();
        drive(&mut st, 1, LifecycleState::Fossilized, BlueprintType::Mlp).unwrap();
        let x = HostTensorData::F32(vec![f32::from_bits(0x7FC1_2345), 1.0, 2.0, 3.0]);
        let mut y = x.clone();
        set_bits(&mut y, 3, 0);
        assert_identity_bits(&st, &y, &x, "y");
        set_bits(&mut y, 0, 0x7FC0_0000);
        let e = std::panic::catch_unwind(|| assert_identity_bits(&st, &y, &x, "y")).unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().contains("identity element 0 (row 0, seed 0)"));
    }

    #[test]
    fn moments_are_held_to_their_tolerances() {
        let mut want = Moments::empty();
        for x in [1.0, 2.0, 4.0] {
            want.push(x, 1e-6);
        }
        let close = Moments { mean: want.mean * (1.0 + 1e-6), m2: want.m2 * (1.0 + 1e-5), ..want };
        assert_moments(&[close], &[want], 1e-4, "close");
        let far = Moments { m2: want.m2 * (1.0 + 1e-3), ..want };
        assert!(std::panic::catch_unwind(|| assert_moments(&[far], &[want], 1e-4, "far")).is_err());
        let other_max = Moments { max: 4.5, ..want };
        assert!(std::panic::catch_unwind(|| assert_moments(&[other_max], &[want], 1e-4, "max")).is_err());
        let acc = Accumulators { moments: vec![want], grad_sq: vec![2.0] };
        assert_eq!(telemetry_bits(&acc).len(), 8);
        let grads = ParamGrads { dweights: vec![1.0, 2.0], dscales: vec![3.0], grad_norm: vec![-0.0] };
        assert_eq!(gradient_bits(&grads), vec![0x3F80_0000, 0x4000_0000, 0x4040_0000, 0x8000_0000]);
    }
}
