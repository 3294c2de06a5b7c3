//! The shared conformance suite on CUDA device 0 (skips without a GPU unless
//! `KASMINA_REQUIRE_GPU=1`). The top-level groups run the backend as it opens (small forwards
//! in one block per seed); `rowgroups` runs them again with that path off, so small shapes also
//! go through the tuned row-group kernels and the merge kernel (one seed per warp where seed rows
//! are short); `rowwarps` also turns the warp-per-seed mapping off (one row per warp).

fn make() -> Result<kasmina_cuda::CudaBackend, String> {
    kasmina_cuda::CudaBackend::new(0).map_err(|e| e.to_string())
}

kasmina_conformance::conformance_tests!(make);

mod rowgroups {
    fn make() -> Result<kasmina_cuda::CudaBackend, String> {
        kasmina_cuda::CudaBackend::new(0).map(|b| b.with_seedwise(false)).map_err(|e| e.to_string())
    }

    kasmina_conformance::conformance_tests!(make);
}

mod rowwarps {
    fn make() -> Result<kasmina_cuda::CudaBackend, String> {
        kasmina_cuda::CudaBackend::new(0)
            .map(|b| b.with_seedwise(false).with_seedwarp(false))
            .map_err(|e| e.to_string())
    }

    kasmina_conformance::conformance_tests!(make);
}
