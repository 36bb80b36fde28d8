//! The conformance suite against the CUDA backend, skipped where no CUDA driver is found.
mod conformance;

conformance_suite!("cuda", sage_cuda::CudaBackend::new());

/// The Hopper kernel's solo form (one consumer warpgroup per block) is only worth having if two of
/// its blocks share a multiprocessor: its registers (255 per thread at most) and shared memory must
/// both allow it. The pair form is one block per multiprocessor by design.
#[test]
fn hopper_solo_form_keeps_two_blocks_per_sm() {
    let Some(backend) = conformance::require_or_skip("cuda", sage_cuda::CudaBackend::new()) else {
        return;
    };
    let blocks = backend
        .hopper_blocks_per_sm()
        .unwrap_or_else(|e| panic!("{e}"));
    if blocks.is_empty() {
        println!("skipped: {} has no Hopper kernel", backend.arch());
        return;
    }
    for (name, n) in &blocks {
        println!("{name}: {n} blocks per SM");
        if name.ends_with("_solo") {
            assert!(*n >= 2, "{name}: {n} blocks per SM");
        } else {
            assert_eq!(*n, 1, "{name}");
        }
    }
}
