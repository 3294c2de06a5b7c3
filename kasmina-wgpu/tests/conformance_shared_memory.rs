//! The shared conformance suite on adapter 0 with the workgroup-memory
//! reduction path forced (the default path uses subgroups where the adapter
//! has them, as lavapipe does).

fn make() -> Result<kasmina_wgpu::WgpuBackend, String> {
    let options = kasmina_wgpu::WgpuOptions { force_shared_memory: true, ..Default::default() };
    kasmina_wgpu::WgpuBackend::with_options(0, options).map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);
