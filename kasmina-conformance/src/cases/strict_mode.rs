//! Strict mode (SPEC 5.3, 7): blend and FOSSILIZED outputs clamped to
//! `clamp_mean ± k clamp_std` (the f32 bounds of `clamp_bounds`), identity
//! seeds and seeds without statistics never clamped, clamped elements pass no
//! gradient; `end_epoch` sets the statistics and the next forward uses them;
//! `StabilityMode::Off` ignores statistics that are set.
//!
//! Near a bound, f32 and f64 can disagree on whether an element is clamped:
//! the gradient comparison sets `g = 0` at elements whose reference
//! unclamped value is within relative 1e-5 of a bound (see `zero_ambiguous`).

use kasmina_core::{Backend, BlueprintType, DType, EpochSignals, LayerConfig, LifecycleState, StabilityMode};

use super::{
    Ctx, SeedSpec, all_seeds, build_state, check_backward, check_tensor, layer, run_backward, run_forward,
    zero_ambiguous,
};
use crate::check::Check;
use crate::data::{self, Gen};
use crate::reference::{self, SeedMode};

fn specs() -> Vec<SeedSpec> {
    let mut v = Vec::new();
    for k in BlueprintType::ALL.iter().copied() {
        v.push(SeedSpec { clamp: Some((0.1, 0.4)), ..SeedSpec::new(LifecycleState::Grafting, k, 0.25) });
        v.push(SeedSpec { clamp: Some((-0.2, 0.5)), ..SeedSpec::new(LifecycleState::Fossilized, k, 1.0) });
        v.push(SeedSpec { clamp: Some((0.0, 0.1)), ..SeedSpec::new(LifecycleState::Training, k, 0.0) });
        v.push(SeedSpec::new(LifecycleState::Evaluating, k, 0.5));
    }
    v
}

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let (c, rows) = if ctx.full() { (1000, 761) } else { (33, 13) };
    let backend = ctx.backend;
    for dtype in ctx.dtypes("*") {
        ctx.case("forward_backward", Some(dtype), |chk| forward_backward(backend, chk, dtype, c, rows));
        ctx.case("after_end_epoch", Some(dtype), |chk| after_end_epoch(backend, chk, dtype, c, rows));
        ctx.case("off_ignores_clamp_stats", Some(dtype), |chk| {
            let specs = specs();
            let config = LayerConfig::new(specs.len() * c, specs.len())?;
            let st = build_state(config, &specs, &mut Gen::new(0x5C))?;
            let x = Gen::new(0x5D).tensor(dtype, rows * config.hidden_dim, 2.0);
            let fref = reference::forward(&st, &data::to_f64(&x), rows);
            chk.require("nothing is clamped in off mode", fref.clamped.iter().all(|c| !c), String::new);
            let mut l = layer(backend, &st)?;
            let y = run_forward(&mut l, &x, rows)?;
            check_tensor(chk, "y", &st, &all_seeds(&st), &y, &x, &fref.y, &|_| false);
            Ok(())
        });
    }
}

fn strict_state(c: usize) -> kasmina_core::Result<kasmina_core::LayerState> {
    let specs = specs();
    let config = LayerConfig::new(specs.len() * c, specs.len())?.with_stability(StabilityMode::Strict { k: 2.0 });
    build_state(config, &specs, &mut Gen::new(0x5A))
}

fn forward_backward<B: Backend>(
    backend: &B,
    chk: &mut Check,
    dtype: DType,
    c: usize,
    rows: usize,
) -> kasmina_core::Result<()> {
    let st = strict_state(c)?;
    let h = st.config.hidden_dim;
    let mut rng = Gen::new(0x5B);
    let x = rng.tensor(dtype, rows * h, 2.0);
    let x64 = data::to_f64(&x);
    let fref = reference::forward(&st, &x64, rows);
    let clamped = fref.clamped.iter().filter(|c| **c).count();
    let clampable = (0..rows * h)
        .filter(|i| {
            let s = (i % h) / c;
            reference::seed_mode(&st, s) != SeedMode::Identity && reference::bounds(&st, s).is_some()
        })
        .count();
    chk.require("the case clamps some elements and not others", clamped > 0 && clamped < clampable, || {
        format!("{clamped} of {clampable} clamped")
    });
    let mut l = layer(backend, &st)?;
    let y = run_forward(&mut l, &x, rows)?;
    check_tensor(chk, "y", &st, &all_seeds(&st), &y, &x, &fref.y, &|_| false);
    let mut g = rng.tensor(dtype, rows * h, 1.0);
    zero_ambiguous(&st, &x64, &fref, &mut g);
    let (dx, grads) = run_backward(&mut l, &x, &g, rows)?;
    let bref = reference::backward(&st, &x64, &data::to_f64(&g), rows);
    check_backward(chk, &st, &all_seeds(&st), rows, &x64, &g, &dx, &grads, &bref);
    Ok(())
}

fn after_end_epoch<B: Backend>(
    backend: &B,
    chk: &mut Check,
    dtype: DType,
    c: usize,
    rows: usize,
) -> kasmina_core::Result<()> {
    let st = strict_state(c)?;
    let h = st.config.hidden_dim;
    let mut rng = Gen::new(0x5E);
    let mut l = layer(backend, &st)?;
    // The epoch's data is narrower than the next call's, so the new band clamps.
    let x1 = rng.tensor(dtype, rows * h, 0.5);
    run_forward(&mut l, &x1, rows)?;
    l.end_epoch(&EpochSignals::none())?;
    let st2 = l.state().clone();
    chk.require(
        "end_epoch set every seed's statistics",
        (0..st2.num_seeds()).all(|s| st2.seeds.clamp_is_set(s)),
        || format!("{:?} / {:?}", st2.seeds.clamp_mean, st2.seeds.clamp_std),
    );
    chk.equal("device checksum after end_epoch", l.device_checksum()?, l.checksum());
    let x2 = rng.tensor(dtype, rows * h, 2.0);
    let x64 = data::to_f64(&x2);
    let fref = reference::forward(&st2, &x64, rows);
    chk.require("the new band clamps", fref.clamped.iter().any(|c| *c), String::new);
    let y = run_forward(&mut l, &x2, rows)?;
    check_tensor(chk, "y", &st2, &all_seeds(&st2), &y, &x2, &fref.y, &|_| false);
    let mut g = rng.tensor(dtype, rows * h, 1.0);
    zero_ambiguous(&st2, &x64, &fref, &mut g);
    let (dx, grads) = run_backward(&mut l, &x2, &g, rows)?;
    let bref = reference::backward(&st2, &x64, &data::to_f64(&g), rows);
    check_backward(chk, &st2, &all_seeds(&st2), rows, &x64, &g, &dx, &grads, &bref);
    Ok(())
}
