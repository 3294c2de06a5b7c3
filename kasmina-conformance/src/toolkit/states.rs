//! Layer states for backends' tests, reached through the lifecycle API: a seed driven to a
//! lifecycle state along legal transitions, and the mixed layer that puts every blueprint type
//! in every forward mode.

use kasmina_core::{
    BlueprintType, Error, ForwardMode, GraftingStrategy, LayerConfig, LayerState, LifecycleState, StabilityMode,
    TransitionError, TransitionReason,
};

use crate::data::Gen;

/// The shortest sequence of states that leads from `from` to `to` through transitions the
/// lifecycle table accepts ([`LifecycleState::can_transition_to`]), `from` left out; `None`
/// when `to` cannot be reached.
fn lifecycle_path(from: LifecycleState, to: LifecycleState) -> Option<Vec<LifecycleState>> {
    let index = |l: LifecycleState| l.raw() as usize;
    // Breadth first, so the first visit of a state comes along a shortest path.
    let mut came_from: Vec<Option<LifecycleState>> = vec![None; LifecycleState::ALL.len()];
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(at) = queue.pop_front() {
        if at == to {
            let mut path = vec![at];
            while let Some(prev) = came_from[index(*path.last()?)] {
                path.push(prev);
            }
            path.pop();
            path.reverse();
            return Some(path);
        }
        for &next in LifecycleState::ALL {
            if next != from && came_from[index(next)].is_none() && at.can_transition_to(next) {
                came_from[index(next)] = Some(at);
                queue.push_back(next);
            }
        }
    }
    None
}

/// Drives seed `seed` of `state` from its current lifecycle state to `target` along the
/// shortest path of legal transitions, through [`LayerState::germinate`] (blueprint `kind`,
/// blueprint id `1 + seed % 1000`, FIXED_RAMP) and [`LayerState::transition`], so every side
/// effect of entering a state (alpha of GRAFTING and FOSSILIZED, `epochs_in_state`, the reset
/// of DORMANT) is the lifecycle's own. Nothing happens when the seed is already in `target`.
///
/// # Errors
/// [`TransitionError::Illegal`] when no path leads to `target` (FOSSILIZED is terminal); the
/// lifecycle's own error when a step is refused (the embargo on leaving CULLED or ROLLED_BACK
/// is not served here), or when `seed` is out of range.
pub fn drive(state: &mut LayerState, seed: usize, target: LifecycleState, kind: BlueprintType) -> Result<(), Error> {
    let Some(&from) = state.seeds.lifecycle.get(seed) else {
        return Err(Error::SeedOutOfRange { seed_id: seed, num_seeds: state.num_seeds() });
    };
    let path = lifecycle_path(from, target).ok_or(TransitionError::Illegal { seed_id: seed, from, to: target })?;
    for to in path {
        if to == LifecycleState::Germinated {
            state.germinate(seed, 1 + (seed % 1000) as u16, kind, GraftingStrategy::FixedRamp)?;
        } else {
            state.transition(seed, to, TransitionReason::Requested)?;
        }
    }
    Ok(())
}

/// A layer of `num_seeds` seeds over `hidden_dim` columns in `stability` mode with every
/// blueprint type in every forward mode, the state every backend's tests compute on.
///
/// Seed `i` has blueprint type `BlueprintType::ALL[i % 4]` and, by `(i + i / 4) % 3`, a blend,
/// FOSSILIZED or identity lifecycle state: the first three seeds are one of each mode, and from
/// 12 seeds on every type appears in every mode. The seeds of one mode take that mode's states
/// in [`LifecycleState::ALL`] order in turn (blend: GRAFTING to FINE_TUNING; identity: DORMANT,
/// GERMINATED, TRAINING, CULLED, CANCELLED, ROLLED_BACK), so from 17 seeds on every lifecycle
/// state appears. Each seed is driven there with [`drive`] (DORMANT seeds stay as the lifecycle
/// leaves them: RESIDUAL, id 0).
///
/// Drawn from `rng`, seed by seed: alpha uniform in `[0.1, 0.9)` for blend seeds and in
/// `[0, 1)` for identity seeds (which must ignore it; FOSSILIZED keeps 1), weights uniform in
/// `[-1, 1)`, scale uniform in `[0.5, 1.5)`, and on two seeds of every three (`i % 3 != 2`)
/// clamp statistics with mean in `[-0.2, 0.2)` and std in `[0.05, 0.3)`, in either stability
/// mode: strict mode clamps those seeds, off mode must ignore the statistics.
///
/// # Errors
/// The configuration's error when `hidden_dim` and `num_seeds` do not make a layer.
pub fn mixed_state(
    hidden_dim: usize,
    num_seeds: usize,
    stability: StabilityMode,
    rng: &mut Gen,
) -> Result<LayerState, Error> {
    let mut st = LayerState::new(LayerConfig::new(hidden_dim, num_seeds)?.with_stability(stability))?;
    let modes = [ForwardMode::Blend, ForwardMode::Blueprint, ForwardMode::Identity];
    let states_of = |mode: ForwardMode| -> Vec<LifecycleState> {
        LifecycleState::ALL.iter().copied().filter(|l| l.forward_mode() == mode).collect()
    };
    let states: Vec<Vec<LifecycleState>> = modes.iter().map(|m| states_of(*m)).collect();
    let mut taken = [0usize; 3];
    for i in 0..num_seeds {
        let m = (i + i / 4) % 3;
        let target = states[m][taken[m] % states[m].len()];
        taken[m] += 1;
        drive(&mut st, i, target, BlueprintType::ALL[i % 4])?;
        match modes[m] {
            ForwardMode::Blend => st.seeds.alpha[i] = rng.uniform(0.1, 0.9) as f32,
            ForwardMode::Identity => st.seeds.alpha[i] = rng.uniform(0.0, 1.0) as f32,
            ForwardMode::Blueprint => {}
        }
        let w = rng.f32s(st.config.chunk_size(), -1.0, 1.0);
        st.params.seed_weights_mut(i).copy_from_slice(&w);
        st.params.scales[i] = rng.uniform(0.5, 1.5) as f32;
        if i % 3 != 2 {
            st.seeds.clamp_mean[i] = rng.uniform(-0.2, 0.2) as f32;
            st.seeds.clamp_std[i] = rng.uniform(0.05, 0.3) as f32;
        }
    }
    st.validate()?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleState::*;

    fn fresh(s: usize) -> LayerState {
        LayerState::new(LayerConfig::new(s * 3, s).unwrap()).unwrap()
    }

    #[test]
    fn drive_reaches_every_state_along_legal_transitions() {
        let mut st = fresh(LifecycleState::ALL.len());
        for (i, target) in LifecycleState::ALL.iter().enumerate() {
            drive(&mut st, i, *target, BlueprintType::Conv).unwrap();
            assert_eq!(st.seeds.lifecycle[i], *target);
            if *target != Dormant {
                assert_eq!(st.seeds.blueprint_type[i], BlueprintType::Conv, "{target}");
                assert_eq!(st.seeds.blueprint_id[i], 1 + i as u16);
            }
        }
        assert_eq!(st.seeds.alpha[Fossilized.raw() as usize], 1.0);
        assert_eq!(lifecycle_path(Dormant, Culled), Some(vec![Germinated, Training, Culled]));
        assert_eq!(lifecycle_path(Dormant, Fossilized).map(|p| p.len()), Some(7));
        assert_eq!(lifecycle_path(Cancelled, Training), Some(vec![Dormant, Germinated, Training]));
    }

    #[test]
    fn drive_refuses_what_the_lifecycle_refuses() {
        let mut st = fresh(2);
        drive(&mut st, 0, Fossilized, BlueprintType::Mlp).unwrap();
        let e = drive(&mut st, 0, Training, BlueprintType::Mlp).unwrap_err();
        assert!(matches!(e, Error::Transition(TransitionError::Illegal { seed_id: 0, .. })), "{e}");
        drive(&mut st, 1, Culled, BlueprintType::Mlp).unwrap();
        let e = drive(&mut st, 1, Training, BlueprintType::Mlp).unwrap_err();
        assert!(matches!(e, Error::Transition(TransitionError::Embargoed { seed_id: 1, .. })), "{e}");
        assert!(matches!(drive(&mut st, 2, Training, BlueprintType::Mlp), Err(Error::SeedOutOfRange { .. })));
    }

    #[test]
    fn mixed_state_puts_every_type_in_every_mode() {
        let st = mixed_state(17 * 4, 17, StabilityMode::strict(), &mut Gen::new(1)).unwrap();
        for mode in [ForwardMode::Blend, ForwardMode::Blueprint] {
            for kind in BlueprintType::ALL {
                let found = (0..12)
                    .any(|i| st.seeds.lifecycle[i].forward_mode() == mode && st.seeds.blueprint_type[i] == *kind);
                assert!(found, "{kind} in {mode:?} among the first 12 seeds");
            }
        }
        for l in LifecycleState::ALL {
            assert!(st.seeds.lifecycle.contains(l), "{l}");
        }
        let modes: Vec<ForwardMode> = (0..3).map(|i| st.seeds.lifecycle[i].forward_mode()).collect();
        assert_eq!(modes, [ForwardMode::Blend, ForwardMode::Blueprint, ForwardMode::Identity]);
        for i in 0..17 {
            assert_eq!(st.seeds.clamp_is_set(i), i % 3 != 2, "seed {i}");
            let a = st.seeds.alpha[i];
            match st.seeds.lifecycle[i].forward_mode() {
                ForwardMode::Blend => assert!((0.1..0.9).contains(&a), "seed {i}: alpha {a}"),
                ForwardMode::Blueprint => assert_eq!(a, 1.0),
                ForwardMode::Identity => assert!((0.0..1.0).contains(&a), "seed {i}: alpha {a}"),
            }
        }
        assert_eq!(st, mixed_state(17 * 4, 17, StabilityMode::strict(), &mut Gen::new(1)).unwrap());
        assert!(mixed_state(10, 3, StabilityMode::Off, &mut Gen::new(1)).is_err());
    }
}
