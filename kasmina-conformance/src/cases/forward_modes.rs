//! Forward output for every lifecycle state × blueprint type (SPEC 3, 4, 5.1),
//! one row per (state, type, dtype): identity seeds bit for bit, NaN payloads
//! and infinities included; blend and FOSSILIZED seeds within SPEC 8's
//! tolerance. A second case feeds NaN and ±Inf to every seed.

use kasmina_core::{Backend, BlueprintType, LayerConfig, LayerState};

use super::{Ctx, all_modes, build_state, check_tensor, layer, run_forward};
use crate::check::Check;
use crate::data::{self, Gen};
use crate::reference::{self, SeedMode};

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let (c, rows) = if ctx.full() { (1000, 761) } else { (33, 13) };
    let specs = all_modes();
    for dtype in ctx.dtypes("*") {
        let backend = ctx.backend;
        let group = ctx.group;
        ctx.cases("all_modes", Some(dtype), |checks| {
            let mut rng = Gen::new(0xF0);
            let config = LayerConfig::new(specs.len() * c, specs.len())?;
            let st = build_state(config, &specs, &mut rng)?;
            let h = config.hidden_dim;
            let mut x = rng.tensor(dtype, rows * h, 2.0);
            // NaN payloads and infinities in identity seeds' columns: copied bit for bit.
            let mut k = 0;
            for s in 0..st.num_seeds() {
                if reference::seed_mode(&st, s) == SeedMode::Identity {
                    let payloads = data::nan_payloads(dtype);
                    let i = (k % rows) * h + s * c + (k % c);
                    data::set_bits(&mut x, i, payloads[k % 4]);
                    let j = ((k + 3) % rows) * h + s * c + ((k + 5) % c);
                    data::set_bits(&mut x, j, data::bits(&data::from_f64(dtype, &[f64::NEG_INFINITY]), 0));
                    k += 1;
                }
            }
            let mut l = layer(backend, &st)?;
            let y = run_forward(&mut l, &x, rows)?;
            let fref = reference::forward(&st, &data::to_f64(&x), rows);
            for (s, sp) in specs.iter().enumerate() {
                let mut chk = Check::new(format!("{group}/{}/{}", sp.lifecycle, sp.kind), Some(dtype));
                let mut sel = vec![false; specs.len()];
                sel[s] = true;
                check_tensor(&mut chk, "y", &st, &sel, &y, &x, &fref.y, &|_| false);
                checks.push(chk);
            }
            Ok(())
        });
        ctx.case("nonfinite_inputs", Some(dtype), |chk| nonfinite(backend, chk, dtype, c, rows, &specs));
    }
}

/// Every seed sees NaN and ±Inf. Blend follows `(1 - a) x + a t` literally, so
/// `x = ±Inf` gives NaN where `t` is the opposite infinity (or where `a = 1`
/// and `0 * Inf` appears), as in the reference. `relu(NaN)` is not specified:
/// FOSSILIZED MLP elements with a NaN input are not compared.
fn nonfinite<B: Backend>(
    backend: &B,
    chk: &mut Check,
    dtype: kasmina_core::DType,
    c: usize,
    rows: usize,
    specs: &[super::SeedSpec],
) -> kasmina_core::Result<()> {
    let mut rng = Gen::new(0xF1);
    let config = LayerConfig::new(specs.len() * c, specs.len())?;
    let st: LayerState = build_state(config, specs, &mut rng)?;
    let h = config.hidden_dim;
    let mut x = rng.tensor(dtype, rows * h, 2.0);
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    for i in 0..rows * h {
        if rng.chance(0.1) {
            let v = data::from_f64(dtype, &[rng.pick(&specials)]);
            data::set_bits(&mut x, i, data::bits(&v, 0));
        }
    }
    let x64 = data::to_f64(&x);
    let mut l = layer(backend, &st)?;
    let y = run_forward(&mut l, &x, rows)?;
    let fref = reference::forward(&st, &x64, rows);
    let unspecified = |i: usize| {
        let s = (i % h) / c;
        x64[i].is_nan()
            && st.seeds.blueprint_type[s] == BlueprintType::Mlp
            && reference::seed_mode(&st, s) == SeedMode::Blueprint
    };
    check_tensor(chk, "y", &st, &super::all_seeds(&st), &y, &x, &fref.y, &unspecified);
    Ok(())
}
