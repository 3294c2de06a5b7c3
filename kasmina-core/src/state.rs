//! The seed state in structure-of-arrays form (SPEC 2) and the pure state
//! machine over it (SPEC 3, 6). Every mutation here is all-or-nothing: an
//! error leaves the state as it was.

use std::collections::BTreeMap;

use crate::backend::Accumulators;
use crate::blueprint::{BlueprintType, GraftingStrategy};
use crate::config::{LayerConfig, StabilityMode};
use crate::error::{Error, Result, try_filled};
use crate::grafting::{self, EpochSignals};
use crate::lifecycle::{self, LifecycleState, TransitionEvent, TransitionReason};
use crate::{CLAMP_UNSET, SCHEMA_VERSION};

/// Per-seed state, one array per field, index = seed id (SPEC 2).
///
/// Equality compares floats bit for bit (so two unset NaN clamp values are
/// equal), the same notion of sameness the checksum has.
#[derive(Debug, Clone)]
pub struct SeedStates {
    /// Lifecycle state.
    pub lifecycle: Vec<LifecycleState>,
    /// Opaque blueprint artifact id; 0 = none.
    pub blueprint_id: Vec<u16>,
    /// Blueprint type.
    pub blueprint_type: Vec<BlueprintType>,
    /// Grafting strategy.
    pub grafting_strategy: Vec<GraftingStrategy>,
    /// Blend factor in [0, 1].
    pub alpha: Vec<f32>,
    /// Epochs since the last transition (saturating).
    pub epochs_in_state: Vec<u16>,
    /// Epoch of the last transition.
    pub last_update_epoch: Vec<u32>,
    /// Strict-mode reference mean; [`CLAMP_UNSET`] when not set.
    pub clamp_mean: Vec<f32>,
    /// Strict-mode reference standard deviation; [`CLAMP_UNSET`] when not set.
    pub clamp_std: Vec<f32>,
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl PartialEq for SeedStates {
    fn eq(&self, o: &Self) -> bool {
        self.lifecycle == o.lifecycle
            && self.blueprint_id == o.blueprint_id
            && self.blueprint_type == o.blueprint_type
            && self.grafting_strategy == o.grafting_strategy
            && bits_eq(&self.alpha, &o.alpha)
            && self.epochs_in_state == o.epochs_in_state
            && self.last_update_epoch == o.last_update_epoch
            && bits_eq(&self.clamp_mean, &o.clamp_mean)
            && bits_eq(&self.clamp_std, &o.clamp_std)
    }
}

impl PartialEq for BlueprintParams {
    fn eq(&self, o: &Self) -> bool {
        self.chunk_size == o.chunk_size && bits_eq(&self.weights, &o.weights) && bits_eq(&self.scales, &o.scales)
    }
}

impl SeedStates {
    /// `num_seeds` dormant seeds, allocated fallibly ([`crate::error::try_filled`]).
    pub fn try_dormant(num_seeds: usize) -> Result<Self> {
        let f = |what: &str| format!("{what} of {num_seeds} seeds");
        Ok(Self {
            lifecycle: try_filled(num_seeds, LifecycleState::Dormant, &f("lifecycle"))?,
            blueprint_id: try_filled(num_seeds, 0, &f("blueprint_id"))?,
            blueprint_type: try_filled(num_seeds, BlueprintType::Residual, &f("blueprint_type"))?,
            grafting_strategy: try_filled(num_seeds, GraftingStrategy::FixedRamp, &f("grafting_strategy"))?,
            alpha: try_filled(num_seeds, 0.0, &f("alpha"))?,
            epochs_in_state: try_filled(num_seeds, 0, &f("epochs_in_state"))?,
            last_update_epoch: try_filled(num_seeds, 0, &f("last_update_epoch"))?,
            clamp_mean: try_filled(num_seeds, CLAMP_UNSET, &f("clamp_mean"))?,
            clamp_std: try_filled(num_seeds, CLAMP_UNSET, &f("clamp_std"))?,
        })
    }

    /// `num_seeds` dormant seeds (aborts if the memory cannot be had: [`SeedStates::try_dormant`]
    /// reports that as an error instead).
    pub fn dormant(num_seeds: usize) -> Self {
        Self {
            lifecycle: vec![LifecycleState::Dormant; num_seeds],
            blueprint_id: vec![0; num_seeds],
            blueprint_type: vec![BlueprintType::Residual; num_seeds],
            grafting_strategy: vec![GraftingStrategy::FixedRamp; num_seeds],
            alpha: vec![0.0; num_seeds],
            epochs_in_state: vec![0; num_seeds],
            last_update_epoch: vec![0; num_seeds],
            clamp_mean: vec![CLAMP_UNSET; num_seeds],
            clamp_std: vec![CLAMP_UNSET; num_seeds],
        }
    }

    /// The number of seeds (length of every array).
    pub fn len(&self) -> usize {
        self.lifecycle.len()
    }

    /// Whether there are no seeds.
    pub fn is_empty(&self) -> bool {
        self.lifecycle.is_empty()
    }

    /// Whether the clamp statistics of `seed` are set (both not NaN).
    pub fn clamp_is_set(&self, seed: usize) -> bool {
        !self.clamp_mean[seed].is_nan() && !self.clamp_std[seed].is_nan()
    }
}

/// Blueprint parameters: `weights[S, C]` row-major and `scales[S]` (SPEC 2).
/// Equality is bitwise, as for [`SeedStates`].
#[derive(Debug, Clone)]
pub struct BlueprintParams {
    /// `C`, the length of each seed's weight row.
    pub chunk_size: usize,
    /// `weights[i * C + j]` belongs to seed `i`.
    pub weights: Vec<f32>,
    /// One scale per seed.
    pub scales: Vec<f32>,
}

impl BlueprintParams {
    /// Fresh parameters, weights 0 and scale 1, allocated fallibly ([`crate::error::try_filled`]).
    pub fn try_fresh(num_seeds: usize, chunk_size: usize) -> Result<Self> {
        let n = num_seeds.checked_mul(chunk_size).ok_or_else(|| Error::OutOfMemory {
            what: format!("weights [{num_seeds}, {chunk_size}]"),
            // Saturating: S * C * 4 may pass even u128 for sizes near usize::MAX.
            bytes: (num_seeds as u128 * chunk_size as u128).saturating_mul(4),
        })?;
        Ok(Self {
            chunk_size,
            weights: try_filled(n, 0.0, &format!("weights [{num_seeds}, {chunk_size}]"))?,
            scales: try_filled(num_seeds, 1.0, &format!("scales [{num_seeds}]"))?,
        })
    }

    /// Fresh parameters: weights 0, scale 1 (aborts if the memory cannot be had:
    /// [`BlueprintParams::try_fresh`] reports that as an error instead).
    pub fn fresh(num_seeds: usize, chunk_size: usize) -> Self {
        Self { chunk_size, weights: vec![0.0; num_seeds * chunk_size], scales: vec![1.0; num_seeds] }
    }

    /// The weight row of one seed.
    pub fn seed_weights(&self, seed: usize) -> &[f32] {
        &self.weights[seed * self.chunk_size..(seed + 1) * self.chunk_size]
    }

    /// The weight row of one seed, mutable.
    pub fn seed_weights_mut(&mut self, seed: usize) -> &mut [f32] {
        &mut self.weights[seed * self.chunk_size..(seed + 1) * self.chunk_size]
    }

    fn reset_seed(&mut self, seed: usize) {
        self.seed_weights_mut(seed).fill(0.0);
        self.scales[seed] = 1.0;
    }
}

/// Everything a layer is: configuration, epoch, seed states and parameters.
/// This is what snapshots store and what the checksum covers.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// The configuration.
    pub config: LayerConfig,
    /// The current epoch.
    pub epoch: u32,
    /// Per-seed state.
    pub seeds: SeedStates,
    /// Per-seed blueprint parameters.
    pub params: BlueprintParams,
    /// Snapshot metadata of other tools (keys outside the `kasmina.` namespace, SPEC 2.2): read
    /// from a snapshot and written back as it is, never interpreted. Not covered by the checksum.
    pub metadata: BTreeMap<String, String>,
}

impl LayerState {
    /// A new layer of dormant seeds at epoch 0. Its memory is allocated fallibly: a layer
    /// too large for this machine is an [`Error::OutOfMemory`], never an abort.
    pub fn new(config: LayerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            epoch: 0,
            seeds: SeedStates::try_dormant(config.num_seeds)?,
            params: BlueprintParams::try_fresh(config.num_seeds, config.chunk_size())?,
            metadata: BTreeMap::new(),
        })
    }

    /// The schema version this state is written in.
    pub const fn schema_version(&self) -> u8 {
        SCHEMA_VERSION
    }

    /// Number of seeds.
    pub fn num_seeds(&self) -> usize {
        self.config.num_seeds
    }

    /// Checks that every array has the right length and every value its range:
    /// lengths match `S` and `S * C`, alpha is in [0, 1], no other tool's metadata key is in
    /// the `kasmina.` namespace.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        let s = self.config.num_seeds;
        let c = self.config.chunk_size();
        let st = &self.seeds;
        let lens = [
            ("lifecycle", st.lifecycle.len()),
            ("blueprint_id", st.blueprint_id.len()),
            ("blueprint_type", st.blueprint_type.len()),
            ("grafting_strategy", st.grafting_strategy.len()),
            ("alpha", st.alpha.len()),
            ("epochs_in_state", st.epochs_in_state.len()),
            ("last_update_epoch", st.last_update_epoch.len()),
            ("clamp_mean", st.clamp_mean.len()),
            ("clamp_std", st.clamp_std.len()),
            ("scales", self.params.scales.len()),
        ];
        for (name, len) in lens {
            if len != s {
                return Err(Error::shape(name, format!("[{s}]"), format!("[{len}]")));
            }
        }
        if self.params.chunk_size != c || self.params.weights.len() != s * c {
            return Err(Error::shape(
                "weights",
                format!("[{s}, {c}]"),
                format!("{} values with chunk size {}", self.params.weights.len(), self.params.chunk_size),
            ));
        }
        if let Some(i) = st.alpha.iter().position(|a| !(0.0..=1.0).contains(a)) {
            return Err(Error::InvalidValue {
                what: format!("alpha of seed {i}"),
                message: format!("{} is not in [0, 1]", st.alpha[i]),
            });
        }
        if let Some(k) = self.metadata.keys().find(|k| k.starts_with(crate::snapshot::KASMINA_PREFIX)) {
            return Err(Error::InvalidValue {
                what: format!("metadata key '{k}'"),
                message: "the kasmina. namespace belongs to the snapshot itself (SPEC 2.2)".into(),
            });
        }
        Ok(())
    }

    fn check_seed(&self, seed_id: usize) -> Result<()> {
        if seed_id < self.num_seeds() {
            Ok(())
        } else {
            Err(Error::SeedOutOfRange { seed_id, num_seeds: self.num_seeds() })
        }
    }

    /// DORMANT -> GERMINATED with a blueprint (SPEC 3).
    pub fn germinate(
        &mut self,
        seed_id: usize,
        blueprint_id: u16,
        blueprint_type: BlueprintType,
        strategy: GraftingStrategy,
    ) -> Result<TransitionEvent> {
        self.check_seed(seed_id)?;
        let from = self.seeds.lifecycle[seed_id];
        lifecycle::check_transition(
            seed_id,
            from,
            LifecycleState::Germinated,
            self.seeds.epochs_in_state[seed_id],
            self.config.embargo_epochs,
        )?;
        self.seeds.blueprint_id[seed_id] = blueprint_id;
        self.seeds.blueprint_type[seed_id] = blueprint_type;
        self.seeds.grafting_strategy[seed_id] = strategy;
        Ok(self.enter(seed_id, LifecycleState::Germinated, TransitionReason::Germination))
    }

    /// A transition requested by the controller (SPEC 3). DORMANT -> GERMINATED
    /// must go through [`LayerState::germinate`].
    pub fn transition(
        &mut self,
        seed_id: usize,
        to: LifecycleState,
        reason: TransitionReason,
    ) -> Result<TransitionEvent> {
        self.check_seed(seed_id)?;
        let from = self.seeds.lifecycle[seed_id];
        if from == LifecycleState::Dormant && to == LifecycleState::Germinated {
            return Err(crate::TransitionError::NeedsGermination { seed_id }.into());
        }
        lifecycle::check_transition(
            seed_id,
            from,
            to,
            self.seeds.epochs_in_state[seed_id],
            self.config.embargo_epochs,
        )?;
        Ok(self.enter(seed_id, to, reason))
    }

    /// Enters `to` with its side effects; the transition was already checked.
    fn enter(&mut self, seed: usize, to: LifecycleState, reason: TransitionReason) -> TransitionEvent {
        let st = &mut self.seeds;
        let from = st.lifecycle[seed];
        st.lifecycle[seed] = to;
        st.epochs_in_state[seed] = 0;
        st.last_update_epoch[seed] = self.epoch;
        match to {
            LifecycleState::Grafting => st.alpha[seed] = 0.0,
            LifecycleState::Fossilized => st.alpha[seed] = 1.0,
            LifecycleState::Dormant => {
                st.blueprint_id[seed] = 0;
                st.blueprint_type[seed] = BlueprintType::Residual;
                st.grafting_strategy[seed] = GraftingStrategy::FixedRamp;
                st.alpha[seed] = 0.0;
                st.clamp_mean[seed] = CLAMP_UNSET;
                st.clamp_std[seed] = CLAMP_UNSET;
                self.params.reset_seed(seed);
            }
            _ => {}
        }
        TransitionEvent { seed_id: seed, from, to, epoch: self.epoch, reason }
    }

    /// Everything `end_epoch` does after the report was consolidated and the
    /// accumulators reset (SPEC 6, in that order): strict-mode clamp statistics,
    /// alpha steps, `epochs_in_state`, automatic transitions, `epoch += 1`.
    /// Returns the automatic transitions.
    /// `acc` are the accumulators the report was consolidated from.
    pub fn advance_epoch(&mut self, acc: &Accumulators, signals: &EpochSignals) -> Result<Vec<TransitionEvent>> {
        let s = self.num_seeds();
        acc.check_len(s)?;
        signals.check_len(s)?;
        if matches!(self.config.stability, StabilityMode::Strict { .. }) {
            for (i, m) in acc.moments.iter().enumerate() {
                if m.count > 0 {
                    self.seeds.clamp_mean[i] = m.mean as f32;
                    self.seeds.clamp_std[i] = m.variance().sqrt() as f32;
                }
            }
        }
        for i in 0..s {
            if self.seeds.lifecycle[i] == LifecycleState::Grafting {
                self.seeds.alpha[i] = grafting::alpha_step(
                    self.seeds.grafting_strategy[i],
                    self.seeds.alpha[i],
                    signals.get(i),
                    acc.grad_norm(i),
                    &self.config.grafting,
                );
            }
            self.seeds.epochs_in_state[i] = self.seeds.epochs_in_state[i].saturating_add(1);
        }
        let mut events = Vec::new();
        for i in 0..s {
            let st = &self.seeds;
            let auto = match st.lifecycle[i] {
                LifecycleState::Grafting if st.alpha[i] >= 1.0 - 1e-6 => {
                    self.seeds.alpha[i] = 1.0;
                    Some((LifecycleState::Stabilization, TransitionReason::AlphaReachedOne))
                }
                LifecycleState::Stabilization if st.epochs_in_state[i] >= self.config.stabilization_epochs => {
                    Some((LifecycleState::Evaluating, TransitionReason::StabilizationComplete))
                }
                LifecycleState::Cancelled => Some((LifecycleState::Dormant, TransitionReason::CancellationCleared)),
                LifecycleState::Culled | LifecycleState::RolledBack
                    if st.epochs_in_state[i] >= self.config.embargo_epochs =>
                {
                    Some((LifecycleState::Dormant, TransitionReason::EmbargoElapsed))
                }
                _ => None,
            };
            if let Some((to, reason)) = auto {
                events.push(self.enter(i, to, reason));
            }
        }
        self.epoch = self.epoch.saturating_add(1);
        Ok(events)
    }
}

/// The strict-mode clamp band `[mean - k std, mean + k std]` of one seed,
/// computed in f32 exactly like this so every backend and the reference use
/// the same bounds. `None` when the band is not set or not in strict mode.
pub fn clamp_bounds(stability: StabilityMode, clamp_mean: f32, clamp_std: f32) -> Option<(f32, f32)> {
    match stability {
        StabilityMode::Strict { k } if !clamp_mean.is_nan() && !clamp_std.is_nan() => {
            let half = k * clamp_std;
            Some((clamp_mean - half, clamp_mean + half))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleState::*;

    fn layer(s: usize) -> LayerState {
        LayerState::new(LayerConfig::new(s * 3, s).unwrap()).unwrap()
    }

    /// Drives seed 0 of a fresh layer to `target` through legal transitions.
    fn reach(st: &mut LayerState, target: LifecycleState) {
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
                st.germinate(0, 7, BlueprintType::Mlp, GraftingStrategy::FixedRamp).unwrap();
            } else {
                st.transition(0, *to, TransitionReason::Requested).unwrap();
            }
        }
        assert_eq!(st.seeds.lifecycle[0], target);
    }

    fn expected_legal(from: LifecycleState, to: LifecycleState) -> bool {
        let next_in_table = (from as u8) + 1 == to as u8;
        match from {
            Dormant => to == Germinated,
            Germinated => matches!(to, Training | Cancelled),
            Training => matches!(to, Grafting | Culled | Cancelled | RolledBack),
            Grafting | Stabilization | Evaluating => next_in_table || matches!(to, Culled | RolledBack),
            FineTuning => matches!(to, Fossilized | Culled | RolledBack),
            Culled | RolledBack | Cancelled => to == Dormant,
            Fossilized => false,
        }
    }

    /// All 121 (from, to) pairs: legal ones succeed with their side effects,
    /// illegal ones return an error and change nothing.
    #[test]
    fn every_transition_pair_follows_the_table() {
        let mut legal = 0;
        for from in LifecycleState::ALL {
            for to in LifecycleState::ALL {
                let mut st = layer(2);
                reach(&mut st, *from);
                // Serve the embargo so the table alone decides.
                st.seeds.epochs_in_state[0] = st.config.embargo_epochs;
                st.epoch = 42;
                st.params.seed_weights_mut(0).fill(0.5);
                st.params.scales[0] = 3.0;
                let before = st.clone();
                let r = if *from == Dormant && *to == Germinated {
                    st.germinate(0, 9, BlueprintType::Conv, GraftingStrategy::DriftControlled)
                } else {
                    st.transition(0, *to, TransitionReason::Requested)
                };
                if expected_legal(*from, *to) {
                    legal += 1;
                    let ev = r.unwrap_or_else(|e| panic!("{from} -> {to} should be legal: {e}"));
                    assert_eq!((ev.from, ev.to, ev.epoch, ev.seed_id), (*from, *to, 42, 0));
                    assert_eq!(st.seeds.lifecycle[0], *to);
                    assert_eq!(st.seeds.epochs_in_state[0], 0);
                    assert_eq!(st.seeds.last_update_epoch[0], 42);
                    match to {
                        Grafting => assert_eq!(st.seeds.alpha[0], 0.0),
                        Fossilized => assert_eq!(st.seeds.alpha[0], 1.0),
                        Dormant => {
                            assert_eq!(st.seeds.blueprint_id[0], 0);
                            assert_eq!(st.seeds.alpha[0], 0.0);
                            assert!(st.params.seed_weights(0).iter().all(|w| *w == 0.0));
                            assert_eq!(st.params.scales[0], 1.0);
                            assert_eq!(st.seeds.clamp_mean[0].to_bits(), CLAMP_UNSET.to_bits());
                        }
                        _ => {}
                    }
                    // The other seed is untouched.
                    assert_eq!(st.seeds.lifecycle[1], Dormant);
                } else {
                    assert!(r.is_err(), "{from} -> {to} should be illegal");
                    assert_eq!(st, before, "{from} -> {to} changed the state");
                }
            }
        }
        // 1 + 2 + 4 + 3 * 3 + 3 + 3 = 22 legal pairs in the table.
        assert_eq!(legal, 22);
    }

    #[test]
    fn dormant_to_germinated_needs_request_germination() {
        let mut st = layer(1);
        let e = st.transition(0, Germinated, TransitionReason::Requested).unwrap_err();
        assert!(matches!(e, Error::Transition(crate::TransitionError::NeedsGermination { seed_id: 0 })));
        assert_eq!(st, layer(1));
    }

    #[test]
    fn culled_seed_returns_to_dormant_only_after_embargo() {
        let mut st = layer(1);
        reach(&mut st, Culled);
        let before = st.clone();
        assert!(matches!(
            st.transition(0, Dormant, TransitionReason::Requested),
            Err(Error::Transition(crate::TransitionError::Embargoed { .. }))
        ));
        assert_eq!(st, before);
        let report = Accumulators::empty(1);
        for _ in 0..9 {
            let ev = st.advance_epoch(&report, &EpochSignals::none()).unwrap();
            assert!(ev.is_empty());
            assert_eq!(st.seeds.lifecycle[0], Culled);
        }
        let ev = st.advance_epoch(&report, &EpochSignals::none()).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].from, ev[0].to, ev[0].reason, ev[0].epoch),
            (Culled, Dormant, TransitionReason::EmbargoElapsed, 9)
        );
        assert_eq!(st.seeds.last_update_epoch[0], 9);
        assert_eq!(st.epoch, 10);
    }

    #[test]
    fn seed_out_of_range_is_an_error() {
        let mut st = layer(2);
        assert!(matches!(
            st.transition(2, Training, TransitionReason::Requested),
            Err(Error::SeedOutOfRange { seed_id: 2, num_seeds: 2 })
        ));
        assert!(st.germinate(5, 1, BlueprintType::Residual, GraftingStrategy::FixedRamp).is_err());
    }

    #[test]
    fn grafting_reaches_stabilization_then_evaluating_automatically() {
        let mut st = layer(1);
        reach(&mut st, Grafting);
        let report = Accumulators::empty(1);
        let mut auto = vec![];
        for _ in 0..40 {
            auto.extend(st.advance_epoch(&report, &EpochSignals::none()).unwrap());
        }
        // 30 epochs of 1/30 reach alpha 1 (within 1e-6), then 5 epochs of stabilization.
        assert_eq!(auto.len(), 2, "{auto:?}");
        assert_eq!((auto[0].to, auto[0].epoch), (Stabilization, 29));
        assert_eq!((auto[1].to, auto[1].epoch), (Evaluating, 34));
        assert_eq!(st.seeds.alpha[0], 1.0);
        assert_eq!(st.seeds.lifecycle[0], Evaluating);
    }

    #[test]
    fn cancelled_returns_to_dormant_at_the_next_end_epoch() {
        let mut st = layer(1);
        reach(&mut st, Cancelled);
        let report = Accumulators::empty(1);
        let ev = st.advance_epoch(&report, &EpochSignals::none()).unwrap();
        assert_eq!(ev[0].reason, TransitionReason::CancellationCleared);
        assert_eq!(st.seeds.lifecycle[0], Dormant);
    }

    #[test]
    fn strict_mode_end_epoch_sets_clamp_statistics_of_seeds_that_saw_data() {
        let cfg = LayerConfig::new(4, 2).unwrap().with_stability(StabilityMode::strict());
        let mut st = LayerState::new(cfg).unwrap();
        let mut acc = Accumulators::empty(2);
        for x in [1.0, 2.0, 3.0, 4.0] {
            acc.moments[0].push(x, 1e-6);
        }
        st.advance_epoch(&acc, &EpochSignals::none()).unwrap();
        assert_eq!(st.seeds.clamp_mean[0], 2.5);
        assert_eq!(st.seeds.clamp_std[0], 1.25f32.sqrt());
        // Seed 1 saw nothing: its statistics stay unset.
        assert!(!st.seeds.clamp_is_set(1));
        assert_eq!(clamp_bounds(st.config.stability, 2.5, 0.5), Some((-0.5, 5.5)));
        assert_eq!(clamp_bounds(StabilityMode::Off, 2.5, 0.5), None);
        assert_eq!(clamp_bounds(st.config.stability, CLAMP_UNSET, 0.5), None);
    }

    #[test]
    fn off_mode_end_epoch_leaves_clamp_statistics_unset() {
        let mut st = layer(1);
        let mut acc = Accumulators::empty(1);
        acc.moments[0].push(1.0, 1e-6);
        st.advance_epoch(&acc, &EpochSignals::none()).unwrap();
        assert!(!st.seeds.clamp_is_set(0));
    }

    #[test]
    fn end_epoch_rejects_signals_of_the_wrong_length() {
        let mut st = layer(2);
        let before = st.clone();
        let sig = EpochSignals { seeds: vec![Default::default(); 3] };
        assert!(st.advance_epoch(&Accumulators::empty(2), &sig).is_err());
        assert!(st.advance_epoch(&Accumulators::empty(3), &EpochSignals::none()).is_err());
        assert_eq!(st, before);
    }

    #[test]
    fn validate_rejects_wrong_lengths_and_alpha() {
        let mut st = layer(2);
        st.seeds.alpha[1] = 1.5;
        assert!(st.validate().is_err());
        let mut st = layer(2);
        st.params.weights.pop();
        assert!(st.validate().is_err());
        let mut st = layer(2);
        st.seeds.clamp_std.push(0.0);
        assert!(st.validate().is_err());
    }

    #[test]
    fn a_layer_too_large_for_memory_is_an_error_not_an_abort() {
        // Sizes beyond the address space: errors naming what and how much, never an abort.
        match BlueprintParams::try_fresh(usize::MAX / 2, 4) {
            Err(Error::OutOfMemory { what, bytes }) => {
                assert!(what.contains("weights"), "{what}");
                assert_eq!(bytes, (usize::MAX / 2) as u128 * 16);
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        match SeedStates::try_dormant(usize::MAX) {
            Err(Error::OutOfMemory { what, .. }) => assert!(what.contains("lifecycle"), "{what}"),
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        let e = crate::error::try_filled(usize::MAX, 0u64, "probe").unwrap_err();
        assert!(e.to_string().contains("probe needs"), "{e}");
        assert_eq!(crate::error::try_filled(3, 7u16, "small").unwrap(), vec![7, 7, 7]);
        // The fallible constructors build what the infallible ones do.
        assert_eq!(SeedStates::try_dormant(5).unwrap(), SeedStates::dormant(5));
        assert_eq!(BlueprintParams::try_fresh(3, 4).unwrap(), BlueprintParams::fresh(3, 4));
    }
}
