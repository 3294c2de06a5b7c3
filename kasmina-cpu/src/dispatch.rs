//! Runtime dispatch: one `#[target_feature]` entry point per instruction set,
//! each instantiating the generic block kernels for it, so the whole block
//! loop compiles to that instruction set's vector code.

use kasmina_core::Moments;

use crate::kernels::{BwdPartial, Dt, Plan, ThreadScratch, backward_block, forward_block};
#[cfg(target_arch = "aarch64")]
use crate::simd::Neon;
#[cfg(target_arch = "x86_64")]
use crate::simd::{Avx2, Avx512, Avx512Bf16};
use crate::simd::{Scalar, SimdLevel};

/// A detected instruction set, holding its proof-of-detection token.
#[derive(Clone, Copy)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16(Avx512Bf16),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
    Scalar(Scalar),
}

impl Isa {
    /// The token for `level`, or `None` when this CPU lacks it.
    pub(crate) fn new(level: SimdLevel) -> Option<Isa> {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => Avx512::new().map(Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512Bf16 => Avx512Bf16::new().map(Isa::Avx512Bf16),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Avx2::new().map(Isa::Avx2),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => Neon::new().map(Isa::Neon),
            SimdLevel::Scalar => Some(Isa::Scalar(Scalar)),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
unsafe fn fwd_avx512<D: Dt, const NT: bool>(
    s: Avx512,
    plan: &Plan<'_>,
    x: &[D::Raw],
    y: &mut [D::Raw],
    sc: &mut ThreadScratch,
    out: &mut [Moments],
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { forward_block::<Avx512, D, NT>(s, plan, x, y, sc, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,popcnt")]
unsafe fn fwd_avx512bf16<D: Dt, const NT: bool>(
    s: Avx512Bf16,
    plan: &Plan<'_>,
    x: &[D::Raw],
    y: &mut [D::Raw],
    sc: &mut ThreadScratch,
    out: &mut [Moments],
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { forward_block::<Avx512Bf16, D, NT>(s, plan, x, y, sc, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn fwd_avx2<D: Dt, const NT: bool>(
    s: Avx2,
    plan: &Plan<'_>,
    x: &[D::Raw],
    y: &mut [D::Raw],
    sc: &mut ThreadScratch,
    out: &mut [Moments],
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { forward_block::<Avx2, D, NT>(s, plan, x, y, sc, out) }
}

/// Forward over one block with the given instruction set.
///
/// # Safety
/// As [`forward_block`]: `x`, `y` hold whole rows of the plan; `sc` fits the plan.
pub(crate) unsafe fn forward<D: Dt>(
    isa: Isa,
    nt: bool,
    plan: &Plan<'_>,
    x: &[D::Raw],
    y: &mut [D::Raw],
    sc: &mut ThreadScratch,
    out: &mut [Moments],
) {
    // SAFETY: the token in `isa` proves the CPU has the features; the rest is the caller's contract.
    unsafe {
        match (isa, nt) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(s), true) => fwd_avx512::<D, true>(s, plan, x, y, sc, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(s), false) => fwd_avx512::<D, false>(s, plan, x, y, sc, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Bf16(s), true) => fwd_avx512bf16::<D, true>(s, plan, x, y, sc, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Bf16(s), false) => fwd_avx512bf16::<D, false>(s, plan, x, y, sc, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(s), true) => fwd_avx2::<D, true>(s, plan, x, y, sc, out),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(s), false) => fwd_avx2::<D, false>(s, plan, x, y, sc, out),
            // NEON is in the AArch64 baseline: no target_feature entry needed.
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon(s), _) => forward_block::<Neon, D, false>(s, plan, x, y, sc, out),
            (Isa::Scalar(s), _) => forward_block::<Scalar, D, false>(s, plan, x, y, sc, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt")]
unsafe fn bwd_avx512<D: Dt, const NT: bool>(
    s: Avx512,
    plan: &Plan<'_>,
    x: &[D::Raw],
    g: &[D::Raw],
    dx: &mut [D::Raw],
    sc: &mut ThreadScratch,
    part: BwdPartial<'_>,
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { backward_block::<Avx512, D, NT>(s, plan, x, g, dx, sc, part) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,popcnt")]
unsafe fn bwd_avx512bf16<D: Dt, const NT: bool>(
    s: Avx512Bf16,
    plan: &Plan<'_>,
    x: &[D::Raw],
    g: &[D::Raw],
    dx: &mut [D::Raw],
    sc: &mut ThreadScratch,
    part: BwdPartial<'_>,
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { backward_block::<Avx512Bf16, D, NT>(s, plan, x, g, dx, sc, part) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,popcnt")]
unsafe fn bwd_avx2<D: Dt, const NT: bool>(
    s: Avx2,
    plan: &Plan<'_>,
    x: &[D::Raw],
    g: &[D::Raw],
    dx: &mut [D::Raw],
    sc: &mut ThreadScratch,
    part: BwdPartial<'_>,
) {
    // SAFETY: forwarded contract; the features are enabled here.
    unsafe { backward_block::<Avx2, D, NT>(s, plan, x, g, dx, sc, part) }
}

/// Backward over one block with the given instruction set.
///
/// # Safety
/// As [`backward_block`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn backward<D: Dt>(
    isa: Isa,
    nt: bool,
    plan: &Plan<'_>,
    x: &[D::Raw],
    g: &[D::Raw],
    dx: &mut [D::Raw],
    sc: &mut ThreadScratch,
    part: BwdPartial<'_>,
) {
    // SAFETY: the token in `isa` proves the CPU has the features; the rest is the caller's contract.
    unsafe {
        match (isa, nt) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(s), true) => bwd_avx512::<D, true>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512(s), false) => bwd_avx512::<D, false>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Bf16(s), true) => bwd_avx512bf16::<D, true>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Bf16(s), false) => bwd_avx512bf16::<D, false>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(s), true) => bwd_avx2::<D, true>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(s), false) => bwd_avx2::<D, false>(s, plan, x, g, dx, sc, part),
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon(s), _) => backward_block::<Neon, D, false>(s, plan, x, g, dx, sc, part),
            (Isa::Scalar(s), _) => backward_block::<Scalar, D, false>(s, plan, x, g, dx, sc, part),
        }
    }
}
