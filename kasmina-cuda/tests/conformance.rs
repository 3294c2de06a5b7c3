//! The shared conformance suite on CUDA device 0 (skips without a GPU unless
//! `KASMINA_REQUIRE_GPU=1`).

fn make() -> Result<kasmina_cuda::CudaBackend, String> {
    kasmina_cuda::CudaBackend::new(0).map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);
