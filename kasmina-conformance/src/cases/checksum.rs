//! State on the device (SPEC 2.1, 8): upload, transition, upload again; after
//! every change the device-side checksum and kernel checksum (raw state plus the
//! derived constants the kernels read, read back from the device) equal the host's, a fresh layer made from the same state agrees, and a forward
//! at the end uses the uploaded parameters.

use kasmina_core::{
    Backend, BlueprintType, EpochSignals, GraftingStrategy, LayerConfig, LayerState, LifecycleState, StabilityMode,
};

use super::{Ctx, Layer, all_seeds, check_tensor, layer, run_forward};
use crate::check::Check;
use crate::data::{self, Gen};
use crate::reference;

fn agree<B: Backend>(backend: &B, chk: &mut Check, l: &Layer<'_, B>, step: &str) -> kasmina_core::Result<()> {
    chk.equal(format!("after {step}: device checksum"), l.device_checksum()?, l.checksum());
    chk.equal(format!("after {step}: device kernel checksum"), l.device_kernel_checksum()?, l.kernel_checksum());
    let fresh = layer(backend, l.state())?;
    chk.equal(format!("after {step}: fresh layer's device checksum"), fresh.device_checksum()?, l.checksum());
    chk.equal(
        format!("after {step}: fresh layer's device kernel checksum"),
        fresh.device_kernel_checksum()?,
        l.kernel_checksum(),
    );
    Ok(())
}

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let backend = ctx.backend;
    ctx.case("lifecycle_sequence", None, |chk| {
        use LifecycleState::*;
        let (s, c) = (4, 5);
        let config = LayerConfig::new(s * c, s)?.with_stability(StabilityMode::strict());
        let mut l = layer(backend, &LayerState::new(config)?)?;
        let mut rng = Gen::new(0xC5);
        let mut seen = vec![l.checksum()];
        agree(backend, chk, &l, "creation")?;
        l.request_germination(0, 11, BlueprintType::Conv, GraftingStrategy::FixedRamp)?;
        agree(backend, chk, &l, "germination")?;
        l.transition(0, Training)?;
        agree(backend, chk, &l, "TRAINING")?;
        seen.push(l.checksum());
        l.set_seed_params(0, &rng.f32s(c, -1.0, 1.0), 2.5)?;
        agree(backend, chk, &l, "set_seed_params")?;
        l.transition(0, Grafting)?;
        agree(backend, chk, &l, "GRAFTING")?;
        l.set_alpha(0, 0.4)?;
        agree(backend, chk, &l, "set_alpha")?;
        seen.push(l.checksum());
        let x = rng.tensor(kasmina_core::DType::F32, 3 * s * c, 2.0);
        run_forward(&mut l, &x, 3)?;
        l.end_epoch(&EpochSignals::none())?;
        agree(backend, chk, &l, "end_epoch (strict statistics, alpha step)")?;
        seen.push(l.checksum());
        l.set_params(&rng.f32s(s * c, -1.0, 1.0), &rng.f32s(s, 0.5, 2.0))?;
        agree(backend, chk, &l, "set_params")?;
        l.request_germination(1, 12, BlueprintType::Attention, GraftingStrategy::PerformanceLinked)?;
        l.cancel_germination(1)?;
        agree(backend, chk, &l, "cancel_germination")?;
        l.end_epoch(&EpochSignals::none())?;
        chk.equal("cancelled seed returns to DORMANT", l.state().seeds.lifecycle[1], Dormant);
        agree(backend, chk, &l, "CANCELLED -> DORMANT")?;
        l.request_germination(2, 13, BlueprintType::Mlp, GraftingStrategy::GradNormGated)?;
        l.transition(2, Training)?;
        l.transition(2, Culled)?;
        agree(backend, chk, &l, "CULLED")?;
        for e in 0..10 {
            l.end_epoch(&EpochSignals::none())?;
            agree(backend, chk, &l, &format!("embargo epoch {e}"))?;
        }
        chk.equal("culled seed returns to DORMANT after the embargo", l.state().seeds.lifecycle[2], Dormant);
        for to in [Stabilization, Evaluating, FineTuning, Fossilized] {
            if l.state().seeds.lifecycle[0] != to {
                l.transition(0, to)?;
            }
            agree(backend, chk, &l, &format!("{to}"))?;
        }
        seen.push(l.checksum());
        seen.dedup();
        chk.require("the host checksum changes with the state", seen.len() >= 4, || format!("{seen:x?}"));
        let st = l.state().clone();
        let x = rng.tensor(kasmina_core::DType::F32, 5 * s * c, 2.0);
        let y = run_forward(&mut l, &x, 5)?;
        let fref = reference::forward(&st, &data::to_f64(&x), 5);
        check_tensor(chk, "y with the uploaded state", &st, &all_seeds(&st), &y, &x, &fref.y, &|_| false);
        Ok(())
    });
    ctx.case("random_states", None, |chk| {
        let mut rng = Gen::new(0xC6);
        for k in 0..20 {
            let s = rng.below(1, 9);
            let c = rng.below(1, 40);
            let specs: Vec<_> = (0..s)
                .map(|_| {
                    let l = rng.pick(LifecycleState::ALL);
                    let mut sp = super::SeedSpec::new(l, rng.pick(BlueprintType::ALL), rng.uniform(0.0, 1.0) as f32);
                    if rng.chance(0.5) {
                        sp.clamp = Some((rng.uniform(-1.0, 1.0) as f32, rng.uniform(0.0, 2.0) as f32));
                    }
                    sp
                })
                .collect();
            let mut st = super::build_state(LayerConfig::new(s * c, s)?, &specs, &mut rng)?;
            st.epoch = rng.below(0, 100_000) as u32;
            let l = layer(backend, &st)?;
            chk.equal(
                format!("state {k}: device checksum"),
                l.device_checksum()?,
                kasmina_core::checksum::checksum(&st),
            );
            let all: Vec<usize> = (0..s).collect();
            chk.equal(
                format!("state {k}: device kernel checksum"),
                l.device_kernel_checksum()?,
                kasmina_core::plan::kernel_checksum(&st, &all),
            );
            // One seed alone, and the seeds in reverse order, as an upload of some seeds checks.
            let last = [s - 1];
            chk.equal(
                format!("state {k}: device kernel checksum of seed {}", s - 1),
                backend.kernel_checksum(l.device_layer(), &last)?,
                kasmina_core::plan::kernel_checksum(&st, &last),
            );
            let rev: Vec<usize> = (0..s).rev().collect();
            chk.equal(
                format!("state {k}: device kernel checksum, seeds in reverse"),
                backend.kernel_checksum(l.device_layer(), &rev)?,
                kasmina_core::plan::kernel_checksum(&st, &rev),
            );
        }
        Ok(())
    });
}
