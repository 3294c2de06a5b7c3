//! `kasmina-conformance`: the float64 reference of `../shared/SPEC.md` and the
//! conformance suite every backend runs.
//!
//! - [`reference`](mod@reference): SPEC 4, 5 and 7 in f64, one seed and one row at a time.
//! - [`run_all`] / [`run_group`]: the cases, generic over any
//!   [`Backend`], with the reference as oracle. Each
//!   case gives a [`CaseResult`] row; a backend error or panic is a failed row,
//!   never a panic of the suite.
//! - [`conformance_tests!`]: one `#[test]` per case group inside a backend crate:
//!
//! ```ignore
//! fn make() -> Result<kasmina_cpu::CpuBackend, String> {
//!     kasmina_cpu::CpuBackend::new().map_err(|e| e.to_string())
//! }
//! kasmina_conformance::conformance_tests!(make);
//! ```
//!
//! Case groups ([`GROUPS`]), each run for every dtype the backend supports
//! (the others give skipped rows):
//!
//! | group | checks |
//! |---|---|
//! | `forward_modes` | `y` for every lifecycle state × blueprint type; identity bit for bit with NaN payloads; NaN/±Inf inputs |
//! | `telemetry` | accumulators and report over several forward calls: NaN/±Inf, `dead_eps`, 1e30, `\|mean\|/std = 1e4`, no finite value; `grad_sq`; `end_epoch` |
//! | `backward` | `dx`, `dweights`, `dscales`, `grad_norm` for every state × type; zeros before any call |
//! | `strict_mode` | clamped forward and zeroed gradients; statistics set by `end_epoch` and used next; off mode ignores them |
//! | `shapes` | `C` = 1 … 4099 (primes, no vector multiple), `S = 1`, `S = H`, `B` = 0, 1, prime: the whole contract |
//! | `poison` | every `y` and `dx` element written |
//! | `determinism` | bit-identical output, telemetry and gradients, same layer and a second layer |
//! | `checksum` | device checksum equals the host's after every upload, transition and `end_epoch` |
//! | `randomized` | random shapes, states, parameters, stability, inputs; rows name their seed |
//! | `bad_input` | wrong lengths/dtypes, seed out of range, illegal transitions, invalid values, corrupted snapshots: typed errors, state unchanged |
//!
//! Every output tensor is filled with a signalling-NaN poison before each
//! call, in every group.
//!
//! Tolerances (SPEC 8): relative L2 `‖out - ref‖₂ / ‖ref‖₂` of f32 ≤ 1e-5,
//! f16 ≤ 2e-3, bf16 ≤ 1e-2 against the reference fed the same rounded inputs;
//! identity seeds bit for bit (NaN payloads too); a non-finite value matches
//! only the same non-finite reference value (any NaN for NaN). Parameter
//! gradients, `grad_norm` and telemetry means are sums over `n` terms in f32:
//! their tolerance is `1e-5 * max(1, sqrt(n / 1024))`, the typical error growth
//! of a plain sequential f32 sum, so a backend is not required to use pairwise
//! reductions on Full sizes. Telemetry variance is held to relative 1e-4 (SPEC 5.2).
//!
//! Environment: `KASMINA_REQUIRE_GPU=1` turns "backend unavailable" into a test
//! failure; `KASMINA_CONFORMANCE_SIZE=full` runs the macro's tests with
//! [`Size::Full`]; `KASMINA_CONFORMANCE_SEED=<n>` runs the randomized group on
//! that one generator seed (each randomized row names its seed).
#![deny(missing_docs)]

mod cases;
mod check;
mod data;
pub mod reference;
pub mod toolkit;

use kasmina_core::{Backend, DType};

pub use check::tolerance;

/// How large the cases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Size {
    /// CI-sized: the whole suite runs in seconds on a small CPU.
    Quick,
    /// Tensors of hundreds of MB, for GPUs.
    Full,
}

/// One row of the conformance table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaseResult {
    /// `backend:index name` of the device.
    pub device: String,
    /// `group/case`, e.g. `forward_modes/GRAFTING/CONV`.
    pub case: String,
    /// The activation dtype of the case, if it has one.
    pub dtype: Option<DType>,
    /// The error of the check that came closest to (or went past) its tolerance.
    pub worst_error: f64,
    /// That check's tolerance (0 for exact checks, whose error counts mismatches).
    pub tolerance: f64,
    /// Whether every check of the case passed. Skipped rows pass and their
    /// `detail` starts with `skipped:`.
    pub passed: bool,
    /// What failed (with indices and values), what was skipped and why, or a summary.
    pub detail: String,
}

impl CaseResult {
    /// Whether the row is a skip (e.g. a dtype the backend does not support).
    pub fn is_skipped(&self) -> bool {
        self.detail.starts_with("skipped:")
    }
}

impl std::fmt::Display for CaseResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.is_skipped() {
            "SKIP"
        } else if self.passed {
            "ok"
        } else {
            "FAIL"
        };
        let dtype = self.dtype.map_or("-", |d| d.name());
        write!(
            f,
            "{status:<4} {:<52} {dtype:<4} err {:<10.3e} tol {:<8.1e} {}",
            self.case, self.worst_error, self.tolerance, self.detail
        )
    }
}

/// The one list of case groups, in run order: each is a module of `cases` with a `run`, a
/// name in [`GROUPS`] and a `#[test]` of [`conformance_tests!`]. Expands `$crate::__groups!`
/// again with `[$mode]` and the list.
#[doc(hidden)]
#[macro_export]
macro_rules! __groups {
    (@list [names] $($g:ident)*) => {
        [$(stringify!($g)),*]
    };
    (@list [tests $make:path] $($g:ident)*) => {
        $(
            #[test]
            fn $g() {
                $crate::run_test_group(stringify!($g), || $make());
            }
        )*
    };
    (@list [dispatch $group:expr, $ctx:expr, $fallback:expr] $($g:ident)*) => {{
        $(if $group == stringify!($g) {
            $g::run($ctx)
        } else)* {
            $fallback
        }
    }};
    ($($mode:tt)*) => {
        $crate::__groups! {
            @list [$($mode)*]
            forward_modes telemetry backward strict_mode shapes poison determinism checksum randomized bad_input
        }
    };
}

/// The case groups, in the order [`run_all`] runs them.
pub const GROUPS: [&str; 10] = __groups!(names);

/// Runs every case whose name `group/case/dtype` contains `filter` (all when
/// `None`), calling `progress` after each row. Never panics on a backend
/// error or a backend panic: those are failed rows.
pub fn run_all<B: Backend>(
    backend: &B,
    size: Size,
    filter: Option<&str>,
    progress: &mut dyn FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let mut out = Vec::new();
    for group in GROUPS {
        out.extend(cases::run_group(backend, size, group, filter, progress));
    }
    out
}

/// Runs one group of [`GROUPS`] by its exact name (an unknown name gives one failed row).
pub fn run_group<B: Backend>(
    backend: &B,
    size: Size,
    group: &str,
    progress: &mut dyn FnMut(&CaseResult),
) -> Vec<CaseResult> {
    cases::run_group(backend, size, group, None, progress)
}

/// The body of each test [`conformance_tests!`] generates: makes the backend
/// (skipping with the reason when it is unavailable, unless
/// `KASMINA_REQUIRE_GPU=1`), prints the device and every row, and panics
/// listing the failed rows.
///
/// # Panics
/// When a case fails, or when the backend is unavailable and `KASMINA_REQUIRE_GPU=1`.
pub fn run_test_group<B: Backend>(group: &str, make: impl FnOnce() -> Result<B, String>) {
    let backend = match make() {
        Ok(b) => b,
        Err(reason) => {
            if std::env::var("KASMINA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{group}: the backend is unavailable and KASMINA_REQUIRE_GPU=1: {reason}");
            }
            println!("skipped: {reason}");
            return;
        }
    };
    let info = backend.info();
    println!("device: {} ({})", info.id(), info.name);
    let size = match std::env::var("KASMINA_CONFORMANCE_SIZE") {
        Ok(v) if v.eq_ignore_ascii_case("full") => Size::Full,
        _ => Size::Quick,
    };
    let results = run_group(&backend, size, group, &mut |r| println!("{r}"));
    let failed: Vec<String> = results.iter().filter(|r| !r.passed).map(|r| r.to_string()).collect();
    if !failed.is_empty() {
        panic!(
            "{} of {} {group} cases failed on {} ({}):\n{}",
            failed.len(),
            results.len(),
            info.id(),
            info.name,
            failed.join("\n")
        );
    }
}

/// Generates one `#[test]` per case group of [`GROUPS`], each calling `$make()`
/// (a `fn() -> Result<B, String>`; `Err(reason)` means the device is unavailable).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::__groups!(tests $make);
    };
}
