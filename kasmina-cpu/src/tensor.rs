//! [`CpuTensor`]: a `[rows, cols]` activation tensor in host memory, 64-byte aligned.

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};
use kasmina_core::{DType, HostData, HostDataMut};

use crate::error::CpuError;

/// One cache line; the storage unit of [`CpuTensor`], so the data start is
/// 64-byte aligned (the kernels use aligned non-temporal stores when rows are
/// a multiple of 64 bytes).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// A tensor `[rows, cols]` of one dtype in host memory, row-major, 64-byte aligned.
#[derive(Clone)]
pub struct CpuTensor {
    rows: usize,
    cols: usize,
    dtype: DType,
    lines: Vec<Line>,
}

impl std::fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuTensor")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype)
            .finish()
    }
}

kasmina_core::impl_device_tensor!(CpuTensor);

impl CpuTensor {
    /// A zeroed tensor; fails (instead of aborting) when the size overflows or
    /// the allocation cannot be made.
    pub fn zeros(rows: usize, cols: usize, dtype: DType) -> Result<Self, CpuError> {
        let bytes = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(dtype.size_bytes()))
            .ok_or(CpuError::TooLarge { rows, cols })?;
        let n_lines = bytes.div_ceil(64);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n_lines).map_err(|_| CpuError::OutOfMemory { bytes })?;
        lines.resize(n_lines, Line::zeroed());
        Ok(Self { rows, cols, dtype, lines })
    }

    /// Number of elements (`rows * cols`).
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the elements (without the padding of the last line).
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len() * self.dtype.size_bytes()]
    }

    /// The bytes of the elements, mutable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len() * self.dtype.size_bytes();
        &mut bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines)[..n]
    }

    /// A typed view of the elements.
    pub fn view(&self) -> HostData<'_> {
        let b = self.as_bytes();
        match self.dtype {
            DType::F32 => HostData::F32(bytemuck::cast_slice(b)),
            DType::F16 => HostData::F16(bytemuck::cast_slice::<u8, f16>(b)),
            DType::BF16 => HostData::BF16(bytemuck::cast_slice::<u8, bf16>(b)),
        }
    }

    /// A typed mutable view of the elements.
    pub fn view_mut(&mut self) -> HostDataMut<'_> {
        let dtype = self.dtype;
        let b = self.as_bytes_mut();
        match dtype {
            DType::F32 => HostDataMut::F32(bytemuck::cast_slice_mut(b)),
            DType::F16 => HostDataMut::F16(bytemuck::cast_slice_mut::<u8, f16>(b)),
            DType::BF16 => HostDataMut::BF16(bytemuck::cast_slice_mut::<u8, bf16>(b)),
        }
    }
}
