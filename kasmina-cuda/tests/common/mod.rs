//! Helpers shared by the GPU test binaries of this crate (`gpu.rs`, `hopper_gpu.rs`): a
//! deterministic generator, lifecycle driving, a layer that cycles through every state and
//! blueprint type, and comparisons against the f64 reference.
#![allow(dead_code)] // each test binary uses its own subset

pub use kasmina_conformance::toolkit::{bits, rel_l2, to_f64, tolerance as tol};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{
    BlueprintType, DType, GraftingStrategy, LayerConfig, LayerState, LifecycleState, StabilityMode, TransitionReason,
};

/// Whether `KASMINA_REQUIRE_GPU=1` turns a missing GPU into a failure.
pub fn require_gpu() -> bool {
    std::env::var("KASMINA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of 4 uniforms), mean 0, std ~1.
    pub fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.uniform()).sum::<f64>() - 2.0) * 1.7320508
    }
}

pub fn drive(st: &mut LayerState, seed: usize, target: LifecycleState, ty: BlueprintType) {
    use LifecycleState::*;
    let path: &[LifecycleState] = match target {
        Dormant => &[],
        Germinated => &[Germinated],
        Training => &[Germinated, Training],
        Grafting => &[Germinated, Training, Grafting],
        Stabilization => &[Germinated, Training, Grafting, Stabilization],
        Evaluating => &[Germinated, Training, Grafting, Stabilization, Evaluating],
        FineTuning => &[Germinated, Training, Grafting, Stabilization, Evaluating, FineTuning],
        Fossilized => &[Germinated, Training, Grafting, Stabilization, Evaluating, FineTuning, Fossilized],
        Culled => &[Germinated, Training, Culled],
        Cancelled => &[Germinated, Cancelled],
        RolledBack => &[Germinated, Training, RolledBack],
    };
    for to in path {
        if *to == Germinated {
            st.germinate(seed, 9, ty, GraftingStrategy::FixedRamp).unwrap();
        } else {
            st.transition(seed, *to, TransitionReason::Requested).unwrap();
        }
    }
}

/// A layer whose seeds cycle through every lifecycle state and blueprint type.
pub fn mixed_state(h: usize, s: usize, stability: StabilityMode, rng: &mut Rng) -> LayerState {
    let mut st = LayerState::new(LayerConfig::new(h, s).unwrap().with_stability(stability)).unwrap();
    let states = LifecycleState::ALL;
    for i in 0..s {
        let ty = BlueprintType::ALL[i % 4];
        let target = states[(i / 4 + i) % states.len()];
        drive(&mut st, i, target, ty);
        if matches!(st.seeds.lifecycle[i].forward_mode(), kasmina_core::ForwardMode::Blend) {
            st.seeds.alpha[i] = 0.1 + 0.8 * rng.uniform() as f32;
        }
        for w in st.params.seed_weights_mut(i) {
            *w = rng.normal() as f32 * 0.5;
        }
        st.params.scales[i] = 0.5 + rng.uniform() as f32;
        if i % 3 == 0 {
            st.seeds.clamp_mean[i] = 0.1;
            st.seeds.clamp_std[i] = 0.3;
        }
    }
    st
}

pub fn host(dtype: DType, v: &[f64]) -> HostTensorData {
    let f: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    HostTensorData::from_f32(dtype, &f)
}
