//! Determinism (SPEC 5.2, 7): the same call gives bit-identical output,
//! telemetry and gradients, on the same layer twice and on a second layer
//! made from the same state (fixed reduction order, no float atomics). Sizes
//! are large enough for a backend to split the work among threads or blocks.

use kasmina_core::backend::{Accumulators, HostTensorData};
use kasmina_core::{Backend, LayerConfig, ParamGrads, StabilityMode};

use super::{Ctx, all_modes, build_state, layer, run_backward, run_forward};
use crate::check::Check;
use crate::data::{self, Gen};

fn tensor_bits(t: &HostTensorData) -> Vec<u32> {
    (0..data::len(t)).map(|i| data::bits(t, i)).collect()
}

fn acc_bits(a: &Accumulators) -> Vec<u64> {
    let mut v = Vec::new();
    for m in &a.moments {
        v.extend([m.count, m.mean.to_bits(), m.m2.to_bits(), m.min.to_bits(), m.max.to_bits(), m.dead, m.nonfinite]);
    }
    v.extend(a.grad_sq.iter().map(|g| g.to_bits()));
    v
}

fn grad_bits(g: &ParamGrads) -> Vec<u32> {
    g.dweights.iter().chain(&g.dscales).chain(&g.grad_norm).map(|v| v.to_bits()).collect()
}

fn same<T: PartialEq>(chk: &mut Check, what: &str, a: &[T], b: &[T]) {
    let diff = if a.len() != b.len() { a.len().max(b.len()) } else { a.iter().zip(b).filter(|(x, y)| x != y).count() };
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    chk.exact(what, diff, || format!("lengths {} and {}, first difference at {first:?}", a.len(), b.len()));
}

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let (s, c, rows) = if ctx.full() { (64, 1000, 2053) } else { (12, 333, 97) };
    let backend = ctx.backend;
    for dtype in ctx.dtypes("*") {
        ctx.case("repeat", Some(dtype), |chk| {
            let mut rng = Gen::new(0xD0);
            let modes = all_modes();
            let mut specs: Vec<_> = (0..s).map(|i| modes[(i * 7) % modes.len()]).collect();
            for sp in specs.iter_mut().step_by(2) {
                sp.clamp = Some((0.2, 0.5));
            }
            let config = LayerConfig::new(s * c, s)?.with_stability(StabilityMode::Strict { k: 2.0 });
            let st = build_state(config, &specs, &mut rng)?;
            let n = rows * config.hidden_dim;
            let x = rng.tensor(dtype, n, 3.0);
            let g = rng.tensor(dtype, n, 1.0);
            let (mut a, mut b) = (layer(backend, &st)?, layer(backend, &st)?);
            let ya1 = run_forward(&mut a, &x, rows)?;
            let acc_a1 = a.accumulators()?;
            let ya2 = run_forward(&mut a, &x, rows)?;
            let yb = run_forward(&mut b, &x, rows)?;
            let acc_b1 = b.accumulators()?;
            same(chk, "y, same layer", &tensor_bits(&ya1), &tensor_bits(&ya2));
            same(chk, "y, second layer", &tensor_bits(&ya1), &tensor_bits(&yb));
            same(chk, "telemetry of one call, second layer", &acc_bits(&acc_a1), &acc_bits(&acc_b1));
            run_forward(&mut b, &x, rows)?;
            same(chk, "telemetry of two calls", &acc_bits(&a.accumulators()?), &acc_bits(&b.accumulators()?));
            let (dxa1, ga1) = run_backward(&mut a, &x, &g, rows)?;
            let (dxa2, ga2) = run_backward(&mut a, &x, &g, rows)?;
            let (dxb, gb) = run_backward(&mut b, &x, &g, rows)?;
            same(chk, "dx, same layer", &tensor_bits(&dxa1), &tensor_bits(&dxa2));
            same(chk, "dx, second layer", &tensor_bits(&dxa1), &tensor_bits(&dxb));
            same(chk, "parameter gradients, same layer", &grad_bits(&ga1), &grad_bits(&ga2));
            same(chk, "parameter gradients, second layer", &grad_bits(&ga1), &grad_bits(&gb));
            run_backward(&mut b, &x, &g, rows)?;
            same(chk, "accumulators after backward", &acc_bits(&a.accumulators()?), &acc_bits(&b.accumulators()?));
            Ok(())
        });
    }
}
