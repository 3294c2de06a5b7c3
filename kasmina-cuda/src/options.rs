//! [`CudaOptions`]: every user-facing knob of the CUDA backend, and the one place that reads
//! them from the environment ([`CudaOptions::from_env`]).

use crate::autotune::TuneMode;
use crate::cache::CacheLocation;
use crate::error::{CudaError, CudaResult};
use crate::hopper::CudaPath;

/// How a [`crate::CudaBackend`] compiles, picks and launches its kernels.
///
/// [`CudaOptions::default`] is what a user gets without asking: Auto family choice, autotuning
/// with its cache file, the kernel cache in the user's cache folder, CUDA graphs for small calls.
/// The library reads no environment variable except in [`CudaOptions::from_env`], which the
/// `kasmina` command and the Python package call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CudaOptions {
    /// Which kernel family runs ([`CudaPath::Auto`] by default: the faster per key, timed).
    pub path: CudaPath,
    /// Whether launch configurations are tuned by timing ([`TuneMode::On`], the default) or
    /// taken from the built-in defaults.
    pub autotune: TuneMode,
    /// Where the tuned configurations are kept.
    pub autotune_cache: CacheLocation,
    /// Report every candidate's time while tuning (`tracing` info events).
    pub autotune_log: bool,
    /// Where compiled kernel modules are kept (see [`crate::cache`]).
    pub kernel_cache: CacheLocation,
    /// Whether small calls on the backend's own stream replay CUDA graphs (the default).
    pub graphs: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            path: CudaPath::DEFAULT,
            autotune: TuneMode::On,
            autotune_cache: CacheLocation::Default,
            autotune_log: false,
            kernel_cache: CacheLocation::Default,
            graphs: true,
        }
    }
}

/// The variables [`CudaOptions::from_env`] reads, with what each takes.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("KASMINA_CUDA_PATH", "kernel family: auto (default), portable or hopper"),
    ("KASMINA_AUTOTUNE", "on (default) or off: tune launch configurations by timing, or take the built-in ones"),
    (
        "KASMINA_AUTOTUNE_CACHE",
        "the autotuner's JSON file, or off (memory only); default: <cache dir>/kasmina/autotune.json",
    ),
    ("KASMINA_AUTOTUNE_LOG", "on or off (default): report each candidate's time while tuning"),
    ("KASMINA_CUDA_CACHE", "folder of compiled kernels, or off; default: <cache dir>/kasmina/cuda"),
    ("KASMINA_CUDA_GRAPHS", "on (default) or off: replay CUDA graphs for small calls"),
];

impl CudaOptions {
    /// The options the environment asks for: the defaults, changed by each variable of
    /// [`ENV_VARS`] that is set and not empty. A value that is not one of the variable's
    /// choices is an error naming the variable and its choices (never silently the default).
    pub fn from_env() -> kasmina_core::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`CudaOptions::from_env`] over any source of variables (tests use a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> kasmina_core::Result<Self> {
        Ok(Self::parse_vars(get)?)
    }

    fn parse_vars(get: impl Fn(&str) -> Option<String>) -> CudaResult<Self> {
        let mut o = Self::default();
        let var = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let bad = |name: &str, value: &str| {
            let choices = ENV_VARS.iter().find(|(n, _)| *n == name).map_or("", |(_, c)| *c);
            CudaError::Options(format!("{name}={value:?} is not valid ({choices})"))
        };
        let switch = |name: &str| -> CudaResult<Option<bool>> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "on" | "1" | "true" | "yes" => Ok(Some(true)),
                    "off" | "0" | "false" | "no" => Ok(Some(false)),
                    _ => Err(bad(name, &v)),
                },
            }
        };
        if let Some(v) = var("KASMINA_CUDA_PATH") {
            o.path = CudaPath::parse(&v).ok_or_else(|| bad("KASMINA_CUDA_PATH", &v))?;
        }
        if let Some(on) = switch("KASMINA_AUTOTUNE")? {
            o.autotune = if on { TuneMode::On } else { TuneMode::Off };
        }
        if let Some(v) = var("KASMINA_AUTOTUNE_CACHE") {
            o.autotune_cache = CacheLocation::parse(&v);
        }
        if let Some(on) = switch("KASMINA_AUTOTUNE_LOG")? {
            o.autotune_log = on;
        }
        if let Some(v) = var("KASMINA_CUDA_CACHE") {
            o.kernel_cache = CacheLocation::parse(&v);
        }
        if let Some(on) = switch("KASMINA_CUDA_GRAPHS")? {
            o.graphs = on;
        }
        Ok(o)
    }

    /// These options with kernel family `path`.
    pub fn with_path(mut self, path: CudaPath) -> Self {
        self.path = path;
        self
    }

    /// These options with autotune mode `mode`.
    pub fn with_autotune(mut self, mode: TuneMode) -> Self {
        self.autotune = mode;
        self
    }

    /// These options with the autotuner's winners kept at `cache`.
    pub fn with_autotune_cache(mut self, cache: CacheLocation) -> Self {
        self.autotune_cache = cache;
        self
    }

    /// These options with compiled kernels kept at `cache`.
    pub fn with_kernel_cache(mut self, cache: CacheLocation) -> Self {
        self.kernel_cache = cache;
        self
    }

    /// These options with CUDA graphs for small calls on (`true`) or off.
    pub fn with_graphs(mut self, on: bool) -> Self {
        self.graphs = on;
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> kasmina_core::Result<CudaOptions> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CudaOptions::from_lookup(|n| map.get(n).cloned())
    }

    #[test]
    fn nothing_set_is_the_default() {
        assert_eq!(parse(&[]).expect("defaults"), CudaOptions::default());
        assert_eq!(parse(&[("KASMINA_CUDA_PATH", " ")]).expect("blank"), CudaOptions::default());
    }

    #[test]
    fn every_variable_is_read() {
        let o = parse(&[
            ("KASMINA_CUDA_PATH", "Hopper"),
            ("KASMINA_AUTOTUNE", "off"),
            ("KASMINA_AUTOTUNE_CACHE", "/tmp/t.json"),
            ("KASMINA_AUTOTUNE_LOG", "1"),
            ("KASMINA_CUDA_CACHE", "/tmp/k"),
            ("KASMINA_CUDA_GRAPHS", "no"),
        ])
        .expect("valid");
        assert_eq!(o.path, CudaPath::Hopper);
        assert_eq!(o.autotune, TuneMode::Off);
        assert_eq!(o.autotune_cache, CacheLocation::Path("/tmp/t.json".into()));
        assert!(o.autotune_log);
        assert_eq!(o.kernel_cache, CacheLocation::Path("/tmp/k".into()));
        assert!(!o.graphs);
        let off = parse(&[("KASMINA_AUTOTUNE_CACHE", "off"), ("KASMINA_CUDA_CACHE", "OFF")]).expect("valid");
        assert_eq!(off.autotune_cache, CacheLocation::Off);
        assert_eq!(off.kernel_cache, CacheLocation::Off);
        assert_eq!(off.autotune_cache.autotune_file(), None);
    }

    #[test]
    fn bad_values_name_the_variable_and_its_choices() {
        for (name, value) in
            [("KASMINA_CUDA_PATH", "fast"), ("KASMINA_AUTOTUNE", "maybe"), ("KASMINA_CUDA_GRAPHS", "2")]
        {
            let e = parse(&[(name, value)]).expect_err("invalid").to_string();
            assert!(e.contains(name) && e.contains(value), "{e}");
            assert!(e.contains("on") || e.contains("portable"), "{e}");
        }
    }

    #[test]
    fn every_documented_variable_exists_once() {
        let mut names: Vec<&str> = ENV_VARS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENV_VARS.len());
    }
}
