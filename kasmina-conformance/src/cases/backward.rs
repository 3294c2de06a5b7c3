//! Backward (SPEC 7) for every lifecycle state × blueprint type, one row per
//! (state, type, dtype): `dx` (identity seeds: `dx = g` bit for bit),
//! `dweights`, `dscales` and the call's `grad_norm`; then `Σ g²` in the
//! accumulators, and zero parameter gradients before any backward call.

use kasmina_core::{Backend, LayerConfig};

use super::{Ctx, all_modes, build_state, check_backward, layer, run_backward};
use crate::check::{Check, reduction_tolerance};
use crate::data::{self, Gen};
use crate::reference;

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let (c, rows) = if ctx.full() { (1000, 761) } else { (33, 13) };
    let specs = all_modes();
    let backend = ctx.backend;
    ctx.case("before_any_call", None, |chk| {
        let mut rng = Gen::new(0xB0);
        let st = build_state(LayerConfig::new(specs.len() * 3, specs.len())?, &specs, &mut rng)?;
        let l = layer(backend, &st)?;
        let g = l.backend().param_grads(l.device_layer())?;
        let zero = g.dweights.iter().chain(&g.dscales).chain(&g.grad_norm).all(|v| *v == 0.0);
        chk.require("parameter gradients are zeros before any backward", zero, || format!("{g:?}"));
        chk.equal(
            "lengths",
            (g.dweights.len(), g.dscales.len(), g.grad_norm.len()),
            (specs.len() * 3, specs.len(), specs.len()),
        );
        Ok(())
    });
    for dtype in ctx.dtypes("*") {
        let group = ctx.group;
        ctx.cases("all_modes", Some(dtype), |checks| {
            let mut rng = Gen::new(0xB1);
            let config = LayerConfig::new(specs.len() * c, specs.len())?;
            let st = build_state(config, &specs, &mut rng)?;
            let h = config.hidden_dim;
            let x = rng.tensor(dtype, rows * h, 2.0);
            let g = rng.tensor(dtype, rows * h, 1.0);
            let mut l = layer(backend, &st)?;
            let (dx, grads) = run_backward(&mut l, &x, &g, rows)?;
            let bref = reference::backward(&st, &data::to_f64(&x), &data::to_f64(&g), rows);
            for (s, sp) in specs.iter().enumerate() {
                let mut chk = Check::new(format!("{group}/{}/{}", sp.lifecycle, sp.kind), Some(dtype));
                let mut sel = vec![false; specs.len()];
                sel[s] = true;
                check_backward(&mut chk, &st, &sel, rows, &data::to_f64(&x), &g, &dx, &grads, &bref);
                checks.push(chk);
            }
            let mut chk = Check::new(format!("{group}/accumulated_grad_sq"), Some(dtype));
            let acc = l.accumulators()?;
            for s in 0..specs.len() {
                chk.close(
                    format!("seed {s}"),
                    acc.grad_sq[s],
                    bref.grad_sq[s],
                    2.0 * reduction_tolerance(rows * c),
                    0.0,
                );
            }
            chk.equal("device checksum", l.device_checksum()?, l.checksum());
            checks.push(chk);
            Ok(())
        });
    }
}
