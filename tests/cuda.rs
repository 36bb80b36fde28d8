//! The conformance suite against the CUDA backend, skipped where no CUDA driver is found.
mod conformance;

conformance_suite!("cuda", sage_cuda::CudaBackend::new());
