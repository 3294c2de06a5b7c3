//! The conformance suite (kasmina-conformance) on the CPU backend: one test per case group.

fn make() -> Result<kasmina_cpu::CpuBackend, String> {
    kasmina_cpu::CpuBackend::new().map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);
