//! The suite tested on itself: a backend built from the float64 reference
//! passes every case, and each deliberately broken variant of it ("mutant")
//! fails the group meant to catch that bug, without the suite panicking.

use std::cell::Cell;

use kasmina_conformance::reference;
use kasmina_conformance::toolkit::{bits, from_f64, set_bits, to_f64};
use kasmina_conformance::{CaseResult, Size, run_all};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{
    Accumulators, Backend, DType, DeviceInfo, DeviceTensor, HostData, HostDataMut, LayerState, ParamGrads, Result,
    StabilityMode, StateChange,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mutant {
    None,
    /// Forward never writes the last element.
    SkipLastElement,
    /// One blend/FOSSILIZED element is off by relative 1e-3.
    Perturb,
    /// Identity seeds turn NaN into the canonical quiet NaN.
    CanonicalNan,
    /// Seed 0 counts one dead element too many.
    DeadOffByOne,
    /// Variance from f32 `Σx² / n - mean²`.
    NaiveVariance,
    /// dweights off by relative 1e-3.
    GradScale,
    /// Backward ignores strict-mode clamping.
    NoBackwardClamp,
    /// Uploads of single seeds are dropped.
    StaleUpload,
    /// The derived constants the kernels read are not refreshed when alpha changes.
    StaleConstants,
    /// The telemetry mean drifts by one ulp on every third call.
    NonDeterministic,
    /// Forward of exactly one row panics.
    PanicOnOneRow,
    /// dtypes other than f32 are not supported.
    OnlyF32,
    /// CONV reads `x_{j-1}` across the chunk boundary (from the previous seed).
    ConvCrossChunk,
    /// Identity seeds are clamped in strict mode.
    IdentityClamped,
    /// FOSSILIZED seeds blend with their stored alpha instead of using `t`.
    FossilUsesAlpha,
}

struct RefBackend {
    mutant: Mutant,
    calls: Cell<u64>,
}

struct Tensor {
    rows: usize,
    cols: usize,
    data: HostTensorData,
}

impl DeviceTensor for Tensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn dtype(&self) -> DType {
        self.data.view().dtype()
    }
}

struct Layer {
    state: LayerState,
    acc: Accumulators,
    grads: ParamGrads,
}

/// `values` rounded to `dtype`, with the elements `copy` selects taken bit for bit from `src`.
fn output(dtype: DType, values: &[f64], src: &HostTensorData, copy: impl Fn(usize) -> bool) -> HostTensorData {
    let mut out = from_f64(dtype, values);
    for i in (0..values.len()).filter(|i| copy(*i)) {
        set_bits(&mut out, i, bits(src, i));
    }
    out
}

fn identity_elem(state: &LayerState, i: usize) -> bool {
    let h = state.config.hidden_dim;
    let seed = (i % h) / state.config.chunk_size();
    reference::seed_mode(state, seed) == reference::SeedMode::Identity
}

impl Backend for RefBackend {
    type Tensor = Tensor;
    type Layer = Layer;

    fn info(&self) -> DeviceInfo {
        let dtypes = if self.mutant == Mutant::OnlyF32 { vec![DType::F32] } else { DType::ALL.to_vec() };
        DeviceInfo {
            backend: "ref",
            index: 0,
            name: format!("reference ({:?})", self.mutant),
            dtypes,
            features: vec![],
        }
    }
    fn alloc(&self, rows: usize, cols: usize, dtype: DType) -> Result<Tensor> {
        Ok(Tensor { rows, cols, data: HostTensorData::zeros(dtype, rows * cols) })
    }
    fn write(&self, t: &mut Tensor, data: HostData<'_>) -> Result<()> {
        t.data = match data {
            HostData::F32(v) => HostTensorData::F32(v.to_vec()),
            HostData::F16(v) => HostTensorData::F16(v.to_vec()),
            HostData::BF16(v) => HostTensorData::BF16(v.to_vec()),
        };
        Ok(())
    }
    fn read(&self, t: &Tensor, out: HostDataMut<'_>) -> Result<()> {
        match (out, &t.data) {
            (HostDataMut::F32(o), HostTensorData::F32(v)) => o.copy_from_slice(v),
            (HostDataMut::F16(o), HostTensorData::F16(v)) => o.copy_from_slice(v),
            (HostDataMut::BF16(o), HostTensorData::BF16(v)) => o.copy_from_slice(v),
            _ => return Err(kasmina_core::Error::InvalidValue { what: "read".into(), message: "dtype".into() }),
        }
        Ok(())
    }
    fn create_layer(&self, state: &LayerState) -> Result<Layer> {
        let (s, c) = (state.num_seeds(), state.config.chunk_size());
        Ok(Layer {
            state: state.clone(),
            acc: Accumulators::empty(s),
            grads: ParamGrads { dweights: vec![0.0; s * c], dscales: vec![0.0; s], grad_norm: vec![0.0; s] },
        })
    }
    fn upload(&self, layer: &mut Layer, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        if self.mutant == Mutant::StaleUpload && matches!(changed, StateChange::Seeds(_)) {
            return Ok(());
        }
        layer.state = state.clone();
        Ok(())
    }
    fn forward(&self, layer: &mut Layer, x: &Tensor, y: &mut Tensor) -> Result<()> {
        if self.mutant == Mutant::PanicOnOneRow && x.rows == 1 {
            panic!("mutant panics on one row");
        }
        let st = &layer.state;
        let x64 = to_f64(&x.data);
        let f = reference::forward(st, &x64, x.rows);
        let mut values = f.y.clone();
        let (h, c) = (st.config.hidden_dim, st.config.chunk_size());
        for r in 0..x.rows {
            for s in 0..st.num_seeds() {
                let start = r * h + s * c;
                let mode = reference::seed_mode(st, s);
                let (w, sc) = (st.params.seed_weights(s), st.params.scales[s] as f64);
                match self.mutant {
                    Mutant::ConvCrossChunk
                        if s > 0
                            && c > 1
                            && mode != reference::SeedMode::Identity
                            && st.seeds.blueprint_type[s] == kasmina_core::BlueprintType::Conv =>
                    {
                        values[start] += mode.alpha() * sc * w[1] as f64 * x64[start - 1];
                    }
                    Mutant::IdentityClamped if mode == reference::SeedMode::Identity => {
                        if let Some((lo, hi)) = reference::bounds(st, s) {
                            for v in &mut values[start..start + c] {
                                *v = v.clamp(lo, hi);
                            }
                        }
                    }
                    Mutant::FossilUsesAlpha if mode == reference::SeedMode::Blueprint => {
                        let a = st.seeds.alpha[s] as f64;
                        for j in 0..c {
                            values[start + j] = (1.0 - a) * x64[start + j] + a * values[start + j];
                        }
                    }
                    _ => {}
                }
            }
        }
        if self.mutant == Mutant::Perturb
            && let Some(i) = (0..values.len()).find(|i| !identity_elem(st, *i) && values[*i].is_finite())
        {
            values[i] *= 1.0 + 1e-3;
        }
        let dtype = x.dtype();
        let canon = self.mutant == Mutant::CanonicalNan;
        let clamp_id = self.mutant == Mutant::IdentityClamped;
        let mut out = output(dtype, &values, &x.data, |i| {
            identity_elem(st, i) && !(canon && x64[i].is_nan()) && !(clamp_id && values[i] != x64[i])
        });
        if self.mutant == Mutant::SkipLastElement && !values.is_empty() {
            // The last element keeps whatever the output tensor held (the suite's poison).
            copy_elem(&mut out, &y.data, values.len() - 1);
        }
        y.data = out;
        let call = self.calls.get();
        self.calls.set(call + 1);
        for (s, m) in f.moments.iter().enumerate() {
            let mut m = *m;
            if self.mutant == Mutant::DeadOffByOne && s == 0 && m.count > 0 {
                m.dead += 1;
            }
            if self.mutant == Mutant::NaiveVariance && m.count > 0 {
                let c = st.config.chunk_size();
                let h = st.config.hidden_dim;
                let (mut sum, mut sq) = (0.0f32, 0.0f32);
                for r in 0..x.rows {
                    for v in &x64[r * h + s * c..r * h + (s + 1) * c] {
                        if v.is_finite() {
                            sum += *v as f32;
                            sq += (*v as f32) * (*v as f32);
                        }
                    }
                }
                let n = m.count as f32;
                m.m2 = ((sq / n - (sum / n) * (sum / n)) * n) as f64;
            }
            if self.mutant == Mutant::NonDeterministic && call % 3 == 1 && m.count > 0 {
                m.mean = f64::from_bits(m.mean.to_bits() + 1);
            }
            layer.acc.moments[s] = layer.acc.moments[s].merge(&m);
        }
        Ok(())
    }
    fn backward(&self, layer: &mut Layer, x: &Tensor, g: &Tensor, dx: &mut Tensor) -> Result<()> {
        let mut st = layer.state.clone();
        if self.mutant == Mutant::NoBackwardClamp {
            st.config.stability = StabilityMode::Off;
        }
        let b = reference::backward(&st, &to_f64(&x.data), &to_f64(&g.data), x.rows);
        dx.data = output(x.dtype(), &b.dx, &g.data, |i| identity_elem(&st, i));
        let scale = if self.mutant == Mutant::GradScale { 1.0 + 1e-3 } else { 1.0 };
        layer.grads = ParamGrads {
            dweights: b.dweights.iter().map(|v| (v * scale) as f32).collect(),
            dscales: b.dscales.iter().map(|v| *v as f32).collect(),
            grad_norm: b.grad_sq.iter().map(|v| v.sqrt() as f32).collect(),
        };
        for (a, v) in layer.acc.grad_sq.iter_mut().zip(&b.grad_sq) {
            *a += v;
        }
        Ok(())
    }
    fn param_grads(&self, layer: &Layer) -> Result<ParamGrads> {
        Ok(layer.grads.clone())
    }
    fn accumulators(&self, layer: &Layer) -> Result<Accumulators> {
        Ok(layer.acc.clone())
    }
    fn reset_accumulators(&self, layer: &mut Layer) -> Result<()> {
        layer.acc = Accumulators::empty(layer.state.num_seeds());
        Ok(())
    }
    fn checksum(&self, layer: &Layer) -> Result<u32> {
        Ok(kasmina_core::checksum::checksum(&layer.state))
    }
    fn kernel_checksum(&self, layer: &Layer, seeds: &[usize]) -> Result<u32> {
        if self.mutant == Mutant::StaleConstants {
            // The derived constants still hold alpha 0 while the raw record moved on.
            let mut derived_from = layer.state.clone();
            derived_from.seeds.alpha.fill(0.0);
            let plain = kasmina_core::plan::kernel_checksum(&derived_from, seeds);
            if derived_from.seeds.alpha != layer.state.seeds.alpha {
                return Ok(plain ^ 1);
            }
        }
        Ok(kasmina_core::plan::kernel_checksum(&layer.state, seeds))
    }
    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        dst.data = src.data.clone();
        Ok(())
    }
}

fn copy_elem(dst: &mut HostTensorData, src: &HostTensorData, i: usize) {
    match (dst, src) {
        (HostTensorData::F32(d), HostTensorData::F32(s)) => d[i] = s[i],
        (HostTensorData::F16(d), HostTensorData::F16(s)) => d[i] = s[i],
        (HostTensorData::BF16(d), HostTensorData::BF16(s)) => d[i] = s[i],
        _ => {}
    }
}

fn run(mutant: Mutant, filter: Option<&str>) -> Vec<CaseResult> {
    let b = RefBackend { mutant, calls: Cell::new(0) };
    run_all(&b, Size::Quick, filter, &mut |_| {})
}

fn failed_groups(rows: &[CaseResult]) -> Vec<String> {
    let mut g: Vec<String> =
        rows.iter().filter(|r| !r.passed).map(|r| r.case.split('/').next().unwrap_or("").to_string()).collect();
    g.dedup();
    g
}

#[test]
fn the_reference_backend_passes_every_case() {
    let rows = run(Mutant::None, None);
    let failed: Vec<String> = rows.iter().filter(|r| !r.passed).map(|r| r.to_string()).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for g in kasmina_conformance::GROUPS {
        assert!(rows.iter().any(|r| r.case.starts_with(g)), "group {g} produced no rows");
    }
    assert!(rows.len() > 300, "{} rows", rows.len());
    let json = serde_json::to_string(&rows[0]).unwrap();
    assert!(json.contains("\"case\"") && json.contains("\"worst_error\""), "{json}");
}

/// Each mutant fails in the group that targets its bug.
#[test]
fn every_mutant_is_caught_by_its_group() {
    let cases: &[(Mutant, &str, &str)] = &[
        (Mutant::SkipLastElement, "poison/C=7/", "written"),
        (Mutant::Perturb, "forward_modes", "rel L2"),
        (Mutant::CanonicalNan, "forward_modes", "identity bits"),
        (Mutant::DeadOffByOne, "telemetry", "count/dead/nonfinite"),
        (Mutant::NaiveVariance, "telemetry", "variance"),
        (Mutant::GradScale, "backward/", "dweights"),
        (Mutant::NoBackwardClamp, "strict_mode/forward_backward", "dx"),
        (Mutant::StaleUpload, "checksum/lifecycle", "device integrity check failed"),
        (Mutant::StaleConstants, "checksum/lifecycle", "device integrity check failed"),
        (Mutant::NonDeterministic, "determinism/repeat/f32", "telemetry"),
        (Mutant::PanicOnOneRow, "shapes/C=7/", "panic"),
        (Mutant::ConvCrossChunk, "forward_modes", "rel L2"),
        (Mutant::IdentityClamped, "strict_mode/forward_backward", "identity bits"),
        (Mutant::FossilUsesAlpha, "randomized", "rel L2"),
    ];
    for (mutant, group, what) in cases {
        let rows = run(*mutant, Some(group));
        let failed: Vec<&CaseResult> = rows.iter().filter(|r| !r.passed).collect();
        assert!(!failed.is_empty(), "{mutant:?} passed every {group} case");
        assert!(
            failed.iter().any(|r| r.detail.contains(what)),
            "{mutant:?}: no failure mentions '{what}': {}",
            failed.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
        );
        let group = group.split('/').next().unwrap_or_default().to_string();
        assert!(failed_groups(&rows).contains(&group), "{mutant:?}: {:?}", failed_groups(&rows));
    }
}

#[test]
fn unsupported_dtypes_are_skipped_rows_not_failures() {
    let rows = run(Mutant::OnlyF32, Some("forward_modes"));
    assert!(rows.iter().all(|r| r.passed));
    let skipped: Vec<&CaseResult> = rows.iter().filter(|r| r.is_skipped()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().all(|r| r.dtype != Some(DType::F32)));
}

#[test]
fn an_unknown_group_is_a_failed_row() {
    let b = RefBackend { mutant: Mutant::None, calls: Cell::new(0) };
    let rows = kasmina_conformance::run_group(&b, Size::Quick, "nope", &mut |_| {});
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].passed && rows[0].detail.contains("unknown case group"));
}
