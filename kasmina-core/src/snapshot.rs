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
//!
//! A file is read and written one tensor at a time, straight between the file and the
//! state's arrays ([`load`], [`save`]): a snapshot costs the state's size and a constant,
//! never a second copy of its data. [`from_bytes`] and [`to_bytes`] are the same reader and
//! writer on bytes in memory.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use safetensors::SafeTensorError;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

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

/// Bytes of the little-endian u64 that gives the JSON header's length at the start of a file.
const LEN_PREFIX: u64 = 8;

/// The largest JSON header read or written: the `safetensors` crate's own limit (100 MB), so a
/// header that crate refuses for its size is refused here too.
const MAX_HEADER: u64 = 100_000_000;

/// The buffer between a writer and a staged file: the header and the small arrays reach the file
/// in large writes, a large slice (the weights) passes straight through.
const WRITE_BUFFER: usize = 1 << 16;

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

fn format_err(e: SafeTensorError) -> SnapshotError {
    SnapshotError::Format(e.to_string())
}

/// The values of one tensor, borrowed from the state; they are encoded while they are written.
#[derive(Debug, Clone, Copy)]
enum Values<'a> {
    Lifecycle(&'a [LifecycleState]),
    BlueprintType(&'a [BlueprintType]),
    Strategy(&'a [GraftingStrategy]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    F32(&'a [f32]),
}

impl Values<'_> {
    fn dtype(self) -> Dtype {
        match self {
            Values::Lifecycle(_) | Values::BlueprintType(_) | Values::Strategy(_) => Dtype::U8,
            Values::U16(_) => Dtype::U16,
            Values::U32(_) => Dtype::U32,
            Values::F32(_) => Dtype::F32,
        }
    }

    /// The number of bytes the values take in the file (one per enum value; the size in
    /// memory of the numbers, which are stored at their own width).
    fn byte_len(self) -> usize {
        match self {
            Values::Lifecycle(v) => v.len(),
            Values::BlueprintType(v) => v.len(),
            Values::Strategy(v) => v.len(),
            Values::U16(v) => std::mem::size_of_val(v),
            Values::U32(v) => std::mem::size_of_val(v),
            Values::F32(v) => std::mem::size_of_val(v),
        }
    }

    /// Writes the values' little-endian bytes to `w`.
    fn write(self, w: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Values::Lifecycle(v) => write_encoded(w, v, |x| [x.raw()]),
            Values::BlueprintType(v) => write_encoded(w, v, |x| [x.raw()]),
            Values::Strategy(v) => write_encoded(w, v, |x| [x.raw()]),
            Values::U16(v) => write_le(w, v, u16::to_le_bytes),
            Values::U32(v) => write_le(w, v, u32::to_le_bytes),
            Values::F32(v) => write_le(w, v, f32::to_le_bytes),
        }
    }
}

/// Writes numbers as little-endian bytes: straight from memory where memory is little-endian (no
/// copy, whatever the size), else encoded by `to_le` through a small buffer.
fn write_le<T: bytemuck::Pod, const N: usize>(
    w: &mut dyn Write,
    values: &[T],
    to_le: fn(T) -> [u8; N],
) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(values))
    } else {
        write_encoded(w, values, to_le)
    }
}

/// Writes `values` encoded by `encode`, `N` bytes each, through a 4 KiB buffer (so the memory it
/// takes does not grow with the array).
fn write_encoded<T: Copy, const N: usize>(
    w: &mut dyn Write,
    values: &[T],
    encode: impl Fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    for chunk in values.chunks(buf.len() / N) {
        for (dst, v) in buf.chunks_exact_mut(N).zip(chunk) {
            dst.copy_from_slice(&encode(*v));
        }
        w.write_all(&buf[..chunk.len() * N])?;
    }
    Ok(())
}

/// A snapshot file's layout: the canonical header (length prefix included) and the tensors in
/// file order. [`to_bytes`] and [`save`] both write through it, so the bytes are defined once.
struct Layout<'a> {
    head: Vec<u8>,
    tensors: Vec<Values<'a>>,
    /// The length of the whole file.
    len: u64,
}

impl<'a> Layout<'a> {
    /// The layout of `state`'s snapshot, after checking the state ([`LayerState::validate`]).
    fn of(state: &'a LayerState) -> Result<Self> {
        state.validate()?;
        let s = &state.seeds;
        let (n, c) = (state.num_seeds(), state.config.chunk_size());
        let mut tensors: Vec<(&'static str, Vec<usize>, Values<'a>)> = vec![
            ("lifecycle", vec![n], Values::Lifecycle(&s.lifecycle)),
            ("blueprint_id", vec![n], Values::U16(&s.blueprint_id)),
            ("blueprint_type", vec![n], Values::BlueprintType(&s.blueprint_type)),
            ("grafting_strategy", vec![n], Values::Strategy(&s.grafting_strategy)),
            ("alpha", vec![n], Values::F32(&s.alpha)),
            ("epochs_in_state", vec![n], Values::U16(&s.epochs_in_state)),
            ("last_update_epoch", vec![n], Values::U32(&s.last_update_epoch)),
            ("clamp_mean", vec![n], Values::F32(&s.clamp_mean)),
            ("clamp_std", vec![n], Values::F32(&s.clamp_std)),
            ("weights", vec![n, c], Values::F32(&state.params.weights)),
            ("scales", vec![n], Values::F32(&state.params.scales)),
        ];
        // The order the `safetensors` crate's own writer uses (larger dtypes first, then by name),
        // so the file is the one that crate writes, with its header's keys sorted.
        tensors.sort_by(|(a, _, x), (b, _, y)| y.dtype().cmp(&x.dtype()).then(a.cmp(b)));
        let mut infos = Vec::with_capacity(tensors.len());
        let mut offset = 0usize;
        for (name, shape, values) in &tensors {
            let end =
                offset.checked_add(values.byte_len()).ok_or_else(|| format_err(SafeTensorError::ValidationOverflow))?;
            infos.push((
                name.to_string(),
                TensorInfo { dtype: values.dtype(), shape: shape.clone(), data_offsets: (offset, end) },
            ));
            offset = end;
        }
        // `Metadata::new` checks that every tensor's offsets match its dtype and shape.
        let header = Metadata::new(Some(metadata_of(state)?), infos).map_err(format_err)?;
        // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted, so the
        // same state always gives the same bytes (a HashMap's order would not).
        let value = serde_json::to_value(&header).map_err(|e| SnapshotError::Format(e.to_string()))?;
        let mut json = serde_json::to_vec(&value).map_err(|e| SnapshotError::Format(e.to_string()))?;
        // The format's 8-byte alignment of the data, padded with spaces.
        json.resize(json.len().next_multiple_of(LEN_PREFIX as usize), b' ');
        let json_len = json.len() as u64;
        if json_len > MAX_HEADER {
            return Err(format_err(SafeTensorError::HeaderTooLarge).into());
        }
        let mut head = Vec::with_capacity(json.len() + LEN_PREFIX as usize);
        head.extend_from_slice(&json_len.to_le_bytes());
        head.extend_from_slice(&json);
        let len = (head.len() as u64)
            .checked_add(offset as u64)
            .ok_or_else(|| format_err(SafeTensorError::ValidationOverflow))?;
        Ok(Self { head, tensors: tensors.into_iter().map(|(_, _, v)| v).collect(), len })
    }

    /// Writes the file to `w`: the header, then each tensor from the state.
    fn write(&self, w: &mut dyn Write) -> std::io::Result<()> {
        w.write_all(&self.head)?;
        self.tensors.iter().try_for_each(|t| t.write(w))
    }
}

/// The `__metadata__` of `state`'s snapshot: the `kasmina.*` entries of SPEC 2.2 and the other
/// tools' entries the state carries.
fn metadata_of(state: &LayerState) -> std::result::Result<HashMap<String, String>, SnapshotError> {
    let config = serde_json::to_string(&state.config).map_err(|e| SnapshotError::Metadata(e.to_string()))?;
    let mut meta = BTreeMap::new();
    meta.insert(KEY_SCHEMA.to_string(), SCHEMA_VERSION.to_string());
    meta.insert(KEY_H.to_string(), state.config.hidden_dim.to_string());
    meta.insert(KEY_S.to_string(), state.num_seeds().to_string());
    meta.insert(KEY_EPOCH.to_string(), state.epoch.to_string());
    meta.insert(KEY_CRC.to_string(), format!("{:08x}", checksum::checksum(state)));
    meta.insert(KEY_CONFIG.to_string(), config);
    meta.insert(KEY_META_CRC.to_string(), format!("{:08x}", metadata_crc(&meta)));
    meta.extend(state.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(meta.into_iter().collect())
}

/// The snapshot bytes of a state (a complete safetensors file): exactly the bytes [`save`]
/// writes.
pub fn to_bytes(state: &LayerState) -> Result<Vec<u8>> {
    let layout = Layout::of(state)?;
    let oom = || crate::Error::OutOfMemory { what: "snapshot bytes".into(), bytes: layout.len.into() };
    let len = usize::try_from(layout.len).map_err(|_| oom())?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| oom())?;
    // Writing into a vector fails only where it cannot grow, and it has its full size already.
    layout.write(&mut out).map_err(|_| oom())?;
    Ok(out)
}

/// Writes a snapshot atomically: a temporary file in the same folder, fsync,
/// rename over `path`, fsync of the folder. A crash leaves either the old file
/// or the new one, never a torn one.
///
/// The file is written from the state as it goes (header, then each tensor), so saving costs a
/// small buffer on top of the state, not a second copy of it.
pub fn save(state: &LayerState, path: impl AsRef<Path>) -> Result<()> {
    let layout = Layout::of(state)?;
    write_atomic_with(path.as_ref(), |w| layout.write(w))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::result::Result<(), SnapshotError> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes to `path` atomically what `fill` writes into the staged file (see
/// [`write_all_atomic_with`]); an error from `fill` leaves `path` as it was.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::result::Result<(), SnapshotError> {
    let mut fill = Some(fill);
    write_all_atomic_with(&[path], |_, w| fill.take().map_or(Ok(()), |f| f(w)))
}

/// Writes several files together (see [`write_all_atomic_with`]), each given as its bytes.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> std::result::Result<(), SnapshotError> {
    let paths: Vec<&Path> = files.iter().map(|(p, _)| *p).collect();
    write_all_atomic_with(&paths, |i, w| files.get(i).map_or(Ok(()), |(_, bytes)| w.write_all(bytes)))
}

/// Writes several files together: `fill(i, w)` writes the bytes of `paths[i]` into `w`, a
/// buffered writer on a temporary file next to its target, which is then synced; only when every
/// one of them is ready are they renamed into place (and their folders synced). A failure before
/// that (a missing folder, a full disk, an error from `fill`) leaves every target as it was, and
/// the temporary files are removed.
///
/// A target that exists keeps its permissions; a symbolic link is written through (its final
/// target is replaced, the link stays); temporary files of this function older than
/// [`STALE_TMP`] in a target's folder (left by a killed process) are removed first.
pub fn write_all_atomic_with(
    paths: &[&Path],
    mut fill: impl FnMut(usize, &mut dyn Write) -> std::io::Result<()>,
) -> std::result::Result<(), SnapshotError> {
    let folder = |path: &Path| match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut staged = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let io = |source| SnapshotError::Io { path: path.display().to_string(), source };
        let target = if path.is_symlink() { std::fs::canonicalize(path).map_err(io)? } else { path.to_path_buf() };
        let dir = folder(&target);
        remove_stale_tmp(&dir);
        let tmp = tempfile::Builder::new().prefix(TMP_PREFIX).suffix(TMP_SUFFIX).tempfile_in(&dir).map_err(io)?;
        {
            let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file());
            fill(i, &mut out).and_then(|()| out.flush()).map_err(io)?;
        }
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

/// Reads and verifies a snapshot file (the checks of [`from_bytes`]).
///
/// The header is read and checked first, the file's length included, and then each tensor is
/// read from the file straight into the vector that holds it in the state: loading costs the
/// state's size and a constant, not the file's size on top of it, and a file whose header does
/// not fit its length is refused before anything large is allocated. A path that is not a
/// regular file (a pipe) has no length to check against and is read whole first.
pub fn load(path: impl AsRef<Path>) -> Result<LayerState> {
    let path = path.as_ref();
    let io = |source| SnapshotError::Io { path: path.display().to_string(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let info = file.metadata().map_err(io)?;
    if !info.is_file() {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        return from_bytes(&bytes);
    }
    decode(&mut FileSource { file, size: info.len(), path })
}

/// Parses and verifies snapshot bytes: safetensors structure, metadata keys,
/// schema version (newer = error, older = migration chain), shapes, dtypes,
/// enum values, the state's own invariants and the CRC-32.
pub fn from_bytes(bytes: &[u8]) -> Result<LayerState> {
    decode(&mut Bytes(bytes))
}

/// Where a snapshot's bytes are read from: bytes in memory ([`from_bytes`]) or a file
/// ([`load`]). [`decode`] reads the header and then each tensor at its offset, so both are
/// verified by the same code.
trait Source {
    /// The length of the whole snapshot in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), SnapshotError>;
}

/// A snapshot in memory.
struct Bytes<'a>(&'a [u8]);

impl Source for Bytes<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), SnapshotError> {
        // The decoder reads only inside the length it checked; a read past the end is refused
        // all the same, never a panic.
        let part = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| format_err(SafeTensorError::MetadataIncompleteBuffer))?;
        buf.copy_from_slice(part);
        Ok(())
    }
}

/// A snapshot file, of the length it had when it was opened.
struct FileSource<'p> {
    file: std::fs::File,
    size: u64,
    path: &'p Path,
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), SnapshotError> {
        // A file cut short after it was opened gives an I/O error (unexpected end of file).
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(|source| SnapshotError::Io { path: self.path.display().to_string(), source })
    }
}

/// A safetensors header as JSON: the optional `__metadata__` map and every other key a tensor.
/// The `safetensors` crate reads its header through this shape too, but does not export it;
/// reading it here and checking it with `Metadata::new` gives that crate's own errors (its
/// `Metadata` deserializer would wrap them in JSON errors). It has that crate's name for it, which
/// serde's messages quote.
#[derive(serde::Deserialize)]
struct HashMetadata {
    #[serde(rename = "__metadata__")]
    metadata: Option<HashMap<String, String>>,
    #[serde(flatten)]
    tensors: HashMap<String, TensorInfo>,
}

/// A checked safetensors header: every tensor's dtype, shape and offsets (contiguous, matching
/// dtype and shape, covering the data section exactly), the metadata, and where the data starts.
struct Header {
    tensors: Metadata,
    data_start: u64,
}

/// Reads and checks the header of `src` as `SafeTensors::read_metadata` does on a whole
/// buffer, in the same order and with the same errors: at least 8 bytes; a header length within
/// the cap and within the bytes present (overflow-checked) before the header is allocated; UTF-8
/// JSON of tensors whose offsets [`Metadata::new`] accepts; and a data section that ends exactly
/// at the end of the source (no truncation, no trailing bytes).
fn read_header(src: &mut dyn Source) -> Result<Header> {
    let size = src.size();
    if size < LEN_PREFIX {
        return Err(format_err(SafeTensorError::HeaderTooSmall).into());
    }
    let mut prefix = [0u8; LEN_PREFIX as usize];
    src.read_at(0, &mut prefix)?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER {
        return Err(format_err(SafeTensorError::HeaderTooLarge).into());
    }
    let data_start = LEN_PREFIX
        .checked_add(n)
        .filter(|&end| end <= size)
        .ok_or_else(|| format_err(SafeTensorError::InvalidHeaderLength))?;
    let n = usize::try_from(n).map_err(|_| format_err(SafeTensorError::HeaderTooLarge))?;
    let mut json = crate::error::try_filled(n, 0u8, "snapshot header")?;
    src.read_at(LEN_PREFIX, &mut json)?;
    let json = std::str::from_utf8(&json).map_err(|e| format_err(SafeTensorError::InvalidHeader(e)))?;
    let header: HashMetadata =
        serde_json::from_str(json).map_err(|e| format_err(SafeTensorError::InvalidHeaderDeserialization(e)))?;
    // In order of their offsets, as the `safetensors` crate sorts them; `Metadata::new` checks
    // that the offsets are contiguous from 0 and that each matches its tensor's dtype and shape.
    let mut entries: Vec<(String, TensorInfo)> = header.tensors.into_iter().collect();
    entries.sort_by_key(|(_, info)| info.data_offsets);
    let tensors = Metadata::new(header.metadata, entries).map_err(format_err)?;
    let end = u64::try_from(tensors.data_len()).ok().and_then(|len| data_start.checked_add(len));
    if end != Some(size) {
        return Err(format_err(SafeTensorError::MetadataIncompleteBuffer).into());
    }
    Ok(Header { tensors, data_start })
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

/// Decodes little-endian values in place: the identity on a little-endian machine, where the
/// bytes read are the values already; `from_le` on each value elsewhere.
fn from_le_in_place<T: bytemuck::Pod, const N: usize>(values: &mut [T], from_le: fn([u8; N]) -> T) {
    if cfg!(target_endian = "little") {
        return;
    }
    for v in values {
        if let Ok(b) = <[u8; N]>::try_from(bytemuck::bytes_of(v)) {
            *v = from_le(b);
        }
    }
}

/// The tensors of a snapshot whose header was checked, read from its source one at a time.
struct Tensors<'s> {
    src: &'s mut dyn Source,
    header: Header,
}

impl Tensors<'_> {
    /// Where the bytes of tensor `name` lie in the source (offset, length), once its dtype and
    /// shape are the expected ones.
    fn locate(&self, name: &str, dtype: Dtype, shape: &[usize]) -> std::result::Result<(u64, usize), SnapshotError> {
        let err = |message: String| SnapshotError::Tensor { name: name.to_string(), message };
        let t = self.header.tensors.info(name).ok_or_else(|| err("missing".into()))?;
        if t.dtype != dtype {
            return Err(err(format!("dtype {:?}, expected {:?}", t.dtype, dtype)));
        }
        if t.shape != shape {
            return Err(err(format!("shape {:?}, expected {:?}", t.shape, shape)));
        }
        let (start, end) = t.data_offsets;
        let offset = u64::try_from(start).ok().and_then(|s| self.header.data_start.checked_add(s));
        match (offset, end.checked_sub(start)) {
            (Some(offset), Some(len)) => Ok((offset, len)),
            _ => Err(err(format!("offsets {start}..{end} out of range"))),
        }
    }

    /// Tensor `name` as values of `N` little-endian bytes, read from the source straight into a
    /// vector allocated fallibly (on a little-endian machine the bytes are the values; elsewhere
    /// each is decoded by `from_le` in place).
    fn values<T: bytemuck::Pod, const N: usize>(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        from_le: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let (offset, len) = self.locate(name, dtype, shape)?;
        // The header's check matched the length to the dtype and shape: a whole number of values.
        if len % N != 0 || std::mem::size_of::<T>() != N {
            return Err(format_err(SafeTensorError::TensorInvalidInfo).into());
        }
        let mut out = crate::error::try_filled(len / N, T::zeroed(), &format!("tensor '{name}'"))?;
        self.src.read_at(offset, bytemuck::cast_slice_mut(&mut out))?;
        from_le_in_place(&mut out, from_le);
        Ok(out)
    }

    fn f32s(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.values(name, Dtype::F32, shape, f32::from_le_bytes)
    }

    fn u16s(&mut self, name: &str, n: usize) -> Result<Vec<u16>> {
        self.values(name, Dtype::U16, &[n], u16::from_le_bytes)
    }

    fn u32s(&mut self, name: &str, n: usize) -> Result<Vec<u32>> {
        self.values(name, Dtype::U32, &[n], u32::from_le_bytes)
    }

    fn enums<T>(&mut self, name: &str, n: usize, f: impl Fn(u8) -> crate::Result<T>) -> Result<Vec<T>> {
        let raw = self.values(name, Dtype::U8, &[n], |[b]: [u8; 1]| b)?;
        let mut out = Vec::new();
        out.try_reserve_exact(raw.len()).map_err(|_| crate::Error::OutOfMemory {
            what: format!("tensor '{name}'"),
            bytes: (raw.len() as u128) * std::mem::size_of::<T>() as u128,
        })?;
        for (i, &v) in raw.iter().enumerate() {
            out.push(f(v).map_err(|e| SnapshotError::InvalidState(format!("{name}[{i}]: {e}")))?);
        }
        Ok(out)
    }
}

/// Parses and verifies the snapshot in `src`: the body of [`from_bytes`] and [`load`].
fn decode(src: &mut dyn Source) -> Result<LayerState> {
    let header = read_header(src)?;
    let meta = header.tensors.metadata().clone().ok_or_else(|| meta_err("no __metadata__ (not a Kasmina snapshot)"))?;
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
    let mut t = Tensors { src, header };
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
    if let Some(extra) = t.header.tensors.offset_keys().into_iter().find(|nm| !TENSORS.contains(&nm.as_str())) {
        return Err(SnapshotError::Tensor { name: extra, message: "unknown tensor".into() }.into());
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
    use safetensors::tensor::TensorView;

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

    /// A larger state than [`sample`]: several seeds in several states, weights that are not all
    /// zero, another tool's metadata.
    fn wide() -> LayerState {
        let mut st = LayerState::new(LayerConfig::new(4096, 8).unwrap()).unwrap();
        st.germinate(3, 7, BlueprintType::Residual, GraftingStrategy::FixedRamp).unwrap();
        st.germinate(5, 9, BlueprintType::Attention, GraftingStrategy::GradNormGated).unwrap();
        st.epoch = 70_000;
        for (i, w) in st.params.weights.iter_mut().enumerate() {
            *w = (i as f32 * 0.37).sin();
        }
        st.params.scales[5] = -2.5;
        st.metadata.insert("trainer.run".into(), "r17".into());
        st
    }

    /// The reference for the layout: the file the `safetensors` crate writes for `state`, its
    /// header's keys sorted and padded with spaces to the format's 8-byte alignment.
    fn written_by_the_safetensors_crate(state: &LayerState) -> Vec<u8> {
        let layout = Layout::of(state).unwrap();
        let bytes = to_bytes(state).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let meta = metadata_of(state).unwrap();
        let plain = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
        let n = u64::from_le_bytes(plain[..8].try_into().unwrap()) as usize;
        let value: serde_json::Value = serde_json::from_slice(&plain[8..8 + n]).unwrap();
        let mut json = serde_json::to_vec(&value).unwrap();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&json);
        out.extend_from_slice(&plain[8 + n..]);
        assert_eq!(out.len() as u64, layout.len);
        out
    }

    #[test]
    fn the_layout_is_the_safetensors_crates_with_sorted_keys() {
        for st in [sample(), wide()] {
            assert_eq!(to_bytes(&st).unwrap(), written_by_the_safetensors_crate(&st));
        }
    }

    #[test]
    fn save_writes_the_bytes_of_to_bytes_and_load_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        for (i, st) in [sample(), wide()].into_iter().enumerate() {
            let p = dir.path().join(format!("{i}.safetensors"));
            save(&st, &p).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), to_bytes(&st).unwrap());
            let back = load(&p).unwrap();
            assert_eq!(back, st);
            assert_eq!(from_bytes(&to_bytes(&st).unwrap()).unwrap(), back);
            // Written again over itself: the same bytes.
            save(&back, &p).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), to_bytes(&st).unwrap());
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// `load` of `bytes` written to `p` fails with the very error `from_bytes` gives.
    fn load_fails_as_from_bytes(p: &Path, bytes: &[u8], what: &str) {
        std::fs::write(p, bytes).unwrap();
        let (from_file, from_memory) = (load(p), from_bytes(bytes));
        match (&from_file, &from_memory) {
            (Err(Error::Snapshot(a)), Err(Error::Snapshot(b))) => {
                assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{what}: {a} / {b}");
                assert_eq!(a.to_string(), b.to_string(), "{what}");
            }
            _ => panic!("{what}: file {from_file:?}, bytes {from_memory:?}"),
        }
    }

    #[test]
    fn truncated_or_flipped_files_fail_as_their_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let bytes = to_bytes(&sample()).unwrap();
        for len in 0..bytes.len() {
            load_fails_as_from_bytes(&p, &bytes[..len], &format!("truncation to {len} bytes"));
        }
        // One bit in every byte (a different bit from byte to byte): the header's length and
        // JSON, the metadata, each tensor's data.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1 << (i % 8);
            load_fails_as_from_bytes(&p, &b, &format!("bit {} of byte {i}", i % 8));
        }
    }

    #[test]
    fn trailing_bytes_and_a_header_past_the_end_are_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let bytes = to_bytes(&sample()).unwrap();
        let format = |r: Result<LayerState>| match r {
            Err(Error::Snapshot(SnapshotError::Format(m))) => m,
            other => panic!("not a format error: {other:?}"),
        };
        // One byte of trailing garbage.
        let mut longer = bytes.clone();
        longer.push(0);
        load_fails_as_from_bytes(&p, &longer, "one trailing byte");
        assert!(format(load(&p)).contains("incomplete metadata"));
        // 64 GiB of trailing bytes (a sparse file): refused from the header, never read.
        std::fs::write(&p, &bytes).unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_len(bytes.len() as u64 + (64 << 30)).unwrap();
        assert!(format(load(&p)).contains("incomplete metadata"));
        // A header length past the end of the file, below and above the header cap: refused
        // before the header is allocated.
        for claimed in [bytes.len() as u64, MAX_HEADER, MAX_HEADER + 1, u64::MAX - 4, u64::MAX] {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&claimed.to_le_bytes());
            load_fails_as_from_bytes(&p, &b, &format!("header length {claimed}"));
            let m = format(load(&p));
            let want = if claimed > MAX_HEADER { "header too large" } else { "invalid header length" };
            assert!(m.contains(want), "{claimed}: {m}");
        }
        // A header whose tensors claim more data than the file holds (a 64 GiB `weights`):
        // refused before any tensor is allocated.
        let json = concat!(
            r#"{"__metadata__":{"kasmina.schema_version":"1","kasmina.hidden_dim":"17179869184","#,
            r#""kasmina.num_seeds":"1","kasmina.epoch":"0","kasmina.crc32":"00000000"},"#,
            r#""weights":{"dtype":"F32","shape":[1,17179869184],"data_offsets":[0,68719476736]}}"#
        );
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend_from_slice(&[0; 64]);
        load_fails_as_from_bytes(&p, &b, "a 64 GiB tensor in a small file");
        assert!(format(load(&p)).contains("incomplete metadata"));
    }

    #[test]
    fn the_header_checks_are_the_safetensors_crates() {
        // For every truncation and every flipped bit, the header is refused exactly when
        // `SafeTensors::read_metadata` (which insists on the whole file in memory) refuses it,
        // and with its message.
        let bytes = to_bytes(&sample()).unwrap();
        let mut cases: Vec<Vec<u8>> = (0..bytes.len()).map(|len| bytes[..len].to_vec()).collect();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            cases.push(b);
        }
        for b in &cases {
            let ours = match from_bytes(b) {
                Err(Error::Snapshot(SnapshotError::Format(m))) => Some(m),
                _ => None,
            };
            let theirs = safetensors::SafeTensors::read_metadata(b).err().map(|e| e.to_string());
            // Two tensors with the same offsets are ordered by hash, so which one the message
            // names may differ from run to run.
            let offsets = |m: &Option<String>| m.as_deref().is_some_and(|m| m.starts_with("invalid offset for tensor"));
            assert!(ours == theirs || (offsets(&ours) && offsets(&theirs)), "{ours:?} / {theirs:?}");
        }
    }

    #[test]
    fn the_big_endian_paths_agree_with_memory_on_this_machine() {
        // The encoder and decoder used where memory is big-endian, run here on little-endian
        // values: the same bytes as the values' own, and the identity.
        let values: Vec<f32> = (0..5000).map(|i| (i as f32).sqrt() - 20.0).collect();
        let mut encoded = Vec::new();
        write_encoded(&mut encoded, &values, f32::to_le_bytes).unwrap();
        let direct: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(encoded, direct);
        let mut written = Vec::new();
        write_le(&mut written, &values, f32::to_le_bytes).unwrap();
        assert_eq!(written, direct);
        let mut back: Vec<u32> = direct.chunks_exact(4).map(|b| u32::from_ne_bytes(b.try_into().unwrap())).collect();
        from_le_in_place(&mut back, u32::from_le_bytes);
        assert_eq!(back, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn a_failed_writer_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.bin");
        write_atomic(&p, b"old").unwrap();
        let r = write_atomic_with(&p, |w| {
            w.write_all(b"new, partly")?;
            Err(std::io::Error::other("the writer failed"))
        });
        assert!(matches!(r, Err(SnapshotError::Io { .. })), "{r:?}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic_with(&p, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
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
