//! Device timing report for tuning (B = 16384, H = 8192, S = 128 by default). Runs only with
//! `KASMINA_WGPU_PERF=1` (CI and lavapipe skip it); `KASMINA_WGPU_PERF_SHAPE=B,H,S`
//! picks another shape. For f32, f16 and bf16, dormant and mixed seeds, it prints
//! forward, backward and `copy_buffer_to_buffer` times (median of 15 after
//! warm-up; copy of the forward's bytes, X read + Y written) three ways:
//! timestamps in the timed command buffers (the default), timestamps in
//! submissions of their own (for comparison), and five calls back to back
//! (the per-call average). f16 is also run with the integer-only decoder, and
//! f32/f16 with the identity / blueprint kernel split, with 8192 (seed, row-block)
//! tiles per call (and 1024) instead of 2048, and with word-wise forward loads instead of
//! 16-byte groups. Each layer first runs forwards for about 300 ms, so the card
//! leaves its idle clocks before anything is timed.

use kasmina_conformance::toolkit::{Gen, median_ms, opted_in};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{Backend, BlueprintType, DType, LayerConfig, LayerState, LifecycleState};
use kasmina_wgpu::{WgpuBackend, WgpuOptions};

/// `n` values uniform in [-2, 2).
fn values(n: usize, seed: u64) -> Vec<f32> {
    Gen::new(seed).f32s(n, -2.0, 2.0)
}

/// 25% GRAFTING over the four blueprint types (alpha 0.5), 5% FOSSILIZED, the rest DORMANT.
fn state(h: usize, s: usize, mixed: bool) -> LayerState {
    let mut st = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
    if mixed {
        let w = values(h, 5);
        st.params.weights.iter_mut().zip(&w).for_each(|(a, b)| *a = b * 0.25);
        for k in 0..s / 4 + s * 5 / 100 {
            let i = (k * 7 + 3) % s;
            st.seeds.lifecycle[i] = if k < s / 4 { LifecycleState::Grafting } else { LifecycleState::Fossilized };
            st.seeds.blueprint_type[i] = BlueprintType::ALL[k % 4];
            st.seeds.alpha[i] = if k < s / 4 { 0.5 } else { 1.0 };
            st.params.scales[i] = 0.75;
        }
    }
    st
}

fn median(be: &WgpuBackend, f: &mut dyn FnMut() -> kasmina_core::Result<()>) -> f64 {
    median_ms(be, 15, f).unwrap()
}

#[test]
fn perf_report() {
    if !opted_in("KASMINA_WGPU_PERF", "print the device timing report") {
        return;
    }
    let (b, h, s) = match std::env::var("KASMINA_WGPU_PERF_SHAPE") {
        Ok(v) => {
            let p: Vec<usize> = v.split(',').map(|x| x.trim().parse().unwrap()).collect();
            (p[0], p[1], p[2])
        }
        Err(_) => (16384, 8192, 128),
    };
    let n = b * h;
    let xv = values(n, 1);
    let gv = values(n, 2);
    let runs: [(&str, WgpuOptions, &[DType]); 7] = [
        ("in-buffer", WgpuOptions::default(), &DType::ALL),
        ("submit", WgpuOptions { separate_submit_timing: true, ..Default::default() }, &DType::ALL),
        ("in-buffer f16-int", WgpuOptions { f16_integer_decode: true, ..Default::default() }, &[DType::F16]),
        ("in-buffer split", WgpuOptions { split_tile_kernels: true, ..Default::default() }, &[DType::F32, DType::F16]),
        (
            "in-buffer tiles=8k",
            WgpuOptions { target_tiles: Some(8192), ..Default::default() },
            &[DType::F32, DType::F16],
        ),
        (
            "in-buffer tiles=1k",
            WgpuOptions { target_tiles: Some(1024), ..Default::default() },
            &[DType::F32, DType::F16],
        ),
        ("in-buffer scalar", WgpuOptions { scalar_tile_loads: true, ..Default::default() }, &[DType::F32, DType::F16]),
    ];
    println!("B={b} H={h} S={s}; GB/s: forward 2n, backward 3n, copy 2n elements");
    println!(
        "{:<18} {:<5} {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "timing",
        "dtype",
        "mix",
        "fwd ms",
        "fwd x5/5",
        "bwd ms",
        "bwd x5/5",
        "copy ms",
        "fwd GB/s",
        "bwd GB/s",
        "copyGB/s",
        "fwd/cp",
        "kcopy ms",
        "fwd/kc"
    );
    for (label, options, dtypes) in runs {
        let be = WgpuBackend::with_options(0, options).unwrap();
        if label == "in-buffer" {
            println!(
                "adapter: {:?}, subgroups {}, timestamps {}",
                be.adapter(),
                be.uses_subgroups(),
                be.has_timestamps()
            );
        }
        for &dtype in dtypes {
            let esize = dtype.size_bytes() as f64;
            let mut x = be.alloc(b, h, dtype).unwrap();
            be.write(&mut x, HostTensorData::from_f32(dtype, &xv).view()).unwrap();
            let mut g = be.alloc(b, h, dtype).unwrap();
            be.write(&mut g, HostTensorData::from_f32(dtype, &gv).view()).unwrap();
            let mut y = be.alloc(b, h, dtype).unwrap();
            let mut dx = be.alloc(b, h, dtype).unwrap();
            let copy = median(&be, &mut || be.copy(&x, &mut y));
            // The same bytes through a plain vec4 compute-shader copy (what a kernel can reach).
            let kcopy = median(&be, &mut || be.shader_copy(&x, &mut y));
            for mixed in [false, true] {
                let st = state(h, s, mixed);
                let mut layer = be.create_layer(&st).unwrap();
                let warm = std::time::Instant::now();
                while warm.elapsed().as_secs_f64() < 0.3 {
                    be.forward(&mut layer, &x, &mut y).unwrap();
                    be.synchronize().unwrap();
                }
                let fwd = median(&be, &mut || be.forward(&mut layer, &x, &mut y));
                let fwd5 = median(&be, &mut || {
                    for _ in 0..5 {
                        be.forward(&mut layer, &x, &mut y)?;
                    }
                    Ok(())
                }) / 5.0;
                let bwd = median(&be, &mut || be.backward(&mut layer, &x, &g, &mut dx));
                let bwd5 = median(&be, &mut || {
                    for _ in 0..5 {
                        be.backward(&mut layer, &x, &g, &mut dx)?;
                    }
                    Ok(())
                }) / 5.0;
                let gbps = |elems: f64, ms: f64| elems * n as f64 * esize / (ms * 1e-3) / 1e9;
                println!(
                    "{:<18} {:<5} {:<8} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>8.0} {:>8.0} {:>8.0} {:>8.3} {:>8.4} {:>8.3}",
                    label,
                    dtype.name(),
                    if mixed { "mixed" } else { "dormant" },
                    fwd,
                    fwd5,
                    bwd,
                    bwd5,
                    copy,
                    gbps(2.0, fwd),
                    gbps(3.0, bwd),
                    gbps(2.0, copy),
                    copy / fwd,
                    kcopy,
                    kcopy / fwd
                );
            }
        }
    }
}
