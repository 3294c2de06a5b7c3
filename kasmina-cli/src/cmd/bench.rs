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
    /// Where to run: a device (cpu, cuda:1, wgpu:0), every device of a backend (cuda, wgpu), or
    /// all.
    #[arg(long, alias = "backend", value_name = "DEVICE", default_value = "cpu")]
    device: super::select::DeviceSelector,
    /// Small shapes and few repetitions (a smoke test, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Timed repetitions per figure (the median is reported).
    #[arg(long)]
    reps: Option<usize>,
    /// Also write the records as JSON (`-`: to stdout, the table then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Shapes to run instead of the backend's defaults, as `B,H,S` (repeatable).
    #[arg(long = "shape", value_name = "B,H,S", value_parser = parse_shape)]
    shapes: Vec<(usize, usize, usize)>,
    /// CUDA kernel families to compare, each in its own run (repeatable or comma-separated):
    /// `portable`, `hopper` (TMA + warp specialization, compute capability 9.0) and `auto` (the
    /// autotuner's pick). Without it the CUDA backend follows `KASMINA_CUDA_PATH`.
    #[arg(long = "cuda-path", value_name = "PATH", value_delimiter = ',', ignore_case = true,
          value_parser = ["portable", "hopper", "auto"])]
    cuda_paths: Vec<String>,
    /// Only these activation dtypes (repeatable or comma-separated: f32, f16, bf16) instead of
    /// the backend's defaults.
    #[arg(long = "dtype", value_name = "DTYPE", value_delimiter = ',', value_parser = crate::one_of::<DType>(crate::DTYPES), ignore_case = true)]
    dtypes: Vec<DType>,
    /// Only this seed mix (`dormant` or `mixed`); both without it.
    #[arg(long, value_name = "MIX", value_parser = crate::one_of::<SeedMix>(&["dormant", "mixed"]))]
    mix: Option<SeedMix>,
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("'{p}' in shape '{s}': {e}")))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [b, h, sd] if b > 0 && h > 0 && sd > 0 && h % sd == 0 => Ok((b, h, sd)),
        [_, h, sd] if sd > 0 && h % sd != 0 => Err(format!("H={h} is not a multiple of S={sd} in '{s}'")),
        _ => Err(format!("a shape is B,H,S with every part above zero, got '{s}'")),
    }
}

/// The default shapes `(B, H, S)` and dtypes of a backend.
fn defaults(kind: BackendKind, quick: bool) -> (Vec<(usize, usize, usize)>, Vec<DType>) {
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

/// What one `kasmina bench` run measures.
struct Plan<'a> {
    kind: BackendKind,
    quick: bool,
    reps: Option<usize>,
    shapes: &'a [(usize, usize, usize)],
    dtypes: &'a [DType],
    mix: Option<SeedMix>,
}

fn bench_on<B: Backend>(open: impl Fn() -> kasmina::Result<B>, plan: &Plan<'_>) -> kasmina::Result<Vec<BenchRecord>> {
    bench_backend(&open()?, plan, &mut |_| String::new())
}

/// Runs every spec of `plan` on `backend`; `variant(backward)` labels each record after its run.
fn bench_backend<B: Backend>(
    backend: &B,
    plan: &Plan<'_>,
    variant: &mut dyn FnMut(bool) -> String,
) -> kasmina::Result<Vec<BenchRecord>> {
    let (quick, reps) = (plan.quick, plan.reps);
    let info = backend.info();
    let (default_shapes, dtypes) = defaults(plan.kind, quick);
    let shapes = if plan.shapes.is_empty() { &default_shapes[..] } else { plan.shapes };
    let dtypes = if plan.dtypes.is_empty() { &dtypes[..] } else { plan.dtypes };
    let mixes = match &plan.mix {
        Some(m) => std::slice::from_ref(m),
        None => &[SeedMix::Dormant, SeedMix::Mixed][..],
    };
    // Compile every kernel module the run needs now, in parallel, instead of one by one inside it
    // (a spinner with the time on a terminal: the first run on a machine compiles for seconds).
    let usable: Vec<DType> = dtypes.iter().copied().filter(|d| backend.supports(*d)).collect();
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let spinner = ProgressBar::with_draw_target(None, target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    let names: Vec<String> = usable.iter().map(|d| d.to_string()).collect();
    spinner.set_message(format!("preparing {} ({}): kernels for {}", info.id(), info.name, names.join(", ")));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    backend.prepare(&usable)?;
    spinner.finish_and_clear();
    let mut specs = Vec::new();
    for &(b, h, s) in shapes {
        for &dtype in dtypes {
            if !backend.supports(dtype) {
                eprintln!("{}: skipping {dtype} (not supported by {})", info.id(), info.name);
                continue;
            }
            for &mix in mixes {
                let reps = reps.unwrap_or(if quick { 3 } else { 20 });
                specs.push(BenchSpec {
                    b,
                    h,
                    s,
                    dtype,
                    mix,
                    reps,
                    warmup: if quick { 1 } else { 3 },
                    warmup_s: if quick { 0.0 } else { kasmina_benches::WARMUP_SECONDS },
                });
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
        let mut recs = kasmina_benches::run_bench(backend, spec)?;
        for r in &mut recs {
            r.variant = variant(r.op == "backward");
        }
        out.extend(recs);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// One run per CUDA kernel family, each record labelled with the family that ran (for `auto`,
/// `auto>` and the autotuner's pick; a forced family that fell back shows as `hopper>portable`).
#[cfg(feature = "cuda")]
fn cuda_paths(device: kasmina::DeviceName, names: &[String], plan: &Plan<'_>) -> kasmina::Result<Vec<BenchRecord>> {
    use kasmina::cuda::{CudaBackend, CudaOptions, CudaPath};
    let mut out = Vec::new();
    for name in names {
        let path = CudaPath::parse(name)
            .ok_or_else(|| kasmina::Error::Invalid(format!("--cuda-path {name}: expected portable, hopper or auto")))?;
        let options = CudaOptions::from_env()?.with_path(path);
        let backend = CudaBackend::with_options(device.index, options)?;
        let mut label = |backward: bool| match (path, backend.last_path(backward)) {
            (p, Some(ran)) if p == ran => p.name().to_string(),
            (p, Some(ran)) => format!("{}>{}", p.name(), ran.name()),
            (p, None) => p.name().to_string(),
        };
        out.extend(bench_backend(&backend, plan, &mut label)?);
    }
    Ok(out)
}

#[cfg(not(feature = "cuda"))]
fn cuda_paths(_: kasmina::DeviceName, _: &[String], _: &Plan<'_>) -> kasmina::Result<Vec<BenchRecord>> {
    Err(BackendKind::Cuda.not_compiled())
}

/// Runs the benchmarks and prints the table (and writes JSON).
pub fn run(a: BenchArgs) -> CmdResult {
    let (devices, skipped) = a.device.devices()?;
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    let mut records = Vec::new();
    for device in devices {
        let plan =
            Plan { kind: device.kind, quick: a.quick, reps: a.reps, shapes: &a.shapes, dtypes: &a.dtypes, mix: a.mix };
        if device.kind == BackendKind::Cuda && !a.cuda_paths.is_empty() {
            records.extend(cuda_paths(device, &a.cuda_paths, &plan)?);
            continue;
        }
        let r: kasmina::Result<Vec<BenchRecord>> = kasmina::with_backend!(device, |open| bench_on(open, &plan));
        records.extend(r?);
    }
    say_raw!("{}", kasmina_benches::format_table(&records));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&records).map_err(|e| kasmina::Error::Invalid(e.to_string()))?;
        crate::write_json(path, &text)?;
    }
    Ok(())
}
