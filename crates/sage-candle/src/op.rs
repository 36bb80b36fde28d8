//! `sage_attention` as a candle custom op. Tensors in host memory go to a sage backend (sage-core's
//! CPU backend unless [`SageParams::backend`] names another, e.g. wgpu); with the `cuda` feature,
//! tensors on a candle CUDA device run sage-cuda on candle's own stream.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType as CandleDType, Layout as CandleLayout, Tensor};
use half::{bf16, f16};
use sage_core::{
    AttentionBackend, AttentionParams, CpuBackend, DType, Layout, Mode, Shape, Storage,
    Tensor as SageTensor,
};

/// The options of one [`sage_attention`] call.
#[derive(Clone)]
pub struct SageParams {
    /// Mode, granularity, smoothing, rotation, causal mask, softmax scale (ALGORITHM.md).
    pub attention: AttentionParams,
    /// How q, k and v are laid out: `Layout::Nhd` = `(batch, seq, heads, head_dim)`, as
    /// candle-flash-attn takes them (the default), or `Layout::Hnd` = `(batch, heads, seq, head_dim)`.
    pub layout: Layout,
    /// The backend that runs tensors held in host memory; `None` is sage-core's CPU backend.
    pub backend: Option<Arc<dyn AttentionBackend>>,
}

impl Default for SageParams {
    fn default() -> Self {
        SageParams {
            attention: AttentionParams::default(),
            layout: Layout::Nhd,
            backend: None,
        }
    }
}

impl std::fmt::Debug for SageParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SageParams")
            .field("attention", &self.attention)
            .field("layout", &self.layout)
            .field("backend", &self.backend.as_ref().map(|b| b.name()))
            .finish()
    }
}

impl SageParams {
    /// NHD inputs, `mode`, every other option at its default, the CPU backend.
    pub fn with_mode(mode: Mode) -> Self {
        SageParams {
            attention: AttentionParams::with_mode(mode),
            ..Default::default()
        }
    }
}

/// A sage error as a candle one, naming the op.
pub(crate) fn candle_err(e: sage_core::Error) -> candle_core::Error {
    candle_core::Error::msg(format!("sage_attention: {e}"))
}

/// SageAttention2 of `q`, `k`, `v`: softmax(sm_scale · Q Kᵀ) V with Q·Kᵀ on INT8/INT4 codes and P·V
/// in FP8 (or f16), per `params.attention.mode`.
///
/// Shapes in the default NHD layout: q `(batch, seq_q, heads_q, head_dim)`, k and v
/// `(batch, seq_k, heads_kv, head_dim)`, with `heads_q` a multiple of `heads_kv` (GQA/MQA) and
/// `head_dim <= 128`; the output has q's shape, dtype and layout. f16, bf16 and f32 are accepted;
/// q, k, v of one dtype. Non-contiguous inputs are made contiguous first. There is no padding mask:
/// run padded sequences one by one, or group sequences of one length.
pub fn sage_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    params: &SageParams,
) -> candle_core::Result<Tensor> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        if t.rank() != 4 {
            candle_core::bail!(
                "sage_attention: {name} has shape {:?}; expected rank 4 ({})",
                t.dims(),
                layout_dims(params.layout)
            );
        }
        if !matches!(
            t.dtype(),
            CandleDType::F16 | CandleDType::BF16 | CandleDType::F32
        ) {
            candle_core::bail!(
                "sage_attention: {name} is {:?}; expected f16, bf16 or f32",
                t.dtype()
            );
        }
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(&k, &v, &SageOp { params })
}

fn layout_dims(layout: Layout) -> &'static str {
    match layout {
        Layout::Nhd => "batch, seq, heads, head_dim",
        Layout::Hnd => "batch, heads, seq, head_dim",
    }
}

struct SageOp<'a> {
    params: &'a SageParams,
}

/// The contiguous elements of a candle CPU tensor as sage storage.
fn host_storage(name: &str, s: &CpuStorage, l: &CandleLayout) -> candle_core::Result<Storage> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "sage_attention: {name} is not contiguous (strides {:?})",
            l.stride()
        );
    };
    Ok(match s {
        CpuStorage::F16(v) => Storage::F16(v[start..end].to_vec()),
        CpuStorage::BF16(v) => Storage::BF16(v[start..end].to_vec()),
        CpuStorage::F32(v) => Storage::F32(v[start..end].to_vec()),
        other => candle_core::bail!(
            "sage_attention: {name} is {:?}; expected f16, bf16 or f32",
            other.dtype()
        ),
    })
}

fn sage_shape(name: &str, l: &CandleLayout, layout: Layout) -> candle_core::Result<Shape> {
    match *l.dims() {
        [a, b, c, d] => Ok(Shape::from_dims([a, b, c, d], layout)),
        ref other => candle_core::bail!(
            "sage_attention: {name} has shape {other:?}; expected rank 4 ({})",
            layout_dims(layout)
        ),
    }
}

impl CustomOp3 for SageOp<'_> {
    fn name(&self) -> &'static str {
        "sage_attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CandleLayout,
        s2: &CpuStorage,
        l2: &CandleLayout,
        s3: &CpuStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        let layout = self.params.layout;
        let mut tensors = Vec::with_capacity(3);
        for (name, s, l) in [("q", s1, l1), ("k", s2, l2), ("v", s3, l3)] {
            let t = SageTensor::new(
                host_storage(name, s, l)?,
                sage_shape(name, l, layout)?,
                layout,
            )
            .map_err(candle_err)?;
            tensors.push(t);
        }
        let cpu;
        let backend: &dyn AttentionBackend = match &self.params.backend {
            Some(b) => b.as_ref(),
            None => {
                cpu = CpuBackend::new();
                &cpu
            }
        };
        let out = backend
            .attention(
                &tensors[0],
                &tensors[1],
                &tensors[2],
                &self.params.attention,
            )
            .map_err(candle_err)?
            .out;
        let dims = out.shape().dims(out.layout());
        let storage = match out.into_storage() {
            Storage::F16(v) => CpuStorage::F16(v),
            Storage::BF16(v) => CpuStorage::BF16(v),
            Storage::F32(v) => CpuStorage::F32(v),
        };
        Ok((storage, candle_core::Shape::from(dims.to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CandleLayout,
        s2: &candle_core::CudaStorage,
        l2: &CandleLayout,
        s3: &candle_core::CudaStorage,
        l3: &CandleLayout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        crate::cuda::cuda_fwd(self.params, [(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// The sage dtype of a candle dtype that sage takes.
pub fn sage_dtype(d: CandleDType) -> Option<DType> {
    match d {
        CandleDType::F16 => Some(DType::F16),
        CandleDType::BF16 => Some(DType::BF16),
        CandleDType::F32 => Some(DType::F32),
        _ => None,
    }
}

/// A candle tensor (rank 4, in `layout`) as a sage host tensor of the same dtype.
pub fn to_sage(t: &Tensor, layout: Layout) -> candle_core::Result<SageTensor> {
    let t = t.contiguous()?;
    let shape = match *t.dims() {
        [a, b, c, d] => Shape::from_dims([a, b, c, d], layout),
        ref other => candle_core::bail!("to_sage: shape {other:?} is not rank 4"),
    };
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        CandleDType::F16 => Storage::F16(flat.to_vec1::<f16>()?),
        CandleDType::BF16 => Storage::BF16(flat.to_vec1::<bf16>()?),
        CandleDType::F32 => Storage::F32(flat.to_vec1::<f32>()?),
        other => candle_core::bail!("to_sage: dtype {other:?} is not f16, bf16 or f32"),
    };
    SageTensor::new(storage, shape, layout).map_err(candle_err)
}
