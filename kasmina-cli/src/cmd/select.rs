//! What `--device` names, and the devices it selects: one device (`cpu`, `cuda:1`, `wgpu:0`),
//! every device of a backend (`cuda`, `wgpu`), or every device found (`all`).

use std::fmt;
use std::str::FromStr;

use kasmina::{BackendKind, DeviceName, DeviceStatus, Error};

/// The value of a `--device` flag of a command that can run on several devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Every compiled-in backend and every device found.
    All,
    /// Every device of one backend (`cuda`, `wgpu`; `cpu` is one device).
    Backend(BackendKind),
    /// One device.
    One(DeviceName),
}

impl FromStr for DeviceSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(DeviceSelector::All);
        }
        if t.contains(':') {
            return t.parse::<DeviceName>().map(DeviceSelector::One).map_err(|e| e.to_string());
        }
        match t.parse::<BackendKind>() {
            Ok(BackendKind::Cpu) => Ok(DeviceSelector::One(DeviceName::CPU)),
            Ok(kind) => Ok(DeviceSelector::Backend(kind)),
            Err(_) => Err(format!("unknown device '{s}': write all, cpu, cuda, cuda:N, wgpu or wgpu:N")),
        }
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSelector::All => f.write_str("all"),
            DeviceSelector::Backend(k) => write!(f, "{k}"),
            DeviceSelector::One(d) => write!(f, "{d}"),
        }
    }
}

impl DeviceSelector {
    /// The devices selected, and (second value) the ones skipped with the reason. With `all`,
    /// backends that are not compiled in or find no device are skipped; a backend or device
    /// named explicitly that cannot run is an error.
    pub fn devices(self) -> kasmina::Result<(Vec<DeviceName>, Vec<String>)> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        match self {
            DeviceSelector::All => {
                for kind in BackendKind::ALL {
                    if !kind.compiled_in() {
                        skipped.push(format!("{kind}: not compiled in (rebuild with `--features {}`)", kind.feature()));
                        continue;
                    }
                    openable(kind, &mut out, &mut skipped);
                }
                if out.is_empty() {
                    return Err(Error::Invalid(format!("no device to run on: {}", skipped.join("; "))));
                }
            }
            DeviceSelector::Backend(kind) => {
                if !kind.compiled_in() {
                    return Err(kind.not_compiled());
                }
                openable(kind, &mut out, &mut skipped);
                if out.is_empty() {
                    return Err(Error::Invalid(format!("no {kind} device to run on: {}", skipped.join("; "))));
                }
            }
            DeviceSelector::One(name) => {
                if !name.kind.compiled_in() {
                    return Err(name.kind.not_compiled());
                }
                out.push(name);
            }
        }
        Ok((out, skipped))
    }
}

/// The devices of `kind` that open, into `out`; the ones found but unable to run (e.g. a GL
/// adapter without a display) go to `skipped` with the reason, so one broken adapter does not
/// stop a run over the others.
fn openable(kind: BackendKind, out: &mut Vec<DeviceName>, skipped: &mut Vec<String>) {
    let mut found = false;
    for entry in kasmina::list_devices().into_iter().filter(|e| e.device.kind == kind) {
        match entry.status {
            DeviceStatus::Available { .. } => {
                found = true;
                out.push(entry.device);
            }
            DeviceStatus::Unavailable { reason } => skipped.push(format!("{}: {reason}", entry.device)),
            DeviceStatus::NotCompiled { feature } => {
                skipped.push(format!("{kind}: not compiled in (rebuild with `--features {feature}`)"))
            }
        }
    }
    if !found && !skipped.iter().any(|s| s.starts_with(kind.name())) {
        skipped.push(format!("{kind}: no device found"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_selectors_parse() {
        assert_eq!("all".parse::<DeviceSelector>(), Ok(DeviceSelector::All));
        assert_eq!("cpu".parse::<DeviceSelector>(), Ok(DeviceSelector::One(DeviceName::CPU)));
        assert_eq!("CUDA".parse::<DeviceSelector>(), Ok(DeviceSelector::Backend(BackendKind::Cuda)));
        assert_eq!("wgpu:1".parse::<DeviceSelector>(), Ok(DeviceSelector::One(DeviceName::new(BackendKind::Wgpu, 1))));
        for bad in ["tpu", "cuda:x", "cpu:1", "", "1"] {
            assert!(bad.parse::<DeviceSelector>().is_err(), "{bad}");
        }
        assert_eq!(DeviceSelector::Backend(BackendKind::Wgpu).to_string(), "wgpu");
    }

    #[test]
    fn the_cpu_is_selected_by_name_and_by_all() {
        assert_eq!(DeviceSelector::One(DeviceName::CPU).devices().unwrap().0, vec![DeviceName::CPU]);
        assert!(DeviceSelector::All.devices().unwrap().0.contains(&DeviceName::CPU));
    }
}
