//! `kasmina conformance`: the conformance suite on the named devices.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kasmina::{Backend, DType, DeviceName};
use kasmina_conformance::{CaseResult, Size};

use super::select::DeviceSelector;
use super::table::Table;
use crate::{CmdResult, Failure};

/// Options of `kasmina conformance`.
#[derive(Debug, clap::Args)]
pub struct ConformanceArgs {
    /// Where to run: a device (cpu, cuda:1, wgpu:0), every device of a backend (cuda, wgpu), or
    /// all (every compiled-in backend and device found).
    #[arg(long, alias = "backend", value_name = "DEVICE", default_value = "all")]
    device: DeviceSelector,
    /// Also write the report (every row and the summary) as JSON (`-`: to stdout, the table then
    /// goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// CI-sized cases (the default is the full sizes, for GPUs).
    #[arg(long)]
    quick: bool,
    /// Only cases whose `group/case/dtype` name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

/// A device that could not be opened becomes one failed row.
fn unavailable_row(device: DeviceName, e: &kasmina::Error) -> CaseResult {
    CaseResult {
        device: device.to_string(),
        case: "open device".into(),
        dtype: None,
        worst_error: 0.0,
        tolerance: 0.0,
        passed: false,
        detail: e.to_string(),
    }
}

/// How rows reach the reader while the suite runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// A spinner on the terminal (stderr); the table at the end.
    Spinner,
    /// Each row as one line as soon as it completes: a log or a pipe sees progress as it
    /// happens instead of the whole table at the end.
    Lines,
}

fn run_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    size: Size,
    filter: Option<&str>,
    live: Live,
) -> kasmina::Result<Vec<CaseResult>> {
    let backend = open()?;
    let info = backend.info();
    let target = if live == Live::Spinner && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({pos} cases, {elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(format!("preparing {} ({}): kernels for every dtype", info.id(), info.name));
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    let supported: Vec<DType> = DType::ALL.into_iter().filter(|d| backend.supports(*d)).collect();
    backend.prepare(&supported)?;
    pb.set_message(format!("conformance on {} ({})", info.id(), info.name));
    let rows = kasmina_conformance::run_all(&backend, size, filter, &mut |r| {
        pb.set_message(format!("{}: {}", info.id(), r.case));
        pb.inc(1);
        live.row(r);
    });
    pb.finish_and_clear();
    Ok(rows)
}

impl Live {
    /// Prints `r` as one line now, in [`Live::Lines`] mode.
    fn row(self, r: &CaseResult) {
        if self == Live::Lines {
            say!("{}", row_cells(r).join("  ").trim_end());
        }
    }
}

/// The table's cells of one row.
fn row_cells(r: &CaseResult) -> [String; 7] {
    let detail = if r.passed && !r.is_skipped() { String::new() } else { r.detail.clone() };
    [
        r.device.clone(),
        r.case.clone(),
        r.dtype.map_or("-".to_string(), |d| d.to_string()),
        format!("{:.3e}", r.worst_error),
        format!("{:.1e}", r.tolerance),
        status(r).to_string(),
        detail,
    ]
}

fn status(r: &CaseResult) -> &'static str {
    if r.is_skipped() {
        "skip"
    } else if r.passed {
        "pass"
    } else {
        "FAIL"
    }
}

/// Runs the suite on every named device, prints the table and the summary;
/// exit status 1 when any case failed.
pub fn run(a: ConformanceArgs) -> CmdResult {
    let (devices, skipped) = a.device.devices()?;
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    // The human-readable output goes to stdout, or to stderr when the JSON report takes stdout.
    let json_out = a.json.as_deref().is_some_and(crate::is_stdout);
    let text_on_terminal = if json_out { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let live = if text_on_terminal { Live::Spinner } else { Live::Lines };
    let size = if a.quick { Size::Quick } else { Size::Full };
    let mut rows = Vec::new();
    for device in devices {
        let r: kasmina::Result<Vec<CaseResult>> =
            kasmina::with_backend!(device, |open| run_on(open, size, a.filter.as_deref(), live));
        match r {
            Ok(v) => rows.extend(v),
            Err(e) => {
                let row = unavailable_row(device, &e);
                live.row(&row);
                rows.push(row);
            }
        }
    }
    if live == Live::Spinner {
        let mut t = Table::new(["device", "case", "dtype", "worst error", "tolerance", "result", "detail"]);
        for r in &rows {
            t.row(row_cells(r));
        }
        say_raw!("{}", t.render());
    }
    let failed = rows.iter().filter(|r| !r.passed).count();
    let skips = rows.iter().filter(|r| r.is_skipped()).count();
    let passed = rows.len() - failed - skips;
    let summary = if skips > 0 {
        format!("{passed} passed, {failed} failed ({skips} skipped)")
    } else {
        format!("{passed} passed, {failed} failed")
    };
    say!("{summary}");
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "size": size,
            "skipped_backends": skipped,
            "results": rows,
            "passed": passed,
            "failed": failed,
            "skipped": skips,
            "summary": summary,
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| kasmina::Error::Invalid(e.to_string()))?;
        crate::write_json(path, &text)?;
    }
    if failed > 0 { Err(Failure::Reported) } else { Ok(()) }
}
