//! `kasmina demo`: the morphogenetic demo (see `kasmina_cli::demo`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kasmina::{Backend, DeviceName, LifecycleState};
use kasmina_cli::demo::{DemoConfig, DemoRun, EpochRecord};

use crate::CmdResult;

/// Options of `kasmina demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Device to run on: cpu, wgpu:N, cuda:N (cuda and wgpu mean device 0).
    #[arg(long, alias = "backend", value_name = "DEVICE", default_value = "cpu", value_parser = crate::parse_device)]
    device: DeviceName,
    /// Epochs to train (default 40, or 26 with --quick).
    #[arg(long)]
    epochs: Option<u32>,
    /// A smaller, faster run (fewer samples) that still reaches FOSSILIZED.
    #[arg(long)]
    quick: bool,
    /// Seed of the data, initialization and shuffling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Training samples (default 4096, or 1536 with --quick).
    #[arg(long)]
    samples: Option<usize>,
    /// Standard deviation of the target's noise (default 0.02).
    #[arg(long)]
    noise: Option<f32>,
    /// The chunks where the target bends, comma-separated, or `none` (default 1,4,6).
    #[arg(long, value_parser = parse_chunks)]
    hard_chunks: Option<Chunks>,
    /// Graft each seed's provisional blueprint type without probing the types in TRAINING
    /// (EVALUATING alone judges it; culled seeds are tried again with another type).
    #[arg(long)]
    no_probes: bool,
    /// Where to save the final layer snapshot.
    #[arg(long, default_value = "kasmina-demo.safetensors")]
    snapshot: PathBuf,
    /// Also write a JSON summary (both runs' losses, seeds fossilized and culled, per-epoch
    /// history); `-` writes it to stdout and the progress text to stderr.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
}

/// A list of chunk ids (`none` for the empty list).
#[derive(Debug, Clone)]
struct Chunks(Vec<usize>);

fn parse_chunks(s: &str) -> Result<Chunks, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(Chunks(Vec::new()));
    }
    s.split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("'{v}' is not a chunk id: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(Chunks)
}

fn cell(state: LifecycleState, alpha: f32) -> String {
    use LifecycleState::*;
    match state {
        Dormant => "·".into(),
        Germinated => "germ".into(),
        Training => "train".into(),
        Grafting => format!("graft{:.2}", alpha).replace("graft0.", "graft."),
        Stabilization => "stab".into(),
        Evaluating => "eval".into(),
        FineTuning => "tune".into(),
        Fossilized => "FOSSIL".into(),
        Culled => "culled".into(),
        Cancelled => "cancel".into(),
        RolledBack => "rolled".into(),
    }
}

fn row(r: &EpochRecord) -> String {
    let mut s = format!("{:>5}  {:<10.6} {:<10.6}", r.epoch, r.loss, r.val_loss);
    for (st, a) in r.states.iter().zip(&r.alpha) {
        s.push_str(&format!("  {:<8}", cell(*st, *a)));
    }
    s.trim_end().to_string()
}

fn progress(len: u64, label: &str) -> ProgressBar {
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} epochs, {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.to_string());
    pb
}

fn run_once<B: Backend>(
    open: impl Fn() -> kasmina::Result<B>,
    cfg: &DemoConfig,
    label: &str,
    print_rows: bool,
) -> kasmina::Result<DemoRun> {
    let backend = open()?;
    let pb = progress(cfg.epochs as u64, label);
    let out = kasmina_cli::demo::run(backend, cfg, |r| {
        if print_rows {
            pb.suspend(|| {
                say!("{}", row(r));
                for d in &r.decisions {
                    say!("{:>30}seed {} -> {}: {}", "", d.seed, d.to, d.reason);
                }
            });
        }
        pb.set_message(format!("{label}: loss {:.5}", r.loss));
        pb.inc(1);
    });
    pb.finish_and_clear();
    out
}

fn list(v: &[usize]) -> String {
    if v.is_empty() { "none".into() } else { v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ") }
}

fn demo<B: Backend>(open: impl Fn() -> kasmina::Result<B>, args: &DemoArgs) -> kasmina::Result<()> {
    let mut cfg = if args.quick { DemoConfig::quick() } else { DemoConfig::default() };
    if let Some(e) = args.epochs {
        cfg.epochs = e;
    }
    if let Some(n) = args.samples {
        cfg.samples = n;
    }
    if let Some(n) = args.noise {
        cfg.noise = n;
    }
    if let Some(c) = &args.hard_chunks {
        cfg.hard_chunks = c.0.clone();
    }
    cfg.controller.probes = !args.no_probes;
    cfg.rng_seed = args.seed;
    let info = open()?.info();
    let (h, s) = (cfg.hidden, cfg.seeds);
    say!(
        "kasmina demo on {} ({}): host Linear({h}->{h}) -> Kasmina(H={h}, S={s}, C={}) -> Linear({h}->{s}), \
         {} samples, {} epochs",
        args.device,
        info.name,
        h / s,
        cfg.samples,
        cfg.epochs
    );
    say!(
        "the target bends chunks {} of the host's hidden activation (a soft hinge); the host itself is linear",
        list(&cfg.hard_chunks)
    );
    say!();
    let mut header = format!("{:>5}  {:<10} {:<10}", "epoch", "train", "held-out");
    for i in 0..s {
        header.push_str(&format!("  {:<8}", format!("s{i}")));
    }
    say!("{}", header.trim_end());
    let start = Instant::now();
    let grown = run_once(&open, &cfg, "with seeds", true)?;
    kasmina::core::snapshot::save(&grown.state, &args.snapshot)?;
    let crc = kasmina::core::checksum::checksum(&grown.state);
    say!();
    say!("snapshot saved to {} (crc32 {crc:08x})", args.snapshot.display());
    let base_cfg = DemoConfig { germination: false, ..cfg.clone() };
    let baseline = run_once(&open, &base_cfg, "germination off", false)?;
    let secs = start.elapsed().as_secs_f64();
    say!("fossilized: {}; culled: {}", list(&grown.fossilized), list(&grown.culled));
    let ratio = baseline.final_loss / grown.final_loss;
    say!(
        "final held-out loss: {:.6} with seeds vs {:.6} with germination off ({ratio:.1}x lower), {secs:.1} s",
        grown.final_loss,
        baseline.final_loss
    );
    if let Some(path) = &args.json {
        let summary = serde_json::json!({
            "device": args.device.to_string(),
            "device_name": info.name,
            "config": cfg,
            "final_loss": grown.final_loss,
            "baseline_loss": baseline.final_loss,
            "fossilized": grown.fossilized,
            "culled": grown.culled,
            "snapshot": args.snapshot.display().to_string(),
            "snapshot_crc32": format!("{crc:08x}"),
            "seconds": secs,
            "history": grown.history,
            "events": grown.events,
            "baseline_history": baseline.history,
        });
        let text = serde_json::to_string_pretty(&summary).map_err(|e| kasmina::Error::Invalid(e.to_string()))?;
        crate::write_json(path, &text)?;
    }
    Ok(())
}

/// Runs the demo on the chosen device.
pub fn run(args: DemoArgs) -> CmdResult {
    let r: kasmina::Result<()> = kasmina::with_backend!(args.device, |open| demo(open, &args));
    Ok(r?)
}
