//! Element types and their raw loads and stores.

use half::{bf16, f16};

/// The element types of `aclDataType` the simulator stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    F16,
    I8,
    I32,
    U8,
    I16,
    U16,
    U32,
    I64,
    U64,
    F64,
    Bool,
    BF16,
}

impl DType {
    pub(crate) fn from_acl(v: i32) -> Option<DType> {
        Some(match v {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::I8,
            3 => DType::I32,
            4 => DType::U8,
            6 => DType::I16,
            7 => DType::U16,
            8 => DType::U32,
            9 => DType::I64,
            10 => DType::U64,
            11 => DType::F64,
            12 => DType::Bool,
            27 => DType::BF16,
            _ => return None,
        })
    }

    pub(crate) fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            DType::F32 => "ACL_FLOAT",
            DType::F16 => "ACL_FLOAT16",
            DType::I8 => "ACL_INT8",
            DType::I32 => "ACL_INT32",
            DType::U8 => "ACL_UINT8",
            DType::I16 => "ACL_INT16",
            DType::U16 => "ACL_UINT16",
            DType::U32 => "ACL_UINT32",
            DType::I64 => "ACL_INT64",
            DType::U64 => "ACL_UINT64",
            DType::F64 => "ACL_DOUBLE",
            DType::Bool => "ACL_BOOL",
            DType::BF16 => "ACL_BF16",
        }
    }

    /// The float types the aclnn compute ops take (f32, f16, bf16).
    pub(crate) fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub(crate) fn is_index(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    /// Loads one element as f64.
    ///
    /// # Safety
    /// `p` must point to `self.size()` readable bytes.
    pub(crate) unsafe fn load_f64(self, p: *const u8) -> f64 {
        // SAFETY: the caller guarantees `self.size()` readable bytes at `p`; unaligned reads.
        unsafe {
            match self {
                DType::F32 => f64::from(p.cast::<f32>().read_unaligned()),
                DType::F16 => p.cast::<f16>().read_unaligned().to_f64(),
                DType::BF16 => p.cast::<bf16>().read_unaligned().to_f64(),
                DType::F64 => p.cast::<f64>().read_unaligned(),
                DType::I8 => f64::from(p.cast::<i8>().read_unaligned()),
                DType::U8 => f64::from(p.read_unaligned()),
                DType::Bool => f64::from(u8::from(p.read_unaligned() != 0)),
                DType::I16 => f64::from(p.cast::<i16>().read_unaligned()),
                DType::U16 => f64::from(p.cast::<u16>().read_unaligned()),
                DType::I32 => f64::from(p.cast::<i32>().read_unaligned()),
                DType::U32 => f64::from(p.cast::<u32>().read_unaligned()),
                DType::I64 => p.cast::<i64>().read_unaligned() as f64,
                DType::U64 => p.cast::<u64>().read_unaligned() as f64,
            }
        }
    }

    /// Loads one element as f32 (the compute type of the float ops).
    ///
    /// # Safety
    /// `p` must point to `self.size()` readable bytes.
    #[inline]
    pub(crate) unsafe fn load_f32(self, p: *const u8) -> f32 {
        // SAFETY: the caller guarantees `self.size()` readable bytes at `p`; unaligned reads.
        unsafe {
            match self {
                DType::F32 => p.cast::<f32>().read_unaligned(),
                DType::F16 => p.cast::<f16>().read_unaligned().to_f32(),
                DType::BF16 => p.cast::<bf16>().read_unaligned().to_f32(),
                DType::I8 => f32::from(p.cast::<i8>().read_unaligned()),
                _ => self.load_f64(p) as f32,
            }
        }
    }

    /// Loads one integer element exactly (floats are truncated toward zero).
    ///
    /// # Safety
    /// `p` must point to `self.size()` readable bytes.
    pub(crate) unsafe fn load_i64(self, p: *const u8) -> i64 {
        // SAFETY: the caller guarantees `self.size()` readable bytes at `p`; unaligned reads.
        unsafe {
            match self {
                DType::I64 => p.cast::<i64>().read_unaligned(),
                DType::U64 => p.cast::<u64>().read_unaligned() as i64,
                DType::I32 => i64::from(p.cast::<i32>().read_unaligned()),
                _ => self.load_f64(p) as i64,
            }
        }
    }

    /// Stores `v` converted to this type (floats round to nearest; integers truncate toward zero
    /// and saturate, NaN becomes 0; bool is `v != 0`).
    ///
    /// # Safety
    /// `p` must point to `self.size()` writable bytes.
    pub(crate) unsafe fn store_f64(self, p: *mut u8, v: f64) {
        // SAFETY: the caller guarantees `self.size()` writable bytes at `p`; unaligned writes.
        unsafe {
            match self {
                DType::F32 => p.cast::<f32>().write_unaligned(v as f32),
                DType::F16 => p.cast::<f16>().write_unaligned(f16::from_f64(v)),
                DType::BF16 => p.cast::<bf16>().write_unaligned(bf16::from_f64(v)),
                DType::F64 => p.cast::<f64>().write_unaligned(v),
                DType::I8 => p.cast::<i8>().write_unaligned(v as i8),
                DType::U8 => p.write_unaligned(v as u8),
                DType::Bool => p.write_unaligned(u8::from(v != 0.0)),
                DType::I16 => p.cast::<i16>().write_unaligned(v as i16),
                DType::U16 => p.cast::<u16>().write_unaligned(v as u16),
                DType::I32 => p.cast::<i32>().write_unaligned(v as i32),
                DType::U32 => p.cast::<u32>().write_unaligned(v as u32),
                DType::I64 => p.cast::<i64>().write_unaligned(v as i64),
                DType::U64 => p.cast::<u64>().write_unaligned(v as u64),
            }
        }
    }

    /// Stores an integer exactly where the type is an integer type.
    ///
    /// # Safety
    /// `p` must point to `self.size()` writable bytes.
    pub(crate) unsafe fn store_i64(self, p: *mut u8, v: i64) {
        // SAFETY: the caller guarantees `self.size()` writable bytes at `p`; unaligned writes.
        unsafe {
            match self {
                DType::I64 => p.cast::<i64>().write_unaligned(v),
                DType::I32 => p.cast::<i32>().write_unaligned(v as i32),
                _ => self.store_f64(p, v as f64),
            }
        }
    }
}
