//! CPU backend benchmark: B = 4096, H = 4096, S = 64, f32 and bf16,
//! seed mixes `dormant` and `mixed`; forward, backward, and the backend's own
//! multithreaded copy of the same bytes, timed in the same run.
//!
//! ```text
//! cargo bench -p kasmina-benches --bench cpu
//! KASMINA_BENCH_THREADS=1 cargo bench -p kasmina-benches --bench cpu   # one thread
//! ```
//! Criterion reports time and GB/s per op (forward: X read + Y written;
//! backward: X, G read + dX written; copy: the same bytes read + written).
//! After the criterion groups, the harness's `run_bench` prints the ratio
//! table (median of 15 calls each, copy measured in the same run).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use kasmina_benches::{BenchSpec, SeedMix, WARMUP_SECONDS, bench_state, format_table, random_input, run_bench};
use kasmina_core::{Backend, DType, LayerConfig, StateChange};
use kasmina_cpu::CpuBackend;

const B: usize = 4096;
const H: usize = 4096;
const S: usize = 64;

fn backend() -> CpuBackend {
    let threads = std::env::var("KASMINA_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    CpuBackend::with_threads(threads).expect("CPU backend")
}

fn bench_cpu(c: &mut Criterion) {
    let be = backend();
    eprintln!("device: {:?}", be.info());
    for dtype in [DType::F32, DType::BF16] {
        let n = B * H;
        let elem = dtype.size_bytes() as u64;
        let mut x = be.alloc(B, H, dtype).unwrap();
        be.write(&mut x, random_input(dtype, n, 2).view()).unwrap();
        let mut g = be.alloc(B, H, dtype).unwrap();
        be.write(&mut g, random_input(dtype, n, 3).view()).unwrap();
        let mut y = be.alloc(B, H, dtype).unwrap();

        let mut group = c.benchmark_group(format!("cpu/{dtype}"));
        group.sample_size(20);
        group.throughput(Throughput::Bytes(2 * n as u64 * elem));
        group.bench_function("copy (fwd bytes)", |bch| bch.iter(|| be.copy(black_box(&x), &mut y).unwrap()));
        for mix in [SeedMix::Dormant, SeedMix::Mixed] {
            let state = bench_state(LayerConfig::new(H, S).unwrap(), mix, 1).unwrap();
            let mut layer = be.create_layer(&state).unwrap();
            be.upload(&mut layer, &state, StateChange::All).unwrap();
            group.throughput(Throughput::Bytes(2 * n as u64 * elem));
            group.bench_function(format!("forward/{}", mix.name()), |bch| {
                bch.iter(|| be.forward(&mut layer, black_box(&x), &mut y).unwrap())
            });
            group.throughput(Throughput::Bytes(3 * n as u64 * elem));
            group.bench_function(format!("backward/{}", mix.name()), |bch| {
                bch.iter(|| be.backward(&mut layer, black_box(&x), black_box(&g), &mut y).unwrap())
            });
        }
        group.finish();
    }
}

fn ratio_table() {
    let be = backend();
    let mut records = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        for mix in [SeedMix::Dormant, SeedMix::Mixed] {
            let spec = BenchSpec { b: B, h: H, s: S, dtype, mix, reps: 15, warmup: 3, warmup_s: WARMUP_SECONDS };
            records.extend(run_bench(&be, &spec).expect("bench"));
        }
    }
    println!("\n{}", format_table(&records));
}

fn main() {
    let only_table = std::env::var("KASMINA_BENCH_TABLE_ONLY").is_ok();
    if !only_table {
        let mut c = Criterion::default().configure_from_args();
        bench_cpu(&mut c);
        c.final_summary();
    }
    ratio_table();
}
