//! Randomized cases from a seeded ChaCha8 generator: random shapes, seed
//! states, alphas, clamp statistics, stability mode, parameters, input scale,
//! and NaN/±Inf inputs (in either stability mode, forward and backward). A third of
//! the cases reach their state through the lifecycle API instead: random requests
//! (germinations, transitions the table allows or refuses) over random epochs, each
//! ended with random epoch signals and gradient norms, so every grafting strategy
//! moves alpha. 1000 cases at full size, 60 at quick size. Each row is named by its
//! generator seed; `KASMINA_CONFORMANCE_SEED=<n>` reruns that one case.

use kasmina_core::backend::Accumulators;
use kasmina_core::{
    Backend, BlueprintType, DType, EpochSignals, GraftingStrategy, LayerConfig, LayerState, LifecycleState, SeedSignal,
    StabilityMode, TransitionReason,
};

use super::{Ctx, SeedSpec, build_state, full_check};
use crate::data::{self, Gen};
use crate::reference::{self, SeedMode};

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let supported = ctx.dtypes("*");
    let seeds: Vec<u64> = match std::env::var("KASMINA_CONFORMANCE_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => vec![seed],
        None if ctx.full() => (1000..2000).collect(),
        None => (1..=60).collect(),
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
            // Full cases stay under about 2M elements, so 1000 of them take minutes, not hours.
            let rows = if full { rng.below(0, (2_000_000 / (s * c)).clamp(2, 2000)) } else { rng.below(0, 18) };
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
            let driven = rng.chance(0.33);
            let st = if driven { driven_state(config, &mut rng)? } else { build_state(config, &specs, &mut rng)? };
            let h = config.hidden_dim;
            let scale = 10f64.powf(rng.uniform(-3.0, 3.0));
            let mut x = rng.tensor(dtype, rows * h, scale);
            let nonfinite = rng.chance(0.3);
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
            let g = Some(rng.tensor(dtype, rows * h, 1.0));
            chk.repro = Some(format!(
                "KASMINA_CONFORMANCE_SEED={seed} ({dtype}, S={s} C={c} B={rows}, {stability:?}{}{})",
                if driven { ", state through the lifecycle API" } else { "" },
                if nonfinite { ", non-finite inputs" } else { "" }
            ));
            full_check(backend, chk, &st, &x, g, rows)
        });
    }
}

/// A layer state reached through the lifecycle API from all-dormant seeds: over 1 to 40 epochs,
/// random requests (germinations with random blueprint types and grafting strategies,
/// transitions to random targets, which the lifecycle table accepts or refuses without a
/// change), each epoch ended by `advance_epoch` with random gradient norms and signals. Then
/// random parameters and, in strict mode, random clamp statistics for some seeds.
fn driven_state(config: LayerConfig, rng: &mut Gen) -> Result<LayerState, kasmina_core::Error> {
    let mut st = LayerState::new(config)?;
    let s = st.num_seeds();
    for _ in 0..rng.below(1, 41) {
        for seed in 0..s {
            if !rng.chance(0.35) {
                continue;
            }
            if st.seeds.lifecycle[seed] == LifecycleState::Dormant {
                let id = rng.below(1, 1000) as u16;
                st.germinate(seed, id, rng.pick(BlueprintType::ALL), rng.pick(GraftingStrategy::ALL))?;
            } else {
                let before = st.clone();
                if st.transition(seed, rng.pick(LifecycleState::ALL), TransitionReason::Requested).is_err() {
                    assert_eq!(st, before, "a refused transition changed the state");
                }
            }
        }
        let mut acc = Accumulators::empty(s);
        for g in &mut acc.grad_sq {
            *g = rng.uniform(0.0, 1.6).powi(2);
        }
        let signals = EpochSignals {
            seeds: (0..s)
                .map(|_| SeedSignal {
                    improvement: rng.uniform(-0.5, 0.5) as f32,
                    drift: rng.uniform(0.0, 0.25) as f32,
                })
                .collect(),
        };
        st.advance_epoch(&acc, &signals)?;
    }
    let c = config.chunk_size();
    for i in 0..s {
        let w = rng.f32s(c, -1.5, 1.5);
        st.params.seed_weights_mut(i).copy_from_slice(&w);
        st.params.scales[i] = rng.uniform(0.5, 1.5) as f32;
        if matches!(config.stability, StabilityMode::Strict { .. }) && rng.chance(0.6) {
            st.seeds.clamp_mean[i] = rng.uniform(-1.0, 1.0) as f32;
            st.seeds.clamp_std[i] = rng.uniform(0.05, 2.0) as f32;
        }
    }
    st.validate()?;
    Ok(st)
}
