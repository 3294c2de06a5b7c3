//! Property tests of every size the core computes from input: a layer's shape, its arrays,
//! fallible allocations and the lengths a snapshot file declares. Each either gives exactly
//! the size asked for or a typed error; none panics, wraps or allocates more than it checks.

use kasmina_core::snapshot;
use kasmina_core::state::BlueprintParams;
use kasmina_core::{ConfigError, Error, LayerConfig, LayerState};
use proptest::prelude::*;

/// Sizes from tiny to past every limit: small values, values near the u32 and usize limits,
/// and anything in between.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..64,
        (0usize..=u32::MAX as usize),
        (u32::MAX as usize - 4)..=(u32::MAX as usize + 4),
        (usize::MAX - 4)..=usize::MAX,
        any::<usize>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// `LayerConfig::new(H, S)` accepts exactly the shapes of SPEC 1 (both positive, both in
    /// u32, S divides H) and then `C * S = H`.
    #[test]
    fn a_layer_shape_is_accepted_exactly_when_the_spec_allows_it(h in size(), s in size()) {
        let valid = h > 0 && s > 0 && h <= u32::MAX as usize && s <= u32::MAX as usize && h % s == 0;
        match LayerConfig::new(h, s) {
            Ok(cfg) => {
                prop_assert!(valid);
                prop_assert_eq!(cfg.chunk_size() * s, h);
            }
            Err(e) => {
                prop_assert!(!valid, "{h} x {s} refused: {e}");
                let expected_kind = matches!(
                    e,
                    ConfigError::ZeroHiddenDim
                        | ConfigError::ZeroSeeds
                        | ConfigError::TooLarge { .. }
                        | ConfigError::NotDivisible { .. }
                );
                prop_assert!(expected_kind, "{e}");
            }
        }
    }

    /// Fresh parameters of `S x C`: the exact lengths when the product is small, an
    /// `OutOfMemory` error (never a wrapped size or an abort) when it overflows or cannot be had.
    #[test]
    fn parameters_are_the_exact_size_or_an_out_of_memory_error(s in size(), c in size()) {
        let n = (s as u128) * (c as u128);
        if n <= 1 << 16 && s <= 1 << 16 {
            let p = BlueprintParams::try_fresh(s, c).unwrap();
            prop_assert_eq!(p.weights.len() as u128, n);
            prop_assert_eq!(p.scales.len(), s);
        } else if n > (isize::MAX as u128) / 4 || s > (isize::MAX as usize) / 4 {
            let e = BlueprintParams::try_fresh(s, c).unwrap_err();
            let is_oom = matches!(e, Error::OutOfMemory { .. });
            prop_assert!(is_oom, "{e}");
        }
    }

    /// A state of a valid small shape has every array exactly `S` (or `S * C`) long.
    #[test]
    fn a_state_has_the_arrays_of_its_shape(s in 1usize..200, c in 1usize..200) {
        let st = LayerState::new(LayerConfig::new(s * c, s).unwrap()).unwrap();
        prop_assert_eq!(st.params.weights.len(), s * c);
        prop_assert_eq!(st.seeds.alpha.len(), s);
        prop_assert_eq!(st.seeds.lifecycle.len(), s);
        prop_assert!(st.validate().is_ok());
    }

    /// Whatever 8-byte header length a file declares and however many bytes follow, loading
    /// is an error (these bytes are never a valid snapshot) and never reserves more than the
    /// bytes present: a length past the end is refused before the header is read.
    #[test]
    fn a_declared_header_length_never_outgrows_the_file(
        declared in prop_oneof![any::<u64>(), 0u64..4096, (u64::MAX - 16)..=u64::MAX],
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = declared.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let from_memory = snapshot::from_bytes(&bytes);
        prop_assert!(from_memory.is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let from_file = snapshot::load(&path);
        prop_assert!(from_file.is_err());
        // The file and the bytes are judged alike.
        prop_assert_eq!(from_file.unwrap_err().to_string(), from_memory.unwrap_err().to_string());
    }

    /// A real snapshot cut anywhere, or with bytes appended, is refused from a file as from
    /// memory: the lengths it declares must match the bytes present exactly.
    #[test]
    fn a_snapshot_is_read_only_at_its_exact_length(s in 1usize..6, c in 1usize..6, cut in any::<prop::sample::Index>(), extra in 1usize..64) {
        let st = LayerState::new(LayerConfig::new(s * c, s).unwrap()).unwrap();
        let good = snapshot::to_bytes(&st).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let short = &good[..cut.index(good.len())];
        std::fs::write(&path, short).unwrap();
        prop_assert!(snapshot::load(&path).is_err());
        let mut long = good.clone();
        long.extend(std::iter::repeat_n(0u8, extra));
        std::fs::write(&path, &long).unwrap();
        prop_assert!(snapshot::load(&path).is_err());
        std::fs::write(&path, &good).unwrap();
        prop_assert_eq!(snapshot::load(&path).unwrap(), st);
    }
}

/// Sizes past the address space: an error naming the size, not an abort.
#[test]
fn allocations_past_the_address_space_are_errors() {
    for n in [usize::MAX, usize::MAX / 2, isize::MAX as usize / 2 + 1] {
        let e = kasmina_core::error::try_filled(n, 0u64, "probe").unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { bytes, .. } if bytes == n as u128 * 8), "{e}");
    }
}
