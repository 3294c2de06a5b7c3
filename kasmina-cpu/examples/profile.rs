//! Quick A/B timing for tuning (min over interleaved rounds, robust to a busy machine):
//! `cargo run --release -p kasmina-cpu --example profile -- ROUNDS [OP]` (env B, THREADS, DTYPE=f32|bf16).

use kasmina_core::{Backend, BlueprintType, DType, HostTensorData, LayerConfig, LayerState, LifecycleState};
use kasmina_cpu::CpuBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(10);
    let only: Option<String> = std::env::args().nth(2);
    let b: usize = std::env::var("B").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    let (h, s) = (4096, 64);
    let dormant = LayerState::new(LayerConfig::new(h, s)?)?;
    let mut mixed = dormant.clone();
    for i in 0..s {
        if i % 4 == 0 || i % 19 == 1 {
            mixed.seeds.lifecycle[i] = if i % 19 == 1 { LifecycleState::Fossilized } else { LifecycleState::Grafting };
            mixed.seeds.blueprint_type[i] = BlueprintType::ALL[(i / 4) % 4];
            mixed.seeds.alpha[i] = if i % 19 == 1 { 1.0 } else { 0.5 };
            for (j, w) in mixed.params.seed_weights_mut(i).iter_mut().enumerate() {
                *w = (j as f32 * 0.37).sin() * 0.5;
            }
        }
    }
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let be = CpuBackend::with_threads(threads)?;
    let xs: Vec<f32> = (0..b * h).map(|i| ((i * 7919 % 1000) as f32) * 0.004 - 2.0).collect();
    let mut names = Vec::new();
    let mut best = Vec::new();
    let only_dtype = std::env::var("DTYPE").ok();
    for dtype in [DType::F32, DType::BF16] {
        if only_dtype.as_deref().is_some_and(|d| d != dtype.to_string()) {
            continue;
        }
        let data = HostTensorData::from_f32(dtype, &xs);
        let mut x = be.alloc(b, h, dtype)?;
        be.write(&mut x, data.view())?;
        let gs: Vec<f32> = xs.iter().rev().copied().collect();
        let mut g = be.alloc(b, h, dtype)?;
        be.write(&mut g, HostTensorData::from_f32(dtype, &gs).view())?;
        let mut y = be.alloc(b, h, dtype)?;
        let mut dx = be.alloc(b, h, dtype)?;
        let mut ld = be.create_layer(&dormant)?;
        let mut lm = be.create_layer(&mixed)?;
        let ops = ["copy", "fwd-dormant", "fwd-mixed", "bwd-dormant", "bwd-mixed"];
        let base = best.len();
        for op in ops {
            names.push(format!("{dtype} {op}"));
            best.push(f64::INFINITY);
        }
        for _ in 0..rounds {
            for (k, op) in ops.iter().enumerate() {
                if let Some(o) = &only
                    && !op.contains(o.as_str())
                {
                    continue;
                }
                let t = std::time::Instant::now();
                match *op {
                    "copy" => be.copy(&x, &mut y)?,
                    "fwd-dormant" => be.forward(&mut ld, &x, &mut y)?,
                    "fwd-mixed" => be.forward(&mut lm, &x, &mut y)?,
                    "bwd-dormant" => be.backward(&mut ld, &x, &g, &mut dx)?,
                    _ => be.backward(&mut lm, &x, &g, &mut dx)?,
                }
                let ms = t.elapsed().as_secs_f64() * 1e3;
                best[base + k] = f64::min(best[base + k], ms);
            }
        }
    }
    let per_elem = |n: &str| if n.starts_with("f32") { 4.0 } else { 2.0 };
    for (n, ms) in names.iter().zip(&best) {
        let bytes = if n.contains("bwd") { 3.0 } else { 2.0 } * (b * h) as f64 * per_elem(n);
        println!("{n:<18} {ms:8.3} ms  {:6.1} GB/s", bytes / ms / 1e6);
    }
    Ok(())
}
