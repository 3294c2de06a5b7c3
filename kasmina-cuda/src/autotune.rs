//! Autotuning paid once per machine: the launch configuration of a kernel is
//! chosen by timing a few candidates the first time a key is seen, and the
//! winner is kept in a JSON file so that a later process with the same key
//! does no tuning at all.
//!
//! This module is pure host code (no CUDA): the timer is a closure, so the
//! cache logic is tested on any machine with a fake timer.
//!
//! - Key: device name, compute capability, operation, dtype, shape bucket and a
//!   hash of the kernel source together with the candidate set, so a changed
//!   kernel or candidate list never reuses an old winner.
//! - File: [`crate::CudaOptions::autotune_cache`] (by default `dirs::cache_dir()/kasmina/autotune.json`);
//!   [`TuneMode::Off`] skips tuning and uses the built-in default.
//! - A corrupt or unreadable file is a warning, never an error; writes go to a
//!   temporary file that is renamed over the old one, so concurrent writers
//!   never leave a torn file (the last rename wins; an entry lost that way is
//!   simply tuned again later).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One launch configuration of the fused kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelConfig {
    /// Rows each block processes.
    pub rows: u32,
    /// Threads per block (a multiple of 32).
    pub threads: u32,
    /// Elements per thread and load (the vector width).
    pub vec: u32,
    /// Rows a thread loads before it processes any: [`DEFAULT_UNROLL`], or 8 (the seed-uniform
    /// forward's `*_u8` kernels, more bytes in flight per thread). Cache entries without this
    /// field read as the default.
    #[serde(default = "default_unroll")]
    pub unroll: u32,
}

/// The kernels' built-in unroll (`UNROLL` in `kasmina.cu`).
pub const DEFAULT_UNROLL: u32 = 4;

fn default_unroll() -> u32 {
    DEFAULT_UNROLL
}

impl KernelConfig {
    /// A configuration with the default unroll.
    pub const fn new(rows: u32, threads: u32, vec: u32) -> Self {
        Self { rows, threads, vec, unroll: DEFAULT_UNROLL }
    }
}

impl std::fmt::Display for KernelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rows={} threads={} vec={} unroll={}", self.rows, self.threads, self.vec, self.unroll)
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hasher is randomized per process).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a tuned configuration is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TuneKey {
    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub device: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// The operation, e.g. `forward`.
    pub op: String,
    /// The activation dtype's name.
    pub dtype: String,
    /// The shape bucket, e.g. `b16384-h8192`.
    pub bucket: String,
    /// Hash of the kernel source alone (entries with another one are stale).
    pub kernel_hash: u64,
    /// Hash of the kernel source and the candidate set.
    pub hash: u64,
}

impl TuneKey {
    /// Builds a key; `kernel_source` and `candidates` are hashed.
    pub fn new(
        device: &str,
        compute_capability: (i32, i32),
        op: &str,
        dtype: &str,
        bucket: &str,
        kernel_source: &str,
        candidates: &[KernelConfig],
    ) -> Self {
        let kernel_hash = fnv1a64(kernel_source.as_bytes());
        let mut all = kernel_source.as_bytes().to_vec();
        for c in candidates {
            all.extend_from_slice(format!("|{c}").as_bytes());
        }
        Self {
            device: device.to_string(),
            compute_capability,
            op: op.to_string(),
            dtype: dtype.to_string(),
            bucket: bucket.to_string(),
            kernel_hash,
            hash: fnv1a64(&all),
        }
    }

    /// The key as stored in the file.
    pub fn as_string(&self) -> String {
        format!(
            "{}|sm{}{}|{}|{}|{}|{:016x}",
            self.device,
            self.compute_capability.0,
            self.compute_capability.1,
            self.op,
            self.dtype,
            self.bucket,
            self.hash
        )
    }
}

/// The operation field of a key string ([`TuneKey::as_string`]: device first, so it is
/// counted from the end; a `|` in the device name does not move it).
fn key_op(key: &str) -> Option<&str> {
    key.rsplit('|').nth(3)
}

/// The shape bucket of `rows x cols`: both rounded up to a power of two.
pub fn shape_bucket(rows: usize, cols: usize) -> String {
    format!("b{}-h{}", rows.max(1).next_power_of_two(), cols.max(1).next_power_of_two())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    config: KernelConfig,
    /// Milliseconds the winner took when it was timed.
    ms: f64,
    /// The device, to prune stale entries of this device only.
    device: String,
    /// Hash of the kernel source it was tuned with (hex).
    kernel_hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

const FILE_VERSION: u32 = 1;

/// Whether tuning runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TuneMode {
    /// Time candidates on first use of a key (the default).
    On,
    /// Use the built-in default configuration.
    Off,
}

/// Where a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Tuning is off: the default.
    Default,
    /// Already chosen in this process.
    Memory,
    /// Read from the cache file.
    File,
    /// Timed now.
    Tuned,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The tuner: an in-memory map in front of the JSON file.
#[derive(Debug)]
pub struct Tuner {
    path: Option<PathBuf>,
    mode: TuneMode,
    memory: HashMap<String, KernelConfig>,
    warnings: Vec<String>,
    tuned: usize,
    /// Report every candidate's time while tuning, as `tracing` info events.
    log: bool,
}

impl Tuner {
    /// A tuner over `path` (None: memory only).
    pub fn new(path: Option<PathBuf>, mode: TuneMode) -> Self {
        Self { path, mode, memory: HashMap::new(), warnings: Vec::new(), tuned: 0, log: false }
    }

    /// Prints each candidate's time to stderr while tuning (for comparing kernel variants).
    pub fn with_log(mut self, log: bool) -> Self {
        self.log = log;
        self
    }

    /// The cache file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The mode.
    pub fn mode(&self) -> TuneMode {
        self.mode
    }

    /// How many keys were tuned by timing candidates (not found in memory or the file).
    pub fn tuned_count(&self) -> usize {
        self.tuned
    }

    /// Warnings so far (corrupt or unwritable cache file); each was also emitted as a `tracing`
    /// warning.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.warnings.push(msg);
    }

    fn read_file(&mut self) -> CacheFile {
        let Some(path) = self.path.clone() else { return CacheFile::default() };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheFile::default(),
            Err(e) => {
                self.warn(format!("cannot read the autotune cache {}: {e}; tuning again", path.display()));
                return CacheFile::default();
            }
        };
        match serde_json::from_str::<CacheFile>(&text) {
            Ok(f) if f.version == FILE_VERSION => f,
            Ok(f) => {
                self.warn(format!(
                    "autotune cache {} has version {} (expected {FILE_VERSION}); ignoring it",
                    path.display(),
                    f.version
                ));
                CacheFile::default()
            }
            Err(e) => {
                self.warn(format!("autotune cache {} is corrupt ({e}); ignoring it", path.display()));
                CacheFile::default()
            }
        }
    }

    fn persist(&mut self, key: &TuneKey, entry: Entry) {
        let Some(path) = self.path.clone() else { return };
        let mut file = self.read_file();
        file.version = FILE_VERSION;
        let current = format!("{:016x}", key.kernel_hash);
        // Entries of this device and operation tuned with another kernel source can never match
        // again. Other operations are kept whatever their source: the Hopper path tunes its keys
        // against its own source, and pruning by source alone would make the two families evict
        // each other's entries on every write, so a second process would tune again.
        file.entries.retain(|k, e| e.device != key.device || e.kernel_hash == current || key_op(k) != Some(&key.op));
        file.entries.insert(key.as_string(), entry);
        if let Err(e) = write_atomically(&path, &file) {
            self.warn(format!("cannot write the autotune cache {}: {e}", path.display()));
        }
    }

    /// The configuration for `key`: the default when tuning is off, else the one
    /// already chosen (this process, then the file), else the fastest candidate
    /// by `time` (milliseconds), which is then remembered and written to the file.
    /// Candidates whose timing fails are skipped; if all fail, the first error is returned.
    pub fn get_or_tune<E>(
        &mut self,
        key: &TuneKey,
        candidates: &[KernelConfig],
        default: KernelConfig,
        time: &mut dyn FnMut(&KernelConfig) -> Result<f64, E>,
    ) -> Result<(KernelConfig, Source), E> {
        if self.mode == TuneMode::Off || candidates.is_empty() {
            return Ok((default, Source::Default));
        }
        let k = key.as_string();
        if let Some(c) = self.memory.get(&k) {
            return Ok((*c, Source::Memory));
        }
        let file = self.read_file();
        if let Some(e) = file.entries.get(&k)
            && candidates.contains(&e.config)
        {
            self.memory.insert(k, e.config);
            return Ok((e.config, Source::File));
        }
        let mut best: Option<(KernelConfig, f64)> = None;
        let mut first_err = None;
        for c in candidates {
            let t = time(c);
            if self.log {
                match &t {
                    Ok(ms) => tracing::info!("autotune {} {} {} {c}: {ms:.4} ms", key.op, key.dtype, key.bucket),
                    Err(_) => tracing::info!("autotune {} {} {} {c}: failed", key.op, key.dtype, key.bucket),
                }
            }
            match t {
                Ok(ms) if ms.is_finite() => {
                    if best.is_none_or(|(_, b)| ms < b) {
                        best = Some((*c, ms));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        let Some((winner, ms)) = best else {
            return match first_err {
                Some(e) => Err(e),
                None => Ok((default, Source::Default)),
            };
        };
        self.memory.insert(k, winner);
        self.tuned += 1;
        let entry =
            Entry { config: winner, ms, device: key.device.clone(), kernel_hash: format!("{:016x}", key.kernel_hash) };
        self.persist(key, entry);
        Ok((winner, Source::Tuned))
    }
}

fn write_atomically(path: &Path, file: &CacheFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(file).map_err(std::io::Error::other)?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let res = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "__global__ void k() {}";

    fn cands() -> Vec<KernelConfig> {
        vec![KernelConfig::new(8, 128, 4), KernelConfig::new(32, 256, 4), KernelConfig::new(64, 128, 2)]
    }

    fn key(src: &str) -> TuneKey {
        TuneKey::new("Fake GPU", (9, 0), "forward", "f32", &shape_bucket(1000, 768), src, &cands())
    }

    const DEFAULT: KernelConfig = KernelConfig::new(1, 32, 1);

    /// Candidate 1 is the fastest; counts calls.
    fn fake_timer(calls: &mut usize) -> impl FnMut(&KernelConfig) -> Result<f64, String> + '_ {
        move |c| {
            *calls += 1;
            Ok(if c.rows == 32 { 1.0 } else { 2.0 + c.rows as f64 })
        }
    }

    #[test]
    fn first_use_times_every_candidate_and_keeps_the_fastest() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tuner::new(Some(dir.path().join("a.json")), TuneMode::On);
        let mut calls = 0;
        let (c, src) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!((c, src, calls), (cands()[1], Source::Tuned, 3));
        let mut calls = 0;
        let (c, src) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!((c, src, calls), (cands()[1], Source::Memory, 0));
    }

    #[test]
    fn a_second_process_with_the_same_key_does_no_tuning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("autotune.json");
        let mut calls = 0;
        Tuner::new(Some(path.clone()), TuneMode::On)
            .get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls))
            .unwrap();
        assert_eq!(calls, 3);
        // A fresh tuner reads only the file, as a new process would.
        let mut calls = 0;
        let mut t2 = Tuner::new(Some(path), TuneMode::On);
        let (c, src) = t2.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!((c, src, calls), (cands()[1], Source::File, 0));
        assert!(t2.warnings().is_empty());
    }

    #[test]
    fn changed_kernel_source_invalidates_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autotune.json");
        let mut calls = 0;
        Tuner::new(Some(path.clone()), TuneMode::On)
            .get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls))
            .unwrap();
        let new_src = "__global__ void k() { /* changed */ }";
        let mut calls = 0;
        let (_, src) = Tuner::new(Some(path.clone()), TuneMode::On)
            .get_or_tune(&key(new_src), &cands(), DEFAULT, &mut fake_timer(&mut calls))
            .unwrap();
        assert_eq!((src, calls), (Source::Tuned, 3));
        // The stale entry was pruned from the file.
        let text = std::fs::read_to_string(&path).unwrap();
        let f: CacheFile = serde_json::from_str(&text).unwrap();
        assert_eq!(f.entries.len(), 1);
        assert!(f.entries.contains_key(&key(new_src).as_string()));
    }

    #[test]
    fn a_changed_candidate_set_is_a_different_key() {
        let mut other = cands();
        other.push(KernelConfig::new(128, 64, 4));
        let a = key(SRC);
        let b = TuneKey::new("Fake GPU", (9, 0), "forward", "f32", &shape_bucket(1000, 768), SRC, &other);
        assert_ne!(a.as_string(), b.as_string());
        assert_eq!(a.kernel_hash, b.kernel_hash);
    }

    #[test]
    fn corrupt_cache_file_is_a_warning_and_gets_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autotune.json");
        std::fs::write(&path, "{ this is not json").unwrap();
        let mut t = Tuner::new(Some(path.clone()), TuneMode::On);
        let mut calls = 0;
        let (c, src) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!((c, src), (cands()[1], Source::Tuned));
        assert!(t.warnings().iter().any(|w| w.contains("corrupt")), "{:?}", t.warnings());
        let f: CacheFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(f.entries.len(), 1);
    }

    #[test]
    fn unreadable_or_unwritable_cache_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading and renaming over it both fail.
        let path = dir.path().join("autotune.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "x").unwrap();
        let mut t = Tuner::new(Some(path), TuneMode::On);
        let mut calls = 0;
        let (c, _) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!(c, cands()[1]);
        assert!(!t.warnings().is_empty());
    }

    #[test]
    fn off_mode_uses_the_default_and_times_nothing() {
        let mut t = Tuner::new(None, TuneMode::Off);
        let mut calls = 0;
        let (c, src) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        assert_eq!((c, src, calls), (DEFAULT, Source::Default, 0));
    }

    #[test]
    fn failing_candidates_are_skipped_and_all_failing_is_an_error() {
        let mut t = Tuner::new(None, TuneMode::On);
        let mut timer = |c: &KernelConfig| if c.rows == 64 { Ok(0.5) } else { Err(format!("bad {c}")) };
        let (c, _) = t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut timer).unwrap();
        assert_eq!(c.rows, 64);
        let mut t = Tuner::new(None, TuneMode::On);
        let mut fail = |c: &KernelConfig| -> Result<f64, String> { Err(format!("bad {c}")) };
        assert!(t.get_or_tune(&key(SRC), &cands(), DEFAULT, &mut fail).is_err());
    }

    #[test]
    fn concurrent_writers_never_corrupt_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autotune.json");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        let k = TuneKey::new(
                            "Fake GPU",
                            (9, 0),
                            "forward",
                            "f32",
                            &format!("writer{i}-round{round}"),
                            SRC,
                            &cands(),
                        );
                        let mut t = Tuner::new(Some(path.clone()), TuneMode::On);
                        let mut calls = 0;
                        t.get_or_tune(&k, &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
                        assert!(t.warnings().is_empty(), "{:?}", t.warnings());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let f: CacheFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!f.entries.is_empty());
        assert!(f.entries.values().all(|e| e.config == cands()[1]));
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn entries_without_unroll_read_as_the_default_unroll() {
        let c: KernelConfig = serde_json::from_str(r#"{"rows": 32, "threads": 256, "vec": 4}"#).unwrap();
        assert_eq!(c, KernelConfig::new(32, 256, 4));
        assert_eq!(c.unroll, DEFAULT_UNROLL);
        let c8 = KernelConfig { unroll: 8, ..c };
        assert_ne!(c8.to_string(), c.to_string(), "the unroll is part of the candidate-set hash");
    }

    /// Two kernel sources (the portable and the Hopper family) share one file: writing a key of
    /// one never drops the other's entries; re-tuning an operation with a new source drops that
    /// operation's stale entries only.
    #[test]
    fn entries_of_other_sources_survive_unless_their_operation_is_retuned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("autotune.json");
        let k =
            |op: &str, src: &str| TuneKey::new("Fake GPU", (9, 0), op, "f32", &shape_bucket(1000, 768), src, &cands());
        let (fwd, hop, fwd_new) = (k("forward", SRC), k("hopper-forward", "hopper src"), k("forward", "changed"));
        let mut calls = 0;
        let mut t = Tuner::new(Some(path.clone()), TuneMode::On);
        for key in [&fwd, &hop] {
            t.get_or_tune(key, &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        }
        let mut t2 = Tuner::new(Some(path.clone()), TuneMode::On);
        for key in [&fwd, &hop] {
            assert_eq!(t2.get_or_tune(key, &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap().1, Source::File);
        }
        let mut t3 = Tuner::new(Some(path.clone()), TuneMode::On);
        t3.get_or_tune(&fwd_new, &cands(), DEFAULT, &mut fake_timer(&mut calls)).unwrap();
        let file: CacheFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut keys: Vec<_> = file.entries.keys().cloned().collect();
        keys.sort();
        let mut want = vec![hop.as_string(), fwd_new.as_string()];
        want.sort();
        assert_eq!(keys, want, "the stale forward entry goes, the Hopper one stays");
        assert_eq!(key_op(&hop.as_string()), Some("hopper-forward"));
        assert_eq!(key_op("A|B GPU|sm90|forward|f32|b1-h1|00"), Some("forward"));
    }

    #[test]
    fn shape_buckets_round_up_to_powers_of_two() {
        assert_eq!(shape_bucket(16384, 8192), "b16384-h8192");
        assert_eq!(shape_bucket(1000, 768), "b1024-h1024");
        assert_eq!(shape_bucket(0, 1), "b1-h1");
    }
}
