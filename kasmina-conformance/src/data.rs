//! Host tensors at the bit level (poison, NaN payloads), and the seeded
//! generator every case, and every backend's own tests, draw states and inputs from.

use half::{bf16, f16};
use kasmina_core::DType;
use kasmina_core::backend::HostTensorData;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The raw bits of element `i` (zero-extended for 16-bit dtypes).
pub fn bits(t: &HostTensorData, i: usize) -> u32 {
    match t {
        HostTensorData::F32(v) => v[i].to_bits(),
        HostTensorData::F16(v) => v[i].to_bits() as u32,
        HostTensorData::BF16(v) => v[i].to_bits() as u32,
    }
}

/// Sets element `i` from raw bits (truncated to 16 bits for 16-bit dtypes).
pub fn set_bits(t: &mut HostTensorData, i: usize, b: u32) {
    match t {
        HostTensorData::F32(v) => v[i] = f32::from_bits(b),
        HostTensorData::F16(v) => v[i] = f16::from_bits(b as u16),
        HostTensorData::BF16(v) => v[i] = bf16::from_bits(b as u16),
    }
}

/// Number of elements.
pub(crate) fn len(t: &HostTensorData) -> usize {
    t.view().len()
}

/// The dtype.
pub(crate) fn dtype(t: &HostTensorData) -> DType {
    t.view().dtype()
}

/// Every element widened to f64 (exactly).
pub fn to_f64(t: &HostTensorData) -> Vec<f64> {
    match t {
        HostTensorData::F32(v) => v.iter().map(|x| *x as f64).collect(),
        HostTensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        HostTensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
    }
}

/// `values` rounded to `dtype` (round to nearest even).
pub fn from_f64(dtype: DType, values: &[f64]) -> HostTensorData {
    match dtype {
        DType::F32 => HostTensorData::F32(values.iter().map(|v| *v as f32).collect()),
        DType::F16 => HostTensorData::F16(values.iter().map(|v| f16::from_f64(*v)).collect()),
        DType::BF16 => HostTensorData::BF16(values.iter().map(|v| bf16::from_f64(*v)).collect()),
    }
}

/// A signalling NaN with a payload no computation produces and no input holds:
/// an output element that still has these bits after a call was never written.
pub(crate) fn poison_bits(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0x7F8A_5A5A,
        DType::F16 => 0x7D5A,
        DType::BF16 => 0x7F95,
    }
}

/// `len` elements of the poison value.
pub(crate) fn poison(dtype: DType, len: usize) -> HostTensorData {
    let mut t = HostTensorData::zeros(dtype, len);
    for i in 0..len {
        set_bits(&mut t, i, poison_bits(dtype));
    }
    t
}

/// NaNs with distinct payloads (quiet and signalling, both signs) for identity checks.
pub(crate) fn nan_payloads(dtype: DType) -> [u32; 4] {
    match dtype {
        DType::F32 => [0x7FC1_2345, 0xFFC0_0001, 0x7F80_0F0F, 0xFF81_0000],
        DType::F16 => [0x7E15, 0xFE01, 0x7C0F, 0xFD00],
        DType::BF16 => [0x7FC3, 0xFFC1, 0x7F81, 0xFF8F],
    }
}

/// The suite's random generator (ChaCha8, so a seed means the same case everywhere).
///
/// The randomized group names its rows by generator seed, so the values each existing method
/// draws for a seed must stay as they are; new kinds of draws get methods of their own.
#[derive(Debug, Clone)]
pub struct Gen(ChaCha8Rng);

impl Gen {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Gen(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.0.random::<f64>()
    }

    /// Uniform integer in `[lo, hi)`.
    pub fn below(&mut self, lo: usize, hi: usize) -> usize {
        self.0.random_range(lo..hi)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p.clamp(0.0, 1.0))
    }

    /// One element of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(0, items.len())]
    }

    /// `len` values uniform in `[-scale, scale)`, rounded to `dtype`.
    pub fn tensor(&mut self, dtype: DType, len: usize, scale: f64) -> HostTensorData {
        let v: Vec<f64> = (0..len).map(|_| self.uniform(-scale, scale)).collect();
        from_f64(dtype, &v)
    }

    /// `len` f32 values uniform in `[lo, hi)`.
    pub fn f32s(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi) as f32).collect()
    }

    /// A standard normal value (Box-Muller: one value from two uniforms).
    pub fn normal(&mut self) -> f64 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let r = (-2.0 * (1.0 - self.0.random::<f64>()).ln()).sqrt();
        r * (std::f64::consts::TAU * self.0.random::<f64>()).cos()
    }

    /// `len` normal values of mean 0 and standard deviation `std`.
    pub fn normals(&mut self, len: usize, std: f64) -> Vec<f64> {
        (0..len).map(|_| std * self.normal()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_and_payloads_are_nans_that_survive_the_host_round_trip() {
        for d in DType::ALL {
            let p = poison(d, 3);
            assert!(to_f64(&p).iter().all(|v| v.is_nan()));
            assert_eq!(bits(&p, 2), poison_bits(d));
            let mut t = HostTensorData::zeros(d, 4);
            for (i, b) in nan_payloads(d).into_iter().enumerate() {
                set_bits(&mut t, i, b);
                assert_eq!(bits(&t, i), b);
            }
            assert!(to_f64(&t).iter().all(|v| v.is_nan()));
            assert!(!nan_payloads(d).contains(&poison_bits(d)));
        }
    }

    #[test]
    fn rounding_helpers_round_to_nearest() {
        let t = from_f64(DType::F16, &[1.0 + 1.0 / 4096.0, 65520.0]);
        assert_eq!(to_f64(&t), vec![1.0, f64::INFINITY]);
        let mut g = Gen::new(1);
        let t = g.tensor(DType::BF16, 100, 2.0);
        assert!(to_f64(&t).iter().all(|v| v.abs() <= 2.0));
        assert_eq!(Gen::new(9).below(0, 1000), Gen::new(9).below(0, 1000));
    }

    #[test]
    fn normal_values_have_mean_zero_and_the_requested_spread() {
        let v = Gen::new(3).normals(100_000, 2.0);
        assert!(v.iter().all(|x| x.is_finite()));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.03, "std {}", var.sqrt());
        assert_eq!(Gen::new(4).normals(5, 1.0), Gen::new(4).normals(5, 1.0));
    }
}
