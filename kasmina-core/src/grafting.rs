//! Grafting schedules (SPEC 6) as pure functions, and the trainer's per-epoch signals.

use crate::blueprint::GraftingStrategy;
use crate::config::GraftingConfig;
use crate::error::{Error, Result};

/// What the trainer reports about one seed at `end_epoch` (SPEC 6).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SeedSignal {
    /// Loss improvement attributed to the seed (PERFORMANCE_LINKED).
    pub improvement: f32,
    /// Weight drift of the seed's blueprint (DRIFT_CONTROLLED); see [`weight_drift`].
    pub drift: f32,
}

/// Per-seed signals for one `end_epoch`. Empty means every seed's signals are 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpochSignals {
    /// Either empty or one entry per seed.
    pub seeds: Vec<SeedSignal>,
}

impl EpochSignals {
    /// Every signal 0.
    pub fn none() -> Self {
        Self::default()
    }

    /// The signal of one seed (0 when none were given).
    pub fn get(&self, seed: usize) -> SeedSignal {
        self.seeds.get(seed).copied().unwrap_or_default()
    }

    /// Checks the length is 0 or `num_seeds`.
    pub fn check_len(&self, num_seeds: usize) -> Result<()> {
        if self.seeds.is_empty() || self.seeds.len() == num_seeds {
            Ok(())
        } else {
            Err(Error::shape("epoch signals", format!("0 or {num_seeds} seeds"), format!("{} seeds", self.seeds.len())))
        }
    }
}

/// The logistic function `1 / (1 + e^-x)`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One epoch's alpha step of a GRAFTING seed, clamped to [0, 1] (SPEC 6).
pub fn alpha_step(
    strategy: GraftingStrategy,
    alpha: f32,
    signal: SeedSignal,
    grad_norm: f32,
    cfg: &GraftingConfig,
) -> f32 {
    let ramp = 1.0 / cfg.ramp_epochs as f32;
    let step = match strategy {
        GraftingStrategy::FixedRamp => ramp,
        GraftingStrategy::PerformanceLinked => ramp * 2.0 * sigmoid(cfg.performance_k * signal.improvement),
        GraftingStrategy::DriftControlled => {
            if signal.drift > cfg.drift_threshold {
                0.0
            } else {
                ramp
            }
        }
        GraftingStrategy::GradNormGated => {
            if (cfg.grad_lower..=cfg.grad_upper).contains(&grad_norm) {
                ramp
            } else {
                0.0
            }
        }
    };
    let next = alpha + step;
    // A NaN signal must not poison alpha: keep the old value.
    if next.is_nan() { alpha.clamp(0.0, 1.0) } else { next.clamp(0.0, 1.0) }
}

/// `‖w - w_ema‖ / (‖w_ema‖ + 1e-12)`, the drift signal trainers report (SPEC 6).
pub fn weight_drift(w: &[f32], w_ema: &[f32]) -> Result<f32> {
    if w.len() != w_ema.len() {
        return Err(Error::shape("weight_drift w_ema", w.len(), w_ema.len()));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in w.iter().zip(w_ema) {
        let d = *a as f64 - *b as f64;
        diff += d * d;
        norm += (*b as f64) * (*b as f64);
    }
    Ok((diff.sqrt() / (norm.sqrt() + 1e-12)) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: GraftingConfig = GraftingConfig {
        ramp_epochs: 30,
        performance_k: 10.0,
        drift_threshold: 0.12,
        grad_lower: 0.1,
        grad_upper: 1.0,
    };

    #[test]
    fn fixed_ramp_adds_one_over_ramp_epochs() {
        assert_eq!(alpha_step(GraftingStrategy::FixedRamp, 0.0, SeedSignal::default(), 0.0, &CFG), 1.0 / 30.0);
        assert_eq!(alpha_step(GraftingStrategy::FixedRamp, 0.99, SeedSignal::default(), 0.0, &CFG), 1.0);
    }

    #[test]
    fn performance_linked_scales_by_twice_the_sigmoid() {
        let s = |imp| {
            alpha_step(GraftingStrategy::PerformanceLinked, 0.0, SeedSignal { improvement: imp, drift: 0.0 }, 0.0, &CFG)
        };
        assert!((s(0.0) - 1.0 / 30.0).abs() < 1e-7);
        let expected = (1.0 / 30.0) * 2.0 / (1.0 + (-10.0f32 * 0.1).exp());
        assert!((s(0.1) - expected).abs() < 1e-7);
        assert!(s(-10.0) < 1e-6);
    }

    #[test]
    fn drift_controlled_holds_while_drift_exceeds_threshold() {
        let s = |d| {
            alpha_step(GraftingStrategy::DriftControlled, 0.5, SeedSignal { improvement: 0.0, drift: d }, 0.0, &CFG)
        };
        assert_eq!(s(0.2), 0.5);
        assert_eq!(s(0.12), 0.5 + 1.0 / 30.0);
    }

    #[test]
    fn grad_norm_gated_holds_outside_the_band() {
        let s = |g| alpha_step(GraftingStrategy::GradNormGated, 0.5, SeedSignal::default(), g, &CFG);
        assert_eq!(s(0.05), 0.5);
        assert_eq!(s(1.5), 0.5);
        assert_eq!(s(0.1), 0.5 + 1.0 / 30.0);
        assert_eq!(s(1.0), 0.5 + 1.0 / 30.0);
    }

    #[test]
    fn weight_drift_is_relative_distance() {
        let d = weight_drift(&[3.0, 4.0], &[0.0, 0.0]).unwrap();
        assert!((d - 5e12).abs() / 5e12 < 1e-6);
        assert_eq!(weight_drift(&[1.0, 1.0], &[1.0, 1.0]).unwrap(), 0.0);
        assert!(weight_drift(&[1.0], &[1.0, 2.0]).is_err());
    }
}
