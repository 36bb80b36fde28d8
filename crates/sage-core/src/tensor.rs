//! Host tensors: the four-dimensional Q, K, V and O of attention in f16, bf16 or f32, laid out
//! HND (`[batch, heads, seq, head_dim]`) or NHD (`[batch, seq, heads, head_dim]`).

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element type of a tensor. The output of attention has the dtype of Q.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F16,
    BF16,
    F32,
}

impl DType {
    pub const ALL: [DType; 3] = [DType::F16, DType::BF16, DType::F32];

    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f32" | "fp32" | "float32" => Ok(DType::F32),
            _ => Err(format!("`{s}` is not a dtype (f16, bf16, f32)")),
        }
    }
}

/// Memory order of the four dimensions; `head_dim` is always the contiguous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// `[batch, heads, seq, head_dim]`
    #[serde(rename = "HND")]
    Hnd,
    /// `[batch, seq, heads, head_dim]`
    #[serde(rename = "NHD")]
    Nhd,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Hnd, Layout::Nhd];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Hnd => "HND",
            Layout::Nhd => "NHD",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "HND" => Ok(Layout::Hnd),
            "NHD" => Ok(Layout::Nhd),
            _ => Err(format!("`{s}` is not a layout (HND, NHD)")),
        }
    }
}

/// The logical shape of an attention operand, whatever its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl Shape {
    pub fn new(batch: usize, heads: usize, seq: usize, head_dim: usize) -> Self {
        Shape {
            batch,
            heads,
            seq,
            head_dim,
        }
    }

    /// Number of elements, or `None` when it overflows `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        self.batch
            .checked_mul(self.heads)?
            .checked_mul(self.seq)?
            .checked_mul(self.head_dim)
    }

    pub fn numel(&self) -> usize {
        self.batch * self.heads * self.seq * self.head_dim
    }

    /// The dimensions in memory order of `layout`.
    pub fn dims(&self, layout: Layout) -> [usize; 4] {
        match layout {
            Layout::Hnd => [self.batch, self.heads, self.seq, self.head_dim],
            Layout::Nhd => [self.batch, self.seq, self.heads, self.head_dim],
        }
    }

    /// Shape from dimensions given in memory order of `layout`.
    pub fn from_dims(dims: [usize; 4], layout: Layout) -> Self {
        match layout {
            Layout::Hnd => Shape::new(dims[0], dims[1], dims[2], dims[3]),
            Layout::Nhd => Shape::new(dims[0], dims[2], dims[1], dims[3]),
        }
    }

    /// Flat index of element (b, h, n, d) in `layout`.
    #[inline]
    pub fn index(&self, layout: Layout, b: usize, h: usize, n: usize, d: usize) -> usize {
        match layout {
            Layout::Hnd => ((b * self.heads + h) * self.seq + n) * self.head_dim + d,
            Layout::Nhd => ((b * self.seq + n) * self.heads + h) * self.head_dim + d,
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[B={}, H={}, N={}, D={}]",
            self.batch, self.heads, self.seq, self.head_dim
        )
    }
}

/// The elements of a tensor, in the tensor's own dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
}

impl Storage {
    pub fn len(&self) -> usize {
        match self {
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::F32(_) => DType::F32,
        }
    }

    /// Element `i` widened to f32 (exact for every dtype).
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Storage::F16(v) => v[i].to_f32(),
            Storage::BF16(v) => v[i].to_f32(),
            Storage::F32(v) => v[i],
        }
    }

    /// Round f32 values to `dtype` (round to nearest even, as `half` does).
    pub fn from_f32(values: &[f32], dtype: DType) -> Self {
        match dtype {
            DType::F16 => Storage::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => Storage::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F32 => Storage::F32(values.to_vec()),
        }
    }

    /// Elements of `dtype` from raw little-endian bytes (a file's, a device buffer's); a trailing
    /// partial element is ignored.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Self {
        match dtype {
            DType::F16 => Storage::F16(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::BF16 => Storage::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            DType::F32 => Storage::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        }
    }

    /// The first element that is NaN or infinite, widened to f32.
    pub fn first_non_finite(&self) -> Option<f32> {
        (0..self.len())
            .map(|i| self.get_f32(i))
            .find(|v| !v.is_finite())
    }

    /// Raw little-endian bytes, as a file or a device buffer holds them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Storage::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A host tensor: storage, logical shape and layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    storage: Storage,
    shape: Shape,
    layout: Layout,
}

impl Tensor {
    /// Wraps `storage`, which must hold exactly `shape.numel()` elements in `layout` order.
    pub fn new(storage: Storage, shape: Shape, layout: Layout) -> Result<Self> {
        let numel = shape
            .checked_numel()
            .ok_or_else(|| Error::shape("tensor", "a shape whose size fits in memory", shape))?;
        if storage.len() != numel {
            return Err(Error::shape(
                "tensor",
                format!("{numel} elements for shape {shape}"),
                format!("{} elements", storage.len()),
            ));
        }
        Ok(Tensor {
            storage,
            shape,
            layout,
        })
    }

    /// A tensor of `dtype` from f32 values given in HND order.
    pub fn from_f32_hnd(
        values: &[f32],
        shape: Shape,
        dtype: DType,
        layout: Layout,
    ) -> Result<Self> {
        if values.len() != shape.numel() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for shape {shape}", shape.numel()),
                values.len(),
            ));
        }
        let ordered = match layout {
            Layout::Hnd => values.to_vec(),
            Layout::Nhd => relayout(values, shape, Layout::Hnd, Layout::Nhd),
        };
        Tensor::new(Storage::from_f32(&ordered, dtype), shape, layout)
    }

    /// A zero tensor.
    pub fn zeros(shape: Shape, dtype: DType, layout: Layout) -> Result<Self> {
        Tensor::from_f32_hnd(&vec![0.0; shape.numel()], shape, dtype, layout)
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn into_storage(self) -> Storage {
        self.storage
    }

    pub fn numel(&self) -> usize {
        self.storage.len()
    }

    /// Element (b, h, n, d) as f32.
    pub fn get(&self, b: usize, h: usize, n: usize, d: usize) -> f32 {
        self.storage
            .get_f32(self.shape.index(self.layout, b, h, n, d))
    }

    /// All elements widened to f32, in HND order whatever the layout.
    pub fn to_f32_hnd(&self) -> Vec<f32> {
        let raw: Vec<f32> = (0..self.numel()).map(|i| self.storage.get_f32(i)).collect();
        match self.layout {
            Layout::Hnd => raw,
            Layout::Nhd => relayout(&raw, self.shape, Layout::Nhd, Layout::Hnd),
        }
    }

    /// The same values in another layout.
    pub fn to_layout(&self, layout: Layout) -> Tensor {
        if layout == self.layout {
            return self.clone();
        }
        let hnd = self.to_f32_hnd();
        // Widening then rounding back to the same dtype is exact.
        match Tensor::from_f32_hnd(&hnd, self.shape, self.dtype(), layout) {
            Ok(t) => t,
            Err(_) => unreachable!("the shape was valid for self"),
        }
    }
}

/// Reorders `values` of `shape` from layout `from` to layout `to`.
pub fn relayout(values: &[f32], shape: Shape, from: Layout, to: Layout) -> Vec<f32> {
    if from == to {
        return values.to_vec();
    }
    let mut out = vec![0.0f32; values.len()];
    let d = shape.head_dim;
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            for n in 0..shape.seq {
                let src = shape.index(from, b, h, n, 0);
                let dst = shape.index(to, b, h, n, 0);
                out[dst..dst + d].copy_from_slice(&values[src..src + d]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let shape = Shape::new(2, 3, 5, 4);
        let vals: Vec<f32> = (0..shape.numel()).map(|i| i as f32).collect();
        for dtype in DType::ALL {
            let t = Tensor::from_f32_hnd(&vals, shape, dtype, Layout::Nhd).unwrap();
            assert_eq!(
                t.get(1, 2, 3, 1),
                vals[shape.index(Layout::Hnd, 1, 2, 3, 1)]
            );
            assert_eq!(t.to_f32_hnd(), vals);
            assert_eq!(t.to_layout(Layout::Hnd).to_f32_hnd(), vals);
        }
    }

    #[test]
    fn wrong_length_is_an_error() {
        let err = Tensor::new(
            Storage::F32(vec![0.0; 5]),
            Shape::new(1, 1, 2, 3),
            Layout::Hnd,
        );
        assert!(matches!(err, Err(Error::Shape { .. })));
        let huge = Shape::new(usize::MAX, 2, 2, 2);
        assert!(Tensor::new(Storage::F32(vec![]), huge, Layout::Hnd).is_err());
    }
}
