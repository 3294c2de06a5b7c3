//! [`CpuLayer`]: the backend's own copy of a layer's state, the per-seed plans
//! derived from it at upload, the accumulators, and reusable scratch.
//!
//! # Determinism
//! Rows are cut into blocks by [`rows_per_block`], a function of the shape
//! only (`B`, `H`), never of the thread count. Each block is computed by one
//! thread in a fixed order (groups of 4 rows, 8 in the forward of f16/bf16;
//! seed by seed, row by row; see the `kernels` module) into its own slot of a
//! partials array; after the parallel section, the slots are merged by one
//! thread in block order (Chan's formula in f64 for telemetry, f64 sums for
//! gradients). No float atomics,
//! no reduction whose order depends on scheduling. Which thread ran which
//! block, and when, cannot change any bit of the result: outputs, telemetry and
//! gradients are bit-identical for 1 or N threads (tested with 1, 2, 3 and 5).
//! Results may differ between SIMD levels, which sum lanes in a different
//! order; one backend always uses one level.

use std::sync::Mutex;

use kasmina_core::checksum::RawState;
use kasmina_core::{
    Accumulators, BlueprintType, LayerState, LifecycleState, Moments, ParamGrads, Result, StabilityMode, StateChange,
};

use crate::error::CpuError;
use crate::kernels::{Kind, Plan, SeedPlan, ThreadScratch};
use crate::simd::MAX_LANES;

/// Elements a block aims at (1 MiB of f32): big enough to amortise the
/// per-block telemetry merge, small enough to spread over threads.
const TARGET_BLOCK_ELEMS: usize = 1 << 18;
/// At most this many blocks per call, bounding the partials arrays.
const MAX_BLOCKS: usize = 128;

/// Rows per block for a `[b, h]` tensor: a function of the shape only.
pub fn rows_per_block(b: usize, h: usize) -> usize {
    TARGET_BLOCK_ELEMS.div_ceil(h.max(1)).max(b.div_ceil(MAX_BLOCKS)).max(1)
}

/// A layer held by [`crate::CpuBackend`].
pub struct CpuLayer {
    pub(crate) h: usize,
    pub(crate) s: usize,
    pub(crate) c: usize,
    pub(crate) cp: usize,
    schema_version: u8,
    epoch: u32,
    stability: StabilityMode,
    pub(crate) dead_eps: f32,
    lifecycle: Vec<u8>,
    blueprint_id: Vec<u16>,
    blueprint_type: Vec<u8>,
    grafting_strategy: Vec<u8>,
    alpha: Vec<f32>,
    epochs_in_state: Vec<u16>,
    last_update_epoch: Vec<u32>,
    clamp_mean: Vec<f32>,
    clamp_std: Vec<f32>,
    weights: Vec<f32>,
    scales: Vec<f32>,
    pub(crate) plans: Vec<SeedPlan>,
    pub(crate) wpad: Vec<f32>,
    pub(crate) wspad: Vec<f32>,
    pub(crate) ppad: Vec<f32>,
    pub(crate) acc: Accumulators,
    pub(crate) grads: ParamGrads,
    pub(crate) scratch: Vec<Mutex<ThreadScratch>>,
    pub(crate) fwd_part: Vec<Moments>,
    pub(crate) bwd_col: Vec<f32>,
    pub(crate) bwd_scal: Vec<f64>,
    pub(crate) bwd_gsq: Vec<f64>,
}

impl std::fmt::Debug for CpuLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuLayer").field("hidden_dim", &self.h).field("num_seeds", &self.s).finish_non_exhaustive()
    }
}

impl CpuLayer {
    pub(crate) fn new(state: &LayerState, threads: usize) -> Result<Self> {
        let h = state.config.hidden_dim;
        let s = state.config.num_seeds;
        let c = state.config.chunk_size();
        let cp = c.div_ceil(MAX_LANES) * MAX_LANES;
        let mut layer = CpuLayer {
            h,
            s,
            c,
            cp,
            schema_version: state.schema_version(),
            epoch: state.epoch,
            stability: state.config.stability,
            dead_eps: state.config.dead_eps,
            lifecycle: vec![0; s],
            blueprint_id: vec![0; s],
            blueprint_type: vec![0; s],
            grafting_strategy: vec![0; s],
            alpha: vec![0.0; s],
            epochs_in_state: vec![0; s],
            last_update_epoch: vec![0; s],
            clamp_mean: vec![0.0; s],
            clamp_std: vec![0.0; s],
            weights: vec![0.0; s * c],
            scales: vec![0.0; s],
            plans: Vec::with_capacity(s),
            wpad: vec![0.0; s * cp],
            wspad: vec![0.0; s * cp],
            ppad: vec![0.0; s * cp],
            acc: Accumulators::empty(s),
            grads: ParamGrads { dweights: vec![0.0; s * c], dscales: vec![0.0; s], grad_norm: vec![0.0; s] },
            scratch: Vec::new(),
            fwd_part: Vec::new(),
            bwd_col: Vec::new(),
            bwd_scal: Vec::new(),
            bwd_gsq: Vec::new(),
        };
        layer.plans = vec![identity_plan(); s];
        layer.upload(state, StateChange::All)?;
        layer.ensure_threads(threads);
        Ok(layer)
    }

    /// Makes sure there is one scratch per pool thread (allocates only when the pool grew).
    pub(crate) fn ensure_threads(&mut self, threads: usize) {
        while self.scratch.len() < threads.max(1) {
            self.scratch.push(Mutex::new(ThreadScratch::new(self.s, self.cp)));
        }
    }

    pub(crate) fn upload(&mut self, state: &LayerState, changed: StateChange<'_>) -> Result<()> {
        if state.config.hidden_dim != self.h || state.config.num_seeds != self.s {
            return Err(CpuError::StateMismatch(format!(
                "the layer was created with H = {}, S = {}; the state has H = {}, S = {}",
                self.h, self.s, state.config.hidden_dim, state.config.num_seeds
            ))
            .into());
        }
        state.validate()?;
        let all: Vec<usize>;
        let ids: &[usize] = match changed {
            StateChange::All => {
                all = (0..self.s).collect();
                &all
            }
            StateChange::Seeds(ids) => {
                if let Some(&bad) = ids.iter().find(|&&i| i >= self.s) {
                    return Err(kasmina_core::Error::SeedOutOfRange { seed_id: bad, num_seeds: self.s });
                }
                ids
            }
        };
        let config_changed = state.config.stability != self.stability;
        self.schema_version = state.schema_version();
        self.epoch = state.epoch;
        self.stability = state.config.stability;
        self.dead_eps = state.config.dead_eps;
        let st = &state.seeds;
        let c = self.c;
        for &i in ids {
            self.lifecycle[i] = st.lifecycle[i].raw();
            self.blueprint_id[i] = st.blueprint_id[i];
            self.blueprint_type[i] = st.blueprint_type[i].raw();
            self.grafting_strategy[i] = st.grafting_strategy[i].raw();
            self.alpha[i] = st.alpha[i];
            self.epochs_in_state[i] = st.epochs_in_state[i];
            self.last_update_epoch[i] = st.last_update_epoch[i];
            self.clamp_mean[i] = st.clamp_mean[i];
            self.clamp_std[i] = st.clamp_std[i];
            self.weights[i * c..(i + 1) * c].copy_from_slice(state.params.seed_weights(i));
            self.scales[i] = state.params.scales[i];
        }
        if config_changed {
            for i in 0..self.s {
                self.build_plan(i)?;
            }
        } else {
            for &i in ids {
                self.build_plan(i)?;
            }
        }
        Ok(())
    }

    /// Replaces every seed's weights and scale, re-deriving the plans of the seeds
    /// whose values changed (bit for bit), so an unchanged call costs one comparison.
    pub(crate) fn set_params(&mut self, weights: &[f32], scales: &[f32]) -> Result<()> {
        let (s, c) = (self.s, self.c);
        if weights.len() != s * c {
            return Err(kasmina_core::Error::shape("weights", s * c, weights.len()));
        }
        if scales.len() != s {
            return Err(kasmina_core::Error::shape("scales", s, scales.len()));
        }
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        for i in 0..s {
            let w = &weights[i * c..(i + 1) * c];
            if scales[i].to_bits() == self.scales[i].to_bits() && same(w, &self.weights[i * c..(i + 1) * c]) {
                continue;
            }
            self.weights[i * c..(i + 1) * c].copy_from_slice(w);
            self.scales[i] = scales[i];
            self.build_plan(i)?;
        }
        Ok(())
    }

    /// Seed `i`'s plan (core's [`kasmina_core::SeedPlan`]) from the layer's own arrays.
    fn core_plan(&self, i: usize) -> Result<kasmina_core::SeedPlan> {
        let c = self.c;
        Ok(kasmina_core::SeedPlan::of(
            LifecycleState::from_raw(self.lifecycle[i])?,
            BlueprintType::from_raw(self.blueprint_type[i])?,
            self.alpha[i],
            self.stability,
            (self.clamp_mean[i], self.clamp_std[i]),
            &self.weights[i * c..(i + 1) * c],
            self.scales[i],
        ))
    }

    /// Derives seed `i`'s kernel plan and padded parameter rows from the layer's own arrays.
    fn build_plan(&mut self, i: usize) -> Result<()> {
        let (c, cp) = (self.c, self.cp);
        let plan = self.core_plan(i)?;
        self.plans[i] = SeedPlan::from_core(plan);
        let (w, scale) = (&self.weights[i * c..(i + 1) * c], self.scales[i]);
        let (wp, wsp, pp) = padded_rows(w, scale);
        self.wpad[i * cp..(i + 1) * cp].copy_from_slice(&wp);
        self.wspad[i * cp..(i + 1) * cp].copy_from_slice(&wsp);
        self.ppad[i * cp..(i + 1) * cp].copy_from_slice(&pp);
        Ok(())
    }

    /// The kernel checksum ([`kasmina_core::plan::kernel_crc`]) of `seeds` from what the
    /// kernels read: the raw arrays, the plans and the padded parameter rows. A kernel plan
    /// or padded row that is not what the raw arrays derive to is an integrity error.
    pub(crate) fn kernel_checksum(&self, seeds: &[usize]) -> Result<u32> {
        let (c, cp) = (self.c, self.cp);
        let mut kernel_seeds = Vec::with_capacity(seeds.len());
        for &i in seeds {
            if i >= self.s {
                return Err(kasmina_core::Error::SeedOutOfRange { seed_id: i, num_seeds: self.s });
            }
            let plan = self.core_plan(i)?;
            let (w, scale) = (&self.weights[i * c..(i + 1) * c], self.scales[i]);
            let (wp, wsp, pp) = padded_rows(w, scale);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let row = i * cp..(i + 1) * cp;
            // The softmax row itself is in the checksum; its padding must be zeros.
            let consistent = self.plans[i].same_bits(&SeedPlan::from_core(plan))
                && bits(&self.wpad[row.clone()]) == bits(&wp)
                && bits(&self.wspad[row.clone()]) == bits(&wsp)
                && bits(&self.ppad[i * cp + c..(i + 1) * cp]) == bits(&pp[c..]);
            if !consistent {
                return Err(kasmina_core::Error::DeviceIntegrity {
                    backend: "cpu",
                    what: format!("the kernel plan or padded parameters of seed {i} are not what its state derives to"),
                    device: 0,
                    host: 0,
                });
            }
            kernel_seeds.push((i, plan));
        }
        let header = kasmina_core::checksum::RawHeader {
            schema_version: self.schema_version,
            hidden_dim: self.h as u32,
            num_seeds: self.s as u32,
            epoch: self.epoch,
        };
        Ok(kasmina_core::plan::kernel_crc(
            header,
            kernel_seeds.into_iter().map(|(i, plan)| kasmina_core::plan::KernelSeed {
                seed_id: i,
                record: kasmina_core::checksum::RawSeed {
                    lifecycle: self.lifecycle[i],
                    blueprint_id: self.blueprint_id[i],
                    blueprint_type: self.blueprint_type[i],
                    grafting_strategy: self.grafting_strategy[i],
                    alpha: self.alpha[i],
                    epochs_in_state: self.epochs_in_state[i],
                    last_update_epoch: self.last_update_epoch[i],
                    clamp_mean: self.clamp_mean[i],
                    clamp_std: self.clamp_std[i],
                    scale: self.scales[i],
                },
                weights: &self.weights[i * c..(i + 1) * c],
                plan,
                softmax: &self.ppad[i * cp..i * cp + c],
            }),
        ))
    }

    /// The shared per-call view of the plans, the scratch, and the partials
    /// arrays (mutable), borrowed apart.
    pub(crate) fn split(&mut self) -> (Plan<'_>, &[Mutex<ThreadScratch>], Partials<'_>) {
        let plan = Plan {
            h: self.h,
            c: self.c,
            cp: self.cp,
            dead_eps: self.dead_eps,
            seeds: &self.plans,
            w: &self.wpad,
            ws: &self.wspad,
            p: &self.ppad,
        };
        let parts = Partials {
            fwd: &mut self.fwd_part,
            col: &mut self.bwd_col,
            scal: &mut self.bwd_scal,
            gsq: &mut self.bwd_gsq,
        };
        (plan, &self.scratch, parts)
    }

    /// Grows the forward partials to `nblocks` (no allocation once large enough).
    pub(crate) fn ensure_fwd(&mut self, nblocks: usize) {
        let n = nblocks * self.s;
        if self.fwd_part.len() < n {
            self.fwd_part.resize(n, Moments::empty());
        }
    }

    /// Grows the backward partials to `nblocks`.
    pub(crate) fn ensure_bwd(&mut self, nblocks: usize) {
        if self.bwd_gsq.len() < nblocks * self.s {
            self.bwd_col.resize(nblocks * self.s * self.cp, 0.0);
            self.bwd_scal.resize(nblocks * self.s * 4, 0.0);
            self.bwd_gsq.resize(nblocks * self.s, 0.0);
        }
    }

    /// Merges the forward partials of `nblocks` blocks in block order into the accumulators.
    pub(crate) fn merge_forward(&mut self, nblocks: usize) {
        let s = self.s;
        for i in 0..s {
            let mut total = Moments::empty();
            for b in 0..nblocks {
                total = total.merge(&self.fwd_part[b * s + i]);
            }
            self.acc.moments[i] = self.acc.moments[i].merge(&total);
        }
    }

    /// Merges the backward partials in block order into this call's gradients
    /// and the `Σ g²` accumulators (SPEC 7).
    #[allow(clippy::needless_range_loop)] // index loops mirror the SPEC 7 formulas
    pub(crate) fn merge_backward(&mut self, nblocks: usize) {
        let (s, c, cp) = (self.s, self.c, self.cp);
        for i in 0..s {
            let mut gsq = 0.0f64;
            for b in 0..nblocks {
                gsq += self.bwd_gsq[b * s + i];
            }
            self.acc.grad_sq[i] += gsq;
            self.grads.grad_norm[i] = gsq.max(0.0).sqrt() as f32;
            let dw = &mut self.grads.dweights[i * c..(i + 1) * c];
            dw.fill(0.0);
            self.grads.dscales[i] = 0.0;
            let sp = self.plans[i];
            if sp.kind == Kind::Identity {
                continue;
            }
            let mut scal = [0.0f64; 4];
            for b in 0..nblocks {
                for (k, v) in scal.iter_mut().enumerate() {
                    *v += self.bwd_scal[(b * s + i) * 4 + k];
                }
            }
            let col = |j: usize| -> f64 { (0..nblocks).map(|b| self.bwd_col[(b * s + i) * cp + j] as f64).sum() };
            let (a, sc) = (sp.a as f64, sp.s as f64);
            let w = &self.weights[i * c..(i + 1) * c];
            let p = &self.ppad[i * cp..i * cp + c];
            match sp.kind {
                Kind::Residual => {
                    let mut ds = 0.0;
                    for j in 0..c {
                        let cj = col(j);
                        dw[j] = (a * sc * cj) as f32;
                        ds += w[j] as f64 * cj;
                    }
                    self.grads.dscales[i] = (a * ds) as f32;
                }
                Kind::Attention => {
                    for j in 0..c {
                        dw[j] = (a * p[j] as f64 * (col(j) - scal[0])) as f32;
                    }
                }
                Kind::Mlp => {
                    for j in 0..c {
                        dw[j] = (a * sc * col(j)) as f32;
                    }
                    self.grads.dscales[i] = (a * scal[0]) as f32;
                }
                Kind::Conv => {
                    for k in 0..c.min(3) {
                        dw[k] = (a * sc * scal[k]) as f32;
                    }
                    self.grads.dscales[i] = (a * scal[3]) as f32;
                }
                Kind::Identity => {}
            }
        }
    }

    /// CRC-32 of the state this layer holds (SPEC 2.1).
    pub(crate) fn checksum(&self) -> u32 {
        RawState {
            schema_version: self.schema_version,
            hidden_dim: self.h as u32,
            num_seeds: self.s as u32,
            epoch: self.epoch,
            lifecycle: &self.lifecycle,
            blueprint_id: &self.blueprint_id,
            blueprint_type: &self.blueprint_type,
            grafting_strategy: &self.grafting_strategy,
            alpha: &self.alpha,
            epochs_in_state: &self.epochs_in_state,
            last_update_epoch: &self.last_update_epoch,
            clamp_mean: &self.clamp_mean,
            clamp_std: &self.clamp_std,
            weights: &self.weights,
            scales: &self.scales,
        }
        .crc32()
    }

    /// Whether every seed is an identity (the forward is one copy + telemetry pass).
    pub fn all_identity(&self) -> bool {
        self.plans.iter().all(|p| p.kind == Kind::Identity)
    }
}

/// The partials arrays of a layer, borrowed mutably together.
pub(crate) struct Partials<'a> {
    pub fwd: &'a mut [Moments],
    pub col: &'a mut [f32],
    pub scal: &'a mut [f64],
    pub gsq: &'a mut [f64],
}

fn identity_plan() -> SeedPlan {
    SeedPlan::from_core(kasmina_core::SeedPlan::IDENTITY)
}

/// A seed's padded parameter rows (`cp` long, zero past `C`): the weights, `weights * scale`
/// (RESIDUAL) and `softmax(weights)` (ATTENTION, core's [`kasmina_core::plan::softmax`]).
fn padded_rows(w: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let cp = w.len().div_ceil(MAX_LANES) * MAX_LANES;
    let pad = |v: &mut Vec<f32>| v.resize(cp, 0.0);
    let mut wp = w.to_vec();
    let mut wsp: Vec<f32> = w.iter().map(|v| v * scale).collect();
    let mut pp = kasmina_core::plan::softmax(w);
    pad(&mut wp);
    pad(&mut wsp);
    pad(&mut pp);
    (wp, wsp, pp)
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The row blocks of a call cover its `B` rows in at most [`MAX_BLOCKS`] blocks of at
        /// least one row, and a block's element count `rows * H` never wraps, for any `B` and
        /// `H` a call can have (`B * H` elements fit the address space).
        #[test]
        fn row_blocks_cover_every_batch_without_wrapping(h in 1usize..=u32::MAX as usize, b in any::<usize>()) {
            let b = b % (isize::MAX as usize / h + 1);
            let rpb = rows_per_block(b, h);
            prop_assert!(rpb >= 1);
            prop_assert!(b.div_ceil(rpb) <= MAX_BLOCKS);
            // A block's elements: at most the call's, or the target block size when B is small.
            let elems = rpb.checked_mul(h);
            prop_assert!(elems.is_some());
            prop_assert!(rpb <= b.max(TARGET_BLOCK_ELEMS.div_ceil(h)));
        }
    }
}
