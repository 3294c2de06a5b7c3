//! Choosing devices for commands that run on several (`--backend cpu|wgpu|cuda|all`).

use kasmina::{BackendKind, DeviceName, Error};

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
            match kind.device_indices() {
                Ok(ids) if ids.is_empty() => skipped.push(format!("{kind}: no device found")),
                Ok(ids) => out.extend(
                    ids.into_iter().filter(|i| index.is_none_or(|n| n == *i)).map(|i| DeviceName::new(kind, i)),
                ),
                Err(e) => skipped.push(format!("{kind}: {e}")),
            }
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
    let ids = name.kind.device_indices()?;
    if ids.is_empty() {
        return Err(Error::Invalid(format!("no {} device found on this machine", name.kind)));
    }
    out.extend(ids.into_iter().map(|i| DeviceName::new(name.kind, i)));
    Ok((out, skipped))
}
