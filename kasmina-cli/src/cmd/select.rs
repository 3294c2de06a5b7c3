//! Choosing devices for commands that run on several (`--backend cpu|wgpu|cuda|all`).

use kasmina::{BackendKind, DeviceName, DeviceStatus, Error};

/// The devices named by `backend` (`all`, a backend name, or a device name such
/// as `cuda:1`) and `index`. With `all`, backends that are not compiled in or
/// find no device are listed in the second value (with the reason) and skipped;
/// a backend named explicitly that cannot run is an error.
pub fn devices(backend: &str, index: Option<usize>) -> kasmina::Result<(Vec<DeviceName>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    if backend.eq_ignore_ascii_case("all") {
        for kind in BackendKind::ALL {
            if !kind.compiled_in() {
                skipped.push(format!("{kind}: not compiled in (rebuild with `--features {}`)", kind.feature()));
                continue;
            }
            openable(kind, index, &mut out, &mut skipped);
        }
        if out.is_empty() {
            return Err(Error::Invalid(format!("no device to run on: {}", skipped.join("; "))));
        }
        return Ok((out, skipped));
    }
    let name: DeviceName = backend.parse()?;
    if !name.kind.compiled_in() {
        return Err(name.kind.not_compiled());
    }
    if backend.contains(':') || name.kind == BackendKind::Cpu {
        if index.is_some_and(|i| i != name.index) {
            return Err(Error::Invalid(format!("--device {} contradicts {backend}", index.unwrap_or(0))));
        }
        return Ok((vec![name], skipped));
    }
    if let Some(i) = index {
        return Ok((vec![DeviceName::new(name.kind, i)], skipped));
    }
    openable(name.kind, None, &mut out, &mut skipped);
    if out.is_empty() {
        return Err(Error::Invalid(format!("no {} device to run on: {}", name.kind, skipped.join("; "))));
    }
    Ok((out, skipped))
}

/// The devices of `kind` (only `index`, if given) that open, into `out`; the
/// ones found but unable to run (e.g. a GL adapter without a display) go to
/// `skipped` with the reason, so one broken adapter does not stop a run over
/// the others.
fn openable(kind: BackendKind, index: Option<usize>, out: &mut Vec<DeviceName>, skipped: &mut Vec<String>) {
    let mut found = false;
    for entry in kasmina::list_devices().into_iter().filter(|e| e.device.kind == kind) {
        if index.is_some_and(|n| n != entry.device.index) {
            continue;
        }
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
