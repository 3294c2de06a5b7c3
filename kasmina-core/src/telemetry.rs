//! Telemetry (SPEC 5.2): per-seed [`Moments`] merged with Chan's formula, and the
//! per-seed report in two QoS tiers (critical f32, normal f16).

use half::f16;
use serde::{Deserialize, Serialize};

use crate::backend::Accumulators;
use crate::lifecycle::LifecycleState;
use crate::state::LayerState;

/// Running statistics of the finite elements one seed watched.
///
/// Backends produce these however they like (per-block f32 partials on a GPU,
/// per-thread partials on the CPU); the core merges and reports them in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Finite elements.
    pub count: u64,
    /// Their mean (0 when `count == 0`).
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Smallest finite element (+Inf when none).
    pub min: f64,
    /// Largest finite element (-Inf when none).
    pub max: f64,
    /// Finite elements with `|x| < dead_eps`.
    pub dead: u64,
    /// NaN or ±Inf elements.
    pub nonfinite: u64,
}

impl Default for Moments {
    fn default() -> Self {
        Self::empty()
    }
}

impl Moments {
    /// No elements seen.
    pub const fn empty() -> Self {
        Self { count: 0, mean: 0.0, m2: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, dead: 0, nonfinite: 0 }
    }

    /// Adds one element (Welford's update, in f64). Non-finite values only count in `nonfinite`.
    pub fn push(&mut self, x: f64, dead_eps: f64) {
        if !x.is_finite() {
            self.nonfinite += 1;
            return;
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x.abs() < dead_eps {
            self.dead += 1;
        }
    }

    /// Chan's parallel merge: the statistics of the union of both element sets.
    pub fn merge(&self, other: &Moments) -> Moments {
        let n = self.count + other.count;
        let (mean, m2) = if self.count == 0 {
            (other.mean, other.m2)
        } else if other.count == 0 {
            (self.mean, self.m2)
        } else {
            let (na, nb, nf) = (self.count as f64, other.count as f64, n as f64);
            let delta = other.mean - self.mean;
            (self.mean + delta * (nb / nf), self.m2 + other.m2 + delta * delta * (na * nb / nf))
        };
        Moments {
            count: n,
            mean,
            m2,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            dead: self.dead + other.dead,
            nonfinite: self.nonfinite + other.nonfinite,
        }
    }

    /// Population variance `m2 / count` (0 when empty).
    pub fn variance(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.m2 / self.count as f64 }
    }
}

/// Critical tier (f32) of one seed's report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CriticalTelemetry {
    /// `m2 / count` (0 when count is 0).
    #[serde(with = "json_f32")]
    pub variance: f32,
    /// `dead / (count + nonfinite)` (0 when nothing was seen).
    #[serde(with = "json_f32")]
    pub dead_ratio: f32,
    /// Smallest finite element (+Inf when none).
    #[serde(with = "json_f32")]
    pub min: f32,
    /// Largest finite element (-Inf when none).
    #[serde(with = "json_f32")]
    pub max: f32,
    /// NaN/Inf elements (saturating at u32::MAX).
    pub nonfinite: u32,
    /// `sqrt(Σ g²)` over the seed's chunk in every backward since the last `end_epoch`.
    #[serde(with = "json_f32")]
    pub grad_norm: f32,
}

/// Normal tier (f16) of one seed's report: rounded to nearest and saturated to ±65504.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormalTelemetry {
    /// Mean of the finite elements (0 when count is 0).
    #[serde(with = "json_f16")]
    pub mean: f16,
    /// `|mean| / sqrt(variance + snr_eps)` (0 when count is 0).
    #[serde(with = "json_f16")]
    pub snr: f16,
}

/// One seed's report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedReport {
    /// The seed.
    pub seed_id: usize,
    /// Its lifecycle state when the report was made.
    pub lifecycle: LifecycleState,
    /// Finite elements seen.
    pub count: u64,
    /// Dead elements seen.
    pub dead: u64,
    /// f32 tier.
    #[serde(flatten)]
    pub critical: CriticalTelemetry,
    /// f16 tier.
    #[serde(flatten)]
    pub normal: NormalTelemetry,
}

/// The report of every seed, produced by `end_epoch` or `telemetry()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// The epoch the statistics belong to.
    pub epoch: u32,
    /// One entry per seed, by seed id.
    pub seeds: Vec<SeedReport>,
}

/// Rounds to f16, saturating finite values to ±65504 so they never become Inf (SPEC 5.2).
pub fn saturating_f16(v: f64) -> f16 {
    if v.is_nan() {
        f16::NAN
    } else if v.is_finite() {
        // Round in f64 -> f32 -> f16: f64 -> f32 rounding cannot cross an f16
        // rounding boundary for values in f16's range except by double rounding
        // at exact ties, which f32's 13 extra bits make unreachable here.
        let c = v.clamp(-65504.0, 65504.0);
        f16::from_f32(c as f32)
    } else {
        f16::from_f64(v)
    }
}

impl SeedReport {
    /// Builds one seed's report from its moments and gradient sum of squares.
    pub fn from_moments(seed_id: usize, lifecycle: LifecycleState, m: &Moments, grad_sq: f64, snr_eps: f32) -> Self {
        let variance = m.variance();
        let seen = m.count + m.nonfinite;
        let dead_ratio = if seen == 0 { 0.0 } else { m.dead as f64 / seen as f64 };
        let (mean, snr) =
            if m.count == 0 { (0.0, 0.0) } else { (m.mean, m.mean.abs() / (variance + snr_eps as f64).sqrt()) };
        SeedReport {
            seed_id,
            lifecycle,
            count: m.count,
            dead: m.dead,
            critical: CriticalTelemetry {
                variance: variance as f32,
                dead_ratio: dead_ratio as f32,
                min: m.min as f32,
                max: m.max as f32,
                nonfinite: u32::try_from(m.nonfinite).unwrap_or(u32::MAX),
                grad_norm: grad_sq.max(0.0).sqrt() as f32,
            },
            normal: NormalTelemetry { mean: saturating_f16(mean), snr: saturating_f16(snr) },
        }
    }
}

impl TelemetryReport {
    /// Consolidates the accumulators of every seed of `state` into a report for `state.epoch`.
    pub fn build(state: &LayerState, acc: &Accumulators) -> crate::Result<Self> {
        acc.check_len(state.num_seeds())?;
        let seeds = (0..state.num_seeds())
            .map(|i| {
                SeedReport::from_moments(
                    i,
                    state.seeds.lifecycle[i],
                    &acc.moments[i],
                    acc.grad_sq[i],
                    state.config.snr_eps,
                )
            })
            .collect();
        Ok(TelemetryReport { epoch: state.epoch, seeds })
    }

    /// The report as pretty JSON (SPEC 5.2's form; non-finite numbers as strings).
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// JSON for f32: numbers, with "inf", "-inf", "nan" for non-finite values (SPEC 5.2).
pub mod json_f32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a float, non-finite values as strings.
    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        super::json_f64_ser(*v as f64, s)
    }

    /// Reads a number or one of "inf", "-inf", "nan".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(super::JsonFloat::deserialize(d)?.0 as f32)
    }
}

/// JSON for f16, as [`json_f32`].
pub mod json_f16 {
    use half::f16;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a half float, non-finite values as strings.
    pub fn serialize<S: Serializer>(v: &f16, s: S) -> Result<S::Ok, S::Error> {
        super::json_f64_ser(v.to_f64(), s)
    }

    /// Reads a number or one of "inf", "-inf", "nan".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f16, D::Error> {
        Ok(f16::from_f64(super::JsonFloat::deserialize(d)?.0))
    }
}

fn json_f64_ser<S: serde::Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("nan")
    } else if v == f64::INFINITY {
        s.serialize_str("inf")
    } else if v == f64::NEG_INFINITY {
        s.serialize_str("-inf")
    } else {
        s.serialize_f64(v)
    }
}

struct JsonFloat(f64);

impl<'de> Deserialize<'de> for JsonFloat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(JsonFloat(v)),
            Raw::Str(s) => match s.as_str() {
                "inf" => Ok(JsonFloat(f64::INFINITY)),
                "-inf" => Ok(JsonFloat(f64::NEG_INFINITY)),
                "nan" => Ok(JsonFloat(f64::NAN)),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"inf\", \"-inf\" or \"nan\", got \"{other}\""
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments_of(xs: &[f64]) -> Moments {
        let mut m = Moments::empty();
        for x in xs {
            m.push(*x, 1e-6);
        }
        m
    }

    #[test]
    fn chan_merge_equals_sequential_statistics() {
        let xs: Vec<f64> = (0..100).map(|i| ((i * 37 % 101) as f64) * 0.25 - 7.0).collect();
        let all = moments_of(&xs);
        for split in [0, 1, 13, 50, 99, 100] {
            let m = moments_of(&xs[..split]).merge(&moments_of(&xs[split..]));
            assert_eq!(m.count, all.count);
            assert!((m.mean - all.mean).abs() < 1e-12);
            assert!((m.m2 - all.m2).abs() < 1e-9 * all.m2);
            assert_eq!((m.min, m.max), (all.min, all.max));
        }
    }

    #[test]
    fn nonfinite_values_only_count_as_nonfinite() {
        let m = moments_of(&[1.0, f64::NAN, f64::INFINITY, 3.0, f64::NEG_INFINITY, 0.0]);
        assert_eq!((m.count, m.nonfinite, m.dead), (3, 3, 1));
        assert_eq!((m.min, m.max), (0.0, 3.0));
        assert!((m.mean - 4.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn empty_seed_reports_zero_mean_and_infinite_bounds() {
        let r = SeedReport::from_moments(0, LifecycleState::Dormant, &Moments::empty(), 0.0, 1e-8);
        assert_eq!(r.critical.variance, 0.0);
        assert_eq!(r.normal.mean, f16::ZERO);
        assert_eq!(r.normal.snr, f16::ZERO);
        assert_eq!(r.critical.min, f32::INFINITY);
        assert_eq!(r.critical.max, f32::NEG_INFINITY);
        assert_eq!(r.critical.dead_ratio, 0.0);
    }

    #[test]
    fn report_fields_follow_the_spec_formulas() {
        let m = moments_of(&[1.0, 2.0, 3.0, 4.0, 0.0, f64::NAN]);
        let r = SeedReport::from_moments(2, LifecycleState::Grafting, &m, 9.0, 1e-8);
        assert_eq!(r.critical.variance, 2.0);
        assert_eq!(r.critical.dead_ratio, 1.0 / 6.0);
        assert_eq!(r.critical.grad_norm, 3.0);
        assert_eq!(r.critical.nonfinite, 1);
        assert_eq!(r.normal.mean, f16::from_f32(2.0));
        assert_eq!(r.normal.snr, f16::from_f64(2.0 / (2.0f64 + 1e-8).sqrt()));
    }

    #[test]
    fn f16_tier_saturates_instead_of_overflowing() {
        assert_eq!(saturating_f16(1e9), f16::MAX);
        assert_eq!(saturating_f16(-1e9), f16::MIN);
        assert_eq!(saturating_f16(65519.0), f16::MAX);
        assert!(saturating_f16(f64::NAN).is_nan());
        assert_eq!(saturating_f16(f64::INFINITY), f16::INFINITY);
    }

    #[test]
    fn json_writes_nonfinite_numbers_as_strings_and_reads_them_back() {
        let r = SeedReport::from_moments(0, LifecycleState::Dormant, &Moments::empty(), 0.0, 1e-8);
        let rep = TelemetryReport { epoch: 3, seeds: vec![r] };
        let v: serde_json::Value = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(v["epoch"], 3);
        let s = &v["seeds"][0];
        assert_eq!(s["min"], "inf");
        assert_eq!(s["max"], "-inf");
        assert_eq!(s["lifecycle"], "DORMANT");
        assert_eq!(s["seed_id"], 0);
        for key in ["count", "dead", "variance", "dead_ratio", "nonfinite", "grad_norm", "mean", "snr"] {
            assert!(s.get(key).is_some(), "missing {key}");
        }
        let back: TelemetryReport = serde_json::from_str(&rep.to_json()).unwrap();
        assert_eq!(back, rep);
    }
}
