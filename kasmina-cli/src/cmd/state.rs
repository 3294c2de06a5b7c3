//! `kasmina state`: create, inspect, change and verify snapshots. Every write
//! goes through the core's atomic snapshot writer.

use std::path::{Path, PathBuf};

use kasmina::core::lifecycle::TransitionReason;
use kasmina::core::{checksum, snapshot};
use kasmina::{BlueprintType, Error, GraftingStrategy, LayerConfig, LayerState, LifecycleState, StabilityMode};
use serde_json::{Value, json};

use super::table::Table;
use crate::CmdResult;

/// `kasmina state ...`
#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Create a snapshot of a layer of dormant seeds.
    New {
        /// The snapshot to write.
        file: PathBuf,
        /// H, the width of the activation.
        #[arg(long)]
        hidden: usize,
        /// S, the number of seeds (H must be a multiple of S).
        #[arg(long)]
        seeds: usize,
        /// Strict stability mode with this k (clamp to mean ± k std).
        #[arg(long, value_name = "K")]
        strict: Option<f32>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print a snapshot as a table (or JSON).
    Inspect {
        /// The snapshot.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print each seed's blueprint weights.
        #[arg(long)]
        weights: bool,
    },
    /// Germinate a dormant seed (DORMANT -> GERMINATED) and save.
    Germinate {
        /// The snapshot (rewritten atomically).
        file: PathBuf,
        /// The seed id.
        #[arg(long)]
        seed: usize,
        /// Blueprint type.
        #[arg(long = "type", default_value = "mlp", ignore_case = true,
              value_parser = crate::one_of::<BlueprintType>(crate::BLUEPRINT_TYPES))]
        blueprint_type: BlueprintType,
        /// Opaque blueprint artifact id (not 0).
        #[arg(long, default_value_t = 1)]
        blueprint_id: u16,
        /// Grafting strategy.
        #[arg(long, default_value = "fixed-ramp", ignore_case = true,
              value_parser = crate::one_of::<GraftingStrategy>(crate::STRATEGIES))]
        strategy: GraftingStrategy,
    },
    /// Request a lifecycle transition and save (illegal transitions change nothing).
    Transition {
        /// The snapshot (rewritten atomically).
        file: PathBuf,
        /// The seed id.
        #[arg(long)]
        seed: usize,
        /// The state to move to.
        #[arg(long, ignore_case = true, value_parser = crate::one_of::<LifecycleState>(crate::STATES))]
        to: LifecycleState,
    },
    /// Verify a snapshot's shapes, enum values and checksum.
    Verify {
        /// The snapshot.
        file: PathBuf,
    },
}

fn load(path: &Path) -> kasmina::Result<LayerState> {
    snapshot::load(path).map_err(|e| Error::bad_input(path, e.to_string()))
}

/// A float for JSON: numbers, with "nan", "inf", "-inf" for the others (as SPEC 5.2 does).
fn jf(v: f32) -> Value {
    if v.is_nan() {
        json!("nan")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(v)
    }
}

fn stability(s: StabilityMode) -> String {
    match s {
        StabilityMode::Off => "off".into(),
        StabilityMode::Strict { k } => format!("strict (k = {k})"),
    }
}

fn inspect_json(st: &LayerState, weights: bool) -> Value {
    let s = &st.seeds;
    let seeds: Vec<Value> = (0..st.num_seeds())
        .map(|i| {
            let mut v = json!({
                "seed_id": i,
                "lifecycle": s.lifecycle[i],
                "blueprint_id": s.blueprint_id[i],
                "blueprint_type": s.blueprint_type[i],
                "grafting_strategy": s.grafting_strategy[i],
                "alpha": jf(s.alpha[i]),
                "epochs_in_state": s.epochs_in_state[i],
                "last_update_epoch": s.last_update_epoch[i],
                "clamp_mean": jf(s.clamp_mean[i]),
                "clamp_std": jf(s.clamp_std[i]),
                "scale": jf(st.params.scales[i]),
            });
            if weights {
                v["weights"] = Value::Array(st.params.seed_weights(i).iter().map(|w| jf(*w)).collect());
            }
            v
        })
        .collect();
    json!({
        "schema_version": st.schema_version(),
        "hidden_dim": st.config.hidden_dim,
        "num_seeds": st.num_seeds(),
        "chunk_size": st.config.chunk_size(),
        "epoch": st.epoch,
        "crc32": format!("{:08x}", checksum::checksum(st)),
        "config": st.config,
        "seeds": seeds,
    })
}

fn inspect_text(st: &LayerState, weights: bool) -> String {
    let c = &st.config;
    let mut out = format!(
        "schema {}  H {}  S {}  C {}  epoch {}  crc32 {:08x}\nstability {}  embargo {} epochs  stabilization {} epochs  \
         ramp {} epochs\n\n",
        st.schema_version(),
        c.hidden_dim,
        c.num_seeds,
        c.chunk_size(),
        st.epoch,
        checksum::checksum(st),
        stability(c.stability),
        c.embargo_epochs,
        c.stabilization_epochs,
        c.grafting.ramp_epochs,
    );
    let s = &st.seeds;
    let mut t = Table::new([
        "seed",
        "lifecycle",
        "blueprint",
        "type",
        "strategy",
        "alpha",
        "in state",
        "last update",
        "clamp",
        "scale",
        "|w|",
    ]);
    for i in 0..st.num_seeds() {
        let w = st.params.seed_weights(i);
        let norm = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let clamp = if s.clamp_is_set(i) {
            format!("{:.4} ± {:.4}", s.clamp_mean[i], s.clamp_std[i])
        } else {
            "-".to_string()
        };
        let (bp, ty, strat) = if s.blueprint_id[i] == 0 {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (s.blueprint_id[i].to_string(), s.blueprint_type[i].to_string(), s.grafting_strategy[i].to_string())
        };
        t.row([
            i.to_string(),
            s.lifecycle[i].to_string(),
            bp,
            ty,
            strat,
            format!("{:.4}", s.alpha[i]),
            s.epochs_in_state[i].to_string(),
            s.last_update_epoch[i].to_string(),
            clamp,
            format!("{}", st.params.scales[i]),
            format!("{norm:.4}"),
        ]);
    }
    out.push_str(&t.render());
    if weights {
        out.push('\n');
        for i in 0..st.num_seeds() {
            let w: Vec<String> = st.params.seed_weights(i).iter().map(|v| format!("{v}")).collect();
            out.push_str(&format!("weights[{i}] = [{}]\n", w.join(", ")));
        }
    }
    out
}

/// Runs a `state` subcommand.
pub fn run(cmd: StateCommand) -> CmdResult {
    match cmd {
        StateCommand::New { file, hidden, seeds, strict, force } => {
            if file.exists() && !force {
                return Err(
                    Error::Invalid(format!("{} already exists; pass --force to replace it", file.display())).into()
                );
            }
            let mut config = LayerConfig::new(hidden, seeds)?;
            if let Some(k) = strict {
                config = config.with_stability(StabilityMode::Strict { k });
            }
            let st = LayerState::new(config)?;
            snapshot::save(&st, &file)?;
            say!(
                "created {}: H {hidden}, S {seeds}, C {}, crc32 {:08x}",
                file.display(),
                config.chunk_size(),
                checksum::checksum(&st)
            );
        }
        StateCommand::Inspect { file, json, weights } => {
            let st = load(&file)?;
            if json {
                let text = serde_json::to_string_pretty(&inspect_json(&st, weights))
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                say!("{text}");
            } else {
                say_raw!("{}", inspect_text(&st, weights));
            }
        }
        StateCommand::Germinate { file, seed, blueprint_type, blueprint_id, strategy } => {
            let mut st = load(&file)?;
            if blueprint_id == 0 {
                return Err(Error::Invalid("blueprint id 0 means none: pass --blueprint-id 1 or more".into()).into());
            }
            let ev = st.germinate(seed, blueprint_id, blueprint_type, strategy)?;
            snapshot::save(&st, &file)?;
            say!(
                "seed {seed}: {} -> {} ({blueprint_type}, {strategy}, blueprint {blueprint_id}); saved {} (crc32 {:08x})",
                ev.from,
                ev.to,
                file.display(),
                checksum::checksum(&st)
            );
        }
        StateCommand::Transition { file, seed, to } => {
            let mut st = load(&file)?;
            let ev = st.transition(seed, to, TransitionReason::Requested)?;
            snapshot::save(&st, &file)?;
            say!(
                "seed {seed}: {} -> {}; saved {} (crc32 {:08x})",
                ev.from,
                ev.to,
                file.display(),
                checksum::checksum(&st)
            );
        }
        StateCommand::Verify { file } => {
            let st = load(&file)?;
            say!(
                "{}: ok (schema {}, H {}, S {}, epoch {}, crc32 {:08x})",
                file.display(),
                st.schema_version(),
                st.config.hidden_dim,
                st.num_seeds(),
                st.epoch,
                checksum::checksum(&st)
            );
        }
    }
    Ok(())
}
