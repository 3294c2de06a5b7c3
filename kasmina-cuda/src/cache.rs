//! The on-disk cache of compiled kernel modules, so that a new process loads its kernels
//! instead of compiling them with NVRTC (seconds per module) before its first launch.
//!
//! - Entry: one file per module, `<module>-<hash>.cubin` in the cache folder, holding the
//!   module's CUBIN (machine code: the driver loads it without a JIT step) behind a header.
//! - Key: the module name, the kernel source (SHA-256), every compile option and define, the
//!   target architecture, the NVRTC version and the driver version ([`CacheKey`]). The file
//!   name carries a hash of the key and the header the whole key, so an entry is used only
//!   for exactly the compile that made it.
//! - Integrity: the header holds the payload's length and SHA-256. A truncated, corrupt or
//!   foreign file is ignored (a `tracing` warning) and rebuilt; nothing is ever loaded from a
//!   file that fails the check.
//! - Writes are atomic (a temporary file renamed into place, [`kasmina_core::snapshot::write_atomic`]),
//!   so concurrent processes never see a torn entry: the last rename wins, and both wrote the
//!   same bytes.
//!
//! This module is host code only (no CUDA calls), tested on any machine.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where one of the backend's caches lives between processes: the kernel cache (a folder of
/// compiled modules, [`crate::CudaOptions::kernel_cache`]) or the autotuner's winners (a JSON
/// file, [`crate::CudaOptions::autotune_cache`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheLocation {
    /// The cache's place in the user's cache folder ([`dirs::cache_dir`], for example
    /// `~/.cache` on Linux): `kasmina/cuda` for kernels, `kasmina/autotune.json` for the
    /// autotuner. Without a cache folder (no home folder) the cache is off.
    #[default]
    Default,
    /// This folder (kernels) or file (autotuner), created when missing.
    Path(PathBuf),
    /// No cache between processes: every process compiles the modules it uses and tunes its
    /// keys again.
    Off,
}

impl CacheLocation {
    /// The path the cache uses, if any: `default` (under the user's cache folder) for
    /// [`CacheLocation::Default`].
    pub fn resolve(&self, default: &[&str]) -> Option<PathBuf> {
        match self {
            Self::Default => dirs::cache_dir().map(|d| default.iter().fold(d, |p, part| p.join(part))),
            Self::Path(p) => Some(p.clone()),
            Self::Off => None,
        }
    }

    /// The kernel cache's folder, if any.
    pub fn kernel_dir(&self) -> Option<PathBuf> {
        self.resolve(&["kasmina", "cuda"])
    }

    /// The autotuner's file, if any.
    pub fn autotune_file(&self) -> Option<PathBuf> {
        self.resolve(&["kasmina", "autotune.json"])
    }

    /// Parses a setting as [`crate::CudaOptions::from_env`] reads it: `off` (or `0`, `false`,
    /// `no`) disables the cache, an empty value or `default` keeps the default place, anything
    /// else is a path.
    pub fn parse(value: &str) -> Self {
        match value.trim() {
            "" => Self::Default,
            v if v.eq_ignore_ascii_case("default") => Self::Default,
            v if ["off", "0", "false", "no"].iter().any(|o| v.eq_ignore_ascii_case(o)) => Self::Off,
            v => Self::Path(PathBuf::from(v)),
        }
    }
}

/// The first bytes of every entry (format version 1).
const MAGIC: &[u8; 8] = b"KSMCUBN1";

/// What one compile depends on: its entry is valid only for exactly these inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// The module's name (`kasmina_f32_v4.cu`).
    module: String,
    /// Every line of the key, as the entry's header stores it.
    text: String,
}

impl CacheKey {
    /// The key of compiling `source` as `module` for `arch` with `options`, by NVRTC
    /// `nvrtc` (major, minor) for a driver of version `driver` (`cuDriverGetVersion`, None
    /// when no driver is loaded).
    pub fn new(
        module: &str,
        source: &str,
        arch: &str,
        options: &[String],
        nvrtc: (i32, i32),
        driver: Option<i32>,
    ) -> Self {
        let mut text = format!("kasmina-cuda kernel module\nmodule {module}\narch {arch}\n");
        text.push_str(&format!("nvrtc {}.{}\n", nvrtc.0, nvrtc.1));
        match driver {
            Some(v) => text.push_str(&format!("driver {v}\n")),
            None => text.push_str("driver none\n"),
        }
        for o in options {
            text.push_str(&format!("option {o}\n"));
        }
        text.push_str(&format!("source-sha256 {}\n", hex(&Sha256::digest(source.as_bytes()))));
        Self { module: module.to_string(), text }
    }

    /// The key's lines (module, architecture, versions, options, source hash).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The entry's file name: the module's name without `.cu`, then 16 hex digits of the key's
    /// SHA-256.
    pub fn file_name(&self) -> String {
        let stem = self.module.strip_suffix(".cu").unwrap_or(&self.module);
        let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        let digest = Sha256::digest(self.text.as_bytes());
        format!("{stem}-{}.cubin", &hex(&digest)[..16])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An entry's bytes: the magic `KSMCUBN1`, the key's length (u32 LE) and text, the payload's length
/// (u64 LE) and SHA-256, then the payload.
pub fn encode_entry(key: &CacheKey, payload: &[u8]) -> Vec<u8> {
    let k = key.text.as_bytes();
    let mut out = Vec::with_capacity(8 + 4 + k.len() + 8 + 32 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// Why an entry was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// No entry for the key yet.
    Missing,
    /// The file exists but cannot be used (the reason); it is rebuilt.
    Unusable(String),
}

/// The payload of `bytes` if they are a whole, intact entry for `key`.
pub fn decode_entry(key: &CacheKey, bytes: &[u8]) -> Result<Vec<u8>, EntryError> {
    let bad = |why: &str| EntryError::Unusable(why.to_string());
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("not a kernel cache entry"))?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("truncated header"))?;
    let klen = u32::from_le_bytes(*len) as usize;
    if rest.len() < klen {
        return Err(bad("truncated header"));
    }
    let (ktext, rest) = rest.split_at(klen);
    if ktext != key.text.as_bytes() {
        return Err(bad("made for another compile (key differs)"));
    }
    let (plen, rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("truncated header"))?;
    let (sum, payload) = rest.split_first_chunk::<32>().ok_or_else(|| bad("truncated header"))?;
    if u64::from_le_bytes(*plen) != payload.len() as u64 {
        return Err(bad("truncated or padded payload"));
    }
    if Sha256::digest(payload).as_slice() != sum.as_slice() {
        return Err(bad("payload checksum mismatch"));
    }
    Ok(payload.to_vec())
}

/// Reads the entry of `key` in `dir`.
pub fn read_entry(dir: &Path, key: &CacheKey) -> Result<Vec<u8>, EntryError> {
    let path = dir.join(key.file_name());
    match std::fs::read(&path) {
        Ok(bytes) => decode_entry(key, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(EntryError::Missing),
        Err(e) => Err(EntryError::Unusable(format!("cannot read it: {e}"))),
    }
}

/// Writes the entry of `key` into `dir` (created when missing), atomically; returns its path.
pub fn write_entry(dir: &Path, key: &CacheKey, payload: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(key.file_name());
    kasmina_core::snapshot::write_atomic(&path, &encode_entry(key, payload)).map_err(std::io::Error::other)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::new(
            "kasmina_f32_v4.cu",
            "__global__ void k() {}",
            "sm_90",
            &["--std=c++17".into(), "-DKASMINA_DT=DF32".into(), "-DKASMINA_V=4".into()],
            (13, 0),
            Some(13000),
        )
    }

    #[test]
    fn key_names_every_input() {
        let text = key().text().to_string();
        for line in [
            "module kasmina_f32_v4.cu",
            "arch sm_90",
            "nvrtc 13.0",
            "driver 13000",
            "option --std=c++17",
            "option -DKASMINA_DT=DF32",
            "option -DKASMINA_V=4",
            "source-sha256 ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "key lacks {line:?}:\n{text}");
        }
        let name = key().file_name();
        assert!(name.starts_with("kasmina_f32_v4-") && name.ends_with(".cubin") && name.len() == 15 + 16 + 6, "{name}");
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = key();
        let opts = |v: &str| vec!["--std=c++17".to_string(), "-DKASMINA_DT=DF32".into(), format!("-DKASMINA_V={v}")];
        let others = [
            CacheKey::new("kasmina_f16_v4.cu", "__global__ void k() {}", "sm_90", &opts("4"), (13, 0), Some(13000)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() { }", "sm_90", &opts("4"), (13, 0), Some(13000)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() {}", "sm_80", &opts("4"), (13, 0), Some(13000)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() {}", "sm_90", &opts("2"), (13, 0), Some(13000)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() {}", "sm_90", &opts("4"), (12, 9), Some(13000)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() {}", "sm_90", &opts("4"), (13, 0), Some(12080)),
            CacheKey::new("kasmina_f32_v4.cu", "__global__ void k() {}", "sm_90", &opts("4"), (13, 0), None),
        ];
        for other in &others {
            assert_ne!(other.text(), base.text());
            assert_ne!(other.file_name(), base.file_name(), "{}", other.text());
        }
    }

    #[test]
    fn entries_round_trip_and_reject_damage() {
        let k = key();
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let entry = encode_entry(&k, &payload);
        assert_eq!(decode_entry(&k, &entry), Ok(payload.clone()));
        // Every truncation is refused.
        for cut in 0..entry.len() {
            assert!(matches!(decode_entry(&k, &entry[..cut]), Err(EntryError::Unusable(_))), "cut {cut}");
        }
        // Every flipped byte is refused (magic, key, length, checksum or payload).
        for at in (0..entry.len()).step_by(7) {
            let mut bad = entry.clone();
            bad[at] ^= 0x40;
            assert!(matches!(decode_entry(&k, &bad), Err(EntryError::Unusable(_))), "byte {at}");
        }
        // Trailing bytes are refused.
        let mut long = entry.clone();
        long.push(0);
        assert!(matches!(decode_entry(&k, &long), Err(EntryError::Unusable(_))));
        // Another key's entry is refused.
        let other = CacheKey::new("kasmina_f32_v4.cu", "x", "sm_90", &[], (13, 0), None);
        assert!(matches!(decode_entry(&other, &entry), Err(EntryError::Unusable(_))));
    }

    #[test]
    fn files_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = dir.path().join("a").join("b");
        let k = key();
        assert_eq!(read_entry(&sub, &k), Err(EntryError::Missing));
        let path = write_entry(&sub, &k, b"cubin bytes").expect("write");
        assert_eq!(path, sub.join(k.file_name()));
        assert_eq!(read_entry(&sub, &k), Ok(b"cubin bytes".to_vec()));
        // A corrupt file is reported, then replaced by the next write.
        std::fs::write(&path, b"garbage").expect("corrupt");
        assert!(matches!(read_entry(&sub, &k), Err(EntryError::Unusable(_))));
        write_entry(&sub, &k, b"new bytes").expect("rewrite");
        assert_eq!(read_entry(&sub, &k), Ok(b"new bytes".to_vec()));
        // Only the entry remains (no temporary files).
        assert_eq!(std::fs::read_dir(&sub).expect("list").count(), 1);
    }

    #[test]
    fn settings_parse() {
        assert_eq!(CacheLocation::parse(""), CacheLocation::Default);
        assert_eq!(CacheLocation::parse("default"), CacheLocation::Default);
        assert_eq!(CacheLocation::parse("OFF"), CacheLocation::Off);
        assert_eq!(CacheLocation::parse("0"), CacheLocation::Off);
        assert_eq!(CacheLocation::parse("/tmp/k"), CacheLocation::Path(PathBuf::from("/tmp/k")));
        assert_eq!(CacheLocation::Off.kernel_dir(), None);
        assert_eq!(CacheLocation::Off.autotune_file(), None);
        assert_eq!(CacheLocation::Path("/x".into()).kernel_dir(), Some(PathBuf::from("/x")));
        assert_eq!(CacheLocation::Path("/x.json".into()).autotune_file(), Some(PathBuf::from("/x.json")));
        if let Some(home) = dirs::cache_dir() {
            assert_eq!(CacheLocation::Default.kernel_dir(), Some(home.join("kasmina").join("cuda")));
            assert_eq!(CacheLocation::Default.autotune_file(), Some(home.join("kasmina").join("autotune.json")));
        }
    }
}
