//! The shared conformance suite on adapter 0 with the tile plan the backend
//! uses on GPUs (about 2048 (seed, row-block) tiles per call), so lavapipe
//! also checks the plan the H100 runs; the default plan on a CPU adapter
//! uses few, large tiles.

fn make() -> Result<kasmina_wgpu::WgpuBackend, String> {
    let options = kasmina_wgpu::WgpuOptions { target_tiles: Some(2048), ..Default::default() };
    kasmina_wgpu::WgpuBackend::with_options(0, options).map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);
