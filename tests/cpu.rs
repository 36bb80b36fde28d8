//! The conformance suite against the CPU backend (always available).
mod conformance;

conformance_suite!("cpu", Ok::<_, sage::Error>(sage::CpuBackend::new()));
