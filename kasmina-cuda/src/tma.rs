//! TMA tensor maps: a checked wrapper over `cuTensorMapEncodeTiled` for 2-D
//! row-major tensors `[rows, cols]` of f32, f16 or bf16 (the Hopper path's X, Y, G, dX).
//!
//! A tensor map is the 128-byte, 64-byte aligned descriptor (`CUtensorMap`) the
//! Tensor Memory Accelerator of compute capability 9.0 reads. The host encodes it once
//! per tensor and launch shape and passes it **by value** as a
//! `const __grid_constant__ CUtensorMap` kernel parameter ([`TensorMap`] implements
//! cudarc's `DeviceRepr` for that); the kernel hands its address to
//! `cp.async.bulk.tensor.2d` (load: global to shared, completing on an mbarrier) and
//! `cp.async.bulk.tensor.2d ... bulk_group` (store: shared to global).
//!
//! [`TensorMapSpec::validate`] checks, before the driver is called, what the driver
//! documents for `cuTensorMapEncodeTiled` with no interleave:
//!
//! - the global address is 16-byte aligned;
//! - `rows` and `cols` are in `1..=2^32`, the row stride (`cols * element size`, or a
//!   larger pitch) is a multiple of 16 bytes and below 2^40;
//! - each box dimension is in `1..=256`, and the inner box (`box_cols * element size`)
//!   is a multiple of 16 bytes;
//! - a swizzle other than [`Swizzle::None`] needs the inner box to fit its span
//!   (32, 64 or 128 bytes); the kernel's shared tile must then be aligned to the
//!   swizzle's repeat (the Hopper kernels use [`Swizzle::None`], 128-byte aligned tiles).
//!
//! Boxes need not divide the tensor: a box reaching past the last row or column is
//! filled with zeros on load ([`OobFill::Zero`], `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE`)
//! or NaN ([`OobFill::Nan`]); a store of such a box writes only the elements inside the
//! tensor (the hardware clips it). The load still counts the whole box's bytes on the
//! mbarrier (`box_rows * box_cols * element size`, [`TensorMapSpec::box_bytes`]).

use cudarc::driver::DeviceRepr;
use cudarc::driver::sys::{
    CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion,
    CUtensorMapSwizzle,
};
use kasmina_core::DType;

use crate::error::CudaError;

/// Largest box dimension TMA accepts.
pub const MAX_BOX_DIM: u32 = 256;
/// Alignment of the global address and of the row stride, in bytes.
pub const GLOBAL_ALIGN: u64 = 16;
/// Largest tensor dimension (2^32).
pub const MAX_DIM: u64 = 1 << 32;
/// Largest row stride in bytes (below 2^40).
pub const MAX_STRIDE: u64 = 1 << 40;

/// Shared-memory swizzle of a box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swizzle {
    /// Row-major box in shared memory.
    None,
    /// 32-byte swizzle (inner box at most 32 bytes).
    B32,
    /// 64-byte swizzle (inner box at most 64 bytes).
    B64,
    /// 128-byte swizzle (inner box at most 128 bytes).
    B128,
}

impl Swizzle {
    /// The swizzle span in bytes (None: no limit).
    pub fn span(self) -> Option<u64> {
        match self {
            Swizzle::None => None,
            Swizzle::B32 => Some(32),
            Swizzle::B64 => Some(64),
            Swizzle::B128 => Some(128),
        }
    }

    fn raw(self) -> CUtensorMapSwizzle {
        match self {
            Swizzle::None => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            Swizzle::B32 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
            Swizzle::B64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
            Swizzle::B128 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        }
    }
}

/// What a load writes into shared memory for elements outside the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OobFill {
    /// Zeros (`CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE`), what the Hopper kernels use.
    Zero,
    /// NaN (`CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA`).
    Nan,
}

/// Why a tensor map cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TmaError {
    /// The global address is not 16-byte aligned.
    #[error("TMA needs a 16-byte aligned global address, got {0:#x}")]
    Address(u64),
    /// A tensor dimension is 0 or above 2^32.
    #[error("TMA tensor dimension {what} = {value} is outside 1..=2^32")]
    Dim {
        /// `rows` or `cols`.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// The row stride is not a multiple of 16 bytes, is below a row, or is 2^40 or more.
    #[error("TMA row stride of {stride} bytes must be a multiple of 16, at least {row} (one row) and below 2^40")]
    Stride {
        /// The row stride in bytes.
        stride: u64,
        /// Bytes of one row.
        row: u64,
    },
    /// A box dimension is 0 or above 256.
    #[error("TMA box dimension {what} = {value} is outside 1..=256")]
    BoxDim {
        /// `box_rows` or `box_cols`.
        what: &'static str,
        /// The value.
        value: u32,
    },
    /// The inner box is not a multiple of 16 bytes.
    #[error("TMA inner box of {0} bytes is not a multiple of 16")]
    InnerBox(u64),
    /// The inner box is wider than the swizzle span.
    #[error("TMA inner box of {bytes} bytes exceeds the {span}-byte swizzle")]
    Swizzle {
        /// Inner box bytes.
        bytes: u64,
        /// The swizzle span.
        span: u64,
    },
    /// The driver rejected the map.
    #[error("cuTensorMapEncodeTiled failed: {0}")]
    Driver(String),
}

impl From<TmaError> for CudaError {
    fn from(e: TmaError) -> Self {
        match e {
            TmaError::Driver(m) => CudaError::Unsupported(format!("cuTensorMapEncodeTiled: {m}")),
            other => CudaError::Unsupported(other.to_string()),
        }
    }
}

/// A 2-D row-major tensor `[rows, cols]` and the box TMA moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorMapSpec {
    /// Element type.
    pub dtype: DType,
    /// Rows (outer dimension).
    pub rows: u64,
    /// Columns (inner, contiguous dimension).
    pub cols: u64,
    /// Bytes from one row to the next (`cols * element size` for a dense tensor).
    pub row_stride: u64,
    /// Rows of the box.
    pub box_rows: u32,
    /// Columns of the box.
    pub box_cols: u32,
    /// Shared-memory swizzle.
    pub swizzle: Swizzle,
    /// Fill of out-of-bounds elements on load.
    pub oob: OobFill,
}

impl TensorMapSpec {
    /// A dense `[rows, cols]` tensor with a `[box_rows, box_cols]` box, no swizzle, zero fill.
    pub fn dense(dtype: DType, rows: u64, cols: u64, box_rows: u32, box_cols: u32) -> Self {
        Self {
            dtype,
            rows,
            cols,
            row_stride: cols * dtype.size_bytes() as u64,
            box_rows,
            box_cols,
            swizzle: Swizzle::None,
            oob: OobFill::Zero,
        }
    }

    /// Bytes one box occupies in shared memory (and what a load counts on its mbarrier),
    /// whether or not it reaches past the tensor.
    pub fn box_bytes(&self) -> u64 {
        self.box_rows as u64 * self.box_cols as u64 * self.dtype.size_bytes() as u64
    }

    /// Checks everything `cuTensorMapEncodeTiled` requires (see the module docs) for a
    /// tensor at global address `addr`.
    pub fn validate(&self, addr: u64) -> Result<(), TmaError> {
        let es = self.dtype.size_bytes() as u64;
        if !addr.is_multiple_of(GLOBAL_ALIGN) {
            return Err(TmaError::Address(addr));
        }
        for (what, value) in [("rows", self.rows), ("cols", self.cols)] {
            if value == 0 || value > MAX_DIM {
                return Err(TmaError::Dim { what, value });
            }
        }
        let row = self.cols * es;
        if !self.row_stride.is_multiple_of(GLOBAL_ALIGN) || self.row_stride < row || self.row_stride >= MAX_STRIDE {
            return Err(TmaError::Stride { stride: self.row_stride, row });
        }
        for (what, value) in [("box_rows", self.box_rows), ("box_cols", self.box_cols)] {
            if value == 0 || value > MAX_BOX_DIM {
                return Err(TmaError::BoxDim { what, value });
            }
        }
        let inner = self.box_cols as u64 * es;
        if !inner.is_multiple_of(16) {
            return Err(TmaError::InnerBox(inner));
        }
        if let Some(span) = self.swizzle.span()
            && inner > span
        {
            return Err(TmaError::Swizzle { bytes: inner, span });
        }
        Ok(())
    }

    /// Encodes the map for a tensor at device address `addr`, after [`Self::validate`].
    /// Needs the CUDA driver (a device context current on this thread is not required).
    pub fn encode(&self, addr: u64) -> Result<TensorMap, TmaError> {
        self.validate(addr)?;
        let dt = match self.dtype {
            DType::F32 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            DType::F16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            DType::BF16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        };
        let oob = match self.oob {
            OobFill::Zero => CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            OobFill::Nan => CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA,
        };
        let dims: [u64; 2] = [self.cols, self.rows];
        // Strides of every dimension but the innermost, in bytes.
        let strides: [u64; 1] = [self.row_stride];
        let boxes: [u32; 2] = [self.box_cols, self.box_rows];
        let elem_strides: [u32; 2] = [1, 1];
        // SAFETY: CUtensorMap is plain data (16 u64); the driver overwrites all of it.
        let mut map: CUtensorMap = unsafe { std::mem::zeroed() };
        // SAFETY: `map` is a valid, 64-byte aligned CUtensorMap; every array has the rank's
        // length (2, strides 1); the values were validated above against the driver's rules;
        // the address is only recorded in the map, not dereferenced here.
        let r = unsafe {
            cudarc::driver::sys::cuTensorMapEncodeTiled(
                &mut map,
                dt,
                2,
                addr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                elem_strides.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                self.swizzle.raw(),
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                oob,
            )
        };
        if r != CUresult::CUDA_SUCCESS {
            return Err(TmaError::Driver(format!("{r:?} for {self:?} at {addr:#x}")));
        }
        Ok(TensorMap(map))
    }
}

/// An encoded tensor map, passed by value as a `const __grid_constant__` kernel parameter
/// (128 bytes, 64-byte aligned or more; cudarc's `CUtensorMap` is 128-byte aligned).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct TensorMap(CUtensorMap);

impl std::fmt::Debug for TensorMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorMap(128 bytes)")
    }
}

impl TensorMap {
    /// The raw 128 bytes (for tests and dumps).
    pub fn as_words(&self) -> &[u64; 16] {
        &self.0.opaque
    }
}

// SAFETY: a kernel parameter of type `const __grid_constant__ CUtensorMap` is 128 bytes of
// plain data copied from this value by cuLaunchKernel; the layouts are the same (repr
// transparent over the driver's own struct).
unsafe impl DeviceRepr for TensorMap {}

const _: () = assert!(std::mem::size_of::<TensorMap>() == 128);
const _: () = assert!(std::mem::align_of::<TensorMap>() >= 64);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: DType, rows: u64, cols: u64, br: u32, bc: u32) -> TensorMapSpec {
        TensorMapSpec::dense(dtype, rows, cols, br, bc)
    }

    #[test]
    fn boxes_that_do_not_divide_the_tensor_are_valid() {
        // 1000 rows by 16-row boxes, 8200 columns by 256-column boxes: partial boxes at both edges.
        assert_eq!(spec(DType::F32, 1000, 8200, 16, 256).validate(0x1000), Ok(()));
        assert_eq!(spec(DType::BF16, 7, 776, 32, 256).validate(0x1000), Ok(()));
        // A box larger than the whole tensor.
        assert_eq!(spec(DType::F16, 3, 8, 64, 128).validate(0x1000), Ok(()));
        assert_eq!(spec(DType::F32, 1, 4, 256, 256).validate(0), Ok(()));
        assert_eq!(spec(DType::F32, 1000, 8200, 16, 256).box_bytes(), 16 * 256 * 4);
    }

    #[test]
    fn misaligned_address_and_row_stride_are_rejected() {
        assert_eq!(spec(DType::F32, 10, 64, 8, 64).validate(0x1004), Err(TmaError::Address(0x1004)));
        // 771 f32 columns: 3084-byte rows are not a multiple of 16.
        assert!(matches!(spec(DType::F32, 10, 771, 8, 64).validate(0), Err(TmaError::Stride { stride: 3084, .. })));
        // 12 bf16 columns: 24-byte rows.
        assert!(matches!(spec(DType::BF16, 10, 12, 8, 8).validate(0), Err(TmaError::Stride { .. })));
        // A pitch shorter than a row.
        let mut s = spec(DType::F32, 10, 64, 8, 64);
        s.row_stride = 128;
        assert!(matches!(s.validate(0), Err(TmaError::Stride { .. })));
        // A padded pitch is fine.
        s.row_stride = 512;
        assert_eq!(s.validate(0), Ok(()));
    }

    #[test]
    fn box_limits_are_checked() {
        assert_eq!(
            spec(DType::F32, 10, 1024, 8, 512).validate(0),
            Err(TmaError::BoxDim { what: "box_cols", value: 512 })
        );
        assert_eq!(spec(DType::F32, 10, 1024, 0, 64).validate(0), Err(TmaError::BoxDim { what: "box_rows", value: 0 }));
        assert_eq!(
            spec(DType::F32, 10, 1024, 257, 64).validate(0),
            Err(TmaError::BoxDim { what: "box_rows", value: 257 })
        );
        // 6 f32 columns = 24 bytes: not a multiple of 16.
        assert_eq!(spec(DType::F32, 10, 1024, 8, 6).validate(0), Err(TmaError::InnerBox(24)));
        assert_eq!(spec(DType::BF16, 10, 1024, 8, 4).validate(0), Err(TmaError::InnerBox(8)));
    }

    #[test]
    fn dims_must_be_nonzero_and_at_most_2_pow_32() {
        assert_eq!(spec(DType::F32, 0, 64, 8, 64).validate(0), Err(TmaError::Dim { what: "rows", value: 0 }));
        let big = (1u64 << 32) + 1;
        assert_eq!(spec(DType::F16, big, 64, 8, 64).validate(0), Err(TmaError::Dim { what: "rows", value: big }));
        assert_eq!(spec(DType::F16, 1 << 32, 64, 8, 64).validate(0), Ok(()));
    }

    #[test]
    fn swizzle_must_cover_the_inner_box() {
        let mut s = spec(DType::F32, 64, 64, 8, 32);
        s.swizzle = Swizzle::B128;
        assert_eq!(s.validate(0), Ok(()));
        s.swizzle = Swizzle::B64;
        assert_eq!(s.validate(0), Err(TmaError::Swizzle { bytes: 128, span: 64 }));
        s.swizzle = Swizzle::B32;
        s.box_cols = 8;
        assert_eq!(s.validate(0), Ok(()));
        s.swizzle = Swizzle::None;
        s.box_cols = 256;
        assert_eq!(s.validate(0), Ok(()));
    }

    #[test]
    fn errors_convert_to_unsupported() {
        let e: CudaError = TmaError::InnerBox(24).into();
        assert!(matches!(e, CudaError::Unsupported(ref m) if m.contains("multiple of 16")), "{e}");
    }

    #[test]
    fn the_map_is_128_bytes_and_64_byte_aligned() {
        assert_eq!(std::mem::size_of::<TensorMap>(), 128);
        assert!(std::mem::align_of::<TensorMap>().is_multiple_of(64));
    }
}
