//! CUDA-specific GPU tests beyond the shared conformance suite: odd chunk sizes
//! and vector-width fallbacks against the f64 reference, f32 variance at
//! |mean|/std = 1e4, autotune cache reuse across backends, indexing past 2^31
//! elements (`KASMINA_BIG_TESTS=1`) and a bandwidth report (`KASMINA_BENCH=1`).
//!
//! Without a GPU every test prints why it skipped, unless `KASMINA_REQUIRE_GPU=1`,
//! which turns that into a failure.

use half::bf16;
use kasmina_conformance::reference;
use kasmina_conformance::toolkit::{
    Gen, assert_identity_bits, assert_moments, backend_or_skip, bits, download, drive, from_f64, gradient_bits,
    median_call_ms, median_ms, mixed_state, opted_in, reduction_tolerance, rel_l2, require_gpu, telemetry_bits, to_f64,
    tolerance as tol, upload, widen,
};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{
    Backend, BackendErrorKind, BlueprintType, DType, DeviceTensor, Error, LayerConfig, LayerState, LifecycleState,
    StabilityMode, StateChange,
};
use kasmina_cuda::{CacheLocation, CudaOptions};
use kasmina_cuda::{CudaBackend, CudaPath};

/// Device 0 with the options the environment sets, or None (printing why) when this machine
/// has no usable GPU.
fn open(name: &str) -> Option<CudaBackend> {
    let options = CudaOptions::from_env().expect("valid KASMINA_* settings");
    let b = backend_or_skip(name, CudaBackend::with_options(0, options))?;
    println!("{name}: device {} ({})", b.info().id(), b.info().name);
    Some(b)
}

#[test]
fn constructing_without_a_gpu_is_a_clear_unavailable_error() {
    match CudaBackend::new(0) {
        Err(Error::Backend(e)) => {
            assert!(!require_gpu(), "KASMINA_REQUIRE_GPU=1 but: {e}");
            assert_eq!(e.kind, BackendErrorKind::Unavailable, "{e}");
            assert_eq!(e.backend, "cuda");
            assert!(!e.message.is_empty());
            println!("no GPU here, as expected: {e}");
        }
        Err(other) => panic!("expected a backend error, got {other:?}"),
        Ok(b) => {
            assert!(CudaBackend::device_count().unwrap() >= 1);
            assert!(!b.info().name.is_empty());
            assert!(CudaBackend::new(1 << 20).is_err(), "a missing ordinal must be an error");
        }
    }
}

// ------------------------------------------------------------------ helpers

/// A layer for `st` with X = `xh` ([b, h] of `dtype`) on the device, after one forward: the
/// layer, X and Y read back.
fn forward_once(
    be: &CudaBackend,
    st: &LayerState,
    xh: &HostTensorData,
    b: usize,
    h: usize,
) -> (kasmina_cuda::CudaLayer, kasmina_cuda::CudaTensor, HostTensorData) {
    let mut layer = be.create_layer(st).unwrap();
    be.upload(&mut layer, st, StateChange::All).unwrap();
    let x = upload(be, xh, b, h).unwrap();
    let mut y = be.alloc(b, h, xh.view().dtype()).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    (layer, x, download(be, &y).unwrap())
}

/// Runs forward and backward of a mixed layer and checks everything against the reference.
fn check_against_reference(be: &CudaBackend, h: usize, s: usize, b: usize, dtype: DType, stability: StabilityMode) {
    let mut rng = Gen::new(0x9E37_79B9_7F4A_7C15 ^ (h * 31 + s * 7 + b) as u64);
    let st = mixed_state(h, s, stability, &mut rng).unwrap();
    let xh = from_f64(dtype, &rng.normals(b * h, 2.0));
    let gh = from_f64(dtype, &rng.normals(b * h, 1.0));
    let what = format!("H={h} S={s} B={b} {dtype} {stability:?}");
    let (mut layer, x, yh) = forward_once(be, &st, &xh, b, h);
    check_call(be, &st, &mut layer, &x, (&xh, &yh, &gh), b, &what);
}

/// Checks the forward that left `yh` (from `xh`) on `layer` (state `st`), then a backward of
/// `gh` on it, against the reference: outputs, identity bits, statistics, gradients.
fn check_call(
    be: &CudaBackend,
    st: &LayerState,
    layer: &mut kasmina_cuda::CudaLayer,
    x: &kasmina_cuda::CudaTensor,
    (xh, yh, gh): (&HostTensorData, &HostTensorData, &HostTensorData),
    b: usize,
    what: &str,
) {
    let (h, s) = (st.config.hidden_dim, st.config.num_seeds);
    let dtype = xh.view().dtype();
    let (xr, gr) = (to_f64(xh), to_f64(gh));
    let g = upload(be, gh, b, h).unwrap();

    let fr = reference::forward(st, &xr, b);
    assert_identity_bits(st, yh, xh, &format!("{what}: y"));
    let err = rel_l2(&to_f64(yh), &fr.y);
    assert!(err <= tol(dtype), "{what}: forward error {err:e}");
    assert_moments(&be.accumulators(layer).unwrap().moments, &fr.moments, 1e-4, what);

    let mut dx = be.alloc(b, h, dtype).unwrap();
    be.backward(layer, x, &g, &mut dx).unwrap();
    let dxh = download(be, &dx).unwrap();
    let br = reference::backward(st, &xr, &gr, b);
    assert_identity_bits(st, &dxh, gh, &format!("{what}: dx"));
    let err = rel_l2(&to_f64(&dxh), &br.dx);
    assert!(err <= tol(dtype), "{what}: dx error {err:e}");
    let pg = be.param_grads(layer).unwrap();
    let (dw, ds) = (widen(&pg.dweights), widen(&pg.dscales));
    let sum_tol = reduction_tolerance(b * (h / s));
    let err = rel_l2(&dw, &br.dweights);
    assert!(err <= sum_tol, "{what}: dweights error {err:e}");
    let err = rel_l2(&ds, &br.dscales);
    assert!(err <= sum_tol, "{what}: dscales error {err:e}");
    let acc = be.accumulators(layer).unwrap();
    for i in 0..s {
        let want = br.grad_sq[i];
        assert!((acc.grad_sq[i] - want).abs() <= 1e-5 * want, "{what}: grad_sq[{i}] {} vs {want}", acc.grad_sq[i]);
        let gn = pg.grad_norm[i] as f64;
        assert!((gn - want.sqrt()).abs() <= 1e-5 * want.sqrt(), "{what}: grad_norm[{i}]");
    }
}

#[test]
fn odd_chunks_and_vector_fallbacks_match_the_reference() {
    let Some(be) = open("odd_chunks_and_vector_fallbacks_match_the_reference") else { return };
    for dtype in DType::ALL {
        for stability in [StabilityMode::Off, StabilityMode::strict()] {
            // C = 64 (16-byte vectors), C = 5 (seeds straddle vectors), C = 257 (H odd: scalar path),
            // C = 1 and C = 2 (CONV taps beyond the chunk), H = 6 (vector width 2).
            for (h, s, b) in [(768, 12, 67), (60, 12, 33), (771, 3, 19), (24, 24, 9), (48, 24, 5), (6, 3, 40)] {
                check_against_reference(&be, h, s, b, dtype, stability);
            }
        }
    }
}

/// Parameters taken from device memory (`forward_with_params`, what the Python package calls):
/// small calls derive the constants inside the forward's blocks, larger ones launch the plan
/// first; both must compute with the new parameters (forward, statistics, backward) and leave the
/// device state's checksum that of a host upload of them.
#[test]
fn forward_with_device_parameters_matches_the_reference() {
    let Some(be) = open("forward_with_device_parameters_matches_the_reference") else { return };
    for dtype in DType::ALL {
        for stability in [StabilityMode::Off, StabilityMode::strict()] {
            // One block per seed with the plan fused (C = 48, 64, 5), with the plan launched first
            // (C = 2048 > 1024; with active seeds, and with identity seeds alone, where nothing
            // is derived), and a call too large for one block per seed.
            let shapes = [
                (768, 16, 32, false),
                (768, 12, 67, false),
                (60, 12, 33, false),
                (4096, 2, 3, false),
                (4096, 2, 3, true),
                (768, 12, 700, false),
            ];
            for (h, s, b, identity_only) in shapes {
                let mut rng = Gen::new(0xA5A5 ^ (h * 31 + s * 7 + b) as u64);
                let old = if identity_only {
                    let mut st = LayerState::new(LayerConfig::new(h, s).unwrap().with_stability(stability)).unwrap();
                    drive(&mut st, 1, LifecycleState::Germinated, BlueprintType::Mlp).unwrap();
                    st
                } else {
                    mixed_state(h, s, stability, &mut rng).unwrap()
                };
                let mut st = old.clone();
                for w in st.params.weights.iter_mut() {
                    *w = rng.normal() as f32;
                }
                for sc in st.params.scales.iter_mut() {
                    *sc = (0.5 + rng.normal().abs()) as f32;
                }
                let what =
                    format!("device params H={h} S={s} B={b} {dtype} {stability:?} identity only: {identity_only}");
                let mut layer = be.create_layer(&old).unwrap();
                be.upload(&mut layer, &old, StateChange::All).unwrap();
                let mut wbuf = be.alloc(1, st.params.weights.len(), DType::F32).unwrap();
                be.write(&mut wbuf, kasmina_core::HostData::F32(&st.params.weights)).unwrap();
                let mut sbuf = be.alloc(1, s, DType::F32).unwrap();
                be.write(&mut sbuf, kasmina_core::HostData::F32(&st.params.scales)).unwrap();
                let xh = from_f64(dtype, &rng.normals(b * h, 2.0));
                let gh = from_f64(dtype, &rng.normals(b * h, 1.0));
                let x = upload(&be, &xh, b, h).unwrap();
                let mut y = be.alloc(b, h, dtype).unwrap();
                let (wa, sa) = (be.tensor_address(&wbuf), be.tensor_address(&sbuf));
                // SAFETY: wbuf and sbuf hold S*C and S f32 values and outlive the calls.
                unsafe { be.forward_with_params(&mut layer, &x, &mut y, wa, sa) }.unwrap();
                let yh = download(&be, &y).unwrap();
                check_call(&be, &st, &mut layer, &x, (&xh, &yh, &gh), b, &what);
                // Identity seeds read no parameter: with no active seed nothing is derived and the
                // device keeps the uploaded copy (use_params' contract).
                let active =
                    (0..s).any(|i| st.seeds.lifecycle[i].forward_mode() != kasmina_core::ForwardMode::Identity);
                let want = kasmina_core::checksum::checksum(if active { &st } else { &old });
                assert_eq!(be.checksum(&layer).unwrap(), want, "{what}: checksum (active seeds: {active})");
            }
        }
    }
}

/// The warp-per-seed forward (seed rows of 1 to 16 threads; row groups, not one block per seed)
/// against the reference, and bit for bit against the one-row-per-warp mapping: row counts that
/// leave lanes idle in the last step, tiles with idle warps (S not a multiple of the warps per
/// block), every blueprint type, clamps and lifecycle state.
#[test]
fn warp_per_seed_forward_matches_the_reference_and_the_row_mapping() {
    let Some(be) = open("warp_per_seed_forward_matches_the_reference_and_the_row_mapping") else {
        return;
    };
    let be = be.with_seedwise(false);
    let Ok(rows) = CudaBackend::new(0).map(|b| b.with_seedwise(false).with_seedwarp(false)) else {
        panic!("a second backend on device 0 failed to open");
    };
    for dtype in DType::ALL {
        for stability in [StabilityMode::Off, StabilityMode::strict()] {
            // C = 64, 32, 16, 8 (1 to 16 threads per seed row); S = 18 and 5 leave warps idle.
            for (h, s, b) in [(1024, 16, 67), (576, 18, 33), (512, 32, 5), (40, 5, 131), (96, 12, 1)] {
                check_against_reference(&be, h, s, b, dtype, stability);
                let mut rng = Gen::new(0x51ED_0000 ^ (h * 131 + b) as u64);
                let st = mixed_state(h, s, stability, &mut rng).unwrap();
                let xh = from_f64(dtype, &rng.normals(b * h, 3.0));
                let mut out = Vec::new();
                for be in [&be, &rows] {
                    let (layer, _, yh) = forward_once(be, &st, &xh, b, h);
                    out.push((yh, be.accumulators(&layer).unwrap()));
                }
                let what = format!("H={h} S={s} B={b} {dtype} {stability:?}");
                for i in 0..b * h {
                    assert_eq!(bits(&out[0].0, i), bits(&out[1].0, i), "{what}: element {i} differs between mappings");
                }
                for (i, (a, r)) in out[0].1.moments.iter().zip(&out[1].1.moments).enumerate() {
                    assert_eq!(
                        (a.count, a.dead, a.nonfinite, a.min, a.max),
                        (r.count, r.dead, r.nonfinite, r.min, r.max)
                    );
                    assert!((a.mean - r.mean).abs() <= 1e-6 * (1.0 + r.mean.abs()), "{what}: seed {i} mean");
                    let (v, rv) = (a.variance(), r.variance());
                    assert!((v - rv).abs() <= 1e-5 * rv.max(1e-30), "{what}: seed {i} variance {v} vs {rv}");
                }
            }
        }
    }
}

#[test]
fn variance_keeps_1e_minus_4_at_mean_over_std_of_1e4() {
    let Some(be) = open("variance_keeps_1e_minus_4_at_mean_over_std_of_1e4") else { return };
    let (b, h, s) = (3000, 1024, 4);
    let mut rng = Gen::new(77);
    let xv: Vec<f32> = (0..b * h).map(|_| (1e4 + rng.normal()) as f32).collect();
    let st = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let mut x = be.alloc(b, h, DType::F32).unwrap();
    be.write(&mut x, kasmina_core::HostData::F32(&xv)).unwrap();
    let mut y = be.alloc(b, h, DType::F32).unwrap();
    // Two calls: the accumulator merge across calls is exercised too.
    be.forward(&mut layer, &x, &mut y).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    let fr = reference::forward(&st, &widen(&xv), b);
    let acc = be.accumulators(&layer).unwrap();
    for i in 0..s {
        let r = fr.moments[i].merge(&fr.moments[i]);
        let (v, rv) = (acc.moments[i].variance(), r.variance());
        let rel = (v - rv).abs() / rv;
        println!("seed {i}: variance {v} reference {rv} relative error {rel:e}");
        assert!(rel <= 1e-4, "seed {i}: relative variance error {rel:e}");
        assert_eq!(acc.moments[i].count, r.count);
    }
}

#[test]
fn telemetry_and_gradients_are_bit_identical_across_runs() {
    let Some(be) = open("telemetry_and_gradients_are_bit_identical_across_runs") else { return };
    let (b, h, s) = (1000, 512, 8);
    let mut rng = Gen::new(5);
    let st = mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap();
    let x = upload(&be, &from_f64(DType::BF16, &rng.normals(b * h, 1.0)), b, h).unwrap();
    let mut y = be.alloc(b, h, DType::BF16).unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut layer = be.create_layer(&st).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        be.backward(&mut layer, &x, &x, &mut y).unwrap();
        let acc = telemetry_bits(&be.accumulators(&layer).unwrap());
        runs.push((acc, gradient_bits(&be.param_grads(&layer).unwrap())));
    }
    assert!(runs.windows(2).all(|w| w[0] == w[1]), "telemetry or gradients differ between runs");
}

#[test]
fn seed_upload_changes_only_the_named_seeds_and_checksums_match() {
    let Some(be) = open("seed_upload_changes_only_the_named_seeds_and_checksums_match") else { return };
    let mut st = mixed_state(96, 8, StabilityMode::Off, &mut Gen::new(11)).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    assert_eq!(be.checksum(&layer).unwrap(), kasmina_core::checksum::checksum(&st));
    st.params.seed_weights_mut(3)[0] = 42.0;
    st.params.scales[3] = 3.0;
    st.epoch += 1;
    be.upload(&mut layer, &st, StateChange::Seeds(&[3])).unwrap();
    assert_eq!(be.checksum(&layer).unwrap(), kasmina_core::checksum::checksum(&st));
}

#[test]
fn autotune_winner_is_reused_by_a_second_backend_through_the_cache_file() {
    let Some(_) = open("autotune_winner_is_reused_by_a_second_backend_through_the_cache_file") else {
        return;
    };
    // Portable: one key each for forward and backward. Auto (the default) on compute capability
    // 9.0 also tunes the Hopper configuration and the family choice of each: six keys.
    for path in [CudaPath::Portable, CudaPath::Auto] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("autotune.json");
        let run = || {
            let be = CudaBackend::with_options(
                0,
                CudaOptions::default().with_autotune_cache(CacheLocation::Path(file.clone())).with_path(path),
            )
            .unwrap();
            let st = LayerState::new(LayerConfig::new(1024, 8).unwrap()).unwrap();
            let mut layer = be.create_layer(&st).unwrap();
            let x = be.alloc(256, 1024, DType::F32).unwrap();
            let mut y = be.alloc(256, 1024, DType::F32).unwrap();
            be.forward(&mut layer, &x, &mut y).unwrap();
            be.backward(&mut layer, &x, &x, &mut y).unwrap();
            be.synchronize().unwrap();
            (be.tuned_keys(), be.compute_capability())
        };
        let (first, cc) = run();
        let want = if path == CudaPath::Auto && cc == (9, 0) { 6 } else { 2 };
        assert_eq!(first, want, "{path:?}: the first backend tunes every key of forward and backward");
        let text = std::fs::read_to_string(&file).unwrap();
        println!("autotune cache ({path:?}):\n{text}");
        assert_eq!(run().0, 0, "{path:?}: the second backend finds every winner in the file");
    }
}

/// B * H > 2^31 elements (bf16, 4.3 GB per tensor): offsets must be 64-bit.
#[test]
fn indexing_past_2_pow_31_elements() {
    if !opted_in("KASMINA_BIG_TESTS", "run it (needs ~10 GB of GPU memory)") {
        return;
    }
    let Some(be) = open("indexing_past_2_pow_31_elements") else { return };
    // f16, then bf16: the 16-bit activations are where B * H passes 2^31
    // elements first (4 GiB per tensor).
    big_index_check::<half::f16>(&be);
    big_index_check::<bf16>(&be);
}

/// A 16-bit activation type of the big-index test.
trait Half16: Copy + Send + Sync {
    const DTYPE: DType;
    const ZERO: Self;
    fn of(v: f32) -> Self;
    fn f32(self) -> f32;
    fn bits(self) -> u16;
    fn data(v: &[Self]) -> kasmina_core::HostData<'_>;
    fn data_mut(v: &mut [Self]) -> kasmina_core::HostDataMut<'_>;
}

macro_rules! half16 {
    ($t:ty, $variant:ident, $dtype:expr) => {
        impl Half16 for $t {
            const DTYPE: DType = $dtype;
            const ZERO: Self = <$t>::ZERO;
            fn of(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn f32(self) -> f32 {
                self.to_f32()
            }
            fn bits(self) -> u16 {
                self.to_bits()
            }
            fn data(v: &[Self]) -> kasmina_core::HostData<'_> {
                kasmina_core::HostData::$variant(v)
            }
            fn data_mut(v: &mut [Self]) -> kasmina_core::HostDataMut<'_> {
                kasmina_core::HostDataMut::$variant(v)
            }
        }
    };
}
half16!(half::f16, F16, DType::F16);
half16!(bf16, BF16, DType::BF16);

/// Forward and backward over 2^31 + 192 elements of `T` (H = 64, two seeds: one identity, one
/// RESIDUAL graft at alpha 0.5): every output element, the statistics' counts and means, and
/// dx of the identity seed, including the rows past element 2^31.
fn big_index_check<T: Half16>(be: &CudaBackend) {
    let dtype = T::DTYPE;
    let (h, s) = (64usize, 2usize);
    let b = (1usize << 31) / h + 3;
    let n = b * h;
    let mut st = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
    drive(&mut st, 1, LifecycleState::Grafting, BlueprintType::Residual).unwrap();
    st.seeds.alpha[1] = 0.5;
    st.params.seed_weights_mut(1).fill(0.25);
    let val = |i: usize| T::of(((i.wrapping_mul(2654435761) >> 7) % 1024) as f32 / 64.0 - 8.0);
    let xh: Vec<T> = (0..n).map(val).collect();
    let mut layer = be.create_layer(&st).unwrap();
    let mut x = be.alloc(b, h, dtype).unwrap();
    be.write(&mut x, T::data(&xh)).unwrap();
    let mut y = be.alloc(b, h, dtype).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    let mut yh = vec![T::ZERO; n];
    be.read(&y, T::data_mut(&mut yh)).unwrap();
    drop(y);
    let c = h / s;
    let mut bad = 0usize;
    for i in 0..n {
        let col = i % h;
        if col < c {
            if yh[i].bits() != xh[i].bits() {
                bad += 1;
            }
        } else {
            let xv = xh[i].f32();
            let want = 0.5 * xv + 0.5 * (xv + 0.25);
            if (yh[i].f32() - want).abs() > 0.02 * want.abs().max(1.0) {
                bad += 1;
            }
        }
    }
    assert_eq!(bad, 0, "{dtype}: {bad} wrong elements of {n}");
    drop(yh);
    let acc = be.accumulators(&layer).unwrap();
    for seed in 0..s {
        let mut sum = 0f64;
        for r in 0..b {
            for j in 0..c {
                sum += xh[r * h + seed * c + j].f32() as f64;
            }
        }
        let count = (b * c) as u64;
        let mean = sum / count as f64;
        assert_eq!(acc.moments[seed].count, count, "{dtype}: seed {seed} count");
        assert!((acc.moments[seed].mean - mean).abs() < 1e-6 * (1.0 + mean.abs()), "{dtype}: seed {seed} mean");
    }
    // Backward over the same tensors: dx of the identity seed is g bit for bit.
    let mut dx = be.alloc(b, h, dtype).unwrap();
    be.backward(&mut layer, &x, &x, &mut dx).unwrap();
    let mut dxh = vec![T::ZERO; n];
    be.read(&dx, T::data_mut(&mut dxh)).unwrap();
    let last = n - 1;
    assert_eq!(dxh[last - h + 1].bits(), xh[last - h + 1].bits());
    let wrong = (0..n).filter(|i| i % h < c && dxh[*i].bits() != xh[*i].bits()).count();
    assert_eq!(wrong, 0, "{dtype}: identity dx");
    println!("{dtype}: B={b} H={h}: {n} elements (> 2^31) forward and backward correct");
}

/// Forward / backward bandwidth against the device's own copy (KASMINA_BENCH=1).
#[test]
fn bandwidth_report() {
    if !opted_in("KASMINA_BENCH", "print the bandwidth table") {
        return;
    }
    let Some(be) = open("bandwidth_report") else { return };
    for (dtype, vec) in [(DType::F32, 4), (DType::F32, 2), (DType::BF16, 8), (DType::BF16, 4)] {
        println!("{}", be.kernel_resources(dtype, vec).unwrap());
    }
    println!("| B | H | S | dtype | mix | op | median ms | GB/s | copy GB/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (b, h, s, reps) in [(16384usize, 8192usize, 128usize, 30usize), (32, 768, 16, 200)] {
        for dtype in [DType::F32, DType::BF16] {
            let n = b * h;
            let mut rng = Gen::new(3);
            let xh = from_f64(dtype, &rng.normals(n, 1.0));
            // The large case is 256-512 MB per tensor, several times the 50 MB L2.
            let x = upload(&be, &xh, b, h).unwrap();
            let g = upload(&be, &xh, b, h).unwrap();
            let mut y = be.alloc(b, h, dtype).unwrap();
            let bytes = (n * dtype.size_bytes()) as f64;
            let copy_ms = median_ms(&be, reps, &mut || be.copy(&x, &mut y)).unwrap();
            let copy_gbps = 2.0 * bytes / copy_ms / 1e6;
            println!(
                "| {b} | {h} | {s} | {dtype} | - | copy | {copy_ms:.4} | {copy_gbps:.0} | {copy_gbps:.0} | 1.00 |"
            );
            for mix in ["dormant", "mixed"] {
                let st = if mix == "dormant" {
                    LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap()
                } else {
                    mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap()
                };
                let mut layer = be.create_layer(&st).unwrap();
                for (op, traffic) in [("forward", 2.0), ("backward", 3.0)] {
                    let ms = median_call_ms(&be, &mut layer, (&x, &g), &mut y, op == "backward", reps).unwrap();
                    let gbps = traffic * bytes / ms / 1e6;
                    let ratio = gbps / copy_gbps;
                    println!(
                        "| {b} | {h} | {s} | {dtype} | {mix} | {op} | {ms:.4} | {gbps:.0} | {copy_gbps:.0} | {ratio:.2} |"
                    );
                }
                // Wall-clock latency of a small forward including the host side (launch overhead).
                if b <= 64 {
                    be.synchronize().unwrap();
                    let t0 = std::time::Instant::now();
                    for _ in 0..1000 {
                        be.forward(&mut layer, &x, &mut y).unwrap();
                    }
                    be.synchronize().unwrap();
                    let us = t0.elapsed().as_secs_f64() * 1e6 / 1000.0;
                    println!(
                        "| {b} | {h} | {s} | {dtype} | {mix} | forward wall (host+device, per call) | {:.4} | | | |",
                        us / 1e3
                    );
                }
            }
        }
    }
}

/// Small calls replay captured CUDA graphs: new data in the same tensors, new
/// parameters and accumulation across calls must all be seen by the replay.
#[test]
fn graph_replay_sees_new_data_and_new_parameters() {
    let Some(be) = open("graph_replay_sees_new_data_and_new_parameters") else { return };
    let (b, h, s) = (32, 768, 16);
    let mut rng = Gen::new(21);
    let mut st = mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let mut x = be.alloc(b, h, DType::F32).unwrap();
    let mut y = be.alloc(b, h, DType::F32).unwrap();
    let mut total = vec![kasmina_core::Moments::empty(); s];
    for round in 0..4 {
        if round == 2 {
            // New parameters for two seeds between replays.
            for i in [1usize, 2] {
                for w in st.params.seed_weights_mut(i) {
                    *w = rng.normal() as f32;
                }
                st.params.scales[i] = 2.0;
            }
            be.upload(&mut layer, &st, StateChange::Seeds(&[1, 2])).unwrap();
        }
        let xh = from_f64(DType::F32, &rng.normals(b * h, 1.0));
        be.write(&mut x, xh.view()).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        let yh = download(&be, &y).unwrap();
        let fr = reference::forward(&st, &to_f64(&xh), b);
        let err = rel_l2(&to_f64(&yh), &fr.y);
        assert!(err <= 1e-5, "round {round}: forward error {err:e}");
        for (t, m) in total.iter_mut().zip(&fr.moments) {
            *t = t.merge(m);
        }
        let mut dx = be.alloc(b, h, DType::F32).unwrap();
        be.backward(&mut layer, &x, &x, &mut dx).unwrap();
        let br = reference::backward(&st, &to_f64(&xh), &to_f64(&xh), b);
        let dw = widen(&be.param_grads(&layer).unwrap().dweights);
        let err = rel_l2(&dw, &br.dweights);
        assert!(err <= 1e-5, "round {round}: dweights error {err:e}");
    }
    let acc = be.accumulators(&layer).unwrap();
    for (i, (m, t)) in acc.moments.iter().zip(&total).enumerate() {
        assert_eq!(m.count, t.count, "seed {i}");
        assert!((m.variance() - t.variance()).abs() <= 1e-4 * t.variance(), "seed {i}");
    }
}

#[test]
fn tensor_shape_errors_are_typed() {
    let Some(be) = open("tensor_shape_errors_are_typed") else { return };
    let st = LayerState::new(LayerConfig::new(64, 4).unwrap()).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let x = be.alloc(4, 64, DType::F32).unwrap();
    let mut y = be.alloc(4, 32, DType::F32).unwrap();
    assert!(matches!(be.forward(&mut layer, &x, &mut y), Err(Error::Shape { .. })));
    let mut y16 = be.alloc(4, 64, DType::F16).unwrap();
    assert!(matches!(be.forward(&mut layer, &x, &mut y16), Err(Error::DType { .. })));
    assert_eq!(y16.rows(), 4);
}
