//! The vector operations the kernels are written in, one implementation per
//! instruction set: AVX-512 (16 lanes), AVX2 + FMA + F16C (8 lanes) and a
//! portable scalar one (1 lane).
//!
//! The kernels in [`crate::kernels`] are generic over [`Simd`]; every method
//! here is `#[inline(always)]`, and the entry points in [`crate::dispatch`]
//! carry `#[target_feature]`, so each instantiation compiles to straight
//! vector code for its instruction set. A value of an x86 implementation type
//! exists only after runtime detection of its features (see
//! [`SimdLevel::detect`]), which is what makes calling its intrinsics sound.
//!
//! f16 and bf16 are converted in vector registers: F16C `vcvtph2ps` /
//! `vcvtps2ph` (round to nearest even) for f16; for bf16 a widening of the
//! u16 lanes to u32 and a shift by 16 on load, and on store the same
//! round-to-nearest-even bit trick as the `half` crate (`x + 0x7FFF +
//! ((x >> 16) & 1)) >> 16`, NaN kept quiet with `| 0x0040`), or one
//! `vcvtneps2bf16` where the CPU has AVX512_BF16 ([`SimdLevel::Avx512Bf16`]).
//! The identity fast path widens a whole line of bf16 without shuffles (even
//! elements shifted up, odd ones masked: a lane order only the order-free
//! telemetry sees) and tracks the magnitudes for the NaN/Inf and dead checks
//! on the raw u16 lanes ([`Simd::copy_load2_bf16_mag`]).

/// Which instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// AVX-512 F/BW/VL/DQ + F16C + FMA: 16 f32 lanes.
    Avx512,
    /// As [`SimdLevel::Avx512`], plus AVX512_BF16: f32 to bf16 rounding in one
    /// instruction (`vcvtneps2bf16`; the one difference: f32 results below the
    /// smallest normal, |y| < 1.2e-38, round to a signed zero instead of a
    /// bf16 subnormal).
    Avx512Bf16,
    /// AVX2 + FMA + F16C: 8 f32 lanes.
    Avx2,
    /// AArch64 NEON (always present there): 4 f32 lanes; f16 through `fcvtl`/`fcvtn`.
    Neon,
    /// One lane, portable Rust (no fused multiply-add).
    Scalar,
}

impl SimdLevel {
    /// The best level this CPU supports.
    pub fn detect() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                return if std::arch::is_x86_feature_detected!("avx512bf16") {
                    SimdLevel::Avx512Bf16
                } else {
                    SimdLevel::Avx512
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                return SimdLevel::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return SimdLevel::Neon;
        }
        #[allow(unreachable_code)]
        SimdLevel::Scalar
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            SimdLevel::Avx2 => {
                matches!(SimdLevel::detect(), SimdLevel::Avx2 | SimdLevel::Avx512 | SimdLevel::Avx512Bf16)
            }
            SimdLevel::Avx512 => matches!(SimdLevel::detect(), SimdLevel::Avx512 | SimdLevel::Avx512Bf16),
            SimdLevel::Avx512Bf16 => SimdLevel::detect() == SimdLevel::Avx512Bf16,
            SimdLevel::Neon => cfg!(target_arch = "aarch64"),
        }
    }

    /// Lanes per f32 vector.
    pub fn lanes(self) -> usize {
        match self {
            SimdLevel::Avx512 | SimdLevel::Avx512Bf16 => 16,
            SimdLevel::Avx2 => 8,
            SimdLevel::Neon => 4,
            SimdLevel::Scalar => 1,
        }
    }

    /// Feature names, for [`kasmina_core::DeviceInfo::features`].
    pub fn features(self) -> Vec<String> {
        let names: &[&str] = match self {
            SimdLevel::Avx512 => &["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c", "popcnt"],
            SimdLevel::Avx512Bf16 => {
                &["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512bf16", "avx2", "fma", "f16c", "popcnt"]
            }
            SimdLevel::Avx2 => &["avx2", "fma", "f16c", "popcnt"],
            SimdLevel::Neon => &["neon"],
            SimdLevel::Scalar => &["scalar"],
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

/// The widest vector any level uses, in f32 lanes (sizes scratch padding).
pub const MAX_LANES: usize = 16;

/// Vector operations over f32 lanes, with f16/bf16 conversion and raw copies.
///
/// # Safety
/// Implementations may only be constructed when the CPU supports their
/// instructions. Pointer arguments must be valid for `W` elements.
pub(crate) unsafe trait Simd: Copy + Send + Sync {
    /// Lanes.
    const W: usize;
    /// A vector of `W` f32.
    type V: Copy;
    /// A lane mask.
    type M: Copy;
    /// A vector of `W` u32 counters.
    type I: Copy;

    fn splat(self, x: f32) -> Self::V;
    unsafe fn load(self, p: *const f32) -> Self::V;
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Non-temporal store; `p` aligned to `W * 4` bytes.
    unsafe fn stream(self, p: *mut f32, v: Self::V);
    unsafe fn load_f16(self, p: *const u16) -> Self::V;
    /// With `NT`, `p` is aligned to `W * 2` bytes.
    unsafe fn store_f16<const NT: bool>(self, p: *mut u16, v: Self::V);
    unsafe fn load_bf16(self, p: *const u16) -> Self::V;
    /// With `NT`, `p` is aligned to `W * 2` bytes.
    unsafe fn store_bf16<const NT: bool>(self, p: *mut u16, v: Self::V);
    /// Loads `W` u32 counters.
    unsafe fn iload(self, p: *const u32) -> Self::I;
    /// Stores `W` u32 counters.
    unsafe fn istore(self, p: *mut u32, v: Self::I);
    /// `m ? acc + 1 : acc` per lane.
    fn inc_m(self, m: Self::M, acc: Self::I) -> Self::I;
    /// All lanes `v`.
    fn isplat(self, v: u32) -> Self::I;
    /// Lane-wise `max(acc, bits(a))` for `a` with the sign bit clear (so the
    /// bits compare like the values: NaN and infinities above every finite).
    fn imax_bits(self, acc: Self::I, a: Self::V) -> Self::I;
    /// Lane-wise `min(acc, bits(a))`, `a` with the sign bit clear.
    fn imin_bits(self, acc: Self::I, a: Self::V) -> Self::I;
    /// Whether any lane is `>= t` (lanes and `t` below 2^31, `t >= 1`).
    fn iany_ge(self, acc: Self::I, t: u32) -> bool;
    /// Whether any lane is `< t` (lanes and `t` below 2^31).
    fn iany_lt(self, acc: Self::I, t: u32) -> bool;
    /// Copies `W` raw f32 lanes (bit for bit) and returns them as a vector.
    unsafe fn copy_load32<const NT: bool>(self, src: *const f32, dst: *mut f32) -> Self::V;
    /// Copies `W` raw f16 lanes (bit for bit) and returns them widened.
    unsafe fn copy_load_f16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> Self::V;
    /// Copies `W` raw bf16 lanes (bit for bit) and returns them widened.
    unsafe fn copy_load_bf16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> Self::V;
    /// Copies `2 W` raw 16-bit lanes with one full-width move (a whole cache
    /// line on AVX-512) and returns both halves widened (`BF`: bf16, else f16).
    unsafe fn copy_load2_16<const NT: bool, const BF: bool>(
        self,
        src: *const u16,
        dst: *mut u16,
    ) -> (Self::V, Self::V) {
        // SAFETY: forwarded contract (valid for 2 W elements).
        unsafe {
            if BF {
                (self.copy_load_bf16::<NT>(src, dst), self.copy_load_bf16::<NT>(src.add(Self::W), dst.add(Self::W)))
            } else {
                (self.copy_load_f16::<NT>(src, dst), self.copy_load_f16::<NT>(src.add(Self::W), dst.add(Self::W)))
            }
        }
    }
    /// Copies `2 W` raw bf16 lanes (bit for bit) and returns them widened, in
    /// an order of this implementation's choosing (each element exactly once;
    /// only order-free telemetry may consume them), folding the magnitude bits
    /// of the elements into `amax`/`amin` in the form [`Simd::bf16_mag_fold`]
    /// turns into `bits(|x|)` trackers. Default: `copy_load2_16` and 32-bit
    /// trackers (`imax_bits`/`imin_bits` of `|x|`).
    #[inline(always)]
    unsafe fn copy_load2_bf16_mag<const NT: bool>(
        self,
        src: *const u16,
        dst: *mut u16,
        amax: &mut Self::I,
        amin: &mut Self::I,
    ) -> (Self::V, Self::V) {
        // SAFETY: forwarded contract (valid for 2 W elements).
        let (v0, v1) = unsafe { self.copy_load2_16::<NT, true>(src, dst) };
        let (a0, a1) = (self.abs(v0), self.abs(v1));
        *amax = self.imax_bits(self.imax_bits(*amax, a0), a1);
        *amin = self.imin_bits(self.imin_bits(*amin, a0), a1);
        (v0, v1)
    }
    /// The trackers kept by [`Simd::copy_load2_bf16_mag`] as lane-wise
    /// `max bits(|x|)`, `min bits(|x|)` (identity for the default).
    #[inline(always)]
    fn bf16_mag_fold(self, amax: Self::I, amin: Self::I) -> (Self::I, Self::I) {
        (amax, amin)
    }
    /// `m ? acc + v : acc`.
    fn add_m(self, m: Self::M, acc: Self::V, v: Self::V) -> Self::V;
    /// `m ? a * b + acc : acc`.
    fn fma_m(self, m: Self::M, a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// `m ? min(acc, v) : acc`.
    fn min_m(self, m: Self::M, acc: Self::V, v: Self::V) -> Self::V;
    /// `m ? max(acc, v) : acc`.
    fn max_m(self, m: Self::M, acc: Self::V, v: Self::V) -> Self::V;
    /// Lane minimum (any NaN handling; callers only use it on finite data).
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane maximum (any NaN handling; callers only use it on finite data).
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused where the ISA has it).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// `a < b`, false when either is NaN.
    fn lt(self, a: Self::V, b: Self::V) -> Self::M;
    /// `a > b`, false when either is NaN.
    fn gt(self, a: Self::V, b: Self::V) -> Self::M;
    fn and(self, a: Self::M, b: Self::M) -> Self::M;
    fn or(self, a: Self::M, b: Self::M) -> Self::M;
    /// `m ? a : b` per lane.
    fn select(self, m: Self::M, a: Self::V, b: Self::V) -> Self::V;
    /// The mask as bits, lane 0 in bit 0.
    fn bits(self, m: Self::M) -> u32;
    /// Lanes `< n` set.
    fn first_n(self, n: usize) -> Self::M;
    /// Sum of the lanes in a fixed order.
    fn hsum(self, v: Self::V) -> f32;
    /// Orders earlier non-temporal stores before later stores.
    fn sfence(self);
    /// Hints the cache line at `p` into the cache (never faults, any address).
    fn prefetch(self, p: *const u8);
}

/// Portable one-lane implementation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalar;

// SAFETY: plain Rust, valid on every CPU.
unsafe impl Simd for Scalar {
    const W: usize = 1;
    type V = f32;
    type M = bool;
    type I = u32;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        // SAFETY: the caller guarantees `p` is valid for one element.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        // SAFETY: as for `load`.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn stream(self, p: *mut f32, v: f32) {
        // SAFETY: as for `load`.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_f16(self, p: *const u16) -> f32 {
        // SAFETY: as for `load`.
        half::f16::from_bits(unsafe { p.read_unaligned() }).to_f32()
    }
    #[inline(always)]
    unsafe fn store_f16<const NT: bool>(self, p: *mut u16, v: f32) {
        // SAFETY: as for `load`.
        unsafe { p.write_unaligned(half::f16::from_f32(v).to_bits()) }
    }
    #[inline(always)]
    unsafe fn load_bf16(self, p: *const u16) -> f32 {
        // SAFETY: as for `load`.
        half::bf16::from_bits(unsafe { p.read_unaligned() }).to_f32()
    }
    #[inline(always)]
    unsafe fn store_bf16<const NT: bool>(self, p: *mut u16, v: f32) {
        // SAFETY: as for `load`.
        unsafe { p.write_unaligned(half::bf16::from_f32(v).to_bits()) }
    }
    #[inline(always)]
    unsafe fn iload(self, p: *const u32) -> u32 {
        // SAFETY: as for `load`.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn istore(self, p: *mut u32, v: u32) {
        // SAFETY: as for `load`.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    fn inc_m(self, m: bool, acc: u32) -> u32 {
        acc + m as u32
    }
    #[inline(always)]
    fn isplat(self, v: u32) -> u32 {
        v
    }
    #[inline(always)]
    fn imax_bits(self, acc: u32, a: f32) -> u32 {
        acc.max(a.to_bits())
    }
    #[inline(always)]
    fn imin_bits(self, acc: u32, a: f32) -> u32 {
        acc.min(a.to_bits())
    }
    #[inline(always)]
    fn iany_ge(self, acc: u32, t: u32) -> bool {
        acc >= t
    }
    #[inline(always)]
    fn iany_lt(self, acc: u32, t: u32) -> bool {
        acc < t
    }
    #[inline(always)]
    unsafe fn copy_load32<const NT: bool>(self, src: *const f32, dst: *mut f32) -> f32 {
        // SAFETY: as for `load`; copied as u32 so NaN payloads are untouched.
        unsafe {
            let b = (src as *const u32).read_unaligned();
            (dst as *mut u32).write_unaligned(b);
            f32::from_bits(b)
        }
    }
    #[inline(always)]
    unsafe fn copy_load_f16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> f32 {
        // SAFETY: as for `load`.
        unsafe {
            let b = src.read_unaligned();
            dst.write_unaligned(b);
            half::f16::from_bits(b).to_f32()
        }
    }
    #[inline(always)]
    unsafe fn copy_load_bf16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> f32 {
        // SAFETY: as for `load`.
        unsafe {
            let b = src.read_unaligned();
            dst.write_unaligned(b);
            half::bf16::from_bits(b).to_f32()
        }
    }
    #[inline(always)]
    fn add_m(self, m: bool, acc: f32, v: f32) -> f32 {
        if m { acc + v } else { acc }
    }
    #[inline(always)]
    fn fma_m(self, m: bool, a: f32, b: f32, acc: f32) -> f32 {
        if m { a * b + acc } else { acc }
    }
    #[inline(always)]
    fn min_m(self, m: bool, acc: f32, v: f32) -> f32 {
        if m && v < acc { v } else { acc }
    }
    #[inline(always)]
    fn max_m(self, m: bool, acc: f32, v: f32) -> f32 {
        if m && v > acc { v } else { acc }
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        if b < a { b } else { a }
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        if b > a { b } else { a }
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    fn lt(self, a: f32, b: f32) -> bool {
        a < b
    }
    #[inline(always)]
    fn gt(self, a: f32, b: f32) -> bool {
        a > b
    }
    #[inline(always)]
    fn and(self, a: bool, b: bool) -> bool {
        a & b
    }
    #[inline(always)]
    fn or(self, a: bool, b: bool) -> bool {
        a | b
    }
    #[inline(always)]
    fn select(self, m: bool, a: f32, b: f32) -> f32 {
        if m { a } else { b }
    }
    #[inline(always)]
    fn bits(self, m: bool) -> u32 {
        m as u32
    }
    #[inline(always)]
    fn first_n(self, n: usize) -> bool {
        n > 0
    }
    #[inline(always)]
    fn hsum(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn sfence(self) {}
    #[inline(always)]
    fn prefetch(self, _p: *const u8) {}
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512, Avx512Bf16};

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::Simd;
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// AArch64 NEON, 4 lanes. NEON is part of the AArch64 base ISA.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Neon(());

    impl Neon {
        /// Always available on AArch64.
        pub(crate) fn new() -> Option<Self> {
            Some(Neon(()))
        }
    }

    static LANE_BITS: [u32; 4] = [1, 2, 4, 8];
    static LANE_IDX: [u32; 4] = [0, 1, 2, 3];

    #[inline(always)]
    fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
        let out: float32x4_t;
        // SAFETY: `fcvtl` (half to single, exact) is base AArch64 FP/SIMD; registers only.
        unsafe {
            asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h, options(pure, nomem, nostack))
        };
        out
    }

    #[inline(always)]
    fn f32_to_f16x4(v: float32x4_t) -> uint16x4_t {
        let out: uint16x4_t;
        // SAFETY: `fcvtn` (single to half, FPCR rounding: nearest even by default) is base
        // AArch64 FP/SIMD; registers only.
        unsafe {
            asm!("fcvtn {o:v}.4h, {i:v}.4s", o = lateout(vreg) out, i = in(vreg) v, options(pure, nomem, nostack))
        };
        out
    }

    #[inline(always)]
    fn bf16_round(v: float32x4_t) -> uint16x4_t {
        // SAFETY: NEON is part of the AArch64 base ISA.
        unsafe {
            let b = vreinterpretq_u32_f32(v);
            let hi = vshrq_n_u32::<16>(b);
            let lsb = vandq_u32(hi, vdupq_n_u32(1));
            let r = vshrq_n_u32::<16>(vaddq_u32(b, vaddq_u32(vdupq_n_u32(0x7FFF), lsb)));
            let qnan = vorrq_u32(hi, vdupq_n_u32(0x40));
            let ordered = vceqq_f32(v, v);
            vmovn_u32(vbslq_u32(ordered, r, qnan))
        }
    }

    // SAFETY: NEON is part of the AArch64 base ISA; pointer validity is the caller's contract.
    unsafe impl Simd for Neon {
        const W: usize = 4;
        type V = float32x4_t;
        type M = uint32x4_t;
        type I = uint32x4_t;

        #[inline(always)]
        fn splat(self, x: f32) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vdupq_n_f32(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: float32x4_t) {
            // SAFETY: see impl comment.
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32, v: float32x4_t) {
            // SAFETY: see impl comment.
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn load_f16(self, p: *const u16) -> float32x4_t {
            // SAFETY: see impl comment.
            f16x4_to_f32(unsafe { vld1_u16(p) })
        }
        #[inline(always)]
        unsafe fn store_f16<const NT: bool>(self, p: *mut u16, v: float32x4_t) {
            // SAFETY: see impl comment.
            unsafe { vst1_u16(p, f32_to_f16x4(v)) }
        }
        #[inline(always)]
        unsafe fn load_bf16(self, p: *const u16) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(vld1_u16(p)))) }
        }
        #[inline(always)]
        unsafe fn store_bf16<const NT: bool>(self, p: *mut u16, v: float32x4_t) {
            // SAFETY: see impl comment.
            unsafe { vst1_u16(p, bf16_round(v)) }
        }
        #[inline(always)]
        unsafe fn iload(self, p: *const u32) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vld1q_u32(p) }
        }
        #[inline(always)]
        unsafe fn istore(self, p: *mut u32, v: uint32x4_t) {
            // SAFETY: see impl comment.
            unsafe { vst1q_u32(p, v) }
        }
        #[inline(always)]
        fn inc_m(self, m: uint32x4_t, acc: uint32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment. Set lanes are all ones (-1): subtracting adds 1.
            unsafe { vsubq_u32(acc, m) }
        }
        #[inline(always)]
        fn isplat(self, v: u32) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vdupq_n_u32(v) }
        }
        #[inline(always)]
        fn imax_bits(self, acc: uint32x4_t, a: float32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vmaxq_u32(acc, vreinterpretq_u32_f32(a)) }
        }
        #[inline(always)]
        fn imin_bits(self, acc: uint32x4_t, a: float32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vminq_u32(acc, vreinterpretq_u32_f32(a)) }
        }
        #[inline(always)]
        fn iany_ge(self, acc: uint32x4_t, t: u32) -> bool {
            // SAFETY: see impl comment.
            unsafe { vmaxvq_u32(vcgeq_u32(acc, vdupq_n_u32(t))) != 0 }
        }
        #[inline(always)]
        fn iany_lt(self, acc: uint32x4_t, t: u32) -> bool {
            // SAFETY: see impl comment.
            unsafe { vmaxvq_u32(vcltq_u32(acc, vdupq_n_u32(t))) != 0 }
        }
        #[inline(always)]
        unsafe fn copy_load32<const NT: bool>(self, src: *const f32, dst: *mut f32) -> float32x4_t {
            // SAFETY: see impl comment; moved as integers, bit for bit.
            unsafe {
                let r = vld1q_u32(src as *const u32);
                vst1q_u32(dst as *mut u32, r);
                vreinterpretq_f32_u32(r)
            }
        }
        #[inline(always)]
        unsafe fn copy_load_f16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe {
                let r = vld1_u16(src);
                vst1_u16(dst, r);
                f16x4_to_f32(r)
            }
        }
        #[inline(always)]
        unsafe fn copy_load_bf16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe {
                let r = vld1_u16(src);
                vst1_u16(dst, r);
                vreinterpretq_f32_u32(vshlq_n_u32::<16>(vmovl_u16(r)))
            }
        }
        #[inline(always)]
        fn add_m(self, m: uint32x4_t, acc: float32x4_t, v: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vaddq_f32(acc, vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(v)))) }
        }
        #[inline(always)]
        fn fma_m(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vbslq_f32(m, vfmaq_f32(acc, a, b), acc) }
        }
        #[inline(always)]
        fn min_m(self, m: uint32x4_t, acc: float32x4_t, v: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vbslq_f32(m, vminq_f32(acc, v), acc) }
        }
        #[inline(always)]
        fn max_m(self, m: uint32x4_t, acc: float32x4_t, v: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vbslq_f32(m, vmaxq_f32(acc, v), acc) }
        }
        #[inline(always)]
        fn min(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vminq_f32(a, b) }
        }
        #[inline(always)]
        fn max(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vmaxq_f32(a, b) }
        }
        #[inline(always)]
        fn add(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vaddq_f32(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vsubq_f32(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vmulq_f32(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        fn abs(self, a: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vabsq_f32(a) }
        }
        #[inline(always)]
        fn lt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vcltq_f32(a, b) }
        }
        #[inline(always)]
        fn gt(self, a: float32x4_t, b: float32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vcgtq_f32(a, b) }
        }
        #[inline(always)]
        fn and(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vandq_u32(a, b) }
        }
        #[inline(always)]
        fn or(self, a: uint32x4_t, b: uint32x4_t) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vorrq_u32(a, b) }
        }
        #[inline(always)]
        fn select(self, m: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            // SAFETY: see impl comment.
            unsafe { vbslq_f32(m, a, b) }
        }
        #[inline(always)]
        fn bits(self, m: uint32x4_t) -> u32 {
            // SAFETY: see impl comment.
            unsafe { vaddvq_u32(vandq_u32(m, vld1q_u32(LANE_BITS.as_ptr()))) }
        }
        #[inline(always)]
        fn first_n(self, n: usize) -> uint32x4_t {
            // SAFETY: see impl comment.
            unsafe { vcltq_u32(vld1q_u32(LANE_IDX.as_ptr()), vdupq_n_u32(n.min(4) as u32)) }
        }
        #[inline(always)]
        fn hsum(self, v: float32x4_t) -> f32 {
            // SAFETY: see impl comment.
            unsafe { vaddvq_f32(v) }
        }
        #[inline(always)]
        fn sfence(self) {}
        #[inline(always)]
        fn prefetch(self, _p: *const u8) {}
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// AVX2 + FMA + F16C, 8 lanes. Constructed only by [`Avx2::new`] after detection.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// `Some` when the CPU has AVX2, FMA and F16C.
        pub(crate) fn new() -> Option<Self> {
            super::SimdLevel::Avx2.is_supported().then_some(Avx2(()))
        }
    }

    /// AVX-512 F/BW/VL/DQ (+ AVX2, FMA, F16C), 16 lanes; with `BF16`, also
    /// AVX512_BF16 (bf16 rounding in one instruction). Constructed only by
    /// [`Avx512::new`] and [`Avx512Bf16::new`].
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512T<const BF16: bool>(());

    /// AVX-512 without the BF16 instructions.
    pub(crate) type Avx512 = Avx512T<false>;
    /// AVX-512 with AVX512_BF16.
    pub(crate) type Avx512Bf16 = Avx512T<true>;

    impl Avx512 {
        /// `Some` when the CPU has the AVX-512 subsets used here.
        pub(crate) fn new() -> Option<Self> {
            super::SimdLevel::Avx512.is_supported().then_some(Avx512T(()))
        }
    }

    impl Avx512Bf16 {
        /// `Some` when the CPU also has AVX512_BF16.
        pub(crate) fn new() -> Option<Self> {
            super::SimdLevel::Avx512Bf16.is_supported().then_some(Avx512T(()))
        }
    }

    /// All-ones in the first `8 - i` lanes... read from `MASK8[8 - n..]`.
    static MASK8: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    // SAFETY: an `Avx2` value exists only when AVX2, FMA and F16C were detected
    // at runtime, so every intrinsic below is supported; pointer validity is the
    // caller's contract (trait docs).
    unsafe impl Simd for Avx2 {
        const W: usize = 8;
        type V = __m256;
        type M = __m256;
        type I = __m256i;

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            // SAFETY: AVX detected (see impl comment).
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            // SAFETY: see impl comment.
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32, v: __m256) {
            // SAFETY: see impl comment; alignment is the caller's contract.
            unsafe { _mm256_stream_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_f16(self, p: *const u16) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn store_f16<const NT: bool>(self, p: *mut u16, v: __m256) {
            // SAFETY: see impl comment.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                if NT { _mm_stream_si128(p as *mut __m128i, h) } else { _mm_storeu_si128(p as *mut __m128i, h) }
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(self, p: *const u16) -> __m256 {
            // SAFETY: see impl comment.
            unsafe {
                let u = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(u))
            }
        }
        #[inline(always)]
        unsafe fn store_bf16<const NT: bool>(self, p: *mut u16, v: __m256) {
            // SAFETY: see impl comment.
            unsafe {
                let b = _mm256_castps_si256(v);
                let hi = _mm256_srli_epi32::<16>(b);
                let lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
                let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)));
                let qnan = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                let r = _mm256_blendv_epi8(r, qnan, nan);
                // Pack 8 x u32 (all <= 0xFFFF) to 8 x u16: packus works per 128-bit half.
                let packed = _mm256_packus_epi32(r, r);
                let h = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed));
                if NT { _mm_stream_si128(p as *mut __m128i, h) } else { _mm_storeu_si128(p as *mut __m128i, h) }
            }
        }
        #[inline(always)]
        unsafe fn iload(self, p: *const u32) -> __m256i {
            // SAFETY: see impl comment.
            unsafe { _mm256_loadu_si256(p as *const __m256i) }
        }
        #[inline(always)]
        unsafe fn istore(self, p: *mut u32, v: __m256i) {
            // SAFETY: see impl comment.
            unsafe { _mm256_storeu_si256(p as *mut __m256i, v) }
        }
        #[inline(always)]
        fn inc_m(self, m: __m256, acc: __m256i) -> __m256i {
            // SAFETY: see impl comment. Set mask lanes are all ones (-1): subtracting adds 1.
            unsafe { _mm256_sub_epi32(acc, _mm256_castps_si256(m)) }
        }
        #[inline(always)]
        fn isplat(self, v: u32) -> __m256i {
            // SAFETY: see impl comment.
            unsafe { _mm256_set1_epi32(v as i32) }
        }
        #[inline(always)]
        fn imax_bits(self, acc: __m256i, a: __m256) -> __m256i {
            // SAFETY: see impl comment; lanes are below 2^31, so signed max is unsigned max.
            unsafe { _mm256_max_epi32(acc, _mm256_castps_si256(a)) }
        }
        #[inline(always)]
        fn imin_bits(self, acc: __m256i, a: __m256) -> __m256i {
            // SAFETY: see impl comment.
            unsafe { _mm256_min_epi32(acc, _mm256_castps_si256(a)) }
        }
        #[inline(always)]
        fn iany_ge(self, acc: __m256i, t: u32) -> bool {
            // SAFETY: see impl comment; lanes and t are below 2^31 (t >= 1 where used).
            unsafe {
                let gt = _mm256_cmpgt_epi32(acc, _mm256_set1_epi32(t as i32 - 1));
                _mm256_movemask_epi8(gt) != 0
            }
        }
        #[inline(always)]
        fn iany_lt(self, acc: __m256i, t: u32) -> bool {
            // SAFETY: see impl comment; lanes and t are below 2^31.
            unsafe { _mm256_movemask_epi8(_mm256_cmpgt_epi32(_mm256_set1_epi32(t as i32), acc)) != 0 }
        }
        #[inline(always)]
        unsafe fn copy_load32<const NT: bool>(self, src: *const f32, dst: *mut f32) -> __m256 {
            // SAFETY: see impl comment; vector moves never alter NaN payloads.
            unsafe {
                let v = _mm256_loadu_ps(src);
                if NT {
                    _mm256_stream_ps(dst, v)
                } else {
                    _mm256_storeu_ps(dst, v)
                }
                v
            }
        }
        #[inline(always)]
        unsafe fn copy_load_f16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> __m256 {
            // SAFETY: see impl comment.
            unsafe {
                let r = _mm_loadu_si128(src as *const __m128i);
                if NT {
                    _mm_stream_si128(dst as *mut __m128i, r)
                } else {
                    _mm_storeu_si128(dst as *mut __m128i, r)
                }
                _mm256_cvtph_ps(r)
            }
        }
        #[inline(always)]
        unsafe fn copy_load_bf16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> __m256 {
            // SAFETY: see impl comment.
            unsafe {
                let r = _mm_loadu_si128(src as *const __m128i);
                if NT {
                    _mm_stream_si128(dst as *mut __m128i, r)
                } else {
                    _mm_storeu_si128(dst as *mut __m128i, r)
                }
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(r)))
            }
        }
        #[inline(always)]
        unsafe fn copy_load2_bf16_mag<const NT: bool>(
            self,
            src: *const u16,
            dst: *mut u16,
            amax: &mut __m256i,
            amin: &mut __m256i,
        ) -> (__m256, __m256) {
            // SAFETY: see impl comment; with NT, `dst` is 32-byte aligned (the caller
            // streams only 64-byte aligned chunks, in steps of 2 W = 16 elements).
            // As for AVX-512: u16 magnitude trackers, even/odd widening.
            unsafe {
                let r = _mm256_loadu_si256(src as *const __m256i);
                if NT {
                    _mm256_stream_si256(dst as *mut __m256i, r)
                } else {
                    _mm256_storeu_si256(dst as *mut __m256i, r)
                }
                let m = _mm256_and_si256(r, _mm256_set1_epi16(0x7FFF));
                *amax = _mm256_max_epu16(*amax, m);
                *amin = _mm256_min_epu16(*amin, m);
                let even = _mm256_slli_epi32::<16>(r);
                let odd = _mm256_and_si256(r, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
                (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
            }
        }
        #[inline(always)]
        fn bf16_mag_fold(self, amax: __m256i, amin: __m256i) -> (__m256i, __m256i) {
            // SAFETY: see impl comment; as for AVX-512.
            unsafe {
                let lo = _mm256_set1_epi32(0xFFFF);
                let mx = _mm256_max_epu32(_mm256_and_si256(amax, lo), _mm256_srli_epi32::<16>(amax));
                let mn = _mm256_min_epu32(_mm256_and_si256(amin, lo), _mm256_srli_epi32::<16>(amin));
                (_mm256_slli_epi32::<16>(mx), _mm256_slli_epi32::<16>(mn))
            }
        }
        #[inline(always)]
        fn add_m(self, m: __m256, acc: __m256, v: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_add_ps(acc, _mm256_and_ps(m, v)) }
        }
        #[inline(always)]
        fn fma_m(self, m: __m256, a: __m256, b: __m256, acc: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_blendv_ps(acc, _mm256_fmadd_ps(a, b, acc), m) }
        }
        #[inline(always)]
        fn min_m(self, m: __m256, acc: __m256, v: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_blendv_ps(acc, _mm256_min_ps(acc, v), m) }
        }
        #[inline(always)]
        fn max_m(self, m: __m256, acc: __m256, v: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_blendv_ps(acc, _mm256_max_ps(acc, v), m) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn abs(self, a: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))) }
        }
        #[inline(always)]
        fn lt(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        fn gt(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(a, b) }
        }
        #[inline(always)]
        fn and(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_and_ps(a, b) }
        }
        #[inline(always)]
        fn or(self, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_or_ps(a, b) }
        }
        #[inline(always)]
        fn select(self, m: __m256, a: __m256, b: __m256) -> __m256 {
            // SAFETY: see impl comment.
            unsafe { _mm256_blendv_ps(b, a, m) }
        }
        #[inline(always)]
        fn bits(self, m: __m256) -> u32 {
            // SAFETY: see impl comment.
            unsafe { _mm256_movemask_ps(m) as u32 }
        }
        #[inline(always)]
        fn first_n(self, n: usize) -> __m256 {
            let n = n.min(8);
            // SAFETY: see impl comment; `8 - n + 8 <= 16` elements of MASK8.
            unsafe { _mm256_loadu_ps(MASK8.as_ptr().add(8 - n) as *const f32) }
        }
        #[inline(always)]
        fn hsum(self, v: __m256) -> f32 {
            // SAFETY: see impl comment.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn sfence(self) {
            // SAFETY: SSE is part of x86-64.
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn prefetch(self, p: *const u8) {
            // SAFETY: SSE is part of x86-64; a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }
    }

    // SAFETY: an `Avx512T` value exists only when AVX-512 F/BW/VL/DQ, AVX2, FMA
    // and F16C (and, with `BF16`, AVX512_BF16) were detected at runtime; pointer
    // validity is the caller's contract.
    unsafe impl<const BF16: bool> Simd for Avx512T<BF16> {
        const W: usize = 16;
        type V = __m512;
        type M = __mmask16;
        type I = __m512i;

        #[inline(always)]
        fn splat(self, x: f32) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m512) {
            // SAFETY: see impl comment.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn stream(self, p: *mut f32, v: __m512) {
            // SAFETY: see impl comment; alignment is the caller's contract.
            unsafe { _mm512_stream_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_f16(self, p: *const u16) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
        }
        #[inline(always)]
        unsafe fn store_f16<const NT: bool>(self, p: *mut u16, v: __m512) {
            // SAFETY: see impl comment.
            unsafe {
                let h = _mm512_cvtps_ph::<RNE>(v);
                if NT { _mm256_stream_si256(p as *mut __m256i, h) } else { _mm256_storeu_si256(p as *mut __m256i, h) }
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(self, p: *const u16) -> __m512 {
            // SAFETY: see impl comment.
            unsafe {
                let u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(u))
            }
        }
        #[inline(always)]
        unsafe fn store_bf16<const NT: bool>(self, p: *mut u16, v: __m512) {
            // SAFETY: see impl comment; `BF16` proves AVX512_BF16 (callers of the
            // `BF16` instantiation enable it: see `crate::dispatch`).
            unsafe {
                if BF16 {
                    // Round to nearest even, NaN kept quiet with its payload's top bits (as below).
                    let h: __m256i = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
                    if NT {
                        _mm256_stream_si256(p as *mut __m256i, h)
                    } else {
                        _mm256_storeu_si256(p as *mut __m256i, h)
                    }
                    return;
                }
                let b = _mm512_castps_si512(v);
                let hi = _mm512_srli_epi32::<16>(b);
                let lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
                let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)));
                let qnan = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                let r = _mm512_mask_blend_epi32(nan, r, qnan);
                let h = _mm512_cvtepi32_epi16(r);
                if NT { _mm256_stream_si256(p as *mut __m256i, h) } else { _mm256_storeu_si256(p as *mut __m256i, h) }
            }
        }
        #[inline(always)]
        unsafe fn iload(self, p: *const u32) -> __m512i {
            // SAFETY: see impl comment.
            unsafe { _mm512_loadu_si512(p as *const __m512i) }
        }
        #[inline(always)]
        unsafe fn istore(self, p: *mut u32, v: __m512i) {
            // SAFETY: see impl comment.
            unsafe { _mm512_storeu_si512(p as *mut __m512i, v) }
        }
        #[inline(always)]
        fn inc_m(self, m: __mmask16, acc: __m512i) -> __m512i {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask_sub_epi32(acc, m, acc, _mm512_set1_epi32(-1)) }
        }
        #[inline(always)]
        fn isplat(self, v: u32) -> __m512i {
            // SAFETY: see impl comment.
            unsafe { _mm512_set1_epi32(v as i32) }
        }
        #[inline(always)]
        fn imax_bits(self, acc: __m512i, a: __m512) -> __m512i {
            // SAFETY: see impl comment.
            unsafe { _mm512_max_epu32(acc, _mm512_castps_si512(a)) }
        }
        #[inline(always)]
        fn imin_bits(self, acc: __m512i, a: __m512) -> __m512i {
            // SAFETY: see impl comment.
            unsafe { _mm512_min_epu32(acc, _mm512_castps_si512(a)) }
        }
        #[inline(always)]
        fn iany_ge(self, acc: __m512i, t: u32) -> bool {
            // SAFETY: see impl comment.
            unsafe { _mm512_cmpge_epu32_mask(acc, _mm512_set1_epi32(t as i32)) != 0 }
        }
        #[inline(always)]
        fn iany_lt(self, acc: __m512i, t: u32) -> bool {
            // SAFETY: see impl comment.
            unsafe { _mm512_cmplt_epu32_mask(acc, _mm512_set1_epi32(t as i32)) != 0 }
        }
        #[inline(always)]
        unsafe fn copy_load32<const NT: bool>(self, src: *const f32, dst: *mut f32) -> __m512 {
            // SAFETY: see impl comment; vector moves never alter NaN payloads.
            unsafe {
                let v = _mm512_loadu_ps(src);
                if NT {
                    _mm512_stream_ps(dst, v)
                } else {
                    _mm512_storeu_ps(dst, v)
                }
                v
            }
        }
        #[inline(always)]
        unsafe fn copy_load_f16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> __m512 {
            // SAFETY: see impl comment.
            unsafe {
                let r = _mm256_loadu_si256(src as *const __m256i);
                if NT {
                    _mm256_stream_si256(dst as *mut __m256i, r)
                } else {
                    _mm256_storeu_si256(dst as *mut __m256i, r)
                }
                _mm512_cvtph_ps(r)
            }
        }
        #[inline(always)]
        unsafe fn copy_load_bf16<const NT: bool>(self, src: *const u16, dst: *mut u16) -> __m512 {
            // SAFETY: see impl comment.
            unsafe {
                let r = _mm256_loadu_si256(src as *const __m256i);
                if NT {
                    _mm256_stream_si256(dst as *mut __m256i, r)
                } else {
                    _mm256_storeu_si256(dst as *mut __m256i, r)
                }
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(r)))
            }
        }
        #[inline(always)]
        unsafe fn copy_load2_16<const NT: bool, const BF: bool>(
            self,
            src: *const u16,
            dst: *mut u16,
        ) -> (__m512, __m512) {
            // SAFETY: see impl comment; with NT, `dst` is 64-byte aligned (caller).
            unsafe {
                let r = _mm512_loadu_si512(src as *const __m512i);
                if NT {
                    _mm512_stream_si512(dst as *mut __m512i, r)
                } else {
                    _mm512_storeu_si512(dst as *mut __m512i, r)
                }
                let (lo, hi) = (_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64::<1>(r));
                if BF {
                    (
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(lo))),
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi))),
                    )
                } else {
                    (_mm512_cvtph_ps(lo), _mm512_cvtph_ps(hi))
                }
            }
        }
        #[inline(always)]
        unsafe fn copy_load2_bf16_mag<const NT: bool>(
            self,
            src: *const u16,
            dst: *mut u16,
            amax: &mut __m512i,
            amin: &mut __m512i,
        ) -> (__m512, __m512) {
            // SAFETY: see impl comment; with NT, `dst` is 64-byte aligned (caller).
            // One cache line: the magnitudes are tracked as 32 u16 lanes (no
            // widening needed), and bf16 widens to f32 with one op per half:
            // the even elements shifted up, the odd ones with the low half cleared.
            unsafe {
                let r = _mm512_loadu_si512(src as *const __m512i);
                if NT {
                    _mm512_stream_si512(dst as *mut __m512i, r)
                } else {
                    _mm512_storeu_si512(dst as *mut __m512i, r)
                }
                let m = _mm512_and_si512(r, _mm512_set1_epi16(0x7FFF));
                *amax = _mm512_max_epu16(*amax, m);
                *amin = _mm512_min_epu16(*amin, m);
                let even = _mm512_slli_epi32::<16>(r);
                let odd = _mm512_and_si512(r, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
                (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
            }
        }
        #[inline(always)]
        fn bf16_mag_fold(self, amax: __m512i, amin: __m512i) -> (__m512i, __m512i) {
            // SAFETY: see impl comment. Each u32 lane holds two u16 magnitudes:
            // keep the larger (smaller) one, moved to the top half (= its f32 bits).
            unsafe {
                let lo = _mm512_set1_epi32(0xFFFF);
                let mx = _mm512_max_epu32(_mm512_and_si512(amax, lo), _mm512_srli_epi32::<16>(amax));
                let mn = _mm512_min_epu32(_mm512_and_si512(amin, lo), _mm512_srli_epi32::<16>(amin));
                (_mm512_slli_epi32::<16>(mx), _mm512_slli_epi32::<16>(mn))
            }
        }
        #[inline(always)]
        fn add_m(self, m: __mmask16, acc: __m512, v: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask_add_ps(acc, m, acc, v) }
        }
        #[inline(always)]
        fn fma_m(self, m: __mmask16, a: __m512, b: __m512, acc: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask3_fmadd_ps(a, b, acc, m) }
        }
        #[inline(always)]
        fn min_m(self, m: __mmask16, acc: __m512, v: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask_min_ps(acc, m, acc, v) }
        }
        #[inline(always)]
        fn max_m(self, m: __mmask16, acc: __m512, v: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask_max_ps(acc, m, acc, v) }
        }
        #[inline(always)]
        fn min(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn max(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn abs(self, a: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn lt(self, a: __m512, b: __m512) -> __mmask16 {
            // SAFETY: see impl comment.
            unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
        }
        #[inline(always)]
        fn gt(self, a: __m512, b: __m512) -> __mmask16 {
            // SAFETY: see impl comment.
            unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b) }
        }
        #[inline(always)]
        fn and(self, a: __mmask16, b: __mmask16) -> __mmask16 {
            a & b
        }
        #[inline(always)]
        fn or(self, a: __mmask16, b: __mmask16) -> __mmask16 {
            a | b
        }
        #[inline(always)]
        fn select(self, m: __mmask16, a: __m512, b: __m512) -> __m512 {
            // SAFETY: see impl comment.
            unsafe { _mm512_mask_blend_ps(m, b, a) }
        }
        #[inline(always)]
        fn bits(self, m: __mmask16) -> u32 {
            m as u32
        }
        #[inline(always)]
        fn first_n(self, n: usize) -> __mmask16 {
            if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as u16 }
        }
        #[inline(always)]
        fn hsum(self, v: __m512) -> f32 {
            // SAFETY: see impl comment.
            unsafe {
                let s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
                let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn sfence(self) {
            // SAFETY: SSE is part of x86-64.
            unsafe { _mm_sfence() }
        }
        #[inline(always)]
        fn prefetch(self, p: *const u8) {
            // SAFETY: SSE is part of x86-64; a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }
    }
}
