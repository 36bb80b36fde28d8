//! The conformance suite against the CUDA backend, skipped where no CUDA driver is found.
mod conformance;

conformance_suite!("cuda", sage_cuda::CudaBackend::new());

/// The Hopper kernel's solo form (one consumer warpgroup per block, its products in order) is only
/// worth having if three of its blocks share a multiprocessor: its registers (168 per thread at most)
/// and shared memory must both allow it (at kv_block = head dim = 128 only where the driver's
/// dynamic shared memory starts aligned, so the kernel needs no alignment slack; two otherwise).
/// The other forms are one block per multiprocessor by design.
#[test]
fn hopper_solo_form_keeps_three_blocks_per_sm() {
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
    let slack = backend.wgmma_smem_slack(sage_core::DType::F16);
    println!("alignment slack: {slack} bytes");
    for (name, n) in &blocks {
        println!("{name}: {n} blocks per SM");
        if name.ends_with("_solo") {
            let want = if name.contains("kv128_hd128") && slack > 0 {
                2
            } else {
                3
            };
            assert!(*n >= want, "{name}: {n} blocks per SM");
        } else {
            assert_eq!(*n, 1, "{name}");
        }
    }
}

/// Freed device memory stays in the default pool across synchronizations, so that a call's buffers
/// are not mapped again while the GPU waits (the driver's default threshold is 0), as long as any
/// backend of the device is open: closing one of two leaves it so (the last one puts the original
/// back: sage-cuda's unit tests, since other tests may hold backends of this device meanwhile).
#[test]
fn memory_pool_keeps_freed_memory() {
    let Some(backend) = conformance::require_or_skip("cuda", sage_cuda::CudaBackend::new()) else {
        return;
    };
    if std::env::var("SAGE_CUDA_POOL_KEEP").is_ok_and(|v| v == "0") {
        println!("skipped: SAGE_CUDA_POOL_KEEP=0");
        return;
    }
    let threshold =
        |b: &sage_cuda::CudaBackend| b.pool_release_threshold().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(threshold(&backend), u64::MAX);
    let second = sage_cuda::CudaBackend::new().unwrap_or_else(|e| panic!("{e}"));
    drop(backend);
    assert_eq!(threshold(&second), u64::MAX);
}

/// The CUDA backend where it runs the Hopper kernel (sm_90a), or `None` (skipped, as said).
fn hopper_backend() -> Option<sage_cuda::CudaBackend> {
    let backend = conformance::require_or_skip("cuda", sage_cuda::CudaBackend::new())?;
    if backend.arch() != "sm_90a" {
        println!("skipped: {} has no Hopper kernel", backend.arch());
        return None;
    }
    Some(backend)
}

/// The suite's end-to-end and options checks with the Hopper kernel's CTA form pinned to `setting`
/// (`SAGE_CUDA_WGMMA_CTA`'s values), whatever the form the host would choose; skipped off Hopper.
fn suite_with_hopper_form(setting: &str) {
    let Some(mut backend) = hopper_backend() else {
        return;
    };
    backend
        .set_wgmma_cta(setting)
        .unwrap_or_else(|e| panic!("{e}"));
    conformance::end_to_end(&backend);
    conformance::options(&backend);
}

/// The persistent Hopper form on two blocks, so that each crosses many work items whatever the
/// problem size (the K/V ring's phases across items, the double-buffered Q tile and sv / vm, the
/// staged outputs, smooth_q's buffers).
#[test]
fn hopper_persistent_form_across_items() {
    suite_with_hopper_form("persist:2");
}

/// The trio form (three consumer warpgroups of 64 rows; at head dim 128 a block's P V in two halves):
/// its 192-row Q tiles run past a head's padded rows, its consumers start in different smooth_q blocks.
#[test]
fn hopper_trio_form() {
    suite_with_hopper_form("trio");
}

/// The solo form at every shape the suite runs (one consumer warpgroup whose first warp also issues
/// the copies; at kv_block = head dim = 128 a 2-deep ring), not only where the host takes it.
#[test]
fn hopper_solo_form() {
    suite_with_hopper_form("solo");
}

/// The persistent trio on two blocks: the trio's 192-row items (Q tiles past a head's rows, three
/// consumers' staged outputs) with the persistent form's ring and buffers crossing items.
#[test]
fn hopper_persistent_trio_across_items() {
    suite_with_hopper_form("trio-persist:2");
}

/// The persistent trio that quantizes its own Q tiles (`_trio_persist_q`) against the same form with
/// the quantization stage's Q pass: the same codes and scales, so the same outputs bit for bit, in
/// both layouts and 16-bit dtypes, per-thread and per-warp groups, causal or not, with GQA and at
/// lengths that end inside a 64-row chunk; and a NaN or Inf in Q is reported where the CPU would.
#[test]
fn hopper_fused_q_matches_the_q_pass() {
    use sage::random::Distribution;
    use sage::{AttentionBackend, AttentionParams, DType, Error, Granularity, Layout, Mode};
    let Some(mut backend) = hopper_backend() else {
        return;
    };
    // three CTAs, so that each crosses many items (the next item's Q quantized during this one)
    backend
        .set_wgmma_cta("trio-persist:3")
        .unwrap_or_else(|e| panic!("{e}"));
    let inputs = [
        (DType::F16, Layout::Hnd, 1000, 700),
        (DType::BF16, Layout::Nhd, 963, 1000),
        (DType::F16, Layout::Nhd, 64, 1300),
        (DType::BF16, Layout::Hnd, 1601, 257),
    ];
    for (i, (dtype, layout, seq_q, seq_k)) in inputs.into_iter().enumerate() {
        let case = conformance::Case {
            batch: 2,
            heads_q: 4,
            heads_kv: 2,
            seq_q,
            seq_k,
            head_dim: 128,
            dtype,
            layout,
        };
        let (q, k, v) = case.inputs(0xF05E + i as u64, Distribution::KOutliers);
        for granularity in [Granularity::PerThread, Granularity::PerWarp] {
            for causal in [false, true] {
                let p = AttentionParams {
                    mode: Mode::Int8Fp8,
                    granularity,
                    causal,
                    ..Default::default()
                };
                let what = format!("{case:?} {granularity} causal {causal}");
                backend.set_fuse_q(true);
                let entry = backend
                    .hopper_entry(&q, &k, &v, &p)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    entry.as_deref().unwrap_or(""),
                    format!("attn_int8_fp8_wgmma_kv128_hd128_{dtype}_trio_persist_q"),
                    "{what}"
                );
                let run = |b: &sage_cuda::CudaBackend| {
                    b.attention(&q, &k, &v, &p)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                        .out
                        .to_f32_hnd()
                };
                let fused = run(&backend);
                backend.set_fuse_q(false);
                let pass = run(&backend);
                assert!(
                    fused.iter().all(|x| x.is_finite()),
                    "{what}: non-finite output"
                );
                let differ = fused
                    .iter()
                    .zip(&pass)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{what}: {differ} outputs differ from the Q pass's"
                );
            }
        }
        // a non-finite Q element: named as the CPU names it
        backend.set_fuse_q(true);
        let (batch, head, token) = (1, 3, seq_q - 1);
        let mut vals = q.to_f32_hnd();
        let bad = if i % 2 == 0 { f32::NAN } else { f32::INFINITY };
        vals[q.shape().index(Layout::Hnd, batch, head, token, 77)] = bad;
        let q_bad = sage::Tensor::from_f32_hnd(&vals, q.shape(), dtype, layout)
            .unwrap_or_else(|e| panic!("{e}"));
        let p = AttentionParams {
            mode: Mode::Int8Fp8,
            ..Default::default()
        };
        match backend.attention(&q_bad, &k, &v, &p) {
            Err(Error::NonFinite {
                tensor: "Q",
                batch: b,
                head: h,
                token: n,
                ..
            }) if (b, h, n) == (batch, head, token) => {}
            other => panic!(
                "{bad} in Q at ({batch}, {head}, {token}), {dtype} {layout}: {:?}",
                other.map(|_| "an output")
            ),
        }
    }
}
