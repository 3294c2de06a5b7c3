//! The integrity checksum (SPEC 2.1): CRC-32 (IEEE) over the canonical bytes
//! `KASMINA`, schema_version u8, H u32, S u32, epoch u32, then every state array
//! in table order, then `weights`, then `scales`; little-endian, no padding.

use crate::state::LayerState;

/// The state's arrays in raw form, as a backend holds them on its device.
/// Backends read their device copy back into this shape and call [`RawState::crc32`],
/// so the device checksum is computed from what the device really holds.
#[derive(Debug, Clone, Copy)]
pub struct RawState<'a> {
    /// Schema version.
    pub schema_version: u8,
    /// H.
    pub hidden_dim: u32,
    /// S.
    pub num_seeds: u32,
    /// Epoch.
    pub epoch: u32,
    /// Raw lifecycle values.
    pub lifecycle: &'a [u8],
    /// Blueprint ids.
    pub blueprint_id: &'a [u16],
    /// Raw blueprint types.
    pub blueprint_type: &'a [u8],
    /// Raw grafting strategies.
    pub grafting_strategy: &'a [u8],
    /// Alpha.
    pub alpha: &'a [f32],
    /// Epochs in state.
    pub epochs_in_state: &'a [u16],
    /// Last update epoch.
    pub last_update_epoch: &'a [u32],
    /// Clamp means.
    pub clamp_mean: &'a [f32],
    /// Clamp standard deviations.
    pub clamp_std: &'a [f32],
    /// Weights `[S, C]`.
    pub weights: &'a [f32],
    /// Scales `[S]`.
    pub scales: &'a [f32],
}

/// Owned raw arrays of a [`LayerState`] (enums as their raw u8 values).
#[derive(Debug, Clone, PartialEq)]
pub struct RawArrays {
    /// Raw lifecycle values.
    pub lifecycle: Vec<u8>,
    /// Raw blueprint types.
    pub blueprint_type: Vec<u8>,
    /// Raw grafting strategies.
    pub grafting_strategy: Vec<u8>,
}

impl RawArrays {
    /// The raw enum arrays of `state`.
    pub fn of(state: &LayerState) -> Self {
        let s = &state.seeds;
        Self {
            lifecycle: s.lifecycle.iter().map(|v| v.raw()).collect(),
            blueprint_type: s.blueprint_type.iter().map(|v| v.raw()).collect(),
            grafting_strategy: s.grafting_strategy.iter().map(|v| v.raw()).collect(),
        }
    }

    /// A raw view of `state` using these enum arrays.
    pub fn view<'a>(&'a self, state: &'a LayerState) -> RawState<'a> {
        let s = &state.seeds;
        RawState {
            schema_version: state.schema_version(),
            hidden_dim: state.config.hidden_dim as u32,
            num_seeds: state.config.num_seeds as u32,
            epoch: state.epoch,
            lifecycle: &self.lifecycle,
            blueprint_id: &s.blueprint_id,
            blueprint_type: &self.blueprint_type,
            grafting_strategy: &self.grafting_strategy,
            alpha: &s.alpha,
            epochs_in_state: &s.epochs_in_state,
            last_update_epoch: &s.last_update_epoch,
            clamp_mean: &s.clamp_mean,
            clamp_std: &s.clamp_std,
            weights: &state.params.weights,
            scales: &state.params.scales,
        }
    }
}

impl RawState<'_> {
    /// Feeds the canonical bytes, in order, to `sink`.
    pub fn write_canonical(&self, sink: &mut impl FnMut(&[u8])) {
        sink(b"KASMINA");
        sink(&[self.schema_version]);
        sink(&self.hidden_dim.to_le_bytes());
        sink(&self.num_seeds.to_le_bytes());
        sink(&self.epoch.to_le_bytes());
        sink(self.lifecycle);
        for v in self.blueprint_id {
            sink(&v.to_le_bytes());
        }
        sink(self.blueprint_type);
        sink(self.grafting_strategy);
        let f32s = |sink: &mut dyn FnMut(&[u8]), vs: &[f32]| vs.iter().for_each(|v| sink(&v.to_le_bytes()));
        f32s(sink, self.alpha);
        for v in self.epochs_in_state {
            sink(&v.to_le_bytes());
        }
        for v in self.last_update_epoch {
            sink(&v.to_le_bytes());
        }
        f32s(sink, self.clamp_mean);
        f32s(sink, self.clamp_std);
        f32s(sink, self.weights);
        f32s(sink, self.scales);
    }

    /// The canonical byte string.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut |b| out.extend_from_slice(b));
        out
    }

    /// CRC-32 of the canonical bytes.
    pub fn crc32(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        self.write_canonical(&mut |b| h.update(b));
        h.finalize()
    }
}

/// One seed's raw fields as a device keeps them side by side (array of structs),
/// `scale` included. Backends that hold per-seed records read them back into
/// these and call [`crc32_of_seeds`] for their device checksum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawSeed {
    /// Raw lifecycle value.
    pub lifecycle: u8,
    /// Blueprint id.
    pub blueprint_id: u16,
    /// Raw blueprint type.
    pub blueprint_type: u8,
    /// Raw grafting strategy.
    pub grafting_strategy: u8,
    /// Alpha.
    pub alpha: f32,
    /// Epochs in state.
    pub epochs_in_state: u16,
    /// Last update epoch.
    pub last_update_epoch: u32,
    /// Clamp mean.
    pub clamp_mean: f32,
    /// Clamp standard deviation.
    pub clamp_std: f32,
    /// Blueprint scale.
    pub scale: f32,
}

impl RawSeed {
    /// Seed `i`'s raw fields in `state` (`i < num_seeds`, checked by the caller).
    pub fn of(state: &LayerState, i: usize) -> Self {
        let s = &state.seeds;
        Self {
            lifecycle: s.lifecycle[i].raw(),
            blueprint_id: s.blueprint_id[i],
            blueprint_type: s.blueprint_type[i].raw(),
            grafting_strategy: s.grafting_strategy[i].raw(),
            alpha: s.alpha[i],
            epochs_in_state: s.epochs_in_state[i],
            last_update_epoch: s.last_update_epoch[i],
            clamp_mean: s.clamp_mean[i],
            clamp_std: s.clamp_std[i],
            scale: state.params.scales[i],
        }
    }
}

/// The layer-wide fields at the start of the canonical bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawHeader {
    /// Schema version.
    pub schema_version: u8,
    /// H.
    pub hidden_dim: u32,
    /// S.
    pub num_seeds: u32,
    /// Epoch.
    pub epoch: u32,
}

/// CRC-32 (SPEC 2.1) of a state given as per-seed records and `weights[S, C]`.
pub fn crc32_of_seeds(header: RawHeader, seeds: &[RawSeed], weights: &[f32]) -> u32 {
    fn col<T>(seeds: &[RawSeed], f: impl Fn(&RawSeed) -> T) -> Vec<T> {
        seeds.iter().map(f).collect()
    }
    let (lifecycle, blueprint_id) = (col(seeds, |r| r.lifecycle), col(seeds, |r| r.blueprint_id));
    let (blueprint_type, grafting_strategy) = (col(seeds, |r| r.blueprint_type), col(seeds, |r| r.grafting_strategy));
    let (alpha, epochs_in_state) = (col(seeds, |r| r.alpha), col(seeds, |r| r.epochs_in_state));
    let (last_update_epoch, scales) = (col(seeds, |r| r.last_update_epoch), col(seeds, |r| r.scale));
    let (clamp_mean, clamp_std) = (col(seeds, |r| r.clamp_mean), col(seeds, |r| r.clamp_std));
    RawState {
        schema_version: header.schema_version,
        hidden_dim: header.hidden_dim,
        num_seeds: header.num_seeds,
        epoch: header.epoch,
        lifecycle: &lifecycle,
        blueprint_id: &blueprint_id,
        blueprint_type: &blueprint_type,
        grafting_strategy: &grafting_strategy,
        alpha: &alpha,
        epochs_in_state: &epochs_in_state,
        last_update_epoch: &last_update_epoch,
        clamp_mean: &clamp_mean,
        clamp_std: &clamp_std,
        weights,
        scales: &scales,
    }
    .crc32()
}

/// The canonical bytes of a state (SPEC 2.1).
pub fn canonical_bytes(state: &LayerState) -> Vec<u8> {
    let raw = RawArrays::of(state);
    raw.view(state).canonical_bytes()
}

/// The CRC-32 integrity checksum of a state (SPEC 2.1).
pub fn checksum(state: &LayerState) -> u32 {
    let raw = RawArrays::of(state);
    raw.view(state).crc32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CLAMP_UNSET;
    use crate::blueprint::{BlueprintType, GraftingStrategy};
    use crate::config::LayerConfig;
    use crate::lifecycle::LifecycleState;

    /// H = 4, S = 2, epoch 7. Seed 0 is DORMANT (fresh); seed 1 is GRAFTING with
    /// blueprint 513 (0x0201), type CONV (3), strategy DRIFT_CONTROLLED (2),
    /// alpha 0.5, epochs_in_state 3, last_update_epoch 4, clamp_mean 1.0,
    /// clamp_std 2.0, weights [0.25, -1.0], scale 2.0.
    fn hand_written() -> LayerState {
        let mut st = LayerState::new(LayerConfig::new(4, 2).unwrap()).unwrap();
        st.epoch = 7;
        let s = &mut st.seeds;
        s.lifecycle[1] = LifecycleState::Grafting;
        s.blueprint_id[1] = 513;
        s.blueprint_type[1] = BlueprintType::Conv;
        s.grafting_strategy[1] = GraftingStrategy::DriftControlled;
        s.alpha[1] = 0.5;
        s.epochs_in_state[1] = 3;
        s.last_update_epoch[1] = 4;
        s.clamp_mean[1] = 1.0;
        s.clamp_std[1] = 2.0;
        st.params.weights = vec![0.0, 0.0, 0.25, -1.0];
        st.params.scales = vec![1.0, 2.0];
        st
    }

    /// The bytes spelled out by hand, in SPEC 2.1's order.
    fn hand_written_bytes() -> Vec<u8> {
        let mut b = b"KASMINA".to_vec();
        b.push(1); // schema_version
        b.extend([4, 0, 0, 0]); // H
        b.extend([2, 0, 0, 0]); // S
        b.extend([7, 0, 0, 0]); // epoch
        b.extend([0, 3]); // lifecycle
        b.extend([0, 0, 0x01, 0x02]); // blueprint_id: 0, 513
        b.extend([0, 3]); // blueprint_type
        b.extend([0, 2]); // grafting_strategy
        b.extend([0, 0, 0, 0, 0, 0, 0x00, 0x3f]); // alpha: 0.0, 0.5
        b.extend([0, 0, 3, 0]); // epochs_in_state
        b.extend([0, 0, 0, 0, 4, 0, 0, 0]); // last_update_epoch
        b.extend([0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x3f]); // clamp_mean: NaN, 1.0
        b.extend([0, 0, 0xc0, 0x7f, 0, 0, 0x00, 0x40]); // clamp_std: NaN, 2.0
        b.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x3e, 0, 0, 0x80, 0xbf]); // weights
        b.extend([0, 0, 0x80, 0x3f, 0, 0, 0x00, 0x40]); // scales: 1.0, 2.0
        b
    }

    #[test]
    fn canonical_bytes_follow_the_spec_layout() {
        assert_eq!(CLAMP_UNSET.to_bits(), 0x7FC0_0000);
        assert_eq!(canonical_bytes(&hand_written()), hand_written_bytes());
    }

    /// Pinned with Python: `zlib.crc32(bytes)` over `hand_written_bytes()`
    /// printed as hex (see the test's doc for the bytes) gives this value.
    #[test]
    fn checksum_of_a_hand_written_state_is_pinned() {
        assert_eq!(checksum(&hand_written()), PINNED_CRC);
        assert_eq!(crc32fast::hash(&hand_written_bytes()), PINNED_CRC);
    }

    // python3 -c "import zlib,struct; ..." over the 90 bytes above: 0x2cc94270.
    const PINNED_CRC: u32 = 0x2cc9_4270;

    #[test]
    fn per_seed_records_give_the_same_checksum() {
        let st = hand_written();
        let seeds: Vec<RawSeed> = (0..2).map(|i| RawSeed::of(&st, i)).collect();
        let header = RawHeader { schema_version: 1, hidden_dim: 4, num_seeds: 2, epoch: 7 };
        assert_eq!(crc32_of_seeds(header, &seeds, &st.params.weights), PINNED_CRC);
    }

    #[test]
    fn any_field_change_changes_the_checksum() {
        let base = checksum(&hand_written());
        let mut st = hand_written();
        st.epoch += 1;
        assert_ne!(checksum(&st), base);
        let mut st = hand_written();
        st.params.scales[0] = 1.0000001;
        assert_ne!(checksum(&st), base);
        let mut st = hand_written();
        st.seeds.epochs_in_state[0] = 1;
        assert_ne!(checksum(&st), base);
    }
}
