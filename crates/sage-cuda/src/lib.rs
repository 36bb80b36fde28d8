//! sage-cuda: the tensor-core backend (INT4/INT8 `mma.sync`, FP8 PV), kernels compiled by NVRTC.
//!
//! This build has no CUDA backend yet: [`CudaBackend::new`] reports it unavailable, with the reason,
//! so that backend selection and `sage info` treat it like a machine without a GPU.

use sage_core::{
    AttentionBackend, AttentionParams, Capabilities, DeviceOutput, DeviceTensor, Error,
    QuantizedQkv, Result, Tensor,
};

pub const NAME: &str = "cuda";

/// The cuda backend. In this build it has no values: [`CudaBackend::new`] always says why.
#[derive(Debug)]
pub enum CudaBackend {}

impl CudaBackend {
    /// Opens the backend, or says why it cannot.
    pub fn new() -> Result<Self> {
        Err(Error::Unavailable {
            backend: NAME,
            reason: "this build of sage has no CUDA kernels yet".into(),
        })
    }
}

impl AttentionBackend for CudaBackend {
    fn name(&self) -> &'static str {
        NAME
    }
    fn capabilities(&self) -> Capabilities {
        match *self {}
    }
    fn upload(&self, _: &Tensor) -> Result<DeviceTensor> {
        match *self {}
    }
    fn download(&self, _: &DeviceTensor) -> Result<Tensor> {
        match *self {}
    }
    fn attention_device(
        &self,
        _: &DeviceTensor,
        _: &DeviceTensor,
        _: &DeviceTensor,
        _: &AttentionParams,
    ) -> Result<DeviceOutput> {
        match *self {}
    }
    fn quantize(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &AttentionParams,
    ) -> Result<QuantizedQkv> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_unavailable_without_panicking() {
        let err = super::CudaBackend::new().unwrap_err();
        assert!(err.to_string().contains(super::NAME), "{err}");
    }
}
