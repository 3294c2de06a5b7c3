//! GPU tests of the Hopper path: TMA maps encoded by the driver for boxes that do
//! not divide the tensor; the Hopper kernels against the f64 reference, bit for bit
//! on identity seeds, deterministic, actually taken (and the portable fallback where
//! TMA cannot take the shape); and, with `KASMINA_BENCH=1`, the portable vs Hopper
//! vs copy table.
//!
//! Without a GPU every test prints why it skipped, unless `KASMINA_REQUIRE_GPU=1`
//! (then it fails); on a GPU that is not compute capability 9.0 the Hopper tests skip.

use kasmina_conformance::reference;
use kasmina_conformance::toolkit::{
    Gen, assert_identity_bits, assert_moments, backend_or_skip, bits, download, from_f64, median_call_ms, median_ms,
    mixed_state, opted_in, reduction_tolerance, rel_l2, telemetry_bits, to_f64, tolerance as tol, upload, widen,
};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{Backend, DType, LayerConfig, LayerState, StabilityMode, StateChange};
use kasmina_cuda::tma::{TensorMapSpec, TmaError};
use kasmina_cuda::{CacheLocation, CudaBackend, CudaOptions, CudaPath, TuneMode};

/// Device 0 with the options the environment sets and `path`, or None (printing why).
fn backend(name: &str, path: CudaPath) -> Option<CudaBackend> {
    let options = CudaOptions::from_env().expect("valid KASMINA_* settings").with_path(path);
    backend_or_skip(name, CudaBackend::with_options(0, options))
}

/// A backend with `path` on a compute capability 9.0 device, or None (printing why).
fn hopper_backend(name: &str, path: CudaPath) -> Option<CudaBackend> {
    let b = backend(name, path)?;
    if b.compute_capability() != (9, 0) {
        println!("skipped {name}: needs compute capability 9.0, device 0 is {:?}", b.compute_capability());
        return None;
    }
    Some(b)
}

/// Forward and backward of a mixed layer against the reference, or with `dormant` of a layer
/// of dormant seeds alone (the identity kernels, including the Hopper path's direct-store ones
/// where C % 8 == 0); returns (y, dx, accumulators).
fn check_against_reference(
    be: &CudaBackend,
    h: usize,
    s: usize,
    b: usize,
    dtype: DType,
    stability: StabilityMode,
    dormant: bool,
) -> (HostTensorData, HostTensorData, kasmina_core::Accumulators) {
    let mut rng = Gen::new(0x9E37_79B9_7F4A_7C15 ^ (h * 31 + s * 7 + b) as u64);
    let st = if dormant {
        LayerState::new(LayerConfig::new(h, s).unwrap().with_stability(stability)).unwrap()
    } else {
        mixed_state(h, s, stability, &mut rng).unwrap()
    };
    let mut xv = rng.normals(b * h, 2.0);
    // A few non-finite inputs (counted apart, never poisoning the statistics).
    for (k, v) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY].iter().enumerate() {
        if b * h > 100 {
            xv[(k * 37 + 11) % (b * h)] = *v;
        }
    }
    let xh = from_f64(dtype, &xv);
    let gh = from_f64(dtype, &rng.normals(b * h, 1.0));
    let (xr, gr) = (to_f64(&xh), to_f64(&gh));
    let what = format!("H={h} S={s} B={b} {dtype} {stability:?} dormant={dormant} path={:?}", be.path());
    // NaN everywhere: every output element must be written.
    let poison = from_f64(dtype, &vec![f64::NAN; b * h]);

    let mut layer = be.create_layer(&st).unwrap();
    be.upload(&mut layer, &st, StateChange::All).unwrap();
    let x = upload(be, &xh, b, h).unwrap();
    let g = upload(be, &gh, b, h).unwrap();
    let mut y = upload(be, &poison, b, h).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    let yh = download(be, &y).unwrap();

    let fr = reference::forward(&st, &xr, b);
    assert_identity_bits(&st, &yh, &xh, &format!("{what}: y"));
    let yf = to_f64(&yh);
    for (i, (a, r)) in yf.iter().zip(&fr.y).enumerate() {
        assert!(a.is_finite() == r.is_finite() || (a.is_nan() && r.is_nan()), "{what}: y[{i}] = {a} vs {r}");
    }
    let fin = |v: &[f64], r: &[f64]| -> (Vec<f64>, Vec<f64>) {
        v.iter().zip(r).filter(|(_, b)| b.is_finite()).map(|(a, b)| (*a, *b)).unzip()
    };
    let (a, r) = fin(&yf, &fr.y);
    let err = rel_l2(&a, &r);
    assert!(err <= tol(dtype), "{what}: forward error {err:e}");

    assert_moments(&be.accumulators(&layer).unwrap().moments, &fr.moments, 1e-4, &what);

    let mut dx = upload(be, &poison, b, h).unwrap();
    be.backward(&mut layer, &x, &g, &mut dx).unwrap();
    let dxh = download(be, &dx).unwrap();
    let br = reference::backward(&st, &xr, &gr, b);
    assert_identity_bits(&st, &dxh, &gh, &format!("{what}: dx"));
    let dxf = to_f64(&dxh);
    let (a, r) = fin(&dxf, &br.dx);
    let err = rel_l2(&a, &r);
    assert!(err <= tol(dtype), "{what}: dx error {err:e}");
    let pg = be.param_grads(&layer).unwrap();
    let (dw, ds) = (widen(&pg.dweights), widen(&pg.dscales));
    let sum_tol = reduction_tolerance(b * (h / s));
    if br.dweights.iter().chain(&br.dscales).all(|v| v.is_finite()) {
        let err = rel_l2(&dw, &br.dweights);
        assert!(err <= sum_tol, "{what}: dweights error {err:e}");
        let err = rel_l2(&ds, &br.dscales);
        assert!(err <= sum_tol, "{what}: dscales error {err:e}");
    }
    let acc = be.accumulators(&layer).unwrap();
    (yh, dxh, acc)
}

#[test]
fn tma_maps_encode_for_boxes_that_do_not_divide_the_tensor() {
    let Some(be) = backend("tma_maps_encode_for_boxes_that_do_not_divide_the_tensor", CudaPath::Auto) else {
        return;
    };
    if be.compute_capability().0 < 9 {
        println!("skipped: TMA needs compute capability 9.0 or later, device 0 is {:?}", be.compute_capability());
        return;
    }
    for (dtype, rows, cols, br, bc) in [
        (DType::F32, 1000usize, 8200usize, 16u32, 256u32),
        (DType::BF16, 7, 776, 32, 256),
        (DType::F16, 3, 8, 64, 128),
        (DType::F32, 1, 4, 256, 4),
        (DType::BF16, 16384, 8160, 16, 256),
    ] {
        let t = be.alloc(rows, cols, dtype).unwrap();
        let m = be.tensor_map(&t, br, bc).unwrap_or_else(|e| panic!("{dtype} [{rows}, {cols}] box [{br}, {bc}]: {e}"));
        assert!(m.as_words().iter().any(|w| *w != 0), "an encoded map is not all zeros");
    }
    // Shapes TMA cannot take are refused before the driver is called.
    let t = be.alloc(10, 771, DType::F32).unwrap();
    let e = be.tensor_map(&t, 8, 64).unwrap_err();
    assert!(e.to_string().contains("multiple of 16"), "{e}");
    assert!(matches!(TensorMapSpec::dense(DType::F32, 10, 64, 8, 6).validate(0), Err(TmaError::InnerBox(24))));
}

#[test]
fn hopper_kernels_match_the_reference_and_are_taken() {
    let Some(be) = hopper_backend("hopper_kernels_match_the_reference_and_are_taken", CudaPath::Hopper) else {
        return;
    };
    println!("{}", be.hopper_resources(DType::F32, 8192).unwrap());
    println!("{}", be.hopper_resources(DType::BF16, 8192).unwrap());
    // KASMINA_HOPPER_QUICK=1 (for compute-sanitizer runs): two shapes, f32 and bf16, strict mode.
    let quick = std::env::var("KASMINA_HOPPER_QUICK").is_ok_and(|v| v == "1");
    let dtypes: &[DType] = if quick { &[DType::F32, DType::BF16] } else { &DType::ALL };
    let stabilities =
        if quick { vec![StabilityMode::strict()] } else { vec![StabilityMode::Off, StabilityMode::strict()] };
    for &dtype in dtypes {
        for &stability in &stabilities {
            // Tiles and boxes that do not divide the tensor (H = 8200, B = 300; H = 776), seeds
            // straddling tiles (C = 200, 97 * 8), C = 1 / 2 (CONV taps beyond the chunk),
            // a single narrow tile (H = 16, 24), one big seed.
            for (h, s, b) in [
                (768, 12, 67),
                (8200, 41, 300),
                (776, 8, 129),
                (64, 16, 33),
                (16, 16, 250),
                (24, 12, 9),
                (4096, 1, 37),
                (48, 24, 5),
            ] {
                if be.hopper_unsupported(dtype, b, h).is_some() || (quick && ![776, 8200].contains(&h)) {
                    continue;
                }
                for dormant in [false, true] {
                    check_against_reference(&be, h, s, b, dtype, stability, dormant);
                    let what = format!("H={h} {dtype} dormant={dormant}");
                    assert_eq!(be.last_path(false), Some(CudaPath::Hopper), "{what}: forward did not take Hopper");
                    assert_eq!(be.last_path(true), Some(CudaPath::Hopper), "{what}: backward did not take Hopper");
                }
            }
        }
    }
}

#[test]
fn hopper_results_are_deterministic_and_fall_back_where_tma_cannot() {
    let Some(be) = hopper_backend("hopper_results_are_deterministic", CudaPath::Hopper) else { return };
    for dtype in [DType::F32, DType::BF16] {
        let (y1, dx1, a1) = check_against_reference(&be, 8200, 41, 1000, dtype, StabilityMode::Off, false);
        let (y2, dx2, a2) = check_against_reference(&be, 8200, 41, 1000, dtype, StabilityMode::Off, false);
        assert_eq!(be.last_path(false), Some(CudaPath::Hopper));
        for i in 0..1000 * 8200 {
            assert_eq!(bits(&y1, i), bits(&y2, i), "{dtype}: y[{i}] differs between runs");
            assert_eq!(bits(&dx1, i), bits(&dx2, i), "{dtype}: dx[{i}] differs between runs");
        }
        assert_eq!(telemetry_bits(&a1), telemetry_bits(&a2), "{dtype}: telemetry differs between runs");
    }
    // A 771-column f32 row is 3084 bytes: TMA cannot take it, the portable kernels run.
    check_against_reference(&be, 771, 3, 19, DType::F32, StabilityMode::Off, false);
    assert_eq!(be.last_path(false), Some(CudaPath::Portable));
    assert_eq!(be.last_path(true), Some(CudaPath::Portable));
    // Identity output bits equal the portable path's bits (both copy).
    let pb = backend("portable", CudaPath::Portable).unwrap();
    let (yp, dxp, _) = check_against_reference(&pb, 768, 12, 67, DType::BF16, StabilityMode::Off, false);
    let (yh, dxh, _) = check_against_reference(&be, 768, 12, 67, DType::BF16, StabilityMode::Off, false);
    assert_eq!(be.last_path(false), Some(CudaPath::Hopper));
    let mut same = 0usize;
    for i in 0..67 * 768 {
        same += (bits(&yp, i) == bits(&yh, i) && bits(&dxp, i) == bits(&dxh, i)) as usize;
    }
    println!("hopper vs portable: {same} of {} elements bit-identical in y and dx", 67 * 768);
}

/// Tensor maps are encoded once per (address, shape, box) and reused by later calls;
/// a reused map gives the same results as a fresh one.
#[test]
fn tensor_maps_are_encoded_once_per_tensor() {
    let Some(_) = hopper_backend("tensor_maps_are_encoded_once_per_tensor", CudaPath::Hopper) else { return };
    let be = CudaBackend::with_options(
        0,
        CudaOptions::default()
            .with_autotune(TuneMode::Off)
            .with_autotune_cache(CacheLocation::Off)
            .with_path(CudaPath::Hopper),
    )
    .unwrap();
    let (b, h, s) = (256, 1024, 8);
    let mut rng = Gen::new(11);
    let st = mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let x = upload(&be, &from_f64(DType::F32, &rng.normals(b * h, 1.0)), b, h).unwrap();
    let mut y = be.alloc(b, h, DType::F32).unwrap();
    be.forward(&mut layer, &x, &mut y).unwrap();
    let y1 = download(&be, &y).unwrap();
    assert_eq!(be.last_path(false), Some(CudaPath::Hopper));
    assert_eq!(be.hopper_cached_maps(), 2, "x and y");
    be.forward(&mut layer, &x, &mut y).unwrap();
    let y2 = download(&be, &y).unwrap();
    assert_eq!(be.hopper_cached_maps(), 2, "the second call reuses both maps");
    for i in 0..b * h {
        assert_eq!(bits(&y1, i), bits(&y2, i), "y[{i}] differs with the cached maps");
    }
    let mut dx = be.alloc(b, h, DType::F32).unwrap();
    be.backward(&mut layer, &x, &y, &mut dx).unwrap();
    be.synchronize().unwrap();
    assert_eq!(be.last_path(true), Some(CudaPath::Hopper));
    assert_eq!(be.hopper_cached_maps(), 3, "x and y (as G) reused, dx new");
}

/// Auto's family picked for a dormant layer is never reused for a mixed layer of the same
/// shape: each kernel set gets its own timed choice, recorded in the cache file, and the
/// portable and Hopper entries (hashed with different sources) must not evict each other from
/// the file; only a re-tuned operation drops its stale entries.
/// Right by construction: whatever the operation names are, the four calls (forward and
/// backward of a dormant and of a mixed layer) run four different kernel sets, so four
/// distinct family keys must be in the file, and a second backend must find every key there.
#[test]
fn auto_times_dormant_and_mixed_layers_apart() {
    let Some(_) = hopper_backend("auto_times_dormant_and_mixed_layers_apart", CudaPath::Auto) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("autotune.json");
    let (b, h, s) = (512, 1024, 8);
    let mut rng = Gen::new(5);
    let xh = from_f64(DType::F32, &rng.normals(b * h, 1.0));
    let dormant = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
    let mixed = mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap();
    let run = || {
        let be = CudaBackend::with_options(
            0,
            CudaOptions::default().with_autotune_cache(CacheLocation::Path(path.clone())).with_path(CudaPath::Auto),
        )
        .unwrap();
        let mut families = Vec::new();
        for st in [&dormant, &mixed] {
            let mut layer = be.create_layer(st).unwrap();
            let x = upload(&be, &xh, b, h).unwrap();
            let mut y = be.alloc(b, h, DType::F32).unwrap();
            be.forward(&mut layer, &x, &mut y).unwrap();
            be.backward(&mut layer, &x, &x, &mut y).unwrap();
            be.synchronize().unwrap();
            families.push((be.last_path(false), be.last_path(true)));
        }
        (be.tuned_keys(), families)
    };
    let (first, families) = run();
    let text = std::fs::read_to_string(&path).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&String> = file["entries"].as_object().unwrap().keys().collect();
    // Key: device|smXY|op|dtype|bucket|hash; the op is the fourth field from the end.
    let ops: std::collections::BTreeSet<&str> = keys.iter().map(|k| k.rsplit('|').nth(3).unwrap()).collect();
    let picks: Vec<&&str> = ops.iter().filter(|o| o.starts_with("path-")).collect();
    println!("auto picks in the cache file: {picks:?}; families {families:?}");
    assert_eq!(picks.len(), 4, "forward and backward of the dormant and of the mixed layer, each timed:\n{text}");
    assert_eq!(picks.iter().filter(|o| o.starts_with("path-forward")).count(), 2, "{picks:?}");
    assert_eq!(keys.len(), first, "every key tuned is in the file:\n{text}");
    let (again, families2) = run();
    assert_eq!(again, 0, "a second backend finds every key (family picks included) in the file:\n{text}");
    assert_eq!(families, families2, "and runs the same families");
}

/// `KASMINA_BENCH=1`: portable vs Hopper vs the device copy, forward and backward, f32 and
/// bf16, dormant and mixed seeds, and which one the autotuner (Auto) picks.
#[test]
fn path_comparison_report() {
    if !opted_in("KASMINA_BENCH", "print the portable vs Hopper table") {
        return;
    }
    let Some(hb) = hopper_backend("path_comparison_report", CudaPath::Hopper) else { return };
    let pb = backend("portable", CudaPath::Portable).unwrap();
    let ab = backend("auto", CudaPath::Auto).unwrap();
    let shapes: Vec<(usize, usize, usize)> = match std::env::var("KASMINA_HOPPER_SHAPES").as_deref() {
        Ok("quick") => vec![(16384, 8192, 128), (32, 768, 16)],
        _ => vec![
            (16384, 8192, 128),
            (32, 768, 16),
            (16384, 8192, 512),
            (16384, 8160, 170),
            (16384, 8192, 16),
            (16384, 8192, 2),
        ],
    };
    println!(
        "| B | H | C | dtype | mix | op | copy GB/s | portable GB/s | hopper GB/s | hopper/portable | auto picks | auto GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (b, h, s) in shapes {
        let reps = if b * h > 1 << 20 { 20 } else { 200 };
        for dtype in [DType::F32, DType::BF16] {
            let n = b * h;
            let mut rng = Gen::new(3);
            let xh = from_f64(dtype, &rng.normals(n, 1.0));
            let bytes = (n * dtype.size_bytes()) as f64;
            let (x, mut y) = (upload(&pb, &xh, b, h).unwrap(), pb.alloc(b, h, dtype).unwrap());
            let copy_gbps = 2.0 * bytes / median_ms(&pb, reps, &mut || pb.copy(&x, &mut y)).unwrap() / 1e6;
            drop((x, y));
            for mix in ["dormant", "mixed"] {
                let st = if mix == "dormant" {
                    LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap()
                } else {
                    mixed_state(h, s, StabilityMode::Off, &mut rng).unwrap()
                };
                for (op, traffic) in [("forward", 2.0), ("backward", 3.0)] {
                    let mut gbps = Vec::new();
                    let mut pick = String::new();
                    for be in [&pb, &hb, &ab] {
                        let mut layer = be.create_layer(&st).unwrap();
                        let x = upload(be, &xh, b, h).unwrap();
                        let g = upload(be, &xh, b, h).unwrap();
                        let mut y = be.alloc(b, h, dtype).unwrap();
                        let ms = median_call_ms(be, &mut layer, (&x, &g), &mut y, op == "backward", reps).unwrap();
                        gbps.push(traffic * bytes / ms / 1e6);
                        if be.path() == CudaPath::Auto {
                            pick = be.last_path(op == "backward").map(|p| p.name()).unwrap_or("-").to_string();
                        }
                    }
                    println!(
                        "| {b} | {h} | {} | {dtype} | {mix} | {op} | {copy_gbps:.0} | {:.0} ({:.2}) | {:.0} ({:.2}) | {:.2} | {pick} | {:.0} ({:.2}) |",
                        h / s,
                        gbps[0],
                        gbps[0] / copy_gbps,
                        gbps[1],
                        gbps[1] / copy_gbps,
                        gbps[1] / gbps[0],
                        gbps[2],
                        gbps[2] / copy_gbps
                    );
                    // Auto times both families: it must not pick the clearly slower one.
                    let (slow, fast) = if pick == "hopper" { (gbps[1], gbps[0]) } else { (gbps[0], gbps[1]) };
                    if slow < 0.8 * fast {
                        println!("  ^ WARNING: auto picked {pick}, {:.2}x the other family's throughput", slow / fast);
                    }
                }
            }
        }
    }
}
