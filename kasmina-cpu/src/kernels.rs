//! The forward and backward kernels over one block of rows, generic over the
//! instruction set ([`Simd`]) and the storage dtype ([`Dt`]).
//!
//! A block is processed by one thread in a fixed order (groups of
//! [`ROWS_PER_VISIT`] rows, [`ROWS_PER_VISIT_16`] in the forward of 16-bit
//! dtypes; within a group seed by seed, row by row), so its partial results
//! depend only on its rows. The caller merges block partials in block order
//! (see `crate::layer`).
//!
//! Each seed chunk is one pass: identity seeds copy the raw bits (f16/bf16 as
//! raw u16, NaN payloads kept) and feed the same loaded vector to the
//! telemetry, settled once per visit of the group's rows with two sets of sum
//! registers (see [`ident_visit`]); RESIDUAL, ATTENTION and MLP seeds load,
//! add to the telemetry, blend, clamp and store vector by vector. Only CONV (whose taps read
//! `x_{j-1}`, `x_{j-2}`, and in backward `g_{j+1}`, `g_{j+2}`) stages its chunk
//! in a small zero-padded f32 buffer first. The blueprint kind is a const
//! generic of the chunk loop, so there is no per-vector branch on it.
//!
//! Telemetry partials (forward): per seed, `W` f32 lanes of `Σ d`, `Σ d²`,
//! min and max of the finite elements, with `d = x - K` and `K` the mean of
//! the finite elements of the seed's chunk in the first row of the block that
//! has any. Shifting by a value close to the mean keeps `Σ d²` free of the
//! catastrophic cancellation of `Σ x² - (Σ x)²/n` when `|mean| >> std`. At
//! the end of the block the lanes are summed in f64 into a
//! [`Moments`] (`mean = K + Σd/n`, `m2 = Σd² - (Σd)²/n`), which the caller
//! merges with Chan's formula in f64. If a partial overflowed f32 (data of
//! magnitude ~1e19 and above), that block and seed is recomputed exactly in
//! f64 from the input, so huge values give a large or infinite variance,
//! never NaN. Non-finite inputs are masked out of every sum and only counted:
//! the hot loop adds lanes unmasked and only remembers whether a NaN/Inf or a
//! dead element went by; a chunk that had a NaN/Inf is redone exactly with
//! masks from the registers saved before it (see [`TeleRegs`]).
//!
//! Backward partials: per seed, f32 column sums over the block's rows and
//! f32 vector sums reduced to f64 once per visit; `crate::layer` turns them
//! into `dweights`, `dscales` (SPEC 7) with f64 sums in block order.

use kasmina_core::Moments;

use crate::simd::{MAX_LANES, Simd};

/// A storage dtype: raw element type, vector load/store with conversion.
pub(crate) trait Dt: Copy + Send + Sync + 'static {
    /// The raw element (`f32` or `u16`).
    type Raw: Copy + Default + Send + Sync + bytemuck::Pod;
    /// Vector load with conversion to f32.
    unsafe fn load<S: Simd>(s: S, p: *const Self::Raw) -> S::V;
    /// Vector store with conversion from f32 (non-temporal with `NT`).
    unsafe fn store<S: Simd, const NT: bool>(s: S, p: *mut Self::Raw, v: S::V);
    /// Raw copy of `W` elements, returning them widened (one load for both).
    unsafe fn copy_load<S: Simd, const NT: bool>(s: S, src: *const Self::Raw, dst: *mut Self::Raw) -> S::V;
    /// Raw copy of `2 W` elements, returning both vectors widened.
    #[inline(always)]
    unsafe fn copy_load2<S: Simd, const NT: bool>(s: S, src: *const Self::Raw, dst: *mut Self::Raw) -> (S::V, S::V) {
        // SAFETY: forwarded contract (valid for 2 W elements).
        unsafe { (Self::copy_load::<S, NT>(s, src, dst), Self::copy_load::<S, NT>(s, src.add(S::W), dst.add(S::W))) }
    }
    /// Raw copy of `2 W` elements for the identity fast path: both vectors
    /// widened (lane order: see [`Simd::copy_load2_bf16_mag`]; only the
    /// order-free telemetry sums may consume them), the magnitude bits folded
    /// into `amax`/`amin` in the form [`Dt::mag_fold`] reads.
    #[inline(always)]
    unsafe fn copy_load2_mag<S: Simd, const NT: bool>(
        s: S,
        src: *const Self::Raw,
        dst: *mut Self::Raw,
        amax: &mut S::I,
        amin: &mut S::I,
    ) -> (S::V, S::V) {
        // SAFETY: forwarded contract (valid for 2 W elements).
        let (v0, v1) = unsafe { Self::copy_load2::<S, NT>(s, src, dst) };
        let (a0, a1) = (s.abs(v0), s.abs(v1));
        *amax = s.imax_bits(s.imax_bits(*amax, a0), a1);
        *amin = s.imin_bits(s.imin_bits(*amin, a0), a1);
        (v0, v1)
    }
    /// The trackers of [`Dt::copy_load2_mag`] as lane-wise max/min of `bits(|x|)`.
    #[inline(always)]
    fn mag_fold<S: Simd>(s: S, amax: S::I, amin: S::I) -> (S::I, S::I) {
        let _ = s;
        (amax, amin)
    }
    /// Scalar widening.
    fn to_f32(r: Self::Raw) -> f32;
}

/// f32 storage.
#[derive(Clone, Copy)]
pub(crate) struct F32;
/// f16 storage.
#[derive(Clone, Copy)]
pub(crate) struct F16;
/// bf16 storage.
#[derive(Clone, Copy)]
pub(crate) struct BF16;

impl Dt for F32 {
    type Raw = f32;
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.load(p) }
    }
    #[inline(always)]
    unsafe fn store<S: Simd, const NT: bool>(s: S, p: *mut f32, v: S::V) {
        // SAFETY: forwarded contract.
        unsafe { if NT { s.stream(p, v) } else { s.store(p, v) } }
    }
    #[inline(always)]
    unsafe fn copy_load<S: Simd, const NT: bool>(s: S, src: *const f32, dst: *mut f32) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load32::<NT>(src, dst) }
    }
    #[inline(always)]
    fn to_f32(r: f32) -> f32 {
        r
    }
}

impl Dt for F16 {
    type Raw = u16;
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const u16) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.load_f16(p) }
    }
    #[inline(always)]
    unsafe fn store<S: Simd, const NT: bool>(s: S, p: *mut u16, v: S::V) {
        // SAFETY: forwarded contract.
        unsafe { s.store_f16::<NT>(p, v) }
    }
    #[inline(always)]
    unsafe fn copy_load<S: Simd, const NT: bool>(s: S, src: *const u16, dst: *mut u16) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load_f16::<NT>(src, dst) }
    }
    #[inline(always)]
    unsafe fn copy_load2<S: Simd, const NT: bool>(s: S, src: *const u16, dst: *mut u16) -> (S::V, S::V) {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load2_16::<NT, false>(src, dst) }
    }
    #[inline(always)]
    fn to_f32(r: u16) -> f32 {
        half::f16::from_bits(r).to_f32()
    }
}

impl Dt for BF16 {
    type Raw = u16;
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const u16) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.load_bf16(p) }
    }
    #[inline(always)]
    unsafe fn store<S: Simd, const NT: bool>(s: S, p: *mut u16, v: S::V) {
        // SAFETY: forwarded contract.
        unsafe { s.store_bf16::<NT>(p, v) }
    }
    #[inline(always)]
    unsafe fn copy_load<S: Simd, const NT: bool>(s: S, src: *const u16, dst: *mut u16) -> S::V {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load_bf16::<NT>(src, dst) }
    }
    #[inline(always)]
    unsafe fn copy_load2<S: Simd, const NT: bool>(s: S, src: *const u16, dst: *mut u16) -> (S::V, S::V) {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load2_16::<NT, true>(src, dst) }
    }
    #[inline(always)]
    unsafe fn copy_load2_mag<S: Simd, const NT: bool>(
        s: S,
        src: *const u16,
        dst: *mut u16,
        amax: &mut S::I,
        amin: &mut S::I,
    ) -> (S::V, S::V) {
        // SAFETY: forwarded contract.
        unsafe { s.copy_load2_bf16_mag::<NT>(src, dst, amax, amin) }
    }
    #[inline(always)]
    fn mag_fold<S: Simd>(s: S, amax: S::I, amin: S::I) -> (S::I, S::I) {
        s.bf16_mag_fold(amax, amin)
    }
    #[inline(always)]
    fn to_f32(r: u16) -> f32 {
        half::bf16::from_bits(r).to_f32()
    }
}

/// Prefetches the `bytes` bytes at `p + dist` (one hint per 64-byte line). The backward
/// uses it for the chunks of `x` that only active seeds read: scattered reads the hardware
/// prefetchers cannot follow. Streams read in order (the forward, the gradient) need none.
#[inline(always)]
fn prefetch_ahead<S: Simd>(s: S, p: *const u8, bytes: usize, dist: usize) {
    let mut o = 0;
    while o < bytes {
        s.prefetch(p.wrapping_add(dist + o));
        o += 64;
    }
}

/// Rows processed per visit of a seed (forward, backward) for elements of `elem_bytes` bytes.
const fn rows_per_visit(elem_bytes: usize) -> (usize, usize) {
    let fwd = if elem_bytes == 2 { ROWS_PER_VISIT_16 } else { ROWS_PER_VISIT };
    (fwd, ROWS_PER_VISIT)
}

/// Forward rows per visit of a seed for chunks of `c` elements: at least
/// [`rows_per_visit`]'s, and enough rows for [`VISIT_ELEMS`] elements, so short
/// chunks load and store their telemetry registers once per that many elements.
fn fwd_rows_per_visit(elem_bytes: usize, c: usize) -> usize {
    rows_per_visit(elem_bytes).0.max(VISIT_ELEMS / c.max(1)).min(MAX_ROWS_PER_VISIT)
}

/// Elements of one seed a forward visit covers at least (see [`fwd_rows_per_visit`]).
const VISIT_ELEMS: usize = 256;
/// The most rows of one visit.
const MAX_ROWS_PER_VISIT: usize = 64;

/// Default rows processed per visit of a seed.
const ROWS_PER_VISIT: usize = 4;
/// Forward rows per visit for 16-bit dtypes: the same bytes per visit as f32
/// with [`ROWS_PER_VISIT`], so as many lines of the row streams in flight (on
/// the 2-core EPYC, with data in DRAM, one thread: bf16 dormant 3.9 vs 4.4 ms
/// best of 4 alternations; L2-resident, no difference).
const ROWS_PER_VISIT_16: usize = 8;

/// Loads `n < W` elements (the rest of the lanes are 0).
#[inline(always)]
unsafe fn load_tail<S: Simd, D: Dt>(s: S, p: *const D::Raw, n: usize) -> S::V {
    let mut tmp = [D::Raw::default(); MAX_LANES];
    // SAFETY: the caller guarantees `p` is valid for `n <= MAX_LANES` elements.
    unsafe {
        std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
        D::load(s, tmp.as_ptr())
    }
}

/// Stores the first `n < W` lanes.
#[inline(always)]
unsafe fn store_tail<S: Simd, D: Dt>(s: S, p: *mut D::Raw, n: usize, v: S::V) {
    let mut tmp = [D::Raw::default(); MAX_LANES];
    // SAFETY: the caller guarantees `p` is valid for `n <= MAX_LANES` elements.
    unsafe {
        D::store::<S, false>(s, tmp.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
    }
}

/// How one seed's chunk is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `y = x` bit for bit; `dx = g`.
    Identity,
    /// RESIDUAL blueprint.
    Residual,
    /// ATTENTION blueprint.
    Attention,
    /// MLP blueprint.
    Mlp,
    /// CONV blueprint.
    Conv,
}

/// Per-seed constants of a call, prepared at upload (not per row).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeedPlan {
    pub kind: Kind,
    /// FOSSILIZED: `y = t` (a = 1).
    pub fossil: bool,
    /// `a = clamp(alpha, 0, 1)` (1 for FOSSILIZED).
    pub a: f32,
    /// `1 - a`.
    pub oma: f32,
    /// Scale.
    pub s: f32,
    /// CONV taps (0 beyond C).
    pub w0: f32,
    pub w1: f32,
    pub w2: f32,
    /// Strict-mode clamp band, when set.
    pub clamp: Option<(f32, f32)>,
}

impl SeedPlan {
    /// The kernel form of core's plan (the rules live there).
    pub(crate) fn from_core(p: kasmina_core::SeedPlan) -> Self {
        use kasmina_core::{BlueprintType, ForwardMode};
        let kind = match (p.mode, p.blueprint_type) {
            (ForwardMode::Identity, _) => Kind::Identity,
            (_, BlueprintType::Residual) => Kind::Residual,
            (_, BlueprintType::Attention) => Kind::Attention,
            (_, BlueprintType::Mlp) => Kind::Mlp,
            (_, BlueprintType::Conv) => Kind::Conv,
        };
        let [w0, w1, w2] = p.taps;
        Self {
            kind,
            fossil: p.mode == ForwardMode::Blueprint,
            a: p.a,
            oma: 1.0 - p.a,
            s: p.scale,
            w0,
            w1,
            w2,
            clamp: p.clamp,
        }
    }

    /// Whether two plans hold the same bits (NaN payloads included).
    pub(crate) fn same_bits(&self, o: &Self) -> bool {
        let b = |v: f32| v.to_bits();
        let clamp = |c: Option<(f32, f32)>| c.map(|(l, h)| (b(l), b(h)));
        self.kind == o.kind
            && self.fossil == o.fossil
            && [self.a, self.oma, self.s, self.w0, self.w1, self.w2].map(b)
                == [o.a, o.oma, o.s, o.w0, o.w1, o.w2].map(b)
            && clamp(self.clamp) == clamp(o.clamp)
    }
}

/// Shapes and per-seed parameters shared by every block of a call.
pub(crate) struct Plan<'a> {
    /// H.
    pub h: usize,
    /// C.
    pub c: usize,
    /// C rounded up to [`MAX_LANES`] (stride of the padded parameter rows).
    pub cp: usize,
    pub dead_eps: f32,
    pub seeds: &'a [SeedPlan],
    /// `weights[S, cp]`, zero padded.
    pub w: &'a [f32],
    /// `weights * scale` (RESIDUAL), `[S, cp]`.
    pub ws: &'a [f32],
    /// `softmax(weights)` (ATTENTION), `[S, cp]`.
    pub p: &'a [f32],
}

/// One seed's telemetry lanes within a block.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct TelePartial {
    sum: [f32; MAX_LANES],
    sumsq: [f32; MAX_LANES],
    min: [f32; MAX_LANES],
    max: [f32; MAX_LANES],
    /// Finite elements per lane.
    count: [u32; MAX_LANES],
    /// Dead elements per lane.
    dead: [u32; MAX_LANES],
    k: f32,
    kset: bool,
    /// Elements seen (finite or not).
    total: u64,
    /// Finite elements booked by the fast path (not in `count`).
    fast_count: u64,
}

impl TelePartial {
    pub(crate) const EMPTY: TelePartial = TelePartial {
        sum: [0.0; MAX_LANES],
        sumsq: [0.0; MAX_LANES],
        min: [f32::INFINITY; MAX_LANES],
        max: [f32::NEG_INFINITY; MAX_LANES],
        count: [0; MAX_LANES],
        dead: [0; MAX_LANES],
        k: 0.0,
        kset: false,
        total: 0,
        fast_count: 0,
    };

    /// The partial as f64 moments; `None` when an f32 sum overflowed.
    fn moments(&self) -> Option<Moments> {
        let mut m = Moments::empty();
        let count: u64 = self.count.iter().map(|v| *v as u64).sum::<u64>() + self.fast_count;
        m.dead = self.dead.iter().map(|v| *v as u64).sum();
        m.nonfinite = self.total - count;
        if count == 0 {
            return Some(m);
        }
        let n = count as f64;
        let s1: f64 = self.sum.iter().map(|v| *v as f64).sum();
        let s2: f64 = self.sumsq.iter().map(|v| *v as f64).sum();
        if !(s1.is_finite() && s2.is_finite() && self.k.is_finite()) {
            return None;
        }
        m.count = count;
        m.mean = self.k as f64 + s1 / n;
        m.m2 = (s2 - s1 * s1 / n).max(0.0);
        m.min = self.min.iter().fold(f64::INFINITY, |a, v| a.min(*v as f64));
        m.max = self.max.iter().fold(f64::NEG_INFINITY, |a, v| a.max(*v as f64));
        Some(m)
    }
}

/// Per-thread scratch: telemetry lanes per seed and padded f32 copies of a chunk.
pub(crate) struct ThreadScratch {
    pub tele: Vec<TelePartial>,
    /// `[0, 0, x_0 .. x_{C-1}, 0 ...]`: x with two zeros in front (CONV's causal taps).
    pub xb: Vec<f32>,
    /// `[g'_0 .. g'_{C-1}, 0 ...]`.
    pub gb: Vec<f32>,
}

impl ThreadScratch {
    pub(crate) fn new(num_seeds: usize, cp: usize) -> Self {
        Self {
            tele: vec![TelePartial::EMPTY; num_seeds],
            xb: vec![0.0; cp + 2 + 2 * MAX_LANES],
            gb: vec![0.0; cp + 2 + 2 * MAX_LANES],
        }
    }
}

/// Telemetry registers of one seed during a visit.
///
/// The fast step adds every lane unmasked and only records whether any lane
/// was non-finite or dead; [`TeleRegs::resolve`] then either books the whole
/// run of full vectors as finite (the common case) or, if a NaN/Inf was seen,
/// redoes it from the saved partial with the exact masked step. Dead elements
/// are counted by a second, L1-resident pass only when the run had any.
struct TeleRegs<S: Simd> {
    sum: S::V,
    sumsq: S::V,
    min: S::V,
    max: S::V,
    count: S::I,
    dead: S::I,
    /// Lane-wise max of `bits(|x|)` since the last resolve: `>= bits(inf)` means a NaN/Inf went by.
    abs_max: S::I,
    /// Lane-wise min of `bits(|x|)` since the last resolve: `< bits(dead_eps)` means a dead element.
    abs_min: S::I,
}

impl<S: Simd> Clone for TeleRegs<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: Simd> Copy for TeleRegs<S> {}

impl<S: Simd> TeleRegs<S> {
    #[inline(always)]
    unsafe fn load(s: S, tp: &TelePartial) -> Self {
        // SAFETY: the arrays hold MAX_LANES >= W lanes.
        unsafe {
            Self {
                sum: s.load(tp.sum.as_ptr()),
                sumsq: s.load(tp.sumsq.as_ptr()),
                min: s.load(tp.min.as_ptr()),
                max: s.load(tp.max.as_ptr()),
                count: s.iload(tp.count.as_ptr()),
                dead: s.iload(tp.dead.as_ptr()),
                abs_max: s.isplat(0),
                abs_min: s.isplat(ABS_BITS_MAX),
            }
        }
    }

    /// Writes the lanes back; `c` elements were stepped in this chunk.
    #[inline(always)]
    unsafe fn save(self, s: S, tp: &mut TelePartial, c: usize) {
        // SAFETY: the arrays hold MAX_LANES >= W lanes.
        unsafe {
            s.store(tp.sum.as_mut_ptr(), self.sum);
            s.store(tp.sumsq.as_mut_ptr(), self.sumsq);
            s.store(tp.min.as_mut_ptr(), self.min);
            s.store(tp.max.as_mut_ptr(), self.max);
            s.istore(tp.count.as_mut_ptr(), self.count);
            s.istore(tp.dead.as_mut_ptr(), self.dead);
        }
        tp.total += c as u64;
    }

    /// Adds a full vector unmasked, remembering (as integer max/min of the
    /// magnitude bits, no mask traffic) whether a NaN/Inf or a dead element went by.
    #[inline(always)]
    fn step_fast(&mut self, s: S, x: S::V, k: S::V) {
        let ax = s.abs(x);
        self.abs_max = s.imax_bits(self.abs_max, ax);
        self.abs_min = s.imin_bits(self.abs_min, ax);
        let d = s.sub(x, k);
        self.sum = s.add(self.sum, d);
        self.sumsq = s.fma(d, d, self.sumsq);
        self.min = s.min(self.min, x);
        self.max = s.max(self.max, x);
    }

    /// The sums of [`Self::step_fast`] without the magnitude trackers (the
    /// identity path keeps those in [`Dt::copy_load2_mag`]).
    #[inline(always)]
    fn step_sums(&mut self, s: S, x: S::V, k: S::V) {
        let d = s.sub(x, k);
        self.sum = s.add(self.sum, d);
        self.sumsq = s.fma(d, d, self.sumsq);
        self.min = s.min(self.min, x);
        self.max = s.max(self.max, x);
    }

    /// Settles the `n` elements (whole vectors) at `xp` added by [`Self::step_fast`]
    /// since the registers were `saved`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn resolve<D: Dt>(
        &mut self,
        s: S,
        tp: &mut TelePartial,
        saved: Self,
        xp: *const D::Raw,
        n: usize,
        k: S::V,
        dead_eps: S::V,
        dead_bits: u32,
        inf: S::V,
    ) {
        let all = s.first_n(S::W);
        // SAFETY: `xp` is valid for `n` elements; `tp` lanes hold MAX_LANES >= W.
        unsafe {
            let any_nonfinite = s.iany_ge(self.abs_max, INF_BITS);
            // Some lane's smallest magnitude is below dead_eps (bits compare like magnitudes).
            let any_dead = s.iany_lt(self.abs_min, dead_bits);
            self.abs_max = s.isplat(0);
            self.abs_min = s.isplat(ABS_BITS_MAX);
            if any_nonfinite {
                // Rare: a NaN or Inf was seen. Redo the run exactly from the registers before it.
                *self = saved;
                let mut j = 0;
                while j < n {
                    self.step(s, D::load(s, xp.add(j)), all, k, dead_eps, inf);
                    j += S::W;
                }
                return;
            }
            tp.fast_count += n as u64;
            if any_dead {
                let mut j = 0;
                while j < n {
                    let x = D::load(s, xp.add(j));
                    self.dead = s.inc_m(s.lt(s.abs(x), dead_eps), self.dead);
                    j += S::W;
                }
            }
        }
    }

    /// Adds the lanes of `x` selected by `valid`, exactly (non-finite lanes only counted).
    #[inline(always)]
    fn step(&mut self, s: S, x: S::V, valid: S::M, k: S::V, dead_eps: S::V, inf: S::V) {
        let ax = s.abs(x);
        let fin = s.and(s.lt(ax, inf), valid);
        let d = s.sub(x, k);
        self.sum = s.add_m(fin, self.sum, d);
        self.sumsq = s.fma_m(fin, d, d, self.sumsq);
        self.min = s.min_m(fin, self.min, x);
        self.max = s.max_m(fin, self.max, x);
        self.count = s.inc_m(fin, self.count);
        // |x| < dead_eps is false for NaN and infinities.
        self.dead = s.inc_m(s.and(valid, s.lt(ax, dead_eps)), self.dead);
    }
}

/// `bits(inf)`: magnitudes at or above it are NaN or infinite.
const INF_BITS: u32 = 0x7F80_0000;
/// The largest magnitude bit pattern (a NaN).
const ABS_BITS_MAX: u32 = 0x7FFF_FFFF;

/// The bit pattern below which a magnitude is dead: finite `|x| < dead_eps`
/// exactly when `bits(|x|) < dead_bits(dead_eps)` (0 when nothing can be dead).
fn dead_bits(dead_eps: f32) -> u32 {
    if dead_eps > 0.0 { dead_eps.to_bits().min(INF_BITS) } else { 0 }
}

/// Mean of the finite elements of a chunk (f32), or `None` when there are none.
#[inline(always)]
unsafe fn chunk_mean<S: Simd, D: Dt>(s: S, x: *const D::Raw, c: usize) -> Option<f32> {
    let inf = s.splat(f32::INFINITY);
    let zero = s.splat(0.0);
    let mut sum = zero;
    let mut n = 0u32;
    let mut j = 0;
    // SAFETY: `x` is valid for `c` elements (caller).
    unsafe {
        while j + S::W <= c {
            let v = D::load(s, x.add(j));
            let fin = s.lt(s.abs(v), inf);
            sum = s.add(sum, s.select(fin, v, zero));
            n += s.bits(fin).count_ones();
            j += S::W;
        }
        if j < c {
            let v = load_tail::<S, D>(s, x.add(j), c - j);
            let fin = s.and(s.lt(s.abs(v), inf), s.first_n(c - j));
            sum = s.add(sum, s.select(fin, v, zero));
            n += s.bits(fin).count_ones();
        }
    }
    let k = s.hsum(sum) / n as f32;
    (n > 0 && k.is_finite()).then_some(k)
}

/// Kind codes for the const-generic chunk loops (the kind is a compile-time
/// constant inside the loop, so there is no per-vector branch on it).
const RES: u8 = 0;
const ATT: u8 = 1;
const MLP: u8 = 2;
const CONV: u8 = 3;

/// Per-seed pointers and constants of a chunk loop.
struct ChunkArgs<'a> {
    sp: &'a SeedPlan,
    /// Padded x: `xb[2 + j] = x_j`, zeros before and after.
    xb: *mut f32,
    /// Padded g (backward).
    gb: *mut f32,
    w: *const f32,
    ws: *const f32,
    p: *const f32,
    /// [`dead_bits`] of the layer's `dead_eps` (forward telemetry).
    db: u32,
}

/// `t` of a non-CONV blueprint for the vector `x` at chunk offset `j`, blended
/// as the seed's mode says, unclamped.
#[inline(always)]
unsafe fn blend_x<S: Simd, const K: u8>(s: S, a: &ChunkArgs<'_>, x: S::V, j: usize) -> S::V {
    let sp = a.sp;
    // SAFETY: the parameter rows hold `cp` floats and `j < cp`.
    unsafe {
        let t = match K {
            RES => s.add(x, s.load(a.ws.add(j))),
            ATT => s.mul(x, s.load(a.p.add(j))),
            _ => {
                let v = s.mul(x, s.load(a.w.add(j)));
                // relu keeping NaN: NaN < 0 is false.
                let r = s.select(s.lt(v, s.splat(0.0)), s.splat(0.0), v);
                s.mul(r, s.splat(sp.s))
            }
        };
        if sp.fossil { t } else { s.fma(s.splat(sp.oma), x, s.mul(s.splat(sp.a), t)) }
    }
}

/// The blended output at chunk offset `j` read from the padded buffer `xb`
/// (CONV needs `x_{j-1}`, `x_{j-2}`), unclamped.
#[inline(always)]
unsafe fn blend<S: Simd, const K: u8>(s: S, a: &ChunkArgs<'_>, j: usize) -> S::V {
    let sp = a.sp;
    // SAFETY: `xb` holds `cp + 2 + 2 W` floats, the parameter rows `cp`; `j < cp`.
    unsafe {
        let x = s.load(a.xb.add(2 + j));
        if K != CONV {
            return blend_x::<S, K>(s, a, x, j);
        }
        let xm1 = s.load(a.xb.add(1 + j));
        let xm2 = s.load(a.xb.add(j));
        let inner = s.add(s.add(s.mul(s.splat(sp.w0), x), s.mul(s.splat(sp.w1), xm1)), s.mul(s.splat(sp.w2), xm2));
        let t = s.mul(s.splat(sp.s), inner);
        if sp.fossil { t } else { s.fma(s.splat(sp.oma), x, s.mul(s.splat(sp.a), t)) }
    }
}

/// Forward of one non-CONV chunk in a single pass: load, telemetry, blend,
/// clamp, store, vector by vector (no staging buffer).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_fused<S: Simd, D: Dt, const NT: bool, const K: u8>(
    s: S,
    a: &ChunkArgs<'_>,
    xp: *const D::Raw,
    yp: *mut D::Raw,
    c: usize,
    tr: &mut TeleRegs<S>,
    tp: &mut TelePartial,
    k: S::V,
    de: S::V,
) {
    let inf = s.splat(f32::INFINITY);
    let (lo, hi) = match a.sp.clamp {
        Some((lo, hi)) => (s.splat(lo), s.splat(hi)),
        None => (s.splat(f32::NEG_INFINITY), inf),
    };
    let clamped = a.sp.clamp.is_some();
    let mut j = 0;
    // SAFETY: `xp`, `yp` are valid for `c` elements; see `blend_x`.
    unsafe {
        let saved = *tr;
        while j + S::W <= c {
            let x = D::load(s, xp.add(j));
            tr.step_fast(s, x, k);
            let mut y = blend_x::<S, K>(s, a, x, j);
            if clamped {
                y = clamp(s, y, lo, hi);
            }
            D::store::<S, NT>(s, yp.add(j), y);
            j += S::W;
        }
        tr.resolve::<D>(s, tp, saved, xp, j, k, de, a.db, inf);
        if j < c {
            let x = load_tail::<S, D>(s, xp.add(j), c - j);
            tr.step(s, x, s.first_n(c - j), k, de, inf);
            let mut y = blend_x::<S, K>(s, a, x, j);
            if clamped {
                y = clamp(s, y, lo, hi);
            }
            store_tail::<S, D>(s, yp.add(j), c - j, y);
        }
    }
}

/// Backward of one non-CONV chunk in a single pass over `x` and `g` (no
/// staging buffer), adding to the seed's column sums and vector accumulators.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn bwd_fused<S: Simd, D: Dt, const NT: bool, const K: u8>(
    s: S,
    a: &ChunkArgs<'_>,
    xp: *const D::Raw,
    gp: *const D::Raw,
    dp: *mut D::Raw,
    col: *mut f32,
    c: usize,
    acc: &mut BwdAcc<S>,
) {
    let sp = a.sp;
    let zero = s.splat(0.0);
    let (lo, hi) = match sp.clamp {
        Some((lo, hi)) => (s.splat(lo), s.splat(hi)),
        None => (s.splat(f32::NEG_INFINITY), s.splat(f32::INFINITY)),
    };
    let clamped = sp.clamp.is_some();
    let (al, oma, sc) = (s.splat(sp.a), s.splat(sp.oma), s.splat(sp.s));
    let mut v0 = acc.v[0];
    let mut gsq = acc.gsq;
    let mut j = 0;
    // SAFETY: `xp`, `gp`, `dp` are valid for `c` elements, `col` and the
    // parameter rows for `cp >= c` rounded up to `W`.
    unsafe {
        while j < c {
            let full = j + S::W <= c;
            let (xv, mut gv) = if full {
                (D::load(s, xp.add(j)), D::load(s, gp.add(j)))
            } else {
                (load_tail::<S, D>(s, xp.add(j), c - j), load_tail::<S, D>(s, gp.add(j), c - j))
            };
            gsq = s.fma(gv, gv, gsq);
            // Strict mode: the gradient of a clamped output element is 0.
            if clamped {
                let y = blend_x::<S, K>(s, a, xv, j);
                gv = s.select(s.or(s.lt(y, lo), s.gt(y, hi)), zero, gv);
            }
            let dxv = match K {
                RES => {
                    s.store(col.add(j), s.add(s.load(col.add(j)), gv));
                    gv
                }
                ATT => {
                    let pv = s.load(a.p.add(j));
                    let gx = s.mul(gv, xv);
                    s.store(col.add(j), s.add(s.load(col.add(j)), gx));
                    v0 = s.fma(gx, pv, v0);
                    let gp_ = s.mul(gv, pv);
                    if sp.fossil { gp_ } else { s.fma(oma, gv, s.mul(al, gp_)) }
                }
                _ => {
                    let wv = s.load(a.w.add(j));
                    let xw = s.mul(xv, wv);
                    let m = s.gt(xw, zero);
                    let term = s.select(m, s.mul(s.mul(gv, wv), sc), zero);
                    s.store(col.add(j), s.add(s.load(col.add(j)), s.select(m, s.mul(gv, xv), zero)));
                    let relu = s.select(s.lt(xw, zero), zero, xw);
                    v0 = s.fma(gv, relu, v0);
                    if sp.fossil { term } else { s.fma(oma, gv, s.mul(al, term)) }
                }
            };
            if full {
                D::store::<S, NT>(s, dp.add(j), dxv);
            } else {
                store_tail::<S, D>(s, dp.add(j), c - j, dxv);
            }
            j += S::W;
        }
        acc.v[0] = v0;
        acc.gsq = gsq;
    }
}

/// Forward of one identity seed over the rows `rows` of a block: a raw copy
/// of its chunk in each row (bit for bit, NaN payloads kept) and the
/// telemetry of the same loaded vectors, in one pass.
///
/// The whole vectors of every row go through the fast path (pairs by
/// [`Dt::copy_load2_mag`], a last single vector by [`Dt::copy_load`] with its
/// own magnitude trackers; [`TeleRegs::step_sums`]) and are settled once for
/// the visit: if a NaN/Inf went by, the visit is redone exactly from the
/// registers at its start (rows in the same order); dead elements are counted
/// by a second, cache-resident pass only when the visit had any. What is left
/// of each row (`c` not a multiple of `W`) is added exactly.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn ident_visit<S: Simd, D: Dt, const NT: bool>(
    s: S,
    tr: &mut TeleRegs<S>,
    tp: &mut TelePartial,
    x: *const D::Raw,
    y: *mut D::Raw,
    h: usize,
    col: usize,
    c: usize,
    rows: std::ops::Range<usize>,
    de: S::V,
    db: u32,
    inf: S::V,
) {
    let step = 2 * S::W;
    let pairs = c / step * step;
    // Whole vectors: the pairs, then at most one single vector.
    let main = c / S::W * S::W;
    // `bits(|x|)` trackers of the single vectors (the pair trackers of
    // `copy_load2_mag` have a dtype-specific form).
    let (mut single_max, mut single_min) = (s.isplat(0), s.isplat(ABS_BITS_MAX));
    let saved = *tr;
    let mut k = s.splat(tp.k);
    // A second set of sums for the second vector of each step: two short
    // dependency chains instead of one long one; folded into `tr` after the rows.
    let mut b = TeleRegs::<S> {
        sum: s.splat(0.0),
        sumsq: s.splat(0.0),
        min: s.splat(f32::INFINITY),
        max: s.splat(f32::NEG_INFINITY),
        ..*tr
    };
    // SAFETY: for every row `r` of `rows`, `x` and `y` are valid for the `c`
    // elements at `r * h + col` (caller).
    unsafe {
        for r in rows.clone() {
            let xp = x.add(r * h + col);
            let yp = y.add(r * h + col);
            if !tp.kset
                && let Some(m) = chunk_mean::<S, D>(s, xp, c)
            {
                tp.k = m;
                tp.kset = true;
                k = s.splat(m);
            }
            let mut j = 0;
            // Two steps per iteration: besides the shorter loop, the two stores of an
            // iteration are not one strided run, which keeps LLVM from turning the
            // copy into a `memcpy` call per row when the stores are not streamed.
            while j + 2 * step <= pairs {
                let (am, an) = (&mut tr.abs_max, &mut tr.abs_min);
                let (v0, v1) = D::copy_load2_mag::<S, NT>(s, xp.add(j), yp.add(j), am, an);
                let (v2, v3) = D::copy_load2_mag::<S, NT>(s, xp.add(j + step), yp.add(j + step), am, an);
                tr.step_sums(s, v0, k);
                b.step_sums(s, v1, k);
                tr.step_sums(s, v2, k);
                b.step_sums(s, v3, k);
                j += 2 * step;
            }
            if j < pairs {
                let (v0, v1) = D::copy_load2_mag::<S, NT>(s, xp.add(j), yp.add(j), &mut tr.abs_max, &mut tr.abs_min);
                tr.step_sums(s, v0, k);
                b.step_sums(s, v1, k);
            }
            if pairs < main {
                let v = D::copy_load::<S, NT>(s, xp.add(pairs), yp.add(pairs));
                let a = s.abs(v);
                single_max = s.imax_bits(single_max, a);
                single_min = s.imin_bits(single_min, a);
                tr.step_sums(s, v, k);
            }
            ident_rest::<S, D>(s, tr, xp, Some(yp), main, c, k, de, inf);
        }
        tr.sum = s.add(tr.sum, b.sum);
        tr.sumsq = s.add(tr.sumsq, b.sumsq);
        tr.min = s.min(tr.min, b.min);
        tr.max = s.max(tr.max, b.max);
        let (amax, amin) = D::mag_fold(s, tr.abs_max, tr.abs_min);
        if s.iany_ge(amax, INF_BITS) || s.iany_ge(single_max, INF_BITS) {
            // Rare: a NaN or Inf went by. Redo the visit exactly from its start. The rows
            // before the one that set K (if any) have no finite element, so whichever K
            // they are redone with adds nothing from them.
            *tr = saved;
            let all = s.first_n(S::W);
            for r in rows {
                let xp = x.add(r * h + col);
                let mut j = 0;
                while j < main {
                    tr.step(s, D::load(s, xp.add(j)), all, k, de, inf);
                    j += S::W;
                }
                ident_rest::<S, D>(s, tr, xp, None, main, c, k, de, inf);
            }
        } else {
            tp.fast_count += (main * rows.len()) as u64;
            // Some lane's smallest magnitude is below dead_eps (bits compare like magnitudes).
            if s.iany_lt(amin, db) || s.iany_lt(single_min, db) {
                for r in rows {
                    let xp = x.add(r * h + col);
                    let mut j = 0;
                    while j < main {
                        let v = D::load(s, xp.add(j));
                        tr.dead = s.inc_m(s.lt(s.abs(v), de), tr.dead);
                        j += S::W;
                    }
                }
            }
        }
        tr.abs_max = s.isplat(0);
        tr.abs_min = s.isplat(ABS_BITS_MAX);
    }
}

/// The elements `j..c` of an identity chunk, added exactly (and copied raw to `yp` when given).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn ident_rest<S: Simd, D: Dt>(
    s: S,
    tr: &mut TeleRegs<S>,
    xp: *const D::Raw,
    yp: Option<*mut D::Raw>,
    mut j: usize,
    c: usize,
    k: S::V,
    de: S::V,
    inf: S::V,
) {
    // SAFETY: `xp` (and `yp`) are valid for `c` elements (caller).
    unsafe {
        while j < c {
            let n = (c - j).min(S::W);
            if let Some(yp) = yp {
                std::ptr::copy_nonoverlapping(xp.add(j), yp.add(j), n);
            }
            let v = if n == S::W { D::load(s, xp.add(j)) } else { load_tail::<S, D>(s, xp.add(j), n) };
            tr.step(s, v, s.first_n(n), k, de, inf);
            j += n;
        }
    }
}

/// Forward output of one blend/blueprint chunk of `c` elements into `yp`.
#[inline(always)]
unsafe fn fwd_chunk<S: Simd, D: Dt, const NT: bool, const K: u8>(s: S, a: &ChunkArgs<'_>, yp: *mut D::Raw, c: usize) {
    let (lo, hi) = match a.sp.clamp {
        Some((lo, hi)) => (s.splat(lo), s.splat(hi)),
        None => (s.splat(f32::NEG_INFINITY), s.splat(f32::INFINITY)),
    };
    let clamped = a.sp.clamp.is_some();
    let mut j = 0;
    // SAFETY: `yp` is valid for `c` elements; see `blend`.
    unsafe {
        while j + S::W <= c {
            let mut y = blend::<S, K>(s, a, j);
            if clamped {
                y = clamp(s, y, lo, hi);
            }
            D::store::<S, NT>(s, yp.add(j), y);
            j += S::W;
        }
        if j < c {
            let mut y = blend::<S, K>(s, a, j);
            if clamped {
                y = clamp(s, y, lo, hi);
            }
            store_tail::<S, D>(s, yp.add(j), c - j, y);
        }
    }
}

/// Backward of one CONV chunk staged in the padded buffers (`x_{j-1}`,
/// `x_{j-2}`, `g_{j+1}`, `g_{j+2}` are shifted loads): zeroes the gradient of
/// clamped outputs in `gb`, writes `dx`, and returns `Σ g' x_{j-k}` for
/// k = 0..2 and `Σ g' conv_j`.
#[inline(always)]
unsafe fn bwd_conv<S: Simd, D: Dt, const NT: bool>(
    s: S,
    a: &ChunkArgs<'_>,
    dp: *mut D::Raw,
    c: usize,
    acc: &mut BwdAcc<S>,
) {
    let sp = a.sp;
    let zero = s.splat(0.0);
    let (xb, gb) = (a.xb, a.gb);
    // SAFETY: `xb`, `gb` hold `cp + 2 + 2 W` floats (zero beyond the chunk),
    // the parameter rows `cp`, `dp` is valid for `c` elements.
    unsafe {
        // Strict mode: the gradient of a clamped output element is 0.
        if let Some((lo, hi)) = sp.clamp {
            let (lo, hi) = (s.splat(lo), s.splat(hi));
            let mut j = 0;
            while j < c {
                let y = blend::<S, CONV>(s, a, j);
                let out = s.or(s.lt(y, lo), s.gt(y, hi));
                s.store(gb.add(j), s.select(out, zero, s.load(gb.add(j))));
                j += S::W;
            }
        }
        let (al, oma, sc) = (s.splat(sp.a), s.splat(sp.oma), s.splat(sp.s));
        let (w0, w1, w2) = (s.splat(sp.w0), s.splat(sp.w1), s.splat(sp.w2));
        let mut v = acc.v;
        let mut j = 0;
        while j < c {
            let xv = s.load(xb.add(2 + j));
            let gv = s.load(gb.add(j));
            let g1 = s.load(gb.add(j + 1));
            let g2 = s.load(gb.add(j + 2));
            let xm1 = s.load(xb.add(1 + j));
            let xm2 = s.load(xb.add(j));
            v[0] = s.fma(gv, xv, v[0]);
            v[1] = s.fma(gv, xm1, v[1]);
            v[2] = s.fma(gv, xm2, v[2]);
            let conv = s.add(s.add(s.mul(w0, xv), s.mul(w1, xm1)), s.mul(w2, xm2));
            v[3] = s.fma(gv, conv, v[3]);
            let inner = s.add(s.add(s.mul(w0, gv), s.mul(w1, g1)), s.mul(w2, g2));
            let term = s.mul(sc, inner);
            let dxv = if sp.fossil { term } else { s.fma(oma, gv, s.mul(al, term)) };
            if j + S::W <= c {
                D::store::<S, NT>(s, dp.add(j), dxv);
            } else {
                store_tail::<S, D>(s, dp.add(j), c - j, dxv);
            }
            j += S::W;
        }
        acc.v = v;
    }
}

/// Vector accumulators of one seed during a backward visit: the four
/// per-seed scalars of [`BwdPartial::scal`] and `Σ g²`, lane-wise.
struct BwdAcc<S: Simd> {
    v: [S::V; 4],
    gsq: S::V,
}

/// `y` clamped to `[lo, hi]` (comparisons, so a NaN `y` stays NaN).
#[inline(always)]
fn clamp<S: Simd>(s: S, y: S::V, lo: S::V, hi: S::V) -> S::V {
    s.select(s.lt(y, lo), lo, s.select(s.gt(y, hi), hi, y))
}

/// Forward over one block of rows: `y` and the block's telemetry (`out[S]`).
///
/// # Safety
/// `x` and `y` hold `rows * h` elements; `sc` was made for this plan's shape.
#[inline(always)]
pub(crate) unsafe fn forward_block<S: Simd, D: Dt, const NT: bool>(
    s: S,
    plan: &Plan<'_>,
    x: &[D::Raw],
    y: &mut [D::Raw],
    sc: &mut ThreadScratch,
    out: &mut [Moments],
) {
    let (h, c, cp) = (plan.h, plan.c, plan.cp);
    let rows = x.len() / h;
    let nseeds = plan.seeds.len();
    sc.tele[..nseeds].fill(TelePartial::EMPTY);
    let inf = s.splat(f32::INFINITY);
    let de = s.splat(plan.dead_eps);
    let db = dead_bits(plan.dead_eps);
    let xb = sc.xb.as_mut_ptr();
    let rpv = fwd_rows_per_visit(size_of::<D::Raw>(), c);
    let mut r0 = 0;
    while r0 < rows {
        // A few rows per visit of a seed: its telemetry registers are loaded
        // and stored once per visit instead of once per chunk.
        let r1 = (r0 + rpv).min(rows);
        for (i, sp) in plan.seeds.iter().enumerate() {
            let tp = &mut sc.tele[i];
            // SAFETY: the lanes of `tp` hold MAX_LANES >= W.
            let mut tr = unsafe { TeleRegs::<S>::load(s, tp) };
            if sp.kind == Kind::Identity {
                // SAFETY: rows `r0..r1` of `x` and `y` hold `h` elements each, the
                // seed's chunk is `i * c .. i * c + c`.
                unsafe {
                    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
                    ident_visit::<S, D, NT>(s, &mut tr, tp, xp, yp, h, i * c, c, r0..r1, de, db, inf);
                    tr.save(s, tp, c * (r1 - r0));
                }
                continue;
            }
            for r in r0..r1 {
                let off = r * h + i * c;
                // SAFETY: `off + c <= rows * h` for both tensors; the scratch
                // buffers hold `cp + 2 + 2 W` floats and the parameter rows `cp`.
                unsafe {
                    let xp = x.as_ptr().add(off);
                    let yp = y.as_mut_ptr().add(off);
                    if !tp.kset
                        && let Some(k) = chunk_mean::<S, D>(s, xp, c)
                    {
                        tp.k = k;
                        tp.kset = true;
                    }
                    let k = s.splat(tp.k);
                    let saved = tr;
                    let mut j = 0;
                    let args = ChunkArgs {
                        sp,
                        xb,
                        gb: xb,
                        w: plan.w.as_ptr().add(i * cp),
                        ws: plan.ws.as_ptr().add(i * cp),
                        p: plan.p.as_ptr().add(i * cp),
                        db,
                    };
                    match sp.kind {
                        Kind::Residual => fwd_fused::<S, D, NT, RES>(s, &args, xp, yp, c, &mut tr, tp, k, de),
                        Kind::Attention => fwd_fused::<S, D, NT, ATT>(s, &args, xp, yp, c, &mut tr, tp, k, de),
                        Kind::Mlp => fwd_fused::<S, D, NT, MLP>(s, &args, xp, yp, c, &mut tr, tp, k, de),
                        Kind::Conv | Kind::Identity => {
                            // CONV: widen the chunk into the padded buffer (with its telemetry), then blend.
                            while j + S::W <= c {
                                let v = D::load(s, xp.add(j));
                                tr.step_fast(s, v, k);
                                s.store(xb.add(2 + j), v);
                                j += S::W;
                            }
                            tr.resolve::<D>(s, tp, saved, xp, j, k, de, db, inf);
                            if j < c {
                                let v = load_tail::<S, D>(s, xp.add(j), c - j);
                                tr.step(s, v, s.first_n(c - j), k, de, inf);
                                s.store(xb.add(2 + j), v);
                            }
                            fwd_chunk::<S, D, NT, CONV>(s, &args, yp, c);
                        }
                    }
                }
            }
            // SAFETY: as for the load.
            unsafe { tr.save(s, tp, c * (r1 - r0)) };
        }
        r0 = r1;
    }
    if NT {
        s.sfence();
    }
    for (i, m) in out.iter_mut().enumerate().take(nseeds) {
        *m = match sc.tele[i].moments() {
            Some(m) => m,
            None => exact_moments::<D>(x, h, c, i, plan.dead_eps),
        };
    }
}

/// The moments of seed `i` over a block, in f64 (the overflow fallback).
fn exact_moments<D: Dt>(x: &[D::Raw], h: usize, c: usize, i: usize, dead_eps: f32) -> Moments {
    let mut m = Moments::empty();
    for row in x.chunks_exact(h) {
        for v in &row[i * c..(i + 1) * c] {
            m.push(D::to_f32(*v) as f64, dead_eps as f64);
        }
    }
    m
}

/// Per-block partial sums of the backward pass, laid out for a fixed merge.
pub(crate) struct BwdPartial<'a> {
    /// Column sums `[S, cp]` (f32 within the block): RESIDUAL `Σ g'`,
    /// ATTENTION `Σ g' x`, MLP `Σ g' x m`.
    pub col: &'a mut [f32],
    /// Four scalars per seed (f64): ATTENTION `Σ r` (`r = Σ g' x p`); MLP
    /// `Σ g' relu(x w)`; CONV `Σ g' x_{j-k}` for k = 0..2 and `Σ g' conv`.
    pub scal: &'a mut [f64],
    /// `Σ g²` per seed (f64).
    pub gsq: &'a mut [f64],
}

/// Backward over one block of rows: `dx` and the block's parameter-gradient partials.
///
/// # Safety
/// `x`, `g`, `dx` hold `rows * h` elements; `sc` and `part` fit the plan's shape.
#[inline(always)]
pub(crate) unsafe fn backward_block<S: Simd, D: Dt, const NT: bool>(
    s: S,
    plan: &Plan<'_>,
    x: &[D::Raw],
    g: &[D::Raw],
    dx: &mut [D::Raw],
    sc: &mut ThreadScratch,
    part: BwdPartial<'_>,
) {
    let (h, c, cp) = (plan.h, plan.c, plan.cp);
    let rows = x.len() / h;
    part.col.fill(0.0);
    part.scal.fill(0.0);
    part.gsq.fill(0.0);
    let zero = s.splat(0.0);
    let xb = sc.xb.as_mut_ptr();
    let gb = sc.gb.as_mut_ptr();
    let rpv = rows_per_visit(size_of::<D::Raw>()).1;
    let mut r0 = 0;
    while r0 < rows {
        // A few rows per visit of a seed: its sums stay in registers and are
        // reduced to f64 once per visit.
        let r1 = (r0 + rpv).min(rows);
        for (i, sp) in plan.seeds.iter().enumerate() {
            let mut acc = BwdAcc::<S> { v: [zero; 4], gsq: zero };
            for r in r0..r1 {
                let off = r * h + i * c;
                // SAFETY: `off + c <= rows * h` for the three tensors; scratch holds
                // `cp + 2 + 2 W` floats (zero beyond what is written); parameter
                // rows and column partials hold `cp` per seed.
                unsafe {
                    let xp = x.as_ptr().add(off);
                    let gp = g.as_ptr().add(off);
                    let dp = dx.as_mut_ptr().add(off);
                    let mut j = 0;
                    if sp.kind == Kind::Identity {
                        while j + S::W <= c {
                            let v = D::copy_load::<S, NT>(s, gp.add(j), dp.add(j));
                            acc.gsq = s.fma(v, v, acc.gsq);
                            j += S::W;
                        }
                        if j < c {
                            std::ptr::copy_nonoverlapping(gp.add(j), dp.add(j), c - j);
                            let v = load_tail::<S, D>(s, gp.add(j), c - j);
                            acc.gsq = s.fma(v, v, acc.gsq);
                        }
                        continue;
                    }
                    // Only blend/blueprint seeds read x, so x is read in scattered
                    // chunks the hardware prefetchers cannot follow: fetch this
                    // seed's chunk of the next visit now.
                    prefetch_ahead(s, xp as *const u8, c * size_of::<D::Raw>(), rpv * h * size_of::<D::Raw>());
                    let args = ChunkArgs {
                        sp,
                        xb,
                        gb,
                        w: plan.w.as_ptr().add(i * cp),
                        ws: plan.ws.as_ptr().add(i * cp),
                        p: plan.p.as_ptr().add(i * cp),
                        db: 0,
                    };
                    let col = part.col.as_mut_ptr().add(i * cp);
                    match sp.kind {
                        Kind::Residual => bwd_fused::<S, D, NT, RES>(s, &args, xp, gp, dp, col, c, &mut acc),
                        Kind::Attention => bwd_fused::<S, D, NT, ATT>(s, &args, xp, gp, dp, col, c, &mut acc),
                        Kind::Mlp => bwd_fused::<S, D, NT, MLP>(s, &args, xp, gp, dp, col, c, &mut acc),
                        Kind::Conv | Kind::Identity => {
                            // CONV: widen x and g into the padded buffers (shifted taps), then compute.
                            while j < c {
                                let (xv, gv) = if j + S::W <= c {
                                    (D::load(s, xp.add(j)), D::load(s, gp.add(j)))
                                } else {
                                    (load_tail::<S, D>(s, xp.add(j), c - j), load_tail::<S, D>(s, gp.add(j), c - j))
                                };
                                acc.gsq = s.fma(gv, gv, acc.gsq);
                                s.store(xb.add(2 + j), xv);
                                s.store(gb.add(j), gv);
                                j += S::W;
                            }
                            bwd_conv::<S, D, NT>(s, &args, dp, c, &mut acc);
                        }
                    }
                }
            }
            part.gsq[i] += s.hsum(acc.gsq) as f64;
            for (slot, v) in part.scal[i * 4..i * 4 + 4].iter_mut().zip(acc.v) {
                *slot += s.hsum(v) as f64;
            }
        }
        r0 = r1;
    }
    if NT {
        s.sfence();
    }
}
