//! The per-seed constants every backend's kernels read, derived once here from the state
//! (SPEC 4, 5.1, 5.3): the forward mode, the effective alpha, the strict-mode clamp band, the
//! CONV taps and ATTENTION's softmax. Backends lay these out for their devices as they like,
//! but take the values from [`SeedPlan::derive`] and [`softmax`], so a rule lives in one
//! place.
//!
//! [`kernel_checksum`] is the CRC-32 of what the kernels of a set of seeds read: the raw
//! records and weights the state checksum covers (SPEC 2.1), plus these derived constants.
//! Every backend reads its device copy back into the same canonical form
//! ([`KernelSeed`], [`kernel_crc`]); [`crate::KasminaLayer`] compares the two after every
//! upload and before every save, so a device that holds something other than what the host
//! meant is a typed error ([`crate::Error::DeviceIntegrity`]), never a silently wrong forward.

use crate::blueprint::BlueprintType;
use crate::checksum::{RawHeader, RawSeed};
use crate::config::StabilityMode;
use crate::lifecycle::{ForwardMode, LifecycleState};
use crate::state::{LayerState, clamp_bounds};

/// What the kernels need of one seed besides its weights, derived once per state change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedPlan {
    /// The forward mode of the seed's lifecycle state.
    pub mode: ForwardMode,
    /// The blueprint type (meaningful where `mode` is not identity).
    pub blueprint_type: BlueprintType,
    /// The blend weight `a`: 1 for FOSSILIZED, `clamp(alpha, 0, 1)` otherwise (0 for NaN).
    pub a: f32,
    /// The blueprint scale `s`.
    pub scale: f32,
    /// The strict-mode clamp band `(lo, hi)` of a blend or blueprint seed whose band is set.
    pub clamp: Option<(f32, f32)>,
    /// CONV's taps: the first three weights, 0 past the chunk.
    pub taps: [f32; 3],
}

impl SeedPlan {
    /// The plan of seed `i` of `state` (`i < num_seeds`, checked by the caller).
    pub fn derive(state: &LayerState, i: usize) -> Self {
        let s = &state.seeds;
        Self::of(
            s.lifecycle[i],
            s.blueprint_type[i],
            s.alpha[i],
            state.config.stability,
            (s.clamp_mean[i], s.clamp_std[i]),
            state.params.seed_weights(i),
            state.params.scales[i],
        )
    }

    /// The plan of a seed given its fields: `clamp` is `(clamp_mean, clamp_std)`, `weights`
    /// its `C` weights.
    pub fn of(
        lifecycle: LifecycleState,
        blueprint_type: BlueprintType,
        alpha: f32,
        stability: StabilityMode,
        clamp: (f32, f32),
        weights: &[f32],
        scale: f32,
    ) -> Self {
        let mode = lifecycle.forward_mode();
        let a = match mode {
            ForwardMode::Blueprint => 1.0,
            _ if alpha.is_nan() => 0.0,
            _ => alpha.clamp(0.0, 1.0),
        };
        let clamp = match mode {
            ForwardMode::Identity => None,
            _ => clamp_bounds(stability, clamp.0, clamp.1),
        };
        let tap = |k: usize| weights.get(k).copied().unwrap_or(0.0);
        Self { mode, blueprint_type, a, scale, clamp, taps: [tap(0), tap(1), tap(2)] }
    }

    /// The plan of an identity seed (what a fresh DORMANT seed derives to).
    pub const IDENTITY: Self = Self {
        mode: ForwardMode::Identity,
        blueprint_type: BlueprintType::Residual,
        a: 0.0,
        scale: 1.0,
        clamp: None,
        taps: [0.0; 3],
    };

    /// Whether the seed is not an identity seed (its output is a blend or the blueprint).
    pub fn is_active(&self) -> bool {
        self.mode != ForwardMode::Identity
    }

    /// Whether the kernels read this seed's softmax row (ATTENTION).
    pub fn uses_softmax(&self) -> bool {
        self.blueprint_type == BlueprintType::Attention
    }

    /// Feeds the plan's canonical bytes to `sink` (little-endian, no padding).
    pub fn write_canonical(&self, sink: &mut impl FnMut(&[u8])) {
        sink(&[self.mode as u8, self.blueprint_type.raw()]);
        sink(&self.a.to_le_bytes());
        sink(&self.scale.to_le_bytes());
        let (flag, lo, hi) = match self.clamp {
            Some((lo, hi)) => (1u8, lo, hi),
            None => (0u8, 0.0f32, 0.0f32),
        };
        sink(&[flag]);
        sink(&lo.to_le_bytes());
        sink(&hi.to_le_bytes());
        for t in self.taps {
            sink(&t.to_le_bytes());
        }
    }
}

/// `softmax(w)` with the maximum subtracted first (SPEC 4), in f64 (NaN-skipping maximum).
pub fn softmax64(w: &[f32]) -> Vec<f64> {
    let m = w.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let e: Vec<f64> = w.iter().map(|&v| (f64::from(v) - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// `softmax(w)` computed in f64 and rounded once to f32: ATTENTION's `p` as every backend's
/// kernels read it.
pub fn softmax(w: &[f32]) -> Vec<f32> {
    softmax64(w).iter().map(|&v| v as f32).collect()
}

/// One seed as its kernels see it, read back from a device (or taken from the host state):
/// the raw record, the weights, the derived constants and, for ATTENTION, the softmax row.
#[derive(Debug, Clone, Copy)]
pub struct KernelSeed<'a> {
    /// The seed's id.
    pub seed_id: usize,
    /// The raw fields (SPEC 2), scale included.
    pub record: RawSeed,
    /// The seed's `C` weights.
    pub weights: &'a [f32],
    /// The derived constants.
    pub plan: SeedPlan,
    /// `softmax(weights)` as the device holds it; read only where [`SeedPlan::uses_softmax`].
    pub softmax: &'a [f32],
}

impl KernelSeed<'_> {
    fn write_canonical(&self, sink: &mut impl FnMut(&[u8])) {
        let r = &self.record;
        sink(&(self.seed_id as u64).to_le_bytes());
        sink(&[r.lifecycle]);
        sink(&r.blueprint_id.to_le_bytes());
        sink(&[r.blueprint_type, r.grafting_strategy]);
        sink(&r.alpha.to_le_bytes());
        sink(&r.epochs_in_state.to_le_bytes());
        sink(&r.last_update_epoch.to_le_bytes());
        for v in [r.clamp_mean, r.clamp_std, r.scale] {
            sink(&v.to_le_bytes());
        }
        sink(&(self.weights.len() as u64).to_le_bytes());
        self.weights.iter().for_each(|v| sink(&v.to_le_bytes()));
        self.plan.write_canonical(sink);
        if self.plan.uses_softmax() {
            sink(&(self.softmax.len() as u64).to_le_bytes());
            self.softmax.iter().for_each(|v| sink(&v.to_le_bytes()));
        }
    }
}

/// CRC-32 of the canonical bytes of what the kernels read: the tag `KASMINA-KERNEL`, the
/// header, then every seed of `seeds` in the order given.
pub fn kernel_crc<'a>(header: RawHeader, seeds: impl IntoIterator<Item = KernelSeed<'a>>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut sink = |b: &[u8]| h.update(b);
    sink(b"KASMINA-KERNEL");
    sink(&[header.schema_version]);
    sink(&header.hidden_dim.to_le_bytes());
    sink(&header.num_seeds.to_le_bytes());
    sink(&header.epoch.to_le_bytes());
    for seed in seeds {
        seed.write_canonical(&mut sink);
    }
    h.finalize()
}

/// The header of `state` as the kernel checksum reads it.
pub fn header_of(state: &LayerState) -> RawHeader {
    RawHeader {
        schema_version: state.schema_version(),
        hidden_dim: state.config.hidden_dim as u32,
        num_seeds: state.config.num_seeds as u32,
        epoch: state.epoch,
    }
}

/// The host's kernel checksum of `seeds` (ids below `num_seeds`, checked by the caller): what
/// a device that holds exactly `state` gives from [`crate::Backend::kernel_checksum`].
pub fn kernel_checksum(state: &LayerState, seeds: &[usize]) -> u32 {
    let derived: Vec<(SeedPlan, Vec<f32>)> = seeds
        .iter()
        .map(|&i| {
            let plan = SeedPlan::derive(state, i);
            let p = if plan.uses_softmax() { softmax(state.params.seed_weights(i)) } else { Vec::new() };
            (plan, p)
        })
        .collect();
    kernel_crc(
        header_of(state),
        seeds.iter().zip(&derived).map(|(&i, (plan, p))| KernelSeed {
            seed_id: i,
            record: RawSeed::of(state, i),
            weights: state.params.seed_weights(i),
            plan: *plan,
            softmax: p,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerConfig;
    use crate::blueprint::GraftingStrategy;

    fn grafting_attention() -> LayerState {
        let mut cfg = LayerConfig::new(8, 2).unwrap();
        cfg.stability = StabilityMode::Strict { k: 2.0 };
        let mut st = LayerState::new(cfg).unwrap();
        let s = &mut st.seeds;
        s.lifecycle[1] = LifecycleState::Grafting;
        s.blueprint_type[1] = BlueprintType::Attention;
        s.grafting_strategy[1] = GraftingStrategy::FixedRamp;
        s.alpha[1] = 0.25;
        s.clamp_mean[1] = 1.0;
        s.clamp_std[1] = 0.5;
        st.params.weights[4..8].copy_from_slice(&[0.5, -1.0, 2.0, 0.25]);
        st.params.scales[1] = 3.0;
        st
    }

    #[test]
    fn plans_follow_the_spec() {
        let mut st = grafting_attention();
        let p = SeedPlan::derive(&st, 1);
        assert_eq!(p.mode, ForwardMode::Blend);
        assert_eq!((p.a, p.scale, p.clamp, p.taps), (0.25, 3.0, Some((0.0, 2.0)), [0.5, -1.0, 2.0]));
        // Identity seeds are never clamped; a fresh seed derives to the identity plan.
        assert_eq!(SeedPlan::derive(&st, 0), SeedPlan::IDENTITY);
        st.seeds.lifecycle[1] = LifecycleState::Training;
        assert_eq!(SeedPlan::derive(&st, 1).clamp, None);
        // FOSSILIZED blends with a = 1 whatever alpha holds.
        st.seeds.lifecycle[1] = LifecycleState::Fossilized;
        assert_eq!(SeedPlan::derive(&st, 1).a, 1.0);
        // Taps past a short chunk are 0.
        let short = SeedPlan::of(
            LifecycleState::Grafting,
            BlueprintType::Conv,
            0.5,
            StabilityMode::Off,
            (0.0, 0.0),
            &[7.0],
            1.0,
        );
        assert_eq!(short.taps, [7.0, 0.0, 0.0]);
    }

    #[test]
    fn softmax_subtracts_the_max_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 999.0]);
        let e = (-1.0f64).exp();
        let want = [1.0 / (2.0 + e), 1.0 / (2.0 + e), e / (2.0 + e)];
        for (got, want) in p.iter().zip(want) {
            assert_eq!(*got, want as f32);
        }
        let sum: f64 = softmax64(&[0.5, -1.0, 2.0, 0.25]).iter().sum();
        assert!((sum - 1.0).abs() < 1e-15);
    }

    #[test]
    fn the_kernel_checksum_sees_every_field_and_derived_constant() {
        let st = grafting_attention();
        let base = kernel_checksum(&st, &[0, 1]);
        assert_eq!(base, kernel_checksum(&st.clone(), &[0, 1]));
        // The seeds covered, and their order, are part of the bytes.
        assert_ne!(kernel_checksum(&st, &[1]), base);
        assert_ne!(kernel_checksum(&st, &[1, 0]), base);
        let mut changed = st.clone();
        changed.epoch += 1;
        assert_ne!(kernel_checksum(&changed, &[0, 1]), base);
        let mut changed = st.clone();
        changed.params.weights[7] = 0.5;
        assert_ne!(kernel_checksum(&changed, &[0, 1]), base);
        // A device copy whose derived constants or softmax differ from the host's, with the
        // same raw fields, gives another checksum.
        let host_plan = SeedPlan::derive(&st, 1);
        let p = softmax(st.params.seed_weights(1));
        let seed = |plan: SeedPlan, p: &[f32]| {
            kernel_crc(
                header_of(&st),
                [KernelSeed {
                    seed_id: 1,
                    record: RawSeed::of(&st, 1),
                    weights: st.params.seed_weights(1),
                    plan,
                    softmax: p,
                }],
            )
        };
        let host = seed(host_plan, &p);
        assert_eq!(host, kernel_checksum(&st, &[1]));
        assert_ne!(seed(SeedPlan { a: 0.5, ..host_plan }, &p), host);
        assert_ne!(seed(SeedPlan { clamp: None, ..host_plan }, &p), host);
        let mut q = p.clone();
        q[2] = f32::from_bits(q[2].to_bits() ^ 1);
        assert_ne!(seed(host_plan, &q), host);
    }
}
