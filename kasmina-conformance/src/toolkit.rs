//! What every backend's own tests share with the suite: SPEC 8's output tolerance, the relative
//! L2 error, and exact views of host tensors (raw bits, values widened to f64).

use kasmina_core::backend::HostTensorData;

pub use crate::check::tolerance;
pub use crate::data::{bits, to_f64};

/// `‖got − want‖₂ / ‖want‖₂` (the absolute norm's ratio to 1e-300 when `want` is all zero).
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The raw bits of every element (zero-extended for 16-bit dtypes).
pub fn all_bits(t: &HostTensorData) -> Vec<u32> {
    (0..t.view().len()).map(|i| bits(t, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn relative_l2_and_bits() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[0.0, 5.0]) - (9.0f64 + 1.0).sqrt() / 5.0).abs() < 1e-15);
        let t = HostTensorData::BF16(vec![bf16::from_f32(1.0), bf16::from_bits(0x7FC3)]);
        assert_eq!(all_bits(&t), vec![0x3F80, 0x7FC3]);
        assert_eq!(to_f64(&t)[0], 1.0);
    }
}
