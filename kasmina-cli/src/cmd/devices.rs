//! `kasmina devices`.

use kasmina::{DeviceStatus, list_devices};

use super::table::Table;
use crate::CmdResult;

/// Lists every backend and device, with what each supports or why it cannot run.
pub fn run(json: bool) -> CmdResult {
    let devices = list_devices();
    if json {
        let text = serde_json::to_string_pretty(&devices).map_err(|e| kasmina::Error::Invalid(e.to_string()))?;
        say!("{text}");
        return Ok(());
    }
    let mut t = Table::new(["device", "name", "dtypes", "subgroups", "tma", "features / why unavailable"]);
    for d in &devices {
        match &d.status {
            DeviceStatus::Available { info } => {
                let dtypes: Vec<&str> = info.dtypes.iter().map(|d| d.name()).collect();
                let has = |what: &str| {
                    let yes = info.features.iter().any(|f| f.to_ascii_lowercase().contains(what));
                    if yes { "yes" } else { "no" }.to_string()
                };
                let features = if info.features.is_empty() { "-".to_string() } else { info.features.join(", ") };
                t.row([
                    d.device.to_string(),
                    info.name.clone(),
                    dtypes.join(", "),
                    has("subgroup"),
                    has("tma"),
                    features,
                ]);
            }
            DeviceStatus::Unavailable { reason } => {
                t.row([
                    d.device.to_string(),
                    "(unavailable)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    reason.clone(),
                ]);
            }
            DeviceStatus::NotCompiled { feature } => {
                t.row([
                    d.device.kind.to_string(),
                    "(not compiled in)".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("rebuild with `--features {feature}`"),
                ]);
            }
        }
    }
    say_raw!("{}", t.render());
    Ok(())
}
