//! The conformance suite on the SIMD levels `CpuBackend::new()` does not pick on
//! this machine: AVX-512 without its BF16 instructions (where the CPU has
//! AVX512_BF16, `new()` picks `Avx512Bf16`), AVX2 and the scalar fallback
//! (x86-64), forced with `CpuBackend::with_options`. A level this CPU lacks
//! reports itself unavailable.

mod avx512 {
    fn make() -> Result<kasmina_cpu::CpuBackend, String> {
        kasmina_cpu::CpuBackend::with_options(0, kasmina_cpu::SimdLevel::Avx512).map_err(|e| e.to_string())
    }
    kasmina_conformance::conformance_tests!(make);
}

mod avx2 {
    fn make() -> Result<kasmina_cpu::CpuBackend, String> {
        kasmina_cpu::CpuBackend::with_options(0, kasmina_cpu::SimdLevel::Avx2).map_err(|e| e.to_string())
    }
    kasmina_conformance::conformance_tests!(make);
}

mod scalar {
    fn make() -> Result<kasmina_cpu::CpuBackend, String> {
        kasmina_cpu::CpuBackend::with_options(0, kasmina_cpu::SimdLevel::Scalar).map_err(|e| e.to_string())
    }
    kasmina_conformance::conformance_tests!(make);
}
