//! The CUDA path of `sage_attention` (feature `cuda`): candle's CUDA tensors run sage-cuda's
//! kernels on candle's own stream. Candle and sage-cuda both use cudarc 0.19, so the backend is
//! made on candle's context and stream ([`CudaBackend::from_stream`]); q, k and v are copied
//! device to device into sage's buffers and the output back into a candle allocation (no host
//! round trip; a copy-free path would need sage device tensors that borrow memory).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda::cudarc::driver::DeviceRepr;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::{Layout as CandleLayout, Shape as CandleShape};
use half::{bf16, f16};
use sage_core::{AttentionBackend, DType, TensorMeta};
use sage_cuda::CudaBackend;

use crate::op::{SageParams, candle_err};

/// One sage backend per candle device, made on first use: kernels are loaded once per backend.
fn backend_for(device: &CudaDevice) -> candle_core::Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaBackend>>>> = OnceLock::new();
    let mut map = BACKENDS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| {
            candle_core::Error::msg("sage_attention: a thread panicked holding the backends")
        })?;
    if let Some(b) = map.get(&device.id()) {
        return Ok(b.clone());
    }
    let backend = Arc::new(CudaBackend::from_stream(device.cuda_stream()).map_err(candle_err)?);
    map.insert(device.id(), backend.clone());
    Ok(backend)
}

/// The forward pass of the op on candle CUDA storage, for each dtype sage takes.
pub(crate) fn cuda_fwd(
    params: &SageParams,
    inputs: [(&CudaStorage, &CandleLayout); 3],
) -> candle_core::Result<(CudaStorage, CandleShape)> {
    use candle_core::backend::BackendStorage;
    match inputs[0].0.dtype() {
        candle_core::DType::F16 => run::<f16>(params, inputs, DType::F16),
        candle_core::DType::BF16 => run::<bf16>(params, inputs, DType::BF16),
        candle_core::DType::F32 => run::<f32>(params, inputs, DType::F32),
        other => candle_core::bail!("sage_attention: q is {other:?}; expected f16, bf16 or f32"),
    }
}

fn run<T: CudaDType + DeviceRepr>(
    params: &SageParams,
    inputs: [(&CudaStorage, &CandleLayout); 3],
    dtype: DType,
) -> candle_core::Result<(CudaStorage, CandleShape)> {
    let device = inputs[0].0.device.clone();
    let backend = backend_for(&device)?;
    let layout = params.layout;
    let mut tensors = Vec::with_capacity(3);
    for (name, (storage, l)) in ["q", "k", "v"].into_iter().zip(inputs) {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!(
                "sage_attention: {name} is not contiguous (strides {:?})",
                l.stride()
            );
        };
        let [a, b, c, d] = *l.dims() else {
            candle_core::bail!(
                "sage_attention: {name} has shape {:?}; expected rank 4",
                l.dims()
            );
        };
        // k or v of another dtype than q is reported by name, before any copy
        let slice = storage.as_cuda_slice::<T>().map_err(|_| {
            candle_core::Error::msg(format!(
                "sage_attention: Q, K and V of one dtype: {name} is not {dtype}"
            ))
        })?;
        let view = slice.slice(start..end);
        let bytes = (end - start) * dtype.size_bytes();
        // SAFETY: f16, bf16 and f32 are plain bytes in device memory; the view covers exactly
        // `end - start` elements, so `bytes` bytes.
        let raw = unsafe { view.transmute::<u8>(bytes) }.ok_or_else(|| {
            candle_core::Error::msg(format!("sage_attention: {name}: cannot view {bytes} bytes"))
        })?;
        let meta = TensorMeta {
            shape: sage_core::Shape::from_dims([a, b, c, d], layout),
            dtype,
            layout,
        };
        tensors.push(
            backend
                .upload_device_bytes(&raw, meta)
                .map_err(candle_err)?,
        );
    }
    let out = backend
        .attention_device(&tensors[0], &tensors[1], &tensors[2], &params.attention)
        .map_err(candle_err)?
        .out;
    let meta = out.meta();
    let n = meta.shape.numel();
    let bytes = backend.device_bytes(&out).map_err(candle_err)?;
    // SAFETY: the output holds `n` elements of `T` in its first `n * size` bytes.
    let src = unsafe { bytes.transmute::<T>(n) }
        .ok_or_else(|| candle_core::Error::msg("sage_attention: output smaller than its shape"))?;
    // SAFETY: every element is written by the copy below before candle reads it.
    let mut dst = unsafe { device.alloc::<T>(n) }?;
    device.memcpy_dtod(&src, &mut dst)?;
    let dims = meta.shape.dims(meta.layout).to_vec();
    Ok((
        CudaStorage::wrap_cuda_slice(dst, device),
        CandleShape::from(dims),
    ))
}
