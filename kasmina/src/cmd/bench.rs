//! `kasmina bench`: forward and backward bandwidth against the device's own
//! copy of the same bytes, measured in the same run (`kasmina_benches::run_bench`).

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kasmina::{Backend, BackendKind, DType};
use kasmina_benches::{BenchRecord, BenchSpec, SeedMix};

use crate::CmdResult;

/// Options of `kasmina bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Backend: cpu, wgpu, cuda, a device such as cuda:1, or all.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Only this device index of the backend.
    #[arg(long)]
    device: Option<usize>,
    /// Small shapes and few repetitions (a smoke test, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Also write the records as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The default shapes `(B, H, S)` and dtypes of a backend.
fn shapes(kind: BackendKind, quick: bool) -> (Vec<(usize, usize, usize)>, Vec<DType>) {
    let dtypes = match kind {
        BackendKind::Cpu | BackendKind::Cuda => vec![DType::F32, DType::BF16],
        BackendKind::Wgpu => vec![DType::F32, DType::F16],
    };
    let shapes = match (kind, quick) {
        (_, true) => vec![(256, 1024, 16)],
        (BackendKind::Cpu, false) => vec![(4096, 4096, 64)],
        (BackendKind::Wgpu, false) => vec![(16384, 8192, 128)],
        (BackendKind::Cuda, false) => vec![(16384, 8192, 128), (32, 768, 16)],
    };
    (shapes, dtypes)
}

fn bench_on<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    kind: BackendKind,
    quick: bool,
    reps: Option<usize>,
) -> kasmina::Result<Vec<BenchRecord>> {
    let backend = open()?;
    let info = backend.info();
    let (shapes, dtypes) = shapes(kind, quick);
    let mut specs = Vec::new();
    for &(b, h, s) in &shapes {
        for &dtype in &dtypes {
            if !backend.supports(dtype) {
                eprintln!("{}: skipping {dtype} (not supported by {})", info.id(), info.name);
                continue;
            }
            for mix in [SeedMix::Dormant, SeedMix::Mixed] {
                let reps = reps.unwrap_or(if quick { 3 } else { 20 });
                specs.push(BenchSpec { b, h, s, dtype, mix, reps, warmup: if quick { 1 } else { 3 } });
            }
        }
    }
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(specs.len() as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:<48} [{bar:30}] {pos}/{len}, {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    let mut out = Vec::new();
    for spec in &specs {
        pb.set_message(format!(
            "{} B={} H={} S={} {} {}",
            info.id(),
            spec.b,
            spec.h,
            spec.s,
            spec.dtype,
            spec.mix.name()
        ));
        out.extend(kasmina_benches::run_bench(&backend, spec)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Runs the benchmarks and prints the table (and writes JSON).
pub fn run(a: BenchArgs) -> CmdResult {
    let (devices, skipped) = super::select::devices(&a.backend, a.device)?;
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    let mut records = Vec::new();
    for device in devices {
        let r: kasmina::Result<Vec<BenchRecord>> =
            kasmina::with_backend!(device, |open| bench_on(open, device.kind, a.quick, a.reps));
        records.extend(r?);
    }
    say_raw!("{}", kasmina_benches::format_table(&records));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&records).map_err(|e| kasmina::Error::Invalid(e.to_string()))?;
        kasmina::files::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}
