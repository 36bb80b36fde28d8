//! The conformance suite against the wgpu backend; CI sets SAGE_REQUIRE=wgpu so a missing adapter fails.
mod conformance;

conformance_suite!("wgpu", sage_wgpu::WgpuBackend::new());
