//! Comparisons of backend output against the reference, and [`Check`], which
//! collects the comparisons of one case into a [`CaseResult`].

use half::{bf16, f16};
use kasmina_core::DType;

use crate::CaseResult;

/// The SPEC 8 relative-L2 tolerance of outputs in `dtype`.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1e-2,
    }
}

/// Tolerance of an f32 sum of `n` terms (parameter gradients, `grad_norm`,
/// telemetry means): `1e-5 * max(1, sqrt(n / 1024))`, the typical error growth
/// of a sequential f32 sum, so long reductions on Full sizes are not held to
/// an accuracy only pairwise summation reaches.
pub fn reduction_tolerance(n: usize) -> f64 {
    1e-5 * (n as f64 / 1024.0).sqrt().max(1.0)
}

/// `v` rounded to `dtype` (round to nearest even) and widened back.
pub(crate) fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => f16::from_f64(v).to_f64(),
        DType::BF16 => bf16::from_f64(v).to_f64(),
    }
}

/// The outcome of a relative-L2 comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct L2 {
    /// `‖out - ref‖₂ / ‖ref‖₂` over the finite reference elements (the absolute
    /// norm when the reference is all zero).
    pub err: f64,
    /// Elements whose non-finite class differs (NaN where the reference is not, ...).
    pub mismatches: Vec<usize>,
    /// The element with the largest absolute difference.
    pub worst: Option<usize>,
    /// Elements compared.
    pub compared: usize,
}

/// Compares `out` with `reference` on the elements `include` selects. When
/// `dtype` is given, a reference value that overflows the dtype must come out
/// as the same infinity.
pub(crate) fn rel_l2(out: &[f64], reference: &[f64], dtype: Option<DType>, include: impl Fn(usize) -> bool) -> L2 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut res = L2 { err: 0.0, mismatches: Vec::new(), worst: None, compared: 0 };
    let mut worst_abs = -1.0;
    for i in 0..reference.len().min(out.len()) {
        if !include(i) {
            continue;
        }
        res.compared += 1;
        let (o, r) = (out[i], reference[i]);
        let rr = dtype.map_or(r, |d| round_to(d, r));
        if !rr.is_finite() || !o.is_finite() {
            if !((rr.is_nan() && o.is_nan()) || rr == o) {
                res.mismatches.push(i);
            }
            continue;
        }
        let d = o - r;
        num += d * d;
        den += r * r;
        if d.abs() > worst_abs {
            worst_abs = d.abs();
            res.worst = Some(i);
        }
    }
    res.err = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    res
}

/// One comparison of a case.
#[derive(Debug, Clone)]
struct Part {
    what: String,
    err: f64,
    tol: f64,
    ok: bool,
    note: String,
}

impl Part {
    /// How close to failing: failing parts rank above all passing ones.
    fn rank(&self) -> f64 {
        if !self.ok {
            f64::INFINITY
        } else if self.tol > 0.0 {
            self.err / self.tol
        } else {
            0.0
        }
    }
}

/// The comparisons of one case, turned into a [`CaseResult`] by [`Check::finish`].
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub case: String,
    pub dtype: Option<DType>,
    parts: Vec<Part>,
    /// Where the failure reproduces from (a generator seed), added to failed rows.
    pub repro: Option<String>,
}

impl Check {
    pub fn new(case: impl Into<String>, dtype: Option<DType>) -> Self {
        Self { case: case.into(), dtype, parts: Vec::new(), repro: None }
    }

    /// Whether every comparison so far passed.
    pub fn ok(&self) -> bool {
        self.parts.iter().all(|p| p.ok)
    }

    fn push(&mut self, what: impl Into<String>, err: f64, tol: f64, ok: bool, note: String) {
        self.parts.push(Part { what: what.into(), err, tol, ok, note });
    }

    /// A failure with a message (a backend error, a missing value...).
    pub fn fail(&mut self, what: impl Into<String>, msg: impl Into<String>) {
        self.push(what, f64::INFINITY, 0.0, false, msg.into());
    }

    /// A condition that must hold.
    pub fn require(&mut self, what: impl Into<String>, ok: bool, msg: impl FnOnce() -> String) {
        let note = if ok { String::new() } else { msg() };
        self.push(what, if ok { 0.0 } else { 1.0 }, 0.0, ok, note);
    }

    /// An exact check that counted `mismatches`; `first` describes the first one.
    pub fn exact(&mut self, what: impl Into<String>, mismatches: usize, first: impl FnOnce() -> String) {
        let note = if mismatches == 0 { String::new() } else { format!("{mismatches} mismatches, first: {}", first()) };
        self.push(what, mismatches as f64, 0.0, mismatches == 0, note);
    }

    /// Two values that must be equal.
    pub fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: impl Into<String>, got: T, want: T) {
        let ok = got == want;
        self.require(what, ok, || format!("got {got:?}, want {want:?}"));
    }

    /// `|got - want| <= tol * |want| + floor`; the error reported is relative to `|want|`.
    pub fn close(&mut self, what: impl Into<String>, got: f64, want: f64, tol: f64, floor: f64) {
        let diff = (got - want).abs();
        let ok = if got.is_finite() && want.is_finite() {
            diff <= tol * want.abs() + floor
        } else {
            (got.is_nan() && want.is_nan()) || got == want
        };
        // The error is scaled so that it stays within `tol` exactly when the check
        // passes: `tol * diff / (tol * |want| + floor)`, the relative error when `floor` is 0.
        let bound = tol * want.abs() + floor;
        let err = if diff.is_nan() || diff == 0.0 {
            if ok { 0.0 } else { f64::INFINITY }
        } else if bound > 0.0 {
            tol * diff / bound
        } else {
            f64::INFINITY
        };
        let note = if ok { String::new() } else { format!("got {got:e}, want {want:e}") };
        self.push(what, err, tol, ok, note);
    }

    /// A relative-L2 comparison; `locate` names an element index for messages.
    #[allow(clippy::too_many_arguments)]
    pub fn l2(
        &mut self,
        what: impl Into<String>,
        out: &[f64],
        reference: &[f64],
        dtype: Option<DType>,
        tol: f64,
        include: impl Fn(usize) -> bool,
        locate: &dyn Fn(usize) -> String,
    ) {
        let what = what.into();
        if out.len() != reference.len() {
            self.fail(what, format!("{} values, want {}", out.len(), reference.len()));
            return;
        }
        let r = rel_l2(out, reference, dtype, include);
        if r.compared == 0 {
            return;
        }
        let ok = r.mismatches.is_empty() && r.err <= tol;
        let mut note = String::new();
        if let Some(&i) = r.mismatches.first() {
            note = format!(
                "{} non-finite mismatches, first at {}: got {:e}, want {:e}; ",
                r.mismatches.len(),
                locate(i),
                out[i],
                reference[i]
            );
        }
        if !ok && let Some(i) = r.worst {
            note.push_str(&format!(
                "rel L2 {:.3e} over {} values, worst at {}: got {:e}, want {:e}",
                r.err,
                r.compared,
                locate(i),
                out[i],
                reference[i]
            ));
        }
        let err = if r.mismatches.is_empty() { r.err } else { f64::INFINITY };
        self.push(what, err, tol, ok, note);
    }

    /// The row of this case.
    pub fn finish(self, device: &str) -> CaseResult {
        let passed = self.ok();
        let worst =
            self.parts.iter().max_by(|a, b| a.rank().partial_cmp(&b.rank()).unwrap_or(std::cmp::Ordering::Equal));
        let (worst_error, tolerance) = worst.map_or((0.0, 0.0), |p| (p.err, p.tol));
        let detail = if passed {
            match worst {
                Some(p) => format!("{} checks, closest: {}", self.parts.len(), p.what),
                None => "no values to compare".to_string(),
            }
        } else {
            let failed: Vec<String> =
                self.parts.iter().filter(|p| !p.ok).take(8).map(|p| format!("{}: {}", p.what, p.note)).collect();
            let more = self.parts.iter().filter(|p| !p.ok).count().saturating_sub(8);
            let mut d = failed.join(" | ");
            if more > 0 {
                d.push_str(&format!(" | ... {more} more"));
            }
            if let Some(r) = &self.repro {
                d.push_str(&format!(" | reproduce: {r}"));
            }
            d
        };
        CaseResult {
            device: device.to_string(),
            case: self.case,
            dtype: self.dtype,
            worst_error,
            tolerance,
            passed,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_is_the_relative_norm_of_the_difference() {
        let r = rel_l2(&[1.0, 2.0, 2.0], &[1.0, 2.0, 2.0 + 1e-3], None, |_| true);
        let want = 1e-3 / (1.0f64 + 4.0 + 2.001 * 2.001).sqrt();
        assert!((r.err - want).abs() < 1e-12 * want.max(1.0) + 1e-15, "{r:?}");
        assert_eq!(r.worst, Some(2));
        // All-zero reference: the absolute norm.
        let r = rel_l2(&[3.0, 4.0], &[0.0, 0.0], None, |_| true);
        assert_eq!(r.err, 5.0);
        // Excluded elements do not count.
        let r = rel_l2(&[100.0, 1.0], &[0.0, 1.0], None, |i| i == 1);
        assert_eq!((r.err, r.compared), (0.0, 1));
    }

    #[test]
    fn nan_passes_only_where_the_reference_is_nan() {
        let r = rel_l2(&[f64::NAN, 1.0], &[1.0, 1.0], None, |_| true);
        assert_eq!(r.mismatches, vec![0]);
        let r = rel_l2(&[f64::NAN, f64::INFINITY], &[f64::NAN, f64::INFINITY], None, |_| true);
        assert!(r.mismatches.is_empty());
        let r = rel_l2(&[f64::NEG_INFINITY], &[f64::INFINITY], None, |_| true);
        assert_eq!(r.mismatches, vec![0]);
        // A finite output where the reference is infinite fails too.
        let r = rel_l2(&[1e30], &[f64::INFINITY], None, |_| true);
        assert_eq!(r.mismatches, vec![0]);
        // A reference that overflows f16 must come out as the same infinity.
        let r = rel_l2(&[f64::INFINITY], &[1e6], Some(DType::F16), |_| true);
        assert!(r.mismatches.is_empty());
        let r = rel_l2(&[65504.0], &[1e6], Some(DType::F16), |_| true);
        assert_eq!(r.mismatches, vec![0]);
    }

    #[test]
    fn check_reports_the_failing_part_and_the_repro() {
        let mut c = Check::new("g/c", Some(DType::F16));
        c.close("mean", 1.0, 1.0, 1e-5, 0.0);
        c.l2("y", &[1.0, 2.5], &[1.0, 2.0], Some(DType::F16), tolerance(DType::F16), |_| true, &|i| format!("#{i}"));
        c.repro = Some("seed 5".into());
        let r = c.finish("cpu:0");
        assert!(!r.passed);
        assert_eq!(r.tolerance, 2e-3);
        assert!(r.detail.contains("worst at #1") && r.detail.contains("seed 5"), "{}", r.detail);
        let mut c = Check::new("g/c", None);
        c.exact("bits", 0, String::new);
        c.close("v", 1.0 + 1e-6, 1.0, 1e-5, 0.0);
        let r = c.finish("cpu:0");
        assert!(r.passed, "{r:?}");
        assert!((r.worst_error - 1e-6).abs() < 1e-12);
        assert!(r.detail.contains("closest: v"));
    }

    #[test]
    fn close_handles_infinities_and_floors() {
        let mut c = Check::new("g/c", None);
        c.close("both inf", f64::INFINITY, f64::INFINITY, 1e-4, 0.0);
        c.close("floor", 1e-20, 0.0, 1e-4, 1e-18);
        assert!(c.ok());
        c.close("nan", f64::NAN, 1.0, 1e-4, 0.0);
        assert!(!c.ok());
    }

    #[test]
    fn tolerances_follow_spec_8() {
        assert_eq!(tolerance(DType::F32), 1e-5);
        assert_eq!(tolerance(DType::F16), 2e-3);
        assert_eq!(tolerance(DType::BF16), 1e-2);
        assert_eq!(reduction_tolerance(10), 1e-5);
        assert!((reduction_tolerance(1024 * 100) - 1e-4).abs() < 1e-12);
        assert_eq!(round_to(DType::BF16, 1.0 + 1.0 / 512.0), 1.0);
    }
}
