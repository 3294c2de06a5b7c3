//! The benchmark harness every backend shares: the SPEC's seed mixes, random
//! inputs, and [`run_bench`], which times forward, backward and the device's own
//! copy of the same bytes in one run and reports GB/s and their ratio.
//!
//! Timing goes through [`Backend::time_ms`], so each backend uses its own clock
//! (wall clock on the CPU, CUDA events, wgpu timestamp queries). Each figure is
//! the median of `reps` timed calls after `warmup` untimed ones.
//!
//! [`init_diagnostics`] is the one stderr set-up of the libraries' `tracing` events that the
//! `kasmina` command and the Python package both install.
#![deny(missing_docs)]

use half::{bf16, f16};
use kasmina_core::{
    Backend, BlueprintType, DType, GraftingStrategy, HostTensorData, LayerConfig, LayerState, LifecycleState, Result,
    StateChange,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Shows the libraries' diagnostics (`tracing` events) on stderr: warnings (a damaged cache
/// entry, an unwritable cache folder) and the CUDA backend's progress (each first-use kernel
/// compile and its time, autotune timings when asked for). `KASMINA_LOG` (a `tracing` filter,
/// e.g. `warn` or `info`) overrides the default `warn,kasmina_cuda=info`. Colour codes only on a
/// terminal; a second call (another subscriber already set) changes nothing.
pub fn init_diagnostics() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KASMINA_LOG").unwrap_or_else(|_| EnvFilter::new("warn,kasmina_cuda=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

/// A seed population to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedMix {
    /// Every seed DORMANT: the layer is an identity plus telemetry.
    Dormant,
    /// 25% GRAFTING across the four blueprint types with alpha 0.5, 5% FOSSILIZED, the rest DORMANT.
    Mixed,
}

impl SeedMix {
    /// `dormant` or `mixed`.
    pub fn name(self) -> &'static str {
        match self {
            SeedMix::Dormant => "dormant",
            SeedMix::Mixed => "mixed",
        }
    }
}

impl std::str::FromStr for SeedMix {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dormant" => Ok(SeedMix::Dormant),
            "mixed" => Ok(SeedMix::Mixed),
            _ => Err(format!("unknown seed mix '{s}' (dormant or mixed)")),
        }
    }
}

/// A layer state of `config` populated by `mix`; seeds and parameters are drawn
/// from a generator seeded with `seed` (the same `seed` gives the same state).
pub fn bench_state(config: LayerConfig, mix: SeedMix, seed: u64) -> Result<LayerState> {
    let mut st = LayerState::new(config)?;
    if mix == SeedMix::Dormant {
        return Ok(st);
    }
    let s = config.num_seeds;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids: Vec<usize> = (0..s).collect();
    ids.shuffle(&mut rng);
    let grafting = s / 4;
    let fossil = s * 5 / 100;
    for (k, &i) in ids.iter().take(grafting + fossil).enumerate() {
        let ty = BlueprintType::ALL[k % 4];
        st.seeds.lifecycle[i] = if k < grafting { LifecycleState::Grafting } else { LifecycleState::Fossilized };
        st.seeds.blueprint_id[i] = 1 + k as u16;
        st.seeds.blueprint_type[i] = ty;
        st.seeds.grafting_strategy[i] = GraftingStrategy::FixedRamp;
        st.seeds.alpha[i] = if k < grafting { 0.5 } else { 1.0 };
        for w in st.params.seed_weights_mut(i) {
            *w = rng.random_range(-0.5..0.5);
        }
        st.params.scales[i] = rng.random_range(0.5..1.5);
    }
    Ok(st)
}

/// `len` values uniform in [-2, 2) (never all zeros), rounded to `dtype`.
pub fn random_input(dtype: DType, len: usize, seed: u64) -> HostTensorData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match dtype {
        DType::F32 => HostTensorData::F32((0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()),
        DType::F16 => HostTensorData::F16((0..len).map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0))).collect()),
        DType::BF16 => HostTensorData::BF16((0..len).map(|_| bf16::from_f32(rng.random_range(-2.0f32..2.0))).collect()),
    }
}

/// One benchmark configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchSpec {
    /// Rows.
    pub b: usize,
    /// Hidden dim.
    pub h: usize,
    /// Seeds.
    pub s: usize,
    /// Activation dtype.
    pub dtype: DType,
    /// Seed mix.
    pub mix: SeedMix,
    /// Timed repetitions (the median is reported).
    pub reps: usize,
    /// Untimed warm-up calls before each timed series.
    pub warmup: usize,
    /// Minimum wall-clock seconds of back-to-back warm-up calls before each timed series (0 for
    /// smoke tests; [`WARMUP_SECONDS`] for measurements), so a GPU is at its working clock.
    pub warmup_s: f64,
}

/// One line of the report: an (op, shape, dtype, mix) on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRecord {
    /// `cpu`, `wgpu`, `cuda`.
    pub backend: String,
    /// The kernel family that ran, where a backend has several (e.g. `portable` or `hopper`
    /// on CUDA, `auto>hopper` for the autotuner's pick); empty otherwise.
    pub variant: String,
    /// The device's name.
    pub device: String,
    /// Rows.
    pub b: usize,
    /// Hidden dim.
    pub h: usize,
    /// Seeds.
    pub s: usize,
    /// Activation dtype.
    pub dtype: DType,
    /// Seed mix.
    pub mix: SeedMix,
    /// `forward` or `backward`.
    pub op: String,
    /// Median milliseconds per call, each call timed alone on the device's clock
    /// (CUDA events / timestamp queries around one call; wall clock on the CPU).
    pub median_ms: f64,
    /// Milliseconds per call when `stream_calls` calls are issued back to back and timed
    /// together on the device's clock (what a training loop sees; launch latency overlaps the
    /// previous call). Median of 5 such batches.
    pub stream_ms: f64,
    /// Calls per batch behind `stream_ms`.
    pub stream_calls: usize,
    /// Median host wall-clock milliseconds from issuing one call to `synchronize` returning
    /// (the latency of one isolated call, host overhead included).
    pub wall_ms: f64,
    /// Effective GB/s: forward counts X read + Y written, backward X and G read + dX written.
    pub gbps: f64,
    /// The device's own copy of the same number of bytes, in GB/s (read + written), same run:
    /// the faster of its copy engine and, where the backend has one, its kernel copy.
    pub copy_gbps: f64,
    /// Which copy `copy_gbps` is: `copy` (the copy engine, [`Backend::copy`]) or the backend's
    /// kernel copy ([`Backend::kernel_copy_name`], e.g. `shader` for wgpu).
    pub copy_via: String,
    /// `gbps / copy_gbps`.
    pub ratio: f64,
}

/// Per-call time of `f` on the device's clock over batches of back-to-back calls, the
/// batch size chosen so that a batch lasts about 2 ms (1 to 1000 calls); and the median
/// host wall-clock latency of one call followed by `synchronize`.
fn streamed<B: Backend>(
    backend: &B,
    spec: &BenchSpec,
    single_ms: f64,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<(f64, usize, f64)> {
    let calls = if single_ms > 0.0 { ((2.0 / single_ms) as usize).clamp(1, 1000) } else { 1000 };
    let mut batches = Vec::with_capacity(5);
    for _ in 0..5 {
        let ms = backend.time_ms(&mut || {
            for _ in 0..calls {
                f()?;
            }
            Ok(())
        })?;
        batches.push(ms / calls as f64);
    }
    let mut wall = Vec::with_capacity(spec.reps.max(1));
    backend.synchronize()?;
    for _ in 0..spec.reps.max(1) {
        let t = std::time::Instant::now();
        f()?;
        backend.synchronize()?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(batches), calls, median(wall)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The warm-up a measurement should use ([`BenchSpec::warmup_s`]): GPUs drop their clock within
/// milliseconds of going idle (an H100 fell from 1980 to 345 MHz while the host generated the
/// next series' data), so every series, the copy yardstick included, starts from a busy device.
pub const WARMUP_SECONDS: f64 = 0.3;

/// Runs `f` back to back for at least `spec.warmup` calls and `spec.warmup_s` seconds, then
/// waits for the device.
fn warm_up<B: Backend>(backend: &B, spec: &BenchSpec, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let start = std::time::Instant::now();
    let mut calls = 0usize;
    while calls < spec.warmup || start.elapsed().as_secs_f64() < spec.warmup_s {
        f()?;
        calls += 1;
        if calls.is_multiple_of(64) {
            // Keep the queue short so the elapsed time tracks the device's work.
            backend.synchronize()?;
        }
    }
    backend.synchronize()
}

fn timed<B: Backend>(backend: &B, spec: &BenchSpec, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    warm_up(backend, spec, f)?;
    let mut t = Vec::with_capacity(spec.reps);
    for _ in 0..spec.reps.max(1) {
        t.push(backend.time_ms(f)?);
    }
    Ok(median(t))
}

/// Times the device copy of `rows x h` elements: GB/s counting bytes read + written, of the
/// faster of the copy engine and (where the backend has one) its kernel copy, and which it was.
fn copy_gbps<B: Backend>(backend: &B, spec: &BenchSpec, rows: usize) -> Result<(f64, String)> {
    let src_data = random_input(spec.dtype, rows * spec.h, 7);
    let mut src = backend.alloc(rows, spec.h, spec.dtype)?;
    backend.write(&mut src, src_data.view())?;
    drop(src_data);
    let mut dst = backend.alloc(rows, spec.h, spec.dtype)?;
    let bytes = 2.0 * (rows * spec.h * spec.dtype.size_bytes()) as f64;
    let mut best = (bytes / (timed(backend, spec, &mut || backend.copy(&src, &mut dst))? * 1e-3) / 1e9, "copy");
    if let Some(name) = backend.kernel_copy_name() {
        let ms = timed(backend, spec, &mut || backend.kernel_copy(&src, &mut dst))?;
        let gbps = bytes / (ms * 1e-3) / 1e9;
        if gbps > best.0 {
            best = (gbps, name);
        }
    }
    Ok((best.0, best.1.to_string()))
}

/// Runs forward and backward of `spec` on `backend` and, in the same run, the
/// device's copy of the same bytes. Returns one record per op.
pub fn run_bench<B: Backend>(backend: &B, spec: &BenchSpec) -> Result<Vec<BenchRecord>> {
    let info = backend.info();
    let config = LayerConfig::new(spec.h, spec.s)?;
    let state = bench_state(config, spec.mix, 1)?;
    let mut layer = backend.create_layer(&state)?;
    backend.upload(&mut layer, &state, StateChange::All)?;
    let n = spec.b * spec.h;
    let elem = spec.dtype.size_bytes() as f64;

    let mut x = backend.alloc(spec.b, spec.h, spec.dtype)?;
    backend.write(&mut x, random_input(spec.dtype, n, 2).view())?;
    let mut y = backend.alloc(spec.b, spec.h, spec.dtype)?;
    let mut fwd = || backend.forward(&mut layer, &x, &mut y);
    let fwd_ms = timed(backend, spec, &mut fwd)?;
    let fwd_stream = streamed(backend, spec, fwd_ms, &mut fwd)?;
    drop(y);

    let mut g = backend.alloc(spec.b, spec.h, spec.dtype)?;
    backend.write(&mut g, random_input(spec.dtype, n, 3).view())?;
    let mut dx = backend.alloc(spec.b, spec.h, spec.dtype)?;
    let mut bwd = || backend.backward(&mut layer, &x, &g, &mut dx);
    let bwd_ms = timed(backend, spec, &mut bwd)?;
    let bwd_stream = streamed(backend, spec, bwd_ms, &mut bwd)?;
    drop((x, g, dx, layer));

    // Copies moving the same bytes: forward moves 2n elements (n in, n out), backward 3n,
    // so its yardstick copies 1.5x the rows.
    let fwd_copy = copy_gbps(backend, spec, spec.b)?;
    let bwd_copy = copy_gbps(backend, spec, spec.b + spec.b.div_ceil(2))?;

    let record = |op: &str,
                  ms: f64,
                  (stream_ms, stream_calls, wall_ms): (f64, usize, f64),
                  bytes: f64,
                  (copy, via): &(f64, String)| {
        let gbps = bytes / (ms * 1e-3) / 1e9;
        BenchRecord {
            backend: info.backend.to_string(),
            variant: String::new(),
            device: info.name.clone(),
            b: spec.b,
            h: spec.h,
            s: spec.s,
            dtype: spec.dtype,
            mix: spec.mix,
            op: op.to_string(),
            median_ms: ms,
            stream_ms,
            stream_calls,
            wall_ms,
            gbps,
            copy_gbps: *copy,
            copy_via: via.clone(),
            ratio: gbps / copy,
        }
    };
    Ok(vec![
        record("forward", fwd_ms, fwd_stream, 2.0 * n as f64 * elem, &fwd_copy),
        record("backward", bwd_ms, bwd_stream, 3.0 * n as f64 * elem, &bwd_copy),
    ])
}

/// The records as a table for people (the same content as the JSON). `median_ms` times one
/// call alone; `stream_us` is the per-call time of back-to-back calls and `wall_us` the host
/// latency of one call to `synchronize` (see [`BenchRecord`]).
pub fn format_table(records: &[BenchRecord]) -> String {
    let mut out = format!(
        "{:<6} {:<14} {:<28} {:>6} {:>6} {:>5} {:<5} {:<8} {:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:<7} {:>6}\n",
        "backend",
        "variant",
        "device",
        "B",
        "H",
        "S",
        "dtype",
        "mix",
        "op",
        "median_ms",
        "stream_us",
        "wall_us",
        "GB/s",
        "copy GB/s",
        "copy by",
        "ratio"
    );
    for r in records {
        let dev: String = r.device.chars().take(28).collect();
        out.push_str(&format!(
            "{:<6} {:<14} {:<28} {:>6} {:>6} {:>5} {:<5} {:<8} {:<8} {:>10.4} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:<7} {:>6.3}\n",
            r.backend,
            if r.variant.is_empty() { "-" } else { r.variant.as_str() },
            dev,
            r.b,
            r.h,
            r.s,
            r.dtype.name(),
            r.mix.name(),
            r.op,
            r.median_ms,
            r.stream_ms * 1e3,
            r.wall_ms * 1e3,
            r.gbps,
            r.copy_gbps,
            r.copy_via,
            r.ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_state_follows_the_issue_proportions() {
        let st = bench_state(LayerConfig::new(4096, 64).unwrap(), SeedMix::Mixed, 1).unwrap();
        let count = |l| st.seeds.lifecycle.iter().filter(|x| **x == l).count();
        assert_eq!(count(LifecycleState::Grafting), 16);
        assert_eq!(count(LifecycleState::Fossilized), 3);
        assert_eq!(count(LifecycleState::Dormant), 45);
        for ty in BlueprintType::ALL {
            let n = (0..64)
                .filter(|i| st.seeds.lifecycle[*i] == LifecycleState::Grafting && st.seeds.blueprint_type[*i] == *ty)
                .count();
            assert_eq!(n, 4, "{ty}");
        }
        assert!(
            st.seeds.alpha.iter().zip(&st.seeds.lifecycle).all(|(a, l)| *l != LifecycleState::Grafting || *a == 0.5)
        );
        st.validate().unwrap();
        assert_eq!(st, bench_state(LayerConfig::new(4096, 64).unwrap(), SeedMix::Mixed, 1).unwrap());
    }

    #[test]
    fn dormant_state_is_all_dormant() {
        let st = bench_state(LayerConfig::new(64, 8).unwrap(), SeedMix::Dormant, 1).unwrap();
        assert!(st.seeds.lifecycle.iter().all(|l| *l == LifecycleState::Dormant));
    }

    #[test]
    fn random_input_is_seeded_and_not_zero() {
        let a = random_input(DType::BF16, 1000, 5).to_f32();
        assert_eq!(a, random_input(DType::BF16, 1000, 5).to_f32());
        assert!(a.iter().any(|v| *v != 0.0));
        assert!(a.iter().all(|v| (-2.0..=2.0).contains(v)));
    }
}
