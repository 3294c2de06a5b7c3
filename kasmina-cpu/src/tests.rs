//! Unit tests: hand-checked cases, the conformance suite's f64 reference on
//! every SIMD level this CPU has, and bit-identical results across thread counts.
#![allow(clippy::needless_range_loop)] // index loops mirror the SPEC formulas

use half::{bf16, f16};
use kasmina_core::{
    Backend, BlueprintType, DType, GraftingStrategy, HostData, HostDataMut, HostTensorData, LayerConfig, LayerState,
    LifecycleState, Moments, StabilityMode, StateChange,
};

use kasmina_conformance::reference;
use kasmina_conformance::toolkit::{
    Gen, all_bits as bits, assert_identity_bits, assert_moments, download, gradient_bits, mixed_state, rel_l2,
    telemetry_bits, to_f64, tolerance as tol, upload, widen,
};

use crate::{CpuBackend, CpuTensor, SimdLevel};

fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Avx512Bf16, SimdLevel::Neon]
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

fn tensor(be: &CpuBackend, rows: usize, cols: usize, data: &HostTensorData) -> CpuTensor {
    upload(be, data, rows, cols).unwrap()
}

fn read(be: &CpuBackend, t: &CpuTensor) -> HostTensorData {
    download(be, t).unwrap()
}

// ---------- the float64 reference is kasmina-conformance's (SPEC 4, 5, 7) ----------

fn forward_ref(st: &LayerState, x: &[f64]) -> (Vec<f64>, Vec<Moments>) {
    let r = reference::forward(st, x, x.len() / st.config.hidden_dim);
    (r.y, r.moments)
}

fn backward_ref(st: &LayerState, x: &[f64], g: &[f64]) -> reference::BackwardRef {
    reference::backward(st, x, g, x.len() / st.config.hidden_dim)
}

// ---------- tests ----------

#[test]
fn residual_blend_matches_a_hand_computed_row() {
    // H = 4, S = 2: seed 0 DORMANT, seed 1 GRAFTING RESIDUAL alpha 0.5, w = [1, 2], s = 2.
    let mut st = LayerState::new(LayerConfig::new(4, 2).unwrap()).unwrap();
    st.seeds.lifecycle[1] = LifecycleState::Grafting;
    st.seeds.alpha[1] = 0.5;
    st.params.weights = vec![0.0, 0.0, 1.0, 2.0];
    st.params.scales = vec![1.0, 2.0];
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        let mut layer = be.create_layer(&st).unwrap();
        let x = tensor(&be, 1, 4, &HostTensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
        let mut y = be.alloc(1, 4, DType::F32).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        // y = 0.5 x + 0.5 (x + w s): [1, 2, 0.5*3 + 0.5*5, 0.5*4 + 0.5*8]
        assert_eq!(read(&be, &y), HostTensorData::F32(vec![1.0, 2.0, 4.0, 6.0]), "{level:?}");
        let acc = be.accumulators(&layer).unwrap();
        assert_eq!(acc.moments[1].count, 2);
        assert_eq!(acc.moments[1].mean, 3.5);
        assert_eq!(acc.moments[1].m2, 0.5);
        assert_eq!((acc.moments[0].min, acc.moments[0].max), (1.0, 2.0));

        // backward with g = [1, 1, 1, 3]: dx = g; dw = a s g = [1, 3]; ds = a (1*1 + 2*3) = 3.5
        let g = tensor(&be, 1, 4, &HostTensorData::F32(vec![1.0, 1.0, 1.0, 3.0]));
        let mut dx = be.alloc(1, 4, DType::F32).unwrap();
        be.backward(&mut layer, &x, &g, &mut dx).unwrap();
        assert_eq!(read(&be, &dx), HostTensorData::F32(vec![1.0, 1.0, 1.0, 3.0]));
        let pg = be.param_grads(&layer).unwrap();
        assert_eq!(pg.dweights, vec![0.0, 0.0, 1.0, 3.0]);
        assert_eq!(pg.dscales, vec![0.0, 3.5]);
        assert_eq!(pg.grad_norm, vec![2f32.sqrt(), 10f32.sqrt()]);
    }
}

#[test]
fn conv_is_causal_inside_each_chunk() {
    // H = 6, S = 2, both FOSSILIZED CONV with w = [1, 10, 100], s = 1: y_j = x_j + 10 x_{j-1} + 100 x_{j-2}.
    let mut st = LayerState::new(LayerConfig::new(6, 2).unwrap()).unwrap();
    for i in 0..2 {
        st.seeds.lifecycle[i] = LifecycleState::Fossilized;
        st.seeds.blueprint_type[i] = BlueprintType::Conv;
        st.seeds.alpha[i] = 1.0;
    }
    st.params.weights = vec![1.0, 10.0, 100.0, 1.0, 10.0, 100.0];
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        let mut layer = be.create_layer(&st).unwrap();
        let x = tensor(&be, 1, 6, &HostTensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let mut y = be.alloc(1, 6, DType::F32).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        assert_eq!(read(&be, &y), HostTensorData::F32(vec![1.0, 12.0, 123.0, 4.0, 45.0, 456.0]), "{level:?}");
    }
}

#[test]
fn all_types_match_the_f64_reference_on_every_simd_level_and_dtype() {
    let mut rng = Gen::new(7);
    // C = 37 exercises vector tails; C = 64 the aligned path; C = 2 is below CONV's three taps.
    for &(h, s, rows) in &[(37 * 16, 16, 9), (64 * 16, 16, 5), (2 * 16, 16, 7)] {
        for strict in [false, true] {
            let stability = if strict { StabilityMode::strict() } else { StabilityMode::Off };
            let st = mixed_state(h, s, stability, &mut rng).unwrap();
            for dtype in DType::ALL {
                let xd = rng.tensor(dtype, rows * h, 2.0);
                let gd = rng.tensor(dtype, rows * h, 2.0);
                let (x64, g64) = (to_f64(&xd), to_f64(&gd));
                let (yref, mref) = forward_ref(&st, &x64);
                let bref = backward_ref(&st, &x64, &g64);
                for level in levels() {
                    let ctx = format!("H={h} strict={strict} {dtype} {level:?}");
                    let be = CpuBackend::with_options(2, level).unwrap();
                    let mut layer = be.create_layer(&st).unwrap();
                    let x = tensor(&be, rows, h, &xd);
                    let g = tensor(&be, rows, h, &gd);
                    let mut y = be.alloc(rows, h, dtype).unwrap();
                    be.forward(&mut layer, &x, &mut y).unwrap();
                    let yd = read(&be, &y);
                    let e = rel_l2(&to_f64(&yd), &yref);
                    assert!(e <= tol(dtype), "{ctx}: forward error {e}");
                    assert_identity_bits(&st, &yd, &xd, &ctx);
                    // m2 = count * variance: relative 1e-5 on either.
                    assert_moments(&be.accumulators(&layer).unwrap().moments, &mref, 1e-5, &ctx);
                    let mut dx = be.alloc(rows, h, dtype).unwrap();
                    be.backward(&mut layer, &x, &g, &mut dx).unwrap();
                    let dxd = read(&be, &dx);
                    let e = rel_l2(&to_f64(&dxd), &bref.dx);
                    assert!(e <= tol(dtype), "{ctx}: dx error {e}");
                    let pg = be.param_grads(&layer).unwrap();
                    let (dw, ds) = (widen(&pg.dweights), widen(&pg.dscales));
                    // Parameter gradients are f32 sums of f32 inputs: 1e-5 whatever the activation dtype.
                    assert!(rel_l2(&dw, &bref.dweights) <= 1e-5, "{ctx}: dw error {}", rel_l2(&dw, &bref.dweights));
                    assert!(rel_l2(&ds, &bref.dscales) <= 1e-5, "{ctx}: ds error {}", rel_l2(&ds, &bref.dscales));
                    for i in 0..s {
                        let want = bref.grad_sq[i].sqrt();
                        assert!((pg.grad_norm[i] as f64 - want).abs() <= 1e-5 * want, "{ctx}: grad_norm");
                        assert!((acc_gsq(&be, &layer, i) - bref.grad_sq[i]).abs() <= 1e-5 * bref.grad_sq[i]);
                    }
                }
            }
        }
    }
}

fn acc_gsq(be: &CpuBackend, layer: &crate::CpuLayer, i: usize) -> f64 {
    be.accumulators(layer).unwrap().grad_sq[i]
}

#[test]
fn identity_seeds_copy_nan_payloads_bit_for_bit() {
    let st = LayerState::new(LayerConfig::new(48, 3).unwrap()).unwrap();
    let f32s: Vec<f32> = (0..96).map(|i| f32::from_bits(0x7F80_0001 + i * 7919)).collect();
    let f16s: Vec<f16> = (0..96u16).map(|i| f16::from_bits(0x7C01 + i)).collect();
    let bf16s: Vec<bf16> = (0..96u16).map(|i| bf16::from_bits(0xFF81 + i % 64)).collect();
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        for data in
            [HostTensorData::F32(f32s.clone()), HostTensorData::F16(f16s.clone()), HostTensorData::BF16(bf16s.clone())]
        {
            let mut layer = be.create_layer(&st).unwrap();
            let x = tensor(&be, 2, 48, &data);
            let mut y = be.alloc(2, 48, data.view().dtype()).unwrap();
            be.forward(&mut layer, &x, &mut y).unwrap();
            assert_eq!(bits(&read(&be, &y)), bits(&data), "{level:?}");
            let acc = be.accumulators(&layer).unwrap();
            assert!(acc.moments.iter().all(|m| m.count == 0 && m.nonfinite == 32));
            let mut dx = be.alloc(2, 48, data.view().dtype()).unwrap();
            be.backward(&mut layer, &x, &x, &mut dx).unwrap();
            assert_eq!(bits(&read(&be, &dx)), bits(&data), "{level:?} backward");
        }
    }
}

/// The identity fast path (copy + telemetry settled once per visit of several
/// rows) against the f64 reference: chunks that are whole cache lines, chunks
/// with a remainder, NaN/Inf/zero/dead values in some visits and not others, a
/// seed whose first rows have no finite element, every dtype and SIMD level,
/// streamed and cached stores; plus identical bits for 1 and 3 threads.
#[test]
fn identity_visits_count_special_values_exactly() {
    let mut rng = Gen::new(11);
    for &(c, s, rows) in &[(64usize, 4usize, 23usize), (96, 3, 13), (40, 4, 11), (32, 2, 9)] {
        let h = c * s;
        let st = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
        let mut v = rng.f32s(rows * h, -3.0, 3.0);
        // Seed 1: no finite element in its first 5 rows.
        for r in 0..5.min(rows) {
            for j in 0..c {
                v[r * h + c + j] = if j % 3 == 0 { f32::NEG_INFINITY } else { f32::NAN };
            }
        }
        // A few special values scattered over the other seeds, leaving most visits clean.
        for (n, &special) in [f32::NAN, f32::INFINITY, 0.0, -0.0, 1e-9, -3e-7, f32::NEG_INFINITY].iter().enumerate() {
            let r = (n * 7 + 3) % rows;
            let i = [0, 2, 0, 3, 2, 0, 3][n] % s;
            let j = (n * 13 + 5) % c;
            v[r * h + i * c + j] = special;
        }
        for dtype in DType::ALL {
            let xd = HostTensorData::from_f32(dtype, &v);
            let (_, want) = forward_ref(&st, &to_f64(&xd));
            for level in levels() {
                let mut first: Option<Vec<u64>> = None;
                for threads in [1, 3] {
                    let ctx = format!("C={c} {dtype} {level:?} threads={threads}");
                    let be = CpuBackend::with_options(threads, level).unwrap();
                    let mut layer = be.create_layer(&st).unwrap();
                    let x = tensor(&be, rows, h, &xd);
                    let mut y = be.alloc(rows, h, dtype).unwrap();
                    be.forward(&mut layer, &x, &mut y).unwrap();
                    assert_eq!(bits(&read(&be, &y)), bits(&xd), "{ctx}: identity output");
                    let acc = be.accumulators(&layer).unwrap();
                    assert_moments(&acc.moments, &want, 1e-5, &ctx);
                    let key = telemetry_bits(&acc);
                    match &first {
                        None => first = Some(key),
                        Some(f) => assert!(*f == key, "{ctx}: bits differ across threads"),
                    }
                }
            }
        }
    }
}

#[test]
fn nonfinite_inputs_only_count_as_nonfinite() {
    let st = LayerState::new(LayerConfig::new(40, 2).unwrap()).unwrap();
    let mut v: Vec<f32> = (0..80).map(|i| i as f32 * 0.5 - 10.0).collect();
    v[3] = f32::NAN;
    v[25] = f32::INFINITY;
    v[77] = f32::NEG_INFINITY;
    let want = {
        let (_, m) = forward_ref(&st, &widen(&v));
        m
    };
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        let mut layer = be.create_layer(&st).unwrap();
        let x = tensor(&be, 2, 40, &HostTensorData::F32(v.clone()));
        let mut y = be.alloc(2, 40, DType::F32).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        let acc = be.accumulators(&layer).unwrap();
        for i in 0..2 {
            let (m, r) = (&acc.moments[i], &want[i]);
            assert_eq!((m.count, m.nonfinite, m.dead, m.min, m.max), (r.count, r.nonfinite, r.dead, r.min, r.max));
            assert!((m.mean - r.mean).abs() < 1e-6 && (m.m2 - r.m2).abs() < 1e-6 * r.m2, "{level:?}: {m:?} vs {r:?}");
        }
    }
}

#[test]
fn variance_keeps_relative_1e_4_when_mean_is_1e4_std() {
    let (h, rows) = (256, 3000);
    // Uniform of std 1 centred on 1e4, added in f32.
    let v: Vec<f32> = Gen::new(3).f32s(rows * h, -1.7320508, 1.7320508).iter().map(|u| 1e4 + u).collect();
    let mut want = Moments::empty();
    for r in 0..rows {
        for x in &v[r * h..r * h + h / 4] {
            want.push(*x as f64, 1e-6);
        }
    }
    let st = LayerState::new(LayerConfig::new(h, 4).unwrap()).unwrap();
    for level in levels() {
        let be = CpuBackend::with_options(2, level).unwrap();
        let mut layer = be.create_layer(&st).unwrap();
        let x = tensor(&be, rows, h, &HostTensorData::F32(v.clone()));
        let mut y = be.alloc(rows, h, DType::F32).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        let m = be.accumulators(&layer).unwrap().moments[0];
        let rel = (m.variance() - want.variance()).abs() / want.variance();
        assert!(rel < 1e-4, "{level:?}: relative variance error {rel}");
    }
}

#[test]
fn huge_values_never_give_nan_statistics() {
    let st = LayerState::new(LayerConfig::new(64, 2).unwrap()).unwrap();
    let v: Vec<f32> = (0..64 * 4).map(|i| if i % 2 == 0 { 1e30 } else { -3e30 } * (1.0 + i as f32 * 1e-3)).collect();
    let big: Vec<f32> = (0..64 * 4).map(|i| if i % 3 == 0 { f32::MAX } else { -f32::MAX }).collect();
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        for data in [v.clone(), big.clone()] {
            let mut layer = be.create_layer(&st).unwrap();
            let x = tensor(&be, 4, 64, &HostTensorData::F32(data));
            let mut y = be.alloc(4, 64, DType::F32).unwrap();
            be.forward(&mut layer, &x, &mut y).unwrap();
            let acc = be.accumulators(&layer).unwrap();
            for m in &acc.moments {
                assert_eq!(m.count, 128);
                assert!(!m.mean.is_nan() && !m.m2.is_nan() && m.m2 > 1e59, "{level:?}: {m:?}");
            }
        }
    }
}

#[test]
fn strict_mode_clamps_and_zeroes_the_gradient_of_clamped_elements() {
    // One GRAFTING RESIDUAL seed, a = 1 would be FOSSILIZED; use FOSSILIZED to read t directly.
    let mut st =
        LayerState::new(LayerConfig::new(4, 1).unwrap().with_stability(StabilityMode::Strict { k: 1.0 })).unwrap();
    st.seeds.lifecycle[0] = LifecycleState::Fossilized;
    st.seeds.alpha[0] = 1.0;
    st.seeds.clamp_mean[0] = 0.0;
    st.seeds.clamp_std[0] = 2.0; // band [-2, 2]
    st.params.weights = vec![0.0, 0.0, 0.0, 0.0];
    for level in levels() {
        let be = CpuBackend::with_options(1, level).unwrap();
        let mut layer = be.create_layer(&st).unwrap();
        let x = tensor(&be, 1, 4, &HostTensorData::F32(vec![-3.0, -1.0, 1.5, 7.0]));
        let mut y = be.alloc(1, 4, DType::F32).unwrap();
        be.forward(&mut layer, &x, &mut y).unwrap();
        assert_eq!(read(&be, &y), HostTensorData::F32(vec![-2.0, -1.0, 1.5, 2.0]));
        let g = tensor(&be, 1, 4, &HostTensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
        let mut dx = be.alloc(1, 4, DType::F32).unwrap();
        be.backward(&mut layer, &x, &g, &mut dx).unwrap();
        assert_eq!(read(&be, &dx), HostTensorData::F32(vec![0.0, 2.0, 3.0, 0.0]), "{level:?}");
        let pg = be.param_grads(&layer).unwrap();
        assert_eq!(pg.dweights, vec![0.0, 2.0, 3.0, 0.0]);
        // grad_norm uses the raw g.
        assert_eq!(pg.grad_norm, vec![30f32.sqrt()]);
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let mut rng = Gen::new(11);
    let (h, s, rows): (usize, usize, usize) = (64 * 8, 8, 2600); // 512 rows per block: 6 blocks, the last partial
    assert!(rows.div_ceil(crate::layer::rows_per_block(rows, h)) > 4);
    let st = mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let xd = rng.tensor(dtype, rows * h, 2.0);
        let gd = rng.tensor(dtype, rows * h, 2.0);
        for level in levels() {
            let mut results = Vec::new();
            for threads in [1, 2, 3, 5] {
                let be = CpuBackend::with_options(threads, level).unwrap();
                let mut layer = be.create_layer(&st).unwrap();
                let x = tensor(&be, rows, h, &xd);
                let g = tensor(&be, rows, h, &gd);
                let mut y = be.alloc(rows, h, dtype).unwrap();
                let mut dx = be.alloc(rows, h, dtype).unwrap();
                be.forward(&mut layer, &x, &mut y).unwrap();
                be.forward(&mut layer, &x, &mut y).unwrap();
                be.backward(&mut layer, &x, &g, &mut dx).unwrap();
                let acc = telemetry_bits(&be.accumulators(&layer).unwrap());
                let grads = gradient_bits(&be.param_grads(&layer).unwrap());
                results.push((bits(&read(&be, &y)), bits(&read(&be, &dx)), acc, grads));
            }
            for r in &results[1..] {
                assert!(r == &results[0], "{dtype} {level:?}: results differ between thread counts");
            }
        }
    }
}

#[test]
fn device_checksum_follows_uploads() {
    let mut st = mixed_state(32, 4, StabilityMode::strict(), &mut Gen::new(5)).unwrap();
    let be = CpuBackend::with_threads(1).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    assert_eq!(be.checksum(&layer).unwrap(), kasmina_core::checksum::checksum(&st));
    st.params.scales[2] = 0.25;
    st.epoch = 9;
    be.upload(&mut layer, &st, StateChange::Seeds(&[2])).unwrap();
    assert_eq!(be.checksum(&layer).unwrap(), kasmina_core::checksum::checksum(&st));
    assert!(be.upload(&mut layer, &st, StateChange::Seeds(&[4])).is_err());
}

#[test]
fn read_write_copy_round_trip_and_check_shapes() {
    let be = CpuBackend::with_threads(2).unwrap();
    let data = HostTensorData::BF16((0..30).map(|i| bf16::from_f32(i as f32)).collect());
    let t = tensor(&be, 3, 10, &data);
    let mut u = be.alloc(3, 10, DType::BF16).unwrap();
    be.copy(&t, &mut u).unwrap();
    assert_eq!(read(&be, &u), data);
    let mut wrong = be.alloc(3, 10, DType::F16).unwrap();
    assert!(be.copy(&t, &mut wrong).is_err());
    let mut short = vec![0.0f32; 5];
    assert!(be.read(&t, HostDataMut::F32(&mut short)).is_err());
    assert!(be.write(&mut u, HostData::F32(&[1.0; 30])).is_err());
}

#[test]
fn accumulators_add_up_over_calls_and_reset() {
    let st = LayerState::new(LayerConfig::new(16, 2).unwrap()).unwrap();
    let be = CpuBackend::with_threads(1).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let x = tensor(&be, 2, 16, &HostTensorData::F32((0..32).map(|i| i as f32).collect()));
    let mut y = be.alloc(2, 16, DType::F32).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    assert_eq!(be.accumulators(&layer).unwrap().moments[0].count, 32);
    be.reset_accumulators(&mut layer).unwrap();
    assert_eq!(be.accumulators(&layer).unwrap().moments[0], Moments::empty());
}

/// What the kernels read is checked against the host after every upload and before a save:
/// a derived constant or padded row that differs from the host's is a typed error.
#[test]
fn a_device_copy_that_differs_from_the_host_is_an_integrity_error() {
    use kasmina_core::{Error, KasminaLayer};
    let cfg = LayerConfig::new(8, 2).unwrap().with_stability(StabilityMode::strict());
    let mut l = KasminaLayer::new(CpuBackend::with_threads(1).unwrap(), cfg).unwrap();
    l.request_germination(1, 7, BlueprintType::Attention, GraftingStrategy::FixedRamp).unwrap();
    l.transition(1, LifecycleState::Training).unwrap();
    l.set_seed_params(1, &[0.5, -1.0, 2.0, 0.25], 1.5).unwrap();
    l.transition(1, LifecycleState::Grafting).unwrap();
    l.set_alpha(1, 0.5).unwrap();
    assert_eq!(l.device_kernel_checksum().unwrap(), l.kernel_checksum());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    l.save(&path).unwrap();

    // One ulp of ATTENTION's softmax: the state checksum cannot see it, the kernel checksum does.
    let cp = l.device_layer().cp;
    let (_, dev) = l.parts_mut();
    dev.ppad[cp + 2] = f32::from_bits(dev.ppad[cp + 2].to_bits() + 1);
    assert_eq!(l.device_checksum().unwrap(), l.checksum());
    assert_ne!(l.device_kernel_checksum().unwrap(), l.kernel_checksum());
    let saved = std::fs::read(&path).unwrap();
    let err = l.save(&path).unwrap_err();
    assert!(matches!(err, Error::DeviceIntegrity { backend: "cpu", .. }), "{err}");
    assert!(err.to_string().contains("before saving"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), saved, "a refused save leaves the file as it was");

    // An upload checks the seeds it wrote: seed 0 is fine, and re-uploading seed 1 mends it.
    l.request_germination(0, 8, BlueprintType::Conv, GraftingStrategy::FixedRamp).unwrap();
    assert_ne!(l.device_kernel_checksum().unwrap(), l.kernel_checksum());
    l.set_alpha(1, 0.75).unwrap();
    assert_eq!(l.device_kernel_checksum().unwrap(), l.kernel_checksum());

    // A kernel-only constant (1 - a) out of step with the plan it comes from.
    let (_, dev) = l.parts_mut();
    dev.plans[1].oma = 0.0;
    let err = l.device_kernel_checksum().unwrap_err();
    assert!(matches!(err, Error::DeviceIntegrity { .. }) && err.to_string().contains("seed 1"), "{err}");
    assert!(l.save(&path).is_err());
    // The end of an epoch uploads every seed again and leaves the layer whole.
    l.end_epoch(&kasmina_core::EpochSignals::none()).unwrap();
    assert_eq!(l.device_kernel_checksum().unwrap(), l.kernel_checksum());
    l.save(&path).unwrap();
}
