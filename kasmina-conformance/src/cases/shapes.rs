//! Shapes that break naive kernels: `C` = 1, 2, 3, 5, 7, 33, 127, 1000, 4099
//! (primes and sizes that are not multiples of any vector width or tile),
//! `S = 1` and `S = H`, `B` = 0, 1 and a prime. Each case runs the whole
//! contract ([`full_check`](super::full_check)): forward, telemetry, backward,
//! gradients, checksum.

use kasmina_core::{Backend, BlueprintType, LayerConfig, LifecycleState};

use super::{Ctx, SeedSpec, all_modes, build_state, full_check};
use crate::data::Gen;

const CHUNKS: [usize; 9] = [1, 2, 3, 5, 7, 33, 127, 1000, 4099];

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let rows: [usize; 3] = if ctx.full() { [0, 1, 1031] } else { [0, 1, 13] };
    let backend = ctx.backend;
    let kinds = BlueprintType::ALL;
    let mut layouts: Vec<(usize, Vec<SeedSpec>)> = Vec::new();
    for (i, c) in CHUNKS.iter().copied().enumerate() {
        layouts.push((
            c,
            vec![
                SeedSpec::new(LifecycleState::Fossilized, kinds[i % 4], 1.0),
                SeedSpec::new(LifecycleState::Grafting, kinds[(i + 1) % 4], 0.25),
                SeedSpec::new(LifecycleState::Dormant, kinds[(i + 2) % 4], 0.0),
            ],
        ));
    }
    // S = 1: the whole row is one seed.
    for (i, c) in [1usize, 7, 4099].into_iter().enumerate() {
        layouts.push((c, vec![SeedSpec::new(LifecycleState::Evaluating, kinds[(i + 3) % 4], 0.5)]));
    }
    // S = H: one column per seed, every state and type.
    let h = if ctx.full() { 4099 } else { 257 };
    let modes = all_modes();
    layouts.push((1, (0..h).map(|s| modes[s % modes.len()]).collect()));
    for dtype in ctx.dtypes("*") {
        for (k, (c, specs)) in layouts.iter().enumerate() {
            for &b in &rows {
                let name = format!("C={c}/S={}/B={b}", specs.len());
                ctx.case(&name, Some(dtype), |chk| {
                    let mut rng = Gen::new(0x5000 + k as u64 * 16 + b as u64);
                    let config = LayerConfig::new(specs.len() * c, specs.len())?;
                    let st = build_state(config, specs, &mut rng)?;
                    let x = rng.tensor(dtype, b * config.hidden_dim, 2.0);
                    let g = rng.tensor(dtype, b * config.hidden_dim, 1.0);
                    full_check(backend, chk, &st, &x, Some(g), b)
                });
            }
        }
    }
}
