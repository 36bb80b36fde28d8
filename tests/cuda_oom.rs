//! A GPU that runs out of memory: the CUDA backend must answer `Error::OutOfMemory`, never panic,
//! and work again once memory is free. Its own test binary (cargo runs test binaries one at a time),
//! because it fills the whole device and would starve any test running beside it.
use half::f16;
use sage::{AttentionBackend, AttentionParams, DType, Error, Layout, Shape, Storage, Tensor};

#[test]
fn out_of_memory_is_an_error_and_recoverable() {
    let backend = match sage_cuda::CudaBackend::new() {
        Ok(b) => b,
        Err(e) => {
            // As the conformance suite: SAGE_REQUIRE=cuda turns a missing GPU into a failure.
            let required = std::env::var("SAGE_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|r| r.trim() == "cuda"),
                "backend cuda is required (SAGE_REQUIRE={required}) but unavailable: {e}"
            );
            println!("skipped: backend cuda unavailable: {e}");
            return;
        }
    };
    // 2 GiB per upload (f16): device memory is filled in at most a few hundred steps.
    let big = Shape::new(1, 8, 1 << 20, 128);
    let block = Tensor::new(Storage::F16(vec![f16::ZERO; big.numel()]), big, Layout::Hnd)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut held = Vec::new();
    let oom = loop {
        match backend.upload(&block) {
            Ok(t) => held.push(t),
            Err(e) => break e,
        }
        assert!(
            held.len() < 512,
            "1 TiB uploaded without running out of memory"
        );
    };
    println!("out of memory after {} GiB: {oom}", 2 * held.len());
    assert!(
        matches!(oom, Error::OutOfMemory { .. }),
        "wrong error: {oom}"
    );

    // An attention call while the device is full: an error, not a crash.
    let s = Shape::new(1, 8, 4096, 128);
    let t = Tensor::from_f32_hnd(&vec![0.5; s.numel()], s, DType::F16, Layout::Hnd)
        .unwrap_or_else(|e| panic!("{e}"));
    let p = AttentionParams::default();
    match backend.attention(&t, &t, &t, &p) {
        Err(Error::OutOfMemory { .. }) => println!("attention on a full device: out of memory"),
        Err(e) => panic!("attention on a full device: wrong error: {e}"),
        // The inputs may still fit in what the last failed upload left.
        Ok(_) => println!("attention on a full device still fitted"),
    }

    // Memory back: the same backend works again, with the right answer.
    drop(held);
    let out = backend
        .attention(&t, &t, &t, &p)
        .unwrap_or_else(|e| panic!("after freeing: {e}"));
    let values = out.out.to_f32_hnd();
    assert!(
        values.iter().all(|v| (v - 0.5).abs() < 1e-2),
        "after freeing: wrong output"
    );
}
