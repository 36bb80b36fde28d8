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

/// km, vm and qm are bit-identical to the CPU's (the conformance suite allows 1e-3): km and vm in
/// the pairwise order, on lengths around powers of two with large channel means (where the order
/// shows in the low bits), and all -0.0 channels give +0.0 as on the CPU.
#[test]
fn means_are_bit_identical_to_the_cpu() {
    let Some(backend) = conformance::require_or_skip("wgpu", sage_wgpu::WgpuBackend::new()) else {
        return;
    };
    use sage::{AttentionBackend, AttentionParams, CpuBackend, DType, Layout, Mode, Shape, Tensor};
    let cpu = CpuBackend::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let d = 64;
    let mut wrong = Vec::new();
    for n in [1, 2, 3, 7, 64, 65, 127, 129, 300, 1023, 1024, 1025, 2049] {
        let s = Shape::new(1, 2, n, d);
        let mut make = |scale: f32, zero: bool| {
            let x: Vec<f32> = (0..s.numel())
                .map(|i| match i % d {
                    0 => -0.0,
                    1 if zero => -0.0,
                    c => scale * c as f32 + noise(),
                })
                .collect();
            Tensor::from_f32_hnd(&x, s, DType::F32, Layout::Hnd).unwrap_or_else(|e| panic!("{e}"))
        };
        let (q, k, v) = (make(5.0, false), make(37.0, false), make(-13.0, true));
        let p = AttentionParams {
            mode: Mode::Int8Fp8,
            smooth_q: Some(true),
            smooth_v: true,
            ..AttentionParams::default()
        };
        let run =
            |b: &dyn AttentionBackend| b.quantize(&q, &k, &v, &p).unwrap_or_else(|e| panic!("{e}"));
        let (got, want) = (run(&backend), run(&cpu));
        for (name, a, b) in [
            ("km", &got.km, &want.km),
            ("vm", &got.vm, &want.vm),
            ("qm", &got.qm, &want.qm),
        ] {
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            if bits(a) != bits(b) {
                wrong.push(format!("N = {n}: {name}"));
            }
        }
    }
    assert!(wrong.is_empty(), "means differ from the cpu's: {wrong:?}");
}

/// Past the longest sequence a software driver's loop limit allows (lavapipe: 21503 tokens, three
/// loop iterations per token in the means), the backend refuses with `Unsupported` instead of
/// returning means that a silently stopped loop left wrong; a hardware adapter takes it, and its
/// means must then be the CPU's.
#[test]
fn a_sequence_past_the_loop_limit_is_refused_or_right() {
    let Some(backend) = conformance::require_or_skip("wgpu", sage_wgpu::WgpuBackend::new()) else {
        return;
    };
    use sage::{
        AttentionBackend, AttentionParams, CpuBackend, DType, Error, Layout, Shape, Tensor,
    };
    let (n, d) = (30_000, 64);
    let s = Shape::new(1, 1, n, d);
    let x: Vec<f32> = (0..s.numel())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let t = Tensor::from_f32_hnd(&x, s, DType::BF16, Layout::Hnd).unwrap_or_else(|e| panic!("{e}"));
    let p = AttentionParams {
        smooth_v: true,
        ..AttentionParams::default()
    };
    match backend.quantize(&t, &t, &t, &p) {
        Err(Error::Unsupported { feature, .. }) => {
            assert!(feature.contains("stops shader loops"), "{feature}")
        }
        Ok(got) => {
            let cpu = CpuBackend::new()
                .quantize(&t, &t, &t, &p)
                .unwrap_or_else(|e| panic!("{e}"));
            // the means walk every token in one invocation, and are the CPU's bit for bit
            assert!(got.km == cpu.km, "km differs from the CPU's");
            assert!(got.vm == cpu.vm, "vm differs from the CPU's");
        }
        Err(e) => panic!("{e}"),
    }
}
