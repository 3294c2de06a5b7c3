//! The `kasmina` binary on the CPU backend, run as a user would run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kasmina::core::lifecycle::TransitionReason;
use kasmina::core::snapshot;
use kasmina::{BlueprintType, DType, GraftingStrategy, HostTensorData, LayerConfig, LayerState, LifecycleState};
use kasmina_cli::files::{npy_bytes, read_npy_matrix, read_param_grads};
use kasmina_conformance::toolkit::rel_l2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn kasmina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kasmina")).args(args).output().expect("the kasmina binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o));
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A layer with seeds in every forward mode and all four blueprint types,
/// non-trivial parameters: H = 24, S = 6, C = 4.
fn mixed_state() -> LayerState {
    use LifecycleState::*;
    let mut st = LayerState::new(LayerConfig::new(24, 6).unwrap()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let plan = [
        (1, BlueprintType::Residual, Grafting),
        (2, BlueprintType::Attention, Evaluating),
        (3, BlueprintType::Mlp, Fossilized),
        (4, BlueprintType::Conv, FineTuning),
        (5, BlueprintType::Mlp, Training),
    ];
    for (seed, ty, target) in plan {
        st.germinate(seed, 1, ty, GraftingStrategy::FixedRamp).unwrap();
        let path = [Training, Grafting, Stabilization, Evaluating, FineTuning, Fossilized];
        for to in path {
            if st.seeds.lifecycle[seed] == target {
                break;
            }
            st.transition(seed, to, TransitionReason::Requested).unwrap();
        }
        assert_eq!(st.seeds.lifecycle[seed], target);
        for w in st.params.seed_weights_mut(seed) {
            *w = rng.random_range(-1.0..1.0);
        }
        st.params.scales[seed] = rng.random_range(0.5..1.5);
        if matches!(target, Grafting | Evaluating | FineTuning) {
            st.seeds.alpha[seed] = 0.375;
        }
    }
    st
}

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn write_npy(path: &Path, data: &HostTensorData, rows: usize, cols: usize) {
    std::fs::write(path, npy_bytes(data, rows, cols).unwrap()).unwrap();
}

/// Flips the lowest bit of the first byte of tensor `name` in a snapshot: still
/// a valid value of its type, so only the checksum can catch it.
fn flip_bit_in_tensor(path: &Path, name: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let (header, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let (start, _) = meta.info(name).unwrap().data_offsets;
    bytes[8 + header + start] ^= 0x01;
    bytes
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Self { _dir: dir, root }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

#[test]
fn demo_fossilizes_a_seed_and_ends_below_its_no_germination_run() {
    let f = Files::new();
    let (json, snap) = (f.path("demo.json"), f.path("demo.safetensors"));
    let o = kasmina(&["demo", "--quick", "--json", p(&json), "--snapshot", p(&snap)]);
    ok(&o);
    let out = stdout(&o);
    assert!(out.contains("FOSSIL"), "{out}");
    // Progress bars hide when stderr is not a terminal.
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert!(out.contains("with germination off"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let fossilized: Vec<u64> = v["fossilized"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert!(!fossilized.is_empty(), "no seed fossilized: {v}");
    let (loss, baseline) = (v["final_loss"].as_f64().unwrap(), v["baseline_loss"].as_f64().unwrap());
    assert!(loss < baseline, "final loss {loss} is not below the no-germination loss {baseline}");
    // The snapshot verifies and holds the fossilized seeds.
    let st = snapshot::load(&snap).unwrap();
    for i in fossilized {
        assert_eq!(st.seeds.lifecycle[i as usize], LifecycleState::Fossilized);
    }
    // The seed went through the whole lifecycle in order (after any germination the probes
    // cancelled for a better blueprint type).
    let events = v["events"].as_array().unwrap();
    let seq: Vec<&str> =
        events.iter().filter(|e| e["seed_id"] == v["fossilized"][0]).map(|e| e["to"].as_str().unwrap()).collect();
    let tail = ["GERMINATED", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING", "FOSSILIZED"];
    assert!(seq.ends_with(&tail), "{seq:?}");
    // No blueprint value was set by hand: every grafting decision names the probes' losses.
    let decisions: Vec<&serde_json::Value> =
        v["history"].as_array().unwrap().iter().flat_map(|r| r["decisions"].as_array().unwrap()).collect();
    assert!(
        decisions.iter().filter(|d| d["to"] == "GRAFTING").all(|d| d["reason"].as_str().unwrap().contains("fits best"))
    );
}

#[test]
fn demo_grows_the_seeds_the_target_needs_and_halves_the_loss() {
    let f = Files::new();
    let (json, snap) = (f.path("demo.json"), f.path("demo.safetensors"));
    ok(&kasmina(&["demo", "--json", p(&json), "--snapshot", p(&snap)]));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (loss, baseline) = (v["final_loss"].as_f64().unwrap(), v["baseline_loss"].as_f64().unwrap());
    assert!(loss <= 0.5 * baseline, "final loss {loss} is not half the no-germination loss {baseline}");
    // The chunks where the target bends are the ones that grew, and the probes tried more than
    // one blueprint type (a seed cancelled for a better one).
    let fossilized: Vec<u64> = v["fossilized"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(fossilized, [1, 4, 6]);
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["to"] == "CANCELLED"), "no seed changed its blueprint type");
    // Two grafting strategies, driven by real signals.
    let st = snapshot::load(&snap).unwrap();
    let strategies: std::collections::BTreeSet<_> =
        fossilized.iter().map(|i| st.seeds.grafting_strategy[*i as usize]).collect();
    assert!(strategies.len() >= 2, "{strategies:?}");
}

#[test]
fn demo_without_probes_culls_seeds_that_overfit() {
    let f = Files::new();
    let (json, snap) = (f.path("demo.json"), f.path("demo.safetensors"));
    let o = kasmina(&["demo", "--no-probes", "--samples", "256", "--json", p(&json), "--snapshot", p(&snap)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let culled = v["culled"].as_array().unwrap();
    assert!(!culled.is_empty(), "no seed was culled: {}", stdout(&o));
    assert!(stdout(&o).contains("-> CULLED: held-out"), "{}", stdout(&o));
}

#[test]
fn demo_is_deterministic() {
    let f = Files::new();
    let run = |name: &str| {
        let json = f.path(name);
        let snap = f.path(&format!("{name}.safetensors"));
        ok(&kasmina(&["demo", "--quick", "--epochs", "8", "--json", p(&json), "--snapshot", p(&snap)]));
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        // Snapshot bytes may differ (the metadata map's order); the state they hold may not.
        (v["final_loss"].as_f64().unwrap(), v["baseline_loss"].as_f64().unwrap(), snapshot::load(&snap).unwrap())
    };
    assert_eq!(run("a.json"), run("b.json"));
}

#[test]
fn forward_on_files_matches_the_f64_reference() {
    let f = Files::new();
    let st = mixed_state();
    let (rows, h, c) = (13, 24, 4);
    snapshot::save(&st, f.path("s.safetensors")).unwrap();
    let x = random_matrix(rows, h, 11);
    write_npy(&f.path("x.npy"), &HostTensorData::F32(x.clone()), rows, h);
    let o = kasmina(&[
        "forward",
        "--state",
        p(&f.path("s.safetensors")),
        "--input",
        p(&f.path("x.npy")),
        "--output",
        p(&f.path("y.npy")),
        "--telemetry",
        p(&f.path("t.json")),
    ]);
    ok(&o);
    let y = read_npy_matrix(&f.path("y.npy"), h).unwrap();
    assert_eq!((y.rows, y.cols), (rows, h));
    let y = y.data.to_f32();
    let x64: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    let want = kasmina_conformance::reference::forward(&st, &x64, rows);
    let got: Vec<f64> = y.iter().map(|v| *v as f64).collect();
    assert!(rel_l2(&got, &want.y) <= 1e-5, "relative L2 error {}", rel_l2(&got, &want.y));
    // Identity seeds (0 DORMANT, 5 TRAINING) are bit for bit.
    for r in 0..rows {
        for seed in [0, 5] {
            for j in seed * c..(seed + 1) * c {
                assert_eq!(y[r * h + j].to_bits(), x[r * h + j].to_bits());
            }
        }
    }
    // The telemetry file: one entry per seed, counting every element of its chunk.
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f.path("t.json")).unwrap()).unwrap();
    let seeds = t["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 6);
    for (i, s) in seeds.iter().enumerate() {
        assert_eq!(s["count"].as_u64().unwrap(), (rows * c) as u64);
        // The mean is reported in f16 (SPEC 5.2's normal tier).
        let mean = s["mean"].as_f64().unwrap();
        assert!((mean - want.moments[i].mean).abs() < 2e-3, "seed {i}: mean {mean} vs {}", want.moments[i].mean);
    }
}

#[test]
fn forward_in_f16_matches_the_reference_fed_the_rounded_input() {
    let f = Files::new();
    let st = mixed_state();
    let (rows, h) = (9, 24);
    snapshot::save(&st, f.path("s.safetensors")).unwrap();
    let x = HostTensorData::from_f32(DType::F16, &random_matrix(rows, h, 5));
    write_npy(&f.path("x.npy"), &x, rows, h);
    ok(&kasmina(&[
        "forward",
        "--state",
        p(&f.path("s.safetensors")),
        "--input",
        p(&f.path("x.npy")),
        "--output",
        p(&f.path("y.npy")),
    ]));
    let y = read_npy_matrix(&f.path("y.npy"), h).unwrap();
    assert_eq!(y.data.view().dtype(), DType::F16, "f16 in gives f16 out");
    let x64: Vec<f64> = x.to_f32().iter().map(|v| *v as f64).collect();
    let want = kasmina_conformance::reference::forward(&st, &x64, rows);
    let got: Vec<f64> = y.data.to_f32().iter().map(|v| *v as f64).collect();
    assert!(rel_l2(&got, &want.y) <= 2e-3, "relative L2 error {}", rel_l2(&got, &want.y));
}

#[test]
fn forward_in_bf16_rounds_the_input_and_writes_f32() {
    let f = Files::new();
    let st = mixed_state();
    let (rows, h) = (7, 24);
    snapshot::save(&st, f.path("s.safetensors")).unwrap();
    let x = random_matrix(rows, h, 8);
    write_npy(&f.path("x.npy"), &HostTensorData::F32(x.clone()), rows, h);
    ok(&kasmina(&[
        "forward",
        "--state",
        p(&f.path("s.safetensors")),
        "--input",
        p(&f.path("x.npy")),
        "--output",
        p(&f.path("y.npy")),
        "--dtype",
        "bf16",
    ]));
    let y = read_npy_matrix(&f.path("y.npy"), h).unwrap();
    assert_eq!(y.data.view().dtype(), DType::F32, "NumPy has no bfloat16: bf16 is written widened to f32");
    let rounded = HostTensorData::from_f32(DType::BF16, &x).to_f32();
    let x64: Vec<f64> = rounded.iter().map(|v| *v as f64).collect();
    let want = kasmina_conformance::reference::forward(&st, &x64, rows);
    let got: Vec<f64> = y.data.to_f32().iter().map(|v| *v as f64).collect();
    assert!(rel_l2(&got, &want.y) <= 1e-2, "relative L2 error {}", rel_l2(&got, &want.y));
    // Every value is exactly a bf16.
    assert!(y.data.to_f32().iter().all(|v| half::bf16::from_f32(*v).to_f32().to_bits() == v.to_bits()));
}

#[test]
fn backward_on_files_matches_the_f64_reference() {
    let f = Files::new();
    let st = mixed_state();
    let (rows, h, s, c) = (17, 24, 6, 4);
    snapshot::save(&st, f.path("s.safetensors")).unwrap();
    let x = random_matrix(rows, h, 21);
    let g = random_matrix(rows, h, 22);
    write_npy(&f.path("x.npy"), &HostTensorData::F32(x.clone()), rows, h);
    write_npy(&f.path("g.npy"), &HostTensorData::F32(g.clone()), rows, h);
    ok(&kasmina(&[
        "backward",
        "--state",
        p(&f.path("s.safetensors")),
        "--input",
        p(&f.path("x.npy")),
        "--grad",
        p(&f.path("g.npy")),
        "--dx",
        p(&f.path("dx.npy")),
        "--param-grads",
        p(&f.path("pg.safetensors")),
    ]));
    let x64: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    let g64: Vec<f64> = g.iter().map(|v| *v as f64).collect();
    let want = kasmina_conformance::reference::backward(&st, &x64, &g64, rows);
    let dx: Vec<f64> = read_npy_matrix(&f.path("dx.npy"), h).unwrap().data.to_f32().iter().map(|v| *v as f64).collect();
    assert!(rel_l2(&dx, &want.dx) <= 1e-5, "dx relative L2 error {}", rel_l2(&dx, &want.dx));
    let pg = read_param_grads(&f.path("pg.safetensors")).unwrap();
    assert_eq!((pg.dweights.len(), pg.dscales.len(), pg.grad_norm.len()), (s * c, s, s));
    let to64 = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    assert!(rel_l2(&to64(&pg.dweights), &want.dweights) <= 1e-5, "dweights");
    assert!(rel_l2(&to64(&pg.dscales), &want.dscales) <= 1e-5, "dscales");
    let norms: Vec<f64> = want.grad_sq.iter().map(|v| v.sqrt()).collect();
    assert!(rel_l2(&to64(&pg.grad_norm), &norms) <= 1e-5, "grad_norm");
}

/// Runs `args`, expecting failure with `needle` in the message, and checks
/// that `guarded` files kept their bytes.
fn fails_and_writes_nothing(args: &[&str], needle: &str, guarded: &[&Path]) {
    let before: Vec<Vec<u8>> = guarded.iter().map(|g| std::fs::read(g).unwrap()).collect();
    let o = kasmina(args);
    assert!(!o.status.success(), "expected failure: {args:?}\n{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("error:") && err.contains(needle), "message lacks '{needle}': {err}");
    for (g, b) in guarded.iter().zip(before) {
        assert_eq!(std::fs::read(g).unwrap(), b, "{} changed", g.display());
    }
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_existing_files_untouched() {
    let f = Files::new();
    let st = mixed_state();
    let (rows, h) = (4, 24);
    let state = f.path("s.safetensors");
    snapshot::save(&st, &state).unwrap();
    write_npy(&f.path("x.npy"), &HostTensorData::F32(random_matrix(rows, h, 1)), rows, h);
    write_npy(&f.path("g.npy"), &HostTensorData::F32(random_matrix(rows, h, 2)), rows, h);
    let (y, t, dx, pg) = (f.path("y.npy"), f.path("t.json"), f.path("dx.npy"), f.path("pg.safetensors"));
    for out in [&y, &t, &dx, &pg] {
        std::fs::write(out, b"previous contents").unwrap();
    }
    let fwd = |state: &Path, input: &Path| {
        vec![
            "forward".to_string(),
            "--state".into(),
            p(state).into(),
            "--input".into(),
            p(input).into(),
            "--output".into(),
            p(&y).into(),
            "--telemetry".into(),
            p(&t).into(),
        ]
    };
    let run = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        fails_and_writes_nothing(&a, needle, &[&y, &t, &dx, &pg]);
    };

    // A state that fails its checksum: one flipped bit in the blueprint weights.
    let bytes = flip_bit_in_tensor(&state, "weights");
    let corrupt = f.path("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes).unwrap();
    run(fwd(&corrupt, &f.path("x.npy")), "checksum");

    // An input of the wrong width.
    write_npy(&f.path("narrow.npy"), &HostTensorData::F32(vec![0.5; 4 * 23]), 4, 23);
    run(fwd(&state, &f.path("narrow.npy")), "expected width 24");

    // A malformed NPY: garbage, and a truncated file.
    std::fs::write(f.path("garbage.npy"), b"\x93NUMPY this is not an npy file").unwrap();
    run(fwd(&state, &f.path("garbage.npy")), "garbage.npy");
    let mut trunc = std::fs::read(f.path("x.npy")).unwrap();
    trunc.truncate(trunc.len() - 7);
    std::fs::write(f.path("trunc.npy"), &trunc).unwrap();
    run(fwd(&state, &f.path("trunc.npy")), "trunc.npy");

    // A missing input file.
    run(fwd(&state, &f.path("missing.npy")), "missing.npy");

    // Shapes that overflow (the element or byte count wraps) or that need more data than the
    // file holds: refused before anything is read or written, never a panic.
    let npy_header = |shape: &str| {
        let mut h = format!("{{'descr': '<f4', 'fortran_order': True, 'shape': {shape}, }}");
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0u8; 32]);
        b
    };
    for (i, shape) in ["(2305843009213693953, 24)", "(768614336404564651, 24)", "(4096, 24)"].iter().enumerate() {
        let path = f.path(&format!("huge{i}.npy"));
        std::fs::write(&path, npy_header(shape)).unwrap();
        let o = kasmina(&fwd(&state, &path).iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{shape}: {}", stderr(&o));
        run(fwd(&state, &path), &format!("huge{i}.npy"));
    }

    // Backward: a gradient whose rows differ from the input's, and a corrupt state.
    write_npy(&f.path("g3.npy"), &HostTensorData::F32(vec![0.5; 3 * h]), 3, h);
    let bwd = |state: &Path, grad: &Path| {
        vec![
            "backward".to_string(),
            "--state".into(),
            p(state).into(),
            "--input".into(),
            p(&f.path("x.npy")).into(),
            "--grad".into(),
            p(grad).into(),
            "--dx".into(),
            p(&dx).into(),
            "--param-grads".into(),
            p(&pg).into(),
        ]
    };
    // An output naming the same file as another output or as an input: refused before any work,
    // every file as it was (the state and the input included).
    let same = |mut args: Vec<String>, flag: &str, path: &Path| {
        let i = args.iter().position(|a| a == flag).map(|i| i + 1);
        match i {
            Some(i) => args[i] = p(path).to_string(),
            None => args.extend([flag.to_string(), p(path).to_string()]),
        }
        args
    };
    let guarded = [&y, &t, &dx, &pg, &state, &f.path("x.npy"), &f.path("g.npy")];
    let clobber = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let g: Vec<&Path> = guarded.iter().map(|p| p.as_path()).collect();
        fails_and_writes_nothing(&a, needle, &g);
    };
    clobber(same(fwd(&state, &f.path("x.npy")), "--telemetry", &y), "--telemetry and --output");
    clobber(same(fwd(&state, &f.path("x.npy")), "--output", &state), "--output and --state");
    clobber(same(fwd(&state, &f.path("x.npy")), "--output", &f.path("x.npy")), "--output and --input");
    // The same file under another spelling is still the same file.
    let dotted = f.path(".").join("y.npy");
    clobber(same(fwd(&state, &f.path("x.npy")), "--telemetry", &dotted), "--telemetry and --output");
    clobber(same(bwd(&state, &f.path("g.npy")), "--param-grads", &dx), "--param-grads and --dx");
    clobber(same(bwd(&state, &f.path("g.npy")), "--dx", &f.path("g.npy")), "--dx and --grad");

    // An output that cannot be written (its folder is missing, or is a file): the command fails
    // and writes none of its outputs, not even the ones it could have written.
    let nowhere = f.path("missing-folder").join("t.json");
    clobber(same(fwd(&state, &f.path("x.npy")), "--telemetry", &nowhere), "missing-folder");
    let under_a_file = f.path("x.npy").join("pg.safetensors");
    clobber(same(bwd(&state, &f.path("g.npy")), "--param-grads", &under_a_file), "pg.safetensors");
    let leftovers: Vec<_> = std::fs::read_dir(f.path("."))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");

    run(bwd(&state, &f.path("g3.npy")), "rows");
    run(bwd(&corrupt, &f.path("g.npy")), "checksum");
    run(bwd(&state, &f.path("narrow.npy")), "expected width 24");
}

#[test]
fn state_commands_create_inspect_change_and_verify_a_snapshot() {
    let f = Files::new();
    let s = f.path("s.safetensors");
    ok(&kasmina(&["state", "new", p(&s), "--hidden", "32", "--seeds", "4"]));
    // It does not overwrite without --force.
    let o = kasmina(&["state", "new", p(&s), "--hidden", "32", "--seeds", "4"]);
    assert!(!o.status.success() && stderr(&o).contains("--force"));
    // H not a multiple of S is a clear error.
    let o = kasmina(&["state", "new", p(&f.path("bad.safetensors")), "--hidden", "30", "--seeds", "4"]);
    assert!(!o.status.success() && stderr(&o).contains("multiple"), "{}", stderr(&o));
    assert!(!f.path("bad.safetensors").exists());

    ok(&kasmina(&["state", "germinate", p(&s), "--seed", "2", "--type", "conv", "--strategy", "drift-controlled"]));
    ok(&kasmina(&["state", "transition", p(&s), "--seed", "2", "--to", "training"]));
    let st = snapshot::load(&s).unwrap();
    assert_eq!(st.seeds.lifecycle[2], LifecycleState::Training);
    assert_eq!(st.seeds.blueprint_type[2], BlueprintType::Conv);
    assert_eq!(st.seeds.grafting_strategy[2], GraftingStrategy::DriftControlled);

    // An illegal transition is refused and changes nothing.
    let before = std::fs::read(&s).unwrap();
    let o = kasmina(&["state", "transition", p(&s), "--seed", "2", "--to", "fossilized"]);
    assert!(!o.status.success() && stderr(&o).contains("not a legal transition"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&s).unwrap(), before);
    let o = kasmina(&["state", "germinate", p(&s), "--seed", "9"]);
    assert!(!o.status.success() && stderr(&o).contains("out of range"), "{}", stderr(&o));

    let o = kasmina(&["state", "inspect", p(&s)]);
    ok(&o);
    let text = stdout(&o);
    assert!(text.contains("TRAINING") && text.contains("CONV") && text.contains("DORMANT"), "{text}");
    let o = kasmina(&["state", "inspect", p(&s), "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["hidden_dim"], 32);
    assert_eq!(v["seeds"][2]["lifecycle"], "TRAINING");
    assert_eq!(v["crc32"], format!("{:08x}", kasmina::core::checksum::checksum(&st)));

    let o = kasmina(&["state", "verify", p(&s)]);
    ok(&o);
    assert!(stdout(&o).contains("ok"));
    let bytes = flip_bit_in_tensor(&s, "scales");
    std::fs::write(&s, &bytes).unwrap();
    let o = kasmina(&["state", "verify", p(&s)]);
    assert!(!o.status.success() && stderr(&o).contains("checksum"), "{}", stderr(&o));
}

#[test]
fn devices_lists_the_cpu_and_names_the_features_of_missing_backends() {
    let o = kasmina(&["devices"]);
    ok(&o);
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("cpu")), "{out}");
    assert!(out.contains("f32"), "{out}");
    if !cfg!(feature = "cuda") {
        assert!(out.contains("--features cuda"), "{out}");
        let o = kasmina(&["demo", "--device", "cuda:0", "--quick"]);
        assert_eq!(o.status.code(), Some(2), "an error exits with 2");
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
    let o = kasmina(&["devices", "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.as_array().unwrap().iter().any(|d| d["device"] == "cpu" && d["status"] == "available"));
}

#[test]
fn conformance_on_the_cpu_prints_each_row_and_a_summary() {
    let f = Files::new();
    let json = f.path("c.json");
    let o = kasmina(&["conformance", "--device", "cpu", "--quick", "--filter", "forward_modes", "--json", p(&json)]);
    ok(&o);
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("passed, 0 failed"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let passed = v["passed"].as_u64().unwrap();
    assert!(passed > 0);
    assert_eq!(v["failed"], 0);
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["device"].as_str().unwrap().starts_with("cpu")));
    // stdout is a pipe here: one line per case as it completes, then the summary.
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("cpu") && l.contains("forward_modes/")).collect();
    assert_eq!(rows.len() as u64, passed, "{out}");
    assert!(rows.iter().all(|l| l.ends_with("  pass")), "{out}");

    // `--json -`: the report on stdout, the rows and summary on stderr; `--backend` still works.
    let o = kasmina(&["conformance", "--backend", "cpu", "--quick", "--filter", "forward_modes", "--json", "-"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["passed"].as_u64(), Some(passed));
    assert!(stderr(&o).contains("passed, 0 failed"), "{}", stderr(&o));
}

#[test]
fn flags_name_devices_one_way_and_list_their_values() {
    for bad in ["tpu", "cpu:1", "cuda:x"] {
        let o = kasmina(&["conformance", "--device", bad, "--quick"]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains(bad), "{}", stderr(&o));
    }
    let o = kasmina(&["bench", "--help"]);
    ok(&o);
    assert!(stdout(&o).contains("[possible values: f32, f16, bf16]"), "{}", stdout(&o));
    let o = kasmina(&["bench", "--device", "cpu", "--quick", "--dtype", "f64"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("f64") && stderr(&o).contains("bf16"), "{}", stderr(&o));
    let o = kasmina(&["state", "transition", "--help"]);
    assert!(stdout(&o).contains("fine-tuning") && stdout(&o).contains("rolled-back"), "{}", stdout(&o));
    // An error inside a command (a missing file) is exit status 2, like a bad command line.
    let f = Files::new();
    let o = kasmina(&["state", "verify", p(&f.path("missing.safetensors"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn bench_quick_on_the_cpu_writes_one_record_per_configuration() {
    let f = Files::new();
    let json = f.path("b.json");
    let o = kasmina(&["bench", "--device", "cpu", "--quick", "--json", p(&json)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recs = v.as_array().unwrap();
    // 2 dtypes x 2 mixes x 2 ops, one shape.
    assert_eq!(recs.len(), 8, "{v}");
    for r in recs {
        assert_eq!(r["backend"], "cpu");
        for k in ["median_ms", "stream_ms", "wall_ms", "gbps", "copy_gbps", "ratio"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
        assert_eq!(r["copy_via"], "copy", "the CPU has one copy: {r}");
        let calls = r["stream_calls"].as_u64().unwrap();
        assert!((1..=1000).contains(&calls), "{r}");
    }
    assert!(stdout(&o).contains("copy GB/s") && stdout(&o).contains("stream_us"));

    // `--json -`: the records on stdout, the table on stderr.
    let o = kasmina(&["bench", "--device", "cpu", "--quick", "--mix", "dormant", "--dtype", "f32", "--json", "-"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert!(stderr(&o).contains("copy GB/s"), "{}", stderr(&o));
}

#[test]
fn bench_takes_explicit_shapes_and_rejects_bad_ones() {
    let f = Files::new();
    let json = f.path("s.json");
    let o = kasmina(&["bench", "--backend", "cpu", "--quick", "--shape", "8,64,4", "--json", p(&json)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let recs = v.as_array().unwrap();
    assert_eq!(recs.len(), 8, "{v}");
    assert!(recs.iter().all(|r| r["b"] == 8 && r["h"] == 64 && r["s"] == 4), "{v}");

    let bad = f.path("bad.json");
    for (shape, needle) in [("8,10,3", "not a multiple"), ("8,0,4", "above zero"), ("8,x,4", "'x'")] {
        let o = kasmina(&["bench", "--backend", "cpu", "--quick", "--shape", shape, "--json", p(&bad)]);
        assert!(!o.status.success() && stderr(&o).contains(needle), "{shape}: {}", stderr(&o));
    }
    assert!(!bad.exists());
}

/// A layer larger than the memory a process may have is a clear error (exit 2), not an abort:
/// under a 2 GiB address-space limit, `state new` of 2^30 weights (4 GiB).
#[cfg(target_os = "linux")]
#[test]
fn state_new_beyond_the_memory_limit_is_an_error_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.safetensors");
    let script =
        format!("ulimit -v 2097152 && exec \"$0\" state new --hidden 1073741824 --seeds 1 \"{}\"", out.display());
    let o = Command::new("sh").args(["-c", &script, env!("CARGO_BIN_EXE_kasmina")]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("not enough memory") && stderr(&o).contains("weights"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing is written");
}
