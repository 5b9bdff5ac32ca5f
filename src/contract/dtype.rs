//! Element types and host tensors.

use std::fmt;

use half::{bf16, f16};

/// The element type shared by Q, K, V and O (and the gate `z` of [`Variant::ContextScale`]).
///
/// [`Variant::ContextScale`]: crate::Variant::ContextScale
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    Bf16,
}

impl DType {
    /// All dtypes, widest first.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// The lowercase name used in messages and file formats (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Rounds `x` to the nearest value representable in this dtype (ties to even), back in f64.
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => f16::from_f64(x).to_f64(),
            DType::Bf16 => bf16::from_f64(x).to_f64(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust element type that maps onto a [`DType`].
pub trait Element: Copy + bytemuck::Pod + Send + Sync + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Rounding (to nearest, ties to even) from f64.
    fn from_f64(x: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

/// A host buffer of one of the three dtypes.
#[derive(Clone, Debug, PartialEq)]
pub enum HostTensor {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    Bf16(Vec<bf16>),
}

impl HostTensor {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            HostTensor::F32(_) => DType::F32,
            HostTensor::F16(_) => DType::F16,
            HostTensor::Bf16(_) => DType::Bf16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostTensor::F32(x) => x.len(),
            HostTensor::F16(x) => x.len(),
            HostTensor::Bf16(x) => x.len(),
        }
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rounds each value of `values` to `dtype`.
    pub fn from_f64(dtype: DType, values: &[f64]) -> Self {
        match dtype {
            DType::F32 => HostTensor::F32(values.iter().map(|&x| x as f32).collect()),
            DType::F16 => HostTensor::F16(values.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::Bf16 => HostTensor::Bf16(values.iter().map(|&x| bf16::from_f64(x)).collect()),
        }
    }

    /// A buffer of `len` copies of `value`, rounded to `dtype`.
    pub fn filled(dtype: DType, len: usize, value: f64) -> Self {
        Self::from_f64(dtype, &vec![value; len])
    }

    /// Element `i` widened to f64, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            HostTensor::F32(x) => x.get(i).map(|&v| v as f64),
            HostTensor::F16(x) => x.get(i).map(|v| v.to_f64()),
            HostTensor::Bf16(x) => x.get(i).map(|v| v.to_f64()),
        }
    }

    /// Writes `value`, rounded to the dtype, at element `i`; returns `false` past the end.
    pub fn set(&mut self, i: usize, value: f64) -> bool {
        match self {
            HostTensor::F32(x) => x.get_mut(i).map(|v| *v = value as f32).is_some(),
            HostTensor::F16(x) => x.get_mut(i).map(|v| *v = f16::from_f64(value)).is_some(),
            HostTensor::Bf16(x) => x.get_mut(i).map(|v| *v = bf16::from_f64(value)).is_some(),
        }
    }

    /// All elements widened to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            HostTensor::F32(x) => x.iter().map(|&v| v as f64).collect(),
            HostTensor::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
            HostTensor::Bf16(x) => x.iter().map(|v| v.to_f64()).collect(),
        }
    }

    /// The raw little-endian bytes, ready for upload.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostTensor::F32(x) => bytemuck::cast_slice(x),
            HostTensor::F16(x) => bytemuck::cast_slice(x),
            HostTensor::Bf16(x) => bytemuck::cast_slice(x),
        }
    }

    /// Builds a tensor of `dtype` from raw bytes (as read back from a device).
    ///
    /// Returns `None` when the byte count is not a multiple of the element size.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Self> {
        if bytes.len() % dtype.size_bytes() != 0 {
            return None;
        }
        // pod_collect_to_vec copies, so the byte slice need not be aligned.
        Some(match dtype {
            DType::F32 => HostTensor::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostTensor::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::Bf16 => HostTensor::Bf16(bytemuck::pod_collect_to_vec(bytes)),
        })
    }
}

impl<T: Element> From<Vec<T>> for HostTensor {
    fn from(values: Vec<T>) -> Self {
        // Element is implemented for exactly the three types below, so one cast succeeds.
        let bytes: &[u8] = bytemuck::cast_slice(&values);
        match T::DTYPE {
            DType::F32 => HostTensor::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostTensor::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::Bf16 => HostTensor::Bf16(bytemuck::pod_collect_to_vec(bytes)),
        }
    }
}
