//! The conformance suite against the wgpu backend; CI sets SAGE_REQUIRE=wgpu so a missing adapter fails.
mod conformance;

conformance_suite!("wgpu", sage_wgpu::WgpuBackend::new());

/// A lost device (here destroyed on purpose, as a driver reset would) makes every later call a
/// `DeviceLost` error: no panic, no hang, no stale result.
#[test]
fn device_lost_is_an_error() {
    let Some(backend) = conformance::require_or_skip("wgpu", sage_wgpu::WgpuBackend::new()) else {
        return;
    };
    use sage::{AttentionBackend, AttentionParams, DType, Error, Layout, Shape, Tensor};
    let s = Shape::new(1, 2, 64, 64);
    let t = Tensor::from_f32_hnd(&vec![0.25; s.numel()], s, DType::F16, Layout::Hnd)
        .unwrap_or_else(|e| panic!("{e}"));
    let p = AttentionParams::default();
    let before = backend.attention(&t, &t, &t, &p);
    assert!(before.is_ok(), "before the loss: {before:?}");
    let resident = backend.upload(&t).unwrap_or_else(|e| panic!("{e}"));
    backend.lose_device();
    for (what, r) in [
        ("attention", backend.attention(&t, &t, &t, &p).map(|_| ())),
        ("upload", backend.upload(&t).map(|_| ())),
        ("download", backend.download(&resident).map(|_| ())),
    ] {
        match r {
            Err(Error::DeviceLost { .. }) => {}
            other => panic!("{what} after the device was lost: {other:?}"),
        }
    }
}
