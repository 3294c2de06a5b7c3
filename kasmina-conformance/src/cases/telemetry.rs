//! Telemetry (SPEC 5.2) accumulated over several forward calls (one of zero
//! rows) before `end_epoch`: NaN and ±Inf inputs, values at and around
//! `dead_eps`, values of magnitude 1e30 (whose variance overflows f32), data
//! with `|mean| / std = 1e4`, and a seed that sees no finite value at all.
//! Checks the raw accumulators, the report built from them, `grad_sq` over
//! two backward calls, and that `end_epoch` returns that report and resets.

use kasmina_core::backend::{Accumulators, HostTensorData};
use kasmina_core::{
    Backend, BlueprintType, DType, EpochSignals, LayerConfig, LayerState, LifecycleState, Moments, TelemetryReport,
};

use super::{Ctx, SeedSpec, all_seeds, build_state, check_moments, check_tensor, layer, run_backward, run_forward};
use crate::check::{Check, reduction_tolerance};
use crate::data::{self, Gen};
use crate::reference;

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let (c, calls): (usize, &[usize]) = if ctx.full() { (4099, &[257, 0, 1031]) } else { (37, &[5, 0, 11]) };
    for dtype in ctx.dtypes("epoch") {
        let backend = ctx.backend;
        ctx.case("epoch", Some(dtype), |chk| epoch(backend, chk, dtype, c, calls));
    }
}

/// The seeds: what each watches is chosen by [`fill`].
fn specs() -> Vec<SeedSpec> {
    vec![
        SeedSpec::new(LifecycleState::Dormant, BlueprintType::Residual, 0.0),
        SeedSpec::new(LifecycleState::Grafting, BlueprintType::Residual, 0.25),
        SeedSpec::new(LifecycleState::Fossilized, BlueprintType::Conv, 1.0),
        SeedSpec::new(LifecycleState::Training, BlueprintType::Attention, 0.0),
        SeedSpec::new(LifecycleState::Evaluating, BlueprintType::Mlp, 0.5),
    ]
}

/// One forward call's input: seed 0 normal data with NaN/±Inf and values
/// around `dead_eps`; seed 1 magnitude 1e30; seed 2 `1e4 + U(-√3, √3)`
/// (`|mean| / std = 1e4`); seed 3 only non-finite values; seed 4 `3 + U(-1, 1)`.
fn fill(rng: &mut Gen, dtype: DType, rows: usize, c: usize, dead_eps: f32) -> HostTensorData {
    let h = 5 * c;
    let near_dead = [
        dead_eps as f64,
        f32::from_bits(dead_eps.to_bits() - 1) as f64,
        f32::from_bits(dead_eps.to_bits() + 1) as f64,
        -(dead_eps as f64),
        0.0,
        -0.0,
        dead_eps as f64 * 0.5,
        -(dead_eps as f64) * 0.999,
    ];
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    let mut v = vec![0.0; rows * h];
    for r in 0..rows {
        for j in 0..h {
            v[r * h + j] = match j / c {
                0 if rng.chance(0.1) => rng.pick(&specials),
                0 if rng.chance(0.2) => rng.pick(&near_dead),
                0 => rng.uniform(-2.0, 2.0),
                1 => rng.uniform(-3.0, 3.0) * 1e30,
                2 => 1e4 + rng.uniform(-3f64.sqrt(), 3f64.sqrt()),
                3 => rng.pick(&specials),
                _ => 3.0 + rng.uniform(-1.0, 1.0),
            };
        }
    }
    data::from_f64(dtype, &v)
}

fn epoch<B: Backend>(
    backend: &B,
    chk: &mut Check,
    dtype: DType,
    c: usize,
    calls: &[usize],
) -> kasmina_core::Result<()> {
    let mut rng = Gen::new(0x7E);
    let config = LayerConfig::new(5 * c, 5)?;
    let st: LayerState = build_state(config, &specs(), &mut rng)?;
    let h = config.hidden_dim;
    let mut l = layer(backend, &st)?;
    let mut want = vec![Moments::empty(); 5];
    for (k, &rows) in calls.iter().enumerate() {
        let x = fill(&mut rng, dtype, rows, c, config.dead_eps);
        let x64 = data::to_f64(&x);
        let y = run_forward(&mut l, &x, rows)?;
        let fref = reference::forward(&st, &x64, rows);
        check_tensor(chk, &format!("call {k} y"), &st, &all_seeds(&st), &y, &x, &fref.y, &|_| false);
        for (w, m) in want.iter_mut().zip(&fref.moments) {
            *w = w.merge(m);
        }
    }
    chk.require("the seeds see what they were built for", want[3].count == 0 && want[0].dead > 0, || {
        format!("{want:?}")
    });
    let acc = l.accumulators()?;
    check_moments(chk, "accumulated", &acc.moments, &want, &[true; 5]);
    let empty_grads = Accumulators { moments: want.clone(), grad_sq: vec![0.0; 5] };
    compare_reports(chk, "report", &l.telemetry()?, &TelemetryReport::build(l.state(), &empty_grads)?, 0);

    // Two backward calls (finite inputs) accumulate Σ g² per seed.
    let mut grad_sq = vec![0.0; 5];
    for rows in [7usize, 3] {
        let x = rng.tensor(dtype, rows * h, 2.0);
        let g = rng.tensor(dtype, rows * h, 1.0);
        run_backward(&mut l, &x, &g, rows)?;
        let b = reference::backward(&st, &data::to_f64(&x), &data::to_f64(&g), rows);
        for (a, v) in grad_sq.iter_mut().zip(&b.grad_sq) {
            *a += v;
        }
    }
    let acc = l.accumulators()?;
    for (s, (got, want)) in acc.grad_sq.iter().zip(&grad_sq).enumerate() {
        chk.close(format!("grad_sq seed {s}"), *got, *want, reduction_tolerance(10 * c), 0.0);
    }
    check_moments(chk, "after backward", &acc.moments, &want, &[true; 5]);
    let before = l.telemetry()?;
    compare_reports(
        chk,
        "report with grad_norm",
        &before,
        &TelemetryReport::build(l.state(), &Accumulators { moments: want, grad_sq })?,
        10 * c,
    );
    let ended = l.end_epoch(&EpochSignals::none())?;
    chk.require("end_epoch returns the epoch's report", ended == before, || {
        format!("end_epoch gave {ended:?}, telemetry() gave {before:?}")
    });
    let acc = l.accumulators()?;
    chk.require("end_epoch resets the accumulators", acc == Accumulators::empty(5), || format!("{acc:?}"));
    chk.equal("device checksum after end_epoch", l.device_checksum()?, l.checksum());
    Ok(())
}

/// Two f16 values within one unit in the last place (rounding of nearly equal f64 values).
fn f16_close(a: half::f16, b: half::f16) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || {
        let (x, y) = (a.to_f64(), b.to_f64());
        let ulp = half::f16::EPSILON.to_f64() * x.abs().max(y.abs()).max(half::f16::MIN_POSITIVE.to_f64());
        (x - y).abs() <= ulp
    }
}

/// The report from the backend's accumulators against the one from the
/// reference's: counts, min/max and dead_ratio exact; variance to relative
/// 1e-4 (both +Inf when it overflows f32); grad_norm within the reduction
/// tolerance; the f16 tier within one ulp (snr only where the f32 variance is
/// finite: with an infinite variance both are 0 or the reference's is not
/// representable in the report's own f32 terms).
pub(crate) fn compare_reports(chk: &mut Check, what: &str, got: &TelemetryReport, want: &TelemetryReport, n: usize) {
    chk.equal(format!("{what} epoch/seeds"), (got.epoch, got.seeds.len()), (want.epoch, want.seeds.len()));
    for (g, w) in got.seeds.iter().zip(&want.seeds) {
        let s = w.seed_id;
        chk.equal(
            format!("{what} seed {s} counts"),
            (g.seed_id, g.lifecycle, g.count, g.dead, g.critical.nonfinite, g.critical.dead_ratio),
            (w.seed_id, w.lifecycle, w.count, w.dead, w.critical.nonfinite, w.critical.dead_ratio),
        );
        chk.equal(
            format!("{what} seed {s} min/max"),
            (g.critical.min, g.critical.max),
            (w.critical.min, w.critical.max),
        );
        let floor = (f32::EPSILON as f64 * w.normal.mean.to_f64()).powi(2);
        chk.close(
            format!("{what} seed {s} variance"),
            g.critical.variance as f64,
            w.critical.variance as f64,
            1e-4,
            floor,
        );
        chk.close(
            format!("{what} seed {s} grad_norm"),
            g.critical.grad_norm as f64,
            w.critical.grad_norm as f64,
            reduction_tolerance(n),
            0.0,
        );
        chk.require(format!("{what} seed {s} mean (f16)"), f16_close(g.normal.mean, w.normal.mean), || {
            format!("got {}, want {}", g.normal.mean, w.normal.mean)
        });
        if w.critical.variance.is_finite() {
            chk.require(format!("{what} seed {s} snr (f16)"), f16_close(g.normal.snr, w.normal.snr), || {
                format!("got {}, want {}", g.normal.snr, w.normal.snr)
            });
        }
    }
}
