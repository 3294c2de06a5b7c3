//! Bad input: mismatched tensor lengths or dtypes, seed ids out of range,
//! illegal transitions, invalid values and corrupted snapshots. Each gives a
//! typed error, nothing panics, and the layer is unchanged: the host state,
//! its checksum, the device checksum and the accumulators are as before.

use kasmina_core::backend::HostTensorData;
use kasmina_core::{
    Backend, BlueprintType, DType, EpochSignals, Error, GraftingStrategy, KasminaLayer, LayerConfig, LifecycleState,
    SeedSignal, SnapshotError, TransitionError,
};

use super::{Ctx, Layer, SeedSpec, build_state, layer, run_forward};
use crate::check::Check;
use crate::data::Gen;

const S: usize = 4;
const C: usize = 5;
const H: usize = S * C;

/// A layer with seeds in several states and some telemetry accumulated.
fn setup<B: Backend>(backend: &B) -> kasmina_core::Result<Layer<'_, B>> {
    use LifecycleState::*;
    let specs = [
        SeedSpec::new(Dormant, BlueprintType::Residual, 0.0),
        SeedSpec::new(Grafting, BlueprintType::Conv, 0.25),
        SeedSpec::new(Fossilized, BlueprintType::Mlp, 1.0),
        SeedSpec::new(Culled, BlueprintType::Attention, 0.5),
    ];
    let mut rng = Gen::new(0xBAD);
    let st = build_state(LayerConfig::new(H, S)?, &specs, &mut rng)?;
    let mut l = layer(backend, &st)?;
    run_forward(&mut l, &rng.tensor(DType::F32, 3 * H, 1.0), 3)?;
    Ok(l)
}

/// Runs `op` on a fresh layer and checks it fails with an error `expect`
/// accepts and leaves the layer as it was.
fn refused<B: Backend>(
    backend: &B,
    chk: &mut Check,
    expect: &str,
    op: impl FnOnce(&mut Layer<'_, B>) -> kasmina_core::Result<()>,
    accept: impl Fn(&Error) -> bool,
) -> kasmina_core::Result<()> {
    let mut l = setup(backend)?;
    let state = l.state().clone();
    let (host, device, acc) = (l.checksum(), l.device_checksum()?, l.accumulators()?);
    match op(&mut l) {
        Ok(()) => chk.fail("error", format!("accepted; want {expect}")),
        Err(e) => chk.require("error type", accept(&e), || format!("got {e:?}; want {expect}")),
    }
    chk.require("host state unchanged", *l.state() == state, || "the host state changed".into());
    chk.equal("host checksum unchanged", l.checksum(), host);
    chk.equal("device checksum unchanged", l.device_checksum()?, device);
    chk.require("accumulators unchanged", l.accumulators()? == acc, || "the accumulators changed".into());
    Ok(())
}

fn shape(e: &Error) -> bool {
    matches!(e, Error::Shape { .. })
}
fn dtype_err(e: &Error) -> bool {
    matches!(e, Error::DType { .. })
}
fn out_of_range(e: &Error) -> bool {
    matches!(e, Error::SeedOutOfRange { seed_id: _, num_seeds: S })
}

fn f32s(n: usize) -> HostTensorData {
    HostTensorData::F32(vec![0.5; n])
}

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let b = ctx.backend;
    macro_rules! case {
        ($name:expr, $dtype:expr, $expect:expr, $op:expr, $accept:expr) => {
            ctx.case($name, $dtype, |chk| refused(b, chk, $expect, $op, $accept));
        };
    }
    let f32 = Some(DType::F32);
    case!(
        "x_length_not_multiple_of_h",
        f32,
        "Shape",
        |l| {
            let mut y = f32s(2 * H + 1);
            l.forward_host(f32s(2 * H + 1).view(), y.view_mut())
        },
        shape
    );
    case!(
        "y_length_mismatch",
        f32,
        "Shape",
        |l| {
            let mut y = f32s(H);
            l.forward_host(f32s(2 * H).view(), y.view_mut())
        },
        shape
    );
    case!(
        "y_dtype_mismatch",
        f32,
        "DType",
        |l| {
            let mut y = HostTensorData::zeros(DType::F16, 2 * H);
            l.forward_host(f32s(2 * H).view(), y.view_mut())
        },
        dtype_err
    );
    case!(
        "g_dtype_mismatch",
        f32,
        "DType",
        |l| {
            let g = HostTensorData::zeros(DType::BF16, 2 * H);
            let mut dx = f32s(2 * H);
            l.backward_host(f32s(2 * H).view(), g.view(), dx.view_mut()).map(|_| ())
        },
        dtype_err
    );
    case!(
        "g_length_mismatch",
        f32,
        "Shape",
        |l| {
            let mut dx = f32s(2 * H);
            l.backward_host(f32s(2 * H).view(), f32s(3 * H).view(), dx.view_mut()).map(|_| ())
        },
        shape
    );
    case!(
        "device_tensor_wrong_columns",
        f32,
        "Shape",
        |l| {
            let be = l.backend();
            let x = be.alloc(2, H + 1, DType::F32)?;
            let mut y = be.alloc(2, H + 1, DType::F32)?;
            l.forward(&x, &mut y)
        },
        shape
    );
    case!(
        "device_tensor_wrong_rows",
        f32,
        "Shape",
        |l| {
            let be = l.backend();
            let x = be.alloc(2, H, DType::F32)?;
            let mut y = be.alloc(3, H, DType::F32)?;
            l.forward(&x, &mut y)
        },
        shape
    );
    if b.supports(DType::F16) {
        case!(
            "device_tensor_dtype_mismatch",
            f32,
            "DType",
            |l| {
                let be = l.backend();
                let x = be.alloc(2, H, DType::F32)?;
                let g = be.alloc(2, H, DType::F16)?;
                let mut dx = be.alloc(2, H, DType::F32)?;
                l.backward(&x, &g, &mut dx).map(|_| ())
            },
            dtype_err
        );
    }
    case!(
        "seed_out_of_range/transition",
        None,
        "SeedOutOfRange",
        |l| l.transition(S, LifecycleState::Training),
        out_of_range
    );
    case!(
        "seed_out_of_range/germination",
        None,
        "SeedOutOfRange",
        |l| { l.request_germination(S + 7, 1, BlueprintType::Conv, GraftingStrategy::FixedRamp) },
        out_of_range
    );
    case!(
        "seed_out_of_range/set_seed_params",
        None,
        "SeedOutOfRange",
        |l| l.set_seed_params(S, &[0.0; C], 1.0),
        out_of_range
    );
    case!("seed_out_of_range/set_alpha", None, "SeedOutOfRange", |l| l.set_alpha(usize::MAX, 0.5), out_of_range);
    case!("seed_out_of_range/cancel", None, "SeedOutOfRange", |l| l.cancel_germination(S), out_of_range);
    case!("wrong_weight_length", None, "Shape", |l| l.set_seed_params(1, &[0.0; C + 1], 1.0), shape);
    case!("wrong_params_length", None, "Shape", |l| l.set_params(&[0.0; H], &[1.0; S - 1]), shape);
    case!("nan_alpha", None, "InvalidValue", |l| l.set_alpha(1, f32::NAN), |e| matches!(e, Error::InvalidValue { .. }));
    case!(
        "wrong_signal_count",
        None,
        "Shape",
        |l| { l.end_epoch(&EpochSignals { seeds: vec![SeedSignal::default(); S + 1] }).map(|_| ()) },
        shape
    );
    case!(
        "illegal_transition/dormant_to_grafting",
        None,
        "Transition(Illegal)",
        |l| l.transition(0, LifecycleState::Grafting),
        |e| { matches!(e, Error::Transition(TransitionError::Illegal { seed_id: 0, .. })) }
    );
    case!(
        "illegal_transition/dormant_needs_germination",
        None,
        "Transition(NeedsGermination)",
        |l| { l.transition(0, LifecycleState::Germinated) },
        |e| matches!(e, Error::Transition(TransitionError::NeedsGermination { seed_id: 0 }))
    );
    case!(
        "illegal_transition/fossilized_is_terminal",
        None,
        "Transition(Illegal)",
        |l| l.transition(2, LifecycleState::Dormant),
        |e| { matches!(e, Error::Transition(TransitionError::Illegal { seed_id: 2, .. })) }
    );
    case!(
        "illegal_transition/germinate_twice",
        None,
        "Transition(Illegal)",
        |l| { l.request_germination(1, 3, BlueprintType::Residual, GraftingStrategy::FixedRamp) },
        |e| matches!(e, Error::Transition(TransitionError::Illegal { seed_id: 1, .. }))
    );
    case!(
        "illegal_transition/embargo",
        None,
        "Transition(Embargoed)",
        |l| l.transition(3, LifecycleState::Dormant),
        |e| { matches!(e, Error::Transition(TransitionError::Embargoed { seed_id: 3, .. })) }
    );
    case!(
        "invalid_state/alpha_out_of_range",
        None,
        "InvalidValue",
        |l| {
            let mut st = l.state().clone();
            st.seeds.alpha[1] = 1.5;
            KasminaLayer::from_state(*l.backend(), st).map(|_| ())
        },
        |e| matches!(e, Error::InvalidValue { .. })
    );
    case!(
        "invalid_state/short_array",
        None,
        "Shape",
        |l| {
            let mut st = l.state().clone();
            st.params.scales.pop();
            KasminaLayer::from_state(*l.backend(), st).map(|_| ())
        },
        shape
    );
    for (name, corrupt) in [
        ("corrupted_snapshot/flipped_byte", 0usize),
        ("corrupted_snapshot/truncated", 1),
        ("corrupted_snapshot/garbage", 2),
    ] {
        case!(
            name,
            None,
            "Snapshot",
            |l| {
                let dir = tempfile::tempdir().map_err(|e| SnapshotError::Io { path: "tempdir".into(), source: e })?;
                let path = dir.path().join("layer.safetensors");
                l.save(&path)?;
                let io = |e| SnapshotError::Io { path: path.display().to_string(), source: e };
                let mut bytes = std::fs::read(&path).map_err(io)?;
                match corrupt {
                    0 => {
                        // A byte inside the last tensor (scales): only the checksum can catch it.
                        let n = bytes.len();
                        bytes[n - 2] ^= 0x10;
                    }
                    1 => bytes.truncate(bytes.len() / 2),
                    _ => bytes = b"not a snapshot at all".to_vec(),
                }
                std::fs::write(&path, &bytes)
                    .map_err(|e| SnapshotError::Io { path: path.display().to_string(), source: e })?;
                KasminaLayer::load(*l.backend(), &path).map(|_| ())
            },
            |e| matches!(e, Error::Snapshot(_))
        );
    }
}
