//! The snapshot loader on arbitrary bytes: never a panic; what it accepts writes back to a
//! snapshot that loads as the same state.
#![no_main]

use kasmina_core::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = snapshot::from_bytes(data) {
        let bytes = snapshot::to_bytes(&state).expect("an accepted state writes");
        let again = snapshot::from_bytes(&bytes).expect("a written state loads");
        assert_eq!(again, state, "the round trip changed the state");
    }
});
