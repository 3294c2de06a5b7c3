//! wgpu backend benchmark: B = 16384, H = 8192, S = 128, f32 and
//! f16, seed mixes `dormant` and `mixed`; forward, backward, and
//! `copy_buffer_to_buffer` of the same bytes, all timed on the device with
//! timestamp queries (`Backend::time_ms`; wall clock if the adapter has none).
//!
//! ```text
//! cargo bench -p kasmina-benches --bench wgpu                         # adapter 0 (Vulkan first)
//! KASMINA_BENCH_QUICK=1 cargo bench -p kasmina-benches --bench wgpu   # B = 256, H = 1024, S = 16 (lavapipe)
//! KASMINA_WGPU_ADAPTER=1 ...                                          # another adapter
//! KASMINA_BENCH_TABLE_ONLY=1 ...                                      # only the ratio table
//! ```
//! Criterion reports device time and GB/s per op (forward: X read + Y written;
//! backward: X, G read + dX written; copy: the same bytes read + written).
//! Each criterion sample times `iters` back-to-back calls between two
//! timestamps. After the criterion groups, `run_bench` prints the ratio table
//! (median of 15 calls each, copy measured in the same run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use kasmina_benches::{BenchSpec, SeedMix, WARMUP_SECONDS, bench_state, format_table, random_input, run_bench};
use kasmina_core::{Backend, DType, LayerConfig, StateChange};
use kasmina_wgpu::WgpuBackend;

fn sizes() -> (usize, usize, usize) {
    if std::env::var("KASMINA_BENCH_QUICK").is_ok_and(|v| v == "1") { (256, 1024, 16) } else { (16384, 8192, 128) }
}

fn backend() -> Option<WgpuBackend> {
    let index = std::env::var("KASMINA_WGPU_ADAPTER").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    match WgpuBackend::new(index) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("wgpu bench skipped: {e}");
            None
        }
    }
}

/// Device milliseconds of `iters` calls as a criterion duration.
fn device_time(be: &WgpuBackend, iters: u64, f: &mut dyn FnMut() -> kasmina_core::Result<()>) -> Duration {
    let ms = be
        .time_ms(&mut || {
            for _ in 0..iters {
                f()?;
            }
            Ok(())
        })
        .expect("timed run");
    Duration::from_secs_f64(ms / 1e3)
}

fn bench_wgpu(c: &mut Criterion, be: &WgpuBackend) {
    let (b, h, s) = sizes();
    for dtype in [DType::F32, DType::F16] {
        let n = b * h;
        let elem = dtype.size_bytes() as u64;
        let mut x = be.alloc(b, h, dtype).unwrap();
        be.write(&mut x, random_input(dtype, n, 2).view()).unwrap();
        let mut g = be.alloc(b, h, dtype).unwrap();
        be.write(&mut g, random_input(dtype, n, 3).view()).unwrap();
        let mut y = be.alloc(b, h, dtype).unwrap();

        let mut group = c.benchmark_group(format!("wgpu/{dtype}/B{b}xH{h}xS{s}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(2 * n as u64 * elem));
        group.bench_function("copy (fwd bytes)", |bch| {
            bch.iter_custom(|iters| device_time(be, iters, &mut || be.copy(black_box(&x), &mut y)))
        });
        for mix in [SeedMix::Dormant, SeedMix::Mixed] {
            let state = bench_state(LayerConfig::new(h, s).unwrap(), mix, 1).unwrap();
            let mut layer = be.create_layer(&state).unwrap();
            be.upload(&mut layer, &state, StateChange::All).unwrap();
            group.throughput(Throughput::Bytes(2 * n as u64 * elem));
            group.bench_function(format!("forward/{}", mix.name()), |bch| {
                bch.iter_custom(|iters| device_time(be, iters, &mut || be.forward(&mut layer, black_box(&x), &mut y)))
            });
            group.throughput(Throughput::Bytes(3 * n as u64 * elem));
            group.bench_function(format!("backward/{}", mix.name()), |bch| {
                bch.iter_custom(|iters| {
                    device_time(be, iters, &mut || be.backward(&mut layer, black_box(&x), black_box(&g), &mut y))
                })
            });
        }
        group.finish();
    }
}

fn ratio_table(be: &WgpuBackend) {
    let (b, h, s) = sizes();
    let mut records = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        for mix in [SeedMix::Dormant, SeedMix::Mixed] {
            let spec = BenchSpec { b, h, s, dtype, mix, reps: 15, warmup: 3, warmup_s: WARMUP_SECONDS };
            records.extend(run_bench(be, &spec).expect("bench"));
        }
    }
    println!("\n{}", format_table(&records));
}

fn main() {
    let Some(be) = backend() else { return };
    eprintln!("device: {:?} (timestamps: {}, subgroups: {})", be.info(), be.has_timestamps(), be.uses_subgroups());
    if std::env::var("KASMINA_BENCH_TABLE_ONLY").is_err() {
        let mut c = Criterion::default().configure_from_args();
        bench_wgpu(&mut c, &be);
        c.final_summary();
    }
    ratio_table(&be);
}
