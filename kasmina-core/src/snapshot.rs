//! Snapshots (SPEC 2.2): one safetensors tensor per state field, metadata with
//! the schema version, sizes, epoch, CRC-32 and config; atomic writes; strict,
//! typed verification on load.
//!
//! `kasmina.metadata_crc32`, a CRC-32 over the other `kasmina.*` metadata entries,
//! protects the config JSON, which the state checksum does not cover: it is
//! required whenever `kasmina.config` is present, and the config must name exactly
//! the fields of [`LayerConfig`] (none unknown, none missing), so no flipped byte
//! loads as a different, valid config. A snapshot without a config (another
//! writer's) loads with the default config. Unknown `kasmina.*` keys are rejected,
//! so a flipped bit in a key name cannot hide an entry; keys outside the namespace
//! belong to other tools and are kept in [`LayerState::metadata`], written back as
//! they were.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::blueprint::{BlueprintType, GraftingStrategy};
use crate::config::LayerConfig;
use crate::error::{Result, SnapshotError};
use crate::lifecycle::LifecycleState;
use crate::state::{BlueprintParams, LayerState, SeedStates};
use crate::{SCHEMA_VERSION, checksum};

/// The oldest schema version a migration chain leads from. Version 1 is the
/// first, so the chain is empty today; a version 2 adds `migrate_1_to_2` here.
pub const OLDEST_SCHEMA_VERSION: u8 = 1;

const KEY_SCHEMA: &str = "kasmina.schema_version";
const KEY_H: &str = "kasmina.hidden_dim";
const KEY_S: &str = "kasmina.num_seeds";
const KEY_EPOCH: &str = "kasmina.epoch";
const KEY_CRC: &str = "kasmina.crc32";
const KEY_CONFIG: &str = "kasmina.config";
const KEY_META_CRC: &str = "kasmina.metadata_crc32";
const KNOWN_KEYS: [&str; 7] = [KEY_SCHEMA, KEY_H, KEY_S, KEY_EPOCH, KEY_CRC, KEY_CONFIG, KEY_META_CRC];

/// The namespace of the snapshot's own metadata keys.
pub const KASMINA_PREFIX: &str = "kasmina.";

/// CRC-32 of the lines `key=value\n` of every `kasmina.*` entry but the metadata CRC itself, in
/// byte order of the keys (SPEC 2.2).
fn metadata_crc(meta: &BTreeMap<String, String>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (k, v) in meta.iter().filter(|(k, _)| k.starts_with(KASMINA_PREFIX) && k.as_str() != KEY_META_CRC) {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize()
}

/// One tensor to write: name, dtype, shape and little-endian bytes (borrowed where possible).
type TensorBytes<'a> = (&'static str, Dtype, Vec<usize>, Cow<'a, [u8]>);

/// The snapshot bytes of a state (a complete safetensors file).
pub fn to_bytes(state: &LayerState) -> Result<Vec<u8>> {
    state.validate()?;
    let s = &state.seeds;
    let n = state.num_seeds();
    let raw = checksum::RawArrays::of(state);
    let le16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let le32 = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let lef = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // The weights, the one large array, go in without a copy where memory is little-endian.
    #[cfg(target_endian = "little")]
    let weights: Cow<'_, [u8]> = Cow::Borrowed(bytemuck::cast_slice(&state.params.weights));
    #[cfg(not(target_endian = "little"))]
    let weights: Cow<'_, [u8]> = Cow::Owned(lef(&state.params.weights));
    let c = state.config.chunk_size();
    let tensors: Vec<TensorBytes<'_>> = vec![
        ("lifecycle", Dtype::U8, vec![n], raw.lifecycle.clone().into()),
        ("blueprint_id", Dtype::U16, vec![n], le16(&s.blueprint_id).into()),
        ("blueprint_type", Dtype::U8, vec![n], raw.blueprint_type.clone().into()),
        ("grafting_strategy", Dtype::U8, vec![n], raw.grafting_strategy.clone().into()),
        ("alpha", Dtype::F32, vec![n], lef(&s.alpha).into()),
        ("epochs_in_state", Dtype::U16, vec![n], le16(&s.epochs_in_state).into()),
        ("last_update_epoch", Dtype::U32, vec![n], le32(&s.last_update_epoch).into()),
        ("clamp_mean", Dtype::F32, vec![n], lef(&s.clamp_mean).into()),
        ("clamp_std", Dtype::F32, vec![n], lef(&s.clamp_std).into()),
        ("weights", Dtype::F32, vec![n, c], weights),
        ("scales", Dtype::F32, vec![n], lef(&state.params.scales).into()),
    ];
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let v = TensorView::new(*dtype, shape.clone(), data).map_err(|e| SnapshotError::Format(e.to_string()))?;
        views.push((name.to_string(), v));
    }
    let config = serde_json::to_string(&state.config).map_err(|e| SnapshotError::Metadata(e.to_string()))?;
    let mut meta = BTreeMap::new();
    meta.insert(KEY_SCHEMA.to_string(), SCHEMA_VERSION.to_string());
    meta.insert(KEY_H.to_string(), state.config.hidden_dim.to_string());
    meta.insert(KEY_S.to_string(), n.to_string());
    meta.insert(KEY_EPOCH.to_string(), state.epoch.to_string());
    meta.insert(KEY_CRC.to_string(), format!("{:08x}", checksum::checksum(state)));
    meta.insert(KEY_CONFIG.to_string(), config);
    meta.insert(KEY_META_CRC.to_string(), format!("{:08x}", metadata_crc(&meta)));
    meta.extend(state.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| SnapshotError::Format(e.to_string()))?;
    Ok(canonical_header(bytes)?)
}

/// Rewrites a safetensors file's JSON header with sorted keys, so the same state
/// always gives the same file bytes (the `safetensors` crate writes its metadata
/// map in hash order). Tensor data and offsets are unchanged; the header keeps
/// the format's 8-byte alignment, padded with spaces.
fn canonical_header(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, SnapshotError> {
    let bad = || SnapshotError::Format("serializer produced a malformed header".into());
    let len_bytes: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad())?;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|_| bad())?;
    let mut json = serde_json::to_vec(&value).map_err(|_| bad())?;
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    // In place: the header keeps its length in practice (same entries, reordered), so the tensor
    // data is not copied a second time.
    let mut out = bytes;
    let mut head = Vec::with_capacity(8 + json.len());
    head.extend_from_slice(&(json.len() as u64).to_le_bytes());
    head.extend_from_slice(&json);
    out.splice(..8 + n, head);
    Ok(out)
}

/// Writes a snapshot atomically: a temporary file in the same folder, fsync,
/// rename over `path`, fsync of the folder. A crash leaves either the old file
/// or the new one, never a torn one.
pub fn save(state: &LayerState, path: impl AsRef<Path>) -> Result<()> {
    let bytes = to_bytes(state)?;
    write_atomic(path.as_ref(), &bytes)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::result::Result<(), SnapshotError> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes several files together: each is first written to a temporary file next to its
/// target and synced; only when every one of them is ready are they renamed into place (and
/// their folders synced). A failure before that (a missing folder, a full disk) leaves every
/// target as it was, and the temporary files are removed.
///
/// A target that exists keeps its permissions; a symbolic link is written through (its final
/// target is replaced, the link stays); temporary files of this function older than
/// [`STALE_TMP`] in a target's folder (left by a killed process) are removed first.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> std::result::Result<(), SnapshotError> {
    let folder = |path: &Path| match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let io = |source| SnapshotError::Io { path: path.display().to_string(), source };
        let target = if path.is_symlink() { std::fs::canonicalize(path).map_err(io)? } else { path.to_path_buf() };
        let dir = folder(&target);
        remove_stale_tmp(&dir);
        let mut tmp = tempfile::Builder::new().prefix(TMP_PREFIX).suffix(TMP_SUFFIX).tempfile_in(&dir).map_err(io)?;
        tmp.write_all(bytes).map_err(io)?;
        match std::fs::metadata(&target) {
            Ok(m) => std::fs::set_permissions(tmp.path(), m.permissions()).map_err(io)?,
            Err(_) => new_file_permissions(tmp.path()).map_err(io)?,
        }
        tmp.as_file().sync_all().map_err(io)?;
        staged.push((tmp, target, *path));
    }
    for (tmp, target, path) in staged {
        tmp.persist(&target).map_err(|e| SnapshotError::Io { path: path.display().to_string(), source: e.error })?;
        // Make the rename itself durable. Opening a folder fails on some platforms: ignore that there.
        if let Ok(d) = std::fs::File::open(folder(&target)) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

const TMP_PREFIX: &str = ".kasmina-";
const TMP_SUFFIX: &str = ".tmp";

/// Temporary files of [`write_all_atomic`] older than this are left over from a process that
/// was killed while writing (a write in progress is far younger) and are removed.
pub const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes this module's temporary files older than [`STALE_TMP`] from `dir` (best effort).
fn remove_stale_tmp(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if old.is_some_and(|age| age > STALE_TMP) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A new file gets the usual permissions of a created file (`rw-r--r--` on Unix), not the
/// owner-only ones of a temporary file.
fn new_file_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Reads and verifies a snapshot file.
pub fn load(path: impl AsRef<Path>) -> Result<LayerState> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io { path: path.display().to_string(), source })?;
    from_bytes(&bytes)
}

fn meta_err(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Metadata(msg.into())
}

fn parse_u64(meta: &HashMap<String, String>, key: &str) -> std::result::Result<u64, SnapshotError> {
    let v = meta.get(key).ok_or_else(|| meta_err(format!("missing key '{key}'")))?;
    // Only canonical decimal: no sign, no leading zeros, no spaces.
    let canonical = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (v == "0" || !v.starts_with('0'));
    if !canonical {
        return Err(meta_err(format!("'{key}' = '{v}' is not a decimal integer")));
    }
    v.parse().map_err(|_| meta_err(format!("'{key}' = '{v}' is out of range")))
}

fn parse_hex32(meta: &HashMap<String, String>, key: &str) -> std::result::Result<u32, SnapshotError> {
    let v = meta.get(key).ok_or_else(|| meta_err(format!("missing key '{key}'")))?;
    if v.len() != 8 || !v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(meta_err(format!("'{key}' = '{v}' is not 8 lowercase hex digits")));
    }
    u32::from_str_radix(v, 16).map_err(|_| meta_err(format!("'{key}' = '{v}' is not hex")))
}

struct Tensors<'a> {
    st: safetensors::SafeTensors<'a>,
}

impl Tensors<'_> {
    /// The bytes of tensor `name`, borrowed from the file (no copy: a loaded state then costs its
    /// own size on top of the file's bytes, not twice that).
    fn get(&self, name: &str, dtype: Dtype, shape: &[usize]) -> std::result::Result<&[u8], SnapshotError> {
        let err = |message: String| SnapshotError::Tensor { name: name.to_string(), message };
        let t = self.st.tensor(name).map_err(|_| err("missing".into()))?;
        if t.dtype() != dtype {
            return Err(err(format!("dtype {:?}, expected {:?}", t.dtype(), dtype)));
        }
        if t.shape() != shape {
            return Err(err(format!("shape {:?}, expected {:?}", t.shape(), shape)));
        }
        Ok(t.data())
    }

    /// Tensor `name` as values of `N` little-endian bytes, decoded by `from`, in a vector
    /// allocated fallibly.
    fn values<T: Copy + Default, const N: usize>(
        &self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = self.get(name, dtype, shape)?;
        let mut out = crate::error::try_filled(bytes.len() / N, T::default(), &format!("tensor '{name}'"))?;
        for (d, b) in out.iter_mut().zip(bytes.chunks_exact(N)) {
            *d = from(b.try_into().unwrap_or([0; N]));
        }
        Ok(out)
    }

    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.values(name, Dtype::F32, shape, f32::from_le_bytes)
    }

    fn u16s(&self, name: &str, n: usize) -> Result<Vec<u16>> {
        self.values(name, Dtype::U16, &[n], u16::from_le_bytes)
    }

    fn u32s(&self, name: &str, n: usize) -> Result<Vec<u32>> {
        self.values(name, Dtype::U32, &[n], u32::from_le_bytes)
    }

    fn enums<T>(
        &self,
        name: &str,
        n: usize,
        f: impl Fn(u8) -> crate::Result<T>,
    ) -> std::result::Result<Vec<T>, SnapshotError> {
        self.get(name, Dtype::U8, &[n])?
            .iter()
            .enumerate()
            .map(|(i, &v)| f(v).map_err(|e| SnapshotError::InvalidState(format!("{name}[{i}]: {e}"))))
            .collect()
    }
}

/// Parses and verifies snapshot bytes: safetensors structure, metadata keys,
/// schema version (newer = error, older = migration chain), shapes, dtypes,
/// enum values, the state's own invariants and the CRC-32.
pub fn from_bytes(bytes: &[u8]) -> Result<LayerState> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| SnapshotError::Format(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| SnapshotError::Format(e.to_string()))?;
    let meta = header.metadata().clone().ok_or_else(|| meta_err("no __metadata__ (not a Kasmina snapshot)"))?;
    // The version first: a newer writer's keys and rules are not this reader's to judge.
    let version = parse_u64(&meta, KEY_SCHEMA)?;
    if version > SCHEMA_VERSION as u64 {
        return Err(SnapshotError::NewerSchema { found: version, supported: SCHEMA_VERSION }.into());
    }
    if version < OLDEST_SCHEMA_VERSION as u64 {
        return Err(SnapshotError::UnsupportedSchema { found: version, oldest: OLDEST_SCHEMA_VERSION }.into());
    }
    if let Some(k) = meta.keys().find(|k| k.starts_with(KASMINA_PREFIX) && !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(meta_err(format!("unknown key '{k}' (corrupt, or written by a newer kasmina)")).into());
    }
    if meta.contains_key(KEY_CONFIG) && !meta.contains_key(KEY_META_CRC) {
        return Err(meta_err(format!(
            "'{KEY_CONFIG}' without '{KEY_META_CRC}': the config would be unprotected (SPEC 2.2 requires the \
             metadata checksum with a config)"
        ))
        .into());
    }
    if meta.contains_key(KEY_META_CRC) {
        let recorded = parse_hex32(&meta, KEY_META_CRC)?;
        let sorted: BTreeMap<String, String> = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let computed = metadata_crc(&sorted);
        if recorded != computed {
            return Err(meta_err(format!(
                "metadata checksum mismatch: recorded {recorded:08x}, computed {computed:08x} (corrupt metadata)"
            ))
            .into());
        }
    }
    let foreign: BTreeMap<String, String> =
        meta.iter().filter(|(k, _)| !k.starts_with(KASMINA_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    // Migration chain: each step lifts version v to v + 1. Empty while 1 is the only version.
    let h = parse_u64(&meta, KEY_H)? as usize;
    let n = parse_u64(&meta, KEY_S)? as usize;
    let epoch =
        u32::try_from(parse_u64(&meta, KEY_EPOCH)?).map_err(|_| meta_err("'kasmina.epoch' does not fit u32"))?;
    let recorded = parse_hex32(&meta, KEY_CRC)?;
    let mut config = match meta.get(KEY_CONFIG) {
        Some(c) => strict_config(c)?,
        None => LayerConfig::default(),
    };
    if meta.contains_key(KEY_CONFIG) && (config.hidden_dim != h || config.num_seeds != n) {
        return Err(meta_err(format!(
            "config says H={} S={}, metadata says H={h} S={n}",
            config.hidden_dim, config.num_seeds
        ))
        .into());
    }
    config.hidden_dim = h;
    config.num_seeds = n;
    config.validate()?;
    let c = config.chunk_size();
    let t = Tensors { st };
    let names: Vec<String> = t.st.names().into_iter().map(str::to_string).collect();
    const TENSORS: [&str; 11] = [
        "lifecycle",
        "blueprint_id",
        "blueprint_type",
        "grafting_strategy",
        "alpha",
        "epochs_in_state",
        "last_update_epoch",
        "clamp_mean",
        "clamp_std",
        "weights",
        "scales",
    ];
    if let Some(extra) = names.iter().find(|nm| !TENSORS.contains(&nm.as_str())) {
        return Err(SnapshotError::Tensor { name: extra.clone(), message: "unknown tensor".into() }.into());
    }
    let seeds = SeedStates {
        lifecycle: t.enums("lifecycle", n, LifecycleState::from_raw)?,
        blueprint_id: t.u16s("blueprint_id", n)?,
        blueprint_type: t.enums("blueprint_type", n, BlueprintType::from_raw)?,
        grafting_strategy: t.enums("grafting_strategy", n, GraftingStrategy::from_raw)?,
        alpha: t.f32s("alpha", &[n])?,
        epochs_in_state: t.u16s("epochs_in_state", n)?,
        last_update_epoch: t.u32s("last_update_epoch", n)?,
        clamp_mean: t.f32s("clamp_mean", &[n])?,
        clamp_std: t.f32s("clamp_std", &[n])?,
    };
    let params =
        BlueprintParams { chunk_size: c, weights: t.f32s("weights", &[n, c])?, scales: t.f32s("scales", &[n])? };
    let state = LayerState { config, epoch, seeds, params, metadata: foreign };
    let computed = checksum::checksum(&state);
    if computed != recorded {
        return Err(SnapshotError::Checksum { recorded, computed }.into());
    }
    state.validate().map_err(|e| SnapshotError::InvalidState(e.to_string()))?;
    Ok(state)
}

/// Parses `kasmina.config`: a JSON object with exactly the fields of [`LayerConfig`] (nested
/// objects too); an unknown or a missing field is an error naming it (SPEC 2.2), never a
/// default.
fn strict_config(json: &str) -> std::result::Result<LayerConfig, SnapshotError> {
    let bad = |m: String| meta_err(format!("'{KEY_CONFIG}' is not a valid config: {m}"));
    let given: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let config: LayerConfig = serde_json::from_value(given.clone()).map_err(|e| bad(e.to_string()))?;
    let full = serde_json::to_value(config).map_err(|e| bad(e.to_string()))?;
    same_fields("", &given, &full).map_err(bad)?;
    Ok(config)
}

/// Whether `given` names exactly the object fields `full` has, at every depth (`path`: where).
fn same_fields(path: &str, given: &serde_json::Value, full: &serde_json::Value) -> std::result::Result<(), String> {
    let (Some(g), Some(f)) = (given.as_object(), full.as_object()) else { return Ok(()) };
    if let Some(k) = g.keys().find(|k| !f.contains_key(*k)) {
        return Err(format!("unknown field '{path}{k}'"));
    }
    if let Some(k) = f.keys().find(|k| !g.contains_key(*k)) {
        return Err(format!("missing field '{path}{k}'"));
    }
    g.iter().try_for_each(|(k, v)| same_fields(&format!("{path}{k}."), v, &f[k]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, StabilityMode};

    fn sample() -> LayerState {
        let cfg = LayerConfig::new(6, 2).unwrap().with_stability(StabilityMode::Strict { k: 4.0 });
        let mut st = LayerState::new(cfg).unwrap();
        st.germinate(1, 300, BlueprintType::Attention, GraftingStrategy::GradNormGated).unwrap();
        st.epoch = 12;
        st.params.weights = vec![0.0, 0.0, 0.0, 0.5, -0.25, 2.0];
        st.params.scales[1] = 1.5;
        st.seeds.clamp_mean[1] = 0.75;
        st.seeds.clamp_std[1] = 0.125;
        st
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let st = sample();
        save(&st, &p).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(checksum::checksum(&back), checksum::checksum(&st));
        assert_eq!(back.config, st.config);
        assert_eq!(back.epoch, 12);
        assert_eq!(back.seeds.lifecycle, st.seeds.lifecycle);
        assert_eq!(back.params, st.params);
        // NaN clamp stats survive bit for bit.
        assert_eq!(back.seeds.clamp_mean[0].to_bits(), crate::CLAMP_UNSET.to_bits());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_same_state_always_gives_the_same_bytes() {
        let a = to_bytes(&sample()).unwrap();
        for _ in 0..8 {
            assert_eq!(to_bytes(&sample()).unwrap(), a);
        }
        assert_eq!(from_bytes(&a).unwrap(), sample());
    }

    #[test]
    fn metadata_follows_the_spec() {
        let bytes = to_bytes(&sample()).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["kasmina.schema_version"], "1");
        assert_eq!(meta["kasmina.hidden_dim"], "6");
        assert_eq!(meta["kasmina.num_seeds"], "2");
        assert_eq!(meta["kasmina.epoch"], "12");
        assert_eq!(meta["kasmina.crc32"], format!("{:08x}", checksum::checksum(&sample())));
        let cfg: serde_json::Value = serde_json::from_str(&meta["kasmina.config"]).unwrap();
        assert_eq!(cfg["stability"]["mode"], "strict");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = to_bytes(&sample()).unwrap();
        for len in 0..bytes.len() {
            let r = from_bytes(&bytes[..len]);
            assert!(matches!(r, Err(Error::Snapshot(_))), "truncation to {len} bytes: {r:?}");
        }
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = to_bytes(&sample()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let r = from_bytes(&b);
                assert!(r.is_err(), "flipping bit {bit} of byte {i} ({:?}) was accepted", bytes[i] as char);
            }
        }
    }

    #[test]
    fn newer_schema_version_is_rejected_with_a_clear_message() {
        let bytes = to_bytes(&sample()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.insert("kasmina.schema_version".into(), "2".into());
        meta.remove("kasmina.metadata_crc32");
        let tensors: Vec<(String, TensorView)> = st.tensors();
        let newer = safetensors::serialize(tensors, Some(meta)).unwrap();
        let e = from_bytes(&newer).unwrap_err();
        assert!(matches!(e, Error::Snapshot(SnapshotError::NewerSchema { found: 2, supported: 1 })), "{e}");
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn snapshot_without_config_loads_with_the_default_config() {
        let st = LayerState::new(LayerConfig::new(4, 2).unwrap()).unwrap();
        let bytes = to_bytes(&st).unwrap();
        let s = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.remove("kasmina.config");
        meta.remove("kasmina.metadata_crc32");
        let plain = safetensors::serialize(s.tensors(), Some(meta)).unwrap();
        let back = from_bytes(&plain).unwrap();
        assert_eq!(back.config, LayerConfig::new(4, 2).unwrap());
    }

    /// `bytes` with its metadata changed by `edit`; the metadata CRC is recomputed when `reseal`
    /// (a writer that follows SPEC 2.2), else left as it was.
    fn with_metadata(bytes: &[u8], reseal: bool, edit: impl FnOnce(&mut BTreeMap<String, String>)) -> Vec<u8> {
        let s = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        let mut meta: BTreeMap<String, String> = header.metadata().clone().unwrap().into_iter().collect();
        edit(&mut meta);
        if reseal && meta.contains_key(KEY_META_CRC) {
            let crc = format!("{:08x}", metadata_crc(&meta));
            meta.insert(KEY_META_CRC.to_string(), crc);
        }
        safetensors::serialize(s.tensors(), Some(meta.into_iter().collect())).unwrap()
    }

    #[test]
    fn unknown_enum_value_is_rejected() {
        let mut st = sample();
        st.seeds.lifecycle[0] = LifecycleState::Dormant;
        let bytes = to_bytes(&st).unwrap();
        let s = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        let mut tensors: Vec<(String, TensorView)> = s.tensors();
        let bad = [11u8, 1];
        let pos = tensors.iter().position(|(n, _)| n == "lifecycle").unwrap();
        tensors[pos].1 = TensorView::new(Dtype::U8, vec![2], &bad).unwrap();
        let out = safetensors::serialize(tensors, Some(meta)).unwrap();
        let e = from_bytes(&out).unwrap_err();
        assert!(matches!(e, Error::Snapshot(SnapshotError::InvalidState(_))), "{e}");
    }

    #[test]
    fn a_config_needs_the_metadata_checksum() {
        let bytes = to_bytes(&sample()).unwrap();
        let bare = with_metadata(&bytes, false, |m| {
            m.remove(KEY_META_CRC);
        });
        let e = from_bytes(&bare).unwrap_err().to_string();
        assert!(e.contains("kasmina.metadata_crc32") && e.contains("kasmina.config"), "{e}");
        // Every single-bit flip inside the config of a snapshot that carries the checksum is
        // refused, so none can turn strict mode off or change a value.
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let config = header.metadata().clone().unwrap()[KEY_CONFIG].clone();
        let mut accepted = Vec::new();
        for i in 0..config.len() * 8 {
            let mut b = config.clone().into_bytes();
            b[i / 8] ^= 1 << (i % 8);
            let Ok(flipped) = String::from_utf8(b) else { continue };
            let out = with_metadata(&bytes, false, |m| {
                m.insert(KEY_CONFIG.to_string(), flipped.clone());
            });
            if let Ok(st) = from_bytes(&out) {
                accepted.push((i, st.config));
            }
        }
        assert!(accepted.is_empty(), "flips accepted: {accepted:?}");
    }

    #[test]
    fn unknown_or_missing_config_fields_are_errors() {
        let bytes = to_bytes(&sample()).unwrap();
        type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
        let edit = |f: Edit<'_>| {
            with_metadata(&bytes, true, |m| {
                let mut v: serde_json::Value = serde_json::from_str(&m[KEY_CONFIG]).unwrap();
                f(&mut v);
                m.insert(KEY_CONFIG.to_string(), v.to_string());
            })
        };
        let cases: [(&str, Edit<'_>); 4] = [
            ("unknown field 'strict_mode'", &|v| {
                v["strict_mode"] = serde_json::json!(false);
            }),
            ("missing field 'embargo_epochs'", &|v| {
                v.as_object_mut().unwrap().remove("embargo_epochs");
            }),
            ("missing field 'grafting.ramp_epochs'", &|v| {
                v["grafting"].as_object_mut().unwrap().remove("ramp_epochs");
            }),
            ("unknown field 'stability.kk'", &|v| {
                v["stability"]["kk"] = serde_json::json!(1.0);
            }),
        ];
        for (want, f) in cases {
            let e = from_bytes(&edit(f)).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // Resealed but unchanged: still loads (the helper itself is sound).
        assert_eq!(from_bytes(&edit(&|_| {})).unwrap(), sample());
    }

    #[test]
    fn other_tools_metadata_is_kept_and_the_namespace_is_checked() {
        let bytes = to_bytes(&sample()).unwrap();
        let tagged = with_metadata(&bytes, true, |m| {
            m.insert("trainer.run".into(), "r17".into());
            m.insert("format".into(), "pt".into());
        });
        let st = from_bytes(&tagged).unwrap();
        assert_eq!(st.metadata.get("trainer.run").map(String::as_str), Some("r17"));
        assert_eq!(st.metadata.get("format").map(String::as_str), Some("pt"));
        // Written again (a lifecycle change in between): kept as it was.
        let mut st2 = st.clone();
        st2.epoch += 1;
        let again = from_bytes(&to_bytes(&st2).unwrap()).unwrap();
        assert_eq!(again.metadata, st.metadata);
        assert_eq!(again.epoch, st.epoch + 1);
        // An unknown key in the snapshot's own namespace is an error, before or after sealing.
        for reseal in [false, true] {
            let odd = with_metadata(&bytes, reseal, |m| {
                m.insert("kasmina.strict".into(), "0".into());
            });
            let e = from_bytes(&odd).unwrap_err().to_string();
            assert!(e.contains("unknown key 'kasmina.strict'"), "{e}");
        }
        // A state cannot carry a key of that namespace as another tool's.
        let mut bad = sample();
        bad.metadata.insert("kasmina.config".into(), "{}".into());
        assert!(to_bytes(&bad).is_err());
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        save(&sample(), &p).unwrap();
        let before = std::fs::read(&p).unwrap();
        let mut bad = sample();
        bad.seeds.alpha[0] = 2.0;
        assert!(save(&bad, &p).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn writes_keep_modes_follow_links_and_clear_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        // Stale and fresh temporaries of an earlier, killed writer: only the stale one goes.
        let stale = dir.path().join(".kasmina-stale.tmp");
        let fresh = dir.path().join(".kasmina-fresh.tmp");
        for t in [&stale, &fresh] {
            std::fs::write(t, b"partial").unwrap();
        }
        let old = std::time::SystemTime::now() - STALE_TMP - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
        write_all_atomic(&[(&a, b"one"), (&b, b"two")]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        assert!(!stale.exists() && fresh.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            // New files are rw-r--r--; an overwritten file keeps its mode.
            assert_eq!(mode(&a), 0o644);
            std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
            write_atomic(&a, b"three").unwrap();
            assert_eq!((std::fs::read(&a).unwrap(), mode(&a)), (b"three".to_vec(), 0o640));
            // A symbolic link is written through: the link stays, its target gets the bytes.
            let link = dir.path().join("link.bin");
            std::os::unix::fs::symlink(&b, &link).unwrap();
            write_atomic(&link, b"four").unwrap();
            assert!(link.is_symlink());
            assert_eq!(std::fs::read(&b).unwrap(), b"four");
        }
    }
}
