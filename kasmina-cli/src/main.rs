//! The `kasmina` command: devices, the demo, the layer on files, snapshots,
//! the conformance suite and benchmarks.
// A build with no backend at all compiles every command to "not compiled in".
#![cfg_attr(not(any(feature = "cpu", feature = "wgpu", feature = "cuda")), allow(unused))]

/// `println!` that exits quietly when stdout is closed (`kasmina ... | head`)
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` with the same behaviour as [`say!`].
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = write!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kasmina::{DType, DeviceName};

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
    /// An error: printed, exit status 1.
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

/// Parses a dtype for clap.
pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse::<DType>()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            ExitCode::FAILURE
        }
    }
}
