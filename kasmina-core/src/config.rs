//! Layer configuration (SPEC 1, 2, 5.3, 6) and its validation.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Numerical stability mode (SPEC 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum StabilityMode {
    /// No clamping (the default).
    #[default]
    Off,
    /// Blend and FOSSILIZED outputs are clamped to `clamp_mean ± k * clamp_std`.
    Strict {
        /// Width of the clamp band in standard deviations (default 6).
        k: f32,
    },
}

impl StabilityMode {
    /// Strict mode with the default `k = 6`.
    pub const fn strict() -> Self {
        StabilityMode::Strict { k: 6.0 }
    }

    /// The raw value used in kernels and files: 0 = off, 1 = strict.
    pub const fn raw(self) -> u8 {
        match self {
            StabilityMode::Off => 0,
            StabilityMode::Strict { .. } => 1,
        }
    }

    /// Checked conversion from the raw value and `k`.
    pub fn from_raw(raw: u8, k: f32) -> crate::Result<Self> {
        match raw {
            0 => Ok(StabilityMode::Off),
            1 => Ok(StabilityMode::Strict { k }),
            v => Err(crate::Error::InvalidEnum {
                kind: "StabilityMode",
                value: v as u64,
                valid: "0 (off) or 1 (strict)",
            }),
        }
    }
}

/// Grafting schedule parameters (SPEC 6), with the SPEC's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraftingConfig {
    /// Epochs of a full FIXED_RAMP (30).
    pub ramp_epochs: u32,
    /// Sigmoid gain of PERFORMANCE_LINKED (10).
    pub performance_k: f32,
    /// DRIFT_CONTROLLED holds while drift exceeds this (0.12).
    pub drift_threshold: f32,
    /// GRAD_NORM_GATED lower bound (0.1).
    pub grad_lower: f32,
    /// GRAD_NORM_GATED upper bound (1.0).
    pub grad_upper: f32,
}

impl Default for GraftingConfig {
    fn default() -> Self {
        Self { ramp_epochs: 30, performance_k: 10.0, drift_threshold: 0.12, grad_lower: 0.1, grad_upper: 1.0 }
    }
}

/// The configuration of one Kasmina layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerConfig {
    /// `H`, the width of the activation.
    pub hidden_dim: usize,
    /// `S`, the number of seeds; `H % S == 0`.
    pub num_seeds: usize,
    /// Finite elements with `|x| < dead_eps` count as dead (1e-6).
    pub dead_eps: f32,
    /// Added to the variance under the square root of the SNR (1e-8).
    pub snr_eps: f32,
    /// Stability mode (off).
    pub stability: StabilityMode,
    /// Epochs a CULLED or ROLLED_BACK seed waits before DORMANT (10).
    pub embargo_epochs: u16,
    /// Epochs in STABILIZATION before EVALUATING (5).
    pub stabilization_epochs: u16,
    /// Alpha schedule parameters.
    pub grafting: GraftingConfig,
}

impl Default for LayerConfig {
    /// The SPEC defaults, with `hidden_dim = num_seeds = 0` (invalid until set).
    fn default() -> Self {
        Self {
            hidden_dim: 0,
            num_seeds: 0,
            dead_eps: 1e-6,
            snr_eps: 1e-8,
            stability: StabilityMode::Off,
            embargo_epochs: 10,
            stabilization_epochs: 5,
            grafting: GraftingConfig::default(),
        }
    }
}

impl LayerConfig {
    /// A validated configuration of `hidden_dim` columns and `num_seeds` seeds, with defaults otherwise.
    pub fn new(hidden_dim: usize, num_seeds: usize) -> Result<Self, ConfigError> {
        let c = Self { hidden_dim, num_seeds, ..Self::default() };
        c.validate()?;
        Ok(c)
    }

    /// Returns this config with another stability mode.
    pub fn with_stability(mut self, stability: StabilityMode) -> Self {
        self.stability = stability;
        self
    }

    /// `C = H / S`, the columns each seed owns. Only meaningful on a validated config.
    pub fn chunk_size(&self) -> usize {
        self.hidden_dim.checked_div(self.num_seeds).unwrap_or(0)
    }

    /// Checks every rule of SPEC 1 and the ranges of the other parameters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hidden_dim == 0 {
            return Err(ConfigError::ZeroHiddenDim);
        }
        if self.num_seeds == 0 {
            return Err(ConfigError::ZeroSeeds);
        }
        // The canonical bytes store H and S as u32.
        let max = u32::MAX as usize;
        if self.hidden_dim > max {
            return Err(ConfigError::TooLarge { what: "hidden_dim", value: self.hidden_dim, max });
        }
        if self.num_seeds > max {
            return Err(ConfigError::TooLarge { what: "num_seeds", value: self.num_seeds, max });
        }
        if !self.hidden_dim.is_multiple_of(self.num_seeds) {
            return Err(ConfigError::NotDivisible { hidden_dim: self.hidden_dim, num_seeds: self.num_seeds });
        }
        positive("dead_eps", self.dead_eps)?;
        positive("snr_eps", self.snr_eps)?;
        if let StabilityMode::Strict { k } = self.stability {
            positive("stability k", k)?;
        }
        let g = &self.grafting;
        if g.ramp_epochs == 0 {
            return Err(ConfigError::OutOfRange {
                what: "grafting.ramp_epochs",
                requirement: "at least 1",
                value: 0.0,
            });
        }
        finite("grafting.performance_k", g.performance_k)?;
        finite("grafting.drift_threshold", g.drift_threshold)?;
        finite("grafting.grad_lower", g.grad_lower)?;
        finite("grafting.grad_upper", g.grad_upper)?;
        if g.grad_lower > g.grad_upper {
            return Err(ConfigError::OutOfRange {
                what: "grafting.grad_lower",
                requirement: "at most grafting.grad_upper",
                value: g.grad_lower as f64,
            });
        }
        Ok(())
    }
}

fn positive(what: &'static str, v: f32) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { what, requirement: "finite and greater than 0", value: v as f64 })
    }
}

fn finite(what: &'static str, v: f32) -> Result<(), ConfigError> {
    if v.is_finite() { Ok(()) } else { Err(ConfigError::OutOfRange { what, requirement: "finite", value: v as f64 }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_dim_not_multiple_of_seeds_is_a_config_error() {
        let e = LayerConfig::new(10, 3).unwrap_err();
        assert_eq!(e, ConfigError::NotDivisible { hidden_dim: 10, num_seeds: 3 });
        assert!(e.to_string().contains("multiple of num_seeds"), "{e}");
    }

    #[test]
    fn zero_sizes_are_config_errors() {
        assert_eq!(LayerConfig::new(0, 1).unwrap_err(), ConfigError::ZeroHiddenDim);
        assert_eq!(LayerConfig::new(4, 0).unwrap_err(), ConfigError::ZeroSeeds);
    }

    #[test]
    fn non_positive_epsilons_are_config_errors() {
        for bad in [0.0, -1e-6, f32::NAN, f32::INFINITY] {
            let c = LayerConfig { dead_eps: bad, ..LayerConfig::new(4, 2).unwrap() };
            assert!(matches!(c.validate(), Err(ConfigError::OutOfRange { what: "dead_eps", .. })), "{bad}");
            let c = LayerConfig { snr_eps: bad, ..LayerConfig::new(4, 2).unwrap() };
            assert!(matches!(c.validate(), Err(ConfigError::OutOfRange { what: "snr_eps", .. })), "{bad}");
        }
        let c = LayerConfig::new(4, 2).unwrap().with_stability(StabilityMode::Strict { k: 0.0 });
        assert!(c.validate().is_err());
    }

    #[test]
    fn grafting_parameters_are_checked() {
        let mut c = LayerConfig::new(4, 2).unwrap();
        c.grafting.ramp_epochs = 0;
        assert!(c.validate().is_err());
        let mut c = LayerConfig::new(4, 2).unwrap();
        c.grafting.grad_lower = 2.0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = LayerConfig::new(8, 4).unwrap();
        assert_eq!(c.chunk_size(), 2);
        assert_eq!(c.dead_eps, 1e-6);
        assert_eq!(c.snr_eps, 1e-8);
        assert_eq!(c.embargo_epochs, 10);
        assert_eq!(c.stabilization_epochs, 5);
        assert_eq!(
            c.grafting,
            GraftingConfig {
                ramp_epochs: 30,
                performance_k: 10.0,
                drift_threshold: 0.12,
                grad_lower: 0.1,
                grad_upper: 1.0
            }
        );
        assert_eq!(StabilityMode::strict(), StabilityMode::Strict { k: 6.0 });
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = LayerConfig::new(8, 4).unwrap().with_stability(StabilityMode::strict());
        let s = serde_json::to_string(&c).unwrap();
        let back: LayerConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn stability_mode_raw_values_are_checked() {
        assert_eq!(StabilityMode::from_raw(0, 6.0).unwrap(), StabilityMode::Off);
        assert_eq!(StabilityMode::from_raw(1, 3.0).unwrap(), StabilityMode::Strict { k: 3.0 });
        assert!(StabilityMode::from_raw(2, 6.0).is_err());
    }
}
