//! The `kasmina` command: devices, the demo, the layer on files, snapshots,
//! the conformance suite and benchmarks.
// A build with no backend at all compiles every command to "not compiled in".
#![cfg_attr(not(any(feature = "cpu", feature = "wgpu", feature = "cuda")), allow(unused))]

/// `print!` for the command's human-readable output: to stdout, or to stderr once
/// [`TEXT_TO_STDERR`] is set (`--json -` owns stdout); exits quietly when the stream is closed
/// (`kasmina ... | head`) instead of panicking on the broken pipe.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let r = if $crate::TEXT_TO_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
            write!(std::io::stderr().lock(), $($arg)*)
        } else {
            write!(std::io::stdout().lock(), $($arg)*)
        };
        if let Err(e) = r {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// [`say_raw!`] with a newline, like `println!`.
macro_rules! say {
    () => {
        say_raw!("\n")
    };
    ($($arg:tt)*) => {
        say_raw!("{}\n", format_args!($($arg)*))
    };
}

/// Set when a command writes its JSON report to stdout: [`say!`] then writes to stderr.
static TEXT_TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `path` names stdout (`-`) as the JSON report's destination.
pub(crate) fn is_stdout(path: &std::path::Path) -> bool {
    path == std::path::Path::new("-")
}

/// Writes a JSON report to `path` (atomically), or to stdout when `path` is `-`.
pub(crate) fn write_json(path: &std::path::Path, text: &str) -> kasmina::Result<()> {
    if is_stdout(path) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        return writeln!(out, "{text}").and_then(|()| out.flush()).map_err(|e| kasmina::Error::io("stdout", e));
    }
    kasmina_cli::files::write_atomic(path, text.as_bytes())
}

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kasmina::DeviceName;

/// Kasmina seed layer: run the morphogenetic demo, the layer on files, the
/// conformance suite and benchmarks on any compiled-in backend.
#[derive(Debug, Parser)]
#[command(name = "kasmina", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every backend compiled in, every device found, and what each supports (or why it cannot run).
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train a small host network whose Kasmina seeds grow the capacity it lacks; compare with germination off.
    Demo(cmd::demo::DemoArgs),
    /// Run the layer's forward pass on an NPY file.
    Forward(cmd::files::ForwardArgs),
    /// Run the layer's backward pass on NPY files.
    Backward(cmd::files::BackwardArgs),
    /// Create, inspect, change and verify state snapshots.
    #[command(subcommand)]
    State(cmd::state::StateCommand),
    /// Run the conformance suite against the float64 reference on the named devices.
    Conformance(cmd::conformance::ConformanceArgs),
    /// Measure forward/backward bandwidth against the device's own copy.
    Bench(cmd::bench::BenchArgs),
}

/// What a command's failure means for the exit status.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An error (bad input, a device that cannot run, a file that cannot be written): printed,
    /// exit status 2, as for a command line clap rejects.
    Error(kasmina::Error),
    /// The command ran and reported failures itself (conformance cases): exit status 1.
    Reported,
}

impl<E: Into<kasmina::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

/// A command's result.
pub(crate) type CmdResult = Result<(), Failure>;

/// Parses a device name for clap.
pub(crate) fn parse_device(s: &str) -> Result<DeviceName, String> {
    s.parse::<DeviceName>().map_err(|e| e.to_string())
}

/// A clap value parser that accepts one of `names` (which `--help` lists) and converts it with
/// the type's `FromStr`.
pub(crate) fn one_of<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// The values of `--dtype`.
pub(crate) const DTYPES: &[&str] = &["f32", "f16", "bf16"];
/// The values of `--type` (blueprint types, SPEC 4).
pub(crate) const BLUEPRINT_TYPES: &[&str] = &["residual", "attention", "mlp", "conv"];
/// The values of `--strategy` (grafting strategies, SPEC 6).
pub(crate) const STRATEGIES: &[&str] = &["fixed-ramp", "performance-linked", "drift-controlled", "grad-norm-gated"];
/// The values of `--to` (lifecycle states, SPEC 3).
pub(crate) const STATES: &[&str] = &[
    "dormant",
    "germinated",
    "training",
    "grafting",
    "stabilization",
    "evaluating",
    "fine-tuning",
    "fossilized",
    "culled",
    "cancelled",
    "rolled-back",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    kasmina_benches::init_diagnostics();
    let json = match &cli.command {
        Command::Demo(a) => a.json.as_deref(),
        Command::Conformance(a) => a.json.as_deref(),
        Command::Bench(a) => a.json.as_deref(),
        _ => None,
    };
    if json.is_some_and(is_stdout) {
        TEXT_TO_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let result = match cli.command {
        Command::Devices { json } => cmd::devices::run(json),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Forward(a) => cmd::files::forward(a),
        Command::Backward(a) => cmd::files::backward(a),
        Command::State(c) => cmd::state::run(c),
        Command::Conformance(a) => cmd::conformance::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Error(e)) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !e.to_string().contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use kasmina::{BlueprintType, GraftingStrategy, LifecycleState};

    /// The names `--help` lists are every value of each type, in order, and each parses to it.
    #[test]
    fn the_listed_values_are_the_types_values() {
        fn check<T: std::str::FromStr + PartialEq + std::fmt::Debug>(names: &[&str], all: &[T]) {
            assert_eq!(names.len(), all.len());
            for (n, v) in names.iter().zip(all) {
                assert_eq!(n.parse::<T>().ok().as_ref(), Some(v), "{n}");
            }
        }
        check(super::DTYPES, &kasmina::DType::ALL);
        check(super::BLUEPRINT_TYPES, BlueprintType::ALL);
        check(super::STRATEGIES, GraftingStrategy::ALL);
        check(super::STATES, LifecycleState::ALL);
    }
}
