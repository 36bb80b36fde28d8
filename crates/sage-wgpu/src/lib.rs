//! sage-wgpu: the portable backend, WGSL shaders that emulate packed INT4/INT8 dot products and FP8
//! decode so that the numerics of ALGORITHM.md run on any GPU.
//!
//! This build has no wgpu backend yet: [`WgpuBackend::new`] reports it unavailable, with the reason.

use sage_core::{
    AttentionBackend, AttentionParams, Capabilities, DeviceOutput, DeviceTensor, Error,
    QuantizedQkv, Result, Tensor,
};

pub const NAME: &str = "wgpu";

/// The wgpu backend. In this build it has no values: [`WgpuBackend::new`] always says why.
#[derive(Debug)]
pub enum WgpuBackend {}

impl WgpuBackend {
    /// Opens the backend, or says why it cannot.
    pub fn new() -> Result<Self> {
        Err(Error::Unavailable {
            backend: NAME,
            reason: "this build of sage has no WGSL shaders yet".into(),
        })
    }

    /// True when the adapter is real hardware (not a software rasterizer such as llvmpipe).
    pub fn is_hardware(&self) -> bool {
        match *self {}
    }
}

impl AttentionBackend for WgpuBackend {
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
        let err = super::WgpuBackend::new().unwrap_err();
        assert!(err.to_string().contains(super::NAME), "{err}");
    }
}
