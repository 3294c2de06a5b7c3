//! A layer's device-side state: the raw seed records and parameters (what the
//! checksum covers), the per-seed kernel constants derived from them, the
//! accumulators, the gradients of the last backward, and reusable scratch.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;

use cudarc::driver::{CudaGraph, CudaSlice, CudaStream};
use kasmina_core::checksum::RawSeed;
use kasmina_core::{BlueprintType, ForwardMode, LayerState, SeedPlan, StabilityMode};

use crate::error::{CudaResult, DriverContext};

/// `SeedConst.flags`: blend or blueprint (not identity). Mirrors `kernels/kasmina.cu`.
pub(crate) const FLAG_ACTIVE: u32 = 1;
/// FOSSILIZED: `y = t(x)`.
pub(crate) const FLAG_BLUEPRINT: u32 = 2;
/// Strict mode with the clamp band set.
pub(crate) const FLAG_CLAMP: u32 = 4;
/// Bit position of the 2-bit blueprint type.
pub(crate) const TYPE_SHIFT: u32 = 3;

/// One seed's raw state as the device holds it (SPEC 2 fields, enums raw) plus its scale.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct SeedRecord {
    pub lifecycle: u8,
    pub blueprint_type: u8,
    pub grafting_strategy: u8,
    pub pad: u8,
    pub blueprint_id: u16,
    pub epochs_in_state: u16,
    pub last_update_epoch: u32,
    pub alpha: f32,
    pub clamp_mean: f32,
    pub clamp_std: f32,
    pub scale: f32,
}

/// What the kernels need per seed, derived once per state change (not per call).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct SeedConst {
    pub flags: u32,
    pub a: f32,
    pub s: f32,
    pub lo: f32,
    pub hi: f32,
    pub w0: f32,
    pub w1: f32,
    pub w2: f32,
}

/// Per-column coefficients of the kernels' branch-free formula `y = P x + Q relu(W x) + R`
/// (RESIDUAL, ATTENTION and MLP seeds; see `kernels/kasmina.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct ColCoef {
    pub p: f32,
    pub q: f32,
    pub w: f32,
    pub r: f32,
}

/// A seed's forward accumulator on the device (f64 moments, u64 counts).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub(crate) struct Acc {
    pub n: u64,
    pub dead: u64,
    pub nf: u64,
    pub pad: u64,
    pub mean: f64,
    pub m2: f64,
    pub mn: f64,
    pub mx: f64,
}

impl Acc {
    pub(crate) const EMPTY: Acc =
        Acc { n: 0, dead: 0, nf: 0, pad: 0, mean: 0.0, m2: 0.0, mn: f64::INFINITY, mx: f64::NEG_INFINITY };
}

/// Device memory that grows on demand and is reused between calls.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    buf: Option<CudaSlice<u8>>,
    /// Bumped on every reallocation: captured CUDA graphs hold the old address.
    pub(crate) generation: u64,
}

impl Scratch {
    /// At least `bytes` bytes (contents unspecified), allocated on `stream` when it grows.
    /// Growing is refused while `stream` is capturing a CUDA graph (run the call once
    /// before capturing, so the graph never owns the layer's memory).
    pub(crate) fn ensure(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> CudaResult<&mut CudaSlice<u8>> {
        let bytes = bytes.max(16);
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            refuse_while_capturing(stream, "growing the layer's scratch memory")?;
            if let Some(old) = &self.buf
                && old.stream().cu_stream() != stream.cu_stream()
            {
                // The old buffer is freed in its own stream's order; work on this stream may
                // still read it, so let that finish first (rare: after a stream change).
                stream.synchronize().ctx("waiting before freeing scratch of another stream")?;
            }
            self.buf = None;
            self.generation += 1;
            // Grow by 1/4 more than asked so slowly growing batches do not reallocate every call.
            let cap = bytes + bytes / 4;
            // SAFETY: scratch is always written by a kernel before it is read.
            self.buf = Some(unsafe { stream.alloc::<u8>(cap) }.ctx("allocating scratch memory")?);
        }
        // Just set above when missing.
        self.buf.as_mut().ok_or_else(|| crate::error::CudaError::Unsupported("scratch allocation".into()))
    }
}

/// An error when `stream` is capturing a CUDA graph: `what` (an allocation, a tuning
/// run, a host read) cannot be part of a graph.
pub(crate) fn refuse_while_capturing(stream: &CudaStream, what: &str) -> CudaResult<()> {
    if !is_capturing(stream)? {
        return Ok(());
    }
    Err(crate::error::CudaError::Unsupported(format!(
        "{what} while the stream is capturing a CUDA graph: run the layer once with the same \
         shapes and dtype before capturing (as torch.cuda.graphs asks of every warm-up)"
    )))
}

/// Whether `stream` is capturing a CUDA graph (or its capture was invalidated).
pub(crate) fn is_capturing(stream: &CudaStream) -> CudaResult<bool> {
    use cudarc::driver::sys::CUstreamCaptureStatus as Status;
    let status = stream.capture_status().ctx("reading the stream's capture status")?;
    Ok(status != Status::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// A layer on a CUDA device (see [`crate::CudaBackend`]).
#[derive(Debug)]
pub struct CudaLayer {
    pub(crate) h: usize,
    pub(crate) s: usize,
    pub(crate) c: usize,
    pub(crate) dead_eps: f32,
    pub(crate) stability: StabilityMode,
    /// schema_version, H, S, epoch.
    pub(crate) header: CudaSlice<u32>,
    /// `[S]` SeedRecord.
    pub(crate) records: CudaSlice<u8>,
    /// `[S, C]` raw weights.
    pub(crate) weights: CudaSlice<f32>,
    /// `[S]` SeedConst.
    pub(crate) consts: CudaSlice<u8>,
    /// `[H]`: softmax(w) for ATTENTION seeds, w otherwise.
    pub(crate) coef: CudaSlice<f32>,
    /// `[H]` ColCoef.
    pub(crate) colc: CudaSlice<u8>,
    /// `[S]` Acc.
    pub(crate) acc: CudaSlice<u8>,
    /// `[S]` Acc the autotuner's timed forwards merge into (never read).
    pub(crate) tune_acc: CudaSlice<u8>,
    /// `[S]` Σg² since the last reset.
    pub(crate) acc_g2: CudaSlice<f64>,
    pub(crate) dweights: CudaSlice<f32>,
    pub(crate) dscales: CudaSlice<f32>,
    pub(crate) gnorm: CudaSlice<f32>,
    /// `[H, 3]` per-column sums of the backward partials.
    pub(crate) colsum: CudaSlice<f64>,
    pub(crate) part: Scratch,
    pub(crate) gpart: Scratch,
    pub(crate) ppart: Scratch,
    /// Host mirror of each seed's flags (to know whether any seed is active).
    pub(crate) flags: Vec<u32>,
    /// Captured small-batch calls, replayed as one graph launch (see `CudaBackend::graphed`).
    pub(crate) graphs: Graphs,
    /// Where the next backward writes its parameter gradients: the caller's
    /// `(dweights, dscales)` device addresses, or `None` for the layer's own buffers.
    pub(crate) grad_dst: Option<(u64, u64)>,
    /// The stream the layer's memory was allocated on (freed in its order on drop).
    pub(crate) home: usize,
    /// Whether work ran on a stream other than `home`: the drop then waits for the device,
    /// so no buffer is freed while another stream's work may still use it.
    pub(crate) foreign: bool,
    pub(crate) ctx: Arc<cudarc::driver::CudaContext>,
}

impl Drop for CudaLayer {
    fn drop(&mut self) {
        if self.foreign {
            // A failure here has no caller to go to; the context records it.
            let _ = self.ctx.synchronize();
        }
    }
}

/// Captured graphs by key, with the scratch generation they were captured at.
#[derive(Default)]
pub(crate) struct Graphs(pub HashMap<GraphKey, (CudaGraph, u64)>);

// SAFETY: a captured graph and its executable are driver handles without thread affinity:
// the driver API launches and destroys them from any thread with the context current, which
// cudarc binds on every call. The map is only reached through `&mut CudaLayer`, so no two
// threads use it at once; moving a layer to another thread (PyTorch runs CUDA backward passes
// on its own thread) is therefore sound.
unsafe impl Send for Graphs {}

impl std::fmt::Debug for Graphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} captured graph(s)", self.0.len())
    }
}

/// What a captured graph baked in: the operation, the tensors' addresses, the
/// shape, dtype and launch configuration, and the scalars passed by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GraphKey {
    pub op: u8,
    pub ptrs: [u64; 3],
    pub rows: usize,
    pub dtype: kasmina_core::DType,
    pub cfg: crate::autotune::KernelConfig,
    pub any_active: bool,
    pub dead_eps_bits: u32,
}

impl CudaLayer {
    /// Sum of the scratch generations (changes whenever any scratch moved).
    pub(crate) fn scratch_generation(&self) -> u64 {
        self.part.generation + self.gpart.generation + self.ppart.generation
    }

    /// Whether any seed is blend or blueprint.
    pub(crate) fn any_active(&self) -> bool {
        self.flags.iter().any(|f| f & FLAG_ACTIVE != 0)
    }

    /// Hidden dimension H.
    pub fn hidden_dim(&self) -> usize {
        self.h
    }

    /// Number of seeds S.
    pub fn num_seeds(&self) -> usize {
        self.s
    }
}

/// The raw record of seed `i`.
pub(crate) fn seed_record(state: &LayerState, i: usize) -> SeedRecord {
    SeedRecord::from_raw(RawSeed::of(state, i))
}

impl SeedRecord {
    /// The device layout of a seed's raw fields.
    pub(crate) fn from_raw(r: RawSeed) -> Self {
        Self {
            lifecycle: r.lifecycle,
            blueprint_type: r.blueprint_type,
            grafting_strategy: r.grafting_strategy,
            pad: 0,
            blueprint_id: r.blueprint_id,
            epochs_in_state: r.epochs_in_state,
            last_update_epoch: r.last_update_epoch,
            alpha: r.alpha,
            clamp_mean: r.clamp_mean,
            clamp_std: r.clamp_std,
            scale: r.scale,
        }
    }

    /// The raw fields this record holds.
    pub(crate) fn raw(&self) -> RawSeed {
        RawSeed {
            lifecycle: self.lifecycle,
            blueprint_id: self.blueprint_id,
            blueprint_type: self.blueprint_type,
            grafting_strategy: self.grafting_strategy,
            alpha: self.alpha,
            epochs_in_state: self.epochs_in_state,
            last_update_epoch: self.last_update_epoch,
            clamp_mean: self.clamp_mean,
            clamp_std: self.clamp_std,
            scale: self.scale,
        }
    }
}

/// What the kernels need of seed `i`, derived once per state change.
pub(crate) struct SeedDerived {
    /// Per-seed constants.
    pub sc: SeedConst,
    /// `C` values: softmax(w) for ATTENTION, w otherwise (parameter gradients).
    pub coef: Vec<f32>,
    /// `C` column coefficients of the output formula.
    pub colc: Vec<ColCoef>,
}

/// The kernel constants of seed `i`, its `C` coefficients and column coefficients.
pub(crate) fn seed_const(state: &LayerState, i: usize) -> SeedDerived {
    derive(&SeedPlan::derive(state, i), state.params.seed_weights(i))
}

/// The device form of core's plan for a seed with weights `w` (the rules live in
/// [`kasmina_core::plan`]; this lays them out for the kernels and folds them into the column
/// coefficients of `y = P x + Q relu(W x) + R`, in f64 like `kernels/plan.cu`).
pub(crate) fn derive(plan: &SeedPlan, w: &[f32]) -> SeedDerived {
    let (mode, ty) = (plan.mode, plan.blueprint_type);
    let mut flags = match mode {
        ForwardMode::Identity => 0,
        ForwardMode::Blend => FLAG_ACTIVE,
        ForwardMode::Blueprint => FLAG_ACTIVE | FLAG_BLUEPRINT,
    };
    flags |= (ty.raw() as u32 & 3) << TYPE_SHIFT;
    let (mut lo, mut hi) = (0.0, 0.0);
    if let Some((l, h)) = plan.clamp {
        flags |= FLAG_CLAMP;
        (lo, hi) = (l, h);
    }
    let p64 = if ty == BlueprintType::Attention { softmax64(w) } else { Vec::new() };
    let coef = if ty == BlueprintType::Attention { p64.iter().map(|v| *v as f32).collect() } else { w.to_vec() };
    let (a64, s64) = (plan.a as f64, plan.scale as f64);
    let identity = ColCoef { p: 1.0, q: 0.0, w: 0.0, r: 0.0 };
    let colc = (0..w.len())
        .map(|j| {
            let wj = w[j] as f64;
            match (mode, ty) {
                (ForwardMode::Identity, _) | (_, BlueprintType::Conv) => identity,
                (_, BlueprintType::Residual) => {
                    ColCoef { p: ((1.0 - a64) + a64) as f32, q: 0.0, w: 0.0, r: (a64 * wj * s64) as f32 }
                }
                (_, BlueprintType::Attention) => {
                    ColCoef { p: ((1.0 - a64) + a64 * p64[j]) as f32, q: 0.0, w: 0.0, r: 0.0 }
                }
                (_, BlueprintType::Mlp) => ColCoef { p: (1.0 - a64) as f32, q: (a64 * s64) as f32, w: w[j], r: 0.0 },
            }
        })
        .collect();
    let [w0, w1, w2] = plan.taps;
    let sc = SeedConst { flags, a: plan.a, s: plan.scale, lo, hi, w0, w1, w2 };
    SeedDerived { sc, coef, colc }
}

/// Core's plan from the constants a device holds (the inverse of [`derive`]'s `sc`).
pub(crate) fn plan_of(sc: &SeedConst) -> SeedPlan {
    let mode = match (sc.flags & FLAG_ACTIVE != 0, sc.flags & FLAG_BLUEPRINT != 0) {
        (false, _) => ForwardMode::Identity,
        (true, false) => ForwardMode::Blend,
        (true, true) => ForwardMode::Blueprint,
    };
    let blueprint_type = match (sc.flags >> TYPE_SHIFT) & 3 {
        0 => BlueprintType::Residual,
        1 => BlueprintType::Attention,
        2 => BlueprintType::Mlp,
        _ => BlueprintType::Conv,
    };
    let clamp = (sc.flags & FLAG_CLAMP != 0).then_some((sc.lo, sc.hi));
    SeedPlan { mode, blueprint_type, a: sc.a, scale: sc.s, clamp, taps: [sc.w0, sc.w1, sc.w2] }
}

fn softmax64(w: &[f32]) -> Vec<f64> {
    kasmina_core::plan::softmax64(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasmina_core::{GraftingStrategy, LayerConfig, LifecycleState};

    #[test]
    fn device_structs_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<SeedRecord>(), 28);
        assert_eq!(std::mem::size_of::<SeedConst>(), 32);
        assert_eq!(std::mem::size_of::<Acc>(), 64);
        assert_eq!(std::mem::size_of::<ColCoef>(), 16);
    }

    #[test]
    fn device_constants_give_back_the_plan() {
        let cfg = LayerConfig::new(8, 2).unwrap().with_stability(StabilityMode::strict());
        let mut st = LayerState::new(cfg).unwrap();
        st.germinate(1, 3, BlueprintType::Attention, GraftingStrategy::FixedRamp).unwrap();
        for to in [LifecycleState::Training, LifecycleState::Grafting] {
            st.transition(1, to, kasmina_core::TransitionReason::Requested).unwrap();
        }
        st.seeds.clamp_mean[1] = 1.0;
        st.seeds.clamp_std[1] = 0.5;
        for i in 0..2 {
            let plan = SeedPlan::derive(&st, i);
            assert_eq!(plan_of(&seed_const(&st, i).sc), plan);
        }
        st.transition(1, LifecycleState::Stabilization, kasmina_core::TransitionReason::Requested).unwrap();
        st.seeds.lifecycle[1] = LifecycleState::Fossilized;
        assert_eq!(plan_of(&seed_const(&st, 1).sc), SeedPlan::derive(&st, 1));
    }

    #[test]
    fn seed_constants_follow_the_lifecycle_table() {
        let cfg = LayerConfig::new(8, 2).unwrap().with_stability(StabilityMode::strict());
        let mut st = LayerState::new(cfg).unwrap();
        assert_eq!(seed_const(&st, 0).sc.flags & FLAG_ACTIVE, 0);
        st.germinate(1, 3, BlueprintType::Conv, GraftingStrategy::FixedRamp).unwrap();
        for to in [LifecycleState::Training, LifecycleState::Grafting] {
            st.transition(1, to, kasmina_core::TransitionReason::Requested).unwrap();
        }
        st.seeds.alpha[1] = 0.25;
        st.params.seed_weights_mut(1).copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
        st.seeds.clamp_mean[1] = 1.0;
        st.seeds.clamp_std[1] = 0.5;
        let SeedDerived { sc, coef, .. } = seed_const(&st, 1);
        assert_eq!(sc.flags, FLAG_ACTIVE | FLAG_CLAMP | (3 << TYPE_SHIFT));
        assert_eq!((sc.a, sc.w0, sc.w1, sc.w2), (0.25, 1.0, 2.0, 3.0));
        assert_eq!((sc.lo, sc.hi), (1.0 - 3.0, 1.0 + 3.0));
        assert_eq!(coef, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn column_coefficients_reproduce_the_blend_formula() {
        let mut st = LayerState::new(LayerConfig::new(12, 3).unwrap()).unwrap();
        let types = [BlueprintType::Residual, BlueprintType::Attention, BlueprintType::Mlp];
        for (i, ty) in types.iter().enumerate() {
            st.germinate(i, 1, *ty, GraftingStrategy::FixedRamp).unwrap();
            for to in [LifecycleState::Training, LifecycleState::Grafting] {
                st.transition(i, to, kasmina_core::TransitionReason::Requested).unwrap();
            }
            st.seeds.alpha[i] = 0.3;
            st.params.seed_weights_mut(i).copy_from_slice(&[0.5, -1.0, 2.0, 0.25]);
            st.params.scales[i] = 1.5;
        }
        let (a, s) = (0.3f64, 1.5f64);
        let w = [0.5f64, -1.0, 2.0, 0.25];
        for (i, ty) in types.iter().enumerate() {
            let d = seed_const(&st, i);
            let p = softmax64(&[0.5, -1.0, 2.0, 0.25]);
            for (j, k) in d.colc.iter().enumerate() {
                for x in [-2.0f64, -0.5, 0.0, 0.7, 3.0] {
                    let t = match ty {
                        BlueprintType::Residual => x + w[j] * s,
                        BlueprintType::Attention => x * p[j],
                        _ => (x * w[j]).max(0.0) * s,
                    };
                    let want = (1.0 - a) * x + a * t;
                    let got = k.p as f64 * x + k.q as f64 * (k.w as f64 * x).max(0.0) + k.r as f64;
                    assert!((got - want).abs() < 1e-6, "{ty:?} j={j} x={x}: {got} vs {want}");
                }
            }
        }
    }
}
