//! sage: runtime backend selection over [`sage_core::AttentionBackend`], used by the `sage` command
//! and by anyone who wants "the best backend here" chosen by a config flag.

use std::sync::Arc;

use serde::Serialize;

pub use sage_core::*;

/// The backends sage knows, in the order `auto` tries them.
pub const BACKENDS: [BackendChoice; 3] =
    [BackendChoice::Cuda, BackendChoice::Wgpu, BackendChoice::Cpu];

/// What `sage info` says of one backend.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub backend: &'static str,
    pub available: bool,
    /// Why it is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// A backend that runs, shared.
pub type SharedBackend = Arc<dyn AttentionBackend>;

/// Opens one named backend (not `auto`).
fn open_one(choice: BackendChoice) -> Result<SharedBackend> {
    match choice {
        BackendChoice::Cpu => Ok(Arc::new(CpuBackend::new())),
        BackendChoice::Wgpu => Ok(Arc::new(sage_wgpu::WgpuBackend::new()?)),
        BackendChoice::Cuda => Ok(Arc::new(sage_cuda::CudaBackend::new()?)),
        BackendChoice::Auto => open(BackendChoice::Auto).map(|(b, _)| b),
    }
}

/// Opens the backend `choice` names. `auto` takes CUDA, then a hardware wgpu adapter, then the CPU,
/// and returns a note that says which it took and why the others were passed over.
pub fn open(choice: BackendChoice) -> Result<(SharedBackend, Option<String>)> {
    if choice != BackendChoice::Auto {
        return Ok((open_one(choice)?, None));
    }
    let mut passed = Vec::new();
    match sage_cuda::CudaBackend::new() {
        Ok(b) => return Ok((Arc::new(b), Some("auto chose cuda".into()))),
        Err(e) => passed.push(e.to_string()),
    }
    match sage_wgpu::WgpuBackend::new() {
        Ok(b) if b.is_hardware() => {
            return Ok((Arc::new(b), Some("auto chose wgpu".into())));
        }
        Ok(_) => passed.push("wgpu: only a software adapter was found".into()),
        Err(e) => passed.push(e.to_string()),
    }
    Ok((
        Arc::new(CpuBackend::new()),
        Some(format!("auto chose cpu ({})", passed.join("; "))),
    ))
}

/// Every backend with its availability and capabilities.
pub fn probe_all() -> Vec<BackendStatus> {
    BACKENDS
        .iter()
        .map(|&choice| match open_one(choice) {
            Ok(b) => BackendStatus {
                backend: b.name(),
                available: true,
                reason: None,
                capabilities: Some(b.capabilities()),
            },
            Err(e) => BackendStatus {
                backend: choice.name(),
                available: false,
                reason: Some(e.to_string()),
                capabilities: None,
            },
        })
        .collect()
}
pub mod bench;
