//! CUDA backend benchmark: B = 16384, H = 8192, S = 128 in f32 and
//! bf16 with seed mixes `dormant` and `mixed`, and the small-batch latency case
//! B = 32, H = 768, S = 16; each next to the device's own copy of the same bytes
//! (`cuMemcpyDtoD`), timed with CUDA events in the same run.
//!
//! ```text
//! cargo bench -p kasmina-benches --bench cuda
//! KASMINA_BENCH_TABLE_ONLY=1 cargo bench -p kasmina-benches --bench cuda   # ratio table only
//! ```
//! Without a GPU the bench prints why and exits 0. Criterion's time per
//! iteration is device time (CUDA events around `iters` calls), so GB/s are
//! the device's; the ratio table is the median of 30 calls per op.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use kasmina_benches::{BenchSpec, SeedMix, WARMUP_SECONDS, bench_state, format_table, random_input, run_bench};
use kasmina_core::{Backend, DType, LayerConfig, StateChange};
use kasmina_cuda::CudaBackend;

/// (B, H, S) of the throughput case and the latency case.
const SHAPES: [(usize, usize, usize); 2] = [(16384, 8192, 128), (32, 768, 16)];

/// Device time of `iters` calls of `f`, as criterion wants it.
fn device_time(be: &CudaBackend, iters: u64, f: &mut dyn FnMut() -> kasmina_core::Result<()>) -> Duration {
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

fn bench_cuda(be: &CudaBackend, c: &mut Criterion) {
    for (b, h, s) in SHAPES {
        for dtype in [DType::F32, DType::BF16] {
            let n = b * h;
            let elem = dtype.size_bytes() as u64;
            let mut x = be.alloc(b, h, dtype).expect("alloc");
            be.write(&mut x, random_input(dtype, n, 2).view()).expect("write");
            let mut g = be.alloc(b, h, dtype).expect("alloc");
            be.write(&mut g, random_input(dtype, n, 3).view()).expect("write");
            let mut y = be.alloc(b, h, dtype).expect("alloc");

            let mut group = c.benchmark_group(format!("cuda/b{b}-h{h}-s{s}/{dtype}"));
            group.sample_size(20);
            group.throughput(Throughput::Bytes(2 * n as u64 * elem));
            group.bench_function("copy (fwd bytes)", |bch| {
                bch.iter_custom(|iters| device_time(be, iters, &mut || be.copy(&x, &mut y)))
            });
            for mix in [SeedMix::Dormant, SeedMix::Mixed] {
                let state = bench_state(LayerConfig::new(h, s).expect("config"), mix, 1).expect("state");
                let mut layer = be.create_layer(&state).expect("layer");
                be.upload(&mut layer, &state, StateChange::All).expect("upload");
                group.throughput(Throughput::Bytes(2 * n as u64 * elem));
                group.bench_function(format!("forward/{}", mix.name()), |bch| {
                    bch.iter_custom(|iters| device_time(be, iters, &mut || be.forward(&mut layer, &x, &mut y)))
                });
                group.throughput(Throughput::Bytes(3 * n as u64 * elem));
                group.bench_function(format!("backward/{}", mix.name()), |bch| {
                    bch.iter_custom(|iters| device_time(be, iters, &mut || be.backward(&mut layer, &x, &g, &mut y)))
                });
            }
            group.finish();
        }
    }
}

fn ratio_table(be: &CudaBackend) {
    let mut records = Vec::new();
    for (b, h, s) in SHAPES {
        for dtype in [DType::F32, DType::BF16] {
            for mix in [SeedMix::Dormant, SeedMix::Mixed] {
                let spec = BenchSpec { b, h, s, dtype, mix, reps: 30, warmup: 5, warmup_s: WARMUP_SECONDS };
                records.extend(run_bench(be, &spec).expect("bench"));
            }
        }
    }
    println!("\n{}", format_table(&records));
}

fn main() {
    let be = match CudaBackend::new(0) {
        Ok(be) => be,
        Err(e) => {
            println!("skipped: the CUDA backend is unavailable: {e}");
            return;
        }
    };
    eprintln!("device: {:?}", be.info());
    if std::env::var("KASMINA_BENCH_TABLE_ONLY").is_err() {
        let mut c = Criterion::default().configure_from_args();
        bench_cuda(&be, &mut c);
        c.final_summary();
    }
    ratio_table(&be);
}
