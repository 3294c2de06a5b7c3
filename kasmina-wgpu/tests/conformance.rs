//! The shared conformance suite on adapter 0 (lavapipe in CI).

fn make() -> Result<kasmina_wgpu::WgpuBackend, String> {
    kasmina_wgpu::WgpuBackend::new(0).map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);
