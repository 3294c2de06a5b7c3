//! The shared conformance suite on CUDA device 0 (skips without a GPU unless
//! `KASMINA_REQUIRE_GPU=1`). The top-level groups run the backend as it opens (small forwards
//! in one block per seed); `rowgroups` runs them again with that path off, so small shapes also
//! go through the tuned row-group kernels and the merge kernel (one seed per warp where seed rows
//! are short); `rowwarps` also turns the warp-per-seed mapping off (one row per warp).

/// Device 0 with the options the environment sets (`KASMINA_*`, see `CudaOptions::from_env`).
pub fn open() -> Result<kasmina_cuda::CudaBackend, String> {
    let options = kasmina_cuda::CudaOptions::from_env().map_err(|e| e.to_string())?;
    kasmina_cuda::CudaBackend::with_options(0, options).map_err(|e| e.to_string())
}

fn make() -> Result<kasmina_cuda::CudaBackend, String> {
    open()
}

kasmina_conformance::conformance_tests!(make);

mod rowgroups {
    fn make() -> Result<kasmina_cuda::CudaBackend, String> {
        super::open().map(|b| b.with_seedwise(false))
    }

    kasmina_conformance::conformance_tests!(make);
}

mod rowwarps {
    fn make() -> Result<kasmina_cuda::CudaBackend, String> {
        super::open().map(|b| b.with_seedwise(false).with_seedwarp(false))
    }

    kasmina_conformance::conformance_tests!(make);
}
