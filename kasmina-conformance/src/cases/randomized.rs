//! Randomized cases from a seeded ChaCha8 generator: random shapes, seed
//! states, alphas, clamp statistics, stability mode, parameters, input scale,
//! and (without strict mode) NaN/±Inf inputs. Each row is named by its
//! generator seed; `KASMINA_CONFORMANCE_SEED=<n>` reruns that one case.

use kasmina_core::{Backend, BlueprintType, DType, LayerConfig, LifecycleState, StabilityMode};

use super::{Ctx, SeedSpec, build_state, full_check};
use crate::data::{self, Gen};
use crate::reference::{self, SeedMode};

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let supported = ctx.dtypes("*");
    let seeds: Vec<u64> = match std::env::var("KASMINA_CONFORMANCE_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => vec![seed],
        None if ctx.full() => (1000..1200).collect(),
        None => (1..=30).collect(),
    };
    let full = ctx.full();
    let backend = ctx.backend;
    for seed in seeds {
        let dtype = DType::ALL[(seed % 3) as usize];
        if !supported.contains(&dtype) {
            continue;
        }
        ctx.case(&format!("seed={seed}"), Some(dtype), |chk| {
            let mut rng = Gen::new(seed);
            let s = if rng.chance(0.15) { rng.below(9, 65) } else { rng.below(1, 9) };
            let c = if rng.chance(0.4) { rng.below(1, 10) } else { rng.below(10, if full { 5000 } else { 300 }) };
            // Full cases stay under about 8M elements, so 200 of them take minutes, not hours.
            let rows = if full { rng.below(0, (8_000_000 / (s * c)).clamp(2, 2000)) } else { rng.below(0, 18) };
            let stability = if rng.chance(0.3) {
                StabilityMode::Strict { k: rng.uniform(0.5, 4.0) as f32 }
            } else {
                StabilityMode::Off
            };
            let specs: Vec<SeedSpec> = (0..s)
                .map(|_| {
                    let alpha = match rng.below(0, 6) {
                        0 => 0.0,
                        1 => 1.0,
                        _ => rng.uniform(0.0, 1.0) as f32,
                    };
                    let mut sp = SeedSpec::new(rng.pick(LifecycleState::ALL), rng.pick(BlueprintType::ALL), alpha);
                    if rng.chance(0.6) {
                        sp.clamp = Some((rng.uniform(-1.0, 1.0) as f32, rng.uniform(0.05, 2.0) as f32));
                    }
                    sp
                })
                .collect();
            let config = LayerConfig::new(s * c, s)?.with_stability(stability);
            let st = build_state(config, &specs, &mut rng)?;
            let h = config.hidden_dim;
            let scale = 10f64.powf(rng.uniform(-3.0, 3.0));
            let mut x = rng.tensor(dtype, rows * h, scale);
            let nonfinite = stability == StabilityMode::Off && rng.chance(0.3);
            if nonfinite {
                for i in 0..rows * h {
                    if rng.chance(0.05) {
                        let seed_of = (i % h) / c;
                        // relu(NaN) is not specified: FOSSILIZED MLP seeds get infinities only.
                        let mlp_fossil = st.seeds.blueprint_type[seed_of] == BlueprintType::Mlp
                            && reference::seed_mode(&st, seed_of) == SeedMode::Blueprint;
                        let v = if mlp_fossil {
                            rng.pick(&[f64::INFINITY, f64::NEG_INFINITY])
                        } else {
                            rng.pick(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
                        };
                        data::set_bits(&mut x, i, data::bits(&data::from_f64(dtype, &[v]), 0));
                    }
                }
            }
            let g = (!nonfinite).then(|| rng.tensor(dtype, rows * h, 1.0));
            chk.repro = Some(format!(
                "KASMINA_CONFORMANCE_SEED={seed} ({dtype}, S={s} C={c} B={rows}, {stability:?}{})",
                if nonfinite { ", non-finite inputs, forward only" } else { "" }
            ));
            full_check(backend, chk, &st, &x, g, rows)
        });
    }
}
