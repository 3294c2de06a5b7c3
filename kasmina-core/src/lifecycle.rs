//! The lifecycle (SPEC 3): states, the transition table and the event log.

use serde::{Deserialize, Serialize};

use crate::blueprint::raw_enum;

raw_enum! {
    /// A seed's place in its lifecycle (SPEC 3).
    LifecycleState, "0..=10" {
        /// No blueprint; identity.
        Dormant = 0 => "DORMANT",
        /// A blueprint was requested; identity.
        Germinated = 1 => "GERMINATED",
        /// The blueprint trains on the side; identity.
        Training = 2 => "TRAINING",
        /// Alpha ramps from 0 to 1; blend.
        Grafting = 3 => "GRAFTING",
        /// Alpha is 1, the host settles; blend.
        Stabilization = 4 => "STABILIZATION",
        /// The controller evaluates the seed; blend.
        Evaluating = 5 => "EVALUATING",
        /// Last tuning; blend.
        FineTuning = 6 => "FINE_TUNING",
        /// The blueprint replaces the chunk: `y = t(x)`. Terminal.
        Fossilized = 7 => "FOSSILIZED",
        /// Removed for hurting; identity, embargoed.
        Culled = 8 => "CULLED",
        /// Germination cancelled; identity.
        Cancelled = 9 => "CANCELLED",
        /// Rolled back; identity, embargoed.
        RolledBack = 10 => "ROLLED_BACK",
    }
}

/// How a seed's chunk is computed in forward (SPEC 3, 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ForwardMode {
    /// `y = x`, bit for bit.
    Identity = 0,
    /// `y = (1 - a) x + a t(x)`.
    Blend = 1,
    /// `y = t(x)`.
    Blueprint = 2,
}

impl LifecycleState {
    /// The forward mode of this state (the table of SPEC 3).
    pub const fn forward_mode(self) -> ForwardMode {
        use LifecycleState::*;
        match self {
            Dormant | Germinated | Training | Culled | Cancelled | RolledBack => ForwardMode::Identity,
            Grafting | Stabilization | Evaluating | FineTuning => ForwardMode::Blend,
            Fossilized => ForwardMode::Blueprint,
        }
    }

    /// Whether `self -> to` is in the transition table (SPEC 3). The embargo on
    /// CULLED / ROLLED_BACK -> DORMANT is a separate condition, checked by
    /// [`check_transition`].
    pub const fn can_transition_to(self, to: LifecycleState) -> bool {
        use LifecycleState::*;
        matches!(
            (self, to),
            (Dormant, Germinated)
                | (Germinated, Training | Cancelled)
                | (Training, Grafting | Culled | Cancelled | RolledBack)
                | (Grafting, Stabilization | Culled | RolledBack)
                | (Stabilization, Evaluating | Culled | RolledBack)
                | (Evaluating, FineTuning | Culled | RolledBack)
                | (FineTuning, Fossilized | Culled | RolledBack)
                | (Culled | RolledBack | Cancelled, Dormant)
        )
    }

    /// Whether the state carries an embargo before DORMANT.
    pub const fn is_embargoed_state(self) -> bool {
        matches!(self, LifecycleState::Culled | LifecycleState::RolledBack)
    }
}

/// Checks one requested transition of seed `seed_id` currently in `from`, with
/// `epochs_in_state` served, against the table and the embargo.
pub fn check_transition(
    seed_id: usize,
    from: LifecycleState,
    to: LifecycleState,
    epochs_in_state: u16,
    embargo_epochs: u16,
) -> Result<(), crate::TransitionError> {
    if !from.can_transition_to(to) {
        return Err(crate::TransitionError::Illegal { seed_id, from, to });
    }
    if from.is_embargoed_state() && epochs_in_state < embargo_epochs {
        return Err(crate::TransitionError::Embargoed {
            seed_id,
            from,
            epochs_in_state,
            embargo_epochs,
            remaining: embargo_epochs - epochs_in_state,
        });
    }
    Ok(())
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// `request_germination`.
    Germination,
    /// `transition` called by the controller.
    Requested,
    /// `cancel_germination`.
    Cancellation,
    /// Automatic at `end_epoch`: alpha reached 1 (GRAFTING -> STABILIZATION).
    AlphaReachedOne,
    /// Automatic at `end_epoch`: STABILIZATION served `stabilization_epochs`.
    StabilizationComplete,
    /// Automatic at `end_epoch`: CANCELLED -> DORMANT.
    CancellationCleared,
    /// Automatic at `end_epoch`: CULLED / ROLLED_BACK served the embargo.
    EmbargoElapsed,
}

/// One recorded transition (SPEC 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionEvent {
    /// The seed.
    pub seed_id: usize,
    /// The state it left.
    pub from: LifecycleState,
    /// The state it entered.
    pub to: LifecycleState,
    /// The layer's epoch at the transition.
    pub epoch: u32,
    /// Why.
    pub reason: TransitionReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_follow_the_spec_table() {
        let names: Vec<&str> = LifecycleState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "DORMANT",
                "GERMINATED",
                "TRAINING",
                "GRAFTING",
                "STABILIZATION",
                "EVALUATING",
                "FINE_TUNING",
                "FOSSILIZED",
                "CULLED",
                "CANCELLED",
                "ROLLED_BACK"
            ]
        );
        for (i, s) in LifecycleState::ALL.iter().enumerate() {
            assert_eq!(s.raw() as usize, i);
            assert_eq!(LifecycleState::from_raw(i as u8).unwrap(), *s);
        }
        for v in 11..=255u8 {
            assert!(LifecycleState::from_raw(v).is_err());
        }
    }

    #[test]
    fn forward_modes_follow_the_spec_table() {
        use LifecycleState::*;
        for s in [Dormant, Germinated, Training, Culled, Cancelled, RolledBack] {
            assert_eq!(s.forward_mode(), ForwardMode::Identity, "{s}");
        }
        for s in [Grafting, Stabilization, Evaluating, FineTuning] {
            assert_eq!(s.forward_mode(), ForwardMode::Blend, "{s}");
        }
        assert_eq!(Fossilized.forward_mode(), ForwardMode::Blueprint);
    }

    #[test]
    fn fossilized_is_terminal() {
        for to in LifecycleState::ALL {
            assert!(!LifecycleState::Fossilized.can_transition_to(*to));
        }
    }

    #[test]
    fn embargo_is_checked() {
        let e = check_transition(3, LifecycleState::Culled, LifecycleState::Dormant, 4, 10).unwrap_err();
        assert!(matches!(e, crate::TransitionError::Embargoed { remaining: 6, .. }));
        check_transition(3, LifecycleState::Culled, LifecycleState::Dormant, 10, 10).unwrap();
        check_transition(3, LifecycleState::Cancelled, LifecycleState::Dormant, 0, 10).unwrap();
    }
}
