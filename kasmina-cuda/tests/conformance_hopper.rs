//! The shared conformance suite with the Hopper kernel family forced
//! (`CudaPath::Hopper`: shapes TMA cannot take run the portable kernels, see
//! `kasmina_cuda::hopper`). Skips, printing why, without a GPU (fails then under
//! `KASMINA_REQUIRE_GPU=1`) and on devices that are not compute capability 9.0.

use kasmina_cuda::{CudaBackend, CudaOptions, CudaPath};

fn make() -> Result<CudaBackend, String> {
    let options = CudaOptions::from_env().map_err(|e| e.to_string())?.with_path(CudaPath::Hopper);
    CudaBackend::with_options(0, options).map_err(|e| e.to_string())
}

/// Whether device 0 is a Hopper GPU; prints why not (a missing GPU is left to the suite,
/// which fails under `KASMINA_REQUIRE_GPU=1`).
fn is_hopper(group: &str) -> bool {
    match make() {
        Ok(b) if b.compute_capability() == (9, 0) => true,
        Ok(b) => {
            let (ma, mi) = b.compute_capability();
            println!("skipped {group}: the Hopper path needs compute capability 9.0, device 0 is {ma}.{mi}");
            false
        }
        Err(_) => true,
    }
}

macro_rules! hopper_groups {
    ($($group:ident)*) => {
        $(
            #[test]
            fn $group() {
                if is_hopper(stringify!($group)) {
                    kasmina_conformance::run_test_group(stringify!($group), make);
                }
            }
        )*
    };
}

hopper_groups!(forward_modes telemetry backward strict_mode shapes poison determinism checksum randomized bad_input);
