//! Times forward and backward of one shape on adapter 0 (device time), for
//! tuning: `cargo run --release -p kasmina-wgpu --example timing -- B H S dtype mix [tiles]`.

use kasmina_core::backend::HostTensorData;
use kasmina_core::{Backend, BlueprintType, DType, LayerConfig, LayerState, LifecycleState};
use kasmina_wgpu::{WgpuBackend, WgpuOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let b: usize = arg(1, "256").parse()?;
    let h: usize = arg(2, "1024").parse()?;
    let s: usize = arg(3, "16").parse()?;
    let dtype: DType = arg(4, "f32").parse()?;
    let mixed = arg(5, "dormant") == "mixed";
    let tiles: Option<usize> = a.get(6).map(|v| v.parse()).transpose()?;
    let be = WgpuBackend::with_options(0, WgpuOptions { target_tiles: tiles, ..Default::default() })?;
    let mut st = LayerState::new(LayerConfig::new(h, s)?)?;
    if mixed {
        for i in (0..s).step_by(4) {
            st.seeds.lifecycle[i] = LifecycleState::Grafting;
            st.seeds.blueprint_type[i] = BlueprintType::ALL[(i / 4) % 4];
            st.seeds.alpha[i] = 0.5;
        }
    }
    let mut layer = be.create_layer(&st)?;
    let vals: Vec<f32> = (0..b * h).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    let x_host = HostTensorData::from_f32(dtype, &vals);
    let mut x = be.alloc(b, h, dtype)?;
    be.write(&mut x, x_host.view())?;
    let mut y = be.alloc(b, h, dtype)?;
    let mut dx = be.alloc(b, h, dtype)?;
    be.forward(&mut layer, &x, &mut y)?;
    be.backward(&mut layer, &x, &x, &mut dx)?;
    let reps = 5;
    let f = be.time_ms(&mut || {
        for _ in 0..reps {
            be.forward(&mut layer, &x, &mut y)?;
        }
        Ok(())
    })? / reps as f64;
    let bw = be.time_ms(&mut || {
        for _ in 0..reps {
            be.backward(&mut layer, &x, &x, &mut dx)?;
        }
        Ok(())
    })? / reps as f64;
    let c = be.time_ms(&mut || {
        for _ in 0..reps {
            be.copy(&x, &mut y)?;
        }
        Ok(())
    })? / reps as f64;
    let bytes = (b * h * dtype.size_bytes()) as f64;
    println!(
        "{} B={b} H={h} S={s} {dtype} mixed={mixed}: forward {f:.3} ms ({:.1} GB/s), backward {bw:.3} ms ({:.1} GB/s), copy {c:.3} ms ({:.1} GB/s)",
        be.adapter().name,
        2.0 * bytes / f / 1e6,
        3.0 * bytes / bw / 1e6,
        2.0 * bytes / c / 1e6
    );
    Ok(())
}
